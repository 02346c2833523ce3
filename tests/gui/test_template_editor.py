"""The Templates tab of the real operator window, over the real template library (files under
LUNA_HOME), the real style router and render service, and the fake ComfyUI over real HTTP.
No daemon child: the editor does not need one. Waits on Qt signals on the qasync loop."""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import replace

import pytest
from PySide6.QtWidgets import QComboBox

from app.bootstrap import build_operator
from app.comfy.templates import load_template, user_workflows_dir
from app.gui.widgets.template_editor.mapping_table import COLUMNS
from tests.gui.conftest import wait_signal, wait_until
from tests.helpers.operator_scene import operator_scene
from tests.helpers.ui_workflows import default_ui_workflow

pytestmark = [pytest.mark.gui, pytest.mark.integration]


@contextlib.asynccontextmanager
async def editor(tmp_path, qtbot, **scene_options):
    async with operator_scene(tmp_path, instances=1, with_down_instance=False, **scene_options) as scene:
        operator = build_operator(scene.settings, replace(scene.options, autostart_daemon=False))
        qtbot.addWidget(operator.window)
        operator.window.show_tab("templates")
        adapter, panel = operator.templates, operator.widgets.templates
        await operator.start()
        await wait_until(
            lambda: bool(adapter.instances) and adapter.instances[0][1] == "healthy",
            adapter.instances_changed,
        )
        try:
            yield operator, adapter, panel, scene.fakes[0]
        finally:
            await operator.aclose()


def combo(panel, param: str, column: str) -> QComboBox:
    widget = panel.mapping.cellWidget(panel.mapping.row_of(param), COLUMNS.index(column))
    assert isinstance(widget, QComboBox)
    return widget


def test_duplicate_remap_validate_shows_errors_on_their_rows_then_a_test_render_shows_the_image(
    qloop, qtbot, tmp_path
):
    async def scenario() -> None:
        async with editor(tmp_path, qtbot, render_delay=0.3) as (operator, adapter, panel, fake):
            panel.library.select("sdxl_txt2img")
            panel.library.ask_text = lambda _title, _label, _initial: "my_txt2img"
            panel.library.buttons["duplicate"].click()
            assert adapter.document.name == "my_txt2img" and not adapter.document.read_only
            assert "your template" in panel.title.text() and panel.save_button.isEnabled()

            # Remap "steps" onto the sampler's cfg input with the two pickers (cfg unmapped first).
            panel.mapping.pick("cfg", None)
            node = combo(panel, "steps", "Node")
            node.setCurrentIndex(node.findData("4"))  # another node first: the input follows it
            assert combo(panel, "steps", "Input").currentText() == "ckpt_name"
            node = combo(panel, "steps", "Node")
            node.setCurrentIndex(node.findData("3"))
            combo(panel, "steps", "Input").setCurrentText("cfg")
            assert adapter.document.row("steps").binding.input == "cfg"
            panel.mapping.set_default("steps", "500")
            assert panel.mapping.status_text("steps") == "✔ mapped"

            panel.test_render.validate_button.click()
            (view,) = await wait_signal(adapter.validation_finished)
            assert not view.ok
            steps = panel.mapping.status_text("steps")
            assert steps.startswith("✖ on the instance:") and "500 is above the maximum 100.0" in steps
            checkpoint = panel.mapping.status_text("checkpoint")
            assert "'sd_xl_base_1.0.safetensors' is not offered by this instance" in checkpoint
            assert "'tiny_sd15.safetensors'" in checkpoint  # the error lists what to pick instead
            assert panel.mapping.status_text("positive") == "✔ mapped"
            assert "above the maximum" in panel.nodes.input_item("3", "cfg").text(3)
            assert panel.nodes.input_item("3", "model").text(1) == "→ #4 Load Checkpoint [output 0]"
            assert "error(s) on comfyui-anime" in panel.test_render.progress_text.text()

            panel.mapping.set_default("steps", "5")
            panel.mapping.set_default("checkpoint", "tiny_sd15.safetensors")
            assert "on the instance" not in panel.mapping.status_text("checkpoint")  # stale errors cleared
            panel.test_render.validate_button.click()
            (view,) = await wait_signal(adapter.validation_finished)
            assert view.ok, [i.describe() for i in view.report.errors]

            views = []
            adapter.render_progress.connect(views.append)
            panel.test_render.fields["positive"].setText("a red fox in the snow")
            panel.test_render.fields["seed"].setText("1234")
            panel.test_render.render_button.click()
            (outcome,) = await wait_signal(adapter.render_finished, timeout=60)
            assert not panel.test_render.image.pixmap().isNull()
            assert (
                "total" in panel.test_render.result_text.text()
                and "seed 1234" in panel.test_render.result_text.text()
            )
            assert outcome.files[0].path.is_file()
            assert any(v.maximum > 1 and "step" in v.text for v in views)  # sampler steps on the bar
            submitted = fake.prompts[-1].prompt
            assert submitted["3"]["inputs"]["cfg"] == 5  # the remapped parameter's default
            assert submitted["6"]["inputs"]["text"] == "a red fox in the snow"
            assert submitted["3"]["inputs"]["seed"] == 1234

            panel.save_button.click()
            saved = load_template(user_workflows_dir() / "my_txt2img.json").injection_map.params
            assert saved["steps"].bindings[0].input == "cfg" and "cfg" not in saved
            assert "unsaved" not in panel.title.text()

    qloop.run_until_complete(asyncio.wait_for(scenario(), 120))


