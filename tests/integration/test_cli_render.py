"""The ``luna`` CLI against the fake ComfyUI: render, errors named by title and parameter,
templates detect/validate, instances, style routing.

The fake runs on the test's event loop; the CLI runs its own ``asyncio.run`` in a worker thread,
exactly as it does from a shell.
"""

from __future__ import annotations

import asyncio
import io
import json
import socket

import pytest

from app import cli
from app.paths import user_dirs
from tests.helpers.fake_comfyui import FakeComfyUI, txt2img_prompt
from tests.helpers.ui_workflows import default_ui_workflow

SMALL = [
    "--set",
    "checkpoint=sdxl_base.safetensors",
    "--set",
    "width=64",
    "--set",
    "height=64",
    "--set",
    "steps=4",
]


async def luna(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = await asyncio.to_thread(cli.main, list(argv), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def dead_url() -> str:
    with socket.socket() as sock:  # a port nobody listens on (bound, then released)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def write_instances(text: str) -> None:
    config = user_dirs().config
    config.mkdir(parents=True, exist_ok=True)
    (config / "instances.toml").write_text(text, encoding="utf-8")


async def test_render_a_shipped_template_writes_images_and_one_json_result(tmp_path):
    async with FakeComfyUI() as fake:
        code, out, err = await luna(
            "render",
            "sdxl_txt2img",
            "--url",
            fake.url,
            *SMALL,
            "--set",
            "seed=42",
            "--set",
            "positive=a red fox in snow",
            "--out",
            str(tmp_path),
            "--json",
        )
        assert code == 0, err
        result = json.loads(out)
        [received] = fake.prompts
    assert result["ok"] and result["prompt_id"] == received.prompt_id and result["instance"] == fake.url
    assert result["values"]["seed"] == 42 and result["template"] == "sdxl_txt2img"
    assert received.prompt["3"]["inputs"]["seed"] == 42
    assert received.prompt["6"]["inputs"]["text"] == "a red fox in snow"
    assert set(result["timings"]) == {"queued", "running", "fetching", "total"}
    [file] = result["files"]
    data = (tmp_path / file["path"].rsplit("/", 1)[1]).read_bytes()
    assert data.startswith(b"\x89PNG") and file["bytes"] == len(data) and file["mime_type"] == "image/png"
    assert "queued on" in err and "running" in err  # progress on stderr, stdout stays one JSON


async def test_render_without_json_prints_the_paths_and_reports_the_random_seed(tmp_path):
    async with FakeComfyUI() as fake:
        code, out, err = await luna(
            "render", "sdxl_txt2img", "--url", fake.url, *SMALL, "--out", str(tmp_path)
        )
        seed = fake.prompts[0].prompt["3"]["inputs"]["seed"]
    assert code == 0, err
    assert out.strip().endswith(".png") and out.strip().startswith(str(tmp_path))
    assert f"seed {seed}" in err


async def test_render_applies_loras_from_the_command_line(tmp_path):
    async with FakeComfyUI() as fake:
        code, out, err = await luna(
            "render",
            "sdxl_txt2img",
            "--url",
            fake.url,
            *SMALL,
            "--out",
            str(tmp_path),
            "--set",
            "loras=detail.safetensors:0.7:0.4,style_anime.safetensors",
            "--json",
        )
        assert code == 0, err
        prompt = fake.prompts[0].prompt
    loras = {k: v["inputs"] for k, v in prompt.items() if v["class_type"] == "LoraLoader"}
    assert [(v["lora_name"], v["strength_model"], v["strength_clip"]) for v in loras.values()] == [
        ("detail.safetensors", 0.7, 0.4),
        ("style_anime.safetensors", 1.0, 1.0),
    ]
    assert json.loads(out)["values"]["loras"][0] == {
        "name": "detail.safetensors",
        "strength_model": 0.7,
        "strength_clip": 0.4,
    }


async def test_a_model_missing_on_the_instance_is_caught_before_submitting(tmp_path):
    async with FakeComfyUI() as fake:
        code, out, err = await luna(
            "render", "sdxl_txt2img", "--url", fake.url, "--out", str(tmp_path), "--json"
        )
        assert fake.prompts == []
    assert code == cli.EXIT_INVALID
    error = json.loads(out)["error"]
    [issue] = error["issues"]
    assert (issue["node_title"], issue["input_name"], issue["params"]) == (
        "Load Checkpoint",
        "ckpt_name",
        ["checkpoint"],
    )
    assert "'Load Checkpoint' (#4 CheckpointLoaderSimple) input 'ckpt_name' [parameter checkpoint]" in err


async def test_a_comfyui_400_names_the_node_title_and_the_parameter(tmp_path):
    async with FakeComfyUI() as fake:
        code, out, err = await luna(
            "render",
            "sdxl_txt2img",
            "--url",
            fake.url,
            *SMALL,
            "--set",
            "steps=0",
            "--no-validate",
            "--out",
            str(tmp_path),
        )
        assert len(fake.rejected) == 1 and fake.prompts == []
    assert code == cli.EXIT_INVALID
    assert "rejected the prompt (prompt_outputs_failed_validation)" in err
    assert "'KSampler' (#3 KSampler) input 'steps' [parameter steps]" in err


async def test_a_node_failing_while_running_exits_1_naming_the_node(tmp_path):
    async with FakeComfyUI() as fake:
        fake.fail_on(
            class_type="KSampler", exception_type="torch.OutOfMemoryError", message="CUDA out of memory"
        )
        code, out, err = await luna(
            "render", "sdxl_txt2img", "--url", fake.url, *SMALL, "--out", str(tmp_path / "out"), "--json"
        )
    assert code == cli.EXIT_FAILED
    body = json.loads(out)
    assert body["error"]["kind"] == "execution_error" and body["prompt_id"]
    assert "'KSampler' (#3 KSampler) failed" in body["error"]["message"]
    assert "CUDA out of memory" in body["error"]["message"]
    assert not (tmp_path / "out").exists()


async def test_a_bare_api_json_renders_with_the_detected_map(tmp_path):
    workflow = tmp_path / "pasted_api.json"
    workflow.write_text(json.dumps(txt2img_prompt()), encoding="utf-8")
    async with FakeComfyUI() as fake:
        code, out, err = await luna(
            "render",
            str(workflow),
            "--url",
            fake.url,
            "--set",
            "positive=a tower",
            "--set",
            "seed=9",
            "--out",
            str(tmp_path / "out"),
            "--json",
        )
        assert code == 0, err
        prompt = fake.prompts[0].prompt
    assert prompt["6"]["inputs"]["text"] == "a tower" and prompt["3"]["inputs"]["seed"] == 9
    assert json.loads(out)["template"] == "pasted_api"


async def test_img2img_uploads_a_local_init_image_first(tmp_path):
    image = tmp_path / "scene.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    async with FakeComfyUI() as fake:
        # No help from the test: the upload lands in the fake's input folder and LoadImage accepts
        # it by file (VALIDATE_INPUTS), although the /object_info list the CLI read never had it.
        assert "scene.png" not in fake.input_files()
        code, out, err = await luna(
            "render",
            "sdxl_img2img",
            "--url",
            fake.url,
            "--set",
            "checkpoint=sdxl_base.safetensors",
            "--set",
            f"init_image={image}",
            "--set",
            "denoise=0.4",
            "--out",
            str(tmp_path / "out"),
            "--json",
        )
        assert code == 0, err
        prompt = fake.prompts[0].prompt
        assert fake.files[("input", "", "scene.png")] == image.read_bytes()
    assert prompt["10"]["inputs"]["image"] == "scene.png" and prompt["3"]["inputs"]["denoise"] == 0.4
    assert "uploaded" in err


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--set", "colour=red"], "has no parameter 'colour'"),
        (["--set", "steps=many"], "parameter 'steps' (int): cannot read 'many'"),
        (["--set", "steps"], "--set expects name=value"),
    ],
)
async def test_bad_parameters_exit_2_before_contacting_anything(argv, needle):
    code, out, err = await luna("render", "sdxl_txt2img", "--url", dead_url(), *argv)
    assert code == cli.EXIT_USAGE and needle in err


