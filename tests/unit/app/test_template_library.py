"""The template library and the editor's document model, without Qt: real files in tmp dirs."""

from __future__ import annotations

import json
import os
import shutil
import tomllib
from pathlib import Path

import pytest

from app.comfy.inject import inject
from app.comfy.templates import load_template, parse_map
from app.comfy.validate import validate_workflow
from app.paths import workflows_dir
from app.services.template_editing import DocumentError, TemplateDocument, locate_issues, parse_test_values
from app.services.template_library import (
    LibraryError,
    NeedsObjectInfo,
    ReadOnlyTemplate,
    TemplateExists,
    TemplateLibrary,
)
from tests.helpers.fake_comfyui import default_object_info, txt2img_prompt
from tests.helpers.ui_workflows import default_ui_workflow


@pytest.fixture
def library(tmp_path: Path) -> TemplateLibrary:
    shipped = tmp_path / "shipped"
    shutil.copytree(workflows_dir(), shipped)
    return TemplateLibrary(tmp_path / "user", shipped)


def test_lists_shipped_templates_read_only_and_user_copies_as_editable(library):
    entries = {e.name: e for e in library.entries()}
    assert entries["sdxl_txt2img"].read_only and entries["sdxl_txt2img"].has_map
    copy = library.duplicate("sdxl_txt2img", "mine")
    assert copy.origin == "user" and not copy.read_only and copy.has_map
    assert load_template(copy.path).injection_map == load_template(entries["sdxl_txt2img"].path).injection_map


def test_shipped_templates_cannot_be_saved_renamed_or_deleted(library):
    document = library.open("sdxl_txt2img")
    assert document.read_only
    document.set_default("steps", "12")
    before = (library.shipped_dir / "sdxl_txt2img.luna.toml").read_bytes()
    for action in (
        lambda: library.save(document),
        lambda: library.rename("sdxl_txt2img", "x"),
        lambda: library.delete("sdxl_txt2img"),
    ):
        with pytest.raises(ReadOnlyTemplate, match="duplicate it to edit"):
            action()
    assert (library.shipped_dir / "sdxl_txt2img.luna.toml").read_bytes() == before


def test_a_user_template_hides_the_shipped_one_of_that_name_and_deleting_it_shows_it_again(library):
    library.user_dir.mkdir()
    shutil.copy(library.shipped_dir / "sdxl_txt2img.json", library.user_dir / "sdxl_txt2img.json")
    entry = library.entry("sdxl_txt2img")
    assert entry.origin == "user" and entry.overrides_shipped
    library.delete("sdxl_txt2img")
    assert library.entry("sdxl_txt2img").origin == "shipped"


def test_saving_writes_a_map_that_loads_with_the_edits(library):
    library.duplicate("sdxl_txt2img", "mine")
    document = library.open("mine")
    document.set_binding("steps", "3", "steps")
    document.set_default("steps", "12")
    document.set_default("loras", "detail.safetensors:0.7")
    document.add_custom("prefix2", "text", "9", "filename_prefix")
    document.remove("filename_prefix")
    result = library.save(document)
    assert not result.draft and not document.dirty
    template = load_template(library.user_dir / "mine.json")
    params = template.injection_map.params
    assert params["steps"].default == 12
    assert params["loras"].default == [
        {"name": "detail.safetensors", "strength_model": 0.7, "strength_clip": 0.7}
    ]
    assert "filename_prefix" not in params and params["prefix2"].bindings[0].node == "9"
    assert inject(template, {}).workflow["3"]["inputs"]["steps"] == 12


def test_a_failure_mid_write_leaves_the_old_map_intact_and_no_temp_file(library, monkeypatch):
    library.duplicate("sdxl_txt2img", "mine")
    map_file = library.user_dir / "mine.luna.toml"
    before = map_file.read_bytes()
    document = library.open("mine")
    document.set_default("steps", "12")

    def disk_full(_fd: int) -> None:  # the bytes are in the temp file, then the disk fills up
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        library.save(document)
    assert map_file.read_bytes() == before
    assert sorted(p.name for p in library.user_dir.iterdir()) == ["mine.json", "mine.luna.toml"]
    monkeypatch.undo()
    library.save(document)
    assert load_template(library.user_dir / "mine.json").injection_map.params["steps"].default == 12


