"""PromptCache: LRU order, statistics, single-flight misses, failures not cached."""

from __future__ import annotations

import asyncio

import pytest

from daemon.prompt_cache import CacheKey, PromptCache


def test_lru_evicts_least_recently_used_and_counts():
    cache: PromptCache[str] = PromptCache(max_entries=2)
    a, b, c = (CacheKey("default", None, t) for t in "abc")
    cache.put(a, "A")
    cache.put(b, "B")
    assert cache.get(a) == "A"  # a is now most recent
    cache.put(c, "C")  # evicts b
    assert cache.get(b) is None
    assert cache.get(c) == "C"
    assert cache.stats() == {
        "entries": 2,
        "max_entries": 2,
        "hits": 2,
        "misses": 1,
        "evictions": 1,
        "hit_rate": round(2 / 3, 4),
    }


def test_keys_differ_by_model_set_and_clip_skip():
    cache: PromptCache[int] = PromptCache(8)
    cache.put(CacheKey("default", None, "cat"), 1)
    assert cache.get(CacheKey("pony", None, "cat")) is None
    assert cache.get(CacheKey("default", -2, "cat")) is None
    assert cache.get(CacheKey("default", None, "cat")) == 1


def test_zero_size_cache_stores_nothing():
    cache: PromptCache[int] = PromptCache(0)
    cache.put("k", 1)
    assert cache.get("k") is None and len(cache) == 0


async def test_concurrent_misses_for_one_key_compute_once():
    cache: PromptCache[str] = PromptCache(8)
    release = asyncio.Event()
    calls = []

    async def compute():
        calls.append(1)
        await release.wait()
        return "cond"

    tasks = [asyncio.create_task(cache.get_or_compute("neg", compute)) for _ in range(4)]
    for _ in range(3):
        await asyncio.sleep(0)
    release.set()
    results = await asyncio.gather(*tasks)
    assert results == [("cond", False)] * 4
    assert calls == [1]
    assert await cache.get_or_compute("neg", compute) == ("cond", True)


async def test_failed_compute_is_not_cached_and_reaches_every_waiter():
    cache: PromptCache[str] = PromptCache(8)
    release = asyncio.Event()

    async def failing():
        await release.wait()
        raise ValueError("encoder broke")

    tasks = [asyncio.create_task(cache.get_or_compute("p", failing)) for _ in range(2)]
    for _ in range(3):
        await asyncio.sleep(0)
    release.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, ValueError) for r in results)

    async def ok():
        return "fine"

    assert await cache.get_or_compute("p", ok) == ("fine", False)


async def test_cancelled_computation_lets_a_waiter_compute():
    cache: PromptCache[str] = PromptCache(8)
    never = asyncio.Event()

    async def stuck():
        await never.wait()
        return "never"

    async def ok():
        return "second"

    first = asyncio.create_task(cache.get_or_compute("k", stuck))
    await asyncio.sleep(0)
    second = asyncio.create_task(cache.get_or_compute("k", ok))
    await asyncio.sleep(0)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert await second == ("second", False)
