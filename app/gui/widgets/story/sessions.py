"""The sessions list: new, open, rename, delete, export (Markdown / HTML).

Signals: ``open_requested(int)``, ``new_requested(str title)``, ``rename_requested(int, str)``,
``delete_requested(int)``, ``export_requested(str fmt)``. Asks nothing modal itself except the
confirmations (rename and new use the title field under the list). GUI thread.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QGridLayout,
    QGroupBox,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from app.narrates.store import SessionListing


class SessionsList(QGroupBox):
    """See the module docstring; ``list`` and the buttons by name for tests."""

    open_requested = Signal(int)
    new_requested = Signal(str)
    rename_requested = Signal(int, str)
    delete_requested = Signal(int)
    export_requested = Signal(str)

    def __init__(self, parent: QWidget | None = None):
        super().__init__("Sessions", parent)
        self.list = QListWidget()
        self.list.itemSelectionChanged.connect(self._on_select)
        self.title = QLineEdit()
        self.title.setPlaceholderText("Title (for New / Rename)")
        self.new_button = QPushButton("New")
        self.rename_button = QPushButton("Rename")
        self.delete_button = QPushButton("Delete…")
        self.export_md = QPushButton("Export .md")
        self.export_html = QPushButton("Export .html")
        self.new_button.clicked.connect(lambda: self.new_requested.emit(self.title.text()))
        self.rename_button.clicked.connect(self._rename)
        self.delete_button.clicked.connect(self._delete)
        self.export_md.clicked.connect(lambda: self.export_requested.emit("md"))
        self.export_html.clicked.connect(lambda: self.export_requested.emit("html"))
        self._armed_delete: int | None = None
        layout = QVBoxLayout(self)
        layout.addWidget(self.list, 1)
        layout.addWidget(self.title)
        grid = QGridLayout()
        for index, button in enumerate(
            (self.new_button, self.rename_button, self.delete_button, self.export_md, self.export_html)
        ):
            grid.addWidget(button, index // 3, index % 3)
        layout.addLayout(grid)
        self._update_buttons()

    def selected_id(self) -> int | None:
        item = self.list.currentItem()
        return None if item is None else int(item.data(Qt.ItemDataRole.UserRole))

    def on_sessions(self, sessions: Sequence[SessionListing], current: int | None = None) -> None:
        current = self.selected_id() if current is None else current
        self.list.blockSignals(True)
        self.list.clear()
        for listing in sessions:
            when = dt.datetime.fromtimestamp(listing.updated_at).strftime("%Y-%m-%d %H:%M")
            item = QListWidgetItem(f"{listing.title}\n{listing.turns} turns · {when}")
            item.setData(Qt.ItemDataRole.UserRole, listing.id)
            self.list.addItem(item)
            if listing.id == current:
                self.list.setCurrentItem(item)
        self.list.blockSignals(False)
        self._update_buttons()

    def _on_select(self) -> None:
        self._armed_delete = None
        self.delete_button.setText("Delete…")
        session_id = self.selected_id()
        item = self.list.currentItem()
        if item is not None:
            self.title.setText(item.text().split("\n", 1)[0])
        self._update_buttons()
        if session_id is not None:
            self.open_requested.emit(session_id)

    def _rename(self) -> None:
        session_id = self.selected_id()
        if session_id is not None:
            self.rename_requested.emit(session_id, self.title.text())

    def _delete(self) -> None:
        # Two clicks, no modal dialog (a nested event loop would stall the qasync loop's turns).
        session_id = self.selected_id()
        if session_id is None:
            return
        if self._armed_delete != session_id:
            self._armed_delete = session_id
            self.delete_button.setText("Click again to delete")
            return
        self._armed_delete = None
        self.delete_button.setText("Delete…")
        self.delete_requested.emit(session_id)

    def _update_buttons(self) -> None:
        has = self.selected_id() is not None
        for button in (self.rename_button, self.delete_button, self.export_md, self.export_html):
            button.setEnabled(has)
