"""Scene images: a clickable thumbnail and the large view it opens. GUI thread."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QMouseEvent, QPixmap
from PySide6.QtWidgets import QDialog, QLabel, QScrollArea, QVBoxLayout, QWidget


def load_pixmap(path: Path | str | None, size: int | None = None) -> QPixmap:
    pixmap = QPixmap(str(path)) if path else QPixmap()
    if size and not pixmap.isNull():
        pixmap = pixmap.scaled(
            size, size, Qt.AspectRatioMode.KeepAspectRatio, Qt.TransformationMode.SmoothTransformation
        )
    return pixmap


class Thumbnail(QLabel):
    """An image scaled to ``size``; a click emits ``clicked(path)`` (the panel opens it large)."""

    clicked = Signal(str)

    def __init__(self, path: Path | str | None, size: int = 256, parent: QWidget | None = None):
        super().__init__(parent)
        self.path = str(path) if path else ""
        self.setAlignment(Qt.AlignmentFlag.AlignCenter)
        pixmap = load_pixmap(path, size)
        if pixmap.isNull():
            self.setText("(no image)")
            self.setFixedSize(size, size // 2)
        else:
            self.setPixmap(pixmap)
            self.setCursor(Qt.CursorShape.PointingHandCursor)
            self.setToolTip("Click to open it large")
        self.setStyleSheet("QLabel { border: 1px solid palette(mid); background: palette(base); }")

    def mouseReleaseEvent(self, event: QMouseEvent) -> None:
        if event.button() == Qt.MouseButton.LeftButton and self.path:
            self.clicked.emit(self.path)
        super().mouseReleaseEvent(event)


class ImageViewer(QDialog):
    """The image at full size (scrollable), non-modal."""

    def __init__(self, path: str, title: str = "Scene", parent: QWidget | None = None):
        super().__init__(parent)
        self.setWindowTitle(f"{title} — {Path(path).name}")
        self.image = QLabel()
        self.image.setPixmap(load_pixmap(path))
        self.image.setAlignment(Qt.AlignmentFlag.AlignCenter)
        scroll = QScrollArea()
        scroll.setWidget(self.image)
        scroll.setWidgetResizable(True)
        layout = QVBoxLayout(self)
        layout.addWidget(scroll)
        size = self.image.pixmap().size()
        self.resize(min(1200, size.width() + 40), min(900, size.height() + 40))