async def test_a_ui_workflow_that_cannot_be_converted_is_refused_with_the_export_hint(tmp_path):
    path = tmp_path / "ui.json"
    path.write_text(
        json.dumps(
            {
                "nodes": [{"id": 1, "type": "5f3e-subgraph", "mode": 0, "inputs": [], "outputs": []}],
                "links": [],
                "definitions": {"subgraphs": [{"id": "5f3e-subgraph"}]},
                "version": 0.4,
            }
        ),
        encoding="utf-8",
    )
    async with FakeComfyUI() as fake:
        code, out, err = await luna("render", str(path), "--url", fake.url, "--json")
        assert fake.prompts == []
    assert code == cli.EXIT_USAGE
    assert "Export (API)" in json.loads(out)["error"]["message"]


async def test_an_unreachable_url_exits_4():
    code, out, err = await luna("render", "sdxl_txt2img", "--url", dead_url(), "--connect-timeout", "2")
    assert code == cli.EXIT_UNAVAILABLE and "luna: error:" in err


async def test_style_routing_skips_a_dead_instance():
    async with FakeComfyUI() as fake:
        write_instances(
            f'[[instances]]\nname = "dead"\nurl = "{dead_url()}"\nstyles = ["anime"]\n'
            f'[[instances]]\nname = "alive"\nurl = "{fake.url}"\nstyles = ["anime"]\n'
        )
        code, out, err = await luna(
            "render",
            "sdxl_txt2img",
            "--style",
            "anime",
            *SMALL,
            "--json",
            "--out",
            str(user_dirs().data / "x"),
        )
        assert code == 0, err
        assert json.loads(out)["instance"] == "alive" and len(fake.prompts) == 1


