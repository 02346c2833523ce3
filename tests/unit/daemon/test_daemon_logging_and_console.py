"""Log files per port and a rollover that survives a held file; no stdout → a documented refusal.

Linux checks the logic: the file name per port, a failing rename (the PermissionError Windows
raises as WinError 32 when another process holds the log) losing no record and being retried
later, and ``run_daemon`` with ``sys.stdout`` / ``sys.stderr`` None (as under ``pythonw``)
exiting with ``DaemonExit.NO_STDOUT`` before binding anything, the reason in the log file. Only
Windows can confirm that WinError 32 is what a second process's open handle causes there.
"""

from __future__ import annotations

import logging
import sys

import pytest

from daemon import server
from daemon.logging_setup import TolerantRotatingFileHandler, configure_logging, log_file_name
from daemon.wire.ready import DaemonExit
from tests.helpers.daemon_fixtures import daemon_config


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def record(text: str) -> logging.LogRecord:
    return logging.makeLogRecord({"msg": text, "levelno": logging.INFO, "levelname": "INFO"})


def test_each_daemon_port_has_its_own_log_file():
    assert log_file_name(19283) == "daemon-19283.log"
    assert log_file_name(19290) == "daemon-19290.log"
    assert log_file_name(0) == log_file_name(None) == "daemon.log"


def test_a_rollover_blocked_by_another_process_keeps_every_record_and_retries_later(tmp_path):
    clock = Clock()
    path = tmp_path / "daemon-19283.log"
    handler = TolerantRotatingFileHandler(path, max_bytes=200, backups=2, retry_after=60, clock=clock)
    real_rotate = handler.rotate
    held = True

    def rotate(source, dest):
        if held:  # what os.rename raises on Windows while another process has the file open
            raise PermissionError(13, "The process cannot access the file because it is being used")
        real_rotate(source, dest)

    handler.rotate = rotate
    try:
        for i in range(20):
            handler.emit(record(f"line {i:02d} " + "x" * 40))
        assert handler.failed_rollovers == 1  # tried once, then not again within retry_after
        text = path.read_text(encoding="utf-8")
        assert all(f"line {i:02d}" in text for i in range(20))
        held = False
        clock.now += 61
        handler.emit(record("after the other process let go"))
        assert (tmp_path / "daemon-19283.log.1").is_file()
        assert "after the other process let go" in path.read_text(encoding="utf-8")
    finally:
        handler.close()


def test_without_stderr_only_the_file_is_written(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "stderr", None)
    handle = configure_logging("INFO", log_dir=tmp_path, file_name="daemon-19283.log")
    try:
        assert [type(h) for h in handle.handlers] == [TolerantRotatingFileHandler]
        logging.getLogger("luna.daemon").info("hello file")
    finally:
        handle.close()
    assert "hello file" in (tmp_path / "daemon-19283.log").read_text(encoding="utf-8")


@pytest.mark.expect_log_warnings
def test_no_stdout_refuses_with_its_exit_code_and_says_why_in_the_log(luna_home, monkeypatch):
    monkeypatch.setattr(sys, "stdout", None)
    monkeypatch.setattr(sys, "stderr", None)

    def must_not_run(*_args):
        raise AssertionError("the daemon must not start without stdout")

    monkeypatch.setattr(server, "_run_with_signals", must_not_run)
    config = daemon_config(**{"network.port": 19999})
    assert server.run_daemon(config) == DaemonExit.NO_STDOUT == 3
    log = (luna_home / "logs" / "daemon-19999.log").read_text(encoding="utf-8")
    assert "no stdout to print the LUNA_DAEMON_READY line on" in log
