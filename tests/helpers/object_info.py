"""``/object_info`` dicts for tests: the real captures plus hand-written stock-node entries.

``tests/data/comfyui/object_info_*.json`` are what a real ComfyUI 0.33 sent (copied from the
shared reference captures) and ``object_info_handwritten.json`` adds the stock nodes that were
not captured (EmptyLatentImage, CLIPTextEncode, VAEDecode/Encode, LoadImage, LoraLoader, …),
written from ComfyUI's ``nodes.py`` INPUT_TYPES. :func:`luna_nodes_object_info` builds entries
for the Luna shared-daemon nodes from their own ``INPUT_TYPES`` so the templates track them.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

DATA_DIR = Path(__file__).resolve().parent.parent / "data" / "comfyui"


def captured_object_info() -> dict[str, Any]:
    info: dict[str, Any] = {}
    for path in sorted(DATA_DIR.glob("object_info_*.json")):
        info.update(json.loads(path.read_text(encoding="utf-8")))
    return info


def with_models(info: dict[str, Any], **extra: list[str]) -> dict[str, Any]:
    """A copy where combo inputs named in ``extra`` (e.g. ``ckpt_name=[...]``) offer more values."""
    info = copy.deepcopy(info)
    for schema in info.values():
        for section in ("required", "optional"):
            for name, spec in (schema.get("input", {}).get(section) or {}).items():
                if name in extra and isinstance(spec[0], list):
                    spec[0] = spec[0] + [v for v in extra[name] if v not in spec[0]]
    return info


def _entry_from_class(name: str, cls: Any, display: str) -> dict[str, Any]:
    def plain(value: Any) -> Any:
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        if isinstance(value, list):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    inputs = plain(cls.INPUT_TYPES())
    outputs = list(cls.RETURN_TYPES)
    return {
        "input": inputs,
        "input_order": {k: list(v) for k, v in inputs.items()},
        "output": outputs,
        "output_is_list": [False] * len(outputs),
        "output_name": list(getattr(cls, "RETURN_NAMES", outputs)),
        "name": name,
        "display_name": display,
        "category": getattr(cls, "CATEGORY", ""),
        "output_node": bool(getattr(cls, "OUTPUT_NODE", False)),
    }


def luna_nodes_object_info() -> dict[str, Any]:
    """Entries for the Luna node pack's classes, as ComfyUI would publish them."""
    import daemon.comfyui_nodes as pack

    display = getattr(pack, "NODE_DISPLAY_NAME_MAPPINGS", {})
    return {
        name: _entry_from_class(name, cls, display.get(name, name))
        for name, cls in pack.NODE_CLASS_MAPPINGS.items()
    }


def stock_object_info(with_sdxl: bool = True) -> dict[str, Any]:
    """Captures + hand-written stock nodes; optionally an instance that has the SDXL base model."""
    info = captured_object_info()
    if with_sdxl:
        info = with_models(info, ckpt_name=["sd_xl_base_1.0.safetensors"])
    return info
