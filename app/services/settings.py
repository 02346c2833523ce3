"""The operator's settings: daemon launch options, ComfyUI instances, paths; load, validate, save.

Owns the files the settings dialog writes, all in the user config dir
(:func:`app.paths.user_dirs`, so ``LUNA_HOME`` moves them):

* ``operator.json`` — daemon launch options (ports, device, precision, pool limits, model sets)
  and paths, as written by :func:`save_settings`;
* ``instances.toml`` — the ComfyUI instances, the same file the ``luna`` CLI reads
  (:func:`app.comfy.instances.load_instances`), so the CLI and the app never disagree;
* ``daemon.toml`` — generated from the daemon options on every save and handed to the daemon
  child with ``--config`` (the daemon validates it again; one format, one parser).

Validation reuses the owners' own rules: the daemon's :func:`daemon.config.build_config` and
:class:`app.comfy.instances.InstanceConfig`. Every problem raises :class:`SettingsError` whose
``field`` names the offending setting (``daemon.max_vae_workers``, ``instances[2].url``).
Pure Python, any thread; file I/O is small and synchronous.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from app.comfy.instances import (
    INSTANCES_FILE,
    InstanceConfig,
    InstanceConfigError,
    InstancesConfig,
    default_instances,
    load_instances,
)
from app.paths import user_dirs
from daemon.config import ConfigError, DaemonConfig, build_config

SETTINGS_FILE = "operator.json"
DAEMON_CONFIG_FILE = "daemon.toml"
SETTINGS_VERSION = 1

#: DaemonSettings field → the daemon's TOML key (``section.key``), for validation and daemon.toml.
DAEMON_KEYS: dict[str, str] = {
    "host": "network.host",
    "port": "network.port",
    "ws_port": "network.ws_port",
    "device": "daemon.device",
    "precision": "daemon.precision",
    "min_vae_workers": "scaling.min_vae_workers",
    "max_vae_workers": "scaling.max_vae_workers",
    "min_clip_workers": "scaling.min_clip_workers",
    "max_clip_workers": "scaling.max_clip_workers",
}
MODEL_KEYS = ("vae", "clip_l", "clip_g", "checkpoint")


class SettingsError(ValueError):
    """A setting is invalid or a settings file is unreadable; ``field`` names the setting."""

    def __init__(self, field_name: str, message: str):
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
        self.message = message


@dataclass(frozen=True)
class ModelSet:
    """One named set of model files the daemon loads (``[models.NAME]`` in daemon.toml)."""

    name: str
    vae: str = ""
    clip_l: str = ""
    clip_g: str = ""
    checkpoint: str = ""


@dataclass(frozen=True)
class DaemonSettings:
    """How the app launches (or finds) its daemon child."""

    host: str = "127.0.0.1"
    port: int = 19283
    ws_port: int = 19284
    device: str = "auto"
    precision: str = "bf16"
    min_vae_workers: int = 1
    max_vae_workers: int = 4
    min_clip_workers: int = 1
    max_clip_workers: int = 2
    model_sets: tuple[ModelSet, ...] = ()
    autostart: bool = True

    def overrides(self) -> dict[str, Any]:
        """The flat ``section.key`` mapping the daemon's config builder takes."""
        flat: dict[str, Any] = {key: getattr(self, name) for name, key in DAEMON_KEYS.items()}
        for model_set in self.model_sets:
            flat[f"models.{model_set.name}"] = True
            for kind in MODEL_KEYS:
                value = getattr(model_set, kind)
                if value:
                    flat[f"models.{model_set.name}.{kind}"] = value
        return flat


@dataclass(frozen=True)
class PathSettings:
    """Folders the operator picks (empty = the default under the user data dir)."""

    output_dir: str = ""
    models_dir: str = ""

    def resolved_output_dir(self) -> Path:
        return Path(self.output_dir).expanduser() if self.output_dir else user_dirs().data / "renders"


