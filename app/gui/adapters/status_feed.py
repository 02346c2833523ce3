"""Qt adapter of the daemon's status WebSocket (:class:`daemon.wire.status_feed.AsyncStatusFeed`).

Follows the supervisor: :meth:`connect_to` (on ``daemon_up``) opens a feed to that daemon and
iterates it on the qasync loop; :meth:`disconnect_feed` (on ``daemon_down``) closes it. The feed
reconnects by itself. Signals: ``status_received(DaemonStatus)``, ``scaling_received(ScalingEvent)``,
``feed_state_changed(str state, str error)`` (state: connecting / connected / reconnecting /
offline / closed). GUI thread only.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, Signal

from app.gui.adapters.messages import MessageHub
from app.gui.adapters.tasks import TaskSet
from daemon.wire.ready import ReadyInfo
from daemon.wire.status import DaemonStatus, ScalingEvent
from daemon.wire.status_feed import AsyncStatusFeed, FeedStateChanged, MalformedMessage

FeedFactory = Callable[[ReadyInfo], Any]


def default_feed_factory(token_reader: Callable[[], str | None]) -> FeedFactory:
    def make(ready: ReadyInfo) -> AsyncStatusFeed:
        return AsyncStatusFeed(ready.host, ready.ws_port, token=token_reader())

    return make


class StatusFeedAdapter(QObject):
    """One live status feed at a time (see module docstring)."""

    status_received = Signal(object)
    scaling_received = Signal(object)
    feed_state_changed = Signal(str, str)

    def __init__(self, feed_factory: FeedFactory, messages: MessageHub, parent: QObject | None = None):
        super().__init__(parent)
        self._factory = feed_factory
        self._messages = messages
        self._tasks = TaskSet(messages.error)
        self._feed: Any | None = None
        self._pump: asyncio.Task | None = None
        self.last_status: DaemonStatus | None = None
        self.state = "offline"

    @property
    def feed(self) -> Any | None:
        """The live :class:`AsyncStatusFeed` (None while the daemon is down): the story panel's
        daemon health gate reads it instead of opening a second connection."""
        return self._feed

    def connect_to(self, ready: ReadyInfo) -> None:
        self._tasks.spawn(self._switch(ready), "status-feed-switch", "Connecting to the daemon status")

    def disconnect_feed(self) -> None:
        self._tasks.spawn(self._switch(None), "status-feed-close", "Closing the daemon status feed")

    async def _switch(self, ready: ReadyInfo | None) -> None:
        await self._close_current()
        if ready is None:
            self._set_state("offline", "")
            return
        self._feed = self._factory(ready)
        await self._feed.start()
        self._pump = self._tasks.spawn(self._run(self._feed), "status-feed", "Daemon status feed")

    async def _close_current(self) -> None:
        pump, feed = self._pump, self._feed
        self._pump = self._feed = None
        if pump is not None:
            pump.cancel()
            try:
                await pump
            except asyncio.CancelledError:
                if asyncio.current_task() is not None and asyncio.current_task().cancelling():
                    raise
        if feed is not None:
            await feed.aclose()

    async def _run(self, feed: Any) -> None:
        async for message in feed:
            if isinstance(message, DaemonStatus):
                self.last_status = message
                self.status_received.emit(message)
            elif isinstance(message, ScalingEvent):
                self.scaling_received.emit(message)
            elif isinstance(message, FeedStateChanged):
                self._set_state(message.state.value, message.error or "")
            elif isinstance(message, MalformedMessage):
                self._messages.error(f"The daemon sent a malformed status message: {message.error}")

    def _set_state(self, state: str, error: str) -> None:
        if state == self.state:
            return
        self.state = state
        self.feed_state_changed.emit(state, error)
        if state == "reconnecting" and error:
            self._messages.error(f"Daemon status feed lost: {error}; reconnecting")

    async def aclose(self) -> None:
        await self._close_current()
        await self._tasks.cancel_all()
