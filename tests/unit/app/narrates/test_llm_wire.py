"""Sans-I/O pieces of the LLM layer: SSE framing, chunk parsing, JSON repair and validation, retries."""

from __future__ import annotations

import email.utils
import time

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.narrates.llm import ChatChunk, ChatMessage, ChatRequest, LlmBackend, RetryPolicy
from app.narrates.llm.client import _retry_after, estimate_tokens
from app.narrates.llm.errors import LlmHttpError, LlmOutputError
from app.narrates.llm.sse import DONE, SseParser, parse_chat_event
from app.narrates.llm.structured import (
    JsonDialect,
    extract_json,
    is_response_format_refusal,
    response_format,
    validate,
)
from tests.helpers.fake_openai import LLAMA_CPP_PYTHON_JSON_SCHEMA_500


def feed_all(parser: SseParser, text: str) -> list:
    events = []
    for line in text.split("\n"):
        events.extend(parser.feed(line))
    return events + parser.flush()


def test_sse_joins_data_lines_and_skips_comments_and_other_fields():
    events = feed_all(
        SseParser(), ': keep-alive\nevent: message\nid: 3\ndata: {"a":\ndata: 1}\n\ndata:[DONE]\n\n'
    )
    assert [e.data for e in events] == ['{"a":\n1}', "[DONE]"]


def test_sse_accepts_crlf_and_a_missing_final_blank_line():
    parser = SseParser()
    assert parser.feed("data: x\r") == []
    assert [e.data for e in parser.feed("\r")] == ["x"]
    parser.feed("data: tail")
    assert [e.data for e in parser.flush()] == ["tail"]


def test_chat_events_role_only_content_finish_and_done():
    assert (
        parse_chat_event('{"choices":[{"index":0,"delta":{"role":"assistant"},"finish_reason":null}]}')
        is None
    )
    assert parse_chat_event('{"choices":[{"delta":{"content":"Hi"},"finish_reason":null}]}') == ChatChunk(
        "Hi", None
    )
    assert parse_chat_event('{"choices":[{"delta":{},"finish_reason":"length"}]}') == ChatChunk("", "length")
    assert parse_chat_event('{"choices":[],"usage":{"total_tokens":3}}') is None
    assert parse_chat_event("[DONE]") == DONE


def test_an_in_band_error_and_garbage_frames_are_typed_errors():
    with pytest.raises(LlmHttpError, match="context size exceeded") as caught:
        parse_chat_event('{"error":{"message":"context size exceeded","code":400}}')
    assert caught.value.status == 400
    with pytest.raises(LlmOutputError, match="not JSON"):
        parse_chat_event("{broken")
    with pytest.raises(LlmOutputError, match="without 'choices'"):
        parse_chat_event('{"id": 1}')


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ('{"a": 1}', {"a": 1}),
        ('```json\n{"a": 1}\n```', {"a": 1}),
        ('```\n{"a": [1, 2]}\n```', {"a": [1, 2]}),
        ('Here you go: {"a": {"b": "}"}} and that is all.', {"a": {"b": "}"}}),
        ('{"a": 1}\n{"a": 2}', {"a": 1}),
        ("[1, 2]", [1, 2]),
        ('noise { not json } then {"ok": true}', {"ok": True}),
    ],
)
def test_extract_json_repairs_what_small_models_wrap_around_json(text, value):
    assert extract_json(text) == value


@pytest.mark.parametrize("text", ["", "   ", "no json here", '{"a": ', "```json\n{'single': 'quotes'}\n```"])
def test_extract_json_refuses_what_it_cannot_repair(text):
    with pytest.raises(ValueError):
        extract_json(text)


@given(
    st.dictionaries(st.text(max_size=8), st.integers() | st.text(max_size=8), max_size=4),
    st.text(max_size=20),
)
def test_extract_json_finds_any_object_followed_by_chatter(value, chatter):
    import json

    assert extract_json(json.dumps(value) + "\n" + chatter.replace("{", "(")) == value


def test_validate_reports_readable_paths():
    schema = {
        "type": "object",
        "properties": {"who": {"type": "array", "items": {"type": "string", "maxLength": 3}, "maxItems": 2}},
        "required": ["who"],
    }
    assert validate({"who": ["ab"]}, schema) == ()
    errors = validate({"who": ["abcd", "x", "y"]}, schema)
    assert any(e.startswith("who:") and "too long" in e for e in errors)
    assert any(e.startswith("who/0:") for e in errors)
    assert validate({}, schema) == ("(root): 'who' is a required property",)


def test_dialects_and_refusal_detection():
    schema = {"type": "object"}
    assert response_format(JsonDialect.JSON_OBJECT, schema, "s") == {"type": "json_object", "schema": schema}
    assert response_format(JsonDialect.PROMPT, schema, "s") is None
    assert JsonDialect.JSON_SCHEMA.next() is JsonDialect.JSON_OBJECT and JsonDialect.PROMPT.next() is None
    assert is_response_format_refusal(500, LLAMA_CPP_PYTHON_JSON_SCHEMA_500)
    assert is_response_format_refusal(
        400, '{"error":"Unrecognized request argument supplied: response_format"}'
    )
    assert not is_response_format_refusal(500, '{"error":{"message":"CUDA out of memory"}}')
    assert not is_response_format_refusal(200, "response_format")


def test_retry_after_seconds_and_http_dates():
    def response(value: str) -> httpx.Response:
        return httpx.Response(429, headers={"Retry-After": value})

    assert _retry_after(response("3")) == 3.0
    future = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 <= _retry_after(response(future)) <= 31
    assert _retry_after(response("soon")) is None
    assert _retry_after(httpx.Response(429)) is None
    policy = RetryPolicy(backoff_initial_s=0.5, backoff_max_s=2.0, retry_after_max_s=10)
    assert [policy.delay(n) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 2.0]
    assert policy.delay(1, retry_after=60) == 10 and policy.delay(1, retry_after=0) == 0


def test_typed_messages_validate_their_fields():
    with pytest.raises(ValueError, match="role"):
        ChatMessage("narrator", "x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least one message"):
        ChatRequest(())
    with pytest.raises(ValueError, match="temperature"):
        ChatRequest((ChatMessage("user", "x"),), temperature=5)
    with pytest.raises(ValueError, match="max_tokens"):
        ChatRequest((ChatMessage("user", "x"),), max_tokens=0)
    with pytest.raises(ValueError, match="base_url"):
        LlmBackend("x", "localhost:8080")
    backend = LlmBackend("x", "http://127.0.0.1:8080/v1/")
    assert backend.base_url == "http://127.0.0.1:8080/v1" and backend.root_url == "http://127.0.0.1:8080"
    assert backend.is_loopback and not LlmBackend("y", "https://api.example.com/v1").is_loopback
    assert estimate_tokens("") == 0 and estimate_tokens("abcd") == 2
