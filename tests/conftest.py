"""Shared fixtures: one ``start_method`` fixture over fork, spawn and forkserver."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterator

import pytest

import procpool

START_METHODS = [
    m for m in ("fork", "spawn", "forkserver") if m in multiprocessing.get_all_start_methods()
]
# `make check` (the quick inner loop) runs each such test under fork only:
# PROCPOOL_TEST_START_METHODS=fork. `make test` runs them under all three.
if os.environ.get("PROCPOOL_TEST_START_METHODS"):
    _ASKED = os.environ["PROCPOOL_TEST_START_METHODS"].split(",")
    START_METHODS = [m for m in START_METHODS if m in _ASKED]
    assert START_METHODS, f"PROCPOOL_TEST_START_METHODS={_ASKED}: none exists here"


@pytest.fixture(params=START_METHODS)
def start_method(request: pytest.FixtureRequest) -> str:
    """Each start method this platform has."""
    method: str = request.param
    return method


@pytest.fixture
def pool(start_method: str) -> Iterator[procpool.Pool]:
    """A two-worker pool under each start method, closed and joined after the test."""
    with procpool.Pool(2, context=start_method) as p:
        yield p


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the ``ray`` tests last, in the order collected (see tests/ray_support.py)."""
    ray_items = [item for item in items if item.get_closest_marker("ray") is not None]
    if ray_items:
        items[:] = [item for item in items if item.get_closest_marker("ray") is None] + ray_items


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """One local Ray instance for every Ray test of the session (tests/ray_support.py)."""
    pytest.importorskip("ray", reason="install the ray extra: pip install 'procpool[ray]'")
    import ray_support

    with ray_support.local_ray():
        yield
