"""Logging for the daemon process: stderr plus a rotating file in the user log directory.

Owns the handler set-up done once by ``python -m daemon`` / ``luna-daemon`` (never by the
:class:`~daemon.server.DaemonServer` class, so embedding it in tests or the app leaves the
host's logging alone). Called on the main thread before the event loop starts.

Windows: a log file cannot be renamed while another process has it open (WinError 32), so each
daemon port logs to its own file (``daemon-19283.log``), and the rotating handler, should a
rollover still fail, keeps appending to the current file and tries again a minute later instead
of losing records. Without a console (``pythonw``, a windowed executable) ``sys.stderr`` is None:
then only the file is written.
"""

from __future__ import annotations

import logging
import logging.handlers
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from daemon.paths import user_dirs

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
LOG_FILE_NAME = "daemon.log"


def log_file_name(port: int | None = None) -> str:
    """``daemon-<port>.log`` for a fixed port (one file per daemon), else ``daemon.log``."""
    return f"daemon-{port}.log" if port else LOG_FILE_NAME


class TolerantRotatingFileHandler(logging.handlers.RotatingFileHandler):
    """A :class:`~logging.handlers.RotatingFileHandler` whose failed rollover is not fatal.

    When the rename fails (WinError 32: another process holds the file; or any other OSError) it
    reopens the current file, keeps appending, and does not try again for ``retry_after`` seconds.
    Runs on whichever thread logs (logging's handler lock serialises it).
    """

    def __init__(
        self,
        filename: Path,
        *,
        max_bytes: int,
        backups: int,
        retry_after: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        super().__init__(filename, maxBytes=max_bytes, backupCount=backups, encoding="utf-8")
        self.retry_after = retry_after
        self._clock = clock
        self._next_try = -float("inf")
        self.failed_rollovers = 0

    def shouldRollover(self, record: logging.LogRecord) -> bool:
        if self._clock() < self._next_try:
            return False
        return bool(super().shouldRollover(record))

    def doRollover(self) -> None:
        try:
            super().doRollover()
        except OSError:
            self.failed_rollovers += 1
            self._next_try = self._clock() + self.retry_after
            if self.stream is None:
                self.stream = self._open()


@dataclass
class LoggingHandle:
    """The handlers installed on the ``luna`` logger; :meth:`close` removes them."""

    log_file: Path | None
    handlers: list[logging.Handler] = field(default_factory=list)

    def close(self) -> None:
        logger = logging.getLogger("luna")
        for handler in self.handlers:
            logger.removeHandler(handler)
            handler.close()
        self.handlers.clear()


def configure_logging(
    level: str = "INFO",
    *,
    log_dir: Path | None = None,
    max_bytes: int = 5 * 1024 * 1024,
    backups: int = 3,
    file_name: str = LOG_FILE_NAME,
) -> LoggingHandle:
    """Send ``luna.*`` records to stderr (when there is one) and to ``<log dir>/<file_name>``."""
    logger = logging.getLogger("luna")
    logger.setLevel(level)
    logger.propagate = False
    formatter = logging.Formatter(LOG_FORMAT)
    handle = LoggingHandle(log_file=None)

    stderr: logging.Handler | None = None
    if sys.stderr is not None:
        stderr = logging.StreamHandler(sys.stderr)
        stderr.setFormatter(formatter)
        handle.handlers.append(stderr)

    directory = log_dir if log_dir is not None else user_dirs().logs
    try:
        directory.mkdir(parents=True, exist_ok=True)
        file_handler = TolerantRotatingFileHandler(
            directory / file_name, max_bytes=max_bytes, backups=backups
        )
    except OSError as exc:  # a read-only home must not stop the daemon
        if stderr is not None:
            stderr.handle(
                logging.makeLogRecord(
                    {
                        "msg": f"cannot write log file in {directory}: {exc}",
                        "levelno": logging.WARNING,
                        "levelname": "WARNING",
                        "name": "luna.daemon",
                    }
                )
            )
    else:
        file_handler.setFormatter(formatter)
        handle.handlers.append(file_handler)
        handle.log_file = directory / file_name

    for handler in handle.handlers:
        logger.addHandler(handler)
    return handle
