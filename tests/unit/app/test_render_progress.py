"""The render-progress reading of a render's events (no Qt, no server)."""

from __future__ import annotations

from app.comfy.events import (
    Executing,
    ExecutionCached,
    ExecutionStart,
    JobCancelled,
    JobQueued,
    Progress,
    StatusEvent,
)
from app.comfy.render import PromptPrepared
from app.services.render_progress import RenderProgress
from tests.helpers.fake_comfyui import txt2img_prompt


def test_events_become_a_bar_and_a_sentence_naming_nodes_by_title():
    progress = RenderProgress()
    assert progress.update(PromptPrepared("comfyui-anime", txt2img_prompt())).text.startswith(
        "Prompt checked against comfyui-anime"
    )
    assert progress.update(JobQueued("p", 1, "comfyui-anime")).text == "Queued on comfyui-anime"
    assert progress.update(ExecutionStart("p")).text == "Running on comfyui-anime"
    assert (
        progress.update(ExecutionCached("p", ("4", "6"))).text == "2 node(s) reused from the instance's cache"
    )
    assert progress.update(Executing("p", "3")).text == "Running 'KSampler' (#3 KSampler)"
    view = progress.update(Progress("p", "3", 5, 20))
    assert (view.value, view.maximum, view.text) == (5, 20, "'KSampler' (#3 KSampler): step 5 of 20")
    assert progress.update(StatusEvent(0)) is None  # broadcasts change nothing on screen
    assert progress.view.value == 5
    assert progress.update(Executing("p", None)).text == "Finished; fetching the image"
    assert (
        progress.update(JobCancelled("p", "comfyui-anime", "interrupted")).text == "Cancelled (interrupted)"
    )


def test_a_node_unknown_to_the_prompt_is_named_by_id_and_odd_progress_is_clamped():
    progress = RenderProgress()
    view = progress.update(Progress(None, "99", 7, 0))
    assert (view.value, view.maximum) == (1, 1) and view.text == "node #99: step 1 of 1"
