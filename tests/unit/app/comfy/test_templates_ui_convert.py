"""UI-format → API-format conversion with /object_info, following the frontend's rules."""

from __future__ import annotations

import copy

import pytest

from app.comfy.detect import detect_map
from app.comfy.templates import Binding, load_template
from app.comfy.ui_convert import UiConversionError, convert_ui_workflow, widget_inputs
from app.comfy.validate import validate_workflow
from tests.helpers.object_info import stock_object_info
from tests.helpers.ui_workflows import default_ui_workflow, ui_node


def test_the_default_graph_converts_to_what_export_api_writes():
    workflow = convert_ui_workflow(default_ui_workflow(), stock_object_info()).workflow
    assert workflow["3"] == {
        "class_type": "KSampler",
        "_meta": {"title": "KSampler"},
        "inputs": {
            "seed": 156680208700286,
            "steps": 20,
            "cfg": 8,
            "sampler_name": "euler",
            "scheduler": "normal",
            "denoise": 1,
            "model": ["4", 0],
            "positive": ["6", 0],
            "negative": ["7", 0],
            "latent_image": ["5", 0],
        },
    }
    assert workflow["6"] == {
        "class_type": "CLIPTextEncode",
        "_meta": {"title": "Positive"},
        "inputs": {"text": "a lighthouse at dusk", "clip": ["4", 1]},
    }
    assert workflow["5"]["inputs"] == {"width": 1024, "height": 1024, "batch_size": 1}
    assert workflow["4"]["_meta"]["title"] == "Load Checkpoint"  # display name when untitled
    assert validate_workflow(workflow, stock_object_info()).issues == ()
    shipped = load_template("sdxl_txt2img").workflow
    assert {k: v["class_type"] for k, v in workflow.items()} == {
        k: v["class_type"] for k, v in shipped.items()
    }
    assert detect_map(workflow).injection_map.params["positive"].bindings == (Binding("6", "text"),)


def test_the_object_form_of_links_is_read_too():
    data = default_ui_workflow()
    data["links"] = [
        dict(zip(("id", "origin_id", "origin_slot", "target_id", "target_slot", "type"), link))
        for link in data["links"]
    ]
    assert convert_ui_workflow(data, stock_object_info()).workflow["3"]["inputs"]["model"] == ["4", 0]


def test_reroutes_primitives_bypassed_and_muted_nodes_follow_the_frontend_rules():
    data = default_ui_workflow()
    nodes = {n["id"]: n for n in data["nodes"]}
    # CLIP for the negative prompt goes through a Reroute.
    data["nodes"].append(ui_node(20, "Reroute", None, inputs=[("", "*", 20)], outputs=[("", "CLIP", [5])]))
    data["links"] = [link for link in data["links"] if link[0] != 5] + [
        [20, 4, 1, 20, 0, "CLIP"],
        [5, 20, 0, 7, 0, "CLIP"],
    ]
    # The seed widget is converted to an input fed by a PrimitiveNode.
    nodes[3]["inputs"].append({"name": "seed", "type": "INT", "widget": {"name": "seed"}, "link": 21})
    data["nodes"].append(ui_node(21, "PrimitiveNode", [777, "fixed"], outputs=[("INT", "INT", [21])]))
    data["links"].append([21, 21, 0, 3, 4, "INT"])
    # A bypassed LoRA between checkpoint and sampler, and a muted preview.
    data["nodes"].append(
        ui_node(
            22,
            "LoraLoader",
            ["detail_tweaker_xl.safetensors", 1, 1],
            inputs=[("model", "MODEL", 22), ("clip", "CLIP", None)],
            outputs=[("MODEL", "MODEL", [1]), ("CLIP", "CLIP", [])],
            mode=4,
        )
    )
    data["links"] = [link for link in data["links"] if link[0] != 1] + [
        [22, 4, 0, 22, 0, "MODEL"],
        [1, 22, 0, 3, 0, "MODEL"],
    ]
    data["nodes"].append(ui_node(23, "PreviewImage", [], inputs=[("images", "IMAGE", 23)], mode=2))
    data["links"].append([23, 8, 0, 23, 0, "IMAGE"])
    conversion = convert_ui_workflow(data, stock_object_info())
    workflow = conversion.workflow
    assert workflow["7"]["inputs"]["clip"] == ["4", 1]
    assert workflow["3"]["inputs"]["seed"] == 777
    assert workflow["3"]["inputs"]["model"] == ["4", 0]
    assert not {"20", "21", "22", "23"} & set(workflow)
    assert any("bypassed node #22" in n for n in conversion.notes) and any(
        "muted node #23" in n for n in conversion.notes
    )
    assert validate_workflow(workflow, stock_object_info()).issues == ()


def custom_info(seed_config):
    return {
        "Custom": {
            "input": {
                "required": {
                    "seed": ["INT", seed_config],
                    "steps": ["INT", {}],
                    "text": ["STRING", {"forceInput": True}],
                    "mode": [["a", "b"]],
                }
            },
            "input_order": {"required": ["seed", "steps", "text", "mode"]},
            "output": ["LATENT"],
            "output_node": True,
            "display_name": "Custom",
        }
    }


@pytest.mark.parametrize(
    "seed_config, widgets, expected",
    [
        ({}, [5, "fixed", 30, "b"], {"seed": 5, "steps": 30, "mode": "b"}),  # name rule
        ({"control_after_generate": False}, [5, 30, "b"], {"seed": 5, "steps": 30, "mode": "b"}),  # flag wins
        ({"control_after_generate": True}, [5, "increment", 30, "a"], {"seed": 5, "steps": 30, "mode": "a"}),
    ],
)
def test_control_after_generate_slots_and_force_input_keep_positions_aligned(seed_config, widgets, expected):
    data = {"nodes": [ui_node(1, "Custom", widgets)], "links": []}
    assert convert_ui_workflow(data, custom_info(seed_config)).workflow["1"]["inputs"] == expected
    assert [n for n, _ in widget_inputs(custom_info(seed_config)["Custom"])] == ["seed", "steps", "mode"]


def test_object_widgets_values_are_read_by_name():
    data = {"nodes": [ui_node(1, "Custom", {"mode": "b", "steps": 9, "seed": 1})], "links": []}
    assert convert_ui_workflow(data, custom_info({})).workflow["1"]["inputs"] == {
        "seed": 1,
        "steps": 9,
        "mode": "b",
    }


def test_unknown_node_types_and_subgraphs_are_refused_with_a_reason():
    data = default_ui_workflow()
    data["nodes"].append(ui_node(30, "FancyUpscaler", [2]))
    with pytest.raises(UiConversionError, match="FancyUpscaler.*custom nodes not installed"):
        convert_ui_workflow(data, stock_object_info())
    data = default_ui_workflow()
    data["definitions"] = {"subgraphs": [{"id": "0b5e-uuid", "nodes": []}]}
    data["nodes"].append(ui_node(31, "0b5e-uuid", [], title="My subgraph"))
    with pytest.raises(UiConversionError, match="'My subgraph'.*subgraph.*Export \\(API\\)"):
        convert_ui_workflow(data, stock_object_info())


def test_conversion_does_not_modify_its_input():
    data = default_ui_workflow()
    before = copy.deepcopy(data)
    convert_ui_workflow(data, stock_object_info())
    assert data == before
