"""Logging for the daemon process: stderr plus a rotating file in the user log directory.

Owns the handler set-up done once by ``python -m daemon`` / ``luna-daemon`` (never by the
:class:`~daemon.server.DaemonServer` class, so embedding it in tests or the app leaves the
host's logging alone). Called on the main thread before the event loop starts.
"""

from __future__ import annotations

import logging
import logging.handlers
import sys
from dataclasses import dataclass, field
from pathlib import Path

from daemon.paths import user_dirs

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
LOG_FILE_NAME = "daemon.log"


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
    level: str = "INFO", *, log_dir: Path | None = None, max_bytes: int = 5 * 1024 * 1024, backups: int = 3
) -> LoggingHandle:
    """Send ``luna.*`` records to stderr and to ``<log dir>/daemon.log`` (rotating)."""
    logger = logging.getLogger("luna")
    logger.setLevel(level)
    logger.propagate = False
    formatter = logging.Formatter(LOG_FORMAT)
    handle = LoggingHandle(log_file=None)

    stderr = logging.StreamHandler(sys.stderr)
    stderr.setFormatter(formatter)
    handle.handlers.append(stderr)

    directory = log_dir if log_dir is not None else user_dirs().logs
    try:
        directory.mkdir(parents=True, exist_ok=True)
        file_handler = logging.handlers.RotatingFileHandler(
            directory / LOG_FILE_NAME, maxBytes=max_bytes, backupCount=backups, encoding="utf-8"
        )
    except OSError as exc:  # a read-only home must not stop the daemon
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
        handle.log_file = directory / LOG_FILE_NAME

    for handler in handle.handlers:
        logger.addHandler(handler)
    return handle
