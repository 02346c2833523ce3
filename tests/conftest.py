"""Test-wide settings: offscreen Qt and a private LUNA_HOME so no test touches real user files."""

from __future__ import annotations

import logging
import os
import tempfile

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
# Subprocesses started by tests inherit this, so they stay out of the real user's directories too.
if not os.environ.get("LUNA_HOME"):
    os.environ["LUNA_HOME"] = tempfile.mkdtemp(prefix="luna-test-home-")


@pytest.fixture(autouse=True)
def luna_home(tmp_path, monkeypatch):
    """Every test gets its own empty LUNA_HOME."""
    home = tmp_path / "luna-home"
    home.mkdir()
    monkeypatch.setenv("LUNA_HOME", str(home))
    return home


#: Loggers this project owns: a WARNING from one of them in a test is a finding, not noise.
OWN_LOGGERS = ("luna", "app", "daemon", "luna_shared_daemon")


class _WarningCollector(logging.Handler):
    """Keeps every WARNING-or-worse record our own loggers emit during one test."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "expect_log_warnings: the test provokes WARNING log records from our own loggers on purpose",
    )


@pytest.fixture(autouse=True)
def fail_on_own_warning_logs(request):
    """A test fails when our loggers warn, unless it is marked ``expect_log_warnings`` or reads caplog."""
    collector = _WarningCollector()
    loggers = [logging.getLogger(name) for name in OWN_LOGGERS]
    for logger in loggers:
        logger.addHandler(collector)
    try:
        yield collector
    finally:
        for logger in loggers:
            logger.removeHandler(collector)
    expected = request.node.get_closest_marker("expect_log_warnings") or "caplog" in request.fixturenames
    if collector.records and not expected:
        lines = "\n".join(f"  {r.name} {r.levelname}: {r.getMessage()}" for r in collector.records[:10])
        pytest.fail(f"unexpected WARNING log records from our own loggers:\n{lines}", pytrace=False)
