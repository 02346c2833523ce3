"""LRU cache of prompt → conditioning, per model set and clip_skip, with single-flight misses.

Owns: the mapping ``(model set, clip_skip, text) → value`` (the daemon stores the wire-ready
numpy arrays, so a hit costs a dict lookup and no tensor copy), LRU eviction at
``max_entries``, hit/miss counters for the status, and de-duplication of concurrent misses for
the same key (the story's fixed negative prompt arriving from four ComfyUI instances at once is
encoded once). Values are treated as immutable; callers must not modify them.

Runs on the event loop thread only (no locks needed).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

V = TypeVar("V")


@dataclass(frozen=True)
class CacheKey:
    """One cached encoding: the model set, the clip skip and the exact prompt text."""

    model_set: str
    clip_skip: int | None
    text: str


class PromptCache(Generic[V]):
    """Bounded LRU with hit/miss statistics; ``max_entries = 0`` disables storing."""

    def __init__(self, max_entries: int = 256):
        if max_entries < 0:
            raise ValueError("max_entries must be >= 0")
        self.max_entries = max_entries
        self._entries: OrderedDict[Hashable, V] = OrderedDict()
        self._in_flight: dict[Hashable, asyncio.Future] = {}
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Hashable) -> V | None:
        """The cached value (refreshing its LRU position) or None; counts a hit or a miss."""
        try:
            value = self._entries[key]
        except KeyError:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return value

    def put(self, key: Hashable, value: V) -> None:
        if self.max_entries == 0:
            return
        self._entries[key] = value
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
            self.evictions += 1

    async def get_or_compute(self, key: Hashable, compute: Callable[[], Awaitable[V]]) -> tuple[V, bool]:
        """(value, hit). A miss runs ``compute`` once even if many callers miss together.

        A failed computation is not cached; every waiting caller gets the same exception.
        """
        cached = self.get(key)
        if cached is not None:
            return cached, True
        while (pending := self._in_flight.get(key)) is not None:
            # Counted as a miss above; it costs no second encode, only the wait.
            await asyncio.wait([pending])
            if not pending.cancelled():
                return pending.result(), False
            # The computing caller was cancelled: the next waiter computes instead.
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self._in_flight[key] = future
        try:
            value = await compute()
        except Exception as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: there may be no waiter
            raise
        except BaseException:
            future.cancel()
            raise
        else:
            self.put(key, value)
            future.set_result(value)
            return value, False
        finally:
            self._in_flight.pop(key, None)

    def clear(self) -> None:
        self._entries.clear()

    def stats(self) -> dict[str, Any]:
        lookups = self.hits + self.misses
        return {
            "entries": len(self._entries),
            "max_entries": self.max_entries,
            "hits": self.hits,
            "misses": self.misses,
            "evictions": self.evictions,
            "hit_rate": round(self.hits / lookups, 4) if lookups else None,
        }
