"""Pool.map / map_async / starmap -> pool.map, which returns a MapFuture.

.result() is the ordered list, iterating streams results in input order as they
arrive, and .then() chains on the whole list.
"""

from __future__ import annotations

import procpool


def square(x: int) -> int:
    """Square x (runs in a worker)."""
    return x * x


def add(a: int, b: int) -> int:
    """Add two numbers; with map, one from each iterable."""
    return a + b


def reciprocal(x: int) -> float:
    """Return 1/x; fails for 0."""
    return 1 / x


def main() -> None:
    with procpool.Pool(2) as pool:
        squares = pool.map(square, range(10))  # MapFuture[int]
        print(f"result: {squares.result()}")

        streamed = [s for s in pool.map(square, range(10))]  # in input order
        print(f"streamed: {streamed}")

        # map_async(f, xs, callback=...) -> then()
        print(f"then(sum): {pool.map(square, range(10)).then(sum).result()}")

        # starmap(f, pairs) -> map with several iterables
        print(f"two iterables: {pool.map(add, [1, 2, 3], [10, 20, 30]).result()}")

        # 200,000 tiny items: chunked automatically, not 200,000 round trips
        print(f"big map total: {sum(pool.map(square, range(200_000)))}")

        got: list[float] = []
        try:
            for value in pool.map(reciprocal, [1, 2, 0, 4]):
                got.append(value)
        except ZeroDivisionError:
            print(f"failed at the third item, after {got}")


if __name__ == "__main__":
    main()
