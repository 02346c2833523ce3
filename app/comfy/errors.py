"""Typed errors of the ComfyUI layer, and parsing of ComfyUI's error replies into them.

Owns: the exception hierarchy every caller of :mod:`app.comfy` catches (CLI, GUI, router), the
per-node validation reason (:class:`NodeReason`) and :func:`parse_prompt_rejection`, which turns
a ``POST /prompt`` reply body into reasons. Every shape ComfyUI has used is accepted: ``error``
as a string (old servers: ``"no prompt"``) or as ``{type, message, details, extra_info}``;
``node_errors`` as ``{}``/``[]``, with entries holding ``errors`` lists of objects (current) or
of plain strings (old), or an entry that is itself a string.

Pure data and parsing: no I/O, safe on any thread.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


class ComfyError(Exception):
    """Base of every error raised by the ComfyUI layer; ``instance`` names the server, if known."""

    def __init__(self, message: str, *, instance: str | None = None) -> None:
        super().__init__(message)
        self.instance = instance


class ComfyUnavailable(ComfyError):
    """The instance could not be reached or answered with a transport-level failure.

    Raised for connection refused/reset, timeouts and HTTP 5xx. ``cause`` keeps the original
    exception text so the GUI can show "connection refused" vs "timed out". ``maybe_delivered``
    is False only when the request certainly never reached the server (the TCP connect itself
    failed); after a read timeout, a reset or a 5xx the server may have acted on it.
    """

    def __init__(
        self, message: str, *, instance: str | None = None, cause: str = "", maybe_delivered: bool = False
    ) -> None:
        super().__init__(message, instance=instance)
        self.cause = cause
        self.maybe_delivered = maybe_delivered


class ComfyProtocolError(ComfyError):
    """The instance answered with something that is not what the ComfyUI API specifies."""


@dataclass(frozen=True)
class NodeReason:
    """One reason ComfyUI gave for rejecting (part of) a prompt.

    ``node_id`` and ``input_name`` are what the template layer needs to map the reason back to a
    node title and an injection parameter; they are ``None`` when ComfyUI did not say (top-level
    errors such as ``no_prompt``). ``reason_type`` is ComfyUI's ``type`` string, e.g.
    ``value_not_in_list``, ``required_input_missing``, ``missing_node_type``.
    """

    node_id: str | None
    class_type: str | None
    reason_type: str
    message: str
    details: str = ""
    input_name: str | None = None
    received_value: Any = None
    node_title: str | None = None
    dependent_outputs: tuple[str, ...] = ()
    extra_info: Mapping[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        """A one-line human reason, e.g. ``KSampler #7 steps: Value 0 smaller than min of 1``."""
        where = ""
        if self.node_id is not None:
            label = self.node_title or self.class_type or "node"
            where = f"{label} #{self.node_id}"
            if self.input_name:
                where += f" {self.input_name}"
            where += ": "
        text = self.message
        if self.details and self.details not in text and self.details != self.input_name:
            text = f"{text} ({self.details})"
        return where + text


class PromptRejected(ComfyError):
    """``POST /prompt`` answered 400 (or 200 with no output node queued): the prompt was not run.

    ``error_type`` is the top-level type (``prompt_outputs_failed_validation``,
    ``missing_node_type``, ``no_prompt``, ``invalid_prompt_id``, ``prompt_no_outputs``, …; for old
    string errors it is ``"legacy"``); ``reasons`` lists every per-node reason; ``body`` is the
    decoded reply (or the raw text when it was not JSON).
    """

    def __init__(
        self,
        message: str,
        *,
        status: int,
        error_type: str,
        details: str = "",
        reasons: tuple[NodeReason, ...] = (),
        body: Any = None,
        instance: str | None = None,
    ) -> None:
        lines = [message] + [f"  - {reason.describe()}" for reason in reasons]
        super().__init__("\n".join(lines), instance=instance)
        self.status = status
        self.error_type = error_type
        self.summary = message
        self.details = details
        self.reasons = reasons
        self.body = body


