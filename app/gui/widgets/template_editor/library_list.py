"""The template list: every template with where it comes from, and the library actions.

Shows :class:`app.services.template_library.TemplateEntry` s (shipped ones marked read-only,
user copies that hide a shipped one, drafts, templates that cannot be loaded) and forwards
Open / Duplicate / Import / Rename / Delete to the adapter. Names are asked through
``ask_text`` (a ``QInputDialog`` by default; tests put a function there). GUI thread; no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QGridLayout,
    QInputDialog,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QMessageBox,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from app.gui.adapters.template_editor import TemplateEditorAdapter
from app.gui.widgets.template_editor.marks import ERROR_TEXT, MUTED_TEXT, WARN_TEXT
from app.services.template_library import TemplateEntry

AskText = Callable[[str, str, str], str | None]  # (title, label, initial) -> text or None


def ask_with_dialog(parent: QWidget) -> AskText:
    def ask(title: str, label: str, initial: str) -> str | None:
        text, ok = QInputDialog.getText(parent, title, label, text=initial)
        return text.strip() if ok and text.strip() else None

    return ask


def confirm_with_dialog(parent: QWidget) -> Callable[[str], bool]:
    def confirm(question: str) -> bool:
        answer = QMessageBox.question(parent, "Luna templates", question)
        return answer == QMessageBox.StandardButton.Yes

    return confirm


def entry_label(entry: TemplateEntry) -> str:
    tags = []
    if entry.read_only:
        tags.append("shipped, read-only")
    elif entry.overrides_shipped:
        tags.append("yours, replaces the shipped one")
    else:
        tags.append("yours")
    if entry.has_draft:
        tags.append("draft")
    if not entry.has_map:
        tags.append("map detected")
    first = f"{entry.name}   ({', '.join(tags)})"
    second = entry.error or entry.description
    return f"{first}\n    {second}" if second else first


class LibraryList(QWidget):
    """See module docstring. ``import_requested`` asks the panel to show the import dialog."""

    import_requested = Signal()

    def __init__(self, adapter: TemplateEditorAdapter, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("templateLibrary")
        self.adapter = adapter
        self.ask_text: AskText = ask_with_dialog(self)
        self.confirm: Callable[[str], bool] = confirm_with_dialog(self)
        self.list = QListWidget()
        self.list.setObjectName("templateList")
        self.list.setWordWrap(True)
        self.list.itemDoubleClicked.connect(lambda _item: self.open_selected())
        self.list.currentItemChanged.connect(lambda *_: self._update_buttons())
        self.buttons: dict[str, QPushButton] = {}
        grid = QGridLayout()
        for index, (key, text, handler) in enumerate(
            (
                ("open", "Open", self.open_selected),
                ("duplicate", "Duplicate…", self.duplicate_selected),
                ("import", "Import…", self.import_requested.emit),
                ("rename", "Rename…", self.rename_selected),
                ("delete", "Delete", self.delete_selected),
            )
        ):
            button = QPushButton(text)
            button.clicked.connect(handler)
            self.buttons[key] = button
            grid.addWidget(button, index // 2, index % 2)
        hint = QLabel("Shipped templates are read-only: duplicate one to edit it.")
        hint.setWordWrap(True)
        hint.setStyleSheet("color: #616161;")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(QLabel("<b>Templates</b>"))
        layout.addWidget(self.list, 1)
        layout.addLayout(grid)
        layout.addWidget(hint)
        self._entries: list[TemplateEntry] = []
        self._update_buttons()

    def on_entries(self, entries: Sequence[TemplateEntry]) -> None:
        selected = self.selected_name()
        self._entries = list(entries)
        self.list.clear()
        for entry in entries:
            item = QListWidgetItem(entry_label(entry))
            item.setData(Qt.ItemDataRole.UserRole, entry.name)
            item.setToolTip(f"{entry.path}\n{entry.error or entry.description}")
            if entry.error:
                item.setForeground(ERROR_TEXT)
            elif entry.has_draft:
                item.setForeground(WARN_TEXT)
            elif entry.read_only:
                item.setForeground(MUTED_TEXT)
            self.list.addItem(item)
        self.select(selected)
        self._update_buttons()

    def on_document(self, document) -> None:
        if document is not None:
            self.select(document.name)

    def select(self, name: str | None) -> None:
        for row in range(self.list.count()):
            if self.list.item(row).data(Qt.ItemDataRole.UserRole) == name:
                self.list.setCurrentRow(row)
                return

    def selected_name(self) -> str | None:
        item = self.list.currentItem()
        return item.data(Qt.ItemDataRole.UserRole) if item is not None else None

    def _selected_entry(self) -> TemplateEntry | None:
        name = self.selected_name()
        return next((e for e in self._entries if e.name == name), None)

    def _update_buttons(self) -> None:
        entry = self._selected_entry()
        for key in ("open", "duplicate"):
            self.buttons[key].setEnabled(entry is not None)
        for key in ("rename", "delete"):
            self.buttons[key].setEnabled(entry is not None and not entry.read_only)
            self.buttons[key].setToolTip(
                "Shipped templates are read-only; duplicate to edit"
                if entry is not None and entry.read_only
                else ""
            )

    def open_selected(self) -> None:
        name = self.selected_name()
        if name is not None:
            self.adapter.open(name, self.adapter_instance())

    def adapter_instance(self) -> str | None:
        """The instance a UI-format template is converted with: the first healthy one."""
        healthy = [name for name, health in self.adapter.instances if health == "healthy"]
        return healthy[0] if healthy else (self.adapter.instances[0][0] if self.adapter.instances else None)

    def duplicate_selected(self) -> None:
        name = self.selected_name()
        if name is None:
            return
        new_name = self.ask_text(
            "Duplicate template", "Name of the copy:", self.adapter.library.suggest_name(name)
        )
        if new_name:
            self.adapter.duplicate(name, new_name)

    def rename_selected(self) -> None:
        name = self.selected_name()
        if name is None:
            return
        new_name = self.ask_text("Rename template", "New name:", name)
        if new_name and new_name != name:
            self.adapter.rename(name, new_name)

    def delete_selected(self) -> None:
        entry = self._selected_entry()
        if entry is None or entry.read_only:
            return
        what = " (the shipped template of that name will show again)" if entry.overrides_shipped else ""
        if self.confirm(f"Delete the template '{entry.name}', its map and any draft{what}?"):
            self.adapter.delete(entry.name)
