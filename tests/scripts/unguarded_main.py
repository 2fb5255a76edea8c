"""A program without ``if __name__ == "__main__":`` that starts a pool, or spawn(), at import.

Usage: ``python unguarded_main.py pool|spawn START_METHOD``. Under spawn and
forkserver every child imports this module again; each must leave quietly, and
the program must fail with one message that says what to do.
"""

import sys

import procpool


def square(x: int) -> int:
    return x * x


what, method = sys.argv[1:3] if len(sys.argv) >= 3 else ("pool", "spawn")
if what == "pool":
    with procpool.Pool(4, context=method) as pool:  # type: ignore[arg-type]
        print(pool.map(square, range(10)).result())
else:
    print(procpool.spawn(square, 3, context=method).result())  # type: ignore[arg-type]
