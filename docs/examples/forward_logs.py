"""Log records from workers reach the parent's handlers: Pool(forward_logs=True).

Each record keeps the worker's pid in record.process, so a format with
%(process)d tells the workers apart.
"""

from __future__ import annotations

import logging
import os

import procpool

log = logging.getLogger("example.worker")


def work(x: int) -> int:
    """Log from inside a worker, then compute."""
    log.warning("working on %d", x)
    return x * 10


class Collect(logging.Handler):
    """A handler in the parent that keeps what it receives."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def main() -> None:
    collect = Collect()
    logging.getLogger("example").addHandler(collect)
    with procpool.Pool(2, forward_logs=True) as pool:
        print(f"results: {pool.map(work, range(3)).result()}")
    mine = [r for r in collect.records if r.name == "example.worker"]
    print(f"records received: {sorted(r.getMessage() for r in mine)}")
    print(f"all from worker pids: {all(r.process != os.getpid() for r in mine)}")


if __name__ == "__main__":
    main()