class JobFailed(ComfyError):
    """Base of the errors that end a submitted job without outputs; ``prompt_id`` names it."""

    def __init__(self, message: str, *, prompt_id: str, instance: str | None = None) -> None:
        super().__init__(message, instance=instance)
        self.prompt_id = prompt_id


class ExecutionFailed(JobFailed):
    """A node raised while the job ran (``execution_error``), with ComfyUI's own diagnostics."""

    def __init__(
        self,
        *,
        prompt_id: str,
        node_id: str | None,
        node_type: str | None,
        exception_type: str,
        exception_message: str,
        traceback: tuple[str, ...] = (),
        executed: tuple[str, ...] = (),
        current_inputs: Mapping[str, Any] | None = None,
        instance: str | None = None,
    ) -> None:
        label = f"{node_type or 'node'} #{node_id}" if node_id is not None else "a node"
        message = f"{label} failed: {exception_type}: {exception_message.strip()}"
        super().__init__(message, prompt_id=prompt_id, instance=instance)
        self.node_id = node_id
        self.node_type = node_type
        self.exception_type = exception_type
        self.exception_message = exception_message
        self.traceback = traceback
        self.executed = executed
        self.current_inputs = dict(current_inputs or {})


class JobInterrupted(JobFailed):
    """The job was cancelled: interrupted while running, or deleted from the queue (``pending``)."""

    def __init__(
        self,
        *,
        prompt_id: str,
        node_id: str | None = None,
        node_type: str | None = None,
        executed: tuple[str, ...] = (),
        while_pending: bool = False,
        instance: str | None = None,
    ) -> None:
        if while_pending:
            what = "was cancelled before it started"
        elif node_id is None:
            what = "was interrupted while running"
        else:
            what = f"was interrupted at {node_type or 'node'} #{node_id}"
        super().__init__(f"job {prompt_id} {what}", prompt_id=prompt_id, instance=instance)
        self.node_id = node_id
        self.node_type = node_type
        self.executed = executed
        self.while_pending = while_pending


class JobLost(JobFailed):
    """The job is in neither the queue nor the history, or its instance stayed unreachable.

    ``started`` says whether ComfyUI was seen executing it (``execution_start``); a job lost
    before it started can be resubmitted elsewhere with the same seed. ``maybe_accepted``: the
    ``POST /prompt`` failed after the instance may have queued the job and the instance could
    not be asked — resubmitting could run it twice, so :attr:`resubmittable` is False.
    """

    def __init__(
        self,
        reason: str,
        *,
        prompt_id: str,
        started: bool,
        instance: str | None = None,
        maybe_accepted: bool = False,
    ) -> None:
        super().__init__(f"job {prompt_id} lost: {reason}", prompt_id=prompt_id, instance=instance)
        self.reason = reason
        self.started = started
        self.maybe_accepted = maybe_accepted

    @property
    def resubmittable(self) -> bool:
        """True when the job certainly never ran: sending it elsewhere cannot run it twice."""
        return not self.started and not self.maybe_accepted


class JobTimeout(JobFailed):
    """The caller's deadline for the job passed; the job may still be running on the server."""


class OutputMissing(ComfyError):
    """An output file listed in the history could not be downloaded (``/view`` 404)."""


class NoInstanceAvailable(ComfyError):
    """No healthy instance serves the requested style (router)."""


# --- parsing ---------------------------------------------------------------------------------

