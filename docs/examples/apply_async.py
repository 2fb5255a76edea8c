"""Pool.apply / apply_async(callback, error_callback) -> submit + result/then/catch."""

from __future__ import annotations

import procpool


def square(x: int) -> int:
    """Square x (runs in a worker)."""
    return x * x


def reciprocal(x: int) -> float:
    """Return 1/x; fails for 0."""
    return 1 / x


def on_result(value: int) -> str:
    """Like apply_async's callback, but what it returns is kept."""
    return f"got {value}"


def on_error(exc: BaseException) -> str:
    """Like apply_async's error_callback."""
    return f"failed: {type(exc).__name__}"


def main() -> None:
    with procpool.Pool(2) as pool:
        # apply(f, args): submit and wait.
        print(f"apply: {pool.submit(square, 3).result()}")

        # apply_async(f, args, callback=..., error_callback=...)
        fut = pool.submit(square, 4)
        print(f"callback: {fut.then(on_result).catch(on_error).result(timeout=60)}")
        bad = pool.submit(reciprocal, 0)
        print(f"error_callback: {bad.then(str).catch(on_error).result(timeout=60)}")

        # AsyncResult.get(timeout) / ready() / successful()
        print(f"get: {fut.result(timeout=60)}")
        print(f"ready: {fut.done()}, successful: {fut.exception() is None}")
        print(f"failed one successful: {bad.exception() is None}")


if __name__ == "__main__":
    main()
