"""Render history of one scene: every render side by side (thumbnail, parameters, timings), the
one the scene uses marked ★; "Use this" marks another; tick two and Compare shows them large with
their differing parameters highlighted (:func:`app.narrates.editing.compare_renders`).
Signals: ``use_requested(int render_id)``, ``rerender_requested(int scene_id)``,
``image_clicked(str)``; slot ``set_renders(list[RenderRecord])``. Non-modal. GUI thread."""

from __future__ import annotations

from collections.abc import Sequence

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QDialog,
    QFrame,
    QGridLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QScrollArea,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from app.gui.widgets.story.images import Thumbnail
from app.narrates.editing import compare_renders, render_facts
from app.narrates.store import RenderRecord

SHOWN_FACTS = (
    "status",
    "seed",
    "size",
    "template",
    "style",
    "instance",
    "total (s)",
    "running (s)",
    "changes",
)


class RenderColumn(QFrame):
    """One render in the history."""

    def __init__(self, render: RenderRecord, history: RenderHistory):
        super().__init__()
        self.render = render
        self.setFrameShape(QFrame.Shape.StyledPanel)
        if render.chosen:
            self.setStyleSheet("RenderColumn { border: 2px solid #2e8b3d; }")
        layout = QVBoxLayout(self)
        title = QLabel(f"<b>Render {render.id}</b>" + ("  ★ used by the scene" if render.chosen else ""))
        layout.addWidget(title)
        self.thumbnail = Thumbnail(render.files[0].path if render.files else None, 220)
        self.thumbnail.clicked.connect(history.image_clicked)
        layout.addWidget(self.thumbnail)
        facts = render_facts(render)
        grid = QGridLayout()
        for row, name in enumerate(n for n in SHOWN_FACTS if facts.get(n)):
            grid.addWidget(QLabel(f"{name}:"), row, 0, Qt.AlignmentFlag.AlignTop)
            value = QLabel(facts[name])
            value.setWordWrap(True)
            value.setMaximumWidth(170)
            grid.addWidget(value, row, 1)
        if render.error:
            error = QLabel(render.error.splitlines()[0])
            error.setWordWrap(True)
            error.setStyleSheet("color: #c62828;")
            error.setMaximumWidth(220)
            layout.addWidget(error)
        layout.addLayout(grid)
        row = QHBoxLayout()
        self.use_button = QPushButton("Use this")
        self.use_button.setEnabled(render.status == "done" and not render.chosen)
        self.use_button.clicked.connect(lambda: history.use_requested.emit(render.id))
        self.compare_box = QCheckBox("compare")
        self.compare_box.setEnabled(render.status == "done")
        self.compare_box.toggled.connect(history._update_compare)
        row.addWidget(self.use_button)
        row.addWidget(self.compare_box)
        layout.addLayout(row)
        layout.addStretch(1)


class CompareView(QDialog):
    """Two renders large, side by side, and their parameters (differences in bold)."""

    def __init__(self, a: RenderRecord, b: RenderRecord, parent: QWidget | None = None):
        super().__init__(parent)
        self.setWindowTitle(f"Compare render {a.id} and {b.id}")
        images = QHBoxLayout()
        for render in (a, b):
            column = QVBoxLayout()
            column.addWidget(QLabel(f"<b>Render {render.id}</b>"))
            column.addWidget(Thumbnail(render.files[0].path if render.files else None, 420))
            images.addLayout(column)
        self.rows = compare_renders(a, b)
        self.table = QTableWidget(len(self.rows), 3)
        self.table.setHorizontalHeaderLabels(["", f"Render {a.id}", f"Render {b.id}"])
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setStretchLastSection(True)
        for row, (label, left, right, differs) in enumerate(self.rows):
            for column, text in enumerate((label, left, right)):
                item = QTableWidgetItem(text)
                if differs:
                    font = item.font()
                    font.setBold(True)
                    item.setFont(font)
                self.table.setItem(row, column, item)
        self.table.setWordWrap(True)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.ResizeToContents)
        for column in (1, 2):  # the two renders get the same width
            header.setSectionResizeMode(column, QHeaderView.ResizeMode.Stretch)
        self.table.resizeRowsToContents()
        layout = QVBoxLayout(self)
        layout.addLayout(images)
        layout.addWidget(self.table, 1)
        self.resize(900, 820)


class RenderHistory(QDialog):
    """See the module docstring."""

    use_requested = Signal(int)
    rerender_requested = Signal(int)
    image_clicked = Signal(str)

    def __init__(self, scene_id: int, parent: QWidget | None = None):
        super().__init__(parent)
        self.scene_id = scene_id
        self.setWindowTitle(f"Render history — scene {scene_id}")
        self.columns: list[RenderColumn] = []
        self._row = QHBoxLayout()
        body = QWidget()
        body.setLayout(self._row)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setWidget(body)
        self.compare_button = QPushButton("Compare the two ticked")
        self.compare_button.setEnabled(False)
        self.compare_button.clicked.connect(self.compare)
        rerender = QPushButton("Re-render…")
        rerender.clicked.connect(lambda: self.rerender_requested.emit(self.scene_id))
        buttons = QHBoxLayout()
        buttons.addWidget(rerender)
        buttons.addWidget(self.compare_button)
        buttons.addStretch(1)
        layout = QVBoxLayout(self)
        layout.addWidget(scroll, 1)
        layout.addLayout(buttons)
        self.compare_view: CompareView | None = None
        self.resize(1100, 560)

    def set_renders(self, renders: Sequence[RenderRecord]) -> None:
        for column in self.columns:  # see transcript._discard: Qt deletes them, later
            column.hide()
            column.deleteLater()
        while self._row.count():
            self._row.takeAt(0)
        self.columns = [RenderColumn(r, self) for r in renders]
        for column in self.columns:
            self._row.addWidget(column)
        self._row.addStretch(1)
        self._update_compare()

    def ticked(self) -> list[RenderRecord]:
        return [c.render for c in self.columns if c.compare_box.isChecked()]

    def _update_compare(self) -> None:
        self.compare_button.setEnabled(len(self.ticked()) == 2)

    def compare(self) -> CompareView | None:
        ticked = self.ticked()
        if len(ticked) != 2:
            return None
        self.compare_view = CompareView(ticked[0], ticked[1], self)
        self.compare_view.show()
        return self.compare_view
