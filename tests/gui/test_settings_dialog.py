"""The settings dialog: an invalid field keeps it open, names the field and focuses it."""

from __future__ import annotations

import pytest
from PySide6.QtWidgets import QTableWidgetItem

from app.gui.widgets.settings_dialog import SettingsDialog
from app.services.settings import OperatorSettings

pytestmark = pytest.mark.gui


def test_an_invalid_pool_limit_is_named_and_focused(qtbot):
    dialog = SettingsDialog(OperatorSettings())
    qtbot.addWidget(dialog)
    dialog.show()
    dialog.tabs.setCurrentIndex(2)
    dialog.min_vae.setValue(5)
    dialog.max_vae.setValue(2)
    dialog.accept()
    assert dialog.isVisible() and dialog.accepted_settings is None
    assert dialog.error_label.text().startswith("daemon.min_vae_workers:")
    assert dialog.tabs.currentIndex() == 0
    assert dialog.focusWidget() is dialog.min_vae


def test_an_invalid_instance_url_is_named(qtbot):
    dialog = SettingsDialog(OperatorSettings())
    qtbot.addWidget(dialog)
    dialog.instances.setItem(1, 1, QTableWidgetItem("box:8189"))
    dialog.accept()
    assert dialog.error_label.text().startswith("instances[1].url:")
    assert dialog.tabs.currentIndex() == 1


def test_valid_edits_become_the_accepted_settings(qtbot):
    dialog = SettingsDialog(OperatorSettings())
    qtbot.addWidget(dialog)
    dialog.port.setValue(29283)
    dialog.precision.setCurrentText("fp16")
    dialog.instances.setItem(0, 3, QTableWidgetItem("Authorization: Bearer abc"))
    dialog.output_dir.setText("/renders")
    with qtbot.waitSignal(dialog.accepted, timeout=1000):
        dialog.accept()
    settings = dialog.accepted_settings
    assert settings.daemon.port == 29283 and settings.daemon.precision == "fp16"
    assert settings.instances.instances[0].headers == {"Authorization": "Bearer abc"}
    assert settings.paths.output_dir == "/renders"
    assert dialog.port.specialValueText() == "0 (any free port)"
