"""The story panel's LLM choice: resolving never starts anything; the embedded model is the
fallback and says it is the weak starter; a URL choice gives one client; switching closes it."""

from __future__ import annotations

import pytest

from app.narrates.llm import DiscoveredBackend
from app.services.llm_backend import BackendChoice, LlmBackendManager
from tests.helpers.fake_openai import FakeOpenAI


async def no_servers(*_args, **_kwargs):
    return []


async def test_auto_with_nothing_configured_or_found_means_the_embedded_starter_not_started_yet():
    states = []
    manager = LlmBackendManager(discover=no_servers)
    manager.add_listener(states.append)
    effective = await manager.resolve()
    assert effective.kind == "embedded" and effective.is_starter
    assert manager.embedded is None and not manager.state.running
    assert "starter" in states[-1].describe() and "starts with the first turn" in states[-1].describe()
    await manager.aclose()


async def test_auto_prefers_a_discovered_server():
    async def one_server(*_args, **_kwargs):
        return [DiscoveredBackend("ollama", "http://127.0.0.1:11434/v1", 11434, ("llama3",), 0.001)]

    manager = LlmBackendManager(discover=one_server)
    effective = await manager.resolve()
    assert effective.kind == "server" and effective.backend.model == "llama3"
    assert "ollama" in manager.state.describe()


async def test_a_url_choice_gives_one_client_and_switching_closes_it():
    async with FakeOpenAI() as llm:
        manager = LlmBackendManager(discover=no_servers)
        await manager.choose(BackendChoice("url", llm.url))
        client = await manager.client()
        assert client is await manager.client() and client.backend.base_url == llm.url
        assert manager.state.running
        await manager.choose(BackendChoice("embedded"))
        assert not manager.state.running and manager.effective.kind == "embedded"
        await manager.aclose()


def test_a_url_choice_needs_a_url():
    with pytest.raises(ValueError, match="URL"):
        BackendChoice("url", " ")


async def test_a_child_that_gave_up_is_replaced_by_the_next_client_call_and_listeners_hear_it():
    from app.supervision.child import GaveUp

    heard = []
    async with FakeOpenAI() as llm:
        manager = LlmBackendManager(discover=no_servers)
        manager.add_child_listener(heard.append)
        await manager.choose(BackendChoice("url", llm.url))
        first = await manager.client()
        manager._on_child_event(GaveUp("embedded-llm", "crashed 3 times"))  # what the supervisor sends
        assert heard and "next turn starts it again" in manager.state.describe()
        second = await manager.client()
        assert second is not first and manager.state.error == ""
        await manager.aclose()
