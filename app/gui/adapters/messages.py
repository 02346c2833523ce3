"""The one place expected failures and notices go: a QObject hub the status bar listens to.

Services never show dialogs; adapters call :meth:`MessageHub.error` / :meth:`info` with a
readable sentence and the window's status bar (:mod:`app.gui.widgets.notice_bar`) shows it.
Also the target of the app's ``sys.excepthook``, so an ``asyncSlot`` failure is a readable line,
not a traceback dialog. GUI thread.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass

from PySide6.QtCore import QObject, Signal

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Notice:
    """One message for the operator."""

    level: str  # "info" | "error"
    text: str
    at: float


class MessageHub(QObject):
    """Signals: ``posted(Notice)``."""

    posted = Signal(object)

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self.history: deque[Notice] = deque(maxlen=200)

    def info(self, text: str) -> None:
        self._post("info", text)

    def error(self, text: str) -> None:
        self._post("error", text)

    def _post(self, level: str, text: str) -> None:
        notice = Notice(level, text, time.time())
        self.history.append(notice)
        self.posted.emit(notice)
