"""Template files: lookup by path and name, the map format, UI-format refusal, detection fallback."""

from __future__ import annotations

import json
import tomllib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.comfy.graph import UiFormatWorkflowError, WorkflowFormatError
from app.comfy.templates import (
    Binding,
    InjectionMap,
    LoraChainTarget,
    LoraStackerTarget,
    ParamSpec,
    TemplateError,
    TemplateNotFound,
    dump_map,
    list_templates,
    load_template,
    parse_map,
    user_workflows_dir,
)
from app.paths import workflows_dir

SHIPPED = ("sdxl_txt2img", "sdxl_img2img", "sdxl_txt2img_luna_daemon")

TINY = {
    "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "a.safetensors"}},
    "2": {
        "class_type": "CLIPTextEncode",
        "inputs": {"text": "cat", "clip": ["1", 1]},
        "_meta": {"title": "Prompt"},
    },
}


def write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data) if not isinstance(data, str) else data, encoding="utf-8")
    return path


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_template_loads_by_name_with_its_map(name):
    template = load_template(name)
    assert template.workflow_path == workflows_dir() / f"{name}.json"
    assert template.map_path == workflows_dir() / f"{name}.luna.toml"
    assert not template.detected
    assert {"positive", "seed", "loras"} <= set(template.injection_map.params)
    assert template.description


def test_a_template_loads_from_a_file_path(tmp_path):
    path = write(tmp_path / "mine.json", TINY)
    template = load_template(str(path))
    assert template.name == "mine"
    assert template.workflow == TINY


def test_user_templates_hide_shipped_ones_of_the_same_name():
    write(user_workflows_dir() / "sdxl_txt2img.json", TINY)
    assert load_template("sdxl_txt2img").workflow == TINY
    assert list_templates()["sdxl_txt2img"].parent == user_workflows_dir()
    assert list_templates()["sdxl_img2img"].parent == workflows_dir()


def test_an_unknown_name_says_where_it_looked_and_what_exists():
    with pytest.raises(TemplateNotFound) as info:
        load_template("nope")
    assert "nope" in str(info.value) and "sdxl_txt2img" in str(info.value)


@pytest.mark.parametrize("name", ["CON", "nul", "com1", "c:sdxl_txt2img", "sdxl_txt2img:stream", "x?"])
def test_a_name_windows_would_read_as_a_device_or_drive_is_not_a_template(name):
    with pytest.raises(TemplateNotFound, match="not a template name"):
        load_template(name)


def test_a_missing_file_path_is_not_searched_by_name(tmp_path):
    with pytest.raises(TemplateNotFound, match="not found"):
        load_template(str(tmp_path / "absent.json"))


def test_a_ui_format_workflow_is_refused_with_export_instructions(tmp_path):
    ui = {
        "last_node_id": 9,
        "nodes": [{"id": 3, "type": "KSampler", "widgets_values": [1, "fixed"]}],
        "links": [[1, 4, 0, 3, 0, "MODEL"]],
        "version": 0.4,
    }
    path = write(tmp_path / "ui.json", ui)
    with pytest.raises(UiFormatWorkflowError) as info:
        load_template(str(path))
    assert "Export (API)" in str(info.value) and "Save (API Format)" in str(info.value)


@pytest.mark.parametrize(
    "data, needle",
    [
        ([], "non-empty JSON object"),
        ({"1": {"inputs": {}}}, "no 'class_type'"),
        ({"1": {"class_type": "X", "inputs": []}}, "no 'inputs' object"),
    ],
)
def test_malformed_workflows_get_a_clear_format_error(tmp_path, data, needle):
    with pytest.raises(WorkflowFormatError, match=needle):
        load_template(str(write(tmp_path / "bad.json", data)))


def test_invalid_json_is_a_template_error_naming_the_file(tmp_path):
    path = write(tmp_path / "broken.json", "{ nope")
    with pytest.raises(TemplateError, match="broken.json is not valid JSON"):
        load_template(str(path))


def test_a_saved_prompt_body_is_unwrapped(tmp_path):
    path = write(tmp_path / "body.json", {"prompt": TINY, "client_id": "x"})
    assert load_template(str(path)).workflow == TINY


