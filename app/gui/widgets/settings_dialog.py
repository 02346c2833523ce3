"""The settings dialog: daemon launch options, ComfyUI instances, paths.

Edits an :class:`app.services.settings.OperatorSettings`; on OK it builds the new settings,
validates them with :func:`app.services.settings.validate` and, when a field is wrong, keeps the
dialog open, names the field in red and focuses its widget. Saving and applying are the
caller's (``accepted_settings`` after ``exec``/``accepted``). GUI thread; no I/O.
"""

from __future__ import annotations

from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from app.comfy.instances import InstanceConfigError, InstancesConfig
from app.services.settings import (
    MODEL_KEYS,
    DaemonSettings,
    ModelSet,
    OperatorSettings,
    PathSettings,
    SettingsError,
    make_instance,
    validate,
)

DEVICES = ("auto", "cpu", "cuda:0", "cuda:1", "mps")
PRECISIONS = ("bf16", "fp16", "fp32")
INSTANCE_COLUMNS = ("Name", "URL", "Styles (comma-separated)", "Headers (Key: value; …)")


def _spin(low: int, high: int, value: int, name: str) -> QSpinBox:
    box = QSpinBox()
    box.setRange(low, high)
    box.setValue(value)
    box.setObjectName(name)
    return box


def _table(columns: tuple[str, ...], name: str) -> QTableWidget:
    table = QTableWidget(0, len(columns))
    table.setObjectName(name)
    table.setHorizontalHeaderLabels(columns)
    table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
    table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
    return table


def _add_row(table: QTableWidget, values: tuple[str, ...]) -> None:
    row = table.rowCount()
    table.insertRow(row)
    for column, value in enumerate(values):
        table.setItem(row, column, QTableWidgetItem(value))


def _cell(table: QTableWidget, row: int, column: int) -> str:
    item = table.item(row, column)
    return item.text().strip() if item is not None else ""


