"""Cast and world-notes editor of the open session, with its render settings (seed policy, style,
template, size). Fields are text; :mod:`app.narrates.editing` reads them (errors name the row).
Signal: ``save_requested(characters, world, settings)``; slot ``on_view(SessionView)``. GUI thread."""

from __future__ import annotations

from dataclasses import replace

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from app.narrates.editing import character_from_fields, loras_to_text, note_from_fields
from app.narrates.errors import InvalidEdit
from app.narrates.model import SEED_POLICIES
from app.narrates.service import SessionView

CHARACTER_COLUMNS = ("Name", "Aliases", "Description", "Visual descriptors", "LoRAs", "Seed")
NOTE_COLUMNS = ("Title", "Keys", "Priority", "Content")
POLICY_HELP = {
    "scene": "scene: a seed per scene, kept by re-renders",
    "character": "character: the first present character's seed",
    "random": "random: a new seed every render",
}


def _table(columns: tuple[str, ...]) -> QTableWidget:
    table = QTableWidget(0, len(columns))
    table.setHorizontalHeaderLabels(columns)
    table.horizontalHeader().setStretchLastSection(True)
    table.verticalHeader().setVisible(False)
    return table


def _cells(table: QTableWidget, row: int) -> list[str]:
    return [(table.item(row, c).text() if table.item(row, c) else "") for c in range(table.columnCount())]


def _add_row(table: QTableWidget, values: list[str]) -> None:
    row = table.rowCount()
    table.insertRow(row)
    for column, value in enumerate(values):
        table.setItem(row, column, QTableWidgetItem(value))


class CastEditor(QWidget):
    """See the module docstring; the tables and fields by name for tests."""

    save_requested = Signal(object, object, object)

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self._view: SessionView | None = None
        self.characters = _table(CHARACTER_COLUMNS)
        self.notes = _table(NOTE_COLUMNS)
        self.policy = QComboBox()
        for policy in SEED_POLICIES:
            self.policy.addItem(POLICY_HELP.get(policy, policy), policy)
        self.style = QLineEdit()
        self.style.setPlaceholderText("default style")
        self.template = QLineEdit()
        self.size = QLineEdit()
        self.size.setPlaceholderText("the template's own (e.g. 1024x1024)")
        self.premise = QLineEdit()
        self.error = QLabel()
        self.error.setStyleSheet("color: #c62828;")
        self.error.setWordWrap(True)
        tabs = QTabWidget()
        for title, table, noun in (
            ("Characters", self.characters, "character"),
            ("World notes", self.notes, "note"),
        ):
            page = QWidget()
            layout = QVBoxLayout(page)
            layout.addWidget(table)
            row = QHBoxLayout()
            add, remove = QPushButton(f"Add {noun}"), QPushButton("Remove selected")
            add.clicked.connect(lambda _=False, t=table: _add_row(t, [""] * t.columnCount()))
            remove.clicked.connect(lambda _=False, t=table: t.removeRow(t.currentRow()))
            row.addWidget(add)
            row.addWidget(remove)
            row.addStretch(1)
            layout.addLayout(row)
            tabs.addTab(page, title)
        form = QFormLayout()
        form.addRow("Premise", self.premise)
        form.addRow("Seed policy", self.policy)
        form.addRow("Style", self.style)
        form.addRow("Template", self.template)
        form.addRow("Size", self.size)
        self.save_button = QPushButton("Save cast and settings")
        self.save_button.clicked.connect(self.save)
        layout = QVBoxLayout(self)
        layout.addWidget(tabs, 1)
        layout.addLayout(form)
        layout.addWidget(self.error)
        layout.addWidget(self.save_button)
        self.setEnabled(False)

    def on_view(self, view: SessionView | None) -> None:
        same = self._view is not None and view is not None and self._view.session.id == view.session.id
        self._view = view
        self.setEnabled(view is not None)
        if view is None or (same and self._dirty()):
            return
        self._fill(view)

    def _fill(self, view: SessionView) -> None:
        self.error.clear()
        for table in (self.characters, self.notes):
            table.setRowCount(0)
        for c in view.characters:
            _add_row(
                self.characters,
                [
                    c.name,
                    ", ".join(c.aliases),
                    c.description,
                    c.visual,
                    loras_to_text(c.loras),
                    "" if c.seed is None else str(c.seed),
                ],
            )
        for n in view.world:
            _add_row(self.notes, [n.title, ", ".join(n.keys), str(n.priority), n.content])
        for table in (self.characters, self.notes):
            table.resizeColumnsToContents()
            for column in range(table.columnCount()):
                table.setColumnWidth(column, min(table.columnWidth(column), 150))
            table.resizeRowsToContents()
        settings = view.session.settings
        self.policy.setCurrentIndex(max(0, self.policy.findData(settings.seed_policy)))
        self.style.setText(settings.style or "")
        self.template.setText(settings.template)
        self.size.setText(f"{settings.width}x{settings.height}" if settings.width and settings.height else "")
        values = settings.render_values
        own = (
            f"{values['width']}x{values['height']} from the session's render values"
            if "width" in values and "height" in values
            else "the template's own"
        )
        self.size.setPlaceholderText(f"{own} (e.g. 1024x1024)")
        self.premise.setText(settings.premise)
        self._filled = self._snapshot()

    def _snapshot(self) -> tuple:
        rows = tuple(tuple(_cells(t, r)) for t in (self.characters, self.notes) for r in range(t.rowCount()))
        return (
            rows,
            self.policy.currentIndex(),
            self.style.text(),
            self.template.text(),
            self.size.text(),
            self.premise.text(),
        )

    def _dirty(self) -> bool:
        return getattr(self, "_filled", None) != self._snapshot()

    def save(self) -> None:
        if self._view is None:
            return
        try:
            characters = tuple(
                character_from_fields(*_cells(self.characters, r)) for r in range(self.characters.rowCount())
            )
            notes = tuple(note_from_fields(*_cells(self.notes, r)) for r in range(self.notes.rowCount()))
            settings = self._settings()
        except InvalidEdit as exc:
            self.error.setText(str(exc))
            return
        self.error.clear()
        self._filled = self._snapshot()
        self.save_requested.emit(characters, notes, settings)

    def _settings(self):
        settings = self._view.session.settings
        width = height = None
        size = self.size.text().strip().lower()
        if size:
            w, sep, h = size.partition("x")
            if not (sep and w.strip().isdigit() and h.strip().isdigit()):
                raise InvalidEdit(f"size must be WIDTHxHEIGHT (e.g. 1024x1024), got {size!r}")
            width, height = int(w), int(h)
        if not self.template.text().strip():
            raise InvalidEdit("the template is empty")
        return replace(
            settings,
            seed_policy=self.policy.currentData(),
            style=self.style.text().strip() or None,
            template=self.template.text().strip(),
            width=width,
            height=height,
            premise=self.premise.text().strip(),
        )
