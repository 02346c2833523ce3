"""ComfyUI's prompt weighting syntax: ``(text)``, ``(text:1.3)``, nesting, ``\\(`` / ``\\)``.

Owns turning a prompt into weighted text segments exactly as ComfyUI's ``CLIPTextEncode``
does before tokenising (its ``escape_important`` / ``token_weights`` / ``parse_parentheses``
rules, re-implemented from their documented behaviour):

* ``(text)`` multiplies the enclosing weight by 1.1; ``((text))`` gives 1.21.
* ``(text:w)`` sets the weight to ``w`` absolutely (the number after the LAST colon; a colon
  at the very start does not count). If that tail is not a number, the colon stays in the text
  and the group gets ×1.1.
* ``\\(`` and ``\\)`` are literal parentheses. Unbalanced parentheses are kept as text the way
  ComfyUI keeps them (a stray ``)`` shifts its nesting counter below zero; we do the same).
* There is no ``[text]`` de-emphasis and no ``AND`` / scheduling syntax (those are A1111).
* Every group becomes its own segment (ComfyUI tokenises each separately, which decides where
  77-token windows break), and a segment is further split before each `` embedding:`` word.

Weights that are not finite (``(x:nan)``, ``(x:inf)``) raise :class:`PromptWeightError`;
ComfyUI would silently produce NaN conditioning. So does nesting deeper than
:data:`MAX_NESTING` levels, which keeps the work linear in the prompt's length. Pure functions, any thread; no recursion, so
deeply nested prompts cannot overflow the stack.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass

from daemon.models.errors import ModelInputError

EMPHASIS = 1.1
#: Deepest ``(…)`` nesting parsed. Each level rescans its group's text, so the work is bounded by
#: this many passes over the prompt (ComfyUI's recursive parser fails far deeper, near Python's
#: recursion limit; real prompts nest a handful of levels).
MAX_NESTING = 64
EMBEDDING_PREFIX = "embedding:"

# Placeholders for escaped parentheses while parsing (ComfyUI uses the same two characters).
_ESCAPED_CLOSE = "\0\1"
_ESCAPED_OPEN = "\0\2"
_EMBEDDING_BOUNDARY = re.compile(r"[ \n]" + re.escape(EMBEDDING_PREFIX))


class PromptWeightError(ModelInputError):
    """A prompt's weight syntax asks for something that cannot be encoded (e.g. ``nan``)."""


@dataclass(frozen=True)
class WeightedText:
    """A piece of prompt text and the weight its tokens get."""

    text: str
    weight: float


def _escape(text: str) -> str:
    return text.replace("\\)", _ESCAPED_CLOSE).replace("\\(", _ESCAPED_OPEN)


def _unescape(text: str) -> str:
    return text.replace(_ESCAPED_CLOSE, ")").replace(_ESCAPED_OPEN, "(")


def _top_level_items(text: str) -> list[str]:
    """Split into plain runs and top-level ``(...)`` groups (ComfyUI's nesting counter rules)."""
    items: list[str] = []
    current: list[str] = []
    depth = 0
    for char in text:
        if char == "(":
            if depth == 0 and current:
                items.append("".join(current))
                current = []
            current.append(char)
            depth += 1
        elif char == ")":
            depth -= 1
            current.append(char)
            if depth == 0:
                items.append("".join(current))
                current = []
        else:
            current.append(char)
    if current:
        items.append("".join(current))
    return items


def _group_weight(inner: str, enclosing: float) -> tuple[str, float]:
    """Text and weight of a ``(inner)`` group."""
    colon = inner.rfind(":")
    if colon > 0:
        try:
            explicit = float(inner[colon + 1 :])
        except ValueError:
            pass
        else:
            if not math.isfinite(explicit):
                raise PromptWeightError(
                    f"prompt weight {inner[colon + 1 :].strip()!r} is not a finite number"
                )
            return inner[:colon], explicit
    weight = enclosing * EMPHASIS
    if not math.isfinite(weight):
        raise PromptWeightError("prompt nests parentheses so deeply that the weight overflows")
    return inner, weight


def parse_weighted_prompt(prompt: str) -> list[WeightedText]:
    """Weighted segments of ``prompt`` in order (escapes resolved, empty groups dropped)."""
    segments: list[WeightedText] = []
    stack: list[tuple[Iterator[str], float]] = [(iter(_top_level_items(_escape(prompt))), 1.0)]
    while stack:
        items, weight = stack[-1]
        item = next(items, None)
        if item is None:
            stack.pop()
            continue
        if len(item) >= 2 and item[0] == "(" and item[-1] == ")":
            if len(stack) > MAX_NESTING:
                raise PromptWeightError(
                    f"prompt nests parentheses deeper than {MAX_NESTING} levels; escape literal "
                    "parentheses as \\( and \\)"
                )
            inner, inner_weight = _group_weight(item[1:-1], weight)
            stack.append((iter(_top_level_items(inner)), inner_weight))
        else:
            segments.append(WeightedText(_unescape(item), weight))
    return segments


def split_embedding_words(segment: str) -> list[str]:
    """Split a segment before each `` embedding:`` / ``\\nembedding:`` (ComfyUI's word units).

    The pieces are what ComfyUI tokenises one by one; empty pieces are dropped.
    """
    parts = _EMBEDDING_BOUNDARY.split(segment)
    pieces = [parts[0]] + [EMBEDDING_PREFIX + rest for rest in parts[1:]]
    return [piece for piece in pieces if piece != ""]
