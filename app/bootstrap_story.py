"""The story tab's part of the composition root (called by :func:`app.bootstrap.build_operator`).

Builds the session store (``<user data>/narrates``), the LLM backend manager (the embedded
runtime only starts when a turn needs it), the :class:`~app.gui.adapters.story.StoryAdapter` over
the app's own instances adapter (style router) and status-feed adapter (daemon health), and the
:class:`~app.gui.widgets.story.panel.StoryPanel`. :class:`StoryParts` is what the operator keeps:
``start`` (list the sessions, resolve the LLM backend) and ``aclose`` (cancel a running turn,
stop the embedded LLM, close the store). Kept apart from :mod:`app.bootstrap` so the window's
other tabs and this one grow without touching each other. GUI thread.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.gui.adapters.instances import InstancesAdapter
from app.gui.adapters.messages import MessageHub
from app.gui.adapters.status_feed import StatusFeedAdapter
from app.gui.adapters.story import StoryAdapter
from app.gui.widgets.story.panel import StoryPanel
from app.narrates.store import SessionStore
from app.services.llm_backend import LlmBackendManager


@dataclass
class StoryParts:
    adapter: StoryAdapter
    panel: StoryPanel

    async def start(self) -> None:
        self.adapter.refresh_sessions()
        self.adapter.refresh_backend()

    async def aclose(self) -> None:
        await self.adapter.aclose()


def build_story(
    messages: MessageHub,
    instances: InstancesAdapter,
    feed: StatusFeedAdapter,
    *,
    backends: LlmBackendManager | None = None,
    store: SessionStore | None = None,
) -> StoryParts:
    adapter = StoryAdapter(
        store or SessionStore.open(), backends or LlmBackendManager(), instances, feed, messages
    )
    return StoryParts(adapter, StoryPanel(adapter))
