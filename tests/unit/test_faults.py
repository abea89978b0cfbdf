"""Faults, injected for real: a client that stops reading its stream, the database
going away and coming back, the data disk full or read-only during an upload, and
the gateway killed (SIGKILL) while adapter versions are being swapped."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
from sqlalchemy import text

from adaptserve.adapters.spec import tree_digest
from adaptserve.db import Database
from adaptserve.errors import DatabaseUnavailableError
from tests.fakes.tcp_proxy import TcpProxy
from tests.helpers import (
    ADMIN_KEY,
    API_KEY,
    RunningGateway,
    assert_openai_error,
    free_port,
    make_adapter,
    tar_gz,
    wait_for,
)

CHAT = "/v1/chat/completions"
HI = [{"role": "user", "content": "hi"}]


def test_a_client_that_stops_reading_is_dropped_and_the_upstream_aborted(start_gateway, fake):
    gw = start_gateway(stream_stall_timeout_s=1.0)
    fake.endless_word = "x" * 4096  # an answer that never ends: only backpressure stops it
    request = b'{"model":"default","stream":true,"messages":[{"role":"user","content":"hi"}]}'
    head = (
        f"POST {CHAT} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(request)}\r\n\r\n"
    ).encode()
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", gw.server.port))
        sock.sendall(head + request)  # ... and never read
        wait_for(lambda: fake.streams_cancelled == 1, timeout_s=30)
        sent = fake.chunks_sent
        time.sleep(1.0)
        assert fake.chunks_sent == sent  # nothing more is pulled from the engine
    # What the gateway held is bounded by the socket buffers, not by the answer.
    assert sent * 4096 < 64 * 1024 * 1024
    assert fake.streams_open == 0
    assert gw.post(CHAT, {"model": "default", "messages": HI}).status_code == 200
    # Recorded as cut by the client (499, metered up to the cut), not as served.
    metrics = httpx.get(gw.url + "/metrics", headers={"Authorization": f"Bearer {ADMIN_KEY}"}).text
    assert 'adaptserve_requests_total{endpoint="chat",model="default",status="499",tenant="default"} 1.0' in metrics


def test_an_unreachable_database_is_a_503(tmp_path):
    db = Database(f"postgresql+psycopg://nobody@127.0.0.1:{free_port()}/none?connect_timeout=2")
    with pytest.raises(DatabaseUnavailableError) as err, db.session() as session:
        session.execute(text("SELECT 1"))
    assert err.value.status == 503 and err.value.headers["Retry-After"]


def test_database_outage_is_503_and_service_resumes_without_losing_usage(start_gateway, database_url):
    if database_url is None:
        pytest.skip("needs a database server to take away (PostgreSQL run)")
    parts = urlsplit(database_url)
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432).start()
    proxied = urlunsplit(parts._replace(netloc=f"{parts.username}@127.0.0.1:{proxy.port}"))
    # No read cache: every request reads its key and alias (a cached one rides out an outage)
    gw = start_gateway(database_url=proxied, usage_flush_interval_s=2.0, read_cache_ttl_s=0)
    for _ in range(3):
        assert gw.post(CHAT, {"model": "default", "messages": HI}).status_code == 200
    proxy.cut()
    try:
        for call in (
            lambda: gw.post(CHAT, {"model": "default", "messages": HI}),
            lambda: gw.admin("POST", "/tenants", json={"name": "during-outage"}),
        ):
            response = call()
            assert_openai_error(response, 503, "database_unavailable")
            assert int(response.headers["Retry-After"]) > 0
        assert httpx.get(gw.url + "/health").status_code == 200
        time.sleep(2.5)  # a usage flush fails meanwhile; its counts are kept
    finally:
        proxy.restore()
    wait_for(lambda: gw.post(CHAT, {"model": "default", "messages": HI}).status_code == 200, timeout_s=20)
    assert gw.admin("POST", "/tenants", json={"name": "after-outage"}).status_code == 201

    def requests_metered() -> int:
        rows = gw.admin("GET", "/usage", params={"tenant": "default"}).json()["data"]
        return sum(r["requests"] for r in rows)

    wait_for(lambda: requests_metered() == 4, timeout_s=30)  # 3 before, 1 after; none lost (flushed every 2 s)
    proxy.cut()


@contextlib.contextmanager
def small_disk(path: Path, size: str = "1m"):
    """A tmpfs of `size` mounted at `path` (root and mount rights needed)."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small filesystem here: {mounted.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _fill(disk: Path, leave: int) -> Path:
    filler = disk / "filler"
    stat = os.statvfs(disk)
    filler.write_bytes(b"\0" * max(stat.f_bavail * stat.f_frsize - leave, 0))
    return filler


