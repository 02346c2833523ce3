"""A small owner of asyncio tasks for adapters: keeps references, reports failures, cancels all.

qasync's ``asyncSlot`` keeps its own references; adapters that start long-running loops use
this instead so every task they start is accounted for and cancelled on close. GUI loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from typing import Any

log = logging.getLogger(__name__)


class TaskSet:
    """Tasks started by one adapter; ``on_error(text)`` hears about any that fail."""

    def __init__(self, on_error: Callable[[str], None]):
        self._tasks: set[asyncio.Task] = set()
        self._on_error = on_error

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str, what: str) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)

        def done(finished: asyncio.Task) -> None:
            self._tasks.discard(finished)
            if finished.cancelled():
                return
            exc = finished.exception()
            if exc is not None:
                log.error("%s failed: %s", what, exc, exc_info=exc)
                self._on_error(f"{what} failed: {exc}")

        task.add_done_callback(done)
        return task

    def __len__(self) -> int:
        return len(self._tasks)

    async def cancel_all(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
