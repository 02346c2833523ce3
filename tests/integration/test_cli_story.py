"""``luna story`` end to end: the real LlmClient against the fake OpenAI server, the real
RenderService against the fake ComfyUI, the real SQLite store.

The fakes run on the test's event loop; the CLI runs its own ``asyncio.run`` in a worker thread,
exactly as it does from a shell (see tests/integration/test_cli_render.py).
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import sqlite3
import textwrap
from pathlib import Path

import pytest

from app import cli
from app.narrates.store import SCHEMA_VERSION, ImageStore, SessionStore
from app.paths import user_dirs
from tests.helpers.fake_comfyui import FakeComfyUI
from tests.helpers.fake_openai import Cut, Endless, Error, FakeOpenAI, Reply
from tests.helpers.story_llm import PROSE, StoryLlm

CAST = textwrap.dedent(
    """
    [session]
    title = "The Dark Lamp"
    premise = "A storm cuts the island off."
    template = "sdxl_txt2img"
    seed_policy = "character"
    prefix = "masterpiece"
    negative = "lowres"
    [session.render]
    checkpoint = "sdxl_base.safetensors"
    steps = 4
    width = 64
    height = 64

    [[characters]]
    name = "Mira"
    description = "ZEALOUS, secretive, afraid of the dark"
    visual = "young woman, short silver hair, green eyes"
    loras = [{ name = "detail.safetensors", strength = 0.6 }]
    seed = 4242

    [[characters]]
    name = "Tobias"
    description = "the keeper, gruff"
    visual = "old man, grey beard"

    [[world]]
    title = "The lighthouse"
    keys = ["lighthouse"]
    content = "A stone tower whose lamp has been dark for ten years."
    """
)


async def luna(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = await asyncio.to_thread(cli.main, list(argv), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def cast_file(tmp_path) -> Path:
    path = tmp_path / "cast.toml"
    path.write_text(CAST, encoding="utf-8")
    return path


async def new_session(cast_file: Path) -> int:
    code, out, err = await luna("story", "new", "--cast", str(cast_file), "--json")
    assert code == 0, err
    return json.loads(out)["session"]


def open_store() -> SessionStore:
    return SessionStore.open()


async def test_a_full_turn_streams_prose_commits_every_stage_and_renders_the_scene(cast_file):
    session = await new_session(cast_file)
    story = StoryLlm()
    async with FakeOpenAI() as llm, FakeComfyUI() as comfy:
        llm.responder = story
        code, out, err = await luna(
            "story",
            "turn",
            str(session),
            "climb the stairs with Mira",
            "--llm",
            llm.url,
            "--url",
            comfy.url,
            "--json",
        )
        assert code == 0, err
        [prompt] = comfy.prompts
    result = json.loads(out)
    assert result["ok"] and result["prose"] == PROSE
    assert list(result["stages"]) == ["preprocessor", "strategist", "writer", "dreamer"]
    assert result["stages"]["preprocessor"]["output"]["entities"][0] == {
        "name": "Mira",
        "type": "character",
        "known": True,
        "canonical": "Mira",
    }
    assert result["llm"]["base_url"] == llm.url and "[writer] done" in err
    render = result["render"]
    assert render["status"] == "done" and render["seed"] == 4242 and render["instance"] == comfy.url
    [file] = render["files"]
    path = Path(file["path"])
    assert (
        path.is_relative_to(user_dirs().data)
        and path.stem == file["sha256"]
        and path.read_bytes()[:4] == b"\x89PNG"
    )
    positive = prompt.prompt["6"]["inputs"]["text"]
    # visual descriptors of the characters the prose shows; never their personality; Tobias is not in the prose
    assert positive.startswith(
        "masterpiece, young woman, short silver hair, green eyes, spiral stone staircase"
    )
    assert "ZEALOUS" not in positive and "grey beard" not in positive
    assert prompt.prompt["3"]["inputs"]["seed"] == 4242 and prompt.prompt["7"]["inputs"]["text"] == "lowres"
    assert "ZEALOUS" not in json.dumps(story.seen["dreamer"]) and "Planned beat" not in json.dumps(
        story.seen["dreamer"]
    )
    assert any(
        n["class_type"] == "LoraLoader" and n["inputs"]["lora_name"] == "detail.safetensors"
        for n in prompt.prompt.values()
    )
    # the structured stages are bounded: every schema caps its lists and strings, max_tokens is capped
    for stage in ("preprocessor", "strategist", "dreamer"):
        body = story.seen[stage][0]
        assert body["max_tokens"] <= 400 and "maxLength" in json.dumps(body["response_format"])
    with open_store() as store:
        [turn] = store.timeline(session)
        assert turn.status == "done" and turn.prose == PROSE and store.integrity_check() == "ok"
        [scene] = store.scenes_for_turn(turn.id)
        assert scene.template_hash and scene.plan.seed == 4242


async def test_without_json_the_prose_streams_to_stdout_and_progress_to_stderr(cast_file):
    session = await new_session(cast_file)
    async with FakeOpenAI() as llm:
        llm.responder = StoryLlm()
        code, out, err = await luna(
            "story", "turn", str(session), "look around", "--llm", llm.url, "--no-render"
        )
    assert code == 0, err
    assert out.strip() == PROSE and "[preprocessor] …" in err and "Also found" not in out


async def test_rerender_with_changes_adds_a_render_and_keeps_the_old_one(cast_file):
    session = await new_session(cast_file)
    async with FakeOpenAI() as llm, FakeComfyUI() as comfy:
        llm.responder = StoryLlm()
        code, out, err = await luna(
            "story", "turn", str(session), "go", "--llm", llm.url, "--url", comfy.url, "--json"
        )
        assert code == 0, err
        scene = json.loads(out)["scene"]
        code, out, err = await luna(
            "story",
            "rerender",
            str(scene),
            "--set",
            "seed=7",
            "--set",
            "size=96x64",
            "--set",
            "negative=blurry",
            "--set",
            "steps=5",
            "--url",
            comfy.url,
            "--json",
        )
        assert code == 0, err
        first, second = comfy.prompts
    again = json.loads(out)["render"]
    assert again["seed"] == 7 and again["changes"] == {
        "seed": "7",
        "size": "96x64",
        "negative": "blurry",
        "steps": "5",
    }
    assert second.prompt["5"]["inputs"]["width"] == 96 and second.prompt["7"]["inputs"]["text"] == "blurry"
    assert second.prompt["3"]["inputs"]["steps"] == 5 and first.prompt["3"]["inputs"]["seed"] == 4242
    code, out, _ = await luna("story", "show", str(session), "--json")
    renders = json.loads(out)["turns"][0]["scenes"][0]["renders"]
    assert [r["seed"] for r in renders] == [4242, 7] and [r["chosen"] for r in renders] == [True, False]
    code, out, err = await luna(
        "story", "rerender", str(scene), "--set", "nonsense=1", "--url", comfy.url, "--json"
    )
    assert code == 2 and "has no parameter 'nonsense'" in json.loads(out)["error"]["message"]


@pytest.mark.expect_log_warnings
@pytest.mark.parametrize(
    ("stage", "answer", "message"),
    [
        ("preprocessor", Reply("I think the player wants to climb."), "preprocessor:"),
        ("strategist", Reply('{"goal": 3}'), "strategist:"),
        ("dreamer", Reply(""), "dreamer:"),
        ("writer", Reply(""), "writer: "),
        ("writer", Endless(), "writer:"),
        ("writer", Cut(PROSE, after_chunks=3), "writer:"),
        ("strategist", Error(429, retry_after=0), "strategist:"),
    ],
    ids=["not-json", "wrong-shape", "empty-json", "empty-prose", "endless", "cut-stream", "429-forever"],
)
async def test_llm_garbage_fails_the_turn_naming_the_stage_and_keeps_what_finished(
    cast_file, stage, answer, message
):
    session = await new_session(cast_file)
    async with FakeOpenAI() as llm, FakeComfyUI() as comfy:
        llm.responder = StoryLlm(**{stage: answer})
        code, out, err = await luna(
            "story", "turn", str(session), "go", "--llm", llm.url, "--url", comfy.url, "--json"
        )
        assert not comfy.prompts
    assert code == 5, err
    error = json.loads(out)["error"]
    assert error["stage"] == stage and error["message"].startswith(message) and error["kind"] == "llm"
    order = ["preprocessor", "strategist", "writer", "dreamer"]
    with open_store() as store:
        [turn] = store.turns(session)
        assert turn.status == "failed" and turn.error_stage == stage
        assert list(store.stages(turn.id)) == order[: order.index(stage)]
        assert store.timeline(session) == [] and store.integrity_check() == "ok"
    # the next turn is fine: the failed one was a variant that never became part of the story
    async with FakeOpenAI() as llm:
        llm.responder = StoryLlm()
        code, out, err = await luna(
            "story", "regenerate", str(session), "--llm", llm.url, "--no-render", "--json"
        )
    assert code == 0, err and json.loads(out)["position"] == 1


async def test_a_render_failure_fails_the_render_not_the_turn(cast_file):
    session = await new_session(cast_file)
    async with FakeOpenAI() as llm, FakeComfyUI() as comfy:
        llm.responder = StoryLlm()
        comfy.fail_on(class_type="KSampler")
        code, out, err = await luna(
            "story", "turn", str(session), "go", "--llm", llm.url, "--url", comfy.url, "--json"
        )
        assert code == 1, err
        result = json.loads(out)
        assert result["ok"] and result["prose"] == PROSE
        assert result["render"]["status"] == "failed" and result["render"]["error"]["kind"] == "failed"
        code, out, err = await luna("story", "rerender", str(result["scene"]), "--url", comfy.url, "--json")
        assert code == 0, err
    with open_store() as store:
        assert [t.status for t in store.timeline(session)] == ["done"]
        assert [r.status for r in store.renders(result["scene"])] == ["failed", "done"]


async def test_no_reachable_comfyui_is_a_failed_render_with_the_unavailable_exit_code(cast_file):
    session = await new_session(cast_file)
    async with FakeOpenAI() as llm, FakeComfyUI() as comfy:
        llm.responder = StoryLlm()
        url = comfy.url
    async with FakeOpenAI() as llm:
        llm.responder = StoryLlm()
        code, out, err = await luna(
            "story",
            "turn",
            str(session),
            "go",
            "--llm",
            llm.url,
            "--url",
            url,
            "--connect-timeout",
            "0.5",
            "--json",
        )
    assert code == 4, err
    assert json.loads(out)["render"]["error"]["kind"] == "unavailable"


@pytest.mark.expect_log_warnings
async def test_a_full_disk_on_image_write_fails_the_render_and_loses_nothing(cast_file, monkeypatch):
    session = await new_session(cast_file)

    def full_disk(self, path, data):
        path.write_bytes(data[: len(data) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ImageStore, "_write", full_disk)
    async with FakeOpenAI() as llm, FakeComfyUI() as comfy:
        llm.responder = StoryLlm()
        code, out, err = await luna(
            "story", "turn", str(session), "go", "--llm", llm.url, "--url", comfy.url, "--json"
        )
    assert code == 1, err
    render = json.loads(out)["render"]
    assert render["error"]["kind"] == "storage" and "No space left on device" in render["error"]["message"]
    with open_store() as store:
        assert store.timeline(session)[0].prose == PROSE and store.integrity_check() == "ok"
        assert not [p for p in store.images.root.rglob("*") if p.is_file()]
        assert not [p for p in (store.path.parent / "staging").rglob("*") if p.is_file()]


async def test_undo_regenerate_edit_and_export(cast_file, tmp_path):
    session = await new_session(cast_file)
    async with FakeOpenAI() as llm, FakeComfyUI() as comfy:
        story = StoryLlm()
        llm.responder = story
        for text in ("one", "two"):
            story.answers["dreamer"]["scene"] = f"stone stairs, turn {text}"
            code, _, err = await luna(
                "story", "turn", str(session), text, "--llm", llm.url, "--url", comfy.url
            )
            assert code == 0, err
        story.prose = "Mira laughs; the second try is brighter."
        code, out, err = await luna(
            "story", "regenerate", str(session), "--llm", llm.url, "--url", comfy.url, "--json"
        )
        assert code == 0, err
        regenerated = json.loads(out)
    assert regenerated["position"] == 2 and regenerated["variant"] == 2
    code, out, _ = await luna("story", "show", str(session), "--json")
    view = json.loads(out)
    assert [t["input"] for t in view["turns"]] == ["one", "two"] and view["turns"][1]["variants"] == 2
    first_turn = view["turns"][0]["turn"]
    code, out, _ = await luna(
        "story", "edit", str(first_turn), "--prose", "You <b>wait</b> & listen.", "--json"
    )
    assert code == 0 and json.loads(out)["prose"] == "You <b>wait</b> & listen."
    html_path = tmp_path / "story.html"
    code, out, err = await luna("story", "export", str(session), "--format", "html", "--out", str(html_path))
    assert code == 0, err
    page = html_path.read_text(encoding="utf-8")
    assert "You &lt;b&gt;wait&lt;/b&gt; &amp; listen." in page and page.count("data:image/png;base64,") == 2
    assert "second try is brighter" in page
    md_path = tmp_path / "story.md"
    code, _, err = await luna("story", "export", str(session), "--format", "md", "--out", str(md_path))
    assert code == 0, err
    markdown = md_path.read_text(encoding="utf-8")
    assert "## Turn 2" in markdown and markdown.count("](story_images/") == 2
    assert all((tmp_path / "story_images" / name).is_file() for name in os.listdir(tmp_path / "story_images"))
    code, out, _ = await luna("story", "undo", str(session), "--json")
    assert code == 0 and json.loads(out)["position"] == 2
    code, out, _ = await luna("story", "list", "--json")
    assert json.loads(out)["sessions"][0]["turns"] == 1


@pytest.mark.parametrize(
    "argv",
    [
        ("story", "show", "99", "--json"),
        ("story", "turn", "99", "hello", "--llm", "http://127.0.0.1:9/v1", "--json"),
        ("story", "rerender", "99", "--json"),
        ("story", "edit", "99", "--prose", "x", "--json"),
        ("story", "undo", "99", "--json"),
    ],
)
async def test_an_unknown_id_is_a_clear_usage_error(argv):
    code, out, err = await luna(*argv)
    assert code == 2 and json.loads(out)["error"]["kind"] == "not_found" and "99" in err


async def test_a_cast_file_with_unknown_keys_is_refused_and_no_session_is_made(tmp_path):
    path = tmp_path / "cast.toml"
    path.write_text('[[characters]]\nname = "Mira"\nhair = "silver"\n', encoding="utf-8")
    code, out, err = await luna("story", "new", "--cast", str(path), "--json")
    assert code == 2 and "characters[0]: unknown key 'hair'" in json.loads(out)["error"]["message"]
    code, out, _ = await luna("story", "list", "--json")
    assert json.loads(out)["sessions"] == []


async def test_a_database_from_a_newer_schema_is_refused(cast_file):
    await new_session(cast_file)
    with open_store() as store:
        path = store.path
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 5}")
    db.close()
    code, out, err = await luna("story", "list", "--json")
    assert code == 2 and "update Luna" in json.loads(out)["error"]["message"]
