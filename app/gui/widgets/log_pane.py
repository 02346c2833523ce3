"""The daemon log pane: the child's stdout/stderr lines as they are drained, bounded.

Appends lines the supervisor adapter emits; keeps at most ``max_lines`` (the document drops the
oldest blocks itself). GUI thread; no I/O.
"""

from __future__ import annotations

from PySide6.QtGui import QFont
from PySide6.QtWidgets import QPlainTextEdit, QWidget


class LogPane(QPlainTextEdit):
    """Read-only monospace log of the daemon child (stderr lines marked)."""

    def __init__(self, max_lines: int = 5000, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("daemonLog")
        self.setReadOnly(True)
        self.setMaximumBlockCount(max_lines)
        self.setLineWrapMode(QPlainTextEdit.LineWrapMode.NoWrap)
        font = QFont("monospace")
        font.setStyleHint(QFont.StyleHint.Monospace)
        self.setFont(font)
        self.setPlaceholderText("The daemon's output appears here once it starts.")

    def on_line(self, stream: str, line: str) -> None:
        self.appendPlainText(line if stream == "stdout" else f"[{stream}] {line}")
