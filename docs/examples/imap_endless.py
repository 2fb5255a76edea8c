"""imap over an endless generator: at most buffersize items are read ahead."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import procpool

BUFFERSIZE = 8


def square(x: int) -> int:
    """Square x (runs in a worker)."""
    return x * x


class Counter:
    """An endless input that remembers how far it has been read."""

    def __init__(self) -> None:
        self.produced = 0

    def __iter__(self) -> Iterator[int]:
        for n in itertools.count():
            self.produced = n + 1
            yield n


def main() -> None:
    source = Counter()
    with procpool.Pool(2) as pool:
        results = pool.imap(square, iter(source), buffersize=BUFFERSIZE)
        first = list(itertools.islice(results, 20))
        print(f"first 20 squares: {first}")
        read_ahead = source.produced - len(first)
        print(f"read ahead of the consumer: at most {BUFFERSIZE}: {read_ahead <= BUFFERSIZE}")

        # imap_unordered yields in completion order, so compare it sorted.
        unordered = sorted(pool.imap_unordered(square, range(10)))
        print(f"imap_unordered, sorted: {unordered}")


if __name__ == "__main__":
    main()