def test_an_invalid_map_is_kept_as_a_draft_with_its_problems_and_the_template_keeps_its_map(library):
    library.duplicate("sdxl_txt2img", "mine")
    map_file = library.user_dir / "mine.luna.toml"
    before = map_file.read_bytes()
    document = library.open("mine")
    document.add_custom("mood")  # not bound
    document.set_default("steps", "many")  # not an int
    document.set_binding("cfg", "3", "positive")  # a link, not a value
    result = library.save(document)
    assert result.draft
    problems = {p.param: p.message for p in result.problems}
    assert problems["mood"].startswith("not bound")
    assert "'many' is not a int value" in problems["steps"]
    assert (
        "is a link from 'Positive Prompt' (#6" in problems["cfg"]
        and "bind the value on that node" in problems["cfg"]
    )
    assert map_file.read_bytes() == before  # the template still works with its last good map
    load_template(library.user_dir / "mine.json")
    assert library.entry("mine").has_draft

    reopened = library.open("mine")  # the draft, with the operator's work
    assert reopened.from_draft and reopened.row("mood").kind == "text"
    assert {p.param for p in library.draft_problems("mine")} == {"mood", "steps", "cfg"}
    reopened.remove("mood")
    reopened.set_default("steps", "9")
    reopened.set_binding("cfg", "3", "cfg")
    assert not library.save(reopened).draft
    assert not library.entry("mine").has_draft
    assert load_template(library.user_dir / "mine.json").injection_map.params["steps"].default == 9


def test_two_parameters_on_one_input_is_a_problem_on_both_rows(library):
    document = library.open("sdxl_txt2img")
    document.set_binding("steps", "3", "cfg")
    problems = {p.param: p.message for p in document.problems()}
    assert "also written by 'cfg'" in problems["steps"] and "also written by 'steps'" in problems["cfg"]
    with pytest.raises(DocumentError, match="steps"):
        document.injection_map()


def test_import_api_json_detects_the_map_and_writes_the_workflow(library):
    document = library.import_text("pasted", json.dumps(txt2img_prompt()))
    assert document.dirty and document.detected
    assert document.row("positive").binding.node == "6" and document.row("seed").binding.input == "seed"
    assert (library.user_dir / "pasted.json").is_file() and not (
        library.user_dir / "pasted.luna.toml"
    ).exists()
    library.save(document)
    assert (
        load_template(library.user_dir / "pasted.json").injection_map.params["negative"].bindings[0].node
        == "7"
    )
    with pytest.raises(TemplateExists):
        library.import_text("pasted", json.dumps(txt2img_prompt()))


def test_import_ui_format_needs_an_instance_and_converts_with_its_object_info(library, tmp_path):
    ui_file = tmp_path / "saved_ui.json"
    ui_file.write_text(json.dumps(default_ui_workflow()))
    with pytest.raises(NeedsObjectInfo, match="choose an instance"):
        library.import_file(ui_file)
    assert not (library.user_dir / "saved_ui.json").exists()
    document = library.import_file(ui_file, object_info=default_object_info())
    assert document.workflow["3"]["inputs"]["steps"] == 20  # widget values read by position
    assert document.workflow["3"]["inputs"]["positive"] == ["6", 0]
    assert any("converted from the UI format" in note for note in document.notes)
    saved = json.loads((library.user_dir / "saved_ui.json").read_text())
    assert "nodes" not in saved and saved["3"]["class_type"] == "KSampler"


def test_import_refuses_garbage_and_bad_names_without_writing(library):
    with pytest.raises(LibraryError, match="not JSON"):
        library.import_text("x", "{not json")
    with pytest.raises(LibraryError, match="not an API-format workflow"):
        library.import_text("x", "[]")
    for bad in ("../evil", "CON", "", "a:b"):
        with pytest.raises(LibraryError, match="cannot be a template name"):
            library.import_text(bad, json.dumps(txt2img_prompt()))
    assert not library.user_dir.exists() or not list(library.user_dir.glob("*.json"))


