"""Unit fixtures: a fake vLLM server and a real gateway in front of it, both on
loopback, driven with the official openai SDK; and the rendered
deploy/ overlays with the Settings their gateway builds (test_deploy*.py)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, make_url, text

from adaptserve.bench.fake_engine import BASE, FakeState, create_fake_vllm
from adaptserve.config import Settings
from adaptserve.db import Base, Database
from adaptserve.server import listen
from adaptserve.server.app import create_app
from tests.helpers import (
    ADMIN_KEY,
    API_KEY,
    FAKE_ENCODER,
    GATEWAY_DEPLOYMENT,
    GPU_OVERLAYS,
    OVERLAYS,
    K8sObj,
    RunningGateway,
    ServerThread,
    container_of,
    embed_entry,
    free_port,
    make_adapter,
    make_base,
    one_of,
    render_overlay,
    resolved_env,
    stop_all,
)


@pytest.fixture(scope="session")
def base_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_base(tmp_path_factory.mktemp("models") / BASE)


def _fake_engine() -> tuple[FakeState, ServerThread]:
    state = FakeState()
    server = ServerThread(create_fake_vllm(state)).start()
    state.url = server.url  # type: ignore[attr-defined]
    state.server = server  # type: ignore[attr-defined]
    return state, server


@pytest.fixture
def fake() -> Iterator[FakeState]:
    state, server = _fake_engine()
    yield state
    server.stop()


@pytest.fixture
def second_fake() -> Iterator[FakeState]:
    """Another fake engine: a second replica."""
    state, server = _fake_engine()
    yield state
    server.stop()


@pytest.fixture
def encoder(second_fake: FakeState) -> FakeState:
    """The second fake engine as an embedding model's engine (`FAKE_ENCODER`)."""
    second_fake.served = [FAKE_ENCODER]
    return second_fake


@pytest.fixture
def embed_gateway(start_gateway: Callable[..., RunningGateway], encoder: FakeState) -> RunningGateway:
    """A gateway with the fake LLM and the fake encoder as embedding model `embedder`."""
    return start_gateway(models=[embed_entry(encoder)])


def _database_urls() -> dict[str, str | None]:
    """SQLite always; PostgreSQL too when a server is given (scripts/test-postgres.sh)."""
    urls: dict[str, str | None] = {"sqlite": None}
    if os.environ.get("ADAPTSERVE_TEST_DATABASE_URL"):
        urls["postgres"] = os.environ["ADAPTSERVE_TEST_DATABASE_URL"]
    return urls


def _empty(url: str | None) -> str | None:
    """The database at `url` with no tables (SQLite: a fresh file per data folder)."""
    if url is not None:
        db = Database(url)
        with db.engine.begin() as connection:
            Base.metadata.drop_all(connection)
            connection.execute(text("DROP TABLE IF EXISTS alembic_version"))
        db.dispose()
    return url


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """The PostgreSQL database of this process: the one given in a serial run; under
    pytest-xdist one per worker (`<name>_gw0`, ...) on the same server, created empty here
    and dropped at the end, so that no worker drops the tables another is using."""
    given = _database_urls()["postgres"]
    assert given is not None
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker is None:
        yield given
        return
    url = make_url(given)
    own = url.set(database=f"{url.database}_{worker}")
    server = create_engine(url, isolation_level="AUTOCOMMIT")
    drop = text(f'DROP DATABASE IF EXISTS "{own.database}" WITH (FORCE)')
    with server.connect() as connection:
        connection.execute(drop)
        connection.execute(text(f'CREATE DATABASE "{own.database}"'))
    yield own.render_as_string(hide_password=False)
    with server.connect() as connection:
        connection.execute(drop)
    server.dispose()


def _database(request: pytest.FixtureRequest) -> str | None:
    """The `request.param` database (SQLite: None, a file per data folder), emptied."""
    return _empty(request.getfixturevalue("postgres_url") if request.param == "postgres" else None)


