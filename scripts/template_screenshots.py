"""The Templates tab's screenshots for ``make screenshots`` (called by :mod:`scripts.screenshots`).

Drives the real editor of a running operator like an operator would: duplicates the shipped
``sdxl_txt2img``, remaps ``steps`` onto the sampler's cfg input with a default the instance
refuses, validates (errors on their rows, in the mapping and the node table), fixes the rows,
test-renders on a fake ComfyUI (grabbed mid-render and with the image), keeps a map with an
unbound custom parameter as a draft, shows a shipped template read-only, a pasted workflow
whose detected map has ambiguities, and the import dialog with a UI-format workflow. Runs on the qasync loop.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

from PySide6.QtWidgets import QWidget

from app.bootstrap import Operator
from tests.helpers.fake_comfyui import FakeComfyUI, txt2img_prompt
from tests.helpers.ui_workflows import default_ui_workflow


async def _next(signal, predicate: Callable[..., bool] = lambda *a: True, timeout: float = 60.0) -> tuple:
    done = asyncio.get_running_loop().create_future()

    def on_emit(*args) -> None:
        if not done.done() and predicate(*args):
            done.set_result(args)

    signal.connect(on_emit)
    try:
        return await asyncio.wait_for(done, timeout)
    finally:
        signal.disconnect(on_emit)


async def _settled() -> None:
    # Let Qt lay out what changed (the value fields, the image) before grabbing: the loop runs
    # Qt's posted events while this task waits.
    await asyncio.sleep(0.2)


async def take_template_shots(
    operator: Operator, fake: FakeComfyUI, instance: str, out_dir: Path, save: Callable[[QWidget, Path], None]
) -> None:
    window, adapter, panel = operator.window, operator.templates, operator.widgets.templates
    fake.render_delay, fake.image_size = 4.0, (256, 256)
    window.show_tab("templates")
    if not any(name == instance and health == "healthy" for name, health in adapter.instances):
        await _next(adapter.instances_changed, lambda rows: (instance, "healthy") in rows)
    panel.test_render.instance.setCurrentIndex(panel.test_render.instance.findData(instance))

    adapter.open("sdxl_txt2img")
    await _settled()
    save(window, out_dir / "templates_shipped.png")

    adapter.duplicate("sdxl_txt2img", "my_txt2img")
    panel.mapping.pick("cfg", None)
    panel.mapping.pick("steps", "3", "cfg")
    panel.mapping.set_default("steps", "500")
    panel.test_render.validate()
    await _next(adapter.validation_finished)
    await _settled()
    save(window, out_dir / "templates_validation.png")
    panel.tabs.setCurrentIndex(1)
    await _settled()
    save(window, out_dir / "templates_nodes.png")
    panel.tabs.setCurrentIndex(0)

    panel.mapping.pick("steps", "3", "steps")
    panel.mapping.set_default("steps", "24")
    panel.mapping.pick("cfg", "3", "cfg")
    panel.mapping.set_default("checkpoint", "sdxl_base.safetensors")
    panel.test_render.fields["positive"].setText("a lighthouse at dusk, oil painting")
    panel.test_render.fields["seed"].setText("1234")
    panel.test_render.render()
    await _next(adapter.render_progress, lambda view: view.maximum > 1 and view.value * 2 >= view.maximum)
    await _settled()
    save(window, out_dir / "templates_rendering.png")
    await _next(adapter.render_finished)
    adapter.save()
    await _settled()
    save(window, out_dir / "templates_test_render.png")

    adapter.document.add_custom("mood", "text")
    panel.save()
    await _settled()
    save(window, out_dir / "templates_draft.png")

    # A pasted API workflow with a hires-fix pass: the detected map flags the second sampler.
    hires = txt2img_prompt(width=832, height=1216)
    hires["10"] = {
        "class_type": "KSampler",
        "inputs": {**hires["3"]["inputs"], "latent_image": ["3", 0], "denoise": 0.45, "steps": 12},
        "_meta": {"title": "Hires fix"},
    }
    hires["8"]["inputs"]["samples"] = ["10", 0]
    adapter.import_text("hires_fix", json.dumps(hires))
    await _next(adapter.document_changed)
    await _settled()
    save(window, out_dir / "templates_imported.png")

    dialog = panel.show_import()
    dialog.name.setText("portrait_from_ui")
    dialog.text.setPlainText(json.dumps(default_ui_workflow(), indent=2))
    dialog.hint.setText(
        "A UI-format workflow (plain Save): it is converted with the chosen instance's /object_info."
    )
    await _settled()
    save(dialog, out_dir / "templates_import.png")
    dialog.reject()
