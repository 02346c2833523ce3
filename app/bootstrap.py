"""Composition root of the operator app: settings → services → adapters → widgets → window.

:func:`build_operator` is the only place that constructs the services (daemon supervisor,
status feed, style router) and hands them to their Qt adapters and the widgets; nothing is
looked up globally. :class:`Operator` owns the result and starts / stops it in order on the
qasync loop: the router and the supervisor start together; on quit the feed closes first, then
the router, then the supervisor stops the daemon child (an attached daemon keeps running).
Tests and the self-test build it with shorter timings and their own feed or router settings.
GUI thread.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from app.bootstrap_story import StoryParts, build_story
from app.comfy.router import RouterSettings, StyleRouter
from app.gui.adapters.instances import InstancesAdapter
from app.gui.adapters.messages import MessageHub
from app.gui.adapters.status_feed import FeedFactory, StatusFeedAdapter, default_feed_factory
from app.gui.adapters.supervisor import SupervisorAdapter
from app.gui.adapters.tasks import TaskSet
from app.gui.adapters.template_editor import TemplateEditorAdapter
from app.gui.adapters.vram import VramAdapter
from app.gui.main_window import MainWindow
from app.gui.widgets.daemon_card import DaemonCard
from app.gui.widgets.daemon_controls import DaemonControls
from app.gui.widgets.dashboard import DashboardPanel
from app.gui.widgets.instances_table import InstancesTable
from app.gui.widgets.log_pane import LogPane
from app.gui.widgets.notice_bar import NoticeBar
from app.gui.widgets.pool_card import PoolCard
from app.gui.widgets.scaling_timeline import ScalingTimeline
from app.gui.widgets.settings_dialog import SettingsDialog
from app.gui.widgets.template_editor.editor_panel import TemplateEditorPanel
from app.gui.widgets.vram_plot import VramPlot
from app.services.daemon_supervisor import DaemonSupervisor, SupervisorOptions
from app.services.settings import OperatorSettings, SettingsError, save_settings
from app.services.template_library import TemplateLibrary
from app.services.ui_state import UiState, load_ui_state, save_ui_state
from app.services.vram_history import VramHistory
from daemon import auth

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuildOptions:
    """Knobs for tests, the self-test and the benchmarks (production uses the defaults)."""

    supervisor: SupervisorOptions = field(default_factory=SupervisorOptions)
    router: RouterSettings = field(default_factory=RouterSettings)
    feed_factory: FeedFactory | None = None
    config_dir: Path | None = None  # None = user config dir
    remember_window: bool = True
    autostart_daemon: bool = True
    vram_tick_ms: int = 1000
    window_seconds: float = 90.0


@dataclass
class Widgets:
    """The widgets, by role (tests and the screenshot script read them)."""

    daemon_card: DaemonCard
    vae_card: PoolCard
    clip_card: PoolCard
    vram_plot: VramPlot
    timeline: ScalingTimeline
    instances: InstancesTable
    log_pane: LogPane
    controls: DaemonControls
    dashboard: DashboardPanel
    templates: TemplateEditorPanel


class Operator:
    """The built app (see module docstring); ``start`` / ``aclose`` run on the qasync loop."""

    def __init__(
        self,
        *,
        settings: OperatorSettings,
        options: BuildOptions,
        messages: MessageHub,
        supervisor: SupervisorAdapter,
        feed: StatusFeedAdapter,
        instances: InstancesAdapter,
        vram: VramAdapter,
        window: MainWindow,
        widgets: Widgets,
        templates: TemplateEditorAdapter,
    ):
        self.settings = settings
        self.options = options
        self.messages = messages
        self.supervisor = supervisor
        self.feed = feed
        self.instances = instances
        self.vram = vram
        self.window = window
        self.widgets = widgets
        self.templates = templates
        self._started = False
        self.story: StoryParts | None = None  # the Story tab (app.bootstrap_story)
        self._tasks = TaskSet(messages.error)

    async def start(self) -> None:
        self._started = True
        self.vram.start()
        # The daemon child first: it takes the longest to be ready (torch import), so it starts
        # beside everything else.
        if self.options.autostart_daemon and self.settings.daemon.autostart:
            self.supervisor.start()
        await self.instances.start()
        if self.story is not None:
            await self.story.start()

    async def aclose(self) -> None:
        """Feed, router, then the daemon child; remembers the window state."""
        if self.options.remember_window:
            try:
                save_ui_state(self.window.ui_state(), self.options.config_dir)
            except OSError as exc:
                log.info("could not save the window state: %s", exc)
        self.vram.stop()
        await self._tasks.cancel_all()
        if self.story is not None:  # its turn renders through the router: closed before it
            await self.story.aclose()
        await self.feed.aclose()
        await self.templates.aclose()
        await self.instances.aclose()
        await self.supervisor.aclose()

    def open_settings(self) -> SettingsDialog:
        """Show the settings dialog (non-modal, so the loop keeps running); applied on OK."""
        dialog = SettingsDialog(self.settings, self.window)
        dialog.accepted.connect(lambda: self.apply_settings(dialog.accepted_settings))
        dialog.open()
        return dialog

    def apply_settings(self, settings: OperatorSettings | None) -> None:
        if settings is None:
            return
        try:
            save_settings(settings, self.options.config_dir)
        except (SettingsError, OSError) as exc:
            self.messages.error(f"Settings not saved: {exc}")
            return
        daemon_changed = settings.daemon != self.settings.daemon
        instances_changed = settings.instances != self.settings.instances
        self.settings = settings
        self.supervisor.supervisor.settings = settings.daemon
        notes = ["Settings saved"]
        if daemon_changed:
            notes.append("restart the daemon (Ctrl+Shift+R) to apply the daemon changes")
        if instances_changed:
            router = StyleRouter(settings.instances, settings=self.options.router)
            self._tasks.spawn(
                self.instances.replace_router(router), "router-replace", "Applying the instances"
            )
            notes.append("ComfyUI instances applied")
        self.messages.info("; ".join(notes))


def build_operator(settings: OperatorSettings, options: BuildOptions | None = None) -> Operator:
    """Construct every service, adapter and widget and connect them (see module docstring)."""
    options = options or BuildOptions()
    messages = MessageHub()

    supervisor_service = DaemonSupervisor(
        settings.daemon, options=options.supervisor, config_dir=options.config_dir
    )
    supervisor = SupervisorAdapter(supervisor_service, messages)
    feed = StatusFeedAdapter(options.feed_factory or default_feed_factory(auth.read_token), messages)
    router = StyleRouter(settings.instances, settings=options.router)
    instances = InstancesAdapter(router, messages)
    history = VramHistory(window_seconds=options.window_seconds)
    vram = VramAdapter(history, tick_ms=options.vram_tick_ms)

    notice_bar = NoticeBar()
    window = MainWindow(notice_bar)
    daemon_card, vae_card, clip_card = (
        DaemonCard(),
        PoolCard("vae", "VAE pool"),
        PoolCard("clip", "CLIP pool"),
    )
    vram_plot = VramPlot(history)
    timeline = ScalingTimeline(window_seconds=options.window_seconds)
    table = InstancesTable()
    controls = DaemonControls(supervisor)
    dashboard = DashboardPanel(
        controls=controls,
        daemon_card=daemon_card,
        vae_card=vae_card,
        clip_card=clip_card,
        vram_plot=vram_plot,
        timeline=timeline,
        event_list=timeline.list,
        instances=table,
    )
    # The router is looked up at each use: the settings dialog may replace it.
    templates = TemplateEditorAdapter(TemplateLibrary(), lambda: instances.router, messages)
    widgets = Widgets(
        daemon_card,
        vae_card,
        clip_card,
        vram_plot,
        timeline,
        table,
        LogPane(),
        controls,
        dashboard,
        templates=TemplateEditorPanel(templates, messages),
    )
    window.add_tab("dashboard", "Dashboard", widgets.dashboard)
    window.add_tab("log", "Daemon log", widgets.log_pane)
    window.add_tab("templates", "Templates", widgets.templates)
    instances.rows_changed.connect(templates.on_instance_rows)
    templates.refresh()

    _connect(messages, supervisor, feed, instances, vram, widgets, notice_bar)
    operator = Operator(
        settings=settings,
        options=options,
        messages=messages,
        supervisor=supervisor,
        feed=feed,
        instances=instances,
        vram=vram,
        window=window,
        widgets=widgets,
        templates=templates,
    )
    operator.story = build_story(messages, instances, feed)
    window.add_tab("story", "Story", operator.story.panel)
    _add_actions(window, operator)
    if options.remember_window:
        window.restore(load_ui_state(options.config_dir))
    else:
        window.restore(UiState())
    return operator


def _connect(
    messages: MessageHub,
    supervisor: SupervisorAdapter,
    feed: StatusFeedAdapter,
    instances: InstancesAdapter,
    vram: VramAdapter,
    widgets: Widgets,
    notice_bar: NoticeBar,
) -> None:
    messages.posted.connect(notice_bar.on_notice)
    supervisor.state_changed.connect(lambda state: widgets.daemon_card.on_supervisor_state(state.describe()))
    supervisor.state_changed.connect(lambda state: notice_bar.on_supervisor_text(state.describe()))
    supervisor.state_changed.connect(widgets.controls.on_state)
    supervisor.log_line.connect(widgets.log_pane.on_line)
    supervisor.daemon_up.connect(feed.connect_to)
    supervisor.daemon_down.connect(feed.disconnect_feed)
    for target in (widgets.daemon_card, widgets.vae_card, widgets.clip_card, vram):
        feed.status_received.connect(target.on_status)
    feed.scaling_received.connect(widgets.timeline.on_scaling)
    feed.feed_state_changed.connect(notice_bar.on_feed_state)
    feed.feed_state_changed.connect(
        lambda state, _error: widgets.daemon_card.on_feed_offline() if state == "offline" else None
    )
    instances.rows_changed.connect(widgets.instances.on_rows)
    instances.rows_changed.connect(vram.on_rows)
    vram.updated.connect(widgets.vram_plot.refresh)
    vram.updated.connect(widgets.timeline.refresh)
    vram.system_memory_changed.connect(widgets.vram_plot.set_daemon_on_system_memory)


def _add_actions(window: MainWindow, operator: Operator) -> None:
    supervisor = operator.supervisor
    actions: list[tuple[str, str, str, str, Callable]] = [
        ("file", "settings", "&Settings…", "Ctrl+,", operator.open_settings),
        ("file", "quit", "&Quit", "Ctrl+Q", window.close),
        ("daemon", "start_daemon", "&Start", "Ctrl+Shift+S", supervisor.start),
        ("daemon", "stop_daemon", "S&top", "Ctrl+Shift+X", supervisor.stop),
        ("daemon", "restart_daemon", "&Restart", "Ctrl+Shift+R", supervisor.restart),
    ]
    for menu, name, text, shortcut, handler in actions:
        window.add_action(menu, name, text, shortcut, handler)


def with_test_ports(settings: OperatorSettings) -> OperatorSettings:
    """Both daemon ports 0 (a fresh child on free ports, never an attach): self-test, screenshots."""
    return replace(settings, daemon=replace(settings.daemon, port=0, ws_port=0))