def test_shipped_templates_are_read_only_and_offer_duplicate_to_edit(qloop, qtbot, tmp_path):
    async def scenario() -> None:
        async with editor(tmp_path, qtbot) as (_operator, adapter, panel, _fake):
            panel.library.select("sdxl_txt2img")
            assert (
                not panel.library.buttons["rename"].isEnabled()
                and not panel.library.buttons["delete"].isEnabled()
            )
            panel.library.buttons["open"].click()
            assert adapter.document.read_only
            assert "shipped, read-only" in panel.title.text()
            assert not panel.banner.isHidden() and "Duplicate to edit" in panel.banner.text()
            assert not panel.save_button.isEnabled() and not panel.add_button.isEnabled()
            assert not combo(panel, "steps", "Node").isEnabled()
            default = panel.mapping.item(panel.mapping.row_of("steps"), COLUMNS.index("Default"))
            assert not default.flags() & default.flags().ItemIsEditable

            panel.library.ask_text = lambda *_args: "mine"
            panel.duplicate_button.click()
            assert adapter.document.name == "mine" and not adapter.document.read_only
            assert panel.save_button.isEnabled()

    qloop.run_until_complete(asyncio.wait_for(scenario(), 60))


def test_an_invalid_map_is_saved_only_as_a_draft_with_its_problems_on_the_rows(qloop, qtbot, tmp_path):
    async def scenario() -> None:
        async with editor(tmp_path, qtbot) as (_operator, adapter, panel, _fake):
            adapter.duplicate("sdxl_txt2img", "mine")
            map_file = user_workflows_dir() / "mine.luna.toml"
            before = map_file.read_bytes()
            panel.library.ask_text = lambda *_args: "mood text"
            panel.add_button.click()
            assert panel.mapping.status_text("mood").startswith("✖ not bound")
            assert "problem(s) in the map" in panel.banner.text()
            panel.save_button.click()
            assert map_file.read_bytes() == before
            assert adapter.library.entry("mine").has_draft
            assert "draft" in panel.title.text() and not panel.discard_button.isHidden()
            assert "saved as a draft: 1 problem(s)" in operator_notice(adapter)

            panel.library.buttons["open"].click()  # reopening brings the draft back
            assert adapter.document.from_draft and "mood" in [r.name for r in adapter.document.rows]
            panel.mapping.pick("mood", "9", "filename_prefix")
            panel.mapping.pick("filename_prefix", None)
            panel.mapping.selectRow(panel.mapping.row_of("filename_prefix"))
            panel.remove_button.click()
            panel.save_button.click()
            assert not adapter.library.entry("mine").has_draft
            assert "mood" in load_template(user_workflows_dir() / "mine.json").injection_map.params

    qloop.run_until_complete(asyncio.wait_for(scenario(), 60))


def operator_notice(adapter) -> str:
    return adapter._messages.history[-1].text


def test_import_a_ui_format_workflow_converted_with_the_instances_object_info(qloop, qtbot, tmp_path):
    async def scenario() -> None:
        async with editor(tmp_path, qtbot) as (_operator, adapter, panel, fake):
            dialog = panel.show_import()
            dialog.name.setText("from_ui")
            dialog.text.setPlainText(json.dumps(default_ui_workflow()))
            assert dialog.instance.currentData() == "comfyui-anime"
            before = fake.request_count("/object_info")
            dialog.accept_import()
            await wait_until(lambda: adapter.document is not None, adapter.document_changed)
            assert fake.request_count("/object_info") > before
            document = adapter.document
            assert document.name == "from_ui" and document.workflow["3"]["class_type"] == "KSampler"
            assert panel.mapping.cell_text("positive", "Node") == "#6 Positive (CLIPTextEncode)"
            assert panel.mapping.cell_text("seed", "Input") == "seed"
            assert "detected from the graph" in panel.banner.text()
            assert (user_workflows_dir() / "from_ui.json").is_file()
            assert dialog.result() == dialog.DialogCode.Accepted

            # A refused import keeps the dialog and the pasted text, and says why.
            again = panel.show_import()
            again.name.setText("from_ui")
            again.text.setPlainText(json.dumps(default_ui_workflow()))
            again.accept_import()
            await wait_signal(adapter.import_finished)
            assert again.isVisible() and again.text.toPlainText()
            assert "Not imported: a template named 'from_ui' exists already" in again.hint.text()
            again.reject()

            # Without an instance the UI format is refused, saying what to do.
            adapter.import_text("again", json.dumps(default_ui_workflow()), None)
            await wait_until(
                lambda: "choose an instance" in operator_notice(adapter), adapter._messages.posted
            )
            assert not (user_workflows_dir() / "again.json").exists()

    qloop.run_until_complete(asyncio.wait_for(scenario(), 60))


