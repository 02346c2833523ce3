"""Convert a UI-format workflow (what ComfyUI's plain "Save" writes) to the API format, using
the node definitions of the instance it will run on (``/object_info``).

The UI format stores widget values by position (``widgets_values``) and links in a separate
table; only ``/object_info`` says which input each position is. The rules follow the official
frontend's own conversion:

* widget inputs are the INT / FLOAT / STRING / BOOLEAN / combo inputs of the schema, in
  ``input_order`` (required, then optional), except ``forceInput`` ones; a widget that was
  converted to a socket keeps its position;
* an INT widget gets one extra, client-only value after it (``control_after_generate``: fixed /
  randomize / …) when its config says so, or — when the config does not say — when it is named
  ``seed`` or ``noise_seed``; other widgets with a truthy ``control_after_generate`` too;
* ``widgets_values`` given as an object (some custom nodes) is read by name;
* muted nodes (mode 2) are dropped; bypassed nodes (mode 4) pass their input of the matching
  type through; ``Reroute`` passes its input through; a link from a ``PrimitiveNode`` becomes
  its value; ``Note`` / ``MarkdownNote`` are ignored.

Group nodes and subgraphs are refused (:class:`UiConversionError` says to export the API format
instead), as are node types the instance does not know. Pure; any thread.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from app.comfy.graph import EXPORT_API_HINT, Workflow, WorkflowFormatError
from app.comfy.validate import combo_options

WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")
MUTED, BYPASSED = 2, 4
PASS_THROUGH = {"Reroute"}
IGNORED = {"Note", "MarkdownNote", "PrimitiveNode"}  # PrimitiveNode values are read through its links


class UiConversionError(WorkflowFormatError):
    """The UI workflow cannot be converted faithfully; the message says why and what to do."""


@dataclass(frozen=True)
class Conversion:
    """The API workflow plus what the conversion dropped or assumed."""

    workflow: Workflow
    notes: tuple[str, ...] = ()


def _is_widget(spec: Any) -> bool:
    if combo_options(spec) is not None:
        return True
    if not isinstance(spec, (list, tuple)) or not spec or not isinstance(spec[0], str):
        return False
    config = spec[1] if len(spec) > 1 and isinstance(spec[1], Mapping) else {}
    return spec[0] in WIDGET_TYPES and not config.get("forceInput") and not config.get("defaultInput")


def _has_control_value(name: str, spec: Any) -> bool:
    config = spec[1] if len(spec) > 1 and isinstance(spec[1], Mapping) else {}
    flag = config.get("control_after_generate")
    if flag is not None:
        return bool(flag)
    return spec[0] == "INT" and name in ("seed", "noise_seed")


def widget_inputs(schema: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """``(name, spec)`` of a node's widget inputs in the order their values are saved."""
    inputs = schema.get("input", {}) or {}
    order = schema.get("input_order") or {}
    result = []
    for section in ("required", "optional"):
        specs = inputs.get(section) or {}
        names = order.get(section) or list(specs)
        result += [(name, specs[name]) for name in names if name in specs and _is_widget(specs[name])]
    return result


def _links_table(data: Mapping[str, Any]) -> dict[int, tuple[int, int, str]]:
    """link id → (origin node id, origin slot, type), from either the array or the object form."""
    table = {}
    for link in data.get("links") or []:
        if isinstance(link, list) and len(link) >= 5:
            table[link[0]] = (link[1], link[2], str(link[5]) if len(link) > 5 else "*")
        elif isinstance(link, Mapping) and "id" in link:
            table[link["id"]] = (link["origin_id"], link["origin_slot"], str(link.get("type", "*")))
    return table