@dataclass(frozen=True)
class OperatorSettings:
    """Everything the settings dialog edits."""

    daemon: DaemonSettings = field(default_factory=DaemonSettings)
    instances: InstancesConfig = field(default_factory=default_instances)
    paths: PathSettings = field(default_factory=PathSettings)


def validate(settings: OperatorSettings) -> DaemonConfig:
    """Check every field; returns the daemon config the child will run with."""
    names = {model_set.name for model_set in settings.daemon.model_sets}
    if len(names) != len(settings.daemon.model_sets):
        raise SettingsError("daemon.model_sets", "two model sets share a name")
    try:
        config = build_config(settings.daemon.overrides(), source="operator settings")
    except ConfigError as exc:
        raise SettingsError(_daemon_field(exc.key), str(exc).split(": ", 2)[-1]) from None
    seen: set[str] = set()
    for index, instance in enumerate(settings.instances.instances):
        if not instance.name.strip():
            raise SettingsError(f"instances[{index}].name", "must not be empty")
        if instance.name in seen:
            raise SettingsError(f"instances[{index}].name", f"{instance.name!r} is used twice")
        seen.add(instance.name)
    styles = {style for instance in settings.instances.instances for style in instance.styles}
    if settings.instances.instances and settings.instances.default_style not in styles:
        raise SettingsError(
            "instances.default_style", f"{settings.instances.default_style!r} is served by no instance"
        )
    return config


def _daemon_field(key: str) -> str:
    for name, daemon_key in DAEMON_KEYS.items():
        if daemon_key == key:
            return f"daemon.{name}"
    if key.startswith("models."):
        return "daemon.model_sets." + key.removeprefix("models.")
    return f"daemon.{key}"


def make_instance(index: int, name: str, url: str, styles: str | list[str], headers: Mapping[str, str]):
    """An :class:`InstanceConfig` from dialog fields; SettingsError names ``instances[index].…``."""
    if isinstance(styles, str):
        styles = [part.strip() for part in styles.split(",") if part.strip()]
    try:
        return InstanceConfig(name=name.strip(), base_url=url.strip(), styles=tuple(styles), headers=headers)
    except InstanceConfigError as exc:
        text = str(exc)
        field_name = "headers" if "header" in text else "url"
        raise SettingsError(f"instances[{index}].{field_name}", text) from None


# ------------------------------------------------------------------------------------- files


def settings_path(config_dir: Path | None = None) -> Path:
    return (config_dir or user_dirs().config) / SETTINGS_FILE


def daemon_config_path(config_dir: Path | None = None) -> Path:
    return (config_dir or user_dirs().config) / DAEMON_CONFIG_FILE


def load_settings(config_dir: Path | None = None) -> OperatorSettings:
    """Read the settings (defaults where a file is missing); SettingsError for a broken file."""
    config_dir = config_dir or user_dirs().config
    path = settings_path(config_dir)
    daemon = DaemonSettings()
    paths = PathSettings()
    if path.exists():
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise SettingsError(str(path), f"cannot read: {exc}") from None
        if not isinstance(raw, dict):
            raise SettingsError(str(path), "must hold a JSON object")
        daemon = _daemon_from_json(raw.get("daemon", {}))
        paths = _dataclass_from_json(PathSettings, raw.get("paths", {}), "paths")
    try:
        instances = load_instances(config_dir / INSTANCES_FILE)
    except InstanceConfigError as exc:
        raise SettingsError("instances", str(exc)) from None
    settings = OperatorSettings(daemon=daemon, instances=instances, paths=paths)
    validate(settings)
    return settings


def _daemon_from_json(raw: Any) -> DaemonSettings:
    if not isinstance(raw, dict):
        raise SettingsError("daemon", "must be an object")
    raw = dict(raw)
    sets = raw.pop("model_sets", [])
    if not isinstance(sets, list):
        raise SettingsError("daemon.model_sets", "must be a list")
    model_sets = tuple(
        _dataclass_from_json(ModelSet, entry, f"daemon.model_sets[{index}]")
        for index, entry in enumerate(sets)
    )
    return replace(_dataclass_from_json(DaemonSettings, raw, "daemon"), model_sets=model_sets)


