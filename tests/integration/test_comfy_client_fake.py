"""ComfyClient against the faithful fake ComfyUI: every client path, no sleeps."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import uuid

import pytest
from PIL import Image

from app.comfy.client import ComfyClient, ComfyTimeouts
from app.comfy.errors import (
    ComfyUnavailable,
    ExecutionFailed,
    JobInterrupted,
    JobLost,
    JobTimeout,
    OutputMissing,
    PromptRejected,
)
from app.comfy.events import (
    ConnectionLost,
    Executed,
    Executing,
    ExecutionCached,
    ExecutionStart,
    ExecutionSuccess,
    FeatureFlags,
    JobQueued,
    PreviewImage,
    Progress,
    ProgressState,
    Reconnected,
)
from app.comfy.instances import InstanceConfig
from app.comfy.jobs import JobState
from app.comfy.results import output_refs
from tests.helpers.fake_comfyui import FakeComfyUI, txt2img_prompt

FAST = ComfyTimeouts(ws_open=5.0, history=3.0, reconnect_max_delay=0.02, reconnect_give_up=3.0, watchdog=60.0)


@pytest.fixture
async def fake():
    async with FakeComfyUI() as server:
        yield server


@pytest.fixture
async def client(fake):
    async with ComfyClient(fake.url, timeouts=FAST) as comfy:
        yield comfy


async def collect_until(job, kind):
    """Events of ``job`` up to and including the first of type ``kind``."""
    seen = []
    async for event in job.events():
        seen.append(event)
        if isinstance(event, kind):
            return seen
    raise AssertionError(f"job ended without {kind.__name__}: {seen}")


async def test_run_returns_real_png_outputs_with_their_metadata(fake, client):
    result = await client.run(txt2img_prompt(seed=5))

    assert len(result.files) == 1
    image = result.images[0]
    assert image.mime_type == "image/png"
    assert image.ref.node_id == "9" and image.ref.type == "output" and image.filename.startswith("luna_")
    assert Image.open(io.BytesIO(image.data)).size == fake.image_size
    assert result.instance == client.name
    assert result.timings.total >= result.timings.fetching >= 0
    assert result.outputs["9"]["images"][0]["filename"] == image.filename


async def test_prompt_carries_client_id_and_a_lowercase_uuid_prompt_id(fake, client):
    result = await client.run(txt2img_prompt())

    received = fake.prompts[-1]
    assert received.client_id == client.client_id
    assert received.body["prompt_id"] == result.prompt_id
    assert str(uuid.UUID(result.prompt_id)) == result.prompt_id


async def test_socket_is_open_before_the_prompt_is_posted(fake, client):
    await client.run(txt2img_prompt())

    paths = [path for _, path, _ in fake.requests]
    assert paths.index("/ws") < paths.index("/api/prompt")
    assert fake.ws_connections[0][0] == client.client_id


async def test_job_events_are_typed_and_in_the_real_order(client):
    job = await client.submit(txt2img_prompt(steps=3))
    events = [event async for event in job.events()]
    result = await client.wait(job)

    kinds = [type(event) for event in events]
    assert kinds[0] is JobQueued
    assert kinds[1:3] == [ExecutionStart, ExecutionCached]
    assert kinds[-1] is ExecutionSuccess
    assert ProgressState in kinds
    assert kinds.index(Executing) < kinds.index(Progress) < kinds.index(Executed)
    steps = [(e.value, e.max, e.node) for e in events if isinstance(e, Progress)]
    assert steps == [(1, 3, "3"), (2, 3, "3"), (3, 3, "3")]
    assert job.state is JobState.SUCCEEDED and job.progress.fraction == 1.0
    assert result.prompt_id == job.prompt_id


async def test_ui_workflow_and_preview_method_go_into_extra_data_and_previews_are_decoded(fake, client):
    workflow = {"nodes": [], "links": [], "version": 0.4}
    events = []
    await client.run(
        txt2img_prompt(steps=2), ui_workflow=workflow, preview_method="auto", on_event=events.append
    )

    extra = fake.prompts[-1].extra_data
    assert extra["extra_pnginfo"]["workflow"] == workflow
    assert extra["preview_method"] == "auto"
    previews = [e for e in events if isinstance(e, PreviewImage)]
    assert len(previews) == 2
    assert previews[0].event_type == 4 and previews[0].node_id == "3"
    assert previews[0].prompt_id == fake.prompts[-1].prompt_id
    assert Image.open(io.BytesIO(previews[0].data)).format == "JPEG"


async def test_legacy_previews_without_ids_are_attributed_to_the_running_node(fake):
    async with ComfyClient(fake.url, timeouts=FAST, previews=False) as client:
        events = []
        result = await client.run(
            txt2img_prompt(steps=2), preview_method="latent2rgb", on_event=events.append
        )

    previews = [e for e in events if isinstance(e, PreviewImage)]
    assert [p.event_type for p in previews] == [1, 1]
    assert all(p.prompt_id == result.prompt_id and p.node_id == "3" for p in previews)


async def test_previews_are_not_kept_when_not_asked_for(client):
    events = []
    await client.run(txt2img_prompt(steps=2), on_event=events.append)
    assert not any(isinstance(e, PreviewImage) for e in events)


async def test_identical_prompt_is_fully_cached_and_points_at_the_old_file(fake, client):
    first = await client.run(txt2img_prompt(seed=11))
    second = await client.run(txt2img_prompt(seed=11))

    assert set(second.cached_nodes) == set(txt2img_prompt())
    assert second.files[0].filename == first.files[0].filename
    assert second.files[0].data == first.files[0].data
    assert len(fake.prompts) == 2


async def test_success_before_history_write_is_waited_out(fake, client):
    fake.hold_history = True
    job = await client.submit(txt2img_prompt())
    await collect_until(job, ExecutionSuccess)
    assert await client.history(job.prompt_id) is None  # the race of ComfyUI #11540

    fake.release_history()
    result = await client.wait(job)
    assert result.images and result.prompt_id == job.prompt_id


async def test_old_server_without_execution_success_finishes_on_executing_null():
    async with FakeComfyUI(send_execution_success=False) as fake:
        async with ComfyClient(fake.url, timeouts=FAST) as client:
            job = await client.submit(txt2img_prompt())
            events = [event async for event in job.events()]
            result = await client.wait(job)

    assert isinstance(events[-1], Executing) and events[-1].node is None
    assert not any(isinstance(e, ExecutionSuccess) for e in events)
    assert result.images


async def test_server_that_ignores_our_prompt_id_is_followed_by_its_own_id():
    async with FakeComfyUI(accept_client_prompt_id=False) as fake:
        async with ComfyClient(fake.url, timeouts=FAST) as client:
            mine = str(uuid.uuid4())
            result = await client.run(txt2img_prompt(), prompt_id=mine)

    assert result.prompt_id == fake.prompts[0].prompt_id != mine
    assert result.images


async def test_invalid_value_is_rejected_with_node_and_input(client):
    prompt = txt2img_prompt(steps=0)
    with pytest.raises(PromptRejected) as caught:
        await client.submit(prompt)

    rejection = caught.value
    assert rejection.status == 400 and rejection.error_type == "prompt_outputs_failed_validation"
    (reason,) = rejection.reasons
    assert (reason.node_id, reason.class_type, reason.input_name, reason.reason_type) == (
        "3",
        "KSampler",
        "steps",
        "value_smaller_than_min",
    )
    assert reason.dependent_outputs == ("9",)
    assert "steps" in str(rejection)
    assert client.jobs == []


async def test_combo_and_missing_input_and_bad_link_reasons(client):
    prompt = txt2img_prompt()
    prompt["3"]["inputs"]["sampler_name"] = "bogus"
    del prompt["3"]["inputs"]["seed"]
    prompt["8"]["inputs"]["vae"] = ["99", 0]
    with pytest.raises(PromptRejected) as caught:
        await client.submit(prompt)

    found = {(r.node_id, r.input_name, r.reason_type) for r in caught.value.reasons}
    assert ("3", "sampler_name", "value_not_in_list") in found
    assert ("3", "seed", "required_input_missing") in found
    assert ("8", "vae", "exception_during_inner_validation") in found


async def test_unknown_node_class_names_the_node(client):
    prompt = txt2img_prompt()
    prompt["3"]["class_type"] = "NoSuchSampler"
    with pytest.raises(PromptRejected) as caught:
        await client.submit(prompt)

    assert caught.value.error_type == "missing_node_type"
    (reason,) = caught.value.reasons
    assert (reason.node_id, reason.class_type, reason.node_title) == ("3", "NoSuchSampler", "KSampler")


async def test_old_servers_string_errors_are_parsed():
    async with FakeComfyUI(legacy_errors=True) as fake:
        async with ComfyClient(fake.url, timeouts=FAST) as client:
            prompt = txt2img_prompt()
            del prompt["3"]["inputs"]["seed"]
            with pytest.raises(PromptRejected) as caught:
                await client.submit(prompt)

    (reason,) = caught.value.reasons
    assert (reason.node_id, reason.input_name, reason.reason_type) == ("3", "seed", "legacy")


async def test_accepted_prompt_with_node_errors_reports_warnings(fake, client):
    prompt = txt2img_prompt()
    prompt["10"] = {
        "class_type": "SaveImage",
        "inputs": {"filename_prefix": "broken", "images": ["8", 5]},
        "_meta": {"title": "Broken Save"},
    }
    result = await client.run(prompt)

    assert [r.node_id for r in result.warnings] == ["10"]
    assert result.warnings[0].reason_type == "return_type_mismatch"
    assert result.warning_messages and "10" in result.warning_messages[0]
    assert {f.node_id for f in result.files} == {"9"}


async def test_bad_prompt_id_is_rejected_with_its_type(client):
    with pytest.raises(PromptRejected) as caught:
        await client.submit(txt2img_prompt(), prompt_id="not-a-uuid")
    assert caught.value.error_type == "invalid_prompt_id"


async def test_execution_error_raises_execution_failed_with_diagnostics(fake, client):
    fake.fail_on(
        class_type="VAEDecode", exception_type="torch.OutOfMemoryError", message="CUDA out of memory"
    )
    with pytest.raises(ExecutionFailed) as caught:
        await client.run(txt2img_prompt())

    error = caught.value
    assert (error.node_id, error.node_type, error.exception_type) == (
        "8",
        "VAEDecode",
        "torch.OutOfMemoryError",
    )
    assert "out of memory" in error.exception_message and error.traceback
    assert "3" in error.executed
    assert error.instance == client.name


async def test_cancel_pending_job_dequeues_it(fake, client):
    fake.pause()
    running = await client.submit(txt2img_prompt(seed=1))
    await fake.wait_state(running.prompt_id, "running")
    pending = await client.submit(txt2img_prompt(seed=2))

    queue = await client.get_queue()
    assert [i.prompt_id for i in queue.running] == [running.prompt_id]
    assert [i.prompt_id for i in queue.pending] == [pending.prompt_id]
    assert await client.cancel(pending) == "dequeued"
    with pytest.raises(JobInterrupted) as caught:
        await client.wait(pending)
    assert caught.value.while_pending

    fake.resume()
    assert (await client.wait(running)).images
    assert [p.prompt_id for p in fake.prompts if p.prompt_id in fake.history] == [running.prompt_id]


async def test_cancel_running_job_interrupts_it_by_prompt_id(fake, client):
    fake.pause()
    job = await client.submit(txt2img_prompt())
    await fake.wait_state(job.prompt_id, "running")

    assert await client.cancel(job.prompt_id) == "interrupted"
    with pytest.raises(JobInterrupted) as caught:
        await client.wait(job)
    assert fake.interrupts[-1] == {"prompt_id": job.prompt_id}
    assert not caught.value.while_pending and "interrupted" in str(caught.value)
    assert await client.cancel(job.prompt_id) == "interrupted"  # idempotent: same answer, no new request
    assert len(fake.interrupts) == 1
    assert await client.cancel(str(uuid.uuid4())) == "not_found"
    fake.resume()


async def test_dropped_socket_mid_job_reconnects_with_the_same_client_id(fake, client):
    fake.drop_websockets_on("progress")
    events = []
    result = await client.run(txt2img_prompt(steps=4), on_event=events.append)

    assert result.images
    kinds = [type(e) for e in events]
    assert ConnectionLost in kinds and Reconnected in kinds
    assert [cid for cid, _ in fake.ws_connections] == [client.client_id, client.client_id]


async def test_job_that_finished_while_disconnected_is_reconciled_from_history(fake, client):
    fake.pause()
    job = await client.submit(txt2img_prompt())
    await fake.wait_state(job.prompt_id, "running")
    fake.accept_websockets = False
    await fake.drop_websockets()
    await collect_until(job, ConnectionLost)
    fake.resume()
    await fake.wait_state(job.prompt_id, "done")
    fake.accept_websockets = True

    result = await client.wait(job)
    assert result.images and result.files[0].ref.node_id == "9"


async def test_server_restart_mid_job_reports_the_job_lost(fake, client):
    fake.pause()
    job = await client.submit(txt2img_prompt())
    await fake.wait_state(job.prompt_id, "running")
    await fake.restart()

    with pytest.raises(JobLost) as caught:
        await client.wait(job)
    assert caught.value.started and "neither" in caught.value.reason


async def test_dead_instance_loses_unfinished_jobs_after_the_bound(fake):
    timeouts = ComfyTimeouts(ws_open=5.0, reconnect_max_delay=0.02, reconnect_give_up=0.3, watchdog=60.0)
    async with ComfyClient(fake.url, timeouts=timeouts) as client:
        fake.die_on("execution_start")
        job = await client.submit(txt2img_prompt())
        with pytest.raises(JobLost) as caught:
            await client.wait(job)
    assert not caught.value.started and "unreachable" in caught.value.reason


@pytest.mark.expect_log_warnings
async def test_unreachable_instance_refuses_submit():
    async with FakeComfyUI() as fake:
        url = fake.url
    timeouts = ComfyTimeouts(ws_open=0.2, connect=0.5, reconnect_max_delay=0.02)
    async with ComfyClient(url, timeouts=timeouts) as client:
        with pytest.raises(ComfyUnavailable):
            await client.submit(txt2img_prompt())
        with pytest.raises(ComfyUnavailable):
            await client.system_stats()


async def test_wait_with_deadline_raises_job_timeout(fake, client):
    fake.pause()
    job = await client.submit(txt2img_prompt())
    with pytest.raises(JobTimeout):
        await client.wait(job, timeout=0.05)
    fake.resume()
    assert (await client.wait(job)).images


async def test_upload_image_renames_reuses_and_overwrites(fake, client):
    first = await client.upload_image(b"one", "pose.png", subfolder="luna")
    same = await client.upload_image(b"one", "pose.png", subfolder="luna")
    other = await client.upload_image(b"two", "pose.png", subfolder="luna")
    replaced = await client.upload_image(b"three", "pose.png", subfolder="luna", overwrite=True)

    assert first.reference == "luna/pose.png" and same.name == "pose.png"
    assert other.name == "pose (1).png"
    assert replaced.name == "pose.png" and fake.files[("input", "luna", "pose.png")] == b"three"


async def test_health_and_load_endpoints(fake, client):
    stats = await client.system_stats()
    assert stats.comfyui_version == fake.version
    assert stats.devices[0].vram_total == fake.vram_total and stats.devices[0].vram_free == fake.vram_free
    assert await client.queue_remaining() == 0
    assert (await client.features())["supports_preview_metadata"] is True

    info = await client.object_info()
    assert "KSampler" in info and await client.object_info() is info
    assert fake.request_count("/object_info") == 1
    await client.object_info(refresh=True)
    assert fake.request_count("/object_info") == 2


async def test_extra_headers_reach_http_and_the_socket_and_no_origin_is_sent(fake):
    instance = InstanceConfig("proxied", fake.url, ("anime",), {"Authorization": "Bearer s3cret"})
    async with ComfyClient(instance, timeouts=FAST) as client:
        await client.run(txt2img_prompt())

    assert fake.requests and all(h.get("authorization") == "Bearer s3cret" for _, _, h in fake.requests)
    assert fake.ws_connections[0][1]["authorization"] == "Bearer s3cret"
    assert not any("origin" in h for _, _, h in fake.requests)


async def test_api_prefix_can_be_turned_off_for_very_old_servers(fake):
    instance = InstanceConfig("old", fake.url, api_prefix="")
    async with ComfyClient(instance, timeouts=FAST) as client:
        await client.run(txt2img_prompt())
    assert ("POST", "/prompt") in [(m, p) for m, p, _ in fake.requests]


async def test_several_jobs_in_flight_each_get_their_own_outputs(client):
    jobs = [await client.submit(txt2img_prompt(seed=seed)) for seed in (21, 22, 23)]
    results = [await client.wait(job) for job in jobs]
    assert len({r.files[0].filename for r in results}) == 3
    assert len({r.files[0].data for r in results}) == 3


async def test_cache_can_be_cleared_so_an_identical_prompt_runs_again(fake, client):
    first = await client.run(txt2img_prompt(seed=31))
    await client.free(unload_models=True, free_memory=True)
    again = await client.run(txt2img_prompt(seed=31))
    assert again.cached_nodes == () and again.files[0].filename != first.files[0].filename


async def test_forced_rejection_reaches_the_caller_as_prompt_rejected(fake, client):
    fake.reject_next()
    with pytest.raises(PromptRejected) as caught:
        await client.submit(txt2img_prompt())
    (reason,) = caught.value.reasons
    assert (reason.node_id, reason.input_name, reason.received_value) == (
        "4",
        "ckpt_name",
        "missing.safetensors",
    )
    assert (await client.run(txt2img_prompt())).images  # only the next one was rejected


@pytest.mark.expect_log_warnings
async def test_without_a_websocket_jobs_are_tracked_by_polling(fake):
    fake.accept_websockets = False  # e.g. a reverse proxy that does not pass upgrades
    timeouts = ComfyTimeouts(ws_open=0.1, poll=0.02, reconnect_max_delay=0.05, reconnect_give_up=30.0)
    async with ComfyClient(fake.url, timeouts=timeouts) as client:
        result = await client.run(txt2img_prompt(seed=41))
        strict = ComfyTimeouts(ws_open=0.1, poll_fallback=False)
        async with ComfyClient(fake.url, timeouts=strict) as no_fallback:
            with pytest.raises(ComfyUnavailable):
                await no_fallback.submit(txt2img_prompt())
    assert result.images and fake.ws_connections == []


async def test_feature_flag_handshake_reply_is_kept(fake):
    async with ComfyClient(fake.url, timeouts=FAST) as client:
        replied = asyncio.get_running_loop().create_future()
        client.add_listener(
            lambda e: isinstance(e, FeatureFlags) and not replied.done() and replied.set_result(e)
        )
        await replied
        assert client.server_features["supports_preview_metadata"] is True


async def test_missing_output_file_is_a_typed_error(fake, client):
    job = await client.submit(txt2img_prompt(seed=51))
    result = await client.wait(job, download=False)
    assert result.files == () and result.outputs["9"]["images"]
    (ref,) = output_refs(result.outputs)
    fake.files.pop((ref.type, ref.subfolder, ref.filename))
    with pytest.raises(OutputMissing):
        await client.download(ref)


async def test_job_progress_snapshot_for_progress_bars(fake, client):
    fake.pause()
    job = await client.submit(txt2img_prompt(steps=2))
    await fake.wait_state(job.prompt_id, "running")
    assert job.progress.state is JobState.QUEUED or job.progress.fraction < 1.0
    fake.resume()
    await client.wait(job)
    progress = job.progress
    assert progress.fraction == 1.0 and progress.nodes_total == 7 and progress.nodes_done == 7


async def test_cancelling_the_run_task_cancels_the_job_on_the_server(fake, client):
    fake.pause()
    running = asyncio.create_task(client.run(txt2img_prompt(seed=61)))
    first = (await fake.wait_for_prompts(1))[0].prompt_id
    await fake.wait_state(first, "running")
    waiting = asyncio.create_task(client.run(txt2img_prompt(seed=62)))
    second = (await fake.wait_for_prompts(2))[1].prompt_id
    await collect_until(client.tracker.jobs[second], JobQueued)  # its POST reply is in

    waiting.cancel()
    running.cancel()
    for task in (waiting, running):
        with pytest.raises(asyncio.CancelledError):
            await task
    assert {"prompt_id": first} in fake.interrupts
    queue = await client.get_queue()
    assert second not in {item.prompt_id for item in queue.pending}
    fake.resume()
    await fake.wait_state(first, "done")
    assert fake.history[first]["status"]["status_str"] == "error"


async def test_a_failing_progress_callback_does_not_lose_the_render(client, caplog):
    def broken(event):
        raise RuntimeError("display crashed")

    result = await client.run(txt2img_prompt(seed=71), on_event=broken)
    assert result.images and "on_event callback failed" in caplog.text


# --- outputs from `executed` instead of GET /history -----------------------------------------


def history_requests(fake, prompt_id: str) -> int:
    return fake.request_count(f"/api/history/{prompt_id}")


async def test_outputs_come_from_the_executed_events_without_a_history_request(fake, client):
    result = await client.run(txt2img_prompt(seed=81))
    assert history_requests(fake, result.prompt_id) == 0
    assert result.outputs == fake.history[result.prompt_id]["outputs"] and result.images


async def test_a_fully_cached_prompt_reads_its_outputs_from_the_history(fake, client):
    first = await client.run(txt2img_prompt(seed=82))
    again = await client.run(txt2img_prompt(seed=82))
    assert set(again.cached_nodes) == set(txt2img_prompt())
    assert history_requests(fake, again.prompt_id) >= 1
    assert again.outputs == fake.history[again.prompt_id]["outputs"] == first.outputs


async def test_a_server_without_execution_success_is_read_from_the_history():
    async with FakeComfyUI(send_execution_success=False) as old:
        async with ComfyClient(old.url, timeouts=FAST) as client:
            result = await client.run(txt2img_prompt(seed=83))
        assert history_requests(old, result.prompt_id) >= 1 and result.images


async def test_a_socket_drop_during_the_job_falls_back_to_the_history(fake, client):
    fake.drop_websockets_on("executed")  # the `executed` message itself is lost
    result = await client.run(txt2img_prompt(seed=84))
    assert history_requests(fake, result.prompt_id) >= 1
    assert result.outputs == fake.history[result.prompt_id]["outputs"] and result.images


async def test_a_cached_output_node_that_resends_its_output_needs_no_history(fake, client):
    def two_outputs(seed: int) -> dict:
        prompt = txt2img_prompt(seed=seed)
        # A preview of the empty latent: upstream of no seed, so cached on the second run.
        prompt["11"] = {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["4", 2]}}
        prompt["12"] = {"class_type": "SaveImage", "inputs": {"filename_prefix": "base", "images": ["11", 0]}}
        return prompt

    await client.run(two_outputs(85))
    second = await client.run(two_outputs(86))
    assert "12" in second.cached_nodes and set(second.outputs) == {"9", "12"}
    assert history_requests(fake, second.prompt_id) == 0
    assert second.outputs == fake.history[second.prompt_id]["outputs"]


async def test_a_post_whose_reply_is_lost_is_followed_on_the_instance():
    async with FakeComfyUI() as fake:
        async with ComfyClient(fake.url, timeouts=dataclasses.replace(FAST, request=0.5)) as client:
            fake.swallow_prompt_replies()
            job = await client.submit(txt2img_prompt(seed=87))
            result = await client.wait(job)
        assert [p.prompt_id for p in fake.prompts] == [job.prompt_id] == [result.prompt_id]


@pytest.mark.expect_log_warnings
async def test_a_refused_connect_is_known_not_to_have_delivered_the_prompt():
    async with FakeComfyUI() as fake:
        url = fake.url
    async with ComfyClient(
        url, timeouts=dataclasses.replace(FAST, ws_open=0.2, poll_fallback=True)
    ) as client:
        with pytest.raises(ComfyUnavailable) as caught:
            await client.submit(txt2img_prompt())
    assert caught.value.maybe_delivered is False
