"""The fake ComfyUI answers in the shapes a real ComfyUI 0.33 sent (tests/data/comfyui captures)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from tests.helpers.fake_comfyui import FakeComfyUI, txt2img_prompt

CASES = json.loads((Path(__file__).parents[2] / "tests/data/comfyui/error_cases.json").read_text())


@pytest.fixture
async def fake():
    async with FakeComfyUI() as server:
        yield server


@pytest.fixture
async def http(fake):
    async with httpx.AsyncClient(base_url=fake.url) as client:
        yield client


def broken(kind: str) -> dict:
    prompt = txt2img_prompt()
    if kind == "value_below_min_steps_0":
        prompt["3"]["inputs"]["steps"] = 0
    elif kind == "value_not_in_list_sampler":
        prompt["3"]["inputs"]["sampler_name"] = "bogus_sampler"
    elif kind == "required_input_missing_seed":
        del prompt["3"]["inputs"]["seed"]
    elif kind == "bad_type_steps_string":
        prompt["3"]["inputs"]["steps"] = "four"
    elif kind == "link_to_missing_node":
        prompt["8"]["inputs"]["samples"] = ["99", 0]
    elif kind == "link_type_mismatch_CLIP_to_MODEL":
        prompt["3"]["inputs"]["model"] = ["4", 1]
    return prompt


@pytest.mark.parametrize(
    "kind",
    [
        "value_below_min_steps_0",
        "value_not_in_list_sampler",
        "required_input_missing_seed",
        "bad_type_steps_string",
        "link_to_missing_node",
        "link_type_mismatch_CLIP_to_MODEL",
    ],
)
async def test_validation_400s_have_the_captured_shape(http, kind):
    response = await http.post("/api/prompt", json={"prompt": broken(kind)})
    captured = CASES[kind]["json"]
    body = response.json()

    assert response.status_code == 400
    assert body["error"] == captured["error"]
    ((node_id, entry),) = body["node_errors"].items()
    ((_, expected),) = captured["node_errors"].items()
    assert set(entry) == set(expected) and entry["dependent_outputs"] == ["9"]
    reason, expected_reason = entry["errors"][0], expected["errors"][0]
    assert set(reason) == set(expected_reason)
    assert (reason["type"], reason["message"]) == (expected_reason["type"], expected_reason["message"])
    assert reason["extra_info"]["input_name"] == expected_reason["extra_info"]["input_name"]
    assert set(expected_reason["extra_info"]) - {"traceback"} <= set(reason["extra_info"])


@pytest.mark.parametrize(
    "kind, body",
    [
        ("no_prompt_key", {"client_id": "x"}),
        ("bad_prompt_id", {"prompt": txt2img_prompt(), "prompt_id": "NOT-A-UUID"}),
        ("no_output_node", {"prompt": {k: v for k, v in txt2img_prompt().items() if k != "9"}}),
    ],
)
async def test_top_level_400s_match_the_capture(http, kind, body):
    response = await http.post("/api/prompt", json=body)
    assert response.status_code == 400 and response.json() == CASES[kind]["json"]


async def test_unknown_class_and_malformed_body(http):
    prompt = txt2img_prompt()
    prompt["3"]["class_type"] = "NoSuchNode"
    body = (await http.post("/prompt", json={"prompt": prompt})).json()
    assert body["error"]["type"] == "missing_node_type" and body["node_errors"] == {}
    assert body["error"]["message"] == CASES["missing_node_class"]["json"]["error"]["message"]
    assert body["error"]["extra_info"] == {
        "node_id": "3",
        "class_type": "NoSuchNode",
        "node_title": "KSampler",
    }

    response = await http.post("/prompt", content=b"{not json", headers={"Content-Type": "application/json"})
    assert response.status_code == 500 and response.text == CASES["malformed_json_body"]["text"]


async def test_idle_queue_prompt_and_system_stats_shapes(http):
    assert (await http.get("/api/queue")).json() == {"queue_running": [], "queue_pending": []}
    assert (await http.get("/api/prompt")).json() == {"exec_info": {"queue_remaining": 0}}
    stats = (await http.get("/system_stats")).json()
    assert {
        "os",
        "ram_total",
        "ram_free",
        "comfyui_version",
        "python_version",
        "pytorch_version",
        "embedded_python",
        "argv",
    } <= set(stats["system"])
    assert {"name", "type", "index", "vram_total", "vram_free", "torch_vram_total", "torch_vram_free"} == set(
        stats["devices"][0]
    )


async def test_accepted_prompt_reply_history_entry_and_view(fake, http):
    reply = (await http.post("/api/prompt", json={"prompt": txt2img_prompt(), "client_id": "c1"})).json()
    assert set(reply) == {"prompt_id", "number", "node_errors"} and reply["node_errors"] == {}
    await fake.wait_state(reply["prompt_id"], "done")

    history = (await http.get(f"/api/history/{reply['prompt_id']}")).json()
    entry = history[reply["prompt_id"]]
    assert set(entry) == {"prompt", "outputs", "status", "meta"}
    assert entry["prompt"][1] == reply["prompt_id"] and entry["prompt"][3]["client_id"] == "c1"
    assert entry["status"]["status_str"] == "success" and entry["status"]["completed"] is True
    assert [name for name, _ in entry["status"]["messages"]] == [
        "execution_start",
        "execution_cached",
        "execution_success",
    ]
    image = entry["outputs"]["9"]["images"][0]
    view = await http.get("/api/view", params=image)
    assert view.status_code == 200 and view.content.startswith(b"\x89PNG")
    assert (await http.get("/api/history/unknown")).json() == {}
    assert (await http.get("/view", params={"filename": "../etc/passwd"})).status_code == 400
    assert (await http.get("/view", params={"filename": "nope.png"})).status_code == 404


async def test_interrupt_and_queue_post_answer_a_bare_200(http):
    for path, body in (
        ("/interrupt", {"prompt_id": "x"}),
        ("/queue", {"delete": ["x"]}),
        ("/queue", {"clear": True}),
    ):
        response = await http.post(path, json=body)
        assert response.status_code == 200 and response.content == b""


def img2img(image: str) -> dict:
    prompt = txt2img_prompt()
    prompt["10"] = {"class_type": "LoadImage", "inputs": {"image": image}, "_meta": {"title": "Init image"}}
    prompt["11"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["10", 0], "vae": ["4", 2]}}
    prompt["3"]["inputs"]["latent_image"] = ["11", 0]
    return prompt


async def upload(http, data: bytes, name: str, **form: str):
    return await http.post("/api/upload/image", files={"image": (name, data, "image/png")}, data=form)


async def test_a_missing_load_image_file_is_custom_validation_failed_as_comfyui_says(http):
    response = await http.post("/api/prompt", json={"prompt": img2img("nowhere.png")})

    # LoadImage.VALIDATE_INPUTS(image) answers "Invalid image file: NAME"; execution.validate_inputs
    # wraps it as "<input> - <answer>" with only the input name in extra_info.
    assert response.status_code == 400
    assert response.json() == {
        "error": {
            "type": "prompt_outputs_failed_validation",
            "message": "Prompt outputs failed validation",
            "details": "",
            "extra_info": {},
        },
        "node_errors": {
            "10": {
                "errors": [
                    {
                        "type": "custom_validation_failed",
                        "message": "Custom validation failed for node",
                        "details": "image - Invalid image file: nowhere.png",
                        "extra_info": {"input_name": "image"},
                    }
                ],
                "dependent_outputs": ["9"],
                "class_type": "LoadImage",
            }
        },
    }


async def test_an_uploaded_image_is_accepted_by_file_although_the_listed_choices_are_stale(fake, http):
    listed = (await http.get("/api/object_info/LoadImage")).json()["LoadImage"]["input"]["required"]["image"][
        0
    ]
    assert listed == ["example.png"]

    top = (await upload(http, b"top", "scene.png")).json()
    nested = (await upload(http, b"nested", "pose.png", subfolder="luna")).json()
    assert top == {"name": "scene.png", "subfolder": "", "type": "input"}
    assert nested == {"name": "pose.png", "subfolder": "luna", "type": "input"}

    for image in ("scene.png", "luna/pose.png", "example.png"):  # not in `listed`, yet valid: the file exists
        response = await http.post("/api/prompt", json={"prompt": img2img(image)})
        assert response.status_code == 200, response.json()
    output = (await upload(http, b"out", "prev.png", type="output")).json()
    assert (
        await http.post("/api/prompt", json={"prompt": img2img(f"{output['name']} [output]")})
    ).status_code == 200
    assert (
        await http.post("/api/prompt", json={"prompt": img2img("prev.png")})
    ).status_code == 400  # not in input/

    fresh = (await http.get("/object_info")).json()["LoadImage"]["input"]["required"]["image"][0]
    assert fresh == ["example.png", "scene.png"] == fake.input_files()  # top-level images only, as LoadImage
    assert fake.object_info["LoadImage"]["input"]["required"]["image"][0] == fresh


async def test_upload_renames_on_conflict_and_keeps_the_real_reply_shape(fake, http):
    assert (await upload(http, b"one", "a.b.png")).json()["name"] == "a.b.png"
    assert (await upload(http, b"one", "a.b.png")).json()["name"] == "a.b.png"  # same bytes: reused
    assert (await upload(http, b"two", "a.b.png")).json()["name"] == "a.b (1).png"  # splitext, then " (n)"
    assert (await upload(http, b"three", "a.b.png")).json()["name"] == "a.b (2).png"
    assert (await upload(http, b"two", "a.b.png")).json()["name"] == "a.b (1).png"  # reuses the twin
    # Only the exact strings "true" / "1" overwrite.
    assert (await upload(http, b"four", "a.b.png", overwrite="True")).json()["name"] == "a.b (3).png"
    reply = (await upload(http, b"five", "a.b.png", overwrite="1", subfolder="x/../y", type="temp")).json()
    assert reply == {"name": "a.b.png", "subfolder": "x/../y", "type": "temp"}
    assert fake.files[("temp", "y", "a.b.png")] == b"five" and fake.files[("input", "", "a.b.png")] == b"one"

    assert (await upload(http, b"x", "evil.png", subfolder="../..")).status_code == 400
    assert (await upload(http, b"x", "n.png", type="models")).status_code == 500  # ComfyUI has no such folder


async def test_uploads_survive_a_crash_like_files_on_disk(fake, http):
    await upload(http, b"kept", "kept.png")
    await fake.restart()
    async with httpx.AsyncClient(base_url=fake.url) as again:
        assert (await again.post("/prompt", json={"prompt": img2img("kept.png")})).status_code == 200
