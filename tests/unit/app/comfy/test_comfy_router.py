"""StyleRouter over several fake ComfyUI instances: choice, health, recovery, resubmit, snapshots."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from app.comfy.client import ComfyClient, ComfyTimeouts
from app.comfy.errors import NoInstanceAvailable
from app.comfy.instances import InstanceConfig, InstanceConfigError, InstancesConfig
from app.comfy.router import URL_STYLE, RouterSettings, StyleRouter, command_line_router
from app.paths import user_dirs
from tests.helpers.fake_comfyui import FakeComfyUI, txt2img_prompt

TIMEOUTS = ComfyTimeouts(
    ws_open=5.0, history=3.0, reconnect_max_delay=0.02, reconnect_give_up=0.3, watchdog=60.0
)
SETTINGS = RouterSettings(
    health_interval=0.05,
    health_backoff_max=0.1,
    probe_timeout=2.0,
    max_in_flight_per_instance=1,
    no_instance_timeout=2.0,
    timeouts=TIMEOUTS,
)


@contextlib.asynccontextmanager
async def fakes(count: int):
    async with contextlib.AsyncExitStack() as stack:
        yield [await stack.enter_async_context(FakeComfyUI()) for _ in range(count)]


def config(*entries: tuple[str, str, tuple[str, ...]], default_style: str = "anime") -> InstancesConfig:
    return InstancesConfig(
        tuple(InstanceConfig(name, url, styles) for name, url, styles in entries), default_style=default_style
    )


async def all_healthy(router: StyleRouter) -> None:
    await router.wait_until(lambda snap: all(i.healthy for i in snap.instances), timeout=5)


async def test_job_goes_to_the_instance_with_the_least_queue():
    async with fakes(2) as (busy, idle):
        busy.pause()
        async with ComfyClient(busy.url, timeouts=TIMEOUTS) as other_user:
            await other_user.submit(txt2img_prompt(seed=1))
            await other_user.submit(txt2img_prompt(seed=2))
            cfg = config(("a", busy.url, ("anime",)), ("b", idle.url, ("anime",)))
            async with StyleRouter(cfg, settings=SETTINGS) as router:
                await router.wait_until(lambda s: s.by_name("a").queue_remaining == 2, timeout=5)
                await all_healthy(router)
                result = await router.run(txt2img_prompt(seed=3), style="anime")
            busy.resume()
    assert result.instance == "b"
    assert [p.prompt_id for p in idle.prompts] == [result.prompt_id]


async def test_unknown_style_uses_the_default_style():
    async with fakes(2) as (anime, real):
        cfg = config(("anime-1", anime.url, ("anime",)), ("real-1", real.url, ("realistic",)))
        async with StyleRouter(cfg, settings=SETTINGS) as router:
            await all_healthy(router)
            noir = await router.run(txt2img_prompt(seed=4), style="noir")
            realistic = await router.run(txt2img_prompt(seed=5), style="realistic")
    assert (noir.instance, realistic.instance) == ("anime-1", "real-1")


@pytest.mark.expect_log_warnings
async def test_failed_instance_is_skipped_until_it_recovers():
    async with fakes(2) as (first, second):
        cfg = config(("a", first.url, ("anime",)), ("b", second.url, ("anime",)))
        async with StyleRouter(cfg, settings=SETTINGS) as router:
            await all_healthy(router)
            await first.crash()
            snap = await router.wait_until(lambda s: s.by_name("a").state == "unhealthy", timeout=5)
            assert snap.by_name("a").last_error and snap.by_name("a").consecutive_failures >= 1

            during = [await router.run(txt2img_prompt(seed=s), style="anime") for s in (10, 11)]
            assert {r.instance for r in during} == {"b"}

            await first.restart()
            await router.wait_until(lambda s: s.by_name("a").healthy and s.by_name("a").connected, timeout=5)
            second.pause()  # make "b" the loaded one: the next job must go to the recovered "a"
            blocker = await router.client("b").submit(txt2img_prompt(seed=12))
            await router.wait_until(lambda s: (s.by_name("b").queue_remaining or 0) >= 1, timeout=5)
            after = await router.run(txt2img_prompt(seed=13), style="anime")
            second.resume()
            await router.client("b").wait(blocker)
    assert after.instance == "a"


@pytest.mark.expect_log_warnings
async def test_job_is_resubmitted_with_the_same_seed_when_its_instance_dies_before_starting():
    async with fakes(2) as (doomed, spare):
        doomed.die_on("execution_start")
        cfg = config(("a", doomed.url, ("anime",)), ("b", spare.url, ("anime",)))
        async with StyleRouter(cfg, settings=SETTINGS) as router:
            await all_healthy(router)
            workflow = txt2img_prompt(seed=777)
            result = await router.run(workflow, style="anime")
            snap = router.snapshot()
    assert result.instance == "b" and result.images
    assert doomed.crashes == 1
    assert spare.prompts[0].prompt["3"]["inputs"]["seed"] == 777
    assert spare.prompts[0].prompt == workflow
    assert snap.by_name("a").jobs_failed == 1 and snap.by_name("b").jobs_done == 1


async def test_snapshot_shows_health_queue_vram_and_jobs_in_flight():
    async with fakes(1) as (fake,):
        fake.vram_free = 3 * 1024**3
        seen = []
        async with StyleRouter(config(("a", fake.url, ("anime",))), settings=SETTINGS) as router:
            router.add_listener(seen.append)
            snap = await router.check_now()
            instance = snap.by_name("a")
            assert (
                instance.healthy
                and instance.vram_total == fake.vram_total
                and instance.vram_free == 3 * 1024**3
            )
            assert instance.comfyui_version == fake.version and instance.devices[0].type == "cuda"

            fake.pause()
            task = asyncio.create_task(router.run(txt2img_prompt(), style="anime"))
            busy = await router.wait_until(
                lambda s: s.by_name("a").jobs_in_flight == 1 and s.by_name("a").queue_remaining == 1,
                timeout=5,
            )
            fake.resume()
            await task
            idle = await router.wait_until(lambda s: s.by_name("a").jobs_in_flight == 0, timeout=5)
    assert busy.by_name("a").jobs_in_flight == 1
    assert idle.by_name("a").jobs_done == 1 and idle.by_name("a").mean_job_seconds is not None
    assert seen and seen[-1].by_name("a").jobs_done == 1


async def test_first_free_dispatch_holds_jobs_until_an_instance_frees_up():
    async with fakes(2) as (slow, fast):
        cfg = config(("slow", slow.url, ("anime",)), ("fast", fast.url, ("anime",)))
        async with StyleRouter(cfg, settings=SETTINGS) as router:
            await all_healthy(router)
            slow.pause()
            first = asyncio.create_task(router.run(txt2img_prompt(seed=1), style="anime"))
            await router.wait_until(lambda s: s.by_name("slow").jobs_in_flight == 1, timeout=5)
            others = [
                asyncio.create_task(router.run(txt2img_prompt(seed=s), style="anime")) for s in (2, 3, 4)
            ]
            results = await asyncio.gather(*others)
            slow.resume()
            head = await first
    assert head.instance == "slow"
    assert {r.instance for r in results} == {"fast"}
    assert len(slow.prompts) == 1 and len(fast.prompts) == 3


@pytest.mark.expect_log_warnings
async def test_no_healthy_instance_for_the_style_raises():
    async with fakes(1) as (fake,):
        url = fake.url
    settings = RouterSettings(
        health_interval=0.05,
        health_backoff_max=0.1,
        no_instance_timeout=0.2,
        timeouts=ComfyTimeouts(connect=0.5, ws_open=0.5, reconnect_max_delay=0.05),
    )
    async with StyleRouter(config(("gone", url, ("anime",))), settings=settings) as router:
        await router.wait_until(lambda s: s.by_name("gone").state == "unhealthy", timeout=5)
        with pytest.raises(NoInstanceAvailable):
            await router.run(txt2img_prompt(), style="anime")


async def test_watch_yields_a_snapshot_after_each_change():
    async with fakes(1) as (fake,):
        async with StyleRouter(config(("a", fake.url, ("anime",))), settings=SETTINGS) as router:
            states = []
            async for snap in router.watch():
                states.append(snap.by_name("a").state)
                if snap.by_name("a").healthy:
                    break
    assert states[-1] == "healthy" and len(states) >= 1


async def test_router_cancels_a_job_on_the_instance_that_has_it():
    async with fakes(2) as (first, second):
        cfg = config(("a", first.url, ("anime",)), ("b", second.url, ("anime",)))
        async with StyleRouter(cfg, settings=SETTINGS) as router:
            await all_healthy(router)
            first.pause()
            second.pause()
            job = await router.client("b").submit(txt2img_prompt())
            await second.wait_state(job.prompt_id, "running")
            assert await router.cancel(job.prompt_id) == "interrupted"
            assert await router.cancel("unknown") == "not_found"
            first.resume()
            second.resume()
    assert second.interrupts == [{"prompt_id": job.prompt_id}]


async def test_a_command_line_router_over_url_serves_only_the_url_style_and_fails_fast():
    router, style = command_line_router("http://127.0.0.1:9", "anime", connect_timeout=0.5)
    assert style == URL_STYLE
    assert [(i.name, i.styles) for i in router.config.instances] == [("http://127.0.0.1:9", (URL_STYLE,))]
    assert router.settings.no_instance_timeout == 0.5 and router.settings.timeouts.ws_open == 2.0


async def test_a_command_line_router_without_url_reads_instances_toml_and_keeps_the_style():
    (user_dirs().config).mkdir(parents=True, exist_ok=True)
    (user_dirs().config / "instances.toml").write_text(
        '[[instances]]\nname = "box"\nurl = "http://10.0.0.5:8188"\nstyles = ["anime"]\n', encoding="utf-8"
    )
    router, style = command_line_router(None, "anime", connect_timeout=3.0)
    assert style == "anime" and [i.name for i in router.config.instances] == ["box"]


def test_a_bad_url_is_an_instance_config_error():
    with pytest.raises(InstanceConfigError):
        command_line_router("ftp://nowhere", None, connect_timeout=1.0)
