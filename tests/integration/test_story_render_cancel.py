"""Cancelling a scene's render (the story panel's Cancel during the render) records the render as
cancelled at once — not 'running' until the next start — and keeps the finished turn."""

from __future__ import annotations

import asyncio

from app.comfy.instances import InstanceConfig, InstancesConfig
from app.comfy.render import RenderService
from app.comfy.router import StyleRouter
from app.narrates.events import RenderFailed, RenderProgress
from app.narrates.model import ScenePlan, SessionSettings
from app.narrates.rendering import SceneRenderer
from app.narrates.service import StoryService
from app.narrates.store import SessionStore
from tests.helpers.fake_comfyui import FakeComfyUI
from tests.helpers.story_llm import ANSWERS

SMALL = {"checkpoint": "sdxl_base.safetensors", "steps": 4, "width": 64, "height": 64}


async def test_a_cancelled_render_is_recorded_as_cancelled_and_the_job_leaves_comfyui():
    with SessionStore.open() as store:
        sid = store.create_session("S", SessionSettings(render_values=SMALL)).id
        turn = store.start_turn(sid, "look")
        store.finish_turn(turn.id)
        plan = ScenePlan(
            ANSWERS["dreamer"]["scene"], "blurry", (), "scene", None, "sdxl_txt2img", 64, 64, 1, "scene",
            values=SMALL,
        )  # fmt: skip
        scene = store.add_scene(turn.id, plan, None)
        async with FakeComfyUI(render_delay=60.0) as comfy:
            config = InstancesConfig(
                (InstanceConfig("fake", comfy.url, styles=("anime",)),), default_style="anime"
            )
            router = StyleRouter(config)
            await router.start()
            try:
                service = StoryService(store, renderer=SceneRenderer(store, RenderService(router)))
                events: list = []
                progressed = asyncio.Event()

                def listen(event) -> None:
                    events.append(event)
                    if isinstance(event, RenderProgress):
                        progressed.set()

                task = asyncio.ensure_future(service.rerender(scene.id, on_event=listen))
                await asyncio.wait_for(progressed.wait(), 30)
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
            finally:
                await router.close()
        (render,) = store.renders(scene.id)
        assert render.status == "failed" and render.error_kind == "cancelled"
        assert any(isinstance(e, RenderFailed) and e.kind == "cancelled" for e in events)
        assert store.turn(turn.id).status == "done"
