"""Dashboard widgets fed synchronously with real wire dataclasses and fake clocks (no loop, no I/O)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from app.gui.main_window import MainWindow
from app.gui.widgets.daemon_card import DaemonCard
from app.gui.widgets.instances_table import InstancesTable
from app.gui.widgets.notice_bar import NoticeBar
from app.gui.widgets.pool_card import PoolCard
from app.gui.widgets.scaling_timeline import ScalingTimeline
from app.gui.widgets.vram_plot import VramPlot
from app.services.instances_monitor import InstanceRow
from app.services.ui_state import load_ui_state, save_ui_state
from app.services.vram_history import DAEMON_SERIES, VramHistory
from daemon.wire.status import ScalingEvent, parse_status_message

pytestmark = pytest.mark.gui


class FakeClock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def status_message(**overrides) -> str:
    pool = {
        "type": "vae",
        "active_workers": 2,
        "queue_depth": 3,
        "total_requests": 41,
        "worker_ids": [0, 2],
        "mode": "dynamic",
        "min_workers": 1,
        "max_workers": 4,
        "busy_workers": 2,
        "latency_ms": {"count": 10, "p50": 12.5, "p95": 40.0},
    }
    data = {
        "status": "ok",
        "version": "0.1.0-dynamic",
        "device": "cuda:1 (RTX 3080)",
        "precision": "bf16",
        "uptime_seconds": 3725.0,
        "total_requests": 1234,
        "vram_used_gb": 3.5,
        "vram_total_gb": 10.0,
        "vae_pool": pool,
        "clip_pool": {**pool, "type": "clip", "worker_ids": [0], "active_workers": 1},
        "sampled_at": 1.0,
        "models": {
            "default": {"vae": {"state": "loaded", "dtype": "bfloat16"}, "clip_l": {"state": "loading"}}
        },
        "prompt_cache": {"entries": 3, "max_entries": 256, "hits": 3, "misses": 1, "hit_rate": 0.75},
    }
    data.update(overrides)
    return json.dumps({"type": "status", "data": data})


def test_daemon_card_shows_every_field_from_a_parsed_status(qtbot):
    card = DaemonCard()
    qtbot.addWidget(card)
    card.on_status(parse_status_message(status_message()))
    assert card.value("version") == "0.1.0-dynamic"
    assert card.value("uptime") == "1h 02m 05s"
    assert card.value("requests") == "1,234"
    assert card.value("memory") == "3.50 / 10.00 GiB (VRAM)"
    assert "default/vae bfloat16 (loaded)" in card.value("models")
    assert "default/clip_l (loading)" in card.value("models")
    assert card.value("cache").startswith("75 % hit rate (3 hits, 1 misses")
    assert card.value("latency") == "vae: p50 12.5 ms, p95 40.0 ms; clip: p50 12.5 ms, p95 40.0 ms"


def test_daemon_card_says_system_ram_on_cpu(qtbot):
    card = DaemonCard()
    qtbot.addWidget(card)
    card.on_status(parse_status_message(status_message(device="cpu (system RAM reported as VRAM)")))
    assert card.value("memory").endswith("(system RAM)")


def test_pool_card_shows_workers_ids_queue_and_limits(qtbot):
    card = PoolCard("vae", "VAE pool")
    qtbot.addWidget(card)
    card.on_status(parse_status_message(status_message()))
    assert card.workers_bar.value() == 2 and card.workers_bar.maximum() == 4
    assert card.value("ids") == "#0, #2"
    assert card.value("queue") == "3"
    assert card.value("requests") == "41"
    assert card.value("limits") == "1 / 4"
    assert card.value("latency") == "p50 12.5 ms, p95 40.0 ms"


def test_vram_history_keeps_a_timestamp_window_and_marks_missing_seconds_as_gaps():
    clock = FakeClock(0.0)
    history = VramHistory(window_seconds=60, gap_after=3.0, clock=clock)
    for second in range(70):
        if 30 <= second < 40:  # the daemon was silent for ten seconds
            continue
        history.add(DAEMON_SERIES, 1.0 + second / 100, 8.0, at=float(second))
    window = history.window(DAEMON_SERIES, now=69.0)
    assert window.x[0] >= -61 and window.x[-1] == 0.0  # 60 s by time, plus the entry point
    assert np.isnan(window.y).sum() == 1  # exactly one break, in the silent stretch
    gap_at = window.x[np.isnan(window.y)][0]
    assert -39 < gap_at < -30
    assert window.total_gb == 8.0
    # Silence now: the line ends in a gap instead of being drawn on to "now".
    assert math.isnan(history.window(DAEMON_SERIES, now=80.0).y[-1])


def test_vram_plot_builds_each_curve_once_and_draws_gaps(qtbot):
    clock = FakeClock(100.0)
    history = VramHistory(window_seconds=60, clock=clock)
    plot = VramPlot(history)
    qtbot.addWidget(plot)
    for second in range(70):
        clock.now = 100.0 + second
        history.add(DAEMON_SERIES, 2.0, 10.0)
        if second % 20 < 15:
            history.add("comfyui-anime", 5.0, 24.0)
        plot.refresh()
    daemon_curve = plot.curves[DAEMON_SERIES]
    plot.refresh()
    assert plot.curves[DAEMON_SERIES] is daemon_curve and len(plot.curves) == 2
    x, y = plot.curves["comfyui-anime"].getData()
    assert np.isnan(y).any()  # missing probes show as gaps
    assert len(plot.plot.getPlotItem().listDataItems()) == 2
    (x_min, x_max), (y_min, y_max) = plot.plot.getPlotItem().viewRange()
    assert (x_min, x_max) == (-60, 0)
    assert y_min == 0 and y_max == pytest.approx(24 * 1.05)
    plot.set_daemon_on_system_memory(True)
    assert "system RAM" in plot.axis_label()


def test_scaling_timeline_lists_events_and_places_markers_by_pool_and_age(qtbot):
    clock = FakeClock(50.0)
    timeline = ScalingTimeline(window_seconds=60, clock=clock)
    qtbot.addWidget(timeline)
    timeline.on_scaling(ScalingEvent("scale_up", "vae", 1, 2, 7.25))
    clock.now = 60.0
    timeline.on_scaling(ScalingEvent("scale_down", "clip", 1, 1, 8.0))
    assert timeline.list.count() == 2
    newest = timeline.list.item(0).text()
    assert "scale_down" in newest and "CLIP worker #1" in newest and "8.00 GiB available" in newest
    assert "▲ scale_up  VAE worker #1  → 2 active, 7.25 GiB available" in timeline.list.item(1).text()
    ups = timeline.ups.getData()
    assert list(zip(*ups, strict=True)) == [(-10.0, 1.0)]
    clock.now = 200.0  # both fell out of the window
    timeline.refresh()
    assert len(timeline.ups.getData()[0]) == 0 and len(timeline.downs.getData()[0]) == 0


def _row(name: str, **overrides) -> InstanceRow:
    values = dict(
        name=name,
        url="http://127.0.0.1:8188",
        styles=("anime",),
        health="healthy",
        error=None,
        queue=2,
        vram_used_gb=6.0,
        vram_total_gb=24.0,
        current_job="0123456789abcdef",
        progress=0.5,
    )
    values.update(overrides)
    return InstanceRow(**values)


def test_instances_table_updates_rows_in_place(qtbot):
    table = InstancesTable()
    qtbot.addWidget(table)
    table.on_rows((_row("a"), _row("b", current_job=None, progress=None)))
    first_item = table.item(0, 0)
    assert table.cell_text("a", "Progress") == "50 %"
    assert table.cell_text("a", "Current job") == "01234567"
    assert table.cell_text("b", "Current job") == "idle"
    assert table.cell_text("a", "VRAM") == "6.00 / 24.00 GiB"
    table.on_rows((_row("a", health="unhealthy", error="connection refused", progress=0.75), _row("b")))
    assert table.item(0, 0) is first_item
    assert table.cell_text("a", "Health") == "unhealthy: connection refused"
    assert table.cell_text("a", "Progress") == "75 %"


def test_window_geometry_and_last_tab_are_remembered(qtbot, tmp_path):
    from PySide6.QtWidgets import QLabel

    window = MainWindow(NoticeBar())
    qtbot.addWidget(window)
    window.add_tab("dashboard", "Dashboard", QLabel("d"))
    window.add_tab("log", "Log", QLabel("l"))
    window.show()
    window.resize(640, 480)
    window.show_tab("log")
    save_ui_state(window.ui_state(), tmp_path)

    again = MainWindow(NoticeBar())
    qtbot.addWidget(again)
    again.add_tab("dashboard", "Dashboard", QLabel("d"))
    again.add_tab("log", "Log", QLabel("l"))
    again.restore(load_ui_state(tmp_path))
    again.show()
    assert again.current_tab() == "log"
    assert (again.size().width(), again.size().height()) == (640, 480)
    assert again.actions["show_log"].shortcut().toString() == "Ctrl+2"


def test_a_broken_window_state_file_gives_the_defaults(tmp_path):
    (tmp_path / "ui_state.json").write_text("{not json")
    assert load_ui_state(tmp_path).last_tab == "dashboard"