def test_full_or_read_only_disk_during_upload_keeps_the_old_version(start_gateway, fake, tmp_path):
    data = tmp_path / "data"
    with small_disk(data / "adapters") as disk:
        gw = start_gateway(data_dir=data)
        v1 = make_adapter(tmp_path / "v1", seed=1)
        first = gw.admin("POST", "/adapters", json={"name": "up", "path": str(v1)}).json()
        assert gw.admin("PUT", "/tenants/default/models/up", json={"adapter": "up"}).status_code == 200
        before = sorted(p.name for p in disk.iterdir())
        v2 = make_adapter(tmp_path / "v2", seed=2)

        filler = _fill(disk, leave=2048)
        for attempt in (
            lambda: gw.admin("POST", "/adapters", json={"name": "up", "path": str(v2)}),
            lambda: gw.admin("POST", "/adapters", data={"name": "up"}, files={"file": ("a.tar.gz", tar_gz(v2))}),
        ):
            assert_openai_error(attempt(), 507, "insufficient_storage")
            assert sorted(p.name for p in disk.iterdir()) == sorted([*before, "filler"])
        filler.unlink()

        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        refused = gw.admin("POST", "/adapters", json={"name": "up", "path": str(v2)})
        assert_openai_error(refused, 507, "insufficient_storage")
        assert "read-only" in refused.json()["error"]["message"].lower()
        assert [v["version"] for v in gw.admin("GET", "/adapters/up").json()["versions"]] == [first["version"]]
        assert gw.post(CHAT, {"model": "up", "messages": HI}).status_code == 200
        assert fake.requests[-1]["model"] == f"up--{first['version']}"  # the old version still serves

        subprocess.run(["mount", "-o", "remount,rw", str(disk)], check=True)
        second = gw.admin("POST", "/adapters", json={"name": "up", "path": str(v2)})
        assert second.status_code == 201  # the disk is back: so is the upload
        gw.server.stop()


def _serve(data: Path, base_model: Path, upstream: str, port: int) -> subprocess.Popen:
    env = {
        **os.environ,
        "ADAPTSERVE_DATA_DIR": str(data),
        "ADAPTSERVE_API_KEY": API_KEY,
        "ADAPTSERVE_ADMIN_KEY": ADMIN_KEY,
        "ADAPTSERVE_HEALTH_INTERVAL_S": "0.2",
        "ADAPTSERVE_LOG_LEVEL": "warning",
    }
    command = [sys.executable, "-m", "adaptserve", "serve", "--model", str(base_model), "--upstream", upstream]
    return subprocess.Popen([*command, "--port", str(port)], env=env, stdout=subprocess.DEVNULL)


def _swap_until_killed(url: str, versions: list[Path], stop: threading.Event, swaps: list[str]) -> None:
    """Upload and activate versions in turn, as fast as the gateway answers."""
    # httpx's default 5 s timeout would end the swapping quietly (an HTTPError) if a loaded
    # machine were slow to answer before the first swap; the kill ends these calls at once.
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    with contextlib.suppress(httpx.HTTPError):
        for i in range(10_000):
            if stop.is_set():
                return
            folder = versions[i % len(versions)]
            body = {"name": "hot", "path": str(folder)}
            pushed = httpx.post(url + "/admin/adapters", json=body, headers=admin, timeout=60)
            version = pushed.json()["version"]
            httpx.post(url + "/admin/adapters/hot/activate", json={"version": version}, headers=admin, timeout=60)
            swaps.append(version)


def _check_consistent(gw: RunningGateway, store: Path, fake) -> None:
    described = gw.admin("GET", "/adapters/hot").json()
    versions = {v["version"] for v in described["versions"]}
    assert described["active_version"] in versions
    for folder in (p for p in store.iterdir() if not p.name.startswith(".")):
        assert tree_digest(folder) == folder.name  # every visible folder is whole
    assert gw.post(CHAT, {"model": "hot", "messages": HI}).status_code == 200
    assert fake.requests[-1]["model"] == f"hot--{described['active_version']}"


@pytest.mark.parametrize("kill_after_s", [0.3, 0.9])
def test_gateway_killed_during_hot_swaps_comes_back_consistent(fake, base_model, tmp_path, kill_after_s):
    data, port = tmp_path / "data", free_port()
    versions = [make_adapter(tmp_path / f"v{i}", seed=i) for i in range(4)]
    process = _serve(data, base_model, fake.url, port)
    gw = RunningGateway(f"http://127.0.0.1:{port}")
    try:
        gw.wait_ready(timeout_s=60)
        assert gw.admin("POST", "/adapters", json={"name": "hot", "path": str(versions[0])}).status_code == 201
        assert gw.admin("PUT", "/tenants/default/models/hot", json={"adapter": "hot"}).status_code == 200
        stop, swaps = threading.Event(), []
        swapper = threading.Thread(target=_swap_until_killed, args=(gw.url, versions, stop, swaps))
        swapper.start()
        wait_for(lambda: len(swaps) > 0, timeout_s=30)  # swapping is under way (a slow machine may take a while)
        time.sleep(kill_after_s)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        stop.set()
        swapper.join(timeout=30)

        process = _serve(data, base_model, fake.url, port)
        gw.wait_ready(timeout_s=60)
        _check_consistent(gw, data / "adapters", fake)
    finally:
        process.kill()
        process.wait(timeout=10)
