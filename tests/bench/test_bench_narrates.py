"""Benchmark of the Narrates pipeline's own overhead per turn (run:
``pytest tests/bench/test_bench_narrates.py -m bench -s``).

The LLM and the renderer are instant in-process fakes with the real interfaces (the answers of
``tests/helpers/story_llm.py``; the prose streamed in 60 pieces; one 64×64 PNG per render), so
what is timed is everything else a turn does: five SQLite transactions for the stages, the
scene and render rows, context assembly with token counting and keyword lore over a growing
history, prompt files, JSON validation of the typed outputs, the Dreamer's prompt building,
image hashing and storing. Side by side: the same store transactions alone, to show what the
pipeline adds on top of the commits. Goal: < 20 ms per turn.
"""

from __future__ import annotations

import asyncio
import hashlib
import statistics
import time
from pathlib import Path

import pytest

from app.comfy.render import RenderedFile, RenderOutcome
from app.comfy.results import JobTimings
from app.narrates.llm.client import estimate_tokens
from app.narrates.llm.types import ChatChunk, ChatReply, LlmBackend
from app.narrates.model import Character, ScenePlan, SessionSettings, WorldNote
from app.narrates.pipeline import TurnPipeline
from app.narrates.rendering import SceneRenderer
from app.narrates.store import SessionStore, StageRecord
from tests.helpers.fake_comfyui import png_bytes
from tests.helpers.story_llm import ANSWERS, PROSE, SUMMARY

pytestmark = pytest.mark.bench
TURNS = 120
PIECES = [PROSE[i : i + 5] for i in range(0, len(PROSE), 5)]


class InstantLlm:
    """The LlmClient interface, answering at once."""

    backend = LlmBackend("instant", "http://127.0.0.1:1/v1", "instant-model")

    async def complete_json(self, request, schema, *, schema_name, max_attempts=3):
        return dict(ANSWERS[schema_name.split("_")[0]])

    async def stream(self, request):
        for piece in PIECES:
            yield ChatChunk(piece)
        yield ChatChunk("", "stop")

    async def complete(self, request):
        return ChatReply(SUMMARY, "stop", "instant-model", None, None, 0.0)

    async def count_tokens(self, text):
        return estimate_tokens(text)


class InstantRenderService:
    """The RenderService interface: one PNG written to the request's output dir, at once."""

    def __init__(self) -> None:
        self.count = 0

    async def render(self, request, *, on_event=None):
        self.count += 1
        data = png_bytes(color=(self.count % 256, 80, 160))
        out = Path(request.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"ComfyUI_{self.count:05}_.png"
        path.write_bytes(data)
        file = RenderedFile(
            path, hashlib.sha256(data).hexdigest(), "9", path.name, "", "output", "image/png", len(data)
        )
        return RenderOutcome(
            template=request.template.name,
            prompt_id=f"p{self.count}",
            instance="instant",
            url="http://127.0.0.1:1",
            values=dict(request.values),
            timings=JobTimings(0.0, 0.0, 0.0, 0.0),
            files=(file,),
            warnings=(),
            cached_nodes=(),
        )


def cast() -> list[Character]:
    return [
        Character("Mira", "curious cartographer", "young woman, silver hair", ("the cartographer",), seed=4),
        Character("Tobias", "gruff keeper", "old man, grey beard"),
    ]


def world() -> list[WorldNote]:
    return [
        WorldNote(
            f"Note {i}", f"content of note {i} " * 8, (f"key{i}", "lighthouse" if i % 5 == 0 else f"k{i}")
        )
        for i in range(40)
    ]


def report(label: str, samples: list[float]) -> float:
    median = statistics.median(samples)
    p95 = sorted(samples)[int(len(samples) * 0.95) - 1]
    print(f"  {label:<58} median {median * 1000:7.2f} ms  p95 {p95 * 1000:7.2f} ms  (n={len(samples)})")
    return median


async def run_turns(tmp: Path, *, render: bool) -> list[float]:
    with SessionStore.open(tmp) as store:
        settings = SessionSettings(render_values={"steps": 4})
        session = store.create_session("bench", settings, cast(), world()).id
        renderer = SceneRenderer(store, InstantRenderService()) if render else None
        pipeline = TurnPipeline(store, InstantLlm(), renderer=renderer)
        samples = []
        for index in range(TURNS):
            started = time.perf_counter()
            outcome = await pipeline.run_turn(session, f"turn {index}: climb the lighthouse with Mira")
            samples.append(time.perf_counter() - started)
            assert outcome.turn.status == "done" and (
                outcome.render is None or outcome.render.status == "done"
            )
        assert store.integrity_check() == "ok"
    return samples


def commits_only(tmp: Path) -> list[float]:
    """The store transactions of one rendered turn, without the pipeline around them."""
    plan = ScenePlan("p", "n", ("Mira",), "scene", None, "sdxl_txt2img", None, None, 1, "scene")
    with SessionStore.open(tmp) as store:
        session = store.create_session("bench", SessionSettings(), cast(), world()).id
        samples = []
        for index in range(TURNS):
            started = time.perf_counter()
            turn = store.start_turn(session, f"turn {index}")
            for stage in ("preprocessor", "strategist", "writer", "dreamer"):
                store.save_stage(
                    turn.id,
                    StageRecord(stage, ANSWERS.get(stage, {}), "m", 0.0, 0.0),
                    prose=PROSE if stage == "writer" else None,
                )
            scene = store.add_scene(turn.id, plan, None)
            store.finish_turn(turn.id)
            render = store.start_render(scene.id, style=None, template="t", template_hash=None, changes={})
            store.finish_render(
                render, instance="i", prompt_id="p", params={}, seed=1, timings={}, warnings=[], files=[]
            )
            samples.append(time.perf_counter() - started)
    return samples


async def test_pipeline_overhead_per_turn(tmp_path):
    print(f"\nNarrates pipeline overhead per turn, instant LLM and renderer, {TURNS} turns in one session:")
    no_render = await run_turns(tmp_path / "a", render=False)
    rendered = await run_turns(tmp_path / "b", render=True)
    commits = await asyncio.to_thread(commits_only, tmp_path / "c")
    report("store transactions alone (turn + 4 stages + scene + render)", commits)
    report("turn without render (--no-render)", no_render)
    median = report("turn with render (image hashed and stored)", rendered)
    report("  of which the first 20 turns (short history)", rendered[:20])
    report("  of which the last 20 turns (100+ turns of history)", rendered[-20:])
    print(
        f"  pipeline / store-alone ratio: {median / statistics.median(commits):.2f}×   goal: < 20 ms per turn"
    )
