"""LlmClient over real HTTP against the fake OpenAI-compatible server (tests/helpers/fake_openai.py)."""

from __future__ import annotations

import asyncio
import socket

import pytest

from app.narrates.llm import (
    ChatMessage,
    ChatRequest,
    JsonDialect,
    LlmBackend,
    LlmClient,
    LlmHttpError,
    LlmOutputError,
    LlmTimeout,
    LlmTimeouts,
    LlmUnavailable,
    RetryPolicy,
)
from tests.helpers.fake_openai import Cut, Endless, Error, FakeOpenAI, Hang, Raw, Reply, Slow

FAST = RetryPolicy(attempts=3, backoff_initial_s=0.01, backoff_max_s=0.02)
SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 40},
        "mood": {"type": "string", "enum": ["calm", "angry"]},
    },
    "required": ["name", "mood"],
    "additionalProperties": False,
}


def ask(text: str = "Tell me a story.", **kwargs) -> ChatRequest:
    return ChatRequest((ChatMessage("system", "You narrate."), ChatMessage("user", text)), **kwargs)


@pytest.fixture
async def fake():
    async with FakeOpenAI(models=("fake-model", "other")) as server:
        yield server


@pytest.fixture
async def client(fake):
    async with LlmClient(LlmBackend("fake", fake.url, api_key="sk-test"), retries=FAST) as llm:
        yield llm


async def test_complete_sends_the_agents_settings_and_returns_the_reply(fake, client):
    fake.script(Reply("Once upon a time."))
    reply = await client.complete(ask(temperature=0.3, max_tokens=64, stop=("\n\n",), seed=7))
    assert reply.text == "Once upon a time." and reply.finish_reason == "stop"
    assert reply.model == "fake-model" and reply.completion_tokens == 4 and reply.prompt_tokens
    body = fake.chat_requests[0]
    assert body["temperature"] == 0.3 and body["max_tokens"] == 64 and body["stop"] == ["\n\n"]
    assert body["seed"] == 7 and body["stream"] is False and body["model"] == "fake-model"
    assert body["messages"][1] == {"role": "user", "content": "Tell me a story."}
    assert fake.requests[-1].headers["Authorization"] == "Bearer sk-test"


async def test_the_request_model_wins_over_the_backend_model(fake):
    async with LlmClient(LlmBackend("fake", fake.url, model="backend-model")) as llm:
        await llm.complete(ask())
        await llm.complete(ask(model="agent-model"))
    assert [b["model"] for b in fake.chat_requests] == ["backend-model", "agent-model"]


async def test_stream_yields_content_deltas_and_a_final_finish_reason(fake, client):
    fake.script(Reply("The dragon sleeps under the hill."))
    chunks = [chunk async for chunk in client.stream(ask())]
    assert "".join(c.text for c in chunks) == "The dragon sleeps under the hill."
    assert chunks[-1].finish_reason == "stop" and all(c.finish_reason is None for c in chunks[:-1])
    assert fake.chat_requests[0]["stream"] is True


async def test_closing_the_stream_iterator_closes_the_http_stream(fake, client):
    fake.script(Endless(" word"))
    stream = client.stream(ask())
    first = await anext(stream)
    assert first.text == " word"
    await stream.aclose()
    await asyncio.wait_for(fake.disconnected.wait(), 10)
    assert fake.disconnects == 1


