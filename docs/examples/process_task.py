"""Subclassing multiprocessing.Process -> subclassing procpool.ProcessTask[R].

run() returns a value; the same task object can be started on its own or given
to pool.submit().
"""

from __future__ import annotations

import procpool


class Greet(procpool.ProcessTask[str]):
    """Say hello from a child process."""

    def __init__(self, who: str) -> None:
        super().__init__(name="greeter", daemon=True)
        self.who = who

    def run(self) -> str:
        """Run in the child process; the return value comes back to the parent."""
        return f"hello {self.who}"


def main() -> None:
    task = Greet("world")
    task.start()  # returns the ProcessHandle[str]; also kept on the task
    task.join(timeout=60)
    print(f"name={task.name} daemon={task.daemon} exitcode={task.exitcode}")
    print(f"alive after join: {task.is_alive()}")
    print(f"result: {task.result()}")

    with procpool.Pool(2) as pool:
        print(f"in a pool: {pool.submit(Greet('pool')).result()}")


if __name__ == "__main__":
    main()