def test_a_json_without_map_gets_the_detected_map_and_notes(tmp_path):
    template = load_template(str(write(tmp_path / "bare.json", TINY)))
    assert template.detected and template.map_path is None
    assert template.injection_map.params["checkpoint"].bindings == (Binding("1", "ckpt_name"),)
    assert any("sampler" in note for note in template.notes)


def test_a_map_binding_to_a_missing_node_names_the_parameter(tmp_path):
    write(tmp_path / "t.json", TINY)
    write(
        tmp_path / "t.luna.toml",
        '[params.positive]\nkind = "text"\nbind = [{ node = "99", input = "text" }]\n',
    )
    with pytest.raises(TemplateError, match="parameter 'positive' is bound to node.*#99"):
        load_template(str(tmp_path / "t.json"))


@pytest.mark.parametrize(
    "toml_text, needle",
    [
        ('[params.x]\nkind = "colour"\nbind = [{ node = "1", input = "a" }]\n', "kind 'colour'"),
        ('[params.x]\nkind = "int"\n', "no bind entries"),
        ('[params.x]\nkind = "int"\nbind = [{ node = "1" }]\n', "needs node and input"),
        ('[params.loras]\nkind = "loras"\n', "needs a chain, a model_source or a stacker"),
        ('[params.loras]\nkind = "loras"\nmodel_source = ["1"]\n', "expected \\[node_id, output_index\\]"),
    ],
)
def test_bad_maps_are_rejected_with_the_parameter_named(toml_text, needle):
    with pytest.raises(TemplateError, match=needle):
        parse_map(tomllib.loads(toml_text))


def test_invalid_toml_is_a_template_error(tmp_path):
    write(tmp_path / "t.json", TINY)
    write(tmp_path / "t.luna.toml", "[params\n")
    with pytest.raises(TemplateError, match="not valid TOML"):
        load_template(str(tmp_path / "t.json"))


@pytest.mark.parametrize("name", SHIPPED)
def test_dump_map_round_trips_every_shipped_map(name):
    original = load_template(name).injection_map
    assert parse_map(tomllib.loads(dump_map(original))) == original


def test_dump_map_round_trips_stacker_and_chain_targets_and_ranges():
    text = (
        '[params.loras]\nkind = "loras"\nstacker = { node = "5", name = "lora_{i}", '
        'model_strength = "strength_{i}", enabled = "enabled_{i}", slots = 4 }\n'
        '[params.more]\nkind = "loras"\nchain = ["7", "8"]\n'
        '[params.denoise]\nkind = "float"\nmin = 0.0\nmax = 1.0\ndefault = 0.5\n'
        'description = "quote \\" inside"\nbind = [{ node = "3", input = "denoise" }]\n'
    )
    parsed = parse_map(tomllib.loads(text))
    assert parsed.params["loras"].lora == LoraStackerTarget("5", enabled="enabled_{i}")
    assert parsed.params["more"].lora == LoraChainTarget(nodes=("7", "8"))
    assert parse_map(tomllib.loads(dump_map(parsed))) == parsed


def test_params_at_finds_the_parameters_bound_to_a_node_input():
    injection_map = load_template("sdxl_txt2img").injection_map
    assert injection_map.params_at("3", "seed") == ["seed"]
    assert injection_map.params_at("5") == ["width", "height", "batch_size"]
    assert injection_map.params_at("8", "vae") == []


_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)
_name = st.from_regex(r"[a-z][a-z0-9_]{0,15}", fullmatch=True)


@settings(max_examples=60, deadline=None)
@given(
    names=st.lists(_name, min_size=1, max_size=4, unique=True),
    description=_text,
    node=_text.filter(bool),
    input_name=_text.filter(bool),
    default=st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1), _text),
)
def test_any_map_round_trips_through_its_toml_text(names, description, node, input_name, default):
    params = {
        n: ParamSpec(n, "text", (Binding(node, input_name),), description=description, default=default)
        for n in names
    }
    injection_map = InjectionMap(params, description=description)
    assert parse_map(tomllib.loads(dump_map(injection_map))) == injection_map
