"""Lambdas and closures as tasks with Pool(cloudpickle=True) (extra procpool[cloudpickle]).

Only the function travels with cloudpickle; arguments and results use pickle. Both
ends run the same Python, as they always do in one pool.
"""

from __future__ import annotations

from collections.abc import Callable

import procpool


def make_scaler(factor: int) -> Callable[[int], int]:
    """Return a closure, which plain pickle cannot send."""
    return lambda x: x * factor


def main() -> None:
    triple = make_scaler(3)
    with procpool.Pool(2) as pool:
        try:
            pool.submit(triple, 1).result(timeout=60)
        except procpool.SerializationError:
            print("plain pickle: SerializationError")

    with procpool.Pool(2, cloudpickle=True) as pool:
        print(f"closure: {pool.map(triple, range(5)).result()}")
        print(f"lambda: {pool.submit(lambda s: s.upper(), 'abc').result()}")


if __name__ == "__main__":
    main()
