"""The story service with the real LlmClient (fake OpenAI server) and the real RenderService (fake
ComfyUI): stage events, the daemon-down fallback, user prompt overrides, the rolling summary."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket

import pytest

from app.comfy.instances import InstanceConfig, InstancesConfig
from app.comfy.render import RenderService
from app.comfy.router import StyleRouter
from app.comfy.templates import user_workflows_dir
from app.narrates.errors import StageFailed
from app.narrates.events import (
    Notice,
    RenderFinished,
    RenderProgress,
    RenderStarted,
    StageFinished,
    StageStarted,
    StageToken,
)
from app.narrates.health import DaemonHealthGate
from app.narrates.llm.client import LlmClient
from app.narrates.llm.types import LlmBackend, LlmTimeouts, RetryPolicy
from app.narrates.model import Character, SessionSettings
from app.narrates.pipeline import TurnPipeline
from app.narrates.prompts import user_prompts_dir
from app.narrates.rendering import SceneRenderer
from app.narrates.service import StoryService
from app.narrates.store import SessionStore
from app.paths import resource_path, workflows_dir
from tests.helpers.fake_comfyui import FakeComfyUI
from tests.helpers.fake_openai import Error, FakeOpenAI, Hang, Slow
from tests.helpers.story_llm import PROSE, StoryLlm

SMALL = {"checkpoint": "sdxl_base.safetensors", "steps": 4, "width": 64, "height": 64}


def dead_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Harness:
    def __init__(self, store, llm_url, comfy_url, *, daemon_up: bool = False):
        self.store = store
        self.client = LlmClient(LlmBackend("fake", llm_url))
        config = InstancesConfig(
            (InstanceConfig("fake", comfy_url, styles=("anime",)),), default_style="anime"
        )
        self.router = StyleRouter(config)

        async def up() -> bool:
            return True

        gate = up if daemon_up else DaemonHealthGate(port=dead_port(), timeout=1.0)
        self.renderer = SceneRenderer(store, RenderService(self.router), daemon_health=gate)
        self.service = StoryService(store, pipeline=TurnPipeline(store, self.client, renderer=self.renderer))

    async def __aenter__(self):
        await self.router.start()
        return self

    async def __aexit__(self, *exc):
        await self.router.close()
        await self.client.aclose()


def session(store, **settings) -> int:
    values = {"render_values": SMALL, **settings}
    return store.create_session(
        "S", SessionSettings(**values), [Character("Mira", "brave", "silver hair")]
    ).id


async def test_a_turn_reports_every_stage_and_the_render_as_typed_events():
    events = []
    with SessionStore.open() as store:
        sid = session(store)
        async with FakeOpenAI() as llm, FakeComfyUI() as comfy, Harness(store, llm.url, comfy.url) as h:
            llm.responder = StoryLlm()
            outcome = await h.service.turn(sid, "climb", on_event=events.append)
    stages = [(type(e).__name__, e.stage) for e in events if isinstance(e, (StageStarted, StageFinished))]
    assert stages == [
        (kind, stage)
        for stage in ("preprocessor", "strategist", "writer", "dreamer")
        for kind in ("StageStarted", "StageFinished")
    ]
    tokens = [e.text for e in events if isinstance(e, StageToken)]
    assert len(tokens) > 3 and "".join(tokens).strip() == PROSE == outcome.prose
    assert all(e.elapsed_s >= 0 for e in events if isinstance(e, StageFinished))
    kinds = [type(e) for e in events if isinstance(e, (RenderStarted, RenderProgress, RenderFinished))]
    assert kinds[0] is RenderStarted and kinds[-1] is RenderFinished and RenderProgress in kinds


async def test_a_daemon_template_falls_back_to_its_stock_variant_when_the_daemon_is_down():
    with SessionStore.open() as store:
        sid = session(store, template="sdxl_txt2img_luna_daemon")
        async with FakeOpenAI() as llm, FakeComfyUI() as comfy, Harness(store, llm.url, comfy.url) as h:
            llm.responder = StoryLlm()
            outcome = await h.service.turn(sid, "climb")
            [prompt] = comfy.prompts
    assert outcome.render.status == "done" and outcome.render.template == "sdxl_txt2img"
    assert {n["class_type"] for n in prompt.prompt.values()} >= {"CLIPTextEncode", "VAEDecode"}
    assert not any(n["class_type"].startswith("LunaShared") for n in prompt.prompt.values())
    assert any("stock variant 'sdxl_txt2img'" in w for w in outcome.render.warnings)


async def test_a_daemon_template_without_a_stock_variant_fails_its_render_at_once():
    target = user_workflows_dir()
    target.mkdir(parents=True)
    shutil.copy(workflows_dir() / "sdxl_txt2img_luna_daemon.json", target / "daemon_only.json")
    text = (workflows_dir() / "sdxl_txt2img_luna_daemon.luna.toml").read_text(encoding="utf-8")
    (target / "daemon_only.luna.toml").write_text(
        "\n".join(line for line in text.splitlines() if not line.startswith("stock_variant")),
        encoding="utf-8",
    )
    with SessionStore.open() as store:
        sid = session(store, template="daemon_only")
        async with FakeOpenAI() as llm, FakeComfyUI() as comfy, Harness(store, llm.url, comfy.url) as h:
            llm.responder = StoryLlm()
            outcome = await h.service.turn(sid, "climb")
            assert comfy.prompts == []
    assert outcome.turn.status == "done" and outcome.render.status == "failed"
    assert outcome.render.error_kind == "unavailable" and "needs the Luna daemon" in outcome.render.error


async def test_a_user_prompt_file_overrides_the_shipped_one():
    directory = user_prompts_dir()
    directory.mkdir(parents=True)
    shipped = resource_path("prompts", "writer.txt").read_text(encoding="utf-8")
    (directory / "writer.txt").write_text(
        shipped.replace("[system]\n", "[system]\nWrite like a sea shanty.\n")
    )
    story = StoryLlm()
    with SessionStore.open() as store:
        sid = session(store)
        async with FakeOpenAI() as llm, FakeComfyUI() as comfy, Harness(store, llm.url, comfy.url) as h:
            llm.responder = story
            await h.service.turn(sid, "climb", render=False)
    [body] = story.seen["writer"]
    assert body["messages"][0]["content"].startswith("Write like a sea shanty.")
    assert "sea shanty" not in json.dumps(story.seen["preprocessor"])


async def test_a_server_that_refuses_json_schema_still_plays_a_turn():
    story = StoryLlm()
    with SessionStore.open() as store:
        sid = session(store)
        async with (
            FakeOpenAI(refuse_json_schema=True) as llm,
            FakeComfyUI() as comfy,
            Harness(store, llm.url, comfy.url) as h,
        ):
            llm.responder = story
            outcome = await h.service.turn(sid, "climb", render=False)
    assert outcome.beat.location == "the lighthouse stairs"
    assert story.seen["strategist"][-1]["response_format"]["type"] == "json_object"


@pytest.mark.expect_log_warnings
async def test_older_turns_are_folded_into_the_summary_and_a_failing_summary_does_not_fail_the_turn():
    story = StoryLlm()
    events = []
    with SessionStore.open() as store:
        sid = session(store, context_tokens=560)
        async with FakeOpenAI() as llm, FakeComfyUI() as comfy, Harness(store, llm.url, comfy.url) as h:
            llm.responder = story
            for text in ("one", "two", "three"):
                await h.service.turn(sid, text, render=False)
            summary = store.session(sid)
            assert summary.summary and summary.summary_through >= 1
            story.overrides["summary"] = Error(400)
            for text in ("four", "five"):
                await h.service.turn(sid, text, render=False, on_event=events.append)
        assert [t.player_input for t in store.timeline(sid)] == ["one", "two", "three", "four", "five"]
    assert any(isinstance(e, Notice) and "summary was not updated" in e.message for e in events)


async def test_cancelling_a_turn_closes_the_writers_stream_and_keeps_the_finished_stages():
    story = StoryLlm(writer=Slow(PROSE, delay_s=0.05))
    first_token = asyncio.Event()

    def on_event(event):
        if isinstance(event, StageToken):
            first_token.set()

    with SessionStore.open() as store:
        sid = session(store)
        async with FakeOpenAI() as llm, FakeComfyUI() as comfy, Harness(store, llm.url, comfy.url) as h:
            llm.responder = story
            task = asyncio.create_task(h.service.turn(sid, "climb", on_event=on_event))
            await first_token.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await asyncio.wait_for(llm.disconnected.wait(), 10)  # the HTTP stream was closed
            [turn] = store.turns(sid)
            assert turn.status == "failed" and turn.error_stage == "writer" and "cancelled" in turn.error
            assert list(store.stages(turn.id)) == ["preprocessor", "strategist"]
            assert comfy.prompts == []


@pytest.mark.expect_log_warnings
async def test_a_hanging_llm_server_fails_the_stage_within_its_timeout():
    with SessionStore.open() as store:
        sid = session(store)
        async with FakeOpenAI() as llm, FakeComfyUI() as comfy, Harness(store, llm.url, comfy.url) as h:
            llm.responder = StoryLlm(strategist=Hang())
            h.client.timeouts = LlmTimeouts(read=0.3, total=2.0)
            h.client.retries = RetryPolicy(attempts=1)
            await h.client.aclose()  # the next call opens a session with the short timeouts
            with pytest.raises(StageFailed) as failed:
                await h.service.turn(sid, "climb")
    assert failed.value.stage == "strategist" and failed.value.llm


@pytest.mark.expect_log_warnings
async def test_a_render_whose_files_cannot_be_written_is_a_storage_failure_and_the_turn_is_kept(monkeypatch):
    import app.comfy.render as render_module

    def full_disk(result, out_dir):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(render_module, "write_outputs", full_disk)
    with SessionStore.open() as store:
        sid = session(store)
        async with FakeOpenAI() as llm, FakeComfyUI() as comfy, Harness(store, llm.url, comfy.url) as h:
            llm.responder = StoryLlm()
            outcome = await h.service.turn(sid, "climb")
        assert outcome.turn.status == "done" and outcome.render.status == "failed"
        assert outcome.render.error_kind == "storage" and store.integrity_check() == "ok"


async def test_a_cancelled_rerender_closes_its_row_instead_of_leaving_it_running():
    with SessionStore.open() as store:
        sid = session(store)
        async with FakeOpenAI() as llm, FakeComfyUI() as comfy, Harness(store, llm.url, comfy.url) as h:
            llm.responder = StoryLlm()
            outcome = await h.service.turn(sid, "climb")
            comfy.pause()  # the re-render's job stays running on the server
            task = asyncio.create_task(h.service.rerender(outcome.scene.id, changes={"seed": "7"}))
            await comfy.wait_for_prompts(2)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            comfy.resume()
        first, second = store.renders(outcome.scene.id)
    assert first.status == "done"
    assert second.status == "failed" and second.error_kind == "cancelled" and "cancelled" in second.error


async def test_a_health_check_that_raises_counts_as_daemon_down_and_the_render_falls_back():
    async def broken_health() -> bool:
        raise RuntimeError("the status feed is not started")

    with SessionStore.open() as store:
        sid = session(store, template="sdxl_txt2img_luna_daemon")
        async with FakeOpenAI() as llm, FakeComfyUI() as comfy, Harness(store, llm.url, comfy.url) as h:
            llm.responder = StoryLlm()
            h.renderer.daemon_health = broken_health
            outcome = await h.service.turn(sid, "climb")
    assert outcome.render.status == "done" and outcome.render.template == "sdxl_txt2img"


async def test_a_bug_in_a_stage_fails_the_turn_and_tells_the_listeners(monkeypatch):
    from app.narrates.agents import strategist
    from app.narrates.events import StageFailed as StageFailedEvent

    async def broken(*args, **kwargs):
        raise KeyError("beat")

    monkeypatch.setattr(strategist, "run", broken)
    events = []
    with SessionStore.open() as store:
        sid = session(store)
        async with FakeOpenAI() as llm, FakeComfyUI() as comfy, Harness(store, llm.url, comfy.url) as h:
            llm.responder = StoryLlm()
            with pytest.raises(KeyError):
                await h.service.turn(sid, "climb", on_event=events.append)
        [turn] = store.turns(sid)
    assert turn.status == "failed" and turn.error_stage == "strategist" and "KeyError" in turn.error
    [failed] = [e for e in events if isinstance(e, StageFailedEvent)]
    assert failed.stage == "strategist" and "internal error" in failed.error
