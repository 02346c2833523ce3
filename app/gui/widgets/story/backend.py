"""The LLM backend picker: automatic (llm.toml, then discovery, then embedded), the embedded
starter model, a server discovery found, or a URL; shows the effective backend and says plainly
when it is the weak starter model. Signals: ``choice_made(BackendChoice)``, ``rescan()``;
slot ``on_state(BackendState)``, ``set_discovered(...)``. GUI thread."""

from __future__ import annotations

from collections.abc import Sequence

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QComboBox,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from app.narrates.llm import STARTER_NOTE, DiscoveredBackend
from app.services.llm_backend import BackendChoice, BackendState


class BackendPicker(QGroupBox):
    """See the module docstring."""

    choice_made = Signal(object)
    rescan = Signal()

    def __init__(self, parent: QWidget | None = None):
        super().__init__("LLM backend", parent)
        self.mode = QComboBox()
        self.mode.addItem("Automatic (llm.toml → discovered → embedded)", ("auto", ""))
        self.mode.addItem("Embedded model (starter, weak)", ("embedded", ""))
        self.mode.addItem("Server URL…", ("url", ""))
        self.url = QLineEdit()
        self.url.setPlaceholderText("http://127.0.0.1:11434/v1")
        self.use_button = QPushButton("Use")
        self.scan_button = QPushButton("Rescan")
        self.effective = QLabel("LLM: not chosen yet")
        self.effective.setWordWrap(True)
        self.warning = QLabel()
        self.warning.setWordWrap(True)
        self.warning.setStyleSheet("color: #9a5b00;")
        self.warning.setVisible(False)
        self.mode.currentIndexChanged.connect(self._on_mode)
        self.use_button.clicked.connect(self._use)
        self.scan_button.clicked.connect(self.rescan)
        layout = QVBoxLayout(self)
        layout.addWidget(self.mode)
        row = QHBoxLayout()
        row.addWidget(self.url, 1)
        row.addWidget(self.use_button)
        row.addWidget(self.scan_button)
        layout.addLayout(row)
        layout.addWidget(self.effective)
        layout.addWidget(self.warning)
        self._on_mode()

    def index_of(self, data: tuple[str, str]) -> int:
        """The entry holding ``data`` (``findData`` does not compare Python tuples), or -1."""
        return next((i for i in range(self.mode.count()) if self.mode.itemData(i) == data), -1)

    def set_discovered(self, found: Sequence[DiscoveredBackend]) -> None:
        current = self.mode.currentData()
        while self.mode.count() > 3:
            self.mode.removeItem(3)
        for server in found:
            models = ", ".join(server.models[:3]) or "no models listed"
            self.mode.addItem(
                f"Found: {server.name} at {server.base_url} ({models})", ("url", server.base_url)
            )
        index = self.index_of(current)
        self.mode.setCurrentIndex(max(0, index))

    def _on_mode(self) -> None:
        mode, url = self.mode.currentData() or ("auto", "")
        self.url.setEnabled(mode == "url" and not url)
        if url:
            self.url.setText(url)

    def _use(self) -> None:
        mode, url = self.mode.currentData() or ("auto", "")
        try:
            choice = BackendChoice(mode, url or self.url.text())
        except ValueError as exc:
            self.effective.setText(f"LLM: {exc}")
            return
        self.choice_made.emit(choice)

    def on_state(self, state: BackendState) -> None:
        choice = state.choice
        index = self.index_of((choice.mode, choice.url if choice.mode == "url" else ""))
        if index < 0 and choice.mode == "url":
            index = self.index_of(("url", ""))
            self.url.setText(choice.url)
        self.mode.blockSignals(True)
        self.mode.setCurrentIndex(max(0, index))
        self.mode.blockSignals(False)
        self._on_mode()
        self.effective.setText(state.describe().split("\nNote:")[0].replace("\n", "<br>"))
        effective = state.effective
        starter = effective is not None and effective.is_starter and not state.error
        self.warning.setText(
            f"⚠ Weak starter model. {STARTER_NOTE[0].upper()}{STARTER_NOTE[1:]}" if starter else ""
        )
        self.warning.setVisible(starter)
        self.set_discovered(state.discovered)
