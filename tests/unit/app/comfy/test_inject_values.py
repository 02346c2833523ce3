"""Injection: never mutates the template, type-checks values, names the parameter on errors,
applies LoRAs to chains (fill, splice out, insert) and stackers."""

from __future__ import annotations

import copy
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.comfy.graph import consumers
from app.comfy.inject import (
    BindingError,
    LoraSpec,
    ParameterTypeError,
    UnknownParameterError,
    inject,
    parse_value,
)
from app.comfy.templates import (
    Binding,
    InjectionMap,
    LoraChainTarget,
    LoraStackerTarget,
    ParamSpec,
    Template,
    load_template,
)
from app.comfy.validate import validate_workflow
from tests.helpers.object_info import luna_nodes_object_info, stock_object_info

LORA_FILES = ["detail_tweaker_xl.safetensors", "luna_character_a.safetensors"]


def template_with(workflow, *specs):
    return Template(name="t", workflow=workflow, injection_map=InjectionMap({s.name: s for s in specs}))


def test_injection_writes_values_and_never_mutates_the_template():
    template = load_template("sdxl_txt2img")
    before = copy.deepcopy(template.workflow)
    result = inject(
        template,
        {
            "positive": "a fox",
            "seed": 7,
            "steps": 30,
            "cfg": 5,
            "width": 832,
            "sampler": "euler",
            "checkpoint": "other.safetensors",
        },
    )
    wf = result.workflow
    assert wf["6"]["inputs"]["text"] == "a fox"
    assert (wf["3"]["inputs"]["seed"], wf["3"]["inputs"]["steps"], wf["3"]["inputs"]["cfg"]) == (7, 30, 5.0)
    assert isinstance(wf["3"]["inputs"]["cfg"], float)
    assert wf["5"]["inputs"]["width"] == 832 and wf["3"]["inputs"]["sampler_name"] == "euler"
    assert wf["4"]["inputs"]["ckpt_name"] == "other.safetensors"
    assert template.workflow == before
    assert result.values["seed"] == 7


def test_unset_randomized_seeds_get_a_fresh_value_that_is_reported():
    template = load_template("sdxl_txt2img")
    result = inject(template, {}, rng=random.Random(3))
    assert result.values["seed"] == random.Random(3).randrange(2**32)
    assert result.workflow["3"]["inputs"]["seed"] == result.values["seed"]
    assert inject(template, {"seed": "random"}, rng=random.Random(3)).values["seed"] == result.values["seed"]


def test_unset_parameters_keep_the_workflow_value_or_take_the_default():
    workflow = {"1": {"class_type": "X", "inputs": {"a": 1, "b": 2}}}
    template = template_with(
        workflow,
        ParamSpec("a", "int", (Binding("1", "a"),)),
        ParamSpec("b", "int", (Binding("1", "b"),), default=9),
    )
    result = inject(template)
    assert result.workflow["1"]["inputs"] == {"a": 1, "b": 9}
    assert result.values == {"b": 9}


def test_an_unknown_parameter_is_an_error_listing_the_known_ones():
    with pytest.raises(UnknownParameterError) as info:
        inject(load_template("sdxl_txt2img"), {"colour": "red"})
    assert info.value.param == "colour"
    assert "no parameter 'colour'" in str(info.value) and "positive" in str(info.value)


@pytest.mark.parametrize(
    "param, value",
    [
        ("steps", "30"),
        ("steps", 2.5),
        ("steps", True),
        ("cfg", "high"),
        ("positive", 3),
        ("seed", -5),
        ("seed", 2**64),
        ("sampler", ""),
        ("loras", 5),
        ("loras", [{"strength": 1}]),
        ("loras", [{"name": "a", "model": "x"}]),
    ],
)
def test_values_of_the_wrong_type_are_refused_naming_the_parameter(param, value):
    with pytest.raises(ParameterTypeError) as info:
        inject(load_template("sdxl_txt2img"), {param: value})
    assert info.value.param == param and f"'{param}'" in str(info.value)


def test_range_limits_of_the_map_are_enforced():
    with pytest.raises(ParameterTypeError, match="above the maximum 1.0"):
        inject(load_template("sdxl_img2img"), {"denoise": 1.5})


def test_a_binding_to_a_node_the_workflow_lacks_names_the_parameter():
    template = template_with(
        {"1": {"class_type": "X", "inputs": {}}}, ParamSpec("p", "text", (Binding("7", "t"),))
    )
    with pytest.raises(BindingError, match="parameter 'p' is bound to node #7"):
        inject(template, {"p": "x"})


