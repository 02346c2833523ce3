"""A worker-pool card (VAE or CLIP): active workers and their ids, queue, requests, limits.

Renders a :class:`daemon.wire.status.PoolStatus`; no I/O. GUI thread.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtWidgets import QFormLayout, QGroupBox, QLabel, QProgressBar, QWidget

from app.gui.widgets import format as fmt


class PoolCard(QGroupBox):
    """One pool; ``pool_name`` is "vae" or "clip" (the status field is ``<name>_pool``)."""

    def __init__(self, pool_name: str, title: str, parent: QWidget | None = None):
        super().__init__(title, parent)
        self.pool_name = pool_name
        self.setObjectName(f"{pool_name}PoolCard")
        layout = QFormLayout(self)
        self.workers_bar = QProgressBar()
        self.workers_bar.setObjectName(f"{pool_name}_workers_bar")
        self.workers_bar.setFormat("%v of max %m workers")
        self.workers_bar.setRange(0, 1)
        self.workers_bar.setValue(0)
        layout.addRow("Workers:", self.workers_bar)
        self._labels: dict[str, QLabel] = {}
        for key, title_text in (
            ("ids", "Worker ids"),
            ("busy", "Busy"),
            ("queue", "Queue depth"),
            ("requests", "Requests"),
            ("limits", "Min / max"),
            ("latency", "Latency"),
            ("blocked", "Scale-up"),
        ):
            label = QLabel("—")
            label.setObjectName(f"{pool_name}_{key}")
            self._labels[key] = label
            layout.addRow(f"{title_text}:", label)

    def value(self, key: str) -> str:
        return self._labels[key].text()

    def on_status(self, status: Any) -> None:
        self.on_pool(getattr(status, f"{self.pool_name}_pool"))

    def on_pool(self, pool: Any) -> None:
        self.workers_bar.setRange(0, max(1, pool.max_workers))
        self.workers_bar.setValue(pool.active_workers)
        labels = self._labels
        labels["ids"].setText(", ".join(f"#{worker}" for worker in pool.worker_ids) or "none")
        labels["busy"].setText(str(pool.busy_workers))
        labels["queue"].setText(str(pool.queue_depth))
        labels["requests"].setText(f"{pool.total_requests:,}")
        labels["limits"].setText(f"{pool.min_workers} / {pool.max_workers}")
        latency = pool.latency_ms
        if latency.p50 is None:
            labels["latency"].setText("—")
        else:
            labels["latency"].setText(f"p50 {fmt.millis(latency.p50)}, p95 {fmt.millis(latency.p95)}")
        labels["blocked"].setText(f"blocked: {pool.scale_up_blocked}" if pool.scale_up_blocked else "allowed")
