"""The daemon's configuration: frozen dataclasses, the TOML file format, CLI merging, validation.

Owns the one rule for settings: built-in defaults < TOML file (``--config``) < command-line
flags. Everything is validated before the daemon binds a port; a bad value raises
:class:`ConfigError` whose message names the offending key (``scaling.max_vae_workers``,
``models.pony.vae`` …), so start-up fails loudly instead of falling back silently (the old
daemon's bug). Pure Python (stdlib ``tomllib``); no torch, no I/O except reading the file.

TOML layout (see ``resources/daemon.example.toml``)::

    [daemon]   device, precision, load_models ("lazy" | "start"), status_interval,
               prompt_cache_size, log_level, max_queue, shutdown_grace
    [network]  host, port, ws_port, allowed_origins, token_file, require_token
    [scaling]  mode ("dynamic" | "static"), min/max_vae_workers, min/max_clip_workers,
               idle_timeout, scale_up_queue_threshold, scale_up_delay, safety_margin_gb,
               check_interval
    [models.NAME]  vae, clip_l, clip_g, checkpoint, embeddings_dir
"""

from __future__ import annotations

import ipaddress
import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any

DEFAULT_PORT = 19283
DEFAULT_WS_PORT = 19284
PRECISIONS = ("bf16", "fp16", "fp32")
LOAD_MODES = ("lazy", "start")
SCALING_MODES = ("dynamic", "static")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
MODEL_SET_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
DEVICE_SPEC = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


class ConfigError(ValueError):
    """The configuration is invalid; ``key`` names the offending setting."""

    def __init__(self, key: str, message: str):
        super().__init__(f"invalid config: {key}: {message}")
        self.key = key