async def test_templates_validate_against_an_instance():
    async with FakeComfyUI() as fake:
        ok = await luna(
            "templates",
            "validate",
            "sdxl_txt2img",
            "--url",
            fake.url,
            "--set",
            "checkpoint=sdxl_base.safetensors",
        )
        bad = await luna("templates", "validate", "sdxl_txt2img_luna_daemon", "--url", fake.url, "--json")
    assert ok[0] == 0 and f"valid on {fake.url}" in ok[1]
    assert bad[0] == cli.EXIT_INVALID
    issues = json.loads(bad[1])["error"]["issues"]
    assert {i["node_id"] for i in issues if i["code"] == "missing_node_type"} == {"6", "7", "8"}


async def test_templates_detect_prints_a_toml_map_with_the_ambiguities(tmp_path):
    workflow = txt2img_prompt()
    workflow["10"] = {
        "class_type": "KSampler",
        "inputs": {**workflow["3"]["inputs"], "latent_image": ["3", 0]},
        "_meta": {"title": "Second pass"},
    }
    path = tmp_path / "two_pass.json"
    path.write_text(json.dumps(workflow), encoding="utf-8")
    code, out, err = await luna("templates", "detect", str(path))
    assert code == 0
    assert (
        out.startswith("# Injection map proposed") and "# AMBIGUOUS sampler" in out and "Second pass" in out
    )
    import tomllib

    from app.comfy.templates import parse_map

    assert parse_map(tomllib.loads(out)).params["seed"].bindings[0].node == "3"


