"""A minimal stand-in for ComfyUI's custom-node loader and executor conventions (test helper).

Does what ComfyUI's ``nodes.load_custom_node`` and ``execution.py`` do to a node pack, as far
as a pack can tell: import the package folder by path (module spec from ``__init__.py``,
registered in ``sys.modules`` under the folder path with dots replaced, so relative imports
work), read ``NODE_CLASS_MAPPINGS`` / ``NODE_DISPLAY_NAME_MAPPINGS``, check every class's
``INPUT_TYPES()`` / ``RETURN_TYPES`` / ``FUNCTION`` / ``CATEGORY``, and run a node: validate
widget values (combo membership, INT/FLOAT ranges, required inputs present, no unknown
inputs), instantiate it and call FUNCTION with keyword arguments, unwrapping
``{"ui": ..., "result": ...}`` answers.

Standard library only, so it can also be run by path in a subprocess whose ``sys.path`` holds
nothing of this repository. Plain functions, called from the test's thread.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from dataclasses import dataclass
from types import ModuleType
from typing import Any

#: Input types ComfyUI renders as widgets (values come from the prompt, not from links).
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN"}


class NodeContractError(AssertionError):
    """A node pack breaks one of ComfyUI's loader or executor conventions."""


@dataclass(frozen=True)
class LoadedPack:
    """A node pack imported the way ComfyUI imports it."""

    module: ModuleType
    module_name: str
    node_classes: dict[str, type]
    display_names: dict[str, str]