@dataclass(frozen=True)
class NetworkConfig:
    """Where the daemon listens and who may talk to it."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    ws_port: int = DEFAULT_WS_PORT
    # Browser Origins allowed on the status WebSocket; clients without an Origin header
    # (Python, the app, ComfyUI's server side) are always allowed.
    allowed_origins: tuple[str, ...] = ()
    # None = "daemon.token" in the user config dir.
    token_file: Path | None = None
    # None = required exactly when ``host`` is not a loopback address.
    require_token: bool | None = None

    @property
    def is_loopback(self) -> bool:
        return is_loopback_host(self.host)

    @property
    def token_required(self) -> bool:
        return (not self.is_loopback) if self.require_token is None else self.require_token


@dataclass(frozen=True)
class PoolLimits:
    """Worker-count bounds of one pool."""

    min_workers: int
    max_workers: int


@dataclass(frozen=True)
class ScalingConfig:
    """Worker pools: static (one worker each) or dynamic with these thresholds."""

    dynamic: bool = True
    vae: PoolLimits = PoolLimits(1, 4)
    clip: PoolLimits = PoolLimits(1, 2)
    idle_timeout: float = 60.0
    # Add a worker when the queue holds MORE than this many waiting requests…
    scale_up_queue_threshold: int = 1
    # …continuously for this long (seconds), and free device memory allows it.
    scale_up_delay: float = 0.5
    safety_margin_gb: float = 1.0
    # How often the scaler looks at the queues (seconds).
    check_interval: float = 0.1


@dataclass(frozen=True)
class ModelSetConfig:
    """One named set of model files (``[models.NAME]``); paths are absolute after loading."""

    name: str
    vae: Path | None = None
    clip_l: Path | None = None
    clip_g: Path | None = None
    checkpoint: Path | None = None
    embeddings_dir: Path | None = None

    @property
    def has_vae(self) -> bool:
        return self.vae is not None or self.checkpoint is not None

    @property
    def has_clip(self) -> bool:
        return self.clip_l is not None or self.checkpoint is not None


@dataclass(frozen=True)
class DaemonConfig:
    """The whole effective configuration of one daemon process."""

    network: NetworkConfig = NetworkConfig()
    scaling: ScalingConfig = ScalingConfig()
    device: str = "auto"
    precision: str = "bf16"
    load_models: str = "lazy"
    status_interval: float = 1.0
    prompt_cache_size: int = 256
    max_queue: int = 256
    # Seconds a stop (SIGTERM, Ctrl+C, the shutdown op) gives the requests in flight; then they
    # are answered SHUTTING_DOWN and the process exits even if a model call is still running.
    shutdown_grace: float = 5.0
    log_level: str = "INFO"
    models: Mapping[str, ModelSetConfig] = field(default_factory=lambda: MappingProxyType({}))
    source: str = "defaults"

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly view (paths as strings) for logs and the status ``config`` field."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["network"] = asdict(self.network)
        out["scaling"] = asdict(self.scaling)
        out["models"] = {name: asdict(entry) for name, entry in self.models.items()}
        return _jsonable(out)


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


# ---------------------------------------------------------------------------------------------
# TOML reading


_SECTION_KEYS: dict[str, set[str]] = {
    "daemon": {
        "device",
        "precision",
        "load_models",
        "status_interval",
        "prompt_cache_size",
        "max_queue",
        "shutdown_grace",
        "log_level",
    },
    "network": {"host", "port", "ws_port", "allowed_origins", "token_file", "require_token"},
    "scaling": {
        "mode",
        "min_vae_workers",
        "max_vae_workers",
        "min_clip_workers",
        "max_clip_workers",
        "idle_timeout",
        "scale_up_queue_threshold",
        "scale_up_delay",
        "safety_margin_gb",
        "check_interval",
    },
}
_MODEL_KEYS = {"vae", "clip_l", "clip_g", "checkpoint", "embeddings_dir"}


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML file into flat overrides (``{"scaling.idle_timeout": 30.0, …}``).

    Unknown sections or keys are errors (a typo must not be ignored). Relative model paths are
    resolved against the file's directory.
    """
    p = Path(path).expanduser()
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ConfigError("--config", f"cannot read {p}: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError("--config", f"{p} is not valid TOML: {exc}") from None
    base = p.resolve().parent
    flat: dict[str, Any] = {}
    for section, body in data.items():
        if section == "models":
            if not isinstance(body, dict):
                raise ConfigError("models", "must be a table of [models.NAME] tables")
            for name, entry in body.items():
                if not isinstance(entry, dict):
                    raise ConfigError(f"models.{name}", "must be a table")
                for key, value in entry.items():
                    if key not in _MODEL_KEYS:
                        raise ConfigError(
                            f"models.{name}.{key}", f"unknown key (expected one of {sorted(_MODEL_KEYS)})"
                        )
                    if isinstance(value, str) and value:
                        value = str(base / Path(value).expanduser())
                    flat[f"models.{name}.{key}"] = value
                flat.setdefault(f"models.{name}", True)
            continue
        if section not in _SECTION_KEYS:
            raise ConfigError(
                section, f"unknown section (expected one of {sorted([*_SECTION_KEYS, 'models'])})"
            )
        if not isinstance(body, dict):
            raise ConfigError(section, "must be a table")
        for key, value in body.items():
            if key not in _SECTION_KEYS[section]:
                raise ConfigError(f"{section}.{key}", "unknown key")
            if key == "token_file" and isinstance(value, str) and value:
                value = str(base / Path(value).expanduser())
            flat[f"{section}.{key}"] = value
    return flat


# ---------------------------------------------------------------------------------------------
# Building and validating


def build_config(overrides: Mapping[str, Any] | None = None, *, source: str = "defaults") -> DaemonConfig:
    """Defaults updated by flat ``overrides`` (file first, then CLI), validated.

    Keys are ``section.key`` as in the TOML file; ``models.NAME.key`` for model sets.
    """
    values = dict(overrides or {})
    take = _Taker(values)

    network = NetworkConfig(
        host=take.text("network.host", "127.0.0.1", nonempty=True),
        port=take.port("network.port", DEFAULT_PORT),
        ws_port=take.port("network.ws_port", DEFAULT_WS_PORT),
        allowed_origins=take.origins("network.allowed_origins"),
        token_file=take.path("network.token_file"),
        require_token=take.optional_bool("network.require_token"),
    )
    if network.port != 0 and network.port == network.ws_port:
        raise ConfigError("network.ws_port", f"must differ from network.port ({network.port})")

    mode = take.choice("scaling.mode", "dynamic", SCALING_MODES)
    vae = PoolLimits(
        take.integer("scaling.min_vae_workers", 1, low=0, high=64),
        take.integer("scaling.max_vae_workers", 4, low=1, high=64),
    )
    clip = PoolLimits(
        take.integer("scaling.min_clip_workers", 1, low=0, high=64),
        take.integer("scaling.max_clip_workers", 2, low=1, high=64),
    )
    for pool_name, limits in (("vae", vae), ("clip", clip)):
        if limits.min_workers > limits.max_workers:
            raise ConfigError(
                f"scaling.min_{pool_name}_workers",
                f"{limits.min_workers} is above max_{pool_name}_workers ({limits.max_workers})",
            )
    scaling = ScalingConfig(
        dynamic=(mode == "dynamic"),
        vae=vae,
        clip=clip,
        idle_timeout=take.number("scaling.idle_timeout", 60.0, low=0.001),
        scale_up_queue_threshold=take.integer("scaling.scale_up_queue_threshold", 1, low=0, high=10_000),
        scale_up_delay=take.number("scaling.scale_up_delay", 0.5, low=0.0),
        safety_margin_gb=take.number("scaling.safety_margin_gb", 1.0, low=0.0),
        check_interval=take.number("scaling.check_interval", 0.1, low=0.001, high=60.0),
    )

    device = take.text("daemon.device", "auto").lower()
    if not DEVICE_SPEC.match(device):
        raise ConfigError("daemon.device", f"{device!r} is not one of auto, cpu, mps, cuda, cuda:N")

    models = _take_models(values)
    config = DaemonConfig(
        network=network,
        scaling=scaling,
        device=device,
        precision=take.choice("daemon.precision", "bf16", PRECISIONS),
        load_models=take.choice("daemon.load_models", "lazy", LOAD_MODES),
        status_interval=take.number("daemon.status_interval", 1.0, low=0.01, high=3600.0),
        prompt_cache_size=take.integer("daemon.prompt_cache_size", 256, low=0, high=1_000_000),
        max_queue=take.integer("daemon.max_queue", 256, low=1, high=1_000_000),
        shutdown_grace=take.number("daemon.shutdown_grace", 5.0, low=0.0, high=600.0),
        log_level=take.choice("daemon.log_level", "INFO", LOG_LEVELS, upper=True),
        models=MappingProxyType(models),
        source=source,
    )
    leftover = sorted(values)
    if leftover:
        raise ConfigError(leftover[0], "unknown setting")
    return config


def _take_models(values: dict[str, Any]) -> dict[str, ModelSetConfig]:
    names: list[str] = []
    for key in list(values):
        if key.startswith("models."):
            name = key.split(".")[1]
            if name not in names:
                names.append(name)
    take = _Taker(values)
    models: dict[str, ModelSetConfig] = {}
    for name in names:
        if not MODEL_SET_NAME.match(name):
            raise ConfigError(f"models.{name}", "set names use letters, digits, '_' and '-'")
        values.pop(f"models.{name}", None)
        entry = ModelSetConfig(
            name=name,
            vae=take.path(f"models.{name}.vae"),
            clip_l=take.path(f"models.{name}.clip_l"),
            clip_g=take.path(f"models.{name}.clip_g"),
            checkpoint=take.path(f"models.{name}.checkpoint"),
            embeddings_dir=take.path(f"models.{name}.embeddings_dir"),
        )
        if entry.clip_g is not None and entry.clip_l is None:
            raise ConfigError(f"models.{name}.clip_g", "an SDXL set needs clip_l as well")
        if entry.checkpoint is not None and (entry.clip_l or entry.clip_g) is not None:
            raise ConfigError(
                f"models.{name}.checkpoint",
                "give either checkpoint or clip_l/clip_g for the text encoder, not both",
            )
        if not (entry.has_vae or entry.has_clip):
            raise ConfigError(f"models.{name}", "names no model file (vae, clip_l, clip_g, checkpoint)")
        models[name] = entry
    return models


class _Taker:
    """Pops typed values out of the flat override dict, raising ConfigError that names the key."""

    def __init__(self, values: dict[str, Any]):
        self.values = values

    def _pop(self, key: str, default: Any) -> Any:
        return self.values.pop(key, default)

    def text(self, key: str, default: str, *, nonempty: bool = False) -> str:
        value = self._pop(key, default)
        if not isinstance(value, str):
            raise ConfigError(key, f"must be a string, got {type(value).__name__}")
        if nonempty and not value.strip():
            raise ConfigError(key, "must not be empty")
        return value.strip()

    def choice(self, key: str, default: str, options: tuple[str, ...], *, upper: bool = False) -> str:
        value = self.text(key, default)
        value = value.upper() if upper else value.lower()
        if value not in options:
            raise ConfigError(key, f"{value!r} is not one of {', '.join(options)}")
        return value

    def integer(self, key: str, default: int, *, low: int, high: int) -> int:
        value = self._pop(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, f"must be an integer, got {value!r}")
        if not low <= value <= high:
            raise ConfigError(key, f"{value} is outside {low}..{high}")
        return value

    def port(self, key: str, default: int) -> int:
        return self.integer(key, default, low=0, high=65535)

    def number(self, key: str, default: float, *, low: float, high: float = math.inf) -> float:
        value = self._pop(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(key, f"must be a number, got {value!r}")
        value = float(value)
        if not low <= value <= high:
            raise ConfigError(key, f"{value} is outside {low}..{high}")
        return value

    def optional_bool(self, key: str) -> bool | None:
        value = self._pop(key, None)
        if value is not None and not isinstance(value, bool):
            raise ConfigError(key, f"must be true or false, got {value!r}")
        return value

    def path(self, key: str) -> Path | None:
        value = self._pop(key, None)
        if value is None or value == "":
            return None
        if not isinstance(value, (str, Path)):
            raise ConfigError(key, f"must be a path string, got {value!r}")
        return Path(value).expanduser().resolve()

    def origins(self, key: str) -> tuple[str, ...]:
        value = self._pop(key, ())
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise ConfigError(key, "must be a list of origin strings such as 'http://localhost:3000'")
        for origin in value:
            if not re.match(r"^https?://[^/\s]+$", origin):
                raise ConfigError(key, f"{origin!r} is not an origin (scheme://host[:port])")
        return tuple(value)
