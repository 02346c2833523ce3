"""Parsing of ComfyUI's POST /prompt rejections (the twelve captured real replies + old shapes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.comfy.errors import (
    ExecutionFailed,
    JobInterrupted,
    JobLost,
    PromptRejected,
    parse_node_errors,
    parse_prompt_rejection,
)

CASES = json.loads((Path(__file__).parents[4] / "tests/data/comfyui/error_cases.json").read_text())


def rejection(name: str) -> PromptRejected:
    case = CASES[name]
    return parse_prompt_rejection(
        case["status"], case["json"] if case["json"] is not None else case["text"], instance="gpu0"
    )


@pytest.mark.parametrize(
    "name, node_id, class_type, input_name, reason_type",
    [
        ("value_below_min_steps_0", "7", "KSampler", "steps", "value_smaller_than_min"),
        ("value_not_in_list_sampler", "7", "KSampler", "sampler_name", "value_not_in_list"),
        ("value_not_in_list_model_file", "1", "UNETLoader", "unet_name", "value_not_in_list"),
        ("required_input_missing_seed", "7", "KSampler", "seed", "required_input_missing"),
        ("bad_type_steps_string", "7", "KSampler", "steps", "invalid_input_type"),
        ("link_to_missing_node", "7", "KSampler", "samples", "exception_during_inner_validation"),
        ("link_type_mismatch_CLIP_to_MODEL", "7", "KSampler", "model", "return_type_mismatch"),
    ],
)
def test_captured_validation_failures_name_node_and_input(name, node_id, class_type, input_name, reason_type):
    error = rejection(name)
    assert error.status == 400 and error.error_type == "prompt_outputs_failed_validation"
    (reason,) = error.reasons
    assert (reason.node_id, reason.class_type, reason.input_name, reason.reason_type) == (
        node_id,
        class_type,
        input_name,
        reason_type,
    )
    assert reason.dependent_outputs == ("9",)
    assert error.instance == "gpu0"
    assert input_name in str(error)


def test_received_value_is_kept_for_model_pickers():
    (reason,) = rejection("value_not_in_list_model_file").reasons
    assert reason.received_value == "missing.safetensors"
    assert "missing.safetensors" in reason.describe()


@pytest.mark.parametrize("name", ["missing_node_class", "node_without_class_type"])
def test_missing_node_type_is_turned_into_a_reason_with_the_title(name):
    error = rejection(name)
    assert error.error_type == "missing_node_type"
    (reason,) = error.reasons
    assert reason.node_id == "7" and reason.node_title == "KSampler"
    assert reason.describe().startswith("KSampler #7")


@pytest.mark.parametrize(
    "name, error_type",
    [
        ("no_output_node", "prompt_no_outputs"),
        ("no_prompt_key", "no_prompt"),
        ("bad_prompt_id", "invalid_prompt_id"),
    ],
)
def test_top_level_errors_have_their_type_and_no_reasons(name, error_type):
    error = rejection(name)
    assert error.error_type == error_type and error.reasons == ()
    assert error.summary


def test_plain_text_500_is_a_readable_rejection():
    error = rejection("malformed_json_body")
    assert error.status == 500 and error.error_type == "unparsed"
    assert "Server got itself in trouble" in error.details


def test_old_string_error_and_list_node_errors():
    error = parse_prompt_rejection(400, {"error": "no prompt", "node_errors": []})
    assert error.error_type == "legacy" and "no prompt" in str(error) and error.reasons == ()


def test_old_string_reasons_keep_the_input_name():
    reasons = parse_node_errors(
        {
            "3": {
                "errors": [
                    "Required input is missing: seed",
                    "Value not in list: sampler_name: 'x' not in [...]",
                ],
                "dependent_outputs": ["9"],
                "class_type": "KSampler",
            },
            "5": "Exception when validating node",
        }
    )
    assert [(r.node_id, r.input_name) for r in reasons] == [("3", "seed"), ("3", None), ("5", None)]
    assert reasons[0].message == "Required input is missing" and reasons[0].class_type == "KSampler"
    assert reasons[2].message == "Exception when validating node"


def test_node_errors_of_unexpected_shapes_are_ignored_not_fatal():
    assert parse_node_errors(None) == () and parse_node_errors([]) == () and parse_node_errors({"1": 5}) == ()
    (reason,) = parse_node_errors({"1": {"errors": [], "class_type": "X"}})
    assert reason.node_id == "1" and reason.reason_type == "unknown"


def test_job_errors_carry_their_diagnostics():
    failed = ExecutionFailed(
        prompt_id="p",
        node_id="8",
        node_type="VAEDecode",
        exception_type="RuntimeError",
        exception_message="boom\n",
        traceback=("tb",),
        executed=("3",),
    )
    assert str(failed) == "VAEDecode #8 failed: RuntimeError: boom" and failed.prompt_id == "p"
    assert "before it started" in str(JobInterrupted(prompt_id="p", while_pending=True))
    lost = JobLost("gone", prompt_id="p", started=False)
    assert not lost.started and "gone" in str(lost)
