"""RenderService and RoutedJob against fake ComfyUI servers (real HTTP and WebSocket, port 0).

Covers the pinning of one instance per attempt (upload, validation and run together), the
re-upload and re-validation after a lost job, a POST whose reply is lost (the job runs once),
cancel, the typed event stream, and every typed RenderError.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import typing

import pytest

from app.comfy.client import ComfyClient, ComfyTimeouts
from app.comfy.errors import JobInterrupted
from app.comfy.events import (
    ComfyEvent,
    Executed,
    ExecutionStart,
    ExecutionSuccess,
    JobCancelled,
    JobQueued,
    JobResubmitted,
    Progress,
)
from app.comfy.instances import InstanceConfig, InstancesConfig
from app.comfy.render import (
    ImageUploaded,
    PromptPrepared,
    RenderBadInput,
    RenderCancelled,
    RenderError,
    RenderExecutionFailed,
    RenderInvalid,
    RenderLost,
    RenderOutputError,
    RenderRejected,
    RenderRequest,
    RenderService,
    RenderTimedOut,
    RenderUnavailable,
    TemplateNote,
)
from app.comfy.router import RouterSettings, StyleRouter
from tests.helpers.fake_comfyui import FakeComfyUI, txt2img_prompt
from tests.helpers.ui_workflows import default_ui_workflow

TIMEOUTS = ComfyTimeouts(
    connect=1.0, ws_open=5.0, history=3.0, reconnect_max_delay=0.02, reconnect_give_up=0.3, watchdog=60.0
)
SETTINGS = RouterSettings(
    health_interval=0.05,
    health_backoff_max=0.1,
    probe_timeout=2.0,
    max_in_flight_per_instance=1,
    no_instance_timeout=2.0,
    timeouts=TIMEOUTS,
)
SMALL = {"checkpoint": "sdxl_base.safetensors", "width": "64", "height": "64", "steps": "4"}


@contextlib.asynccontextmanager
async def fakes(count: int):
    async with contextlib.AsyncExitStack() as stack:
        yield [await stack.enter_async_context(FakeComfyUI()) for _ in range(count)]


@contextlib.asynccontextmanager
async def service_over(*fakes_: FakeComfyUI, settings: RouterSettings = SETTINGS):
    config = InstancesConfig(
        tuple(InstanceConfig(f"gpu{i}", fake.url, ("anime",)) for i, fake in enumerate(fakes_)),
        default_style="anime",
    )
    async with StyleRouter(config, settings=settings) as router:
        await router.wait_until(lambda s: all(i.healthy and i.connected for i in s.instances), timeout=5)
        yield RenderService(router), router


def mine(fake: FakeComfyUI, path: str) -> int:
    return fake.request_count(path)


async def test_render_returns_the_outcome_with_files_hashes_and_the_seed_used(tmp_path):
    async with fakes(1) as (fake,), service_over(fake) as (service, _):
        events: list = []
        outcome = await service.render(
            RenderRequest("sdxl_txt2img", {**SMALL, "positive": "a fox"}, output_dir=tmp_path),
            on_event=events.append,
        )
        [received] = fake.prompts
    assert outcome.prompt_id == received.prompt_id and outcome.instance == "gpu0" and outcome.url == fake.url
    assert outcome.values["seed"] == received.prompt["3"]["inputs"]["seed"] == outcome.seed
    assert outcome.values["steps"] == 4 and received.prompt["6"]["inputs"]["text"] == "a fox"
    [file] = outcome.files
    data = file.path.read_bytes()
    assert file.path.parent == tmp_path and file.sha256 == hashlib.sha256(data).hexdigest()
    assert file.size == len(data) and file.mime_type == "image/png" and file.node_id == "9"
    assert outcome.workflow == received.prompt
    assert any(isinstance(e, PromptPrepared) and e.instance == "gpu0" for e in events)


async def test_upload_validation_and_run_happen_on_the_one_instance_picked(tmp_path):
    image = tmp_path / "scene.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    async with fakes(2) as (busy, idle):
        busy.pause()
        async with ComfyClient(busy.url, timeouts=TIMEOUTS) as other_user:
            await other_user.submit(txt2img_prompt(seed=1))
            await other_user.submit(txt2img_prompt(seed=2))
            async with service_over(busy, idle) as (service, router):
                await router.wait_until(lambda s: s.by_name("gpu0").queue_remaining == 2, timeout=5)
                events: list = []
                outcome = await service.render(
                    RenderRequest(
                        "sdxl_img2img",
                        {"checkpoint": "sdxl_base.safetensors", "denoise": 0.4},
                        images={"init_image": image},
                        output_dir=tmp_path / "out",
                    ),
                    on_event=events.append,
                )
            busy.resume()
    assert outcome.instance == "gpu1"
    [uploaded] = [e for e in events if isinstance(e, ImageUploaded)]
    assert uploaded.instance == "gpu1" and uploaded.reference == "scene.png"
    assert idle.files[("input", "", "scene.png")] == image.read_bytes()
    assert ("input", "", "scene.png") not in busy.files
    assert mine(idle, "/api/object_info") == 1 and mine(busy, "/api/object_info") == 0
    assert [p.prompt_id for p in idle.prompts] == [outcome.prompt_id]
    assert idle.prompts[0].prompt["10"]["inputs"]["image"] == "scene.png"


@pytest.mark.expect_log_warnings
async def test_a_lost_job_is_reuploaded_and_revalidated_on_the_next_instance(tmp_path):
    image = tmp_path / "scene.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    async with fakes(2) as (doomed, spare), service_over(doomed, spare) as (service, _):
        doomed.die_on("execution_start")
        events: list = []
        outcome = await service.render(
            RenderRequest(
                "sdxl_img2img",
                {"checkpoint": "sdxl_base.safetensors"},  # a random seed
                images={"init_image": image},
                output_dir=tmp_path / "out",
            ),
            on_event=events.append,
        )
    assert doomed.crashes == 1 and outcome.instance == "gpu1"
    uploads = [e.instance for e in events if isinstance(e, ImageUploaded)]
    prepared = [e.instance for e in events if isinstance(e, PromptPrepared)]
    assert uploads == ["gpu0", "gpu1"] and prepared == ["gpu0", "gpu1"]
    assert any(isinstance(e, JobResubmitted) and e.instance == "gpu0" for e in events)
    assert spare.files[("input", "", "scene.png")] == image.read_bytes()
    assert mine(spare, "/api/object_info") == 1
    seeds = {p.prompt["3"]["inputs"]["seed"] for p in (*doomed.prompts, *spare.prompts)}
    assert seeds == {outcome.values["seed"]}  # the same seed, so the same image
    assert doomed.prompts[0].prompt_id == spare.prompts[0].prompt_id == outcome.prompt_id


@pytest.mark.expect_log_warnings
async def test_a_5xx_to_the_post_is_checked_on_the_instance_then_resubmitted(tmp_path):
    async with fakes(2) as (first, second), service_over(first, second) as (service, _):
        first.reject_next(status=503, body={"error": "overloaded"})
        outcome = await service.render(RenderRequest("sdxl_txt2img", SMALL, output_dir=tmp_path))
    assert outcome.instance == "gpu1" and first.prompts == [] and len(second.prompts) == 1
    assert mine(first, "/api/queue") >= 1 and mine(first, "/api/history/" + outcome.prompt_id) == 1


async def test_a_post_whose_reply_is_lost_is_found_on_the_instance_and_runs_once(tmp_path):
    settings = dataclasses.replace(SETTINGS, timeouts=dataclasses.replace(TIMEOUTS, request=0.5))
    async with fakes(2) as (first, second), service_over(first, second, settings=settings) as (service, _):
        first.swallow_prompt_replies()
        events: list = []
        outcome = await service.render(
            RenderRequest("sdxl_txt2img", SMALL, output_dir=tmp_path), on_event=events.append
        )
    assert outcome.instance == "gpu0" and outcome.files
    assert [p.prompt_id for p in first.prompts] == [outcome.prompt_id] and second.prompts == []
    assert not any(isinstance(e, JobResubmitted) for e in events)
    assert mine(first, "/api/queue") >= 1  # it asked the instance for our own id


async def test_routed_job_streams_typed_events_in_order():
    async with fakes(1) as (fake,), service_over(fake) as (_, router):
        routed = router.submit(txt2img_prompt(seed=5, steps=3), style="anime")
        assert routed.prompt_id  # ours, before any request
        events = [event async for event in routed]
        result = await routed.result()
        replay = [event async for event in routed]
    assert isinstance(events[0], JobQueued) and events[0].prompt_id == routed.prompt_id == result.prompt_id
    kinds = [type(e) for e in events]
    assert kinds.index(ExecutionStart) < kinds.index(Progress) < kinds.index(Executed)
    assert kinds[-1] is ExecutionSuccess and replay == events
    assert all(isinstance(e, typing.get_args(ComfyEvent)) for e in events)


async def test_cancelling_a_routed_job_interrupts_it_once_on_its_server():
    async with fakes(1) as (fake,), service_over(fake) as (_, router):
        fake.pause()
        routed = router.submit(txt2img_prompt(seed=6), style="anime")
        await fake.wait_for_prompts(1)
        await fake.wait_state(routed.prompt_id, "running")
        assert await routed.cancel() == "interrupted"
        assert await routed.cancel() == "interrupted"  # answered from the job, no new request
        fake.resume()
        with pytest.raises(asyncio.CancelledError):
            await routed.result()
        events = [event async for event in routed]
    assert fake.interrupts == [{"prompt_id": routed.prompt_id}]
    assert fake.request_count("/api/interrupt", "POST") == 1
    assert isinstance(events[-1], JobCancelled) and events[-1].outcome == "interrupted"


async def test_cancelling_a_render_dequeues_a_pending_job(tmp_path):
    async with fakes(1) as (fake,), service_over(fake) as (service, _):
        fake.pause()
        async with ComfyClient(fake.url, timeouts=TIMEOUTS) as other_user:
            blocker = await other_user.submit(txt2img_prompt(seed=1))
            await fake.wait_state(blocker.prompt_id, "running")
            handle = service.start(RenderRequest("sdxl_txt2img", SMALL, output_dir=tmp_path))
            await fake.wait_for_prompts(2)
            assert await handle.cancel() == "dequeued"
            with pytest.raises(RenderCancelled) as caught:
                await handle.result()
            fake.resume()
            await other_user.wait(blocker)
    assert caught.value.outcome == "dequeued" and caught.value.prompt_id == handle.prompt_id
    assert fake.interrupts == [] and handle.prompt_id not in fake.history


async def test_cancelling_the_task_awaiting_render_cancels_the_job_first(tmp_path):
    async with fakes(1) as (fake,), service_over(fake) as (service, _):
        fake.pause()
        events: list = []
        task = asyncio.create_task(
            service.render(RenderRequest("sdxl_txt2img", SMALL, output_dir=tmp_path), on_event=events.append)
        )
        [received] = await fake.wait_for_prompts(1)
        await fake.wait_state(received.prompt_id, "running")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        fake.resume()
    assert fake.interrupts == [{"prompt_id": received.prompt_id}]
    assert [e.outcome for e in events if isinstance(e, JobCancelled)] == ["interrupted"]


@pytest.mark.parametrize(
    "request_kwargs, needle",
    [
        ({"template": "no_such_template"}, "no template named 'no_such_template'"),
        ({"template": "sdxl_txt2img", "values": {"colour": "red"}}, "has no parameter 'colour'"),
        ({"template": "sdxl_txt2img", "values": {"steps": "many"}}, "cannot read 'many'"),
        ({"template": "sdxl_txt2img", "values": {"steps": 2.5}}, "must be an integer"),
        ({"template": "sdxl_txt2img", "images": {"nope": "x.png"}}, "has no parameter 'nope'"),
        ({"template": "sdxl_txt2img", "instance": "nowhere"}, "no ComfyUI instance named 'nowhere'"),
    ],
)
async def test_bad_input_is_a_typed_error_and_submits_nothing(request_kwargs, needle, tmp_path):
    async with fakes(1) as (fake,), service_over(fake) as (service, _):
        with pytest.raises(RenderBadInput) as caught:
            await service.render(RenderRequest(output_dir=tmp_path, **request_kwargs))
        assert fake.prompts == []
    assert needle in str(caught.value) and caught.value.kind in ("template", "parameter", "usage")


async def test_a_prompt_invalid_for_the_instance_names_title_input_and_parameter(tmp_path):
    async with fakes(1) as (fake,), service_over(fake) as (service, _):
        with pytest.raises(RenderInvalid) as caught:
            await service.render(RenderRequest("sdxl_txt2img", output_dir=tmp_path))
        assert fake.prompts == []
    [issue] = caught.value.issues
    assert (issue.node_title, issue.input_name, issue.params) == (
        "Load Checkpoint",
        "ckpt_name",
        ("checkpoint",),
    )
    assert caught.value.instance == "gpu0" and "is not valid on gpu0" in str(caught.value)


async def test_a_comfyui_400_is_rejected_with_per_node_reasons(tmp_path):
    async with fakes(1) as (fake,), service_over(fake) as (service, _):
        with pytest.raises(RenderRejected) as caught:
            await service.render(
                RenderRequest("sdxl_txt2img", {**SMALL, "steps": 0}, validate=False, output_dir=tmp_path)
            )
    assert caught.value.error_type == "prompt_outputs_failed_validation"
    assert any(i.node_title == "KSampler" and i.params == ("steps",) for i in caught.value.issues)


async def test_a_node_failing_while_running_is_an_execution_failure_with_its_title(tmp_path):
    async with fakes(1) as (fake,), service_over(fake) as (service, _):
        fake.fail_on(
            class_type="KSampler", exception_type="torch.OutOfMemoryError", message="CUDA out of memory"
        )
        with pytest.raises(RenderExecutionFailed) as caught:
            await service.render(RenderRequest("sdxl_txt2img", SMALL, output_dir=tmp_path / "out"))
    error = caught.value
    assert error.node_id == "3" and error.node_title == "'KSampler' (#3 KSampler)"
    assert "steps" in error.params and error.exception_type == "torch.OutOfMemoryError"
    assert error.prompt_id and error.kind == "execution_error" and not (tmp_path / "out").exists()


@pytest.mark.expect_log_warnings
async def test_no_reachable_instance_is_unavailable_with_the_reasons(tmp_path):
    async with fakes(1) as (fake,):
        url = fake.url
    config = InstancesConfig((InstanceConfig("gone", url, ("anime",)),), default_style="anime")
    async with StyleRouter(config, settings=SETTINGS) as router:
        with pytest.raises(RenderUnavailable) as caught:
            await RenderService(router).render(RenderRequest("sdxl_txt2img", SMALL, output_dir=tmp_path))
    assert "no reachable ComfyUI instance for style 'anime': gone" in str(caught.value)


@pytest.mark.expect_log_warnings
async def test_a_job_lost_after_it_started_is_not_resubmitted(tmp_path):
    async with fakes(2) as (doomed, spare), service_over(doomed, spare) as (service, _):
        doomed.die_on("progress")
        with pytest.raises(RenderLost) as caught:
            await service.render(RenderRequest("sdxl_txt2img", SMALL, output_dir=tmp_path))
    assert spare.prompts == [] and caught.value.kind == "JobLost" and caught.value.prompt_id


async def test_a_timeout_is_a_typed_error(tmp_path):
    async with fakes(1) as (fake,), service_over(fake) as (service, _):
        fake.pause()
        with pytest.raises(RenderTimedOut) as caught:
            await service.render(RenderRequest("sdxl_txt2img", SMALL, timeout=0.2, output_dir=tmp_path))
        fake.resume()
    assert caught.value.kind == "JobTimeout"


async def test_an_interrupt_from_elsewhere_is_a_cancelled_render(tmp_path):
    async with fakes(1) as (fake,), service_over(fake) as (service, router):
        fake.pause()
        handle = service.start(RenderRequest("sdxl_txt2img", SMALL, output_dir=tmp_path))
        [received] = await fake.wait_for_prompts(1)
        await fake.wait_state(received.prompt_id, "running")
        async with ComfyClient(fake.url, timeouts=TIMEOUTS) as operator_browser:
            assert await operator_browser.cancel(received.prompt_id) == "interrupted"
        fake.resume()
        with pytest.raises(RenderCancelled) as caught:
            await handle.result()
    assert isinstance(caught.value.__cause__, JobInterrupted) and caught.value.outcome is None


async def test_every_render_error_is_a_render_error():
    for cls in (
        RenderBadInput,
        RenderInvalid,
        RenderRejected,
        RenderExecutionFailed,
        RenderUnavailable,
        RenderLost,
        RenderCancelled,
        RenderTimedOut,
    ):
        assert issubclass(cls, RenderError)


async def test_a_ui_format_file_is_converted_on_the_instance_that_runs_it(tmp_path):
    path = tmp_path / "saved_from_ui.json"
    ui = default_ui_workflow()
    path.write_text(json.dumps(ui), encoding="utf-8")
    async with fakes(1) as (fake,), service_over(fake) as (service, _):
        events: list = []
        outcome = await service.render(
            RenderRequest(
                path,
                {"checkpoint": "sdxl_base.safetensors", "width": 64, "height": 64},
                output_dir=tmp_path / "out",
            ),
            on_event=events.append,
        )
        [received] = fake.prompts
    assert outcome.template == "saved_from_ui" and received.extra_data["extra_pnginfo"]["workflow"] == ui
    notes = [e.text for e in events if isinstance(e, TemplateNote)]
    assert "converted from the UI format with gpu0's node definitions" in notes


@pytest.mark.expect_log_warnings
async def test_a_post_cut_off_by_a_crash_is_not_resubmitted_while_the_instance_cannot_be_asked(tmp_path):
    async with fakes(2) as (doomed, spare), service_over(doomed, spare) as (service, _):
        doomed.swallow_prompt_replies()
        handle = service.start(RenderRequest("sdxl_txt2img", SMALL, output_dir=tmp_path))
        await doomed.wait_for_prompts(1)
        await doomed.crash()  # it may have queued the job; it never says
        with pytest.raises(RenderLost) as caught:
            await handle.result()
    assert spare.prompts == [] and "not resubmitting" in str(caught.value)


@pytest.mark.expect_log_warnings
async def test_a_post_cut_off_by_a_restart_is_resubmitted_once_the_instance_says_it_lost_it(tmp_path):
    settings = dataclasses.replace(SETTINGS, timeouts=dataclasses.replace(TIMEOUTS, reconnect_give_up=5.0))
    async with fakes(2) as (doomed, spare), service_over(doomed, spare, settings=settings) as (service, _):
        doomed.swallow_prompt_replies()
        handle = service.start(RenderRequest("sdxl_txt2img", SMALL, output_dir=tmp_path))
        await doomed.wait_for_prompts(1)
        await doomed.restart()  # the queue lived in memory: the job is gone, it never ran
        outcome = await handle.result()
    assert outcome.instance == "gpu1" and [p.prompt_id for p in spare.prompts] == [outcome.prompt_id]
    assert doomed.history == {} and doomed.queue_remaining == 0


async def test_an_output_folder_that_cannot_be_written_is_a_typed_error(tmp_path):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the folder should be", encoding="utf-8")
    async with fakes(1) as (fake,), service_over(fake) as (service, _):
        with pytest.raises(RenderOutputError) as caught:
            await service.render(RenderRequest("sdxl_txt2img", SMALL, output_dir=blocker / "renders"))
    assert caught.value.prompt_id == fake.prompts[0].prompt_id and "could not be written" in str(caught.value)


async def test_a_request_pinned_to_an_instance_runs_there_and_nowhere_else(tmp_path):
    async with fakes(2) as (first, second), service_over(first, second) as (service, _):
        outcome = await service.render(
            RenderRequest("sdxl_txt2img", SMALL, instance="gpu1", output_dir=tmp_path)
        )
    assert outcome.instance == "gpu1" and first.prompts == [] and len(second.prompts) == 1
    assert mine(first, "/api/object_info") == 0


async def test_a_request_pinned_to_an_unconfigured_url_adds_that_instance(tmp_path):
    async with fakes(2) as (configured, elsewhere), service_over(configured) as (service, router):
        outcome = await service.render(
            RenderRequest("sdxl_txt2img", SMALL, instance=elsewhere.url + "/", output_dir=tmp_path)
        )
        names = [i.name for i in router.snapshot().instances]
    assert outcome.instance == elsewhere.url and outcome.url == elsewhere.url
    assert configured.prompts == [] and len(elsewhere.prompts) == 1 and names == ["gpu0", elsewhere.url]


async def test_a_render_handle_streams_its_events_and_replays_them(tmp_path):
    async with fakes(1) as (fake,), service_over(fake) as (service, _):
        handle = service.start(RenderRequest("sdxl_txt2img", SMALL, output_dir=tmp_path))
        live = [event async for event in handle]
        outcome = await handle.result()
        replay = [event async for event in handle]
    kinds = [type(e) for e in live]
    assert kinds.index(PromptPrepared) < kinds.index(JobQueued) < kinds.index(ExecutionSuccess)
    assert replay == live and handle.prompt_id == outcome.prompt_id


async def test_a_failing_event_callback_does_not_lose_the_render(tmp_path, caplog):
    def broken(event):
        raise RuntimeError("display crashed")

    async with fakes(1) as (fake,), service_over(fake) as (service, _):
        outcome = await service.render(
            RenderRequest("sdxl_txt2img", SMALL, output_dir=tmp_path), on_event=broken
        )
    assert outcome.files and "on_event callback failed" in caplog.text


async def test_output_files_are_written_off_the_event_loop_thread(tmp_path, monkeypatch):
    import threading

    import app.comfy.render as render_module

    writers: list[int] = []
    real = render_module.write_outputs

    def recording(result, out_dir):
        writers.append(threading.get_ident())
        return real(result, out_dir)

    monkeypatch.setattr(render_module, "write_outputs", recording)
    async with fakes(1) as (fake,), service_over(fake) as (service, _):
        outcome = await service.render(
            RenderRequest("sdxl_txt2img", {**SMALL, "positive": "a fox"}, output_dir=tmp_path)
        )
    assert writers and writers[0] != threading.get_ident()  # the loop runs on this thread
    assert outcome.files[0].path.is_file()
