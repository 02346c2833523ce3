"""Typed errors of the Narrates engine; every message is meant to be shown to the operator as is.

Pure data; any thread.
"""

from __future__ import annotations


class NarratesError(Exception):
    """Base of every error this package raises on purpose."""


class StoreError(NarratesError):
    """The session database cannot be used (unreadable, corrupt, locked)."""


class SchemaTooNew(StoreError):
    """The database was written by a newer version of the app; it is left untouched."""

    def __init__(self, path: str, found: int, supported: int) -> None:
        super().__init__(
            f"{path} has session schema version {found}, but this version of Luna understands "
            f"up to {supported}; update Luna (the file was not changed)"
        )
        self.found = found
        self.supported = supported


class NotFound(NarratesError):
    """A session, turn, scene or render id that does not exist."""

    def __init__(self, kind: str, ident: object, hint: str = "") -> None:
        super().__init__(f"no {kind} {ident}" + (f" ({hint})" if hint else ""))
        self.kind = kind
        self.ident = ident


class CastError(NarratesError):
    """A cast file (characters, world notes, session settings) is invalid; names file and key."""


class InvalidEdit(NarratesError):
    """An edit, undo or regenerate that does not apply (nothing to undo, a turn without prose)."""


class StageFailed(NarratesError):
    """One pipeline stage failed; the turn is marked failed and every earlier stage is kept.

    ``stage`` is ``preprocessor``, ``strategist``, ``writer``, ``dreamer`` or ``summary``;
    ``llm`` is True when the cause is the LLM (server down, timeout, garbage output), which
    ``luna story`` reports with its own exit code.
    """

    def __init__(self, stage: str, message: str, *, turn_id: int | None = None, llm: bool = True) -> None:
        super().__init__(f"{stage}: {message}")
        self.stage = stage
        self.reason = message
        self.turn_id = turn_id
        self.llm = llm


class SceneRenderFailed(NarratesError):
    """A render of a stored scene failed; the turn and the scene are kept, the render row says why.

    ``kind`` is ``unavailable`` (no instance / daemon down without a stock variant),
    ``invalid`` (the prompt was refused), ``failed`` (the server failed the job) or ``storage``
    (an image could not be written, e.g. a full disk).
    """

    def __init__(self, message: str, *, kind: str, render_id: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.render_id = render_id
