"""Colours and labels the editor's tables share for a row's state (light palette, readable on
white). Pure constants; GUI thread."""

from __future__ import annotations

from PySide6.QtGui import QBrush, QColor

ERROR_TEXT = QColor("#b71c1c")
ERROR_BACK = QBrush(QColor("#ffebee"))
WARN_TEXT = QColor("#8a4b00")
WARN_BACK = QBrush(QColor("#fff3e0"))
OK_TEXT = QColor("#1b5e20")
MUTED_TEXT = QColor("#757575")
LINK_TEXT = QColor("#1565c0")

BANNER_STYLES = {
    "info": "background: #e3f2fd; color: #0d47a1; border: 1px solid #90caf9;",
    "warning": "background: #fff3e0; color: #8a4b00; border: 1px solid #ffb74d;",
    "error": "background: #ffebee; color: #b71c1c; border: 1px solid #e57373;",
}
