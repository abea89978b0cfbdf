"""Session-wide: the run's log file (pyproject `log_file`) starts empty, and once every
test has finished, no log the run wrote holds a key it used; and the browser the console's
tests drive (headless Chromium, Debian's packages: scripts/chromium.sh), for unit and
integration tests alike."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import ADMIN_KEY, API_KEY, Browser, ChromeDriver, chromium_paths, leaked_keys


def pytest_sessionstart(session: pytest.Session) -> None:
    log_file = session.config.getini("log_file")
    if log_file:
        Path(log_file).write_text("")


@pytest.fixture(scope="session", autouse=True)
def no_key_in_any_log(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Torn down last, after every server of the run has stopped: the pytest log file
    (every in-process gateway's records at DEBUG) and each server's gateway and vLLM
    logs are searched for the run's keys and for any key a server generated."""
    yield
    logs = [Path(request.config.getini("log_file")).resolve()]
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