class SettingsDialog(QDialog):
    """See module docstring; ``error_label`` shows the offending field."""

    def __init__(self, settings: OperatorSettings, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("settingsDialog")
        self.setWindowTitle("Luna Operator — Settings")
        self.resize(820, 520)
        self.accepted_settings: OperatorSettings | None = None
        self.tabs = QTabWidget()
        self.tabs.addTab(self._daemon_tab(settings.daemon), "Daemon")
        self.tabs.addTab(self._instances_tab(settings.instances), "ComfyUI instances")
        self.tabs.addTab(self._paths_tab(settings.paths), "Paths")
        self.error_label = QLabel("")
        self.error_label.setObjectName("settingsError")
        self.error_label.setStyleSheet("color: #e57373; font-weight: bold")
        self.error_label.setWordWrap(True)
        buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel
        )
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(self.tabs)
        layout.addWidget(QLabel("Daemon changes take effect when the daemon restarts."))
        layout.addWidget(self.error_label)
        layout.addWidget(buttons)

    # ------------------------------------------------------------------ tabs

    def _daemon_tab(self, daemon: DaemonSettings) -> QWidget:
        page = QWidget()
        form = QFormLayout(page)
        self.host = QLineEdit(daemon.host)
        self.host.setObjectName("daemon.host")
        self.port = _spin(0, 65535, daemon.port, "daemon.port")
        self.ws_port = _spin(0, 65535, daemon.ws_port, "daemon.ws_port")
        for box in (self.port, self.ws_port):
            box.setSpecialValueText("0 (any free port)")
        self.device = QComboBox()
        self.device.setObjectName("daemon.device")
        self.device.setEditable(True)
        self.device.addItems(DEVICES)
        self.device.setCurrentText(daemon.device)
        self.precision = QComboBox()
        self.precision.setObjectName("daemon.precision")
        self.precision.addItems(PRECISIONS)
        self.precision.setCurrentText(daemon.precision)
        self.min_vae = _spin(0, 64, daemon.min_vae_workers, "daemon.min_vae_workers")
        self.max_vae = _spin(1, 64, daemon.max_vae_workers, "daemon.max_vae_workers")
        self.min_clip = _spin(0, 64, daemon.min_clip_workers, "daemon.min_clip_workers")
        self.max_clip = _spin(1, 64, daemon.max_clip_workers, "daemon.max_clip_workers")
        form.addRow("Host:", self.host)
        form.addRow("Protocol port:", self.port)
        form.addRow("Status WebSocket port:", self.ws_port)
        form.addRow("Device:", self.device)
        form.addRow("Precision:", self.precision)
        form.addRow("VAE workers (min / max):", self._pair(self.min_vae, self.max_vae))
        form.addRow("CLIP workers (min / max):", self._pair(self.min_clip, self.max_clip))
        self.model_sets = _table(("Set name", *MODEL_KEYS), "daemon.model_sets")
        for model_set in daemon.model_sets:
            _add_row(self.model_sets, (model_set.name, *(getattr(model_set, kind) for kind in MODEL_KEYS)))
        form.addRow("Model sets:", self._with_buttons(self.model_sets, ("default", "", "", "", "")))
        return page

    def _instances_tab(self, instances: InstancesConfig) -> QWidget:
        page = QWidget()
        form = QFormLayout(page)
        self.instances = _table(INSTANCE_COLUMNS, "instances")
        for instance in instances.instances:
            headers = "; ".join(f"{k}: {v}" for k, v in instance.headers.items())
            _add_row(self.instances, (instance.name, instance.base_url, ", ".join(instance.styles), headers))
        self.default_style = QLineEdit(instances.default_style)
        self.default_style.setObjectName("instances.default_style")
        form.addRow(self._with_buttons(self.instances, ("comfyui-new", "http://127.0.0.1:8188", "anime", "")))
        form.addRow("Default style (unknown styles go here):", self.default_style)
        return page

    def _paths_tab(self, paths: PathSettings) -> QWidget:
        page = QWidget()
        form = QFormLayout(page)
        self.output_dir = QLineEdit(paths.output_dir)
        self.output_dir.setObjectName("paths.output_dir")
        self.output_dir.setPlaceholderText(str(paths.resolved_output_dir()))
        self.models_dir = QLineEdit(paths.models_dir)
        self.models_dir.setObjectName("paths.models_dir")
        form.addRow("Render output folder:", self.output_dir)
        form.addRow("Models folder:", self.models_dir)
        return page

    @staticmethod
    def _pair(first: QWidget, second: QWidget) -> QWidget:
        box = QWidget()
        row = QHBoxLayout(box)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(first)
        row.addWidget(second)
        return box

    @staticmethod
    def _with_buttons(table: QTableWidget, template: tuple[str, ...]) -> QWidget:
        box = QWidget()
        column = QVBoxLayout(box)
        column.setContentsMargins(0, 0, 0, 0)
        column.addWidget(table)
        row = QHBoxLayout()
        add = QPushButton("Add")
        remove = QPushButton("Remove selected")
        add.clicked.connect(lambda: _add_row(table, template))
        remove.clicked.connect(
            lambda: [table.removeRow(i.row()) for i in reversed(table.selectionModel().selectedRows())]
        )
        row.addWidget(add)
        row.addWidget(remove)
        row.addStretch(1)
        column.addLayout(row)
        return box

    # ------------------------------------------------------------------ reading back

    def build_settings(self) -> OperatorSettings:
        """The settings the widgets show; SettingsError names the first wrong field."""
        model_sets = tuple(
            ModelSet(_cell(self.model_sets, row, 0), *(_cell(self.model_sets, row, c + 1) for c in range(4)))
            for row in range(self.model_sets.rowCount())
        )
        daemon = DaemonSettings(
            host=self.host.text().strip(),
            port=self.port.value(),
            ws_port=self.ws_port.value(),
            device=self.device.currentText().strip(),
            precision=self.precision.currentText(),
            min_vae_workers=self.min_vae.value(),
            max_vae_workers=self.max_vae.value(),
            min_clip_workers=self.min_clip.value(),
            max_clip_workers=self.max_clip.value(),
            model_sets=model_sets,
        )
        instances = []
        for row in range(self.instances.rowCount()):
            headers = {}
            for part in _cell(self.instances, row, 3).split(";"):
                if not part.strip():
                    continue
                key, sep, value = part.partition(":")
                if not sep or not key.strip():
                    raise SettingsError(f"instances[{row}].headers", f"{part.strip()!r} is not 'Key: value'")
                headers[key.strip()] = value.strip()
            instances.append(
                make_instance(
                    row,
                    _cell(self.instances, row, 0),
                    _cell(self.instances, row, 1),
                    _cell(self.instances, row, 2),
                    headers,
                )
            )
        try:
            instances_config = InstancesConfig(
                tuple(instances), default_style=self.default_style.text().strip()
            )
        except InstanceConfigError as exc:
            raise SettingsError("instances", str(exc)) from None
        paths = PathSettings(
            output_dir=self.output_dir.text().strip(), models_dir=self.models_dir.text().strip()
        )
        settings = OperatorSettings(daemon=daemon, instances=instances_config, paths=paths)
        validate(settings)
        return settings

    def accept(self) -> None:
        try:
            self.accepted_settings = self.build_settings()
        except SettingsError as exc:
            self.show_error(exc)
            return
        super().accept()

    def show_error(self, exc: SettingsError) -> None:
        self.error_label.setText(f"{exc.field}: {exc.message}")
        widget = self.findChild(QWidget, exc.field)
        if widget is None and exc.field.startswith("instances["):
            widget = self.instances
        if widget is None and exc.field.startswith("daemon.model_sets"):
            widget = self.model_sets
        if widget is not None:
            page = widget
            while page is not None and self.tabs.indexOf(page) < 0:
                page = page.parentWidget()
            if page is not None:
                self.tabs.setCurrentWidget(page)
            widget.setFocus()
