"""Unit fixtures: a fake vLLM server and a real gateway in front of it, both on
loopback, driven with the official openai SDK."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from sqlalchemy import text

from adaptserve.config import Settings
from adaptserve.db import Base, Database
from adaptserve.server import listen
from adaptserve.server.app import create_app
from tests.fakes.fake_vllm import BASE, FakeState, create_fake_vllm
from tests.servers import ServerThread, free_port
from tests.unit.factories import make_adapter, make_base

API_KEY = "sk-test-key"
ADMIN_KEY = "sk-test-admin"


@pytest.fixture(scope="session")
def base_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_base(tmp_path_factory.mktemp("models") / BASE)


@pytest.fixture
def fake() -> Iterator[FakeState]:
    state = FakeState()
    server = ServerThread(create_fake_vllm(state)).start()
    state.url = server.url  # type: ignore[attr-defined]
    state.server = server  # type: ignore[attr-defined]
    yield state
    server.stop()


class RunningGateway:
    def __init__(self, url: str, settings: Settings | None = None, admin_url: str | None = None) -> None:
        self.url = url
        self.settings = settings
        self.admin_url = admin_url or url
        self.server: ServerThread | None = None  # set when it runs in this process

    def client(self, api_key: str = API_KEY) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=api_key, max_retries=0, timeout=10)

    def post(self, path: str, body: Any = None, key: str | None = API_KEY, **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.post(self.url + path, json=body, headers=headers, timeout=10, **kw)

    def admin(self, method: str, path: str, key: str = ADMIN_KEY, **kw: Any) -> httpx.Response:
        return httpx.request(
            method, self.admin_url + "/admin" + path, headers={"Authorization": f"Bearer {key}"}, timeout=10, **kw
        )

    def wait_ready(self, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if httpx.get(self.url + "/ready").status_code == 200:
                    return
            except httpx.ConnectError:  # a gateway process still starting
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("gateway not ready")
            time.sleep(0.05)


def _database_urls() -> dict[str, str | None]:
    """SQLite always; PostgreSQL too when a server is given (scripts/test-postgres.sh)."""
    urls: dict[str, str | None] = {"sqlite": None}
    if os.environ.get("ADAPTSERVE_TEST_DATABASE_URL"):
        urls["postgres"] = os.environ["ADAPTSERVE_TEST_DATABASE_URL"]
    return urls


@pytest.fixture(params=list(_database_urls()))
def database_url(request: pytest.FixtureRequest) -> str | None:
    """Every gateway test runs once per database; each test starts from an empty schema."""
    url = _database_urls()[request.param]
    if url is not None:
        db = Database(url)
        with db.engine.begin() as connection:
            Base.metadata.drop_all(connection)
            connection.execute(text("DROP TABLE IF EXISTS alembic_version"))
        db.dispose()
    return url


@pytest.fixture
def start_gateway(
    fake: FakeState, base_model: Path, tmp_path: Path, database_url: str | None
) -> Iterator[Callable[..., RunningGateway]]:
    started: list[ServerThread] = []

    def start(**overrides: Any) -> RunningGateway:
        values: dict[str, Any] = {
            "api_key": API_KEY,
            "admin_key": ADMIN_KEY,
            "data_dir": tmp_path / "data",
            "model": str(base_model),
            "upstreams": [fake.url],  # type: ignore[attr-defined]
            "health_interval_s": 0.2,
            "database_url": database_url,
            "port": free_port(),
            "log_level": "warning",
        }
        values.update(overrides)
        settings = Settings(**values)
        # The gateway's own listeners (h11, header limit, admin port), in threads.
        main, *admin = [ServerThread(None, config=c) for c in listen.configs(create_app(settings), settings)]
        started.extend([main.start(), *(a.start() for a in admin)])
        gateway = RunningGateway(main.url, settings, admin[0].url if admin else None)
        gateway.server = main
        gateway.wait_ready()
        return gateway

    yield start
    for server in reversed(started):
        server.stop()


@pytest.fixture
def adapters(tmp_path: Path) -> dict[str, Path]:
    return {"alpha": make_adapter(tmp_path / "alpha", seed=1), "beta": make_adapter(tmp_path / "beta", seed=2)}


@pytest.fixture
def gateway(start_gateway: Callable[..., RunningGateway], adapters: dict[str, Path]) -> RunningGateway:
    return start_gateway(adapters=adapters)
