"""A replayable event stream: the one owner of "every event so far, then each new one".

:class:`EventReplay` keeps a job's events in order and lets any number of async iterators
follow them, each from the first event (a late iterator gets a replay), until the owner says the
stream has ended. :class:`~app.comfy.jobs.Job`, :class:`~app.comfy.router.RoutedJob` and
:class:`~app.comfy.render.RenderJob` all publish through one. Runs on one asyncio loop (the
owner's): create, append and iterate from that loop only.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Generic, TypeVar

E = TypeVar("E")


class EventReplay(Generic[E]):
    """Events in arrival order plus a wake-up future; iterators end once ``ended()`` is true.

    ``ended`` is the owner's test of "nothing more will come" (a task done, an event set); the
    owner calls :meth:`wake` when that test may have changed without a new event.
    """

    def __init__(self, ended: Callable[[], bool]) -> None:
        self._ended = ended
        self._events: list[E] = []
        self._changed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def __len__(self) -> int:
        return len(self._events)

    def __iter__(self):
        return iter(self._events)

    def append(self, event: E) -> None:
        self._events.append(event)
        self.wake()

    def extend(self, events: Iterable[E]) -> None:
        self._events.extend(events)
        self.wake()

    def wake(self) -> None:
        """Let every waiting iterator look again (new events, or the stream may have ended)."""
        changed, self._changed = self._changed, asyncio.get_running_loop().create_future()
        changed.set_result(None)

    async def follow(self) -> AsyncIterator[E]:
        """Every event so far, then each new one; returns once ``ended()`` and all are yielded."""
        index = 0
        while True:
            while index < len(self._events):
                yield self._events[index]
                index += 1
            if self._ended():
                return
            # shielded: an iterator that is cancelled must not cancel the future others wait on
            await asyncio.shield(self._changed)