def test_a_node_failing_during_the_test_render_is_shown_on_its_rows_and_cancel_stops_a_render(
    qloop, qtbot, tmp_path
):
    async def scenario() -> None:
        async with editor(tmp_path, qtbot, render_delay=0.2) as (_operator, adapter, panel, fake):
            adapter.duplicate("sdxl_txt2img", "mine")
            panel.mapping.set_default("checkpoint", "tiny_sd15.safetensors")
            fake.fail_on(node="3", exception_type="torch.OutOfMemoryError", message="CUDA out of memory")
            panel.test_render.render_button.click()
            (failure,) = await wait_signal(adapter.render_failed, timeout=60)
            assert "failed on comfyui-anime" in failure.message
            assert (
                "failed while running: torch.OutOfMemoryError: CUDA out of memory"
                in panel.mapping.status_text("steps")
            )
            assert "CUDA out of memory" in panel.nodes.topLevelItem(0).text(3)  # node #3, first in the table
            assert panel.test_render.progress_text.text().startswith("✖")
            assert panel.test_render.render_button.isEnabled()

            fake.pause()  # the next job stays running until cancelled
            panel.test_render.fields["seed"].setText("7")
            panel.test_render.render_button.click()
            await wait_signal(adapter.render_started)
            await wait_until(lambda: panel.test_render.cancel_button.isEnabled(), adapter.render_progress)
            panel.test_render.cancel_button.click()
            (failure,) = await wait_signal(adapter.render_failed, timeout=30)
            fake.resume()
            assert "cancelled" in failure.message
            assert (
                panel.test_render.render_button.isEnabled()
                and not panel.test_render.cancel_button.isEnabled()
            )

    qloop.run_until_complete(asyncio.wait_for(scenario(), 120))


def test_opening_another_template_keeps_unsaved_edits_as_a_draft(qloop, qtbot, tmp_path):
    async def scenario() -> None:
        async with editor(tmp_path, qtbot) as (_operator, adapter, panel, _fake):
            adapter.duplicate("sdxl_txt2img", "mine")
            panel.mapping.set_default("steps", "13")
            panel.nodes.edit_value("5", "width", "768")
            adapter.open("sdxl_img2img")
            assert adapter.library.entry("mine").has_draft
            assert "kept as its draft" in operator_notice(adapter)
            adapter.open("mine")
            assert adapter.document.from_draft and adapter.document.row("steps").default == "13"
            panel.mapping.set_default("steps", "14")
            adapter.open("mine")  # reopening the open template brings its unsaved edits back
            assert adapter.document.row("steps").default == "14"
            assert adapter.document.workflow["5"]["inputs"]["width"] == 768
            panel.discard_button.click()  # back to the saved template, nothing kept
            assert not adapter.document.from_draft and adapter.document.row("steps").default == ""
            assert not adapter.library.entry("mine").has_draft

    qloop.run_until_complete(asyncio.wait_for(scenario(), 60))


def test_rename_and_delete_from_the_library_and_loras_picked_by_node(qloop, qtbot, tmp_path):
    async def scenario() -> None:
        async with editor(tmp_path, qtbot) as (_operator, adapter, panel, _fake):
            adapter.duplicate("sdxl_txt2img", "first")
            lora = combo(panel, "loras", "Node")
            lora.setCurrentIndex(lora.findData(None))
            assert not adapter.document.row("loras").mapped
            lora = combo(panel, "loras", "Node")
            lora.setCurrentIndex(lora.findData("4"))
            assert panel.mapping.cell_text("loras", "Input") == "new loaders after it (model + CLIP)"
            panel.save()

            panel.library.select("first")
            panel.library.ask_text = lambda *_args: "second"
            panel.library.buttons["rename"].click()
            assert adapter.document.name == "second" and "second" in panel.title.text()
            assert [e.name for e in adapter.entries if e.origin == "user"] == ["second"]
            asked = []
            panel.library.confirm = lambda question: asked.append(question) or True
            panel.library.select("second")
            panel.library.buttons["delete"].click()
            assert "Delete the template 'second'" in asked[0]
            assert adapter.document is None and "No template open" in panel.title.text()
            assert not (user_workflows_dir() / "second.json").exists()
            assert not (user_workflows_dir() / "second.luna.toml").exists()

    qloop.run_until_complete(asyncio.wait_for(scenario(), 60))
