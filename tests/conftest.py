"""Session-wide: the run's log file (pyproject `log_file`) starts empty."""

from __future__ import annotations

from pathlib import Path

import pytest


def pytest_sessionstart(session: pytest.Session) -> None:
    log_file = session.config.getini("log_file")
    if log_file:
        Path(log_file).write_text("")
