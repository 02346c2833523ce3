"""Sans-I/O parsing of every ComfyUI WebSocket message (shapes from a real ComfyUI 0.33 capture)."""

from __future__ import annotations

import json
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.comfy.events import (
    Executed,
    Executing,
    ExecutionCached,
    ExecutionError,
    ExecutionInterrupted,
    ExecutionStart,
    ExecutionSuccess,
    FeatureFlags,
    LogsEvent,
    MessageParseError,
    PreviewImage,
    Progress,
    ProgressState,
    ProgressText,
    StatusEvent,
    UnknownBinary,
    UnknownMessage,
    encode_preview,
    parse_binary,
    parse_text,
)

PID = "e4a0a183-ee17-4dc2-9f81-f509a0ed0998"

# Verbatim as a real ComfyUI 0.33 sent them on /ws (traceback shortened).
CAPTURED = {
    "status_connect": {
        "type": "status",
        "data": {"status": {"exec_info": {"queue_remaining": 0}}, "sid": "31a1935f234d47088d21c33564f3c100"},
    },
    "status": {"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 1}}}},
    "execution_start": {"type": "execution_start", "data": {"prompt_id": PID, "timestamp": 1795920324219}},
    "execution_cached": {
        "type": "execution_cached",
        "data": {"nodes": [], "prompt_id": PID, "timestamp": 1795920324222},
    },
    "progress_state": {
        "type": "progress_state",
        "data": {
            "prompt_id": PID,
            "nodes": {
                "3": {
                    "value": 0.0,
                    "max": 1.0,
                    "state": "running",
                    "node_id": "3",
                    "prompt_id": PID,
                    "display_node_id": "3",
                    "parent_node_id": None,
                    "real_node_id": "3",
                }
            },
        },
    },
    "executing": {"type": "executing", "data": {"node": "3", "display_node": "3", "prompt_id": PID}},
    "progress": {"type": "progress", "data": {"value": 1, "max": 4, "prompt_id": PID, "node": "7"}},
    "executed": {
        "type": "executed",
        "data": {
            "node": "9",
            "display_node": "9",
            "output": {
                "images": [{"filename": "tiny_txt2img_00009_.png", "subfolder": "", "type": "output"}]
            },
            "prompt_id": PID,
        },
    },
    "execution_success": {
        "type": "execution_success",
        "data": {"prompt_id": PID, "timestamp": 1795920325745},
    },
    "executing_null": {"type": "executing", "data": {"node": None, "prompt_id": PID}},
    "feature_flags": {
        "type": "feature_flags",
        "data": {
            "supports_preview_metadata": True,
            "max_upload_size": 104857600,
            "extension": {"manager": {"supports_v4": True}},
        },
    },
    "execution_error": {
        "type": "execution_error",
        "data": {
            "prompt_id": "f7756a9a-c5d4-45ef-bd26-fbc71805ccdb",
            "node_id": "1",
            "node_type": "CheckpointLoaderSimple",
            "executed": [],
            "exception_message": "Error while deserializing header: header too large\n",
            "exception_type": "safetensors._safetensors_rust.SafetensorError",
            "traceback": ['  File "ComfyUI/execution.py", line 545, in execute\n'],
            "current_inputs": {"ckpt_name": ["zz_corrupt_for_error_tests.safetensors"]},
            "current_outputs": ["6", "7", "1", "4", "8", "5", "9"],
            "timestamp": 1795920193008,
        },
    },
    "execution_interrupted": {
        "type": "execution_interrupted",
        "data": {
            "prompt_id": "a8607b8e-7919-4fca-9d4c-9b13c31da947",
            "node_id": "7",
            "node_type": "KSampler",
            "executed": ["6"],
            "timestamp": 1795920174104,
        },
    },
}


def parse(name: str):
    return parse_text(json.dumps(CAPTURED[name]))


def test_status_on_connect_carries_sid_and_queue():
    assert parse("status_connect") == StatusEvent(0, "31a1935f234d47088d21c33564f3c100")
    assert parse("status") == StatusEvent(1, None)


def test_execution_lifecycle_events():
    assert parse("execution_start") == ExecutionStart(PID, 1795920324219)
    assert parse("execution_cached") == ExecutionCached(PID, (), 1795920324222)
    assert parse("executing") == Executing(PID, "3", "3")
    assert parse("execution_success") == ExecutionSuccess(PID, 1795920325745)
    finished = parse("executing_null")
    assert finished.finished and finished.prompt_id == PID


def test_progress_and_progress_state():
    progress = parse("progress")
    assert (progress.prompt_id, progress.node, progress.value, progress.max) == (PID, "7", 1, 4)
    assert progress.fraction == 0.25
    state = parse("progress_state")
    assert isinstance(state, ProgressState) and state.nodes["3"].state == "running"
    assert state.nodes["3"].real_node_id == "3" and state.nodes["3"].parent_node_id is None


def test_executed_keeps_the_output_mapping():
    executed = parse("executed")
    assert isinstance(executed, Executed) and executed.node == "9"
    assert executed.output["images"][0]["filename"] == "tiny_txt2img_00009_.png"


def test_cached_output_node_may_have_null_output():
    event = parse_text(
        json.dumps({"type": "executed", "data": {"node": "9", "output": None, "prompt_id": PID}})
    )
    assert isinstance(event, Executed) and event.output is None


def test_execution_error_fields():
    error = parse("execution_error")
    assert isinstance(error, ExecutionError)
    assert (error.node_id, error.node_type) == ("1", "CheckpointLoaderSimple")
    assert error.exception_type.endswith("SafetensorError") and "header too large" in error.exception_message
    assert error.traceback and error.current_inputs["ckpt_name"] == ["zz_corrupt_for_error_tests.safetensors"]


def test_old_execution_error_with_dict_outputs_still_parses():
    data = dict(CAPTURED["execution_error"]["data"], current_outputs={"1": [], "9": []}, executed={"4": True})
    error = parse_text(json.dumps({"type": "execution_error", "data": data}))
    assert error.executed == ("4",)


def test_execution_interrupted():
    event = parse("execution_interrupted")
    assert event == ExecutionInterrupted(
        "a8607b8e-7919-4fca-9d4c-9b13c31da947", "7", "KSampler", ("6",), 1795920174104
    )


def test_feature_flags_logs_and_unknown_types():
    assert isinstance(parse("feature_flags"), FeatureFlags)
    logs = parse_text(
        json.dumps({"type": "logs", "data": {"entries": [{"t": 1.0, "m": "got prompt"}], "size": None}})
    )
    assert logs == LogsEvent(((1.0, "got prompt"),))
    custom = parse_text(json.dumps({"type": "crystools.monitor", "data": {"cpu_utilization": 3}}))
    assert isinstance(custom, UnknownMessage) and custom.type == "crystools.monitor"


def test_old_progress_without_ids():
    event = parse_text(json.dumps({"type": "progress", "data": {"value": 5, "max": 20}}))
    assert event == Progress(None, None, 5, 20)


@pytest.mark.parametrize("frame", ["not json", "[]", '{"data": {}}', b"\xff\xfe"])
def test_malformed_text_frames_raise_a_typed_error(frame):
    with pytest.raises(MessageParseError):
        parse_text(frame)


def test_legacy_preview_type_1_jpeg_and_png():
    jpeg = parse_binary(bytes.fromhex("0000000100000001ffd8ffe000104a46"))
    assert isinstance(jpeg, PreviewImage) and jpeg.mime_type == "image/jpeg" and jpeg.event_type == 1
    assert jpeg.data == bytes.fromhex("ffd8ffe000104a46") and jpeg.prompt_id is None
    png = parse_binary(struct.pack(">II", 1, 2) + b"\x89PNG")
    assert png.mime_type == "image/png"


def test_preview_with_metadata_type_4():
    metadata = {
        "node_id": "7",
        "prompt_id": "21f6819f-455f-4b8a-a2e5-7823ac1fa493",
        "display_node_id": "7",
        "parent_node_id": None,
        "real_node_id": "7",
        "image_type": "image/jpeg",
    }
    frame = encode_preview(b"\xff\xd8jpegbytes", metadata=metadata)
    assert frame[:8].hex() == "00000004" + f"{len(json.dumps(metadata)):08x}"
    event = parse_binary(frame)
    assert (event.event_type, event.node_id, event.prompt_id) == (4, "7", metadata["prompt_id"])
    assert event.data == b"\xff\xd8jpegbytes" and event.metadata["display_node_id"] == "7"


def test_progress_text_type_3_and_unknown_binary_ids():
    frame = struct.pack(">II", 3, 2) + b"12" + "step 3 ✓".encode()
    assert parse_binary(frame) == ProgressText("12", "step 3 ✓")
    unknown = parse_binary(struct.pack(">I", 12345) + b"swarm")
    assert isinstance(unknown, UnknownBinary) and unknown.event_type == 12345 and unknown.payload == b"swarm"


@pytest.mark.parametrize(
    "frame",
    [
        b"",
        b"\x00\x00",
        struct.pack(">I", 1),
        struct.pack(">II", 4, 100) + b"{}",
        struct.pack(">II", 4, 2) + b"[x",
        struct.pack(">II", 3, 9) + b"1",
    ],
)
def test_truncated_binary_frames_raise_a_typed_error(frame):
    with pytest.raises(MessageParseError):
        parse_binary(frame)


@given(st.binary(max_size=64))
def test_binary_parser_never_raises_anything_but_its_own_error(frame):
    try:
        parse_binary(frame)
    except MessageParseError:
        pass


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=8),
        lambda children: (
            st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
        ),
        max_leaves=12,
    ),
    st.sampled_from(
        [
            "status",
            "execution_start",
            "execution_cached",
            "executing",
            "progress",
            "progress_state",
            "executed",
            "execution_success",
            "execution_error",
            "execution_interrupted",
            "logs",
            "x",
        ]
    ),
)
def test_text_parser_survives_any_data_shape(data, kind):
    try:
        parse_text(json.dumps({"type": kind, "data": data}))
    except MessageParseError:
        pass