def test_rename_moves_workflow_map_and_draft_together(library):
    library.duplicate("sdxl_txt2img", "a")
    document = library.open("a")
    document.add_custom("loose")
    library.save(document)  # a draft
    entry = library.rename("a", "b")
    assert entry.has_map and entry.has_draft
    assert not (library.user_dir / "a.json").exists()
    with pytest.raises(LibraryError, match="no template named 'a'"):
        library.open("a")


def test_node_values_are_edited_with_their_type_and_links_are_not_editable(library):
    library.duplicate("sdxl_txt2img", "mine")
    document = library.open("mine")
    document.set_input_value("3", "steps", "7")
    assert document.workflow["3"]["inputs"]["steps"] == 7 and document.workflow_dirty
    with pytest.raises(DocumentError, match="whole number"):
        document.set_input_value("3", "steps", "seven")
    with pytest.raises(DocumentError, match="is a link"):
        document.set_input_value("3", "model", "x")
    node = next(n for n in document.nodes() if n.node_id == "3")
    model = next(c for c in node.inputs if c.name == "model")
    assert model.display() == "→ #4 Load Checkpoint [output 0]"
    library.save(document)
    assert json.loads((library.user_dir / "mine.json").read_text())["3"]["inputs"]["steps"] == 7


def test_detected_ambiguities_land_on_their_rows():
    workflow = txt2img_prompt()
    second = json.loads(json.dumps(workflow["3"]))
    second["inputs"]["latent_image"] = ["3", 0]
    workflow["10"] = second  # a hires-fix style second sampler
    from app.comfy.templates import template_from_workflow

    document = TemplateDocument.from_template(template_from_workflow("two", workflow))
    assert "2 samplers" in document.row("steps").ambiguity
    assert document.row("positive").ambiguity == ""


def test_validation_issues_are_located_on_parameter_and_node_rows(library):
    document = library.open("sdxl_txt2img")
    template = document.template()
    report = validate_workflow(inject(template, {}).workflow, default_object_info(), template.injection_map)
    located = locate_issues(report, document)
    assert "not offered by this instance" in located.by_param["checkpoint"][0].message
    assert located.by_node["4"][0].input_name == "ckpt_name"


def test_test_values_are_read_by_kind(library):
    document = library.open("sdxl_txt2img")
    assert parse_test_values(document, {"steps": "5", "seed": "random", "positive": "", "cfg": "6.5"}) == {
        "steps": 5,
        "seed": "random",
        "cfg": 6.5,
    }
    with pytest.raises(DocumentError, match="steps"):
        parse_test_values(document, {"steps": "five"})


def test_saved_map_text_parses_back(library):
    library.duplicate("sdxl_img2img", "i2i")
    document = library.open("i2i")
    document.set_default("positive", 'a "quoted"\nline')
    library.save(document)
    text = (library.user_dir / "i2i.luna.toml").read_text()
    assert parse_map(tomllib.loads(text)).params["positive"].default == 'a "quoted"\nline'


def test_loras_are_mapped_by_picking_a_model_loader_or_a_lora_loader(library):
    document = library.open("sdxl_txt2img")
    document.set_lora_target(None)
    assert not document.row("loras").mapped
    document.set_lora_target("4")  # the checkpoint: its CLIP feeds the prompts, so model + CLIP
    lora = document.row("loras").lora
    assert lora.model_source == ("4", 0) and lora.clip_source == ("4", 1) and lora.nodes == ()
    values = parse_test_values(document, {"loras": "detail.safetensors:0.5"})
    injected = inject(document.template(), values).workflow
    loader = next(n for n in injected.values() if n["class_type"] == "LoraLoader")
    assert loader["inputs"]["model"] == ["4", 0] and loader["inputs"]["strength_model"] == 0.5

    workflow = txt2img_prompt()
    for node_id, source in (("20", ["4", 0]), ("21", ["20", 0])):
        workflow[node_id] = {
            "class_type": "LoraLoader",
            "inputs": {
                "model": source,
                "clip": ["4", 1],
                "lora_name": "a",
                "strength_model": 1.0,
                "strength_clip": 1.0,
            },
        }
    workflow["3"]["inputs"]["model"] = ["21", 0]
    from app.comfy.templates import template_from_workflow

    chained = TemplateDocument.from_template(template_from_workflow("chained", workflow))
    chained.set_lora_target("20")
    assert chained.row("loras").lora.nodes == ("20", "21")
