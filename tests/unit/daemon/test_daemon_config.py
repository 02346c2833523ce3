"""Daemon config: defaults, TOML file, CLI precedence, validation naming the key, the CLI parser."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from daemon.__main__ import _with_default_command, build_parser, config_from_args, main
from daemon.config import ConfigError, build_config, load_config_file
from daemon.paths import resource_path


def parse(*argv: str) -> argparse.Namespace:
    parser = build_parser()
    return parser.parse_args(_with_default_command(list(argv), parser))


def test_defaults_match_the_issue():
    config = build_config()
    assert (config.network.host, config.network.port, config.network.ws_port) == ("127.0.0.1", 19283, 19284)
    assert (config.device, config.precision, config.load_models) == ("auto", "bf16", "lazy")
    assert config.scaling.dynamic and config.scaling.idle_timeout == 60.0
    assert (config.scaling.vae.min_workers, config.scaling.vae.max_workers) == (1, 4)
    assert (config.scaling.clip.min_workers, config.scaling.clip.max_workers) == (1, 2)
    assert config.status_interval == 1.0 and dict(config.models) == {}
    assert not config.network.token_required


def test_example_config_file_is_valid():
    config = build_config(load_config_file(resource_path("daemon.example.toml")))
    assert set(config.models) == {"default", "pony"}
    assert config.models["pony"].checkpoint.name == "ponyDiffusionV6XL.safetensors"
    assert config.models["default"].has_vae and config.models["default"].has_clip


def test_toml_file_with_model_sets_and_relative_paths(tmp_path):
    toml = tmp_path / "d.toml"
    toml.write_text(
        '[daemon]\ndevice = "cpu"\nprecision = "fp16"\n'
        '[network]\nport = 20000\nallowed_origins = ["http://localhost:3000"]\n'
        '[scaling]\nmode = "static"\n'
        '[models.default]\nvae = "vae.safetensors"\n'
        '[models.anime]\nclip_l = "/abs/clip_l.safetensors"\nclip_g = "/abs/clip_g.safetensors"\n'
    )
    config = build_config(load_config_file(toml))
    assert config.device == "cpu" and config.precision == "fp16" and config.network.port == 20000
    assert config.network.allowed_origins == ("http://localhost:3000",)
    assert not config.scaling.dynamic
    assert config.models["default"].vae == tmp_path / "vae.safetensors"
    assert config.models["anime"].clip_g == Path("/abs/clip_g.safetensors")


def test_cli_overrides_the_file_and_fills_the_default_set(tmp_path):
    toml = tmp_path / "d.toml"
    toml.write_text("[network]\nport = 20000\nws_port = 20001\n[scaling]\nidle_timeout = 30\n")
    config = config_from_args(
        parse(
            "--config",
            str(toml),
            "--port",
            "0",
            "--static",
            "--vae",
            "v.safetensors",
            "--max-vae-workers",
            "2",
        )
    )
    assert config.network.port == 0 and config.network.ws_port == 20001
    assert config.scaling.idle_timeout == 30.0 and not config.scaling.dynamic
    assert config.scaling.vae.max_workers == 2
    assert config.models["default"].vae == Path("v.safetensors").resolve()
    assert config.source.endswith("+ flags")


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"scaling.max_vae_workers": 0}, "scaling.max_vae_workers"),
        ({"scaling.min_clip_workers": 3}, "scaling.min_clip_workers"),
        ({"scaling.idle_timeout": -1}, "scaling.idle_timeout"),
        ({"scaling.mode": "turbo"}, "scaling.mode"),
        ({"daemon.precision": "int8"}, "daemon.precision"),
        ({"daemon.device": "gpu0"}, "daemon.device"),
        ({"network.port": 70000}, "network.port"),
        ({"network.port": 5000, "network.ws_port": 5000}, "network.ws_port"),
        ({"network.allowed_origins": ["localhost"]}, "network.allowed_origins"),
        ({"network.require_token": "yes"}, "network.require_token"),
        ({"models.x.clip_g": "g.safetensors"}, "models.x.clip_g"),
        ({"models.x.checkpoint": "c", "models.x.clip_l": "l"}, "models.x.checkpoint"),
        ({"models.bad name.vae": "v"}, "models.bad name"),
        ({"daemon.colour": "blue"}, "daemon.colour"),
        ({"daemon.shutdown_grace": -1}, "daemon.shutdown_grace"),
        ({"daemon.shutdown_grace": float("nan")}, "daemon.shutdown_grace"),
        ({"daemon.shutdown_grace": "5"}, "daemon.shutdown_grace"),
    ],
)
def test_invalid_values_name_the_key(overrides, key):
    with pytest.raises(ConfigError) as err:
        build_config(overrides)
    assert err.value.key == key and key in str(err.value)


def test_unknown_toml_section_or_key_and_broken_toml_are_errors(tmp_path):
    cases = {
        "[scalling]\nmode = 'static'\n": "scalling",
        "[scaling]\nmod = 'static'\n": "scaling.mod",
        "[models.a]\nvea = 'x'\n": "models.a.vea",
        "[daemon\n": "--config",
    }
    for text, key in cases.items():
        path = tmp_path / "c.toml"
        path.write_text(text)
        with pytest.raises(ConfigError) as err:
            build_config(load_config_file(path))
        assert err.value.key == key
    with pytest.raises(ConfigError, match="cannot read"):
        load_config_file(tmp_path / "missing.toml")


def test_token_required_off_loopback_unless_configured():
    assert build_config({"network.host": "0.0.0.0"}).network.token_required
    assert build_config({"network.host": "::1"}).network.token_required is False
    assert build_config({"network.require_token": True}).network.token_required


def test_cli_error_names_the_flag_and_exits_2(capsys):
    assert main(["--max-clip-workers", "0"]) == 2
    err = capsys.readouterr().err
    assert "--max-clip-workers (scaling.max_clip_workers)" in err


def test_serve_is_the_default_command_and_explicit_serve_works():
    assert parse("--port", "0").command == "serve"
    assert parse("serve", "--port", "0").port == 0
    assert parse().handler.__name__ == "run_serve"


def test_effective_config_is_json_friendly():
    import json

    config = build_config({"models.default.vae": "v.safetensors"})
    data = json.loads(json.dumps(config.to_dict()))
    assert data["models"]["default"]["vae"].endswith("v.safetensors")
    assert data["scaling"]["vae"] == {"min_workers": 1, "max_workers": 4}
