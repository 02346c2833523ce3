"""Start / Stop / Restart buttons for the daemon, enabled to match the supervisor's phase.

Forwards clicks to the supervisor adapter's slots; ``on_state`` enables what makes sense.
GUI thread; no I/O.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtWidgets import QHBoxLayout, QLabel, QPushButton, QWidget

from app.services.daemon_supervisor import Phase


class DaemonControls(QWidget):
    """Buttons ``start_button``, ``stop_button``, ``restart_button`` and a state line."""

    def __init__(self, adapter: Any, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("daemonControls")
        self.start_button = QPushButton("Start daemon")
        self.stop_button = QPushButton("Stop daemon")
        self.restart_button = QPushButton("Restart daemon")
        self.start_button.setToolTip("Start the daemon (Ctrl+Shift+S)")
        self.stop_button.setToolTip("Stop the daemon gracefully (Ctrl+Shift+X)")
        self.restart_button.setToolTip("Restart the daemon (Ctrl+Shift+R)")
        self.state_label = QLabel("stopped")
        self.state_label.setObjectName("supervisorState")
        self.state_label.setWordWrap(True)
        self.start_button.clicked.connect(adapter.start)
        self.stop_button.clicked.connect(adapter.stop)
        self.restart_button.clicked.connect(adapter.restart)
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        for button in (self.start_button, self.stop_button, self.restart_button):
            row.addWidget(button)
        row.addWidget(self.state_label, 1)
        self.on_state(None)

    def on_state(self, state: Any) -> None:
        phase = state.phase if state is not None else Phase.STOPPED
        self.state_label.setText(state.describe() if state is not None else "stopped")
        busy = phase in (Phase.STARTING, Phase.STOPPING, Phase.RESTARTING)
        self.start_button.setEnabled(phase in (Phase.STOPPED, Phase.GAVE_UP))
        self.stop_button.setEnabled(phase.up or phase in (Phase.STARTING, Phase.RESTARTING))
        self.restart_button.setEnabled(not busy)
