"""The re-render dialog of one scene: seed (keep / new / typed), prompt, negative, style, template,
size, LoRAs — pre-filled with the scene's current values (:func:`app.narrates.editing.form_for`).
Non-modal; ``submitted(dict changes)`` carries :func:`app.narrates.editing.rerender_changes`,
errors show in the dialog. GUI thread."""

from __future__ import annotations

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QButtonGroup,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QRadioButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from app.narrates.editing import RerenderForm, form_for, rerender_changes
from app.narrates.errors import InvalidEdit
from app.narrates.store import SceneRecord


class RerenderDialog(QDialog):
    """See the module docstring; fields by name for tests."""

    submitted = Signal(object)

    def __init__(self, scene: SceneRecord, shown_seed: int | None, parent: QWidget | None = None):
        super().__init__(parent)
        self.scene = scene
        self.shown_seed = shown_seed
        self.setWindowTitle(f"Re-render scene {scene.id}")
        form = form_for(scene.plan, shown_seed)
        self.seed_keep = QRadioButton(f"Keep ({form.seed or 'random'})")
        self.seed_new = QRadioButton("New random seed")
        self.seed_typed = QRadioButton("This seed:")
        self.seed_keep.setChecked(True)
        group = QButtonGroup(self)
        for button in (self.seed_keep, self.seed_new, self.seed_typed):
            group.addButton(button)
        self.seed = QLineEdit(form.seed)
        self.seed.setEnabled(False)
        self.seed_typed.toggled.connect(self.seed.setEnabled)
        self.prompt = QPlainTextEdit(form.prompt)
        self.negative = QPlainTextEdit(form.negative)
        for edit in (self.prompt, self.negative):
            edit.setMaximumHeight(90)
        self.style = QLineEdit(form.style)
        self.style.setPlaceholderText("default style")
        self.template = QLineEdit(form.template)
        self.width_box, self.height_box = QSpinBox(), QSpinBox()
        for box, value in ((self.width_box, form.width), (self.height_box, form.height)):
            box.setRange(0, 8192)
            box.setSingleStep(64)
            box.setSpecialValueText("template's")
            box.setValue(int(value) if value else 0)
        self.loras = QLineEdit(form.loras)
        self.loras.setPlaceholderText("name.safetensors:0.8[:clip], …")
        self.error = QLabel()
        self.error.setStyleSheet("color: #c62828;")
        self.error.setWordWrap(True)

        seed_row = QHBoxLayout()
        for widget in (self.seed_keep, self.seed_new, self.seed_typed, self.seed):
            seed_row.addWidget(widget)
        size_row = QHBoxLayout()
        size_row.addWidget(self.width_box)
        size_row.addWidget(QLabel("×"))
        size_row.addWidget(self.height_box)
        size_row.addStretch(1)
        layout_form = QFormLayout()
        layout_form.addRow("Seed", seed_row)
        layout_form.addRow("Prompt", self.prompt)
        layout_form.addRow("Negative", self.negative)
        layout_form.addRow("Style", self.style)
        layout_form.addRow("Template", self.template)
        layout_form.addRow("Size", size_row)
        layout_form.addRow("LoRAs", self.loras)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Cancel)
        self.render_button = buttons.addButton("Render", QDialogButtonBox.ButtonRole.AcceptRole)
        buttons.accepted.connect(self.submit)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addLayout(layout_form)
        layout.addWidget(self.error)
        layout.addWidget(buttons)
        self.resize(640, 480)

    def form(self) -> RerenderForm:
        mode = "new" if self.seed_new.isChecked() else "typed" if self.seed_typed.isChecked() else "keep"
        size = (self.width_box.value(), self.height_box.value())
        return RerenderForm(
            mode,
            self.seed.text(),
            self.prompt.toPlainText(),
            self.negative.toPlainText(),
            self.style.text(),
            self.template.text(),
            str(size[0]) if size[0] else "",
            str(size[1]) if size[1] else "",
            self.loras.text(),
        )

    def submit(self) -> None:
        try:
            changes = rerender_changes(self.scene.plan, self.form(), self.shown_seed)
        except InvalidEdit as exc:
            self.error.setText(str(exc))
            return
        self.submitted.emit(changes)
        self.accept()
