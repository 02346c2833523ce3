"""Map a ComfyUI rejection (``PromptRejected`` from a 400, or 200 ``node_errors``) back to the
template: node titles from the submitted workflow and the injection parameters bound there.

The client parses the reply into :class:`~app.comfy.errors.NodeReason` items; this module turns
each into a :class:`~app.comfy.validate.ValidationIssue` so the operator sees
"'Positive Prompt' (#6 CLIPTextEncode) input 'text' [parameter positive]: …" whether the
problem was found locally by :mod:`app.comfy.validate` or by the server. Pure; any thread.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from app.comfy.errors import NodeReason, PromptRejected, parse_node_errors
from app.comfy.graph import Workflow, node_title
from app.comfy.templates import InjectionMap
from app.comfy.validate import ValidationIssue


def explain_reasons(
    reasons: Iterable[NodeReason],
    workflow: Workflow,
    injection_map: InjectionMap | None = None,
    severity: str = "error",
) -> list[ValidationIssue]:
    """One issue per reason, located by node title and injection parameter."""
    issues = []
    for reason in reasons:
        node_id = reason.node_id
        in_workflow = node_id is not None and node_id in workflow
        title = node_title(workflow, node_id) if in_workflow else reason.node_title
        class_type = workflow[node_id]["class_type"] if in_workflow else reason.class_type
        params: tuple[str, ...] = ()
        if injection_map is not None and node_id is not None:
            params = tuple(injection_map.params_at(node_id, reason.input_name))
        message = reason.message
        if reason.details and reason.details not in message and reason.details != reason.input_name:
            message = f"{message} ({reason.details})"
        if reason.reason_type == "value_not_in_list" and (reason.input_name or "").endswith("_name"):
            message += " — a model file missing on this instance?"
        if reason.reason_type == "missing_node_type":
            message += " — install the custom node on this instance"
        issues.append(
            ValidationIssue(
                code=reason.reason_type,
                message=message,
                node_id=node_id,
                node_title=title or (f"#{node_id}" if node_id is not None else None),
                class_type=class_type,
                input_name=reason.input_name,
                params=params,
                severity=severity,
            )
        )
    return issues


def explain_rejection(
    error: PromptRejected, workflow: Workflow, injection_map: InjectionMap | None = None
) -> list[ValidationIssue]:
    """Issues for a rejected prompt; a top-level-only error becomes one issue without a node."""
    issues = explain_reasons(error.reasons, workflow, injection_map)
    if not issues:
        issues.append(
            ValidationIssue(
                code=error.error_type,
                message=error.summary + (f" ({error.details})" if error.details else ""),
            )
        )
    return issues


def explain_node_errors(
    node_errors: Any, workflow: Workflow, injection_map: InjectionMap | None = None
) -> list[ValidationIssue]:
    """Warnings for ``node_errors`` that came with a 200 (some outputs were dropped)."""
    return explain_reasons(parse_node_errors(node_errors), workflow, injection_map, severity="warning")


def format_issues(issues: Iterable[ValidationIssue]) -> str:
    return "\n".join(f"  - {issue.describe()}" for issue in issues)
