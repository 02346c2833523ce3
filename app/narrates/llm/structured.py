"""Structured (JSON) output: the request dialects, repair of near-JSON answers, schema validation.

Owns :class:`JsonDialect` (how ``response_format`` is asked for: OpenAI's ``json_schema``,
llama-cpp-python's ``json_object`` + ``schema``, or the schema in the prompt for servers that
refuse both), :func:`extract_json` (strip code fences and trailing chatter, take the first
complete JSON object), :func:`validate` (``jsonschema``, errors as readable paths) and
:func:`is_response_format_refusal` (does an HTTP error say the server rejects ``response_format``?).
Pure functions, any thread; :meth:`LlmClient.complete_json` drives them.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Mapping
from typing import Any

import jsonschema


class JsonDialect(enum.Enum):
    """How to ask a server for JSON, in the order they are tried."""

    JSON_SCHEMA = "json_schema"  # OpenAI, vLLM, LM Studio, Ollama >= 0.5, llama.cpp's C++ server
    JSON_OBJECT = "json_object"  # llama-cpp-python's server: {"type": "json_object", "schema": …}
    PROMPT = "prompt"  # no response_format at all: the schema is only in the prompt

    def next(self) -> JsonDialect | None:
        order = list(JsonDialect)
        index = order.index(self)
        return order[index + 1] if index + 1 < len(order) else None


def response_format(
    dialect: JsonDialect, schema: Mapping[str, Any], schema_name: str
) -> dict[str, Any] | None:
    """The ``response_format`` body field for ``dialect`` (``None`` for the prompt-only dialect)."""
    if dialect is JsonDialect.JSON_SCHEMA:
        return {
            "type": "json_schema",
            "json_schema": {"name": schema_name, "schema": dict(schema), "strict": True},
        }
    if dialect is JsonDialect.JSON_OBJECT:
        return {"type": "json_object", "schema": dict(schema)}
    return None


def schema_instruction(schema: Mapping[str, Any], schema_name: str) -> str:
    """The system-prompt text that carries the schema where ``response_format`` cannot."""
    return (
        f"Answer with exactly one JSON object named {schema_name} and nothing else: no prose, no code "
        f"fences. It must validate against this JSON Schema:\n{json.dumps(schema, separators=(',', ':'))}"
    )


_REFUSAL_MARKERS = ("response_format", "json_schema", "'text' or 'json_object'", "json_object")


def is_response_format_refusal(status: int, body: str) -> bool:
    """True when an HTTP error is the server rejecting our ``response_format`` (not a real failure).

    llama-cpp-python answers HTTP 500 with a pydantic error "Input should be 'text' or
    'json_object'" at ``('body', 'response_format', 'type')``; others answer 400/422.
    """
    if status < 400:
        return False
    lowered = body.lower()
    return any(marker in lowered for marker in _REFUSAL_MARKERS)


_FENCE = re.compile(r"```(?:json|JSON)?\s*\n?(.*?)```", re.DOTALL)


def extract_json(text: str) -> Any:
    """Parse ``text`` as JSON, repairing what small models usually wrap around it.

    Tries, in order: the whole text; the content of a Markdown code fence; the first complete
    JSON value starting at the first ``{`` (trailing chatter ignored). Raises ``ValueError``
    with the reason when none parses.
    """
    stripped = text.strip()
    if not stripped:
        raise ValueError("the answer is empty")
    try:
        return json.loads(stripped)
    except ValueError:
        pass
    candidates = [match.group(1).strip() for match in _FENCE.finditer(stripped)]
    candidates.append(stripped)
    decoder = json.JSONDecoder()
    last_error = "no JSON object found"
    for candidate in candidates:
        start = candidate.find("{")
        while start != -1:
            try:
                value, _end = decoder.raw_decode(candidate, start)
                return value
            except ValueError as exc:
                last_error = str(exc)
            start = candidate.find("{", start + 1)
    raise ValueError(f"not valid JSON ({last_error})")


def check_schema(schema: Mapping[str, Any]) -> type[jsonschema.protocols.Validator]:
    """The validator class for ``schema``; ``ValueError`` if the schema itself is invalid (a bug in the caller)."""
    validator_cls = jsonschema.validators.validator_for(schema)
    try:
        validator_cls.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise ValueError(f"invalid JSON Schema: {exc.message}") from exc
    return validator_cls


def validate(value: Any, schema: Mapping[str, Any]) -> tuple[str, ...]:
    """Readable schema violations of ``value`` (``()`` when it is valid), at most ten."""
    validator = check_schema(schema)(schema)
    errors = sorted(validator.iter_errors(value), key=lambda e: list(e.absolute_path))
    messages = []
    for error in errors[:10]:
        where = "/".join(str(part) for part in error.absolute_path) or "(root)"
        messages.append(f"{where}: {error.message}")
    return tuple(messages)
