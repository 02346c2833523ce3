"""daemon.wire.status: typed status messages round-trip, and the strict parser names what is wrong."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon.wire.status import (
    CORE_FIELDS,
    DaemonStatus,
    ModelState,
    Percentiles,
    PoolStatus,
    PromptCacheStats,
    ScalingEvent,
    StaticFacts,
    StatusErrorReply,
    StatusMessageError,
    TrafficStats,
    parse_status_message,
)


def full_status() -> DaemonStatus:
    return DaemonStatus(
        status="ok",
        version="0.1.0-dynamic",
        device="cuda:1",
        precision="bf16",
        uptime_seconds=12.5,
        total_requests=7,
        vram_used_gb=3.25,
        vram_total_gb=24.0,
        vae_pool=PoolStatus(
            "vae",
            2,
            1,
            5,
            worker_ids=(0, 3),
            mode="dynamic",
            max_workers=4,
            latency_ms=Percentiles(5, 1.5, 9.0),
        ),
        clip_pool=PoolStatus("clip", 1, 0, 2, worker_ids=(0,)),
        sampled_at=1_764_000_000.25,
        vram_free_gb=20.75,
        models={
            "default": {"vae": ModelState("loaded", "bfloat16", "cuda:1"), "clip": ModelState("loading")}
        },
        prompt_cache=PromptCacheStats(3, 256, 2, 1, 0, 0.6667),
        traffic=TrafficStats({"vae_decode": 5}, {"BAD_REQUEST": 1}, 2, 100, 200, 3000, 4000),
        ws_clients=1,
        static=StaticFacts(4242, 1, 19283, 19284, "NVIDIA RTX", "nvml", {"daemon": {"precision": "bf16"}}),
    )


def test_full_status_round_trips_through_json():
    status = full_status()
    assert parse_status_message(status.to_json()) == status


def test_tick_status_has_the_seed_fields_first_and_no_static_facts():
    tick = full_status().without_static()
    data = json.loads(tick.to_json())["data"]
    assert list(data)[: len(CORE_FIELDS)] == list(CORE_FIELDS)
    assert "config" not in data and "pid" not in data
    assert parse_status_message(tick.to_json()) == tick


def test_scaling_and_error_messages_round_trip():
    event = ScalingEvent("scale_down", "clip", 1, 1, 12.5)
    assert parse_status_message(event.to_json()) == event
    assert parse_status_message(StatusErrorReply("nope").to_json()) == StatusErrorReply("nope")


def _mutated(path: tuple[str, ...], value) -> str:
    message = json.loads(full_status().to_json())
    target = message
    for key in path[:-1]:
        target = target[key]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return json.dumps(message)


@pytest.mark.parametrize(
    ("path", "value", "needle"),
    [
        (("data", "status"), KeyError, "status.status is missing"),
        (("data", "uptime_seconds"), "soon", "status.uptime_seconds must be a finite number"),
        (("data", "total_requests"), -1, "status.total_requests must be a non-negative integer"),
        (("data", "total_requests"), True, "status.total_requests must be a non-negative integer"),
        (("data", "vae_pool"), [], "status.vae_pool must be an object"),
        (("data", "clip_pool", "queue_depth"), 1.5, "status.clip_pool.queue_depth"),
        (("data", "vae_pool", "worker_ids"), ["a"], "worker_ids must be a list of integers"),
        (
            ("data", "models", "default", "vae", "state"),
            3,
            "status.models.default.vae.state must be a string",
        ),
        (("data", "sampled_at"), KeyError, "status.sampled_at is missing"),
        (("data", "ports"), KeyError, "status.ports is missing"),
        (("type",), "gossip", "unknown message type"),
    ],
)
def test_malformed_status_raises_a_typed_error_naming_the_field(path, value, needle):
    with pytest.raises(StatusMessageError, match=needle.replace(".", r"\.")):
        parse_status_message(_mutated(path, value))


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "not json",
        "[1,2]",
        '{"type":"status"}',
        '{"type":"scaling","data":{"event":"explode"}}',
        b"\xff\xfe",
    ],
)
def test_garbage_is_a_status_message_error(raw):
    with pytest.raises(StatusMessageError):
        parse_status_message(raw)


def test_deep_nesting_is_refused_before_json_recursion():
    with pytest.raises(StatusMessageError, match="nests deeper"):
        parse_status_message("[" * 60000)
    with pytest.raises(StatusMessageError, match="nests deeper"):
        parse_status_message('{"a":' * 100 + "1" + "}" * 100)


def test_brackets_inside_strings_do_not_count_as_nesting():
    status = full_status()
    message = json.loads(status.to_json())
    message["data"]["status"] = "[" * 100
    assert parse_status_message(json.dumps(message)).status == "[" * 100


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(),
        lambda c: st.lists(c) | st.dictionaries(st.text(), c),
    )
)
def test_any_json_value_parses_or_raises_a_typed_error(value):
    try:
        parse_status_message(json.dumps(value))
    except StatusMessageError:
        pass
