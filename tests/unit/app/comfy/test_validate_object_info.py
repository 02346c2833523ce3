"""Validation against an instance's /object_info, and server rejections mapped back to titles
and injection parameters."""

from __future__ import annotations

import copy
import json

import pytest

from app.comfy.errors import parse_prompt_rejection
from app.comfy.inject import LoraSpec, inject
from app.comfy.rejections import explain_node_errors, explain_rejection, format_issues
from app.comfy.templates import load_template
from app.comfy.validate import combo_options, validate_workflow
from tests.helpers.object_info import (
    DATA_DIR,
    captured_object_info,
    luna_nodes_object_info,
    stock_object_info,
)

STOCK_TEMPLATES = ("sdxl_txt2img", "sdxl_img2img")


def luna_info():
    try:
        return luna_nodes_object_info()
    except ImportError as exc:  # the node pack needs daemon.wire.client, which lands separately
        pytest.skip(f"Luna node pack not importable yet: {exc}")


def codes(report):
    return [(i.code, i.node_id, i.input_name) for i in report.issues]


@pytest.mark.parametrize("name", STOCK_TEMPLATES)
def test_stock_templates_validate_against_real_object_info(name):
    template = load_template(name)
    report = validate_workflow(template.workflow, stock_object_info(), template.injection_map)
    assert report.issues == ()


def test_the_daemon_template_validates_against_the_luna_nodes_own_input_types():
    template = load_template("sdxl_txt2img_luna_daemon")
    info = stock_object_info()
    info.update(luna_info())
    report = validate_workflow(template.workflow, info, template.injection_map)
    assert report.issues == ()
    report = validate_workflow(
        inject(template, {"loras": ["detail_tweaker_xl.safetensors"]}).workflow, info, template.injection_map
    )
    assert report.ok, format_issues(report.issues)


@pytest.mark.parametrize("name", STOCK_TEMPLATES)
def test_injected_stock_templates_with_loras_still_validate(name):
    template = load_template(name)
    injected = inject(
        template,
        {
            "loras": [
                LoraSpec("detail_tweaker_xl.safetensors", 0.7),
                LoraSpec("luna_character_a.safetensors"),
            ],
            "seed": 5,
        },
    )
    report = validate_workflow(injected.workflow, stock_object_info(), template.injection_map)
    assert report.issues == ()


def test_without_the_luna_pack_the_daemon_template_reports_missing_node_types():
    template = load_template("sdxl_txt2img_luna_daemon")
    report = validate_workflow(template.workflow, stock_object_info(), template.injection_map)
    missing = [i for i in report.errors if i.code == "missing_node_type"]
    assert {i.node_id for i in missing} == {"6", "7", "8"}
    assert "Positive Prompt (Luna daemon)" in missing[0].describe()
    assert "custom node not installed" in missing[0].message


def test_a_missing_model_is_mapped_to_the_node_title_and_parameter():
    template = load_template("sdxl_txt2img")
    report = validate_workflow(template.workflow, captured_object_info(), template.injection_map)
    [issue] = report.errors
    assert (issue.code, issue.node_id, issue.input_name, issue.params) == (
        "value_not_in_list",
        "4",
        "ckpt_name",
        ("checkpoint",),
    )
    text = issue.describe()
    assert "'Load Checkpoint' (#4 CheckpointLoaderSimple)" in text and "[parameter checkpoint]" in text
    assert "'sd_xl_base_1.0.safetensors'" in text and "tiny_sd15.safetensors" in text and "missing" in text


def test_bad_values_are_found_with_their_parameters():
    template = load_template("sdxl_txt2img")
    injected = inject(template, {"steps": 0, "cfg": 101.0, "sampler": "bogus", "width": 8}).workflow
    report = validate_workflow(injected, stock_object_info(), template.injection_map)
    by_input = {i.input_name: i for i in report.errors}
    assert by_input["steps"].code == "value_smaller_than_min" and by_input["steps"].params == ("steps",)
    assert by_input["cfg"].code == "value_bigger_than_max"
    assert (
        by_input["sampler_name"].code == "value_not_in_list"
        and "(44 in all)" in by_input["sampler_name"].message
    )
    assert by_input["width"].code == "value_smaller_than_min" and by_input["width"].params == ("width",)


def test_graph_errors_are_found():
    template = load_template("sdxl_txt2img")
    wf = copy.deepcopy(template.workflow)
    wf["8"]["inputs"]["samples"] = ["99", 0]  # link to a missing node
    wf["8"]["inputs"]["vae"] = ["4", 7]  # output index out of range
    wf["3"]["inputs"]["model"] = ["4", 1]  # CLIP into MODEL
    del wf["3"]["inputs"]["seed"]  # required input missing
    wf["3"]["inputs"]["steps"] = "four"  # not an INT
    wf["5"]["inputs"]["colour"] = "red"  # unknown input: warning only
    report = validate_workflow(wf, stock_object_info(), template.injection_map)
    assert set(codes(report)) == {
        ("bad_linked_input", "8", "samples"),
        ("bad_linked_input", "8", "vae"),
        ("return_type_mismatch", "3", "model"),
        ("required_input_missing", "3", "seed"),
        ("invalid_input_type", "3", "steps"),
        ("unknown_input", "5", "colour"),
    }
    assert [i.input_name for i in report.warnings] == ["colour"]
    mismatch = next(i for i in report.issues if i.code == "return_type_mismatch")
    assert "expects MODEL but is linked to a CLIP output of 'Load Checkpoint'" in mismatch.message


