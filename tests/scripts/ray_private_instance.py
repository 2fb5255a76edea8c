"""RayPool() with no Ray running: what it starts, where it listens, what is left after.

Run by tests/test_ray_security.py in a fresh interpreter (the test session has its
own Ray instance). Prints one JSON report on its last line. Reads /proc: Linux only.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
import time

import procpool


def descendants(root: int) -> set[int]:
    """``root`` and every process below it, from /proc/<pid>/stat's parent pids."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    parents[int(entry)] = int(stat.read().rsplit(")", 1)[1].split()[1])
            except (FileNotFoundError, ProcessLookupError, IndexError):
                pass
    tree = {root}
    grew = True
    while grew:
        grew = False
        for pid, parent in parents.items():
            if parent in tree and pid not in tree:
                tree.add(pid)
                grew = True
    return tree


def socket_inodes(pid: int) -> set[str]:
    inodes: set[str] = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:
        pass
    return inodes


def _address(hex_ip: str) -> str:
    raw = bytes.fromhex(hex_ip)
    # /proc/net/tcp* prints each 32-bit word in host (little-endian) order.
    raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return str(ipaddress.ip_address(raw))


def listeners(pids: set[int]) -> list[dict[str, object]]:
    """Every TCP socket in LISTEN state held by one of ``pids``."""
    owner = {inode: pid for pid in pids for inode in socket_inodes(pid)}
    found: list[dict[str, object]] = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as lines:
            next(lines)
            for line in lines:
                fields = line.split()
                local, state, inode = fields[1], fields[3], fields[9]
                if state != "0A" or inode not in owner:  # 0A: LISTEN
                    continue
                hex_ip, hex_port = local.split(":")
                address = ipaddress.ip_address(_address(hex_ip))
                if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
                    address = address.ipv4_mapped
                pid = owner[inode]
                with open(f"/proc/{pid}/comm") as comm:
                    name = comm.read().strip()
                found.append(
                    {
                        "process": name,
                        "address": str(address),
                        "port": int(hex_port, 16),
                        "loopback": address.is_loopback,
                    }
                )
    return found


def procpool_modules(_: object) -> list[str]:
    """The procpool modules this (worker) process has loaded."""
    return [name for name in sys.modules if name.split(".")[0] == "procpool"]


INTRUDER = """
import ray, sys
ray.init(address=sys.argv[1])
print("CONNECTED", ray.get(ray.remote(lambda: 42).remote()))
"""


def intrude(gcs_address: str) -> dict[str, object]:
    """Another local program, with a wrong token, tries to run code on the instance."""
    env = dict(os.environ)
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN="0" * 64)
    # Local mode, as RayPool's instance (else it looks for a raylet on the host's IP).
    env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    done = subprocess.run(
        [sys.executable, "-c", INTRUDER, gcs_address],
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )
    return {
        "returncode": done.returncode,
        "connected": "CONNECTED" in done.stdout,
        "refused_for_its_token": "token" in done.stderr.lower(),
    }


def main() -> None:
    import ray

    report: dict[str, object] = {"initialized_before": ray.is_initialized()}
    with procpool.RayPool() as pool:
        assert pool.submit(abs, -3).result(timeout=60) == 3
        second = procpool.RayPool()  # shares the instance the first one started
        assert second.map(abs, [-1, -2]).result(timeout=60) == [1, 2]
        assert second.options(timeout=30).map(abs, [-1, -2]).result(timeout=60) == [1, 2]
        # What the workers that ran those (a call, a chunk, a time-limited chunk) loaded.
        loaded = pool.map(procpool_modules, range(8), chunksize=1).result(timeout=60)
        report["worker_modules"] = sorted(set().union(*loaded))
        mine = os.getpid()
        ray_pids = descendants(mine) - {mine}
        report["processes"] = len(ray_pids)
        report["listeners"] = listeners(descendants(mine))
        report["auth_mode"] = os.environ.get("RAY_AUTH_MODE")
        report["node_ip"] = ray.util.get_node_ip_address()
        token = os.path.expanduser("~/.ray/auth_token")
        report["token_file_mode"] = oct(os.stat(token).st_mode & 0o777)
        if "--intruder" in sys.argv:
            report["intruder"] = intrude(ray.get_runtime_context().gcs_address)
    report["initialized_while_the_second_pool_is_open"] = ray.is_initialized()
    second.close()
    assert second.join(timeout=60)
    report["initialized_after"] = ray.is_initialized()
    deadline = time.monotonic() + 30
    left = ray_pids
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = {pid for pid in left if os.path.exists(f"/proc/{pid}")}
    report["processes_left"] = len(left)
    print(json.dumps(report))


if __name__ == "__main__":
    sys.exit(main())
