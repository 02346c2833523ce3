"""The "Templates" tab: the library list beside the open template (header and banner, the
mapping and node tables, the test-render panel). Layout and wiring of its parts only; every
rule lives in :mod:`app.services.template_editing` / :mod:`app.services.template_library`,
every action goes through :class:`app.gui.adapters.template_editor.TemplateEditorAdapter`.
GUI thread; no I/O.
"""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtGui import QKeySequence, QShortcut
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSplitter,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from app.comfy.templates import PARAM_KINDS
from app.gui.adapters.messages import MessageHub
from app.gui.adapters.template_editor import TemplateEditorAdapter, ValidationView
from app.gui.widgets.template_editor.import_dialog import ImportDialog
from app.gui.widgets.template_editor.library_list import LibraryList
from app.gui.widgets.template_editor.mapping_table import MappingTable
from app.gui.widgets.template_editor.marks import BANNER_STYLES
from app.gui.widgets.template_editor.node_table import NodeTable
from app.gui.widgets.template_editor.test_render import TestRenderPanel
from app.services.template_editing import DocumentError, LocatedIssues, TemplateDocument


class TemplateEditorPanel(QWidget):
    """See module docstring; its parts are attributes for tests and the screenshot script."""

    def __init__(self, adapter: TemplateEditorAdapter, messages: MessageHub, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("templateEditor")
        self.adapter = adapter
        self.messages = messages
        self.library = LibraryList(adapter)
        self.mapping = MappingTable(messages.error)
        self.nodes = NodeTable(messages.error)
        self.test_render = TestRenderPanel(adapter)
        self.title = QLabel("No template open")
        self.title.setObjectName("templateTitle")
        self.title.setStyleSheet("font-size: 15px; font-weight: bold;")
        self.banner = QLabel("")
        self.banner.setObjectName("templateBanner")
        self.banner.setWordWrap(True)
        self.banner.setContentsMargins(8, 6, 8, 6)
        self.banner.hide()
        self.save_button = QPushButton("Save")
        self.save_button.setToolTip("Save the map (Ctrl+S); a map with problems is kept as a draft")
        self.duplicate_button = QPushButton("Duplicate to edit…")
        self.discard_button = QPushButton("Discard draft")
        self.add_button = QPushButton("Add custom parameter…")
        self.remove_button = QPushButton("Remove / unmap selected")
        self.save_button.clicked.connect(self.save)
        self.duplicate_button.clicked.connect(self.duplicate_open)
        self.discard_button.clicked.connect(adapter.discard_draft)
        self.add_button.clicked.connect(self.add_custom)
        self.remove_button.clicked.connect(self._remove_selected)
        self.import_dialog: ImportDialog | None = None

        header = QHBoxLayout()
        header.addWidget(self.title, 1)
        for button in (self.duplicate_button, self.discard_button, self.save_button):
            header.addWidget(button)
        mapping_page = QWidget()
        mapping_layout = QVBoxLayout(mapping_page)
        mapping_layout.setContentsMargins(0, 4, 0, 0)
        mapping_layout.addWidget(self.mapping, 1)
        mapping_buttons = QHBoxLayout()
        mapping_buttons.addWidget(self.add_button)
        mapping_buttons.addWidget(self.remove_button)
        mapping_buttons.addStretch(1)
        mapping_layout.addLayout(mapping_buttons)
        self.tabs = QTabWidget()
        self.tabs.addTab(mapping_page, "Parameters (injection points)")
        self.tabs.addTab(self.nodes, "Nodes")
        editor_split = QSplitter(Qt.Orientation.Vertical)
        editor_split.addWidget(self.tabs)
        editor_split.addWidget(self.test_render)
        editor_split.setStretchFactor(0, 3)
        editor_split.setStretchFactor(1, 2)
        editor = QWidget()
        editor_layout = QVBoxLayout(editor)
        editor_layout.setContentsMargins(0, 0, 0, 0)
        editor_layout.addLayout(header)
        editor_layout.addWidget(self.banner)
        editor_layout.addWidget(editor_split, 1)
        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(self.library)
        split.addWidget(editor)
        split.setStretchFactor(1, 1)
        split.setSizes([280, 1000])
        layout = QVBoxLayout(self)
        layout.addWidget(split)
        QShortcut(QKeySequence.StandardKey.Save, self, self.save)

        adapter.entries_changed.connect(self.library.on_entries)
        adapter.document_changed.connect(self.on_document)
        adapter.instances_changed.connect(self.test_render.on_instances)
        adapter.validation_finished.connect(self.on_validation)
        adapter.busy_changed.connect(self.test_render.on_busy)
        adapter.render_started.connect(self.test_render.on_render_started)
        adapter.render_progress.connect(self.test_render.on_progress)
        adapter.render_finished.connect(self.test_render.on_render_finished)
        adapter.render_failed.connect(self.on_render_failed)
        self.library.import_requested.connect(self.show_import)
        self.mapping.edited.connect(lambda: self._on_edited(self.nodes))
        self.nodes.edited.connect(lambda: self._on_edited(self.mapping))
        self.on_document(None)

    # --- adapter signals ---------------------------------------------------------------------

    def on_document(self, document: TemplateDocument | None) -> None:
        self.mapping.set_document(document)
        self.nodes.set_document(document)
        self.test_render.on_document(document)
        self.library.on_document(document)
        self._update_header()

    def on_validation(self, view: ValidationView) -> None:
        self.mapping.set_located(view.located)
        self.nodes.set_located(view.located)
        self.test_render.on_validation(view)

    def on_render_failed(self, failure) -> None:
        self.mapping.set_located(failure.located)
        self.nodes.set_located(failure.located)
        self.test_render.on_render_failed(failure)

    def _on_edited(self, other: MappingTable | NodeTable) -> None:
        # An edit makes the last validation stale: no row keeps an error it may no longer have.
        other.set_located(LocatedIssues())
        self.test_render.rebuild_fields()
        self._update_header()

    def _update_header(self) -> None:
        document = self.adapter.document
        editable = document is not None and not document.read_only
        self.save_button.setEnabled(editable)
        self.duplicate_button.setEnabled(document is not None)
        self.discard_button.setVisible(document is not None and document.from_draft)
        self.add_button.setEnabled(editable)
        self.remove_button.setEnabled(editable)
        if document is None:
            self.title.setText("No template open — pick one on the left, or import a ComfyUI workflow")
            self._banner("", "info")
            return
        state = (
            "shipped, read-only"
            if document.read_only
            else ("draft" if document.from_draft else "your template")
        )
        unsaved = " · unsaved changes" if document.dirty else ""
        self.title.setText(f"{document.name}   ({state}{unsaved})")
        problems = document.problems()
        if document.read_only:
            self._banner(
                "This is a shipped template and cannot be changed. Click “Duplicate to edit…” to make "
                "your own copy (you can try renders here without saving).",
                "info",
            )
        elif problems:
            listed = "; ".join(f"“{p.param}”: {p.message}" for p in problems[:3])
            more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
            self._banner(
                f"{len(problems)} problem(s) in the map — {listed}{more}. Saving keeps a draft; renders "
                "use the last saved map until these are fixed and it is saved again.",
                "error",
            )
        elif document.from_draft:
            self._banner("Draft with no problems left: Save to make it the template's map.", "warning")
        elif document.detected and document.dirty:
            self._banner(
                "The mapping was detected from the graph: check the rows marked ⚠, then Save.", "warning"
            )
        else:
            self._banner("", "info")

    def _banner(self, text: str, level: str) -> None:
        self.banner.setText(text)
        self.banner.setStyleSheet(f"QLabel#templateBanner {{ {BANNER_STYLES[level]} }}")
        self.banner.setVisible(bool(text))

    # --- intent ------------------------------------------------------------------------------

    def save(self) -> None:
        if self.adapter.document is not None and not self.adapter.document.read_only:
            result = self.adapter.save()
            if result is not None and result.draft:
                self.mapping.show_row(result.problems[0].param)

    def duplicate_open(self) -> None:
        document = self.adapter.document
        if document is None:
            return
        name = self.library.ask_text(
            "Duplicate template", "Name of your copy:", self.adapter.library.suggest_name(document.name)
        )
        if name:
            self.adapter.duplicate_open(name)

    def add_custom(self) -> None:
        document = self.adapter.document
        if document is None:
            return
        text = self.library.ask_text(
            "Add a custom parameter",
            f"Name and kind (kinds: {', '.join(k for k in PARAM_KINDS if k != 'loras')}), e.g. 'mood text':",
            "",
        )
        if not text:
            return
        name, _, kind = text.partition(" ")
        try:
            document.add_custom(name, kind.strip() or "text")
        except DocumentError as exc:
            self.messages.error(str(exc))
            return
        self.mapping.set_located(LocatedIssues())
        self.mapping.selectRow(self.mapping.row_of(name))
        self._on_edited(self.nodes)

    def _remove_selected(self) -> None:
        if self.mapping.remove_selected() is not None:
            self._update_header()

    def show_import(self) -> ImportDialog:
        self.import_dialog = ImportDialog(self.adapter, self)
        self.import_dialog.open()
        return self.import_dialog
