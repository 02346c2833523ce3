"""Operator settings: validation names the field, files round-trip and are read by their owners."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from app.comfy.instances import InstanceConfig, InstancesConfig, load_instances
from app.services.settings import (
    DaemonSettings,
    ModelSet,
    OperatorSettings,
    PathSettings,
    SettingsError,
    daemon_config_path,
    load_settings,
    make_instance,
    save_settings,
    settings_path,
    validate,
)
from daemon.config import build_config, load_config_file


def test_defaults_are_the_embedded_defaults_and_valid(luna_home):
    settings = load_settings()
    assert settings == OperatorSettings()
    config = validate(settings)
    assert (config.network.port, config.network.ws_port) == (19283, 19284)
    assert settings.instances.instances[0].base_url == "http://127.0.0.1:8188"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (dict(max_vae_workers=0), "daemon.max_vae_workers"),
        (dict(min_clip_workers=3, max_clip_workers=2), "daemon.min_clip_workers"),
        (dict(port=19284), "daemon.ws_port"),
        (dict(port=70000), "daemon.port"),
        (dict(device="gpu0"), "daemon.device"),
        (dict(precision="int8"), "daemon.precision"),
        (dict(host=""), "daemon.host"),
        (dict(model_sets=(ModelSet("bad name"),)), "daemon.model_sets.bad name"),
        (dict(model_sets=(ModelSet("sdxl", clip_g="/m/g.safetensors"),)), "daemon.model_sets.sdxl.clip_g"),
        (dict(model_sets=(ModelSet("a", vae="/v"), ModelSet("a", vae="/w"))), "daemon.model_sets"),
    ],
)
def test_an_invalid_daemon_setting_is_named(change, field):
    with pytest.raises(SettingsError) as caught:
        validate(OperatorSettings(daemon=replace(DaemonSettings(), **change)))
    assert caught.value.field == field


def test_an_invalid_instance_field_is_named():
    with pytest.raises(SettingsError) as caught:
        make_instance(2, "x", "ftp://box:21", "anime", {})
    assert caught.value.field == "instances[2].url"
    with pytest.raises(SettingsError) as caught:
        make_instance(0, "x", "http://box:8188", "anime", {"Origin": "http://a"})
    assert caught.value.field == "instances[0].headers"
    instances = InstancesConfig((InstanceConfig("a", "http://a:1", ("anime",)),), default_style="realistic")
    with pytest.raises(SettingsError) as caught:
        validate(OperatorSettings(instances=instances))
    assert caught.value.field == "instances.default_style"


def test_save_writes_three_files_their_owners_read_back(luna_home, tmp_path):
    vae = tmp_path / "vae.safetensors"
    settings = OperatorSettings(
        daemon=DaemonSettings(
            port=29283,
            ws_port=29284,
            device="cuda:1",
            precision="fp16",
            max_vae_workers=6,
            model_sets=(ModelSet("pony", vae=str(vae), clip_l='C:\\models\\clip "l".safetensors'),),
        ),
        instances=InstancesConfig(
            (
                InstanceConfig(
                    "gpu-box",
                    "https://box.example/comfy",
                    ("anime", "artistic"),
                    {"Authorization": "Bearer x"},
                ),
                InstanceConfig("old", "http://10.0.0.2:8188", ("realistic",), api_prefix=""),
            ),
            default_style="artistic",
        ),
        paths=PathSettings(output_dir=str(tmp_path / "out")),
    )
    save_settings(settings)
    assert load_settings() == settings
    # The luna CLI reads the same instances.toml, the daemon its daemon.toml.
    assert load_instances() == settings.instances
    flat = load_config_file(daemon_config_path())
    config = build_config(flat)
    assert config.network.port == 29283 and config.device == "cuda:1" and config.precision == "fp16"
    assert config.scaling.vae.max_workers == 6
    assert str(config.models["pony"].clip_l).endswith('clip "l".safetensors')
    assert json.loads(settings_path().read_text())["version"] == 1


def test_a_broken_settings_file_is_a_named_error(luna_home):
    path = settings_path()
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"daemon": {"port": "19283"}}))
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert caught.value.field == "daemon.port"
    path.write_text(json.dumps({"daemon": {"prot": 1}}))
    with pytest.raises(SettingsError, match="unknown setting") as caught:
        load_settings()
    assert caught.value.field == "daemon.prot"
    path.write_text("{")
    with pytest.raises(SettingsError, match="cannot read"):
        load_settings()


def test_save_refuses_invalid_settings_and_writes_nothing(luna_home):
    with pytest.raises(SettingsError):
        save_settings(OperatorSettings(daemon=DaemonSettings(max_vae_workers=0)))
    assert not settings_path().exists()
