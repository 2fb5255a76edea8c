"""Property tests: a pool's map/imap give what serial execution gives, failures included."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import helpers
import procpool

pytestmark = pytest.mark.timeout(300)

# One pool per (start method, worker count), reused across examples: starting
# processes for each of hundreds of examples would measure start-up, not map.
_pools: dict[tuple[str, int], procpool.Pool] = {}


@pytest.fixture(scope="module", autouse=True)
def _close_pools() -> Iterator[None]:
    yield
    for pool in _pools.values():
        pool.close()
    for pool in _pools.values():
        pool.join()
    _pools.clear()


def get_pool(method: str, workers: int) -> procpool.Pool:
    key = (method, workers)
    if key not in _pools:
        _pools[key] = procpool.Pool(workers, context=method)  # type: ignore[arg-type]
    return _pools[key]


methods = st.sampled_from(["fork", "spawn", "forkserver"])
workers = st.integers(min_value=1, max_value=3)
chunksizes = st.one_of(st.none(), st.integers(min_value=1, max_value=50))
inputs = st.lists(st.integers(min_value=-10_000, max_value=10_000), max_size=300)
common = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def serial_outcomes(xs: list[int]) -> list[tuple[str, object]]:
    return [helpers.outcome(helpers.poly, x) for x in xs]


def pool_outcomes(results: Iterator[int], n: int) -> list[tuple[str, object]]:
    out: list[tuple[str, object]] = []
    for _ in range(n):
        try:
            out.append(("ok", next(results)))
        except Exception as exc:
            out.append(("error", (type(exc), str(exc))))
    return out


@common
@given(xs=inputs, method=methods, n=workers, chunksize=chunksizes)
def test_map_result_equals_serial_map(
    xs: list[int], method: str, n: int, chunksize: int | None
) -> None:
    pool = get_pool(method, n)
    assert pool.map(helpers.square, xs, chunksize=chunksize).result(timeout=60) == list(
        map(helpers.square, xs)
    )


@common
@given(xs=inputs, method=methods, n=workers, chunksize=chunksizes)
def test_map_fails_exactly_where_serial_fails(
    xs: list[int], method: str, n: int, chunksize: int | None
) -> None:
    pool = get_pool(method, n)
    fut = pool.map(helpers.poly, xs, chunksize=chunksize)
    expected = serial_outcomes(xs)
    assert pool_outcomes(iter(fut), len(xs)) == expected
    errors = [o for o in expected if o[0] == "error"]
    first_error = fut.exception(timeout=60)
    if errors:
        assert first_error is not None
        assert (type(first_error), str(first_error)) == errors[0][1]
    else:
        assert first_error is None


@common
@given(
    xs=inputs,
    method=methods,
    n=workers,
    chunksize=st.integers(min_value=1, max_value=20),
    buffersize=st.one_of(st.none(), st.integers(min_value=1, max_value=64)),
)
def test_imap_and_iteration_give_the_serial_sequence(
    xs: list[int], method: str, n: int, chunksize: int, buffersize: int | None
) -> None:
    pool = get_pool(method, n)
    expected = serial_outcomes(xs)
    got_imap = pool_outcomes(
        pool.imap(helpers.poly, xs, chunksize=chunksize, buffersize=buffersize), len(xs)
    )
    assert got_imap == expected
    unordered = pool_outcomes(
        pool.imap_unordered(helpers.poly, xs, chunksize=chunksize, buffersize=buffersize),
        len(xs),
    )
    assert sorted(map(repr, unordered)) == sorted(map(repr, expected))


@common
@given(xs=inputs, ys=inputs, method=methods, chunksize=chunksizes)
def test_map_of_two_iterables_equals_serial(
    xs: list[int], ys: list[int], method: str, chunksize: int | None
) -> None:
    pool = get_pool(method, 2)
    assert pool.map(helpers.add, xs, ys, chunksize=chunksize).result(timeout=60) == list(
        map(helpers.add, xs, ys)
    )


def caught(x: int) -> object:
    """What a serial loop that catches each item's exception gives for ``x``."""
    try:
        return helpers.poly(x)
    except Exception as exc:
        return exc


def same(a: object, b: object) -> bool:
    """Equal values, or exceptions of one type and message."""
    if isinstance(a, BaseException) or isinstance(b, BaseException):
        return type(a) is type(b) and str(a) == str(b)
    return a == b


@common
@given(
    xs=inputs,
    method=methods,
    n=workers,
    chunksize=chunksizes,
    imap_chunksize=st.integers(min_value=1, max_value=20),
)
def test_return_exceptions_equals_a_serial_loop_that_catches(
    xs: list[int], method: str, n: int, chunksize: int | None, imap_chunksize: int
) -> None:
    # Issue 25: every item in its place, the failed ones as their exception.
    pool = get_pool(method, n)
    expected = [caught(x) for x in xs]
    got = pool.map(helpers.poly, xs, chunksize=chunksize, return_exceptions=True)
    as_list = got.result(timeout=60)
    assert len(as_list) == len(expected)
    assert all(same(a, b) for a, b in zip(as_list, expected, strict=True))
    streamed = list(pool.imap(helpers.poly, xs, chunksize=imap_chunksize, return_exceptions=True))
    assert all(same(a, b) for a, b in zip(streamed, expected, strict=True))
    assert len(streamed) == len(expected)
    unordered = list(
        pool.imap_unordered(helpers.poly, xs, chunksize=imap_chunksize, return_exceptions=True)
    )
    key = lambda v: (type(v).__name__, str(v))  # noqa: E731
    assert sorted(map(key, unordered)) == sorted(map(key, expected))
