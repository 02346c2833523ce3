"""Is the Luna daemon up? The health gate the scene renderer asks before a daemon-node template.

:class:`DaemonHealthGate` answers from the daemon's typed status feed
(:class:`daemon.wire.status_feed.AsyncStatusFeed`): given the app's long-lived feed (the GUI's
composition root owns one), a fresh ``ok`` status is enough, else it asks for one with a
timeout; without a feed (``luna story``) it opens a one-shot feed, waits for the first
connect-or-fail, and closes it. Every path is bounded by ``timeout`` — a dead or hung daemon
is "down", never a hung turn.

Runs on the caller's asyncio loop.
"""

from __future__ import annotations

import asyncio
import time

from daemon.wire.status_feed import (
    DEFAULT_WS_PORT,
    AsyncStatusFeed,
    FeedState,
    FeedStateChanged,
    FeedUnavailable,
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
                    return await self._ask(self.feed)
                async with AsyncStatusFeed(self.host, self.port, open_timeout=self.timeout) as feed:
                    async for event in feed.subscribe():
                        if isinstance(event, FeedStateChanged) and event.state is FeedState.CONNECTED:
                            return await self._ask(feed)
                        if isinstance(event, FeedStateChanged) and event.state is FeedState.OFFLINE:
                            self.last_error = event.error
                            return False
        except TimeoutError:
            self.last_error = f"no answer from the daemon within {self.timeout:g} s"
        return False

    async def _ask(self, feed: AsyncStatusFeed) -> bool:
        latest = feed.latest
        if (
            feed.state is FeedState.CONNECTED
            and latest is not None
            and time.time() - latest.sampled_at < FRESH_S
        ):
            return latest.status == "ok"
        try:
            status = await feed.get_status(timeout=self.timeout)
        except FeedUnavailable as exc:
            self.last_error = str(exc)
            return False
        return status.status == "ok"
