"""The whole operator window from the composition root, live: a real daemon child and its status
WebSocket, the style router over the fake ComfyUI. Waits on Qt signals on the qasync loop."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import psutil
import pytest

from app.bootstrap import build_operator
from app.comfy.instances import InstancesConfig, load_instances
from app.services.daemon_supervisor import Phase
from tests.gui.conftest import wait_signal, wait_until
from tests.helpers.fake_comfyui import txt2img_prompt
from tests.helpers.operator_scene import clip_prompts, operator_scene, vae_burst

pytestmark = [pytest.mark.gui, pytest.mark.integration]


@pytest.mark.expect_log_warnings  # the router warns about the instance that is down
def test_dashboard_follows_the_real_daemon_under_load_and_quit_leaves_no_child(qloop, qtbot, tmp_path):
    async def scenario() -> None:
        async with operator_scene(tmp_path, instances=1) as scene:
            operator = build_operator(scene.settings, scene.options)
            qtbot.addWidget(operator.window)
            widgets = operator.widgets
            await operator.start()
            ready = await operator.supervisor.supervisor.wait_up(60)
            child_pid = operator.supervisor.supervisor.child_pid
            assert ready.pid == child_pid

            await wait_until(lambda: operator.feed.last_status is not None, operator.feed.status_received)
            assert widgets.daemon_card.value("status") == "ok"
            assert widgets.daemon_card.value("supervisor").startswith(f"running (pid {ready.pid}")
            assert widgets.vae_card.value("limits") == "1 / 3"
            assert widgets.controls.stop_button.isEnabled() and not widgets.controls.start_button.isEnabled()

            load = asyncio.ensure_future(vae_burst(ready))
            (event,) = await wait_signal(operator.feed.scaling_received, lambda e: e.event == "scale_up")
            await load
            await clip_prompts(ready, ("a red fox", "a red fox"))
            assert event.pool == "vae" and event.worker_id >= 1
            newest = widgets.timeline.list.item(widgets.timeline.list.count() - 1).text()
            assert "scale_up  VAE worker #" in newest and "GiB available" in newest
            assert len(widgets.timeline.ups.getData()[0]) >= 1

            # The cards follow the load: the model's real dtype, requests counted, cache hits.
            await wait_until(
                lambda: (
                    "default/vae float32 (loaded)" in widgets.daemon_card.value("models")
                    and widgets.daemon_card.value("cache").startswith("50 %")
                ),
                operator.feed.status_received,
            )
            assert int(widgets.vae_card.value("requests").replace(",", "")) >= 25
            # The daemon's memory series is on the graph, labelled as system memory on CPU.
            await wait_signal(operator.vram.updated)
            x, y = widgets.vram_plot.curves["daemon"].getData()
            assert len(x) >= 2 and x[-1] <= 0
            assert "system RAM" in widgets.vram_plot.axis_label()
            assert "LUNA_DAEMON_READY" in widgets.log_pane.toPlainText()

            await operator.aclose()
            assert operator.supervisor.supervisor.state.phase is Phase.STOPPED
            assert (
                not psutil.pid_exists(child_pid) or psutil.Process(child_pid).status() == psutil.STATUS_ZOMBIE
            )
            assert widgets.controls.start_button.isEnabled()

    qloop.run_until_complete(asyncio.wait_for(scenario(), 120))


@pytest.mark.expect_log_warnings  # the instance going down is a warning by design
def test_instances_table_shows_health_progress_and_an_instance_going_down_and_back(qloop, qtbot, tmp_path):
    async def scenario() -> None:
        async with operator_scene(tmp_path, instances=2, with_down_instance=True, render_delay=30.0) as scene:
            operator = build_operator(scene.settings, replace(scene.options, autostart_daemon=False))
            qtbot.addWidget(operator.window)
            table = operator.widgets.instances
            rows = operator.instances.rows_changed
            await operator.start()
            await wait_until(
                lambda: (
                    table.rowCount() == 3
                    and table.cell_text("comfyui-anime", "Health") == "healthy"
                    and table.cell_text("comfyui-realistic", "Health") == "healthy"
                    and table.cell_text("comfyui-offline", "Health").startswith("unhealthy")
                ),
                rows,
            )
            assert table.cell_text("comfyui-anime", "URL") == scene.fakes[0].url
            assert table.cell_text("comfyui-anime", "Styles") == "anime"
            assert table.cell_text("comfyui-anime", "VRAM") == "4.00 / 24.00 GiB"
            assert table.cell_text("comfyui-anime", "Current job") == "idle"

            render = asyncio.ensure_future(
                operator.instances.router.run(txt2img_prompt(steps=30), style="anime")
            )
            await wait_until(
                lambda: (
                    table.cell_text("comfyui-anime", "Current job") != "idle"
                    and table.cell_text("comfyui-anime", "Progress") not in ("—", "0 %")
                ),
                rows,
            )
            render.cancel()
            await asyncio.gather(render, return_exceptions=True)

            fake = scene.fakes[1]
            await fake.crash()
            await wait_until(
                lambda: table.cell_text("comfyui-realistic", "Health").startswith("unhealthy"), rows
            )
            assert operator.window.notice_bar.last_notice.text.startswith("ComfyUI comfyui-realistic is down")
            await fake.restart()
            await wait_until(lambda: table.cell_text("comfyui-realistic", "Health") == "healthy", rows)
            assert operator.window.notice_bar.last_notice.text == "ComfyUI comfyui-realistic is back"
            await operator.aclose()

    qloop.run_until_complete(asyncio.wait_for(scenario(), 90))


@pytest.mark.expect_log_warnings  # the instance that is down
def test_saved_instance_settings_are_applied_to_the_running_table(qloop, qtbot, tmp_path):
    async def scenario() -> None:
        async with operator_scene(tmp_path, instances=1, with_down_instance=True) as scene:
            operator = build_operator(scene.settings, replace(scene.options, autostart_daemon=False))
            qtbot.addWidget(operator.window)
            table = operator.widgets.instances
            await operator.start()
            await wait_until(lambda: table.rowCount() == 2, operator.instances.rows_changed)
            healthy = scene.settings.instances.instances[0]
            kept = InstancesConfig((replace(healthy, name="gpu-box"),), default_style="anime")
            operator.apply_settings(replace(operator.settings, instances=kept))
            await wait_until(
                lambda: table.rowCount() == 1 and table.cell_text("gpu-box", "Health") == "healthy",
                operator.instances.rows_changed,
            )
            assert "ComfyUI instances applied" in operator.window.notice_bar.last_notice.text
            assert load_instances(scene.options.config_dir / "instances.toml") == kept
            await operator.aclose()

    qloop.run_until_complete(asyncio.wait_for(scenario(), 60))


@pytest.mark.expect_log_warnings  # giving up is a warning by design
def test_a_daemon_that_cannot_start_shows_why_in_the_status_bar_and_can_be_started_again(
    qloop, qtbot, tmp_path
):
    import socket

    async def scenario() -> None:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            async with operator_scene(tmp_path, instances=1, with_down_instance=False) as scene:
                daemon = replace(scene.settings.daemon, ws_port=taken.getsockname()[1])
                operator = build_operator(replace(scene.settings, daemon=daemon), scene.options)
                qtbot.addWidget(operator.window)
                await operator.start()
                (state,) = await wait_signal(
                    operator.supervisor.state_changed, lambda s: s.phase is Phase.GAVE_UP
                )
                notice = operator.window.notice_bar.last_notice
                assert notice.level == "error" and notice.text.startswith(
                    "Daemon supervisor gave up: the daemon refused"
                )
                assert "status WebSocket" in notice.text  # the daemon's own reason
                controls = operator.widgets.controls
                assert controls.start_button.isEnabled() and not controls.stop_button.isEnabled()
                assert operator.widgets.daemon_card.value("supervisor").startswith(
                    "gave_up: the daemon refused"
                )
                await operator.aclose()

    qloop.run_until_complete(asyncio.wait_for(scenario(), 60))