def test_custom_parameters_write_every_bound_input():
    template = load_template("sdxl_txt2img_luna_daemon")
    wf = inject(
        template, {"model_set": "anime", "clip_skip": -2, "daemon_mode": "daemon", "height": 1216}
    ).workflow
    assert [wf[n]["inputs"]["model_set"] for n in "678"] == ["anime"] * 3
    assert [wf[n]["inputs"]["mode"] for n in "678"] == ["daemon"] * 3
    assert wf["6"]["inputs"]["clip_skip"] == wf["7"]["inputs"]["clip_skip"] == -2
    assert (
        wf["5"]["inputs"]["height"]
        == wf["6"]["inputs"]["target_height"]
        == wf["7"]["inputs"]["height"]
        == 1216
    )


def test_loras_are_inserted_after_the_checkpoint_and_consumers_rewired():
    template = load_template("sdxl_txt2img")
    result = inject(template, {"loras": [LoraSpec("a.safetensors", 0.8, 0.5), {"name": "b.safetensors"}]})
    wf = result.workflow
    loras = [n for n in wf if wf[n]["class_type"] == "LoraLoader"]
    assert loras == ["10", "11"]
    first, second = (wf[n]["inputs"] for n in loras)
    assert (
        first["model"],
        first["clip"],
        first["lora_name"],
        first["strength_model"],
        first["strength_clip"],
    ) == (["4", 0], ["4", 1], "a.safetensors", 0.8, 0.5)
    assert (second["model"], second["clip"], second["strength_clip"]) == (["10", 0], ["10", 1], 1.0)
    assert wf["3"]["inputs"]["model"] == ["11", 0]
    assert wf["6"]["inputs"]["clip"] == wf["7"]["inputs"]["clip"] == ["11", 1]
    assert consumers(wf, "4", 0) == [("10", "model")]
    assert wf["8"]["inputs"]["vae"] == ["4", 2]  # other outputs untouched


def test_no_loras_leaves_the_graph_as_it_was():
    template = load_template("sdxl_txt2img")
    assert inject(template, {"loras": [], "seed": 1}).workflow == {
        **template.workflow,
        "3": {**template.workflow["3"], "inputs": {**template.workflow["3"]["inputs"], "seed": 1}},
    }


def test_daemon_template_loras_patch_the_model_only_and_warn_about_clip_strength():
    result = inject(load_template("sdxl_txt2img_luna_daemon"), {"loras": [LoraSpec("a", 1.0, 0.7)]})
    wf = result.workflow
    new = [n for n in wf if wf[n]["class_type"] == "LoraLoaderModelOnly"]
    assert len(new) == 1 and wf["3"]["inputs"]["model"] == [new[0], 0]
    assert wf["6"]["inputs"]["clip"] == ["4", 1]
    assert any("clip strength ignored" in w for w in result.warnings)


def chain_workflow():
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "m"}},
        "2": {
            "class_type": "LoraLoader",
            "inputs": {
                "model": ["1", 0],
                "clip": ["1", 1],
                "lora_name": "x",
                "strength_model": 1.0,
                "strength_clip": 1.0,
            },
        },
        "3": {
            "class_type": "LoraLoader",
            "inputs": {
                "model": ["2", 0],
                "clip": ["2", 1],
                "lora_name": "y",
                "strength_model": 1.0,
                "strength_clip": 1.0,
            },
        },
        "4": {"class_type": "KSampler", "inputs": {"model": ["3", 0]}},
        "5": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["3", 1]}},
    }


def test_an_existing_chain_is_filled_and_unused_loaders_are_spliced_out():
    template = template_with(
        chain_workflow(), ParamSpec("loras", "loras", lora=LoraChainTarget(nodes=("2", "3")))
    )
    wf = inject(template, {"loras": [LoraSpec("a", 0.6)]}).workflow
    assert "3" not in wf
    assert wf["2"]["inputs"]["lora_name"] == "a" and wf["2"]["inputs"]["strength_clip"] == 0.6
    assert wf["4"]["inputs"]["model"] == ["2", 0] and wf["5"]["inputs"]["clip"] == ["2", 1]
    empty = inject(template, {"loras": []}).workflow
    assert "2" not in empty and "3" not in empty
    assert empty["4"]["inputs"]["model"] == ["1", 0] and empty["5"]["inputs"]["clip"] == ["1", 1]


def test_more_loras_than_the_chain_holds_are_inserted_after_its_last_loader():
    template = template_with(
        chain_workflow(), ParamSpec("loras", "loras", lora=LoraChainTarget(nodes=("2", "3")))
    )
    wf = inject(template, {"loras": ["a", "b", "c"]}).workflow
    assert wf["6"]["inputs"]["model"] == ["3", 0] and wf["6"]["inputs"]["lora_name"] == "c"
    assert wf["4"]["inputs"]["model"] == ["6", 0] and wf["5"]["inputs"]["clip"] == ["6", 1]


