"""The daemon card: supervisor state plus what the daemon's status feed says about itself.

Renders a :class:`daemon.wire.status.DaemonStatus` (``on_status``) and the supervisor's state
line (``on_supervisor_state``); owns no I/O. GUI thread.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtWidgets import QFormLayout, QGroupBox, QLabel, QWidget

from app.gui.widgets import format as fmt
from app.services.vram_history import is_system_memory

FIELDS = (
    ("supervisor", "Supervisor"),
    ("status", "Status"),
    ("version", "Version"),
    ("device", "Device"),
    ("precision", "Precision"),
    ("uptime", "Uptime"),
    ("requests", "Total requests"),
    ("memory", "Memory"),
    ("models", "Models loaded"),
    ("cache", "Prompt cache"),
    ("latency", "Latency"),
)


class DaemonCard(QGroupBox):
    """Daemon facts as label rows; ``value(key)`` reads one back (tests, self-test)."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__("Daemon", parent)
        self.setObjectName("daemonCard")
        layout = QFormLayout(self)
        self._labels: dict[str, QLabel] = {}
        for key, title in FIELDS:
            label = QLabel("—")
            label.setObjectName(f"daemon_{key}")
            label.setWordWrap(True)
            self._labels[key] = label
            layout.addRow(f"{title}:", label)

    def value(self, key: str) -> str:
        return self._labels[key].text()

    def on_supervisor_state(self, text: str) -> None:
        self._labels["supervisor"].setText(text)

    def on_feed_offline(self) -> None:
        self._labels["status"].setText("offline (no status)")

    def on_status(self, status: Any) -> None:
        labels = self._labels
        labels["status"].setText(fmt.text(status.status))
        labels["version"].setText(fmt.text(status.version))
        labels["device"].setText(fmt.text(status.device))
        labels["precision"].setText(fmt.text(status.precision))
        labels["uptime"].setText(fmt.duration(status.uptime_seconds))
        labels["requests"].setText(f"{status.total_requests:,}")
        memory_kind = "system RAM" if is_system_memory(status) else "VRAM"
        labels["memory"].setText(
            f"{fmt.gigabytes(status.vram_used_gb, status.vram_total_gb)} ({memory_kind})"
        )
        labels["models"].setText(describe_models(status.models))
        cache = status.prompt_cache
        labels["cache"].setText(
            f"{fmt.percent(cache.hit_rate)} hit rate ({cache.hits} hits, {cache.misses} misses, "
            f"{cache.entries}/{cache.max_entries} cached)"
        )
        labels["latency"].setText(describe_latency(status))


def describe_models(models: Any) -> str:
    """One line per model: ``default/vae fp32 (loaded)`` — the dtype it really computes in."""
    if not models:
        return "none configured"
    lines = []
    for set_name, kinds in models.items():
        for kind, model in kinds.items():
            dtype = f" {model.dtype}" if model.dtype else ""
            error = f": {model.error}" if model.error else ""
            lines.append(f"{set_name}/{kind}{dtype} ({model.state}{error})")
    return "\n".join(lines)


def describe_latency(status: Any) -> str:
    parts = []
    for name in ("vae_pool", "clip_pool"):
        pool = getattr(status, name)
        latency = pool.latency_ms
        if latency.p50 is not None:
            parts.append(f"{pool.type}: p50 {fmt.millis(latency.p50)}, p95 {fmt.millis(latency.p95)}")
    return "; ".join(parts) or "no requests yet"