async def test_cancelling_the_consumer_closes_the_http_stream(fake, client):
    fake.script(Slow("one two three four five six seven eight", delay_s=0.05))
    got_one = asyncio.Event()

    async def consume():
        async for _chunk in client.stream(ask()):
            got_one.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(got_one.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(fake.disconnected.wait(), 10)


async def test_a_stream_cut_after_text_raises_unavailable_with_the_partial_text(fake, client):
    fake.script(Cut("alpha beta gamma delta", after_chunks=2))
    received = []
    with pytest.raises(LlmUnavailable, match="broke|ended") as caught:
        async for chunk in client.stream(ask()):
            received.append(chunk.text)
    assert caught.value.partial_text == "alpha beta" == "".join(received)
    assert len(fake.chat_requests) == 1  # never retried once text was delivered


async def test_a_stream_cut_before_any_text_is_retried(fake, client):
    fake.script(Cut("lost", after_chunks=0), Reply("found"))
    text = "".join([c.text async for c in client.stream(ask())])
    assert text == "found" and len(fake.chat_requests) == 2


async def test_a_plain_answer_cut_in_half_is_retried_then_reported(fake, client):
    fake.script(Cut("x" * 200), Cut("x" * 200), Cut("x" * 200))
    with pytest.raises(LlmUnavailable, match="unreachable"):
        await client.complete(ask())
    assert len(fake.chat_requests) == 3


async def test_429_with_retry_after_and_500_are_retried(fake, client):
    fake.script(Error(429, retry_after=0), Error(500), Reply("at last"))
    reply = await client.complete(ask())
    assert reply.text == "at last" and len(fake.chat_requests) == 3


async def test_429_forever_ends_with_a_typed_http_error(fake, client):
    fake.script(*[Error(429, retry_after=0)] * 3)
    with pytest.raises(LlmHttpError, match="429") as caught:
        await client.complete(ask())
    assert caught.value.status == 429 and "rate-limit" in str(caught.value)
    assert len(fake.chat_requests) == 3


async def test_a_streamed_request_is_retried_on_503_too(fake, client):
    fake.script(Error(503, retry_after=0), Reply("ok then"))
    assert "".join([c.text async for c in client.stream(ask())]) == "ok then"


async def test_a_4xx_is_not_retried(fake, client):
    fake.script(Error(400))
    with pytest.raises(LlmHttpError) as caught:
        await client.complete(ask())
    assert caught.value.status == 400 and len(fake.chat_requests) == 1


async def test_a_wrong_api_key_says_what_to_fix():
    async with FakeOpenAI(api_key="right") as server:
        async with LlmClient(LlmBackend("fake", server.url, api_key="wrong"), retries=FAST) as llm:
            with pytest.raises(LlmHttpError, match="api_key"):
                await llm.complete(ask())


async def test_a_closed_port_is_unavailable_with_advice():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with LlmClient(LlmBackend("gone", f"http://127.0.0.1:{port}/v1", model="m"), retries=FAST) as llm:
        with pytest.raises(LlmUnavailable, match="unreachable.*--llm embedded"):
            await llm.complete(ask())


async def test_a_server_that_hangs_times_out(fake):
    fake.script(Hang(), Hang())
    timeouts = LlmTimeouts(read=0.2, total=5)
    async with LlmClient(LlmBackend("fake", fake.url, model="m"), timeouts=timeouts, retries=FAST) as llm:
        with pytest.raises(LlmTimeout, match="hangs"):
            await llm.complete(ask())
        with pytest.raises(LlmTimeout):
            async for _ in llm.stream(ask()):
                pass


async def test_a_slow_stream_past_the_total_limit_times_out_with_the_partial_text(fake):
    fake.script(Slow("a b c d e f g h i j k l m n o p", delay_s=30, first_delay_s=0))
    async with LlmClient(LlmBackend("fake", fake.url, model="m"), timeouts=LlmTimeouts(total=1.0)) as llm:
        with pytest.raises(LlmTimeout) as caught:
            async for _ in llm.stream(ask()):
                pass
    assert caught.value.partial_text == "a"


async def test_a_stream_that_ignores_max_tokens_is_stopped(fake, client):
    fake.script(Endless(" on"))
    with pytest.raises(LlmOutputError, match="ignores max_tokens") as caught:
        async for _ in client.stream(ask(max_tokens=5)):
            pass
    assert caught.value.raw.startswith(" on on")
    await asyncio.wait_for(fake.disconnected.wait(), 10)


async def test_a_model_that_runs_to_the_limit_reports_length(fake, client):
    fake.script(Endless(" on", honour_max_tokens=True))
    chunks = [c async for c in client.stream(ask(max_tokens=5))]
    assert chunks[-1].finish_reason == "length" and "".join(c.text for c in chunks) == " on" * 5


async def test_an_empty_answer_is_an_output_error(fake, client):
    fake.script(Reply(""), Reply("   "))
    with pytest.raises(LlmOutputError, match="empty"):
        await client.complete(ask())
    with pytest.raises(LlmOutputError, match="empty"):
        async for _ in client.stream(ask()):
            pass


async def test_garbage_instead_of_a_completion_is_an_output_error(fake, client):
    fake.script(Raw("<html>proxy error</html>", content_type="text/html"), Raw('{"no": "choices"}'))
    with pytest.raises(LlmOutputError, match="non-JSON"):
        await client.complete(ask())
    with pytest.raises(LlmOutputError, match="without choices"):
        await client.complete(ask())


async def test_a_server_that_ignores_stream_true_still_streams_one_chunk(fake, client):
    body = '{"choices": [{"index": 0, "message": {"role": "assistant", "content": "whole"}, "finish_reason": "stop"}]}'
    fake.script(Raw(body))
    chunks = [c async for c in client.stream(ask())]
    assert [(c.text, c.finish_reason) for c in chunks] == [("whole", "stop")]


# --- structured output ---------------------------------------------------------------------


async def test_complete_json_asks_with_json_schema_and_validates(fake, client):
    fake.script(Reply('{"name": "Ava", "mood": "calm"}'))
    value = await client.complete_json(ask(), SCHEMA, schema_name="character")
    assert value == {"name": "Ava", "mood": "calm"}
    fmt = fake.chat_requests[0]["response_format"]
    assert fmt == {
        "type": "json_schema",
        "json_schema": {"name": "character", "schema": SCHEMA, "strict": True},
    }
    assert client.json_dialect is JsonDialect.JSON_SCHEMA


async def test_a_server_refusing_json_schema_like_llama_cpp_python_is_asked_with_json_object(client):
    async with FakeOpenAI(refuse_json_schema=True) as server:
        async with LlmClient(LlmBackend("llama-cpp-python", server.url), retries=FAST) as llm:
            server.script(Reply('{"name": "Bo", "mood": "angry"}'), Reply('{"name": "Cy", "mood": "calm"}'))
            assert (await llm.complete_json(ask(), SCHEMA, schema_name="character"))["name"] == "Bo"
            assert (await llm.complete_json(ask(), SCHEMA, schema_name="character"))["name"] == "Cy"
            assert llm.json_dialect is JsonDialect.JSON_OBJECT
        kinds = [body["response_format"]["type"] for body in server.chat_requests]
        # one refused json_schema (not retried as a 500), then json_object, remembered for the next call
        assert kinds == ["json_schema", "json_object", "json_object"]
        assert server.chat_requests[1]["response_format"]["schema"] == SCHEMA
        assert "JSON Schema" in server.chat_requests[1]["messages"][0]["content"]


async def test_a_server_refusing_every_response_format_gets_the_schema_in_the_prompt():
    async with FakeOpenAI(refuse_response_format=True) as server:
        async with LlmClient(LlmBackend("old", server.url), retries=FAST) as llm:
            server.script(Reply('{"name": "Di", "mood": "calm"}'))
            assert await llm.complete_json(ask(), SCHEMA, schema_name="character")
            assert llm.json_dialect is JsonDialect.PROMPT
        last = server.chat_requests[-1]
        assert "response_format" not in last
        system = last["messages"][0]
        assert system["role"] == "system" and system["content"].startswith("You narrate.")
        assert '"maxLength":40' in system["content"] and len(server.chat_requests) == 3


async def test_the_dialect_memory_can_be_shared_between_clients():
    memory: dict = {}
    async with FakeOpenAI(refuse_json_schema=True) as server:
        server.script(Reply('{"name": "E", "mood": "calm"}'), Reply('{"name": "F", "mood": "calm"}'))
        for _ in range(2):
            async with LlmClient(LlmBackend("s", server.url), dialect_memory=memory, retries=FAST) as llm:
                await llm.complete_json(ask(), SCHEMA, schema_name="character")
        assert [b["response_format"]["type"] for b in server.chat_requests] == [
            "json_schema",
            "json_object",
            "json_object",
        ]


async def test_fenced_json_with_chatter_is_repaired_without_asking_again(fake, client):
    fake.script(Reply('Sure! Here it is:\n```json\n{"name": "Ava", "mood": "calm"}\n```\nHope that helps.'))
    assert (await client.complete_json(ask(), SCHEMA, schema_name="character"))["name"] == "Ava"
    assert len(fake.chat_requests) == 1


async def test_malformed_json_is_asked_again_with_the_error(fake, client):
    fake.script(Reply('{"name": "Ava", "mood": '), Reply('{"name": "Ava", "mood": "calm"}'))
    assert await client.complete_json(ask(), SCHEMA, schema_name="character")
    second = fake.chat_requests[1]["messages"]
    assert second[-2] == {"role": "assistant", "content": '{"name": "Ava", "mood": '}
    assert "not valid" in second[-1]["content"]


async def test_json_of_the_wrong_shape_fails_after_the_bounded_attempts(fake, client):
    fake.script(Reply('{"x": 1}'), Reply('["list"]'), Reply('{"name": "Ava", "mood": "sleepy"}'))
    with pytest.raises(LlmOutputError, match="character: no valid JSON") as caught:
        await client.complete_json(ask(), SCHEMA, schema_name="character", max_attempts=3)
    assert caught.value.raw == '{"name": "Ava", "mood": "sleepy"}'
    assert any("mood" in e for e in caught.value.errors)
    assert len(fake.chat_requests) == 3


async def test_an_empty_structured_answer_counts_as_an_attempt(fake, client):
    fake.script(Reply(""), Reply('{"name": "Ava", "mood": "angry"}'))
    assert (await client.complete_json(ask(), SCHEMA, schema_name="character"))["mood"] == "angry"


async def test_an_invalid_schema_is_a_programming_error(client):
    with pytest.raises(ValueError, match="invalid JSON Schema"):
        await client.complete_json(ask(), {"type": "nonsense"}, schema_name="bad")


# --- models and tokens ---------------------------------------------------------------------


async def test_list_models_and_the_default_model_comes_from_the_server(fake, client):
    assert await client.list_models() == ["fake-model", "other"]
    await client.complete(ask())
    assert fake.chat_requests[0]["model"] == "fake-model"


async def test_count_tokens_uses_the_servers_tokenize_route(fake, client):
    assert await client.count_tokens("Hello, brave knight.") == 5
    assert client.token_count_source == "/tokenize"
    assert fake.requests[-1].path == "/tokenize" and fake.requests[-1].body == {
        "content": "Hello, brave knight."
    }


async def test_count_tokens_estimates_when_the_server_cannot_and_asks_only_once():
    async with FakeOpenAI(tokenize=False) as server:
        async with LlmClient(LlmBackend("openai-like", server.url, model="m")) as llm:
            first = await llm.count_tokens("x" * 36)
            second = await llm.count_tokens("y" * 72)
        assert (first, second) == (10, 20) and llm.token_count_source == "estimate"
        tried = [r.path for r in server.requests]
        assert tried == ["/tokenize", "/extras/tokenize/count", "/api/extra/tokencount"]


async def test_a_plain_answer_past_the_total_limit_times_out(fake):
    fake.script(Slow("late", delay_s=2.0))
    async with LlmClient(LlmBackend("fake", fake.url, model="m"), timeouts=LlmTimeouts(total=0.3)) as llm:
        with pytest.raises(LlmTimeout, match=r"within 0.3 s"):
            await llm.complete(ask())


async def test_the_fake_server_runs_standalone_in_its_own_process():
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[4]
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.helpers.fake_openai",
        "--reply",
        "from afar",
        cwd=root,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode().split()
        assert line[0] == "FAKE_OPENAI_READY"
        async with LlmClient(LlmBackend("standalone", line[1]), retries=FAST) as llm:
            assert "".join([c.text async for c in llm.stream(ask())]) == "from afar"
    finally:
        proc.stdin.close()
        await asyncio.wait_for(proc.wait(), 10)


async def test_count_tokens_on_a_server_that_is_down_estimates_and_asks_again_later():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with LlmClient(LlmBackend("down", f"http://127.0.0.1:{port}/v1", model="m")) as llm:
        assert await llm.count_tokens("x" * 36) == 10
        assert llm.token_count_source is None  # not remembered: the server may come back