def stacker_template(clip_pattern=None, enabled="enabled_{i}"):
    inputs = {"enabled": True, "show_previews": True}
    for i in range(1, 5):
        inputs.update({f"lora_{i}": "None", f"strength_{i}": 1.0})
        if enabled:
            inputs[f"enabled_{i}"] = True
    workflow = {"9": {"class_type": "LunaLoRAStacker", "inputs": inputs}}
    target = LoraStackerTarget("9", clip_strength=clip_pattern, enabled=enabled)
    return template_with(workflow, ParamSpec("loras", "loras", lora=target))


def test_stacker_slots_are_filled_and_the_rest_disabled():
    result = inject(stacker_template(), {"loras": [LoraSpec("a", 0.7), LoraSpec("b", 0.4, 0.9)]})
    inputs = result.workflow["9"]["inputs"]
    assert [inputs[f"lora_{i}"] for i in (1, 2)] == ["a", "b"]
    assert [inputs[f"strength_{i}"] for i in (1, 2)] == [0.7, 0.4]
    assert [inputs[f"enabled_{i}"] for i in range(1, 5)] == [True, True, False, False]
    assert any("one strength per slot" in w for w in result.warnings)


def test_a_stacker_without_toggles_gets_zero_strength_in_unused_slots():
    inputs = inject(stacker_template(enabled=None), {"loras": ["a"]}).workflow["9"]["inputs"]
    assert [inputs[f"strength_{i}"] for i in range(1, 5)] == [1.0, 0.0, 0.0, 0.0]


def test_too_many_loras_for_the_stacker_is_an_error():
    with pytest.raises(ParameterTypeError, match="5 LoRAs but the stacker #9 has 4 slots"):
        inject(stacker_template(), {"loras": list("abcde")})


@pytest.mark.parametrize(
    "kind, text, expected",
    [
        ("int", "30", 30),
        ("float", "6.5", 6.5),
        ("seed", "random", "random"),
        ("seed", "-1", "random"),
        ("seed", "42", 42),
        ("bool", "yes", True),
        ("bool", "off", False),
        ("text", "a = b", "a = b"),
        (
            "loras",
            "a.safetensors:0.8:0.5,b.safetensors",
            [LoraSpec("a.safetensors", 0.8, 0.5), LoraSpec("b.safetensors")],
        ),
        ("loras", '[{"name": "a", "model": 0.5}]', [{"name": "a", "model": 0.5}]),
    ],
)
def test_command_line_text_is_parsed_by_kind(kind, text, expected):
    assert parse_value(ParamSpec("p", kind), text) == expected


@pytest.mark.parametrize("kind, text", [("int", "ten"), ("float", "x"), ("bool", "maybe"), ("loras", "a:x")])
def test_unreadable_command_line_text_names_the_parameter(kind, text):
    with pytest.raises(ParameterTypeError, match="parameter 'p'"):
        parse_value(ParamSpec("p", kind), text)


@settings(max_examples=40, deadline=None)
@given(
    name=st.sampled_from(["sdxl_txt2img", "sdxl_img2img", "sdxl_txt2img_luna_daemon"]),
    loras=st.lists(
        st.tuples(st.sampled_from(LORA_FILES), st.floats(-2, 2), st.one_of(st.none(), st.floats(-2, 2))),
        max_size=5,
    ),
    text=st.text(max_size=60),
    seed=st.integers(0, 2**64 - 1),
    steps=st.integers(1, 150),
)
def test_any_injection_leaves_a_valid_graph_and_the_template_untouched(name, loras, text, seed, steps):
    template = load_template(name)
    before = copy.deepcopy(template.workflow)
    result = inject(
        template,
        {"positive": text, "seed": seed, "steps": steps, "loras": [LoraSpec(n, m, c) for n, m, c in loras]},
    )
    assert template.workflow == before
    info = stock_object_info()
    if name.endswith("luna_daemon"):
        info.update(luna_nodes_object_info())
    report = validate_workflow(result.workflow, info, template.injection_map)
    assert [i for i in report.issues if i.code != "value_not_in_list" or i.input_name != "image"] == []
    assert result.workflow["6"]["inputs"]["text"] == text and result.workflow["3"]["inputs"]["seed"] == seed
    loaders = [n for n in result.workflow.values() if n["class_type"].startswith("LoraLoader")]
    assert [n["inputs"]["lora_name"] for n in loaders] == [n for n, _, _ in loras]