def load_custom_node(module_path: str | os.PathLike) -> LoadedPack:
    """Import a custom-node folder like ComfyUI's ``nodes.load_custom_node``."""
    module_path = os.fspath(module_path)
    init_file = os.path.join(module_path, "__init__.py")
    if not os.path.isfile(init_file):
        raise NodeContractError(f"{module_path} has no __init__.py")
    # ComfyUI registers the package under its full path with '.' replaced by '_x_'.
    module_name = module_path.replace(".", "_x_")
    spec = importlib.util.spec_from_file_location(module_name, init_file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        unload_custom_node(module_name)
        raise
    mappings = getattr(module, "NODE_CLASS_MAPPINGS", None)
    if not isinstance(mappings, dict) or not mappings:
        unload_custom_node(module_name)
        raise NodeContractError(f"{module_path}: no NODE_CLASS_MAPPINGS")
    display = getattr(module, "NODE_DISPLAY_NAME_MAPPINGS", {}) or {}
    return LoadedPack(module, module_name, dict(mappings), dict(display))


def unload_custom_node(module_name: str) -> None:
    """Forget a loaded pack and its submodules (so a test can load another copy)."""
    for name in [n for n in sys.modules if n == module_name or n.startswith(module_name + ".")]:
        del sys.modules[name]


def validate_node_class(class_type: str, cls: type) -> dict:
    """Check the class attributes ComfyUI reads; returns ``INPUT_TYPES()``."""
    where = f"{class_type} ({cls.__name__})"
    input_types = cls.INPUT_TYPES()
    if not isinstance(input_types, dict) or "required" not in input_types:
        raise NodeContractError(f"{where}: INPUT_TYPES() must return a dict with 'required'")
    unknown_sections = set(input_types) - {"required", "optional", "hidden"}
    if unknown_sections:
        raise NodeContractError(f"{where}: unknown INPUT_TYPES sections {sorted(unknown_sections)}")
    seen: set[str] = set()
    for section in ("required", "optional"):
        for name, spec in (input_types.get(section) or {}).items():
            if name in seen:
                raise NodeContractError(f"{where}: input {name!r} declared twice")
            seen.add(name)
            _validate_input_spec(where, name, spec)
    return_types = getattr(cls, "RETURN_TYPES", None)
    if not isinstance(return_types, tuple) or not all(isinstance(t, str) for t in return_types):
        raise NodeContractError(f"{where}: RETURN_TYPES must be a tuple of type names")
    names = getattr(cls, "RETURN_NAMES", None)
    if names is not None and (not isinstance(names, tuple) or len(names) != len(return_types)):
        raise NodeContractError(f"{where}: RETURN_NAMES must match RETURN_TYPES")
    function = getattr(cls, "FUNCTION", None)
    if not isinstance(function, str) or not callable(getattr(cls, function, None)):
        raise NodeContractError(f"{where}: FUNCTION must name a method")
    if not isinstance(getattr(cls, "CATEGORY", None), str):
        raise NodeContractError(f"{where}: CATEGORY must be a string")
    return input_types


def _validate_input_spec(where: str, name: str, spec: Any) -> None:
    if not isinstance(spec, tuple) or not 1 <= len(spec) <= 2:
        raise NodeContractError(f"{where}: input {name!r} must be (TYPE,) or (TYPE, options)")
    kind = spec[0]
    options = spec[1] if len(spec) == 2 else {}
    if not isinstance(options, dict):
        raise NodeContractError(f"{where}: options of input {name!r} must be a dict")
    if isinstance(kind, (list, tuple)):
        if not kind or ("default" in options and options["default"] not in kind):
            raise NodeContractError(f"{where}: combo {name!r} default is not one of {kind}")
        return
    if not isinstance(kind, str):
        raise NodeContractError(f"{where}: input {name!r} type must be a name or a list")
    if kind in ("INT", "FLOAT") and "default" in options:
        default = options["default"]
        if ("min" in options and default < options["min"]) or ("max" in options and default > options["max"]):
            raise NodeContractError(f"{where}: {name!r} default {default} is outside min/max")


def run_node(cls: type, **inputs: Any) -> tuple:
    """Validate ``inputs`` as ComfyUI would, then instantiate ``cls`` and call FUNCTION."""
    input_types = validate_node_class(cls.__name__, cls)
    required = input_types.get("required") or {}
    optional = input_types.get("optional") or {}
    missing = [name for name in required if name not in inputs]
    if missing:
        raise NodeContractError(f"{cls.__name__}: required input missing: {missing}")
    unknown = [name for name in inputs if name not in required and name not in optional]
    if unknown:
        raise NodeContractError(f"{cls.__name__}: unknown inputs {unknown}")
    for name, value in inputs.items():
        _validate_value(cls.__name__, name, (required.get(name) or optional[name]), value)
    node = cls()
    result = getattr(node, cls.FUNCTION)(**inputs)
    if isinstance(result, dict):
        if "result" not in result:
            raise NodeContractError(f"{cls.__name__}: a dict answer must carry 'result'")
        result = result["result"]
    if not isinstance(result, tuple) or len(result) != len(cls.RETURN_TYPES):
        raise NodeContractError(
            f"{cls.__name__}: FUNCTION must return a tuple of {len(cls.RETURN_TYPES)} values"
        )
    return result


def _validate_value(node: str, name: str, spec: tuple, value: Any) -> None:
    kind = spec[0]
    options = spec[1] if len(spec) == 2 else {}
    if isinstance(kind, (list, tuple)):
        if value not in kind:
            raise NodeContractError(f"{node}: {name}={value!r} is not one of {list(kind)}")
        return
    if kind not in WIDGET_TYPES:
        return  # a linked value (IMAGE, LATENT, CLIP, VAE...): ComfyUI passes the object
    expected = {"INT": int, "FLOAT": (int, float), "STRING": str, "BOOLEAN": bool}[kind]
    if not isinstance(value, expected) or (kind == "INT" and isinstance(value, bool)):
        raise NodeContractError(f"{node}: {name}={value!r} is not a {kind}")
    if kind in ("INT", "FLOAT"):
        if "min" in options and value < options["min"]:
            raise NodeContractError(f"{node}: {name}={value} is smaller than min {options['min']}")
        if "max" in options and value > options["max"]:
            raise NodeContractError(f"{node}: {name}={value} is bigger than max {options['max']}")
