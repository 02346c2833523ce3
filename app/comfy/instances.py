"""Configuration of the ComfyUI instances Narrates renders on, and which styles each serves.

Owns :class:`InstanceConfig` (name, base URL on any host, styles, extra headers for reverse
proxies, API prefix), :class:`InstancesConfig` (the list + the fallback style), the default
table (8188 anime, 8189 realistic, 8190 semi_realistic, 8191 artistic; an unknown style goes
to 8188's style) and loading/validation of ``instances.toml`` from the user config directory::

    default_style = "anime"          # optional; the style unknown styles fall back to

    [[instances]]
    name = "anime-1"
    url = "http://gpu-box:8188"      # any host; https works, a path prefix works (reverse proxy)
    styles = ["anime"]
    headers = { Authorization = "Bearer ..." }   # optional, sent on HTTP and the WS upgrade
    api_prefix = "/api"              # optional; "" for ComfyUI builds older than 2023

Pure data + file reading, any thread.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from app.paths import user_dirs

INSTANCES_FILE = "instances.toml"
DEFAULT_STYLE_PORTS = {"anime": 8188, "realistic": 8189, "semi_realistic": 8190, "artistic": 8191}


class InstanceConfigError(ValueError):
    """``instances.toml`` is unreadable or invalid; the message names the file and the entry."""


@dataclass(frozen=True)
class InstanceConfig:
    """One ComfyUI server."""

    name: str
    base_url: str
    styles: tuple[str, ...] = ()
    headers: Mapping[str, str] = field(default_factory=dict)
    api_prefix: str = "/api"

    def __post_init__(self) -> None:
        parts = urlsplit(self.base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise InstanceConfigError(
                f"instance {self.name!r}: url {self.base_url!r} must be http(s)://host[:port][/path]"
            )
        if self.api_prefix and not self.api_prefix.startswith("/"):
            raise InstanceConfigError(f"instance {self.name!r}: api_prefix must start with '/' or be empty")
        for key, value in self.headers.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise InstanceConfigError(f"instance {self.name!r}: header {key!r} must be a string")
            if key.lower() == "origin":
                raise InstanceConfigError(
                    f"instance {self.name!r}: an Origin header makes ComfyUI answer 403; remove it"
                )
        object.__setattr__(self, "base_url", self.base_url.rstrip("/"))
        object.__setattr__(self, "styles", tuple(self.styles))
        object.__setattr__(self, "headers", dict(self.headers))

    @property
    def is_loopback(self) -> bool:
        """True for localhost/127.x/::1: such URLs never go through an environment proxy."""
        host = (urlsplit(self.base_url).hostname or "").lower()
        return host in ("localhost", "::1") or host.startswith("127.")

    @property
    def ws_url(self) -> str:
        """The ``/ws`` URL (``ws``/``wss`` by scheme), without the clientId query."""
        scheme = "wss" if self.base_url.startswith("https") else "ws"
        return f"{scheme}://{self.base_url.split('://', 1)[1]}/ws"


@dataclass(frozen=True)
class InstancesConfig:
    """All instances; ``default_style`` is where unknown styles are routed."""

    instances: tuple[InstanceConfig, ...]
    default_style: str = "anime"

    def __post_init__(self) -> None:
        names = [instance.name for instance in self.instances]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise InstanceConfigError(f"duplicate instance names: {', '.join(duplicates)}")
        if not self.instances:
            raise InstanceConfigError("no instances configured")

    @property
    def styles(self) -> tuple[str, ...]:
        seen: list[str] = []
        for instance in self.instances:
            seen.extend(style for style in instance.styles if style not in seen)
        return tuple(seen)

    def resolve_style(self, style: str | None) -> str:
        """The style actually used: ``style`` when some instance serves it, else the default."""
        if style and style in self.styles:
            return style
        return self.default_style

    def for_style(self, style: str | None) -> tuple[InstanceConfig, ...]:
        resolved = self.resolve_style(style)
        return tuple(instance for instance in self.instances if resolved in instance.styles)


def default_instances(host: str = "127.0.0.1") -> InstancesConfig:
    """The default table: one local instance per style, unknown styles → anime (port 8188)."""
    return InstancesConfig(
        tuple(
            InstanceConfig(f"comfyui-{style.replace('_', '-')}", f"http://{host}:{port}", (style,))
            for style, port in DEFAULT_STYLE_PORTS.items()
        ),
        default_style="anime",
    )


def parse_instances(data: Mapping[str, Any], *, source: str = "instances.toml") -> InstancesConfig:
    """Validate a decoded TOML document (see the module docstring for the format)."""
    raw = data.get("instances")
    if not isinstance(raw, list) or not raw:
        raise InstanceConfigError(f"{source}: needs at least one [[instances]] table")
    instances = []
    for index, entry in enumerate(raw, 1):
        where = f"{source}: instance #{index}"
        if not isinstance(entry, Mapping):
            raise InstanceConfigError(f"{where} is not a table")
        unknown = set(entry) - {"name", "url", "styles", "headers", "api_prefix"}
        if unknown:
            raise InstanceConfigError(f"{where}: unknown keys {sorted(unknown)}")
        url = entry.get("url")
        if not isinstance(url, str):
            raise InstanceConfigError(f"{where}: 'url' (string) is required")
        name = entry.get("name", url)
        styles = entry.get("styles", [])
        if isinstance(styles, str):
            styles = [styles]
        if not isinstance(styles, list) or not all(isinstance(s, str) and s for s in styles):
            raise InstanceConfigError(f"{where}: 'styles' must be a list of non-empty strings")
        headers = entry.get("headers", {})
        if not isinstance(headers, Mapping):
            raise InstanceConfigError(f"{where}: 'headers' must be a table of strings")
        api_prefix = entry.get("api_prefix", "/api")
        if not isinstance(name, str) or not isinstance(api_prefix, str):
            raise InstanceConfigError(f"{where}: 'name' and 'api_prefix' must be strings")
        try:
            instances.append(InstanceConfig(name, url, tuple(styles), dict(headers), api_prefix))
        except InstanceConfigError as exc:
            raise InstanceConfigError(f"{source}: {exc}") from exc
    default_style = data.get("default_style")
    config = InstancesConfig(tuple(instances), default_style="")
    if default_style is None:
        default_style = config.styles[0] if config.styles else "anime"
    if not isinstance(default_style, str):
        raise InstanceConfigError(f"{source}: 'default_style' must be a string")
    if config.styles and default_style not in config.styles:
        raise InstanceConfigError(f"{source}: default_style {default_style!r} is served by no instance")
    return InstancesConfig(tuple(instances), default_style=default_style)


def load_instances(path: Path | None = None) -> InstancesConfig:
    """Read ``instances.toml`` (default: the user config dir); the default table when absent."""
    path = path if path is not None else user_dirs().config / INSTANCES_FILE
    if not path.exists():
        return default_instances()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise InstanceConfigError(f"{path}: {exc}") from exc
    return parse_instances(data, source=str(path))
