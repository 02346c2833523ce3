"""Is the Luna daemon up? The health gate the scene renderer asks before a daemon-node template.

:class:`DaemonHealthGate` answers from the daemon's typed status feed
(:class:`daemon.wire.status_feed.AsyncStatusFeed`): given the app's long-lived feed (the GUI's
composition root owns one), a fresh ``ok`` status is enough, else it waits for the next one within
the timeout; without a feed (``luna story``) it opens a one-shot feed, waits for the first
connect-or-fail, and closes it. Every path is bounded by ``timeout`` — a dead or hung daemon
is "down", never a hung turn.

Runs on the caller's asyncio loop.
"""

from __future__ import annotations

import asyncio
import time

from daemon.wire.status import DaemonStatus
from daemon.wire.status_feed import (
    DEFAULT_WS_PORT,
    AsyncStatusFeed,
    FeedState,
    FeedStateChanged,
)

FRESH_S = 5.0  # the daemon sends a status every second; older than this is not evidence it is up


class DaemonHealthGate:
    """``await gate()`` → True when the daemon's status WebSocket reports ``ok`` (see the module docstring)."""

    def __init__(
        self,
        feed: AsyncStatusFeed | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = DEFAULT_WS_PORT,
        timeout: float = 2.0,
    ) -> None:
        self.feed = feed
        self.host = host
        self.port = port
        self.timeout = timeout
        self.last_error: str | None = None

    async def __call__(self) -> bool:
        try:
            async with asyncio.timeout(self.timeout):
                if self.feed is not None:
                    return await self._check(self.feed)
                async with AsyncStatusFeed(self.host, self.port, open_timeout=self.timeout) as feed:
                    return await self._check(feed)
        except TimeoutError:
            self.last_error = f"no answer from the daemon within {self.timeout:g} s"
        return False

    async def _check(self, feed: AsyncStatusFeed) -> bool:
        """Wait while the feed is (re)connecting; an offline or closed feed means down."""
        if feed.state is not FeedState.CONNECTED:
            async for event in feed.subscribe():  # the current state comes first
                if not isinstance(event, FeedStateChanged):
                    continue
                if event.state is FeedState.CONNECTED:
                    break
                if event.state in (FeedState.OFFLINE, FeedState.CLOSED):
                    self.last_error = event.error or f"the status feed is {event.state.value}"
                    return False
        return await self._ask(feed)

    async def _ask(self, feed: AsyncStatusFeed) -> bool:
        """A fresh status says it; else the next one the daemon sends (one on connect, then every
        second) — not a ``get_status`` request, which the daemon rate-limits and coalesces."""
        latest = feed.latest
        if latest is not None and time.time() - latest.sampled_at < FRESH_S:
            return latest.status == "ok"
        async for event in feed.subscribe():
            if isinstance(event, DaemonStatus):
                return event.status == "ok"
            if isinstance(event, FeedStateChanged) and event.state is not FeedState.CONNECTED:
                self.last_error = event.error or f"the status feed is {event.state.value}"
                return False
        return False
