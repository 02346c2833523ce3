"""The import dialog: a name, pasted JSON or a file, and the instance a UI-format file is
converted with. Non-modal (the qasync loop keeps running); Import calls the adapter's import and
the dialog closes once it succeeded — a refused import keeps the pasted text and says why.
GUI thread; reads the chosen file only to show it.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from app.gui.adapters.template_editor import ImportResult, TemplateEditorAdapter
from app.gui.widgets.template_editor.marks import ERROR_TEXT


class ImportDialog(QDialog):
    """See module docstring."""

    def __init__(self, adapter: TemplateEditorAdapter, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("importDialog")
        self.setWindowTitle("Import a ComfyUI workflow")
        self.adapter = adapter
        self.name = QLineEdit()
        self.name.setPlaceholderText("template name, e.g. my_portrait")
        self.text = QPlainTextEdit()
        self.text.setPlaceholderText(
            "Paste the workflow JSON here: API format (Workflow → Export (API)) or the UI format "
            "(plain Save; it is converted with the instance chosen below)."
        )
        self.file_button = QPushButton("Load a file…")
        self.file_button.clicked.connect(self._choose_file)
        self.instance = QComboBox()
        for name, health in adapter.instances:
            self.instance.addItem(f"{name}  ({health})", name)
        self.hint = QLabel("")
        self.hint.setWordWrap(True)
        form = QFormLayout()
        form.addRow("Name", self.name)
        file_row = QHBoxLayout()
        file_row.addWidget(self.file_button)
        file_row.addStretch(1)
        form.addRow("File", file_row)
        form.addRow("Convert UI format with", self.instance)
        buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel
        )
        self.ok_button = buttons.button(QDialogButtonBox.StandardButton.Ok)
        self.ok_button.setText("Import")
        buttons.accepted.connect(self.accept_import)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.text, 1)
        layout.addWidget(self.hint)
        layout.addWidget(buttons)
        self.resize(720, 520)
        adapter.import_finished.connect(self.on_import_finished)

    def _choose_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Workflow file", "", "ComfyUI workflow (*.json)")
        if path:
            self.load_file(Path(path))

    def load_file(self, path: Path) -> None:
        try:
            self.text.setPlainText(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            self._say(f"Cannot read {path}: {exc}")
            return
        if not self.name.text().strip():
            self.name.setText(path.stem.removesuffix("_api"))
        self._say(f"Loaded {path}", error=False)

    def accept_import(self) -> None:
        """Start the import; the dialog stays open (with the pasted text) until it succeeded."""
        name, text = self.name.text().strip(), self.text.toPlainText()
        if not name or not text.strip():
            self._say("Give the template a name and paste or load a workflow.")
            return
        instance = self.instance.currentData()
        self.ok_button.setEnabled(False)
        self._say("Importing…", error=False)
        self.adapter.import_text(name, text, str(instance) if instance is not None else None)

    def on_import_finished(self, result: ImportResult) -> None:
        self.ok_button.setEnabled(True)
        if result.document is None:
            self._say(f"Not imported: {result.error}")
            return
        self.accept()

    def _say(self, text: str, *, error: bool = True) -> None:
        self.hint.setText(text)
        self.hint.setStyleSheet(f"color: {ERROR_TEXT.name()};" if error else "")
