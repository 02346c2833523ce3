"""Validate and test-render the open template on a chosen ComfyUI instance.

An instance picker (with each instance's health), one value field per mapped parameter (empty =
the parameter's default, shown greyed, or the workflow's value), Validate / Test render /
Cancel, a progress bar fed by the ComfyUI events (:class:`app.services.render_progress
.ProgressView`), the resulting image, its timings and seed, and the list of problems that
belong to no single row. Intent goes to the adapter; results come back as its signals.
GUI thread; no I/O (the image is read from the file the render service wrote).
"""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtGui import QPixmap
from PySide6.QtWidgets import (
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from app.comfy.render import RenderOutcome
from app.gui.adapters.template_editor import RenderFailure, TemplateEditorAdapter, ValidationView
from app.gui.widgets.template_editor import marks
from app.services.render_progress import ProgressView
from app.services.template_editing import TemplateDocument, value_text

IMAGE_SIZE = 320


class TestRenderPanel(QWidget):
    """See module docstring."""

    __test__ = False  # not a pytest class, whatever its name says

    def __init__(self, adapter: TemplateEditorAdapter, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("testRenderPanel")
        self.adapter = adapter
        self.instance = QComboBox()
        self.instance.setObjectName("instancePicker")
        self.instance.setMinimumWidth(220)
        self.validate_button = QPushButton("Validate on instance")
        self.render_button = QPushButton("Test render")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.validate_button.clicked.connect(self.validate)
        self.render_button.clicked.connect(self.render)
        self.cancel_button.clicked.connect(adapter.cancel_render)
        self.fields: dict[str, QLineEdit] = {}
        self.form_host = QWidget()
        self.form = QFormLayout(self.form_host)
        self.form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setWidget(self.form_host)
        self.progress = QProgressBar()
        self.progress.setObjectName("renderProgress")
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setFormat("")
        self.progress_text = QLabel("No render yet")
        self.progress_text.setWordWrap(True)
        self.result_text = QLabel("")
        self.result_text.setWordWrap(True)
        self.result_text.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.image = QLabel("The test render's image appears here")
        self.image.setObjectName("renderImage")
        self.image.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.image.setMinimumSize(IMAGE_SIZE, IMAGE_SIZE)
        self.image.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Preferred)
        self.image.setStyleSheet("QLabel#renderImage { border: 1px dashed #9e9e9e; color: #757575; }")
        self.issues = QListWidget()
        self.issues.setObjectName("generalIssues")
        self.issues.setWordWrap(True)
        self.issues.setMaximumHeight(90)
        self.issues.hide()  # shown when it has something to say

        picker = QHBoxLayout()
        picker.addWidget(QLabel("Instance:"))
        picker.addWidget(self.instance, 1)
        buttons = QHBoxLayout()
        for button in (self.validate_button, self.render_button, self.cancel_button):
            buttons.addWidget(button)
        left = QVBoxLayout()
        left.addLayout(picker)
        left.addWidget(QLabel("Test values (empty = the default, or the workflow's value):"))
        left.addWidget(scroll, 1)
        left.addLayout(buttons)
        left.addWidget(self.progress)
        left.addWidget(self.progress_text)
        left.addWidget(self.issues)
        right = QVBoxLayout()
        right.addWidget(self.image, 1)
        right.addWidget(self.result_text)
        layout = QHBoxLayout(self)
        layout.addLayout(left, 3)
        layout.addLayout(right, 2)
        self.document: TemplateDocument | None = None
        self._update_buttons()

    # --- adapter signals ---------------------------------------------------------------------

    def on_instances(self, instances: tuple[tuple[str, str], ...]) -> None:
        chosen = self.chosen_instance()
        self.instance.clear()
        for name, health in instances:
            self.instance.addItem(f"{name}  ({health})", name)
        names = [name for name, _ in instances]
        if chosen in names:
            self.instance.setCurrentIndex(names.index(chosen))
        else:
            healthy = [i for i, (_, health) in enumerate(instances) if health == "healthy"]
            if healthy:
                self.instance.setCurrentIndex(healthy[0])
        self._update_buttons()

    def on_document(self, document: TemplateDocument | None) -> None:
        if document is None or self.document is None or document.name != self.document.name:
            # Another template: its own values, and no image or timings of the last one.
            self.fields = {}
            self.image.clear()
            self.image.setText("The test render's image appears here")
            self.result_text.setText("")
            self._set_progress(ProgressView(0, 1, "No render yet"))
        self.document = document
        self.rebuild_fields()
        self._clear_issues()
        self._update_buttons()

    def rebuild_fields(self) -> None:
        old = {name: field.text() for name, field in self.fields.items()}
        while self.form.rowCount():
            self.form.removeRow(0)
        self.fields = {}
        if self.document is None:
            return
        for row in self.document.rows:
            if not row.mapped:
                continue
            field = QLineEdit(old.get(row.name, ""))
            current = self.document.current_value(row.name)
            field.setPlaceholderText(row.default or (value_text(current) if current is not None else ""))
            field.setToolTip(row.description)
            self.fields[row.name] = field
            self.form.addRow(row.name, field)

    def on_validation(self, view: ValidationView) -> None:
        self._clear_issues()
        for problem in view.problems:
            self._issue(f"✖ {problem.param or 'map'}: {problem.message}", "error")
        for issue in view.located.general:
            self._issue(("✖ " if issue.severity == "error" else "⚠ ") + issue.describe(), issue.severity)
        if view.ok:
            self._set_progress(ProgressView(0, 1, f"✔ Valid on {view.instance}"))
        elif not view.problems:
            errors = len(view.report.errors)
            self._set_progress(
                ProgressView(
                    0, 1, f"✖ {errors} error(s) on {view.instance}: see the red rows in Parameters and Nodes"
                )
            )
        else:
            self._set_progress(ProgressView(0, 1, "✖ fix the map's problems first (red rows)"))

    def on_busy(self, text: str) -> None:
        """The adapter is waiting on the instance (e.g. reading its node definitions)."""
        if text:
            self._set_progress(ProgressView(0, 0, text))

    def on_render_started(self) -> None:
        self._clear_issues()
        self.result_text.setText("")
        self._set_progress(ProgressView(0, 0, "Preparing…"))
        self._update_buttons()

    def on_progress(self, view: ProgressView) -> None:
        self._set_progress(view)

    def on_render_finished(self, outcome: RenderOutcome) -> None:
        self._set_progress(ProgressView(1, 1, f"✔ Rendered on {outcome.instance}"))
        images = [f for f in outcome.files if f.mime_type.startswith("image/")]
        if images:
            pixmap = QPixmap(str(images[0].path))
            self.image.setPixmap(
                pixmap.scaled(
                    IMAGE_SIZE,
                    IMAGE_SIZE,
                    Qt.AspectRatioMode.KeepAspectRatio,
                    Qt.TransformationMode.SmoothTransformation,
                )
            )
            self.image.setToolTip(str(images[0].path))
        else:
            self.image.setText("The render produced no image")
        t = outcome.timings
        lines = [
            f"queued {t.queued:.2f} s · running {t.running:.2f} s · fetching {t.fetching:.2f} s · total {t.total:.2f} s",
            f"seed {outcome.seed}" if outcome.seed is not None else "",
            f"{len(outcome.cached_nodes)} node(s) from the cache" if outcome.cached_nodes else "",
            str(images[0].path) if images else "",
        ]
        self.result_text.setText("\n".join(line for line in lines if line))
        for warning in outcome.warnings:
            self._issue(f"⚠ {warning}", "warning")
        self._update_buttons()

    def on_render_failed(self, failure: RenderFailure) -> None:
        self._set_progress(ProgressView(0, 1, f"✖ {failure.message}"))
        for issue in failure.located.general:
            self._issue("✖ " + issue.describe(), issue.severity)
        self._update_buttons()

    # --- intent ------------------------------------------------------------------------------

    def chosen_instance(self) -> str | None:
        data = self.instance.currentData()
        return str(data) if data is not None else None

    def values(self) -> dict[str, str]:
        return {name: field.text() for name, field in self.fields.items() if field.text().strip()}

    def validate(self) -> None:
        instance = self.chosen_instance()
        if instance is not None:
            self.adapter.validate(instance, self.values())

    def render(self) -> None:
        instance = self.chosen_instance()
        if instance is not None:
            self.adapter.test_render(instance, self.values())

    # --- drawing -----------------------------------------------------------------------------

    def _set_progress(self, view: ProgressView) -> None:
        self.progress.setRange(0, view.maximum)
        self.progress.setValue(view.value)
        self.progress.setFormat(f"{view.value} / {view.maximum}" if view.maximum > 1 else "")
        self.progress_text.setText(view.text)
        failed = view.text.startswith("✖")
        self.progress_text.setStyleSheet(f"color: {marks.ERROR_TEXT.name()};" if failed else "")

    def _clear_issues(self) -> None:
        self.issues.clear()
        self.issues.hide()

    def _issue(self, text: str, severity: str) -> None:
        self.issues.show()
        self.issues.addItem(text)
        item = self.issues.item(self.issues.count() - 1)
        item.setForeground(marks.ERROR_TEXT if severity == "error" else marks.WARN_TEXT)
        item.setToolTip(text)

    def _update_buttons(self) -> None:
        ready = self.document is not None and self.chosen_instance() is not None
        rendering = self.adapter.rendering
        self.validate_button.setEnabled(ready)
        self.render_button.setEnabled(ready and not rendering)
        self.cancel_button.setEnabled(rendering)
        if self.chosen_instance() is None:
            self.validate_button.setToolTip("Add a ComfyUI instance in Settings first")
