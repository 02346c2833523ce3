"""The status bar: the one place the operator reads notices and expected failures.

Shows the latest :class:`app.gui.adapters.messages.Notice` (errors in red, kept until the next
notice; info for ``info_ms``) and, on the right, permanent daemon / status-feed indicators.
GUI thread; no I/O.
"""

from __future__ import annotations

from PySide6.QtWidgets import QLabel, QStatusBar, QWidget

from app.gui.adapters.messages import Notice


class NoticeBar(QStatusBar):
    """See module docstring."""

    def __init__(self, info_ms: int = 8000, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("noticeBar")
        self._info_ms = info_ms
        self.daemon_label = QLabel("daemon: stopped")
        self.daemon_label.setObjectName("daemonIndicator")
        self.feed_label = QLabel("status: offline")
        self.feed_label.setObjectName("feedIndicator")
        self.addPermanentWidget(self.daemon_label)
        self.addPermanentWidget(self.feed_label)
        self.last_notice: Notice | None = None

    def on_notice(self, notice: Notice) -> None:
        self.last_notice = notice
        if notice.level == "error":
            self.setStyleSheet("QStatusBar { color: #e57373; }")
            self.showMessage(notice.text)
        else:
            self.setStyleSheet("")
            self.showMessage(notice.text, self._info_ms)

    def on_supervisor_text(self, text: str) -> None:
        self.daemon_label.setText(f"daemon: {text.split(' (')[0]}")
        self.daemon_label.setToolTip(text)

    def on_feed_state(self, state: str, error: str) -> None:
        self.feed_label.setText(f"status: {state}")
        self.feed_label.setToolTip(error)