def test_a_bound_input_the_instance_does_not_know_is_an_error_naming_the_parameter():
    template = load_template("sdxl_txt2img")
    info = stock_object_info()
    del info["EmptyLatentImage"]["input"]["required"]["batch_size"]
    report = validate_workflow(template.workflow, info, template.injection_map)
    [issue] = report.errors
    assert (issue.code, issue.input_name, issue.params) == (
        "unknown_bound_input",
        "batch_size",
        ("batch_size",),
    )


def test_a_workflow_without_output_node_is_reported():
    wf = {"4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny_sd15.safetensors"}}}
    report = validate_workflow(wf, captured_object_info())
    assert codes(report) == [("prompt_no_outputs", None, None)]


def test_combo_options_read_both_schema_forms():
    assert combo_options([["a", "b"], {}]) == ["a", "b"]
    assert combo_options(["COMBO", {"options": ["x"]}]) == ["x"]
    assert combo_options(["INT", {}]) is None


def captured_rejection(case):
    data = json.loads((DATA_DIR / "error_cases.json").read_text(encoding="utf-8"))[case]
    return parse_prompt_rejection(data["status"], data["json"])


def test_a_server_rejection_is_mapped_to_titles_and_parameters():
    template = load_template("sdxl_txt2img")
    # The capture was made against a graph where node 7 is the KSampler; map it onto ours.
    workflow = copy.deepcopy(template.workflow)
    workflow["7"], workflow["3"] = workflow["3"], workflow["7"]
    from app.comfy.templates import Binding, InjectionMap, ParamSpec

    injection_map = InjectionMap({"steps": ParamSpec("steps", "int", (Binding("7", "steps"),))})
    [issue] = explain_rejection(captured_rejection("value_below_min_steps_0"), workflow, injection_map)
    assert (issue.code, issue.node_title, issue.input_name, issue.params) == (
        "value_smaller_than_min",
        "KSampler",
        "steps",
        ("steps",),
    )
    assert (
        issue.describe()
        == "'KSampler' (#7 KSampler) input 'steps' [parameter steps]: Value 0 smaller than min of 1"
    )


def test_missing_model_and_missing_node_rejections_say_what_to_do():
    template = load_template("sdxl_txt2img")
    [model] = explain_rejection(
        captured_rejection("value_not_in_list_model_file"), template.workflow, template.injection_map
    )
    assert model.input_name == "unet_name" and "model file missing" in model.message
    [node] = explain_rejection(captured_rejection("missing_node_class"), template.workflow)
    assert node.node_id == "7" and "install the custom node" in node.message


def test_top_level_rejections_without_nodes_still_explain_themselves():
    template = load_template("sdxl_txt2img")
    [issue] = explain_rejection(captured_rejection("no_output_node"), template.workflow)
    assert issue.code == "prompt_no_outputs" and "Prompt has no outputs" in issue.describe()


def test_node_errors_on_a_200_become_warnings():
    template = load_template("sdxl_txt2img")
    node_errors = {
        "3": {
            "errors": [
                {
                    "type": "value_not_in_list",
                    "message": "Value not in list",
                    "details": "scheduler: 'x' not in [...]",
                    "extra_info": {"input_name": "scheduler"},
                }
            ],
            "dependent_outputs": ["9"],
            "class_type": "KSampler",
        }
    }
    [issue] = explain_node_errors(node_errors, template.workflow, template.injection_map)
    assert issue.severity == "warning" and issue.params == ("scheduler",)


def test_an_image_not_yet_listed_by_an_upload_widget_is_only_a_warning():
    template = load_template("sdxl_img2img")
    injected = inject(template, {"init_image": "just_uploaded.png", "seed": 1}).workflow
    report = validate_workflow(injected, stock_object_info(), template.injection_map)
    assert report.ok
    [issue] = report.warnings
    assert (issue.code, issue.params) == ("value_not_in_list", ("init_image",))
    assert "just uploaded" in issue.message


def test_an_old_server_string_error_still_explains_itself():
    template = load_template("sdxl_txt2img")
    [issue] = explain_rejection(
        parse_prompt_rejection(400, {"error": "no prompt", "node_errors": []}), template.workflow
    )
    assert issue.node_id is None and "no prompt" in issue.describe()
    legacy = parse_prompt_rejection(
        400,
        {
            "error": "invalid prompt",
            "node_errors": {"3": {"errors": ["Required input is missing: seed"], "class_type": "KSampler"}},
        },
    )
    [issue] = explain_rejection(legacy, template.workflow, template.injection_map)
    assert (issue.node_title, issue.input_name, issue.params) == ("KSampler", "seed", ("seed",))
