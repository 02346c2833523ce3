"""``make screenshots``: PNGs of the operator window and each panel in ``docs/screenshots/``.

Runs the real app (composition root, daemon child with tiny random-weight models, status
WebSocket, style router over two fake ComfyUI instances and one that is down), drives load so
the VAE pool scales up, the prompt cache is hit and a render streams progress, lets the graph
fill for ~25 s, then grabs the window, each dashboard panel, the log tab and the settings
dialog, then the Templates tab (:mod:`scripts.template_screenshots`). Offscreen by default (``QT_QPA_PLATFORM=offscreen``); under Xvfb it grabs the real
window. Run from the repository root: ``python -m scripts.screenshots [OUT_DIR]``.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("LUNA_HOME", tempfile.mkdtemp(prefix="luna-screenshots-"))

from PySide6.QtWidgets import QWidget

from app.bootstrap import build_operator
from app.gui.app import application, run_on_qt_loop
from app.gui.widgets.settings_dialog import SettingsDialog
from scripts.story_screenshots import take_story
from scripts.template_screenshots import take_template_shots
from tests.helpers.fake_comfyui import txt2img_prompt
from tests.helpers.operator_scene import GIB, clip_prompts, operator_scene, vae_burst

FILL_SECONDS = 25.0


def save(widget: QWidget, path: Path) -> None:
    # No processEvents() here: this runs inside a task on the qasync loop (re-entering it
    # breaks asyncio); grab() renders the widget synchronously anyway.
    if not widget.grab().save(str(path)):
        raise SystemExit(f"could not write {path}")
    print(f"wrote {path}")


async def take(out_dir: Path) -> int:
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="luna-shots-") as tmp:
        async with operator_scene(Path(tmp), render_delay=90.0) as scene:
            operator = build_operator(scene.settings, scene.options)
            window, widgets = operator.window, operator.widgets
            window.resize(1500, 980)
            window.show()
            await operator.start()
            ready = await operator.supervisor.supervisor.wait_up(60)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + FILL_SECONDS

            async def wander_vram() -> None:  # the fakes' VRAM moves like a GPU under work
                step = 0
                while loop.time() < deadline:
                    for index, fake in enumerate(scene.fakes):
                        fake.vram_free = int((12 - 4 * index + 2.5 * ((step + 2 * index) % 4)) * GIB)
                    step += 1
                    await asyncio.sleep(1.0)

            async def pools_scaled_up() -> None:
                # Grab the pool cards while the VAE pool has all its workers (the next status after
                # the scale-up that reached the maximum).
                scaled = loop.create_future()

                def on_status(status) -> None:
                    if status.vae_pool.active_workers == status.vae_pool.max_workers and not scaled.done():
                        scaled.set_result(None)

                operator.feed.status_received.connect(on_status)
                try:
                    await asyncio.wait_for(scaled, 30)
                finally:
                    operator.feed.status_received.disconnect(on_status)
                save(widgets.vae_card, out_dir / "vae_pool.png")
                save(widgets.clip_card, out_dir / "clip_pool.png")

            async def load() -> None:
                await clip_prompts(ready, ("a lighthouse at dusk", "a lighthouse at dusk", "a red fox"))
                await vae_burst(ready, clients=8, rounds=4)
                await asyncio.sleep(8.0)
                await asyncio.gather(vae_burst(ready, clients=8, rounds=6), pools_scaled_up())
                await clip_prompts(ready, ("a red fox", "a lighthouse at dusk"))

            render = asyncio.create_task(
                operator.instances.router.run(txt2img_prompt(steps=20), style="anime")
            )
            await asyncio.gather(wander_vram(), load())
            window.show_tab("dashboard")
            save(window, out_dir / "main_window.png")
            save(widgets.daemon_card, out_dir / "daemon_card.png")
            save(widgets.vram_plot, out_dir / "vram_graph.png")
            save(widgets.timeline.parentWidget(), out_dir / "scaling_timeline.png")
            save(widgets.timeline.list.parentWidget(), out_dir / "scaling_events.png")
            save(widgets.instances, out_dir / "instances_table.png")
            window.show_tab("log")
            save(window, out_dir / "daemon_log.png")
            dialog = SettingsDialog(operator.settings, window)
            dialog.resize(900, 560)
            dialog.show()
            save(dialog, out_dir / "settings_dialog.png")
            dialog.tabs.setCurrentIndex(1)
            save(dialog, out_dir / "settings_instances.png")
            dialog.close()
            render.cancel()
            await asyncio.gather(render, return_exceptions=True)
            await take_story(operator, scene.fakes, out_dir, save)
            await take_template_shots(operator, scene.fakes[1], "comfyui-realistic", out_dir, save)
            await operator.aclose()
            operator.window.allow_close()
    return 0


def main() -> int:
    out_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("docs/screenshots")
    application()
    return run_on_qt_loop(take(out_dir))


if __name__ == "__main__":
    sys.exit(main())