async def test_instances_reports_health_queue_and_vram():
    async with FakeComfyUI(vram_total=24 * 2**30, vram_free=20 * 2**30) as fake:
        write_instances(
            f'[[instances]]\nname = "gpu0"\nurl = "{fake.url}"\nstyles = ["anime"]\n'
            f'[[instances]]\nname = "gpu1"\nurl = "{dead_url()}"\nstyles = ["realistic"]\n'
        )
        code, out, err = await luna("instances", "--json")
        text_code, text, _ = await luna("instances")
    assert code == 0 and text_code == 0
    gpu0, gpu1 = json.loads(out)["instances"]
    assert gpu0["healthy"] and gpu0["queue_remaining"] == 0 and gpu0["devices"][0]["vram_free"] == 20 * 2**30
    assert not gpu1["healthy"] and gpu1["error"]
    assert "20.0/24.0 GiB free" in text and "DOWN" in text


def test_help_lists_every_command_and_no_command_means_the_window():
    text = cli.build_parser().format_help()
    assert all(name in text for name in ("render", "templates", "instances", "gui"))
    # Plain `luna` (the double-click path) opens the operator window: tests/integration/test_gui_process.py.
    assert cli.build_parser().parse_args([]).command is None


async def test_a_ui_format_file_is_converted_with_the_instance_nodes_and_rendered(tmp_path):
    path = tmp_path / "saved_from_ui.json"
    ui = default_ui_workflow()
    path.write_text(json.dumps(ui), encoding="utf-8")
    async with FakeComfyUI() as fake:
        converted = await luna("templates", "convert", str(path), "--url", fake.url)
        code, out, err = await luna(
            "render",
            str(path),
            "--url",
            fake.url,
            "--set",
            "checkpoint=sdxl_base.safetensors",
            "--set",
            "width=64",
            "--set",
            "height=64",
            "--set",
            "positive=a harbour",
            "--out",
            str(tmp_path / "out"),
            "--json",
        )
        assert code == 0, err
        [received] = fake.prompts
    assert converted[0] == 0 and json.loads(converted[1])["3"]["class_type"] == "KSampler"
    assert received.prompt["6"]["inputs"]["text"] == "a harbour"
    assert received.extra_data["extra_pnginfo"]["workflow"] == ui
    assert "converted from the UI format" in err


async def test_a_ui_format_file_without_an_instance_is_refused_with_the_export_hint(tmp_path):
    path = tmp_path / "saved_from_ui.json"
    path.write_text(json.dumps(default_ui_workflow()), encoding="utf-8")
    code, out, err = await luna("templates", "detect", str(path))
    assert code == cli.EXIT_USAGE and "Export (API)" in err


async def test_cancelling_a_render_interrupts_its_job_on_the_server(tmp_path):
    args = cli.build_parser().parse_args(
        ["render", "sdxl_txt2img", *SMALL, "--out", str(tmp_path), "--quiet"]
    )
    console = cli.Console(io.StringIO(), io.StringIO(), quiet=False)
    async with FakeComfyUI() as fake:
        args.url = fake.url
        fake.pause()  # the job starts and stays running
        render = asyncio.create_task(cli._render(args, console))
        while not fake.prompts:  # wait for the submit to reach the fake, yielding only
            await asyncio.sleep(0)
        await fake.wait_state(fake.prompts[0].prompt_id, "running")
        render.cancel()
        with pytest.raises(asyncio.CancelledError):
            await render
        fake.resume()
        assert fake.interrupts == [{"prompt_id": fake.prompts[0].prompt_id}], console.err.getvalue()
    assert "cancelled job" in console.err.getvalue() and ": interrupted" in console.err.getvalue(), (
        console.err.getvalue()
    )


async def test_templates_show_lists_the_parameters_for_set():
    code, out, err = await luna("templates", "show", "sdxl_img2img", "--json")
    assert code == 0
    params = {p["name"]: p for p in json.loads(out)["params"]}
    assert params["init_image"]["kind"] == "image" and params["init_image"]["value"] == "example.png"
    assert params["seed"]["value"] == "random" and params["loras"]["value"] == []
    assert params["denoise"]["bound_to"] == ["'KSampler' (#3 KSampler).denoise"]
    code, text, _ = await luna("templates", "show", "sdxl_img2img")
    assert code == 0 and "init_image" in text and "0.55" in text
