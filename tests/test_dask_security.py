"""DaskPool on a cluster that speaks TLS only, as docs/security.md recommends.

One ``LocalCluster`` for the module, secured with ``Security.temporary()`` (a
throw-away CA, key and certificate, in memory; it needs the ``cryptography``
package, which the dev extra installs). The tests check that the scheduler listens
on ``tls://`` only, that ``DaskPool`` works with each way of handing it the TLS
settings (a configured ``Client``, the cluster object, an address plus Dask's
config), that a client without the cluster's certificate is turned away, and that
the runnable example of docs/security.md does what the page says.

The cluster comes from tests/dask_support.py, as tests/test_dask.py's does: the
scheduler's HTTP routes go to a free port on loopback, and distributed's process-wide
threads are stopped when the module is done (later fork-based tests would warn, an
error here).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

distributed = pytest.importorskip(
    "distributed", reason="install the dask extra: pip install 'procpool[dask]'"
)
pytest.importorskip(
    "cryptography", reason="Security.temporary() needs cryptography (in the dev extra)"
)

import dask  # noqa: E402  (after the importorskip above)
from distributed.security import Security  # noqa: E402

import dask_helpers as h  # noqa: E402
import dask_support  # noqa: E402
import helpers  # noqa: E402
from procpool import DaskPool  # noqa: E402

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parent.parent
SECURITY_PAGE = ROOT / "docs" / "security.md"
#: A refused connection fails at once (the TLS handshake fails); this only bounds a hang.
CONNECT_TIMEOUT = 5.0


@pytest.fixture(scope="module")
def tls_cluster() -> Iterator[Any]:
    """A LocalCluster whose scheduler and worker accept TLS connections only."""
    with dask_support.local_cluster(1, security=Security.temporary()) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def tls_client(tls_cluster: Any) -> Iterator[Any]:
    """A Client that presents the cluster's certificate."""
    client = distributed.Client(tls_cluster, security=tls_cluster.security, set_as_default=False)
    try:
        client.wait_for_workers(1, timeout=30)
        yield client
    finally:
        client.close()


def _run_through(pool: DaskPool) -> None:
    assert pool.submit(h.add, 2, 3).result(timeout=30) == 5
    assert pool.map(h.square, range(20)).result(timeout=30) == [x * x for x in range(20)]


def test_the_scheduler_and_its_worker_listen_on_tls(tls_cluster: Any, tls_client: Any) -> None:
    assert tls_cluster.scheduler_address.startswith("tls://")
    workers = tls_client.scheduler_info()["workers"]
    assert workers
    assert all(address.startswith("tls://") for address in workers)


def test_daskpool_runs_submit_and_map_through_a_tls_client(tls_client: Any) -> None:
    with DaskPool(tls_client) as pool:
        assert pool.client is tls_client
        assert pool.client.scheduler.address.startswith("tls://")
        _run_through(pool)
    assert tls_client.status == "running"  # a client we passed in stays ours


def test_daskpool_given_the_cluster_connects_with_its_security(tls_cluster: Any) -> None:
    with DaskPool(tls_cluster) as pool:
        assert pool.client.security is tls_cluster.security
        _run_through(pool)
        client = pool.client
    assert client.status == "closed"  # the pool made this client, and closed it


def test_daskpool_given_a_tls_address_reads_dask_config(tls_cluster: Any, tmp_path: Path) -> None:
    """The route of a deployed cluster: certificate files named in Dask's config."""
    security = tls_cluster.security
    files = {
        "ca.pem": security.tls_ca_file,
        "client.pem": security.tls_client_cert,
        "client-key.pem": security.tls_client_key,
    }
    for name, pem in files.items():
        path = tmp_path / name
        path.write_text(pem, encoding="ascii")
        path.chmod(0o600)
    config = {
        "distributed.comm.require-encryption": True,
        "distributed.comm.tls.ca-file": str(tmp_path / "ca.pem"),
        "distributed.comm.tls.client.cert": str(tmp_path / "client.pem"),
        "distributed.comm.tls.client.key": str(tmp_path / "client-key.pem"),
    }
    with dask.config.set(config), DaskPool(tls_cluster.scheduler_address) as pool:
        assert pool.client.security.require_encryption
        _run_through(pool)


def _refusal(address: str, **client_kwargs: Any) -> BaseException:
    """What connecting a ``Client`` to ``address`` raises; fails the test if it connects.

    An asynchronous client, on a loop of its own: a synchronous ``Client`` whose
    connection fails leaves its IO-loop thread running, with nothing to stop it.
    """

    async def connect() -> None:
        async with distributed.Client(
            address,
            asynchronous=True,
            timeout=CONNECT_TIMEOUT,
            set_as_default=False,
            **client_kwargs,
        ):
            pass

    started = time.monotonic()
    try:
        asyncio.run(connect())
    except Exception as exc:
        assert time.monotonic() - started < CONNECT_TIMEOUT + 5
        return exc
    pytest.fail(f"a client connected to {address} with {client_kwargs or 'no settings'}")


def test_a_plain_tcp_client_is_refused(tls_cluster: Any) -> None:
    plain = tls_cluster.scheduler_address.replace("tls://", "tcp://", 1)
    error = _refusal(plain)
    # CommClosedError: the scheduler drops the connection at the failed handshake
    # (or, were that reported late, Dask's "Timed out trying to connect"): OSErrors.
    assert isinstance(error, OSError), repr(error)


def test_a_client_with_another_ca_is_refused(tls_cluster: Any) -> None:
    """TLS here is mutual: a certificate the cluster's CA did not sign is turned away."""
    error = _refusal(tls_cluster.scheduler_address, security=Security.temporary())
    assert isinstance(error, OSError), repr(error)  # FatalCommClosedError
    assert re.search(r"(?i)tls|ssl|certificate", str(error)), str(error)


def _docs_example() -> str:
    """The Python block that follows the test marker comment in docs/security.md."""
    text = SECURITY_PAGE.read_text(encoding="utf-8")
    found = re.search(
        r"^% tests/test_dask_security\.py runs the next block\.\n+```python\n(.*?)^```$",
        text,
        re.MULTILINE | re.DOTALL,
    )
    assert found is not None, "docs/security.md lost its tested TLS example"
    return found.group(1)


def test_the_tls_example_of_the_security_page_runs(tmp_path: Path) -> None:
    script = tmp_path / "dask_tls.py"
    script.write_text(_docs_example(), encoding="utf-8")
    done = helpers.run_python(script, timeout=50, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 3, done.stdout
    assert re.fullmatch(r"tls://127\.0\.0\.1:\d+", lines[0])
    assert lines[1:] == ["144", "[0, 1, 4, 9, 16]"]


def test_daskpool_with_no_client_starts_a_cluster_only_this_program_can_use() -> None:
    """Dask's own defaults: plain tcp:// (any local user gets in), dashboard on 0.0.0.0."""
    from urllib.parse import urlsplit

    with pytest.raises(ValueError, match="No global client"):
        distributed.get_client()  # so DaskPool() starts a cluster of its own
    try:
        with DaskPool() as pool:
            client = pool.client
            assert client.scheduler.address.startswith("tls://127.0.0.1:")
            workers = client.scheduler_info()["workers"]
            assert workers
            assert all(address.startswith("tls://127.0.0.1:") for address in workers)
            assert urlsplit(client.dashboard_link).hostname == "127.0.0.1"
            _run_through(pool)
            cluster = client.cluster
        assert cluster.status.name == "closed"
    finally:
        dask_support.stop_dask_threads()