class _Converter:
    def __init__(self, data: Mapping[str, Any], object_info: Mapping[str, Any]):
        self.object_info = object_info
        self.nodes = {node["id"]: node for node in data.get("nodes") or [] if isinstance(node, Mapping)}
        self.links = _links_table(data)
        self.notes: list[str] = []

    def refuse_unsupported(self, data: Mapping[str, Any]) -> None:
        subgraph_ids = {
            s.get("id")
            for s in (data.get("definitions") or {}).get("subgraphs") or []
            if isinstance(s, Mapping)
        }
        for node in self.nodes.values():
            kind = str(node.get("type", ""))
            if kind in subgraph_ids or kind.startswith("workflow>") or kind.startswith("workflow/"):
                raise UiConversionError(
                    f"node #{node['id']} ('{node.get('title') or kind}') is a group node or subgraph, which "
                    f"Luna cannot convert. {EXPORT_API_HINT}"
                )
        missing = sorted(
            {
                str(n.get("type"))
                for n in self.nodes.values()
                if n.get("mode", 0) != MUTED
                and n.get("type") not in self.object_info
                and n.get("type") not in PASS_THROUGH | IGNORED
            }
        )
        if missing:
            raise UiConversionError(
                f"the instance does not know the node type(s) {', '.join(missing)} "
                "(custom nodes not installed?), so the UI workflow cannot be converted"
            )

    def resolve(self, link_id: Any, want_type: str | None = None, depth: int = 0) -> Any:
        """The API value for an input linked by ``link_id``: a link, a literal, or None (dropped)."""
        if link_id is None or link_id not in self.links or depth > 64:
            return None
        origin_id, slot, link_type = self.links[link_id]
        origin = self.nodes.get(origin_id)
        if origin is None:
            return None
        kind, mode = origin.get("type"), origin.get("mode", 0)
        if mode == MUTED:
            return None
        if kind == "PrimitiveNode":
            values = origin.get("widgets_values") or []
            return values[0] if isinstance(values, list) and values else None
        if kind in PASS_THROUGH:
            inputs = origin.get("inputs") or []
            return self.resolve(inputs[0].get("link"), want_type, depth + 1) if inputs else None
        if mode == BYPASSED:
            out_type = link_type if link_type != "*" else (want_type or "*")
            for entry in origin.get("inputs") or []:
                if entry.get("link") is not None and (entry.get("type") == out_type or out_type == "*"):
                    return self.resolve(entry["link"], out_type, depth + 1)
            return None
        return [str(origin_id), int(slot)]

    def convert_node(self, node: Mapping[str, Any]) -> dict[str, Any]:
        kind = node["type"]
        schema = self.object_info[kind]
        values = node.get("widgets_values")
        inputs: dict[str, Any] = {}
        position = 0
        for name, spec in widget_inputs(schema):
            if isinstance(values, Mapping):
                if name in values:
                    inputs[name] = values[name]
            elif isinstance(values, list) and position < len(values):
                inputs[name] = values[position]
            position += 1
            if _has_control_value(name, spec):
                position += 1
        for entry in node.get("inputs") or []:
            name = (entry.get("widget") or {}).get("name") or entry.get("name")
            if entry.get("link") is None or not name:
                continue
            value = self.resolve(entry["link"], str(entry.get("type", "*")))
            if value is None:
                # Source muted or missing: a widget keeps its own value, a socket is left unset.
                if not _is_widget_name(schema, name):
                    inputs.pop(name, None)
                continue
            inputs[name] = value
        for name, value in list(inputs.items()):
            if isinstance(value, list) and not (len(value) == 2 and isinstance(value[0], str)):
                inputs[name] = {"__value__": value}  # a literal list, as the frontend wraps it
        title = node.get("title") or schema.get("display_name") or kind
        return {"class_type": kind, "inputs": inputs, "_meta": {"title": title}}

    def convert(self) -> Workflow:
        workflow: Workflow = {}
        for node_id, node in sorted(
            self.nodes.items(), key=lambda item: (not isinstance(item[0], int), str(item[0]).zfill(12))
        ):
            kind, mode = node.get("type"), node.get("mode", 0)
            if kind in PASS_THROUGH or kind in IGNORED:
                continue
            if mode in (MUTED, BYPASSED):
                self.notes.append(
                    f"{'muted' if mode == MUTED else 'bypassed'} node #{node_id} "
                    f"('{node.get('title') or kind}') left out"
                )
                continue
            workflow[str(node_id)] = self.convert_node(node)
        return workflow


def _is_widget_name(schema: Mapping[str, Any], name: str) -> bool:
    return any(n == name for n, _ in widget_inputs(schema))


def convert_ui_workflow(data: Mapping[str, Any], object_info: Mapping[str, Any]) -> Conversion:
    """Convert a UI-format workflow with the instance's ``/object_info``; see the module doc."""
    converter = _Converter(data, object_info)
    converter.refuse_unsupported(data)
    workflow = converter.convert()
    if not workflow:
        raise UiConversionError("the UI workflow has no nodes to run")
    return Conversion(workflow, tuple(converter.notes))
