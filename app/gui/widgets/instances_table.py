"""The ComfyUI instances table: name, URL, styles, health, queue, VRAM, current job and progress.

Renders the tuples of :class:`app.services.instances_monitor.InstanceRow` the instances adapter
emits; rows are updated in place (no model reset per tick). GUI thread; no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence

from PySide6.QtCore import Qt
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHeaderView,
    QProgressBar,
    QTableWidget,
    QTableWidgetItem,
    QWidget,
)

from app.gui.widgets import format as fmt
from app.services.instances_monitor import InstanceRow

COLUMNS = ("Name", "URL", "Styles", "Health", "Queue", "VRAM", "Current job", "Progress")
HEALTH_COLOURS = {"healthy": "#81c784", "unhealthy": "#e57373", "unknown": "#bdbdbd"}


class InstancesTable(QTableWidget):
    """One row per configured instance; ``cell_text(name, column)`` reads a cell back."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(0, len(COLUMNS), parent)
        self.setObjectName("instancesTable")
        self.setHorizontalHeaderLabels(COLUMNS)
        self.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.verticalHeader().setVisible(False)
        header = self.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(COLUMNS.index("Health"), QHeaderView.ResizeMode.Stretch)
        header.setSectionResizeMode(COLUMNS.index("Progress"), QHeaderView.ResizeMode.Fixed)
        self.setColumnWidth(COLUMNS.index("Progress"), 140)
        self._row_of: dict[str, int] = {}
        self.setMinimumHeight(150)

    def on_rows(self, rows: Sequence[InstanceRow]) -> None:
        names = [row.name for row in rows]
        if names != list(self._row_of):
            self.setRowCount(len(rows))
            self._row_of = {name: index for index, name in enumerate(names)}
        for row in rows:
            self._fill(self._row_of[row.name], row)

    def cell_text(self, name: str, column: str) -> str:
        row = self._row_of[name]
        if column == "Progress":
            bar = self.cellWidget(row, COLUMNS.index("Progress"))
            if isinstance(bar, QProgressBar):
                return bar.text()
        item = self.item(row, COLUMNS.index(column))
        return item.text() if item is not None else ""

    def _fill(self, index: int, row: InstanceRow) -> None:
        health = row.health if row.error is None else f"{row.health}: {row.error}"
        if row.vram_total_gb:
            vram = fmt.gigabytes(row.vram_used_gb, row.vram_total_gb)
        else:
            vram = "—"
        job = row.current_job[:8] if row.current_job else "idle"
        values = (
            row.name,
            row.url,
            ", ".join(row.styles),
            health,
            fmt.text(row.queue),
            vram,
            job,
        )
        for column, value in enumerate(values):
            self._text(index, column, value)
        health_item = self.item(index, COLUMNS.index("Health"))
        health_item.setForeground(QColor(HEALTH_COLOURS.get(row.health, "#bdbdbd")))
        health_item.setToolTip(row.error or "")
        self.item(index, COLUMNS.index("Current job")).setToolTip(row.current_job or "")
        self._progress(index, row)

    def _progress(self, index: int, row: InstanceRow) -> None:
        # A progress bar while a job runs; a plain dash otherwise (the view shows any cell
        # widget it holds, so an idle row must not keep one).
        column = COLUMNS.index("Progress")
        bar = self.cellWidget(index, column)
        if row.current_job is None or row.progress is None:
            if bar is not None:
                self.removeCellWidget(index, column)
            self._text(index, column, "—")
            return
        if not isinstance(bar, QProgressBar):
            bar = QProgressBar()
            bar.setRange(0, 100)
            bar.setFormat("%p %")
            bar.setAlignment(Qt.AlignmentFlag.AlignCenter)
            self.setCellWidget(index, column, bar)
            self._text(index, column, "")
        bar.setValue(round(row.progress * 100))

    def _text(self, index: int, column: int, value: str) -> None:
        item = self.item(index, column)
        if item is None:
            item = QTableWidgetItem()
            self.setItem(index, column, item)
        if item.text() != value:
            item.setText(value)
