"""GUI test fixtures: a qasync loop on pytest-qt's QApplication (pytest-qt has no qasync support).

``qloop`` is modelled on qasync's own ``loop`` fixture: a :class:`qasync.QEventLoop` over the
QApplication, set as the current loop, with an exception handler that collects errors and fails
the test at teardown. Tests drive coroutines with ``qloop.run_until_complete(...)`` and wait on
signals or events with timeouts, never on sleeps.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable
from typing import Any

import pytest
import qasync


@pytest.fixture
def qloop(qapp):
    qapp.setQuitOnLastWindowClosed(False)
    loop = qasync.QEventLoop(qapp, already_running=False)
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    asyncio.set_event_loop(loop)
    try:
        yield loop
    finally:
        loop.run_until_complete(_drain())
        loop.close()
        asyncio.set_event_loop(None)
        # qasync's timer and signaller QObjects sit in reference cycles; collect them here, on the
        # GUI thread. Left to the cyclic collector they may be destroyed later on a worker thread
        # (a later test's executor), and Qt then fires their timers on freed memory (segfault).
        gc.collect()
    if errors:
        details = "; ".join(str(context.get("exception") or context.get("message")) for context in errors)
        pytest.fail(f"errors on the qasync loop: {details}")


async def _drain() -> None:
    # Let callbacks scheduled by closing transports and tasks run before the loop closes.
    for _ in range(3):
        await asyncio.sleep(0)


async def wait_signal(signal: Any, predicate: Callable[..., bool] = lambda *a: True, timeout: float = 30.0):
    """The arguments of the first emission of ``signal`` for which ``predicate(*args)`` holds."""
    done = asyncio.get_running_loop().create_future()

    def on_emit(*args: Any) -> None:
        if not done.done() and predicate(*args):
            done.set_result(args)

    signal.connect(on_emit)
    try:
        async with asyncio.timeout(timeout):
            return await done
    finally:
        signal.disconnect(on_emit)


async def wait_until(condition: Callable[[], bool], signal: Any, timeout: float = 30.0) -> None:
    """Return once ``condition()`` holds, re-checked whenever ``signal`` is emitted."""
    if condition():
        return
    await wait_signal(signal, lambda *_args: condition(), timeout)
