"""EventReplay: the one replayable event stream behind Job, RoutedJob and RenderJob."""

from __future__ import annotations

import asyncio

from app.comfy.replay import EventReplay


async def _collect(replay: EventReplay[int]) -> list[int]:
    return [event async for event in replay.follow()]


async def test_late_iterator_gets_every_event_from_the_first() -> None:
    ended = False
    replay: EventReplay[int] = EventReplay(lambda: ended)
    replay.append(1)
    early = replay.follow()
    assert await anext(early) == 1
    waiting = asyncio.ensure_future(anext(early))  # the early iterator now waits for more
    replay.extend([2, 3])
    assert await waiting == 2
    ended = True
    replay.wake()
    assert [event async for event in early] == [3]
    assert await _collect(replay) == [1, 2, 3]


async def test_cancelled_iterator_does_not_stop_the_others() -> None:
    ended = False
    replay: EventReplay[int] = EventReplay(lambda: ended)
    quitter, stayer = replay.follow(), replay.follow()
    quitting = asyncio.ensure_future(anext(quitter))
    staying = asyncio.ensure_future(anext(stayer))
    await asyncio.wait([quitting, staying], timeout=0)  # both now wait on the shared future
    quitting.cancel()
    await asyncio.gather(quitting, return_exceptions=True)
    replay.append(7)
    ended = True
    replay.wake()
    assert await staying == 7
    assert [event async for event in stayer] == []
    assert quitting.cancelled()


async def test_events_appended_before_the_end_are_yielded_before_the_iterator_returns() -> None:
    ended = False
    replay: EventReplay[str] = EventReplay(lambda: ended)
    replay.append("queued")
    ended = True
    replay.append("done")  # the end and the last event in one step: nothing is lost
    assert [e async for e in replay.follow()] == ["queued", "done"]
    assert len(replay) == 2
