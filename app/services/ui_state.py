"""Window state remembered between runs: geometry and the last tab (``ui_state.json``).

Stored in the user config dir (``LUNA_HOME`` honoured) as JSON with the Qt geometry as base64;
a missing or broken file gives the defaults (a window state is never worth an error). Pure
Python, any thread.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from app.paths import user_dirs

UI_STATE_FILE = "ui_state.json"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UiState:
    """What the main window restores."""

    geometry: bytes = b""
    last_tab: str = "dashboard"


def _path(config_dir: Path | None) -> Path:
    return (config_dir or user_dirs().config) / UI_STATE_FILE


def load_ui_state(config_dir: Path | None = None) -> UiState:
    path = _path(config_dir)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return UiState(base64.b64decode(raw.get("geometry", "")), str(raw.get("last_tab", "dashboard")))
    except FileNotFoundError:
        return UiState()
    except (OSError, ValueError, AttributeError, binascii.Error) as exc:
        log.info("ignoring unreadable window state %s: %s", path, exc)
        return UiState()


def save_ui_state(state: UiState, config_dir: Path | None = None) -> None:
    path = _path(config_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"geometry": base64.b64encode(state.geometry).decode("ascii"), "last_tab": state.last_tab}
    path.write_text(json.dumps(body) + "\n", encoding="utf-8")