def _dataclass_from_json(cls: type, raw: Any, where: str):
    if not isinstance(raw, dict):
        raise SettingsError(where, "must be an object")
    defaults = cls() if cls is not ModelSet else None
    values: dict[str, Any] = {}
    for name in cls.__dataclass_fields__:
        if name not in raw or name == "model_sets":
            continue
        value = raw[name]
        expected = type(getattr(defaults, name)) if defaults is not None else str
        if (expected is int and isinstance(value, bool)) or not isinstance(value, expected):
            raise SettingsError(f"{where}.{name}", f"must be {expected.__name__}, got {value!r}")
        values[name] = value
    unknown = set(raw) - set(cls.__dataclass_fields__)
    if unknown:
        raise SettingsError(f"{where}.{sorted(unknown)[0]}", "unknown setting")
    if cls is ModelSet and "name" not in values:
        raise SettingsError(f"{where}.name", "is required")
    return cls(**values)


def save_settings(settings: OperatorSettings, config_dir: Path | None = None) -> None:
    """Validate, then write operator.json, instances.toml and daemon.toml atomically."""
    validate(settings)
    config_dir = config_dir or user_dirs().config
    config_dir.mkdir(parents=True, exist_ok=True)
    body = {
        "version": SETTINGS_VERSION,
        "daemon": asdict(settings.daemon),
        "paths": asdict(settings.paths),
    }
    _atomic_write(settings_path(config_dir), json.dumps(body, indent=2) + "\n")
    _atomic_write(config_dir / INSTANCES_FILE, instances_toml(settings.instances))
    _atomic_write(daemon_config_path(config_dir), daemon_toml(settings.daemon))


def write_daemon_config(daemon: DaemonSettings, config_dir: Path | None = None) -> Path:
    """Write daemon.toml for the child (also when nothing was saved yet) and return its path."""
    path = daemon_config_path(config_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(path, daemon_toml(daemon))
    return path


def _toml_value(value: Any) -> str:
    # A JSON string/number/bool is also a valid TOML basic string/number/bool.
    return json.dumps(value, ensure_ascii=False)


def daemon_toml(daemon: DaemonSettings) -> str:
    """The daemon's TOML config for these settings (see ``resources/daemon.example.toml``)."""
    sections: dict[str, list[str]] = {}
    for name, key in DAEMON_KEYS.items():
        section, option = key.split(".")
        sections.setdefault(section, []).append(f"{option} = {_toml_value(getattr(daemon, name))}")
    lines = ["# Written by the Luna operator app from its settings; edit them there."]
    for section, entries in sections.items():
        lines += ["", f"[{section}]", *entries]
    for model_set in daemon.model_sets:
        lines += ["", f"[models.{model_set.name}]"]
        lines += [
            f"{kind} = {_toml_value(getattr(model_set, kind))}"
            for kind in MODEL_KEYS
            if getattr(model_set, kind)
        ]
    return "\n".join(lines) + "\n"


def instances_toml(config: InstancesConfig) -> str:
    """``instances.toml`` in the format :func:`app.comfy.instances.load_instances` reads."""
    lines = [
        "# ComfyUI instances (written by the Luna operator app; the luna CLI reads it too).",
        f"default_style = {_toml_value(config.default_style)}",
    ]
    for instance in config.instances:
        lines += ["", "[[instances]]", f"name = {_toml_value(instance.name)}"]
        lines.append(f"url = {_toml_value(instance.base_url)}")
        lines.append(f"styles = [{', '.join(_toml_value(style) for style in instance.styles)}]")
        if instance.headers:
            pairs = ", ".join(f"{_toml_value(k)} = {_toml_value(v)}" for k, v in instance.headers.items())
            lines.append(f"headers = {{ {pairs} }}")
        if instance.api_prefix != "/api":
            lines.append(f"api_prefix = {_toml_value(instance.api_prefix)}")
    return "\n".join(lines) + "\n"


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