_LEGACY_INPUT_RE = re.compile(r"^(?P<message>[^:]+):\s*(?P<input>[A-Za-z_][\w.]*)\s*$")


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _reason_from_object(
    node_id: str | None, class_type: str | None, item: Mapping[str, Any], dependents: tuple[str, ...]
) -> NodeReason:
    extra = item.get("extra_info")
    extra = dict(extra) if isinstance(extra, Mapping) else {}
    input_name = extra.get("input_name")
    return NodeReason(
        node_id=node_id,
        class_type=class_type,
        reason_type=_text(item.get("type")) or "unknown",
        message=_text(item.get("message")) or "invalid input",
        details=_text(item.get("details")),
        input_name=str(input_name) if input_name is not None else None,
        received_value=extra.get("received_value"),
        dependent_outputs=dependents,
        extra_info=extra,
    )


def _reason_from_string(
    node_id: str | None, class_type: str | None, text: str, dependents: tuple[str, ...]
) -> NodeReason:
    # Old servers wrote e.g. "Required input is missing: seed"; keep the input name when visible.
    match = _LEGACY_INPUT_RE.match(text.strip())
    return NodeReason(
        node_id=node_id,
        class_type=class_type,
        reason_type="legacy",
        message=match.group("message").strip() if match else text,
        details=text,
        input_name=match.group("input") if match else None,
        dependent_outputs=dependents,
    )


def parse_node_errors(node_errors: Any) -> tuple[NodeReason, ...]:
    """All per-node reasons in a ``node_errors`` value of any known shape (``{}``/``[]``/None ok)."""
    if not isinstance(node_errors, Mapping):
        return ()
    reasons: list[NodeReason] = []
    for raw_id, entry in node_errors.items():
        node_id = str(raw_id)
        if isinstance(entry, str):
            reasons.append(_reason_from_string(node_id, None, entry, ()))
            continue
        if not isinstance(entry, Mapping):
            continue
        class_type = entry.get("class_type")
        class_type = str(class_type) if class_type is not None else None
        dependents = tuple(str(d) for d in entry.get("dependent_outputs") or ())
        items = entry.get("errors") or []
        if isinstance(items, (str, Mapping)):
            items = [items]
        for item in items:
            if isinstance(item, Mapping):
                reasons.append(_reason_from_object(node_id, class_type, item, dependents))
            else:
                reasons.append(_reason_from_string(node_id, class_type, _text(item), dependents))
        if not items:
            reasons.append(
                NodeReason(
                    node_id, class_type, "unknown", "node failed validation", dependent_outputs=dependents
                )
            )
    return tuple(reasons)


def parse_prompt_rejection(status: int, body: Any, *, instance: str | None = None) -> PromptRejected:
    """Build a :class:`PromptRejected` from a ``POST /prompt`` reply (decoded JSON or raw text)."""
    if not isinstance(body, Mapping):
        text = _text(body).strip() or f"HTTP {status}"
        return PromptRejected(
            f"ComfyUI rejected the prompt: {text.splitlines()[0]}",
            status=status,
            error_type="unparsed",
            details=text,
            body=body,
            instance=instance,
        )
    error = body.get("error")
    reasons = list(parse_node_errors(body.get("node_errors")))
    if isinstance(error, Mapping):
        error_type = _text(error.get("type")) or "unknown"
        message = _text(error.get("message")) or error_type
        details = _text(error.get("details"))
        extra = error.get("extra_info")
        extra = dict(extra) if isinstance(extra, Mapping) else {}
        if extra.get("node_id") is not None and not reasons:
            # missing_node_type: the node is named only in the top-level extra_info.
            reasons.append(
                NodeReason(
                    node_id=str(extra["node_id"]),
                    class_type=_text(extra.get("class_type")) or None,
                    reason_type=error_type,
                    message=message,
                    details=details,
                    node_title=_text(extra.get("node_title")) or None,
                    extra_info=extra,
                )
            )
    else:
        error_type = "legacy"
        message = _text(error) or "prompt rejected"
        details = ""
    return PromptRejected(
        f"ComfyUI rejected the prompt ({error_type}): {message}",
        status=status,
        error_type=error_type,
        details=details,
        reasons=tuple(reasons),
        body=dict(body),
        instance=instance,
    )
