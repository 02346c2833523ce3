"""Qt adapter of :class:`app.services.daemon_supervisor.DaemonSupervisor`.

Signals: ``state_changed(SupervisorState)``, ``log_line(str stream, str text)``,
``daemon_up(ReadyInfo)`` (running or attached), ``daemon_down()``. Slots ``start``, ``stop``,
``restart`` run the service's coroutines on the qasync loop and post failures to the
:class:`~app.gui.adapters.messages.MessageHub`. GUI thread only.
"""

from __future__ import annotations

from PySide6.QtCore import QObject, Signal, Slot

from app.gui.adapters.messages import MessageHub
from app.gui.adapters.tasks import TaskSet
from app.services.daemon_supervisor import DaemonSupervisor, LogLine, Phase, SupervisorState


class SupervisorAdapter(QObject):
    """Owns the supervisor's Qt side (see module docstring)."""

    state_changed = Signal(object)
    log_line = Signal(str, str)
    daemon_up = Signal(object)
    daemon_down = Signal()

    def __init__(self, supervisor: DaemonSupervisor, messages: MessageHub, parent: QObject | None = None):
        super().__init__(parent)
        self.supervisor = supervisor
        self._messages = messages
        self._tasks = TaskSet(messages.error)
        self._was_up = False
        self._unsubscribe = supervisor.add_listener(self._on_item)

    def _on_item(self, item: SupervisorState | LogLine) -> None:
        if isinstance(item, LogLine):
            self.log_line.emit(item.stream, item.text)
            return
        self.state_changed.emit(item)
        if item.phase.up and item.ready is not None:
            self._was_up = True
            self.daemon_up.emit(item.ready)
            if item.phase is Phase.ATTACHED:
                self._messages.info(f"Attached to the daemon already running on port {item.ready.port}")
        elif self._was_up:
            self._was_up = False
            self.daemon_down.emit()
        if item.phase is Phase.GAVE_UP:
            self._messages.error(f"Daemon supervisor gave up: {item.detail}")

    @Slot()
    def start(self) -> None:
        self._tasks.spawn(self.supervisor.start(), "supervisor-start", "Starting the daemon")

    @Slot()
    def stop(self) -> None:
        self._tasks.spawn(self.supervisor.stop(), "supervisor-stop", "Stopping the daemon")

    @Slot()
    def restart(self) -> None:
        self._tasks.spawn(self.supervisor.restart(), "supervisor-restart", "Restarting the daemon")

    async def aclose(self) -> None:
        await self._tasks.cancel_all()
        await self.supervisor.aclose()
        self._unsubscribe()
