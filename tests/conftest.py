"""Session-wide: the run's log file (pyproject `log_file`; under pytest-xdist each worker
its own, `.pytest-run-gw0.log`, ...) starts empty, and once every test has finished, no log
the run wrote holds a key it used; TLS contexts built cheaply (`pytest_configure`); and the
browser the console's tests drive (headless Chromium, Debian's packages:
scripts/chromium.sh), for unit and integration tests alike."""

from __future__ import annotations

import os
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import ADMIN_KEY, API_KEY, Browser, ChromeDriver, chromium_paths, leaked_keys


def _worker(config: pytest.Config) -> str | None:
    """The pytest-xdist worker this process is (gw0, gw1, ...), None in the controller or a serial run."""
    workerinput: dict[str, str] | None = getattr(config, "workerinput", None)
    return workerinput["workerid"] if workerinput else None


def _log_file(config: pytest.Config) -> Path | None:
    name = config.getoption("log_file") or config.getini("log_file")
    return Path(name) if name else None


def pytest_configure(config: pytest.Config) -> None:
    """Each xdist worker logs to a file of its own (set before pytest's logging plugin opens it).
    And the system's CA *directory* stands for any CA bundle *file*: httpx builds a TLS context
    for every client it makes (each `httpx.post`, each `openai.OpenAI`), and parsing a bundle
    file costs ~18 ms of CPU each time, where a directory is read lazily, certificate by
    certificate. The tests make thousands of clients for plain http on loopback: this took a
    third of the unit suite's CPU. The tests (and the servers they start) then trust the
    system's CA certificates, not a bundle of their own; none of them reaches anything over TLS."""
    capath = ssl.get_default_verify_paths().openssl_capath
    if os.path.isdir(capath):
        os.environ.pop("SSL_CERT_FILE", None)
        os.environ["SSL_CERT_DIR"] = capath
    log_file, worker = _log_file(config), _worker(config)
    if log_file is not None and worker is not None:
        config.option.log_file = str(log_file.with_name(f"{log_file.stem}-{worker}{log_file.suffix}"))


def pytest_sessionstart(session: pytest.Session) -> None:
    """The controller (or a serial run) empties the run's log file and every worker's, before
    any worker starts; a worker empties nothing, so no record of another is lost."""
    log_file = _log_file(session.config)
    if log_file is None or _worker(session.config) is not None:
        return
    for path in [log_file, *log_file.parent.glob(f"{log_file.stem}-gw*{log_file.suffix}")]:
        path.write_text("")


@pytest.fixture(scope="session", autouse=True)
def no_key_in_any_log(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Torn down last, after every server of the run (in this process) has stopped: the
    pytest log file (every in-process gateway's records at DEBUG) and each server's gateway
    and vLLM logs are searched for the run's keys and for any key a server generated. Under
    xdist each worker searches its own log file and its own temporary folder (popen-gw0/...):
    the tests it ran, all of them."""
    yield
    log_file = _log_file(request.config)
    logs = [log_file.resolve()] if log_file is not None else []
    logs += sorted(tmp_path_factory.getbasetemp().glob("**/*.log"))
    leaks = leaked_keys([p for p in logs if p.is_file()], [API_KEY, ADMIN_KEY])
    assert not leaks, f"keys in the run's logs: {leaks}"


@pytest.fixture(scope="session")
def chromedriver() -> Iterator[ChromeDriver]:
    paths = chromium_paths()
    if paths is None:
        pytest.skip("no chromium and chromedriver on this machine: scripts/chromium.sh installs Debian's packages")
    driver = ChromeDriver(*paths)
    yield driver
    driver.stop()


@pytest.fixture
def browser(chromedriver: ChromeDriver) -> Iterator[Browser]:
    """A fresh headless Chromium (1280x800): nothing kept from another test."""
    session = chromedriver.session()
    yield session
    session.quit()
