"""Chain results with then(), recover with catch(), and await futures in asyncio."""

from __future__ import annotations

import asyncio

import procpool


def square(x: int) -> int:
    """Square x (runs in a worker)."""
    return x * x


def parse(text: str) -> int:
    """Parse an integer; fails on anything else."""
    return int(text)


def describe(n: int) -> str:
    """Runs in the parent, after the worker's result arrived."""
    return f"n={n}"


def fallback(exc: BaseException) -> int:
    """Turn a failure into a default value."""
    return -1


async def gather_squares(pool: procpool.Pool) -> list[int]:
    """Await procpool futures, and use the pool as an asyncio executor."""
    a, b = await asyncio.gather(pool.submit(square, 3), pool.submit(square, 4))
    loop = asyncio.get_running_loop()
    c = await loop.run_in_executor(pool, square, 5)
    total = await pool.map(square, range(4))
    return [a, b, c, sum(total)]


def main() -> None:
    with procpool.Pool(2) as pool:
        print(f"then: {pool.submit(square, 7).then(describe).result()}")
        print(f"then chain: {pool.submit(square, 2).then(square).then(describe).result()}")
        print(f"catch: {pool.submit(parse, 'x').catch(fallback).result()}")
        print(f"catch passes success: {pool.submit(parse, '12').catch(fallback).result()}")

        # then() whose function returns a future is flattened: Future[int], not Future[Future[int]]
        def square_in_pool(n: int) -> procpool.Future[int]:
            return pool.submit(square, n)

        print(f"flattened: {pool.submit(square, 3).then(square_in_pool).result()}")

        # A failure skips then() and reaches catch().
        failed = pool.submit(parse, "nope").then(describe)
        print(f"then skipped on failure: {type(failed.exception()).__name__}")

        print(f"await: {asyncio.run(gather_squares(pool))}")


if __name__ == "__main__":
    main()