@pytest.fixture(params=list(_database_urls()))
def database_url(request: pytest.FixtureRequest) -> str | None:
    """Every gateway test runs once per database; each test starts from an empty schema."""
    return _database(request)


def _start(settings: Settings, started: list[ServerThread]) -> RunningGateway:
    """The gateway's own listeners (h11, header limit, admin port), in threads."""
    main, *admin = [ServerThread(None, config=c) for c in listen.configs(create_app(settings), settings)]
    started.extend([main.start(), *(a.start() for a in admin)])
    gateway = RunningGateway(main.url, settings, admin[0].url if admin else None)
    gateway.server = main
    gateway.wait_ready()
    return gateway


def _settings(fake: FakeState, base_model: Path, data: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "api_key": API_KEY,
        "admin_key": ADMIN_KEY,
        "data_dir": data,
        "model": str(base_model),
        "upstreams": [fake.url],  # type: ignore[attr-defined]
        "health_interval_s": 0.2,
        "port": free_port(),
        "log_level": "warning",
    }
    return Settings(**(values | overrides))


@pytest.fixture
def start_gateway(
    fake: FakeState, base_model: Path, tmp_path: Path, database_url: str | None
) -> Iterator[Callable[..., RunningGateway]]:
    started: list[ServerThread] = []

    def start(**overrides: Any) -> RunningGateway:
        settings = _settings(fake, base_model, tmp_path / "data", **({"database_url": database_url} | overrides))
        return _start(settings, started)

    yield start
    stop_all(started)


@pytest.fixture(scope="module", params=list(_database_urls()))
def module_database_url(request: pytest.FixtureRequest) -> str | None:
    """For a module whose tests share one gateway: once per database, an empty schema."""
    return _database(request)


@pytest.fixture(scope="module")
def shared_gateway(
    module_database_url: str | None, base_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningGateway]:
    """One gateway (and fake engine) for a whole module of read-only table tests: its
    cases change nothing, so they need not start a gateway each."""
    fake, engine = _fake_engine()
    root = tmp_path_factory.mktemp("shared")
    adapters = {"alpha": make_adapter(root / "alpha", seed=1), "beta": make_adapter(root / "beta", seed=2)}
    url = module_database_url
    started: list[ServerThread] = []
    yield _start(_settings(fake, base_model, root / "data", database_url=url, adapters=adapters), started)
    stop_all(started)
    engine.stop()


@pytest.fixture
def adapters(tmp_path: Path) -> dict[str, Path]:
    return {"alpha": make_adapter(tmp_path / "alpha", seed=1), "beta": make_adapter(tmp_path / "beta", seed=2)}


@pytest.fixture
def gateway(start_gateway: Callable[..., RunningGateway], adapters: dict[str, Path]) -> RunningGateway:
    return start_gateway(adapters=adapters)


# --- the deployment's rendered manifests (test_deploy*.py) -------------------------------


@pytest.fixture(params=OVERLAYS)
def deploy_overlay(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def rendered(deploy_overlay: str) -> tuple[K8sObj, ...]:
    return render_overlay(deploy_overlay)


@pytest.fixture(params=GPU_OVERLAYS)
def gpu_rendered(request: pytest.FixtureRequest) -> tuple[K8sObj, ...]:
    """An overlay with GPU engines, KEDA, the Prometheus Operator's objects and the dashboard."""
    return render_overlay(str(request.param))


@pytest.fixture
def gateway_settings(rendered: tuple[K8sObj, ...], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The Settings the gateway container builds from its environment (Secrets and ConfigMaps resolved)."""
    for name in [n for n in os.environ if n.startswith("ADAPTSERVE_")]:
        monkeypatch.delenv(name)
    for name, value in resolved_env(rendered, container_of(one_of(rendered, "Deployment", GATEWAY_DEPLOYMENT))).items():
        monkeypatch.setenv(name, value)
    return Settings()
