"""Rows of the dashboard's ComfyUI instances table, built from the router's snapshots.

Owns the join of :class:`app.comfy.router.InstanceSnapshot` (health, queue, VRAM) with the
job each instance is running now and its progress (the instance client's active
:class:`app.comfy.jobs.Job`). :class:`InstancesMonitor` subscribes to the router (every change)
and to each instance client's events (``progress`` arrives between router changes) and calls
its listeners with a fresh tuple of :class:`InstanceRow`. It never polls: the router's own
health task probes the instances. Runs on the router's asyncio loop (the GUI's qasync loop).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from app.comfy.events import ExecutionStart, Progress
from app.comfy.router import InstanceSnapshot, RouterSnapshot, StyleRouter

log = logging.getLogger(__name__)
GIB = 1024**3


@dataclass(frozen=True)
class InstanceRow:
    """One table row: the router's view plus the current job."""

    name: str
    url: str
    styles: tuple[str, ...]
    health: str  # "healthy" / "unhealthy" / "unknown"
    error: str | None
    queue: int | None
    vram_used_gb: float | None
    vram_total_gb: float | None
    current_job: str | None
    progress: float | None  # 0..1 of the current job

    @classmethod
    def from_snapshot(cls, snap: InstanceSnapshot, job: Any | None) -> InstanceRow:
        used = total = None
        if snap.vram_total:
            total = snap.vram_total / GIB
            used = (snap.vram_total - (snap.vram_free or 0)) / GIB
        return cls(
            name=snap.name,
            url=snap.base_url,
            styles=snap.styles,
            health=snap.state,
            error=snap.last_error,
            queue=snap.queue_remaining,
            vram_used_gb=used,
            vram_total_gb=total,
            current_job=job.prompt_id if job is not None else None,
            progress=job.progress.fraction if job is not None else None,
        )


RowsListener = Callable[[tuple[InstanceRow, ...]], None]


class InstancesMonitor:
    """Turns router changes and job progress into table rows (see module docstring)."""

    def __init__(self, router: StyleRouter):
        self._router = router
        self._listeners: list[RowsListener] = []
        self._unsubscribe: list[Callable[[], None]] = []

    def start(self) -> None:
        """Subscribe to the router and every instance client (idempotent)."""
        if self._unsubscribe:
            return
        self._unsubscribe.append(self._router.add_listener(self._on_router_change))
        for instance in self._router.config.instances:
            client = self._router.client(instance.name)
            self._unsubscribe.append(client.add_listener(self._on_client_event))

    def stop(self) -> None:
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe.clear()

    def add_listener(self, listener: RowsListener) -> Callable[[], None]:
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def rows(self, snapshot: RouterSnapshot | None = None) -> tuple[InstanceRow, ...]:
        snapshot = snapshot or self._router.snapshot()
        return tuple(
            InstanceRow.from_snapshot(snap, self._current_job(snap.name)) for snap in snapshot.instances
        )

    def _current_job(self, name: str) -> Any | None:
        jobs = self._router.client(name).jobs
        running = [job for job in jobs if job.started]
        return running[0] if running else (jobs[0] if jobs else None)

    def _on_router_change(self, snapshot: RouterSnapshot) -> None:
        self._emit(self.rows(snapshot))

    def _on_client_event(self, event: Any) -> None:
        if isinstance(event, (Progress, ExecutionStart)):
            self._emit(self.rows())

    def _emit(self, rows: tuple[InstanceRow, ...]) -> None:
        for listener in list(self._listeners):
            try:
                listener(rows)
            except Exception:
                log.exception("instances listener failed")
