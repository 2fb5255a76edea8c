"""Report progress: progress=True shows a tqdm bar, a callable gets (done, total)."""

from __future__ import annotations

import procpool


def square(x: int) -> int:
    """Square x (runs in a worker)."""
    return x * x


class Reporter:
    """A custom progress reporter, for rich, a GUI or a log file."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int | None]] = []

    def __call__(self, done: int, total: int | None) -> None:
        self.calls.append((done, total))


def main() -> None:
    with procpool.Pool(2) as pool:
        report = Reporter()
        result = pool.map(square, range(50), chunksize=5, progress=report).result()
        print(f"map sum: {sum(result)}")
        print(f"map progress ends at: {report.calls[-1]}")

        report = Reporter()
        total = sum(pool.imap(square, range(20), progress=report))
        print(f"imap sum: {total}")
        # A range tells its length without being read: the total is known.
        print(f"imap progress ends at: {report.calls[-1]}")

        report = Reporter()
        total = sum(pool.imap(square, (x for x in range(20)), progress=report))
        # A generator does not, and imap never reads ahead to count: no total.
        print(f"imap of a generator ends at: {report.calls[-1]}")


if __name__ == "__main__":
    main()
