"""API-format workflow graphs: format checks and small read-only graph helpers.

An API-format workflow (what ComfyUI's "Export (API)" writes and ``POST /prompt`` takes) is
``{node_id: {"class_type": str, "inputs": {name: value | [source_id, output_index]},
"_meta": {"title": str}}}``. This module owns recognising that format (and refusing the UI
format with the steps to export the right one), telling links from literal values, and walking
links. Pure functions over plain dicts; any thread.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

Workflow = dict[str, dict[str, Any]]

EXPORT_API_HINT = (
    "In ComfyUI open the workflow and use Workflow > Export (API) (older versions: enable "
    "'Dev mode Options' in the settings, then use 'Save (API Format)'), and use that file."
)


class WorkflowFormatError(ValueError):
    """The data is not an API-format ComfyUI workflow; the message says what is wrong."""


class UiFormatWorkflowError(WorkflowFormatError):
    """The data is a UI-format workflow (``nodes``/``links``), which ``/prompt`` cannot run."""


def is_link(value: Any) -> bool:
    """True for an input value that is a link ``[source_node_id, output_index]``."""
    return (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], int)
        and not isinstance(value[1], bool)
    )


def looks_like_ui_format(data: Any) -> bool:
    """True when ``data`` is a LiteGraph UI workflow (what "Save" / PNG ``workflow`` hold)."""
    return isinstance(data, Mapping) and isinstance(data.get("nodes"), list) and "links" in data


def ensure_api_format(data: Any, source: str = "workflow") -> Workflow:
    """Return ``data`` as an API-format workflow or raise a :class:`WorkflowFormatError`.

    Accepts the bare graph and a saved ``/prompt`` body (``{"prompt": {...}}``), whose graph is
    returned. Node ids are strings; every node needs a ``class_type`` string and an ``inputs``
    object. Links must point at nodes of the graph.
    """
    if looks_like_ui_format(data):
        raise UiFormatWorkflowError(
            f"{source} is a ComfyUI UI-format workflow (it has 'nodes' and 'links'), not the API "
            f"format that the server runs. {EXPORT_API_HINT}"
        )
    if isinstance(data, Mapping) and isinstance(data.get("prompt"), Mapping) and "class_type" not in data:
        data = data["prompt"]
    if not isinstance(data, Mapping) or not data:
        raise WorkflowFormatError(
            f"{source} is not an API-format workflow: expected a non-empty JSON object of nodes"
        )
    for node_id, node in data.items():
        if not isinstance(node, Mapping):
            raise WorkflowFormatError(f"{source}: node {node_id!r} is not an object")
        class_type = node.get("class_type")
        if not isinstance(class_type, str) or not class_type:
            raise WorkflowFormatError(f"{source}: node {node_id!r} has no 'class_type'")
        if not isinstance(node.get("inputs", {}), Mapping):
            raise WorkflowFormatError(f"{source}: node {node_id!r} ({class_type}) has no 'inputs' object")
    workflow: Workflow = {str(k): dict(v) for k, v in data.items()}
    for node in workflow.values():
        node.setdefault("inputs", {})
    return workflow


def node_title(workflow: Mapping[str, Mapping[str, Any]], node_id: str) -> str:
    """The title a user sees for a node: ``_meta.title``, else its ``class_type``, else the id."""
    node = workflow.get(node_id)
    if node is None:
        return f"#{node_id}"
    meta = node.get("_meta")
    if isinstance(meta, Mapping) and isinstance(meta.get("title"), str) and meta["title"]:
        return meta["title"]
    return str(node.get("class_type", f"#{node_id}"))


def describe_node(workflow: Mapping[str, Mapping[str, Any]], node_id: str) -> str:
    """``"'Title' (#id ClassType)"``: how messages name a node."""
    node = workflow.get(node_id, {})
    return f"'{node_title(workflow, node_id)}' (#{node_id} {node.get('class_type', '?')})"


def links_into(node: Mapping[str, Any]) -> Iterator[tuple[str, str, int]]:
    """Yield ``(input_name, source_node_id, output_index)`` for every linked input of a node."""
    for name, value in node.get("inputs", {}).items():
        if is_link(value):
            yield name, value[0], value[1]


def consumers(
    workflow: Mapping[str, Mapping[str, Any]], source_id: str, output_index: int | None = None
) -> list[tuple[str, str]]:
    """``(node_id, input_name)`` of every input linked to ``source_id`` (optionally one output)."""
    found = []
    for node_id, node in workflow.items():
        for name, src, index in links_into(node):
            if src == source_id and (output_index is None or index == output_index):
                found.append((node_id, name))
    return found


def sorted_node_ids(workflow: Mapping[str, Any]) -> list[str]:
    """Node ids in a stable human order: numeric ids numerically, then the others."""

    def key(node_id: str) -> tuple[int, int, str]:
        head = node_id.split(":", 1)[0]
        return (0, int(head), node_id) if head.isdigit() else (1, 0, node_id)

    return sorted(workflow, key=key)


def new_node_id(workflow: Mapping[str, Any]) -> str:
    """A node id not used in ``workflow``: one past the largest numeric id."""
    numeric = [int(k) for k in workflow if k.isdigit()]
    candidate = (max(numeric) + 1) if numeric else 1
    while str(candidate) in workflow:
        candidate += 1
    return str(candidate)
