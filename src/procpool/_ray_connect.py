"""How ``RayPool`` reaches Ray: importing it, and the one connection a process has.

Ray connects a process to one cluster at a time. :data:`CONNECTION` is the
connection procpool made itself (a local instance it started, or an address it
was given), shared by the pools that use it and shut down with the last of them;
a connection the program made (``ray.init``) is used and never shut down. A
local instance listens on loopback only, with Ray's token authentication on and
its token file readable by this user only (:func:`init_local`,
:func:`private_token`).

Ray is imported only when a ``RayPool`` is built, and this module type-checks
without it (Ray's objects are ``Any``).
"""

from __future__ import annotations

import importlib
import logging
import os
import secrets
import threading
from pathlib import Path
from typing import Any

LOGGER = logging.getLogger("procpool")

INSTALL_HINT = 'RayPool needs Ray: pip install "procpool[ray]"'


def import_ray() -> Any:
    """Import ``ray`` on first use; typed ``Any`` so no stubs are needed."""
    try:
        return importlib.import_module("ray")
    except ImportError as exc:
        raise ImportError(INSTALL_HINT) from exc


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity where the system tells it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def init_local(ray: Any, num_cpus: int, **kwargs: Any) -> Any:
    """Start a new Ray instance on this machine that only this user can reach.

    ``ray.init(address="local")`` always starts a new instance (with no address
    Ray would join a cluster that ``ray start`` left running, or one named by
    ``RAY_ADDRESS``), here without the dashboard. On Linux Ray's servers (GCS,
    raylet, object manager, every worker) listen on the machine's own IP address,
    which other machines can reach; a local-only instance, the mode Ray uses on
    macOS and Windows, binds them all to 127.0.0.1. Ray 2.60 decides which by a
    module constant read when it picks the node's address, so it is switched for
    the duration of ``ray.init``. Other users of this machine can still reach
    loopback: Ray's token authentication (on by default for a local instance
    since Ray 2.59) keeps them out, provided they cannot read the token, which Ray
    writes with the process's umask; see :func:`private_token`.
    """
    private_token()
    constants: Any = importlib.import_module("ray._private.ray_constants")
    cluster_mode = constants.ENABLE_RAY_CLUSTER
    constants.ENABLE_RAY_CLUSTER = False
    try:
        return ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, **kwargs)
    finally:
        constants.ENABLE_RAY_CLUSTER = cluster_mode


#: Where Ray 2.60 keeps the token of local instances when nothing else names one.
TOKEN_FILE = Path("~/.ray/auth_token")


def private_token() -> None:
    """Make Ray's default token file readable by this user only, before Ray writes it.

    Ray creates ``~/.ray/auth_token`` on the first ``ray.init()`` that needs a token,
    with the process's umask (usually 0644: readable by every local user who can
    enter the home folder, and the token is all it takes to run code on the
    instance). When token authentication is on and the token comes from that
    file, create it first (a 0700 folder, a 0600 file, 64 random hex digits as Ray
    makes them), and warn on the ``procpool`` logger about an existing one that
    others can read. A token set by ``RAY_AUTH_TOKEN``/``RAY_AUTH_TOKEN_PATH`` is
    left alone.
    """
    mode = os.environ.get("RAY_AUTH_MODE", "token").lower()
    if mode != "token" or "RAY_AUTH_TOKEN" in os.environ or "RAY_AUTH_TOKEN_PATH" in os.environ:
        return
    path = TOKEN_FILE.expanduser()
    try:
        path.parent.mkdir(mode=0o700, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        if os.name == "posix" and path.stat().st_mode & 0o077:
            LOGGER.warning(
                "%s can be read by other users, and it lets anyone who reads it run code "
                "on your local Ray instances: chmod 600 %s",
                path,
                path,
            )
        return
    except OSError:  # no home folder, read-only: Ray will say what it needs
        return
    with os.fdopen(fd, "w") as token:
        token.write(secrets.token_hex(32))


class _Connection:
    """The Ray connection procpool made in this process, shared by the pools that use it.

    Ray connects a process to one cluster at a time. A ``RayPool`` that finds Ray
    already initialized by the program uses that connection and never shuts it
    down; one that has to connect (or start a local instance) does so here, and
    the last pool using that connection shuts it down when it is released.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.users = 0
        self.address: str | None = None

    def acquire(self, ray: Any, address: str | None) -> bool:
        """Connect (or start Ray) if needed; True if the caller must :meth:`release` it."""
        with self.lock:
            if ray.is_initialized():
                if self.users and address in (None, self.address):
                    self.users += 1  # procpool's own connection: shared, counted
                    return True
                if address is None:
                    return False  # the program's own connection: used, never shut down
                raise RuntimeError(
                    f"RayPool({address!r}): this process is already connected to a Ray "
                    "cluster (ray.init), and Ray connects a process to one cluster at a "
                    "time; use RayPool() to submit to that cluster, or ray.shutdown() first"
                )
            if address is None:
                init_local(ray, usable_cpus())
            else:
                ray.init(address=address)
            self.users, self.address = 1, address
            return True

    def release(self, ray: Any) -> None:
        with self.lock:
            self.users -= 1
            if self.users > 0:
                return
            self.address = None
        try:
            ray.shutdown()
        except Exception:  # interpreter shutdown, or Ray is going away already
            LOGGER.debug("could not shut Ray down", exc_info=True)


CONNECTION = _Connection()


__all__ = ["CONNECTION", "import_ray", "init_local", "private_token", "usable_cpus"]
