"""Qt adapter of the ComfyUI style router's observation side (for the instances table).

Owns an :class:`app.services.instances_monitor.InstancesMonitor` over the app's
:class:`app.comfy.router.StyleRouter` (built by :mod:`app.bootstrap`); starts and closes the
router on the qasync loop. Signal: ``rows_changed(tuple[InstanceRow, ...])``. GUI thread.
"""

from __future__ import annotations

from PySide6.QtCore import QObject, Signal

from app.comfy.router import StyleRouter
from app.gui.adapters.messages import MessageHub
from app.services.instances_monitor import InstanceRow, InstancesMonitor


class InstancesAdapter(QObject):
    """See module docstring."""

    rows_changed = Signal(object)

    def __init__(self, router: StyleRouter, messages: MessageHub, parent: QObject | None = None):
        super().__init__(parent)
        self.router = router
        self.monitor = InstancesMonitor(router)
        self._messages = messages
        self._health: dict[str, str] = {}
        self.monitor.add_listener(self._on_rows)
        self.last_rows: tuple[InstanceRow, ...] = ()

    async def start(self) -> None:
        self.monitor.start()
        await self.router.start()
        self._on_rows(self.monitor.rows())

    async def replace_router(self, router: StyleRouter) -> None:
        """Switch to a router over new instance settings: the old one is closed first."""
        await self.aclose()
        self.router = router
        self.monitor = InstancesMonitor(router)
        self.monitor.add_listener(self._on_rows)
        self._health.clear()
        await self.start()

    def _on_rows(self, rows: tuple[InstanceRow, ...]) -> None:
        self.last_rows = rows
        for row in rows:
            before = self._health.get(row.name)
            self._health[row.name] = row.health
            if before == "healthy" and row.health == "unhealthy":
                self._messages.error(f"ComfyUI {row.name} is down: {row.error}")
            elif before == "unhealthy" and row.health == "healthy":
                self._messages.info(f"ComfyUI {row.name} is back")
        self.rows_changed.emit(rows)

    async def aclose(self) -> None:
        self.monitor.stop()
        await self.router.close()
