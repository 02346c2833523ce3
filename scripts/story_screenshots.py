"""The Story tab's part of ``make screenshots`` (called by :mod:`scripts.screenshots`).

Over the running app: a fake OpenAI-compatible server (the scripted storyteller of
``tests/helpers/story_llm.py``) as the LLM backend, a session with a cast, two turns (the second
regenerated once, so it has two swipes), a re-render with a new seed; then grabs the tab, the
re-render dialog, the render history and its comparison; finally stops the daemon and grabs
what the panel says before the next turn. The fake ComfyUI's images are flat colours.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from typing import Any

from app.comfy.inject import LoraSpec
from app.narrates.model import Character, SessionSettings, WorldNote
from app.services.llm_backend import BackendChoice
from tests.gui.conftest import wait_signal, wait_until
from tests.helpers.fake_openai import FakeOpenAI, Slow
from tests.helpers.story_llm import PROSE, StoryLlm

SMALL = {"checkpoint": "sdxl_base.safetensors", "steps": 8, "width": 512, "height": 384}
SECOND = (
    "The lamp room is warm. Someone has trimmed the wick and polished the great lens; "
    "a logbook lies open on the desk, its last entry written tonight in a steady hand.\n\n"
    "Mira reads it aloud, and her voice falters at the name at the bottom: Tobias."
)


async def take_story(operator: Any, fakes: list, out_dir: Path, save: Any) -> None:
    for fake in fakes:
        fake.render_delay, fake.image_size = 1.5, (512, 384)
    story, window = operator.story, operator.window
    adapter, panel = story.adapter, story.panel
    async with FakeOpenAI() as llm:
        llm.responder = StoryLlm(writer=Slow(PROSE, delay_s=0.01))
        await adapter.backends.choose(BackendChoice("url", llm.url))
        sid = adapter.store.create_session(
            "The lighthouse at Skerry Point",
            SessionSettings(premise="a storm, a dark lighthouse, a ferry due at dawn", render_values=SMALL),
            [
                Character(
                    "Mira",
                    "a cartographer, brave, quick to doubt",
                    "silver hair, green raincoat",
                    ("the cartographer",),
                    (LoraSpec("style_anime.safetensors", 0.8),),
                    421,
                ),
                Character("Tobias", "the old keeper, secretive", "grey beard, oilskin coat", ("the keeper",)),
            ],
            [WorldNote("The lamp", "dark for ten years, until tonight", ("lamp", "light"), 5)],
        ).id
        adapter.refresh_sessions()
        panel.sessions.list.setCurrentRow(0)
        window.show_tab("story")

        async def turn(text: str) -> None:
            ended = wait_signal(adapter.turn_ended, timeout=60)
            adapter.send(text)
            await ended

        await turn("I climb the lighthouse stairs with Mira.")
        llm.responder = StoryLlm(writer=Slow(SECOND, delay_s=0.01))
        await turn("We open the lamp room door.")
        ended = wait_signal(adapter.turn_ended, timeout=60)
        adapter.regenerate()
        await ended
        scene_id = adapter.view.turns[-1].scenes[0][0].id
        done = wait_signal(adapter.rerender_finished, timeout=60)
        adapter.rerender(scene_id, {"seed": "random"})
        await done
        panel.input.setPlainText("I ask Mira to read the last entry again.")
        save(window, out_dir / "story_panel.png")
        dialog = panel.open_rerender(scene_id)
        dialog.seed_new.setChecked(True)
        save(dialog, out_dir / "story_rerender_dialog.png")
        dialog.close()
        history = panel.open_history(scene_id)
        for column in history.columns[:2]:
            column.compare_box.setChecked(True)
        save(history, out_dir / "story_render_history.png")
        compare = history.compare()
        save(compare, out_dir / "story_render_compare.png")
        compare.close()
        history.close()
        # What the panel says before a turn when the daemon is down and the session's template needs it.
        settings = adapter.store.session(sid).settings
        adapter.store.update_settings(sid, replace(settings, template="sdxl_txt2img_luna_daemon"))
        adapter.reload()
        await operator.supervisor.supervisor.stop()
        await wait_until(
            lambda: adapter.readiness is not None and adapter.readiness.level == "fallback",
            adapter.readiness_changed,
            timeout=30,
        )
        await asyncio.sleep(0)  # let the status bar take the supervisor's last state
        save(panel, out_dir / "story_daemon_down.png")
