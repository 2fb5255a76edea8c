"""A worker is killed with the whole tree of processes its task started (issue 25)."""

from __future__ import annotations

import concurrent.futures
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import helpers
import procpool
import tree_helpers as th

pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.skipif(not Path("/proc").exists(), reason="the test reads /proc"),
]


def _all_gone(pids: list[int]) -> bool:
    return helpers.wait_for(lambda: not any(th.alive(p) for p in pids), timeout=10)


def test_a_timeout_kill_takes_the_whole_tree(start_method: str, tmp_path: Path) -> None:
    path = str(tmp_path / "pids")
    with procpool.Pool(1, context=start_method) as pool:  # type: ignore[arg-type]
        fut = pool.options(timeout=3.0).submit(th.start_tree, path)
        pids = th.tree_pids(path)
        assert all(th.alive(p) for p in pids)
        with pytest.raises(procpool.TaskTimeoutError):
            fut.result()
        assert _all_gone(pids), [p for p in pids if th.alive(p)]
        assert pool.submit(helpers.square, 3).result() == 9  # the pool goes on


def test_a_cancel_takes_the_whole_tree(start_method: str, tmp_path: Path) -> None:
    path = str(tmp_path / "pids")
    with procpool.Pool(1, context=start_method) as pool:  # type: ignore[arg-type]
        fut = pool.submit(th.start_tree, path)
        pids = th.tree_pids(path)
        assert fut.cancel()
        with pytest.raises(concurrent.futures.CancelledError):
            fut.result()
        assert _all_gone(pids), [p for p in pids if th.alive(p)]


def test_terminate_takes_the_whole_tree(start_method: str, tmp_path: Path) -> None:
    path = str(tmp_path / "pids")
    pool = procpool.Pool(1, context=start_method)  # type: ignore[arg-type]
    pool.submit(th.start_tree, path)
    pids = th.tree_pids(path)
    pool.terminate()
    assert pool.join(30)
    assert _all_gone(pids), [p for p in pids if th.alive(p)]


def test_the_death_of_the_parent_takes_the_whole_tree(start_method: str, tmp_path: Path) -> None:
    path = str(tmp_path / "pids")
    with subprocess.Popen(
        [sys.executable, th.__file__, start_method, path],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parent,
    ) as parent:
        try:
            assert parent.stdout is not None
            assert parent.stdout.readline().strip() == "ready"
            pids = th.tree_pids(path)
            assert all(th.alive(p) for p in pids)
        finally:
            parent.send_signal(signal.SIGKILL)
            parent.wait(30)
    assert _all_gone(pids), [p for p in pids if th.alive(p)]
