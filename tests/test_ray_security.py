"""What ``RayPool()`` starts when the program has no Ray: only this program can use it.

``RayPool()`` in a process without Ray starts a local instance. Ray's defaults on
Linux would make its servers (GCS, raylet, object manager, each worker) listen on
the machine's network address; procpool's instance listens on loopback only, keeps
Ray's token authentication on, and makes the token file readable by its owner only
(docs/security.md). The check runs tests/scripts/ray_private_instance.py in a fresh
interpreter (this test session has a Ray instance of its own) with a home folder of
its own, so that the token file is made by that run; it reads /proc, so Linux only.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("ray", reason="install the ray extra: pip install 'procpool[ray]'")

import helpers

SCRIPT = Path(__file__).parent / "scripts" / "ray_private_instance.py"
pytestmark = [
    pytest.mark.ray,
    pytest.mark.timeout(180),
    pytest.mark.skipif(sys.platform != "linux", reason="reads sockets and processes in /proc"),
]


def _run(tmp_path: Path, *args: str) -> dict[str, Any]:
    env = dict(os.environ)
    env["HOME"] = str(tmp_path)  # Ray's token file goes to $HOME/.ray/auth_token
    for name in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        env.pop(name, None)
    done = helpers.run_python(SCRIPT, *args, timeout=170, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return report


def test_raypool_starts_a_ray_that_listens_on_loopback_only_and_shuts_it_down(
    tmp_path: Path,
) -> None:
    report = _run(tmp_path)
    assert report["initialized_before"] is False
    assert report["processes"] >= 3  # gcs_server, raylet, workers...
    listeners = report["listeners"]
    assert {entry["process"] for entry in listeners} >= {"gcs_server", "raylet"}
    assert [entry for entry in listeners if not entry["loopback"]] == []
    assert report["node_ip"] == "127.0.0.1"
    assert report["auth_mode"] == "token"
    assert report["token_file_mode"] == "0o600"
    # The second pool shared the instance; the last one to end shut it down.
    assert report["initialized_while_the_second_pool_is_open"] is True
    assert report["initialized_after"] is False
    assert report["processes_left"] == 0
    # A Ray worker loads the process boundary (and the Ray task runner) only.
    allowed = ("procpool", "procpool._version")
    modules = report["worker_modules"]
    assert "procpool._child.ray_chunk" in modules
    assert [m for m in modules if m not in allowed and not m.startswith("procpool._child")] == []


@pytest.mark.slow
def test_another_program_without_the_token_cannot_run_code_there(tmp_path: Path) -> None:
    intruder = _run(tmp_path, "--intruder")["intruder"]
    assert intruder["connected"] is False
    assert intruder["returncode"] != 0
    assert intruder["refused_for_its_token"] is True
