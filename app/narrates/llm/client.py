"""The one client for OpenAI-compatible chat completions (llama.cpp, Ollama, LM Studio, KoboldCpp,
text-generation-webui, vLLM, OpenAI), over httpx.

Owns :class:`LlmClient`: plain and streamed (SSE) chat completions, structured JSON output with
the dialect fallback of :mod:`app.narrates.llm.structured` (remembered per backend), token
counting through the server where it can (llama.cpp ``/tokenize``, llama-cpp-python
``/extras/tokenize/count``, KoboldCpp ``/api/extra/tokencount``) and an estimate otherwise, and
the model list. Every call has a time limit (:class:`~app.narrates.llm.types.LlmTimeouts`) and
bounded retries with backoff on 429 (``Retry-After`` honoured), 5xx and dropped connections
(:class:`~app.narrates.llm.types.RetryPolicy`); a stream is never retried once text was
delivered. Failures are the typed errors of :mod:`app.narrates.llm.errors`.

Cancelling the task that consumes :meth:`LlmClient.stream`, or closing the iterator, closes the
HTTP stream at once, which makes llama.cpp-style servers stop generating.

Runs on one asyncio event loop; not thread-safe. Per-agent settings travel in each
:class:`~app.narrates.llm.types.ChatRequest`.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Mapping, MutableMapping
from datetime import UTC, datetime
from typing import Any

import httpx

from app.narrates.llm.errors import LlmError, LlmHttpError, LlmOutputError, LlmTimeout, LlmUnavailable
from app.narrates.llm.sse import DONE, SseParser, parse_chat_event
from app.narrates.llm.structured import (
    JsonDialect,
    check_schema,
    extract_json,
    is_response_format_refusal,
    response_format,
    schema_instruction,
    validate,
)
from app.narrates.llm.types import (
    ChatChunk,
    ChatMessage,
    ChatReply,
    ChatRequest,
    LlmBackend,
    LlmTimeouts,
    RetryPolicy,
)

log = logging.getLogger("app.narrates.llm")

#: A stream that goes on this many times past max_tokens comes from a server ignoring the limit.
RUNAWAY_FACTOR = 4
_RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
_TRANSPORT_ERRORS = (httpx.TransportError,)
#: Characters per token for the estimate when the server cannot count (English prose with BPE).
CHARS_PER_TOKEN = 3.6


def estimate_tokens(text: str) -> int:
    """A rough token count for when the server has no tokenize route (~3.6 characters per token)."""
    return math.ceil(len(text) / CHARS_PER_TOKEN) if text else 0


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


class _Retryable(Exception):
    """Internal: one try failed in a way worth another try; ``error`` is raised if none is left."""

    def __init__(self, error: LlmError, retry_after: float | None = None) -> None:
        super().__init__(str(error))
        self.error = error
        self.retry_after = retry_after


class LlmClient:
    """Chat completions against one :class:`~app.narrates.llm.types.LlmBackend` (see the module docstring).

    ``dialect_memory`` may be shared between clients of the same server so the JSON dialect that
    worked is found once (keyed by base URL); by default each client keeps its own. The HTTP
    session opens on first use; :meth:`aclose` (or ``async with``) closes it.
    """

    def __init__(
        self,
        backend: LlmBackend,
        *,
        timeouts: LlmTimeouts | None = None,
        retries: RetryPolicy | None = None,
        dialect_memory: MutableMapping[str, JsonDialect] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.backend = backend
        self.timeouts = timeouts or LlmTimeouts()
        self.retries = retries or RetryPolicy()
        self._dialects = dialect_memory if dialect_memory is not None else {}
        self._transport = transport
        self._http: httpx.AsyncClient | None = None
        self._server_model: str | None = None
        self._token_route: tuple[str, str, Callable[[Any], int]] | None = None
        self._token_route_known = False

    # --- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> LlmClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP session (a later call opens a new one)."""
        if self._http is not None:
            http, self._http = self._http, None
            await http.aclose()

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            headers = {"User-Agent": "LunaNarrates-Operator", "Accept": "application/json"}
            if self.backend.api_key:
                headers["Authorization"] = f"Bearer {self.backend.api_key}"
            t = self.timeouts
            self._http = httpx.AsyncClient(
                headers=headers,
                timeout=httpx.Timeout(connect=t.connect, read=t.read, write=t.write, pool=t.connect),
                trust_env=not self.backend.is_loopback,  # env proxies for remote hosts only
                transport=self._transport,
            )
        return self._http

    @property
    def json_dialect(self) -> JsonDialect | None:
        """The structured-output dialect that last worked with this backend (``None``: not tried yet)."""
        return self._dialects.get(self.backend.base_url)

    # --- plumbing ----------------------------------------------------------------------------

    def _url(self, path: str) -> str:
        return f"{self.backend.base_url}/{path.lstrip('/')}"

    def _what(self, path: str) -> str:
        return f"LLM server {self.backend.name} ({self.backend.base_url}) {path}"

    def _deadline(self, seconds: float | None = None) -> float:
        return asyncio.get_running_loop().time() + (self.timeouts.total if seconds is None else seconds)

    @staticmethod
    def _remaining(deadline: float) -> float:
        return max(0.0, deadline - asyncio.get_running_loop().time())

    def _classify_status(
        self, response: httpx.Response, body: str, what: str, *, no_retry: Callable[[int, str], bool] | None
    ) -> None:
        status = response.status_code
        if status < 400:
            return
        error = LlmHttpError(self._http_message(status, body, what), status=status, body=body)
        if status in _RETRY_STATUSES and not (no_retry and no_retry(status, body)):
            raise _Retryable(error, _retry_after(response) if status in (429, 503) else None)
        raise error

    def _http_message(self, status: int, body: str, what: str) -> str:
        hint = {
            401: "check api_key in llm.toml",
            403: "check api_key in llm.toml",
            404: "check the URL (it should end in /v1) and the model name",
            429: "the server is rate-limiting; wait and try again",
        }.get(
            status, "the server failed; check its log" if status >= 500 else "the server rejected the request"
        )
        return f"{what} answered HTTP {status}: {body[:300]} — {hint}"

    async def _with_retries(self, what: str, deadline: float, attempt_call: Callable[[], Any]) -> Any:
        """Run ``attempt_call`` with the retry policy; the whole thing ends by ``deadline``."""
        attempt = 0
        limit = self._remaining(deadline)
        while True:
            attempt += 1
            try:
                async with asyncio.timeout(self._remaining(deadline)):
                    return await attempt_call()
            except TimeoutError as exc:
                raise LlmTimeout(
                    f"{what} did not answer within {limit:.3g} s — is the server overloaded? "
                    "Raise timeouts.total in llm.toml or use a smaller model"
                ) from exc
            except httpx.ReadTimeout as exc:
                raise LlmTimeout(
                    f"{what} sent nothing for {self.timeouts.read:g} s — the server hangs; restart it or "
                    "raise timeouts.read in llm.toml"
                ) from exc
            except _Retryable as retryable:
                if attempt >= self.retries.attempts:
                    raise retryable.error from None
                delay = self.retries.delay(attempt, retryable.retry_after)
                if delay >= self._remaining(deadline):
                    raise retryable.error from None
                log.info(
                    "%s: %s; try %d of %d in %.2f s",
                    what,
                    retryable.error,
                    attempt + 1,
                    self.retries.attempts,
                    delay,
                )
                await asyncio.sleep(delay)

    async def _request_json(
        self,
        method: str,
        path: str,
        *,
        body: Mapping[str, Any] | None = None,
        url: str | None = None,
        deadline: float | None = None,
        no_retry: Callable[[int, str], bool] | None = None,
        retry: bool = True,
    ) -> Any:
        what = self._what(path)
        deadline = self._deadline() if deadline is None else deadline

        async def attempt() -> Any:
            try:
                response = await self._client().request(method, url or self._url(path), json=body)
            except httpx.ReadTimeout:
                raise
            except httpx.TimeoutException as exc:  # connect/write/pool
                raise self._maybe_retry(
                    LlmUnavailable(f"{what}: timed out connecting ({exc!r})"), retry
                ) from exc
            except _TRANSPORT_ERRORS as exc:
                raise self._maybe_retry(self._unreachable(what, exc), retry) from exc
            text = response.text
            if retry:
                self._classify_status(response, text, what, no_retry=no_retry)
            elif response.status_code >= 400:
                raise LlmHttpError(
                    self._http_message(response.status_code, text, what),
                    status=response.status_code,
                    body=text,
                )
            try:
                return response.json()
            except ValueError as exc:
                raise LlmOutputError(f"{what} answered non-JSON: {text[:200]!r}", raw=text) from exc

        return await self._with_retries(what, deadline, attempt)

    @staticmethod
    def _maybe_retry(error: LlmError, retry: bool) -> Exception:
        return _Retryable(error) if retry else error

    def _unreachable(self, what: str, exc: Exception) -> LlmUnavailable:
        return LlmUnavailable(
            f"{what} is unreachable ({type(exc).__name__}: {exc}) — start the server, fix the URL in "
            "llm.toml / --llm, or use --llm embedded"
        )

    async def _model_for(self, request: ChatRequest) -> str | None:
        if request.model:
            return request.model
        if self.backend.model:
            return self.backend.model
        if self._server_model is None:
            models = await self.list_models()
            self._server_model = models[0] if models else ""
        return self._server_model or None

    async def _body(
        self, request: ChatRequest, *, stream: bool, messages: tuple[ChatMessage, ...] | None = None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "messages": [{"role": m.role, "content": m.content} for m in (messages or request.messages)],
            "temperature": request.temperature,
            "max_tokens": request.max_tokens,
            "stream": stream,
        }
        model = await self._model_for(request)
        if model:
            body["model"] = model
        if request.stop:
            body["stop"] = list(request.stop)
        if request.top_p is not None:
            body["top_p"] = request.top_p
        if request.seed is not None:
            body["seed"] = request.seed
        return body

    # --- chat --------------------------------------------------------------------------------

    async def complete(self, request: ChatRequest) -> ChatReply:
        """One non-streamed answer. An empty answer raises :class:`LlmOutputError`."""
        return await self._complete(await self._body(request, stream=False))

    async def _complete(
        self, body: dict[str, Any], *, no_retry: Callable[[int, str], bool] | None = None
    ) -> ChatReply:
        started = time.perf_counter()
        payload = await self._request_json("POST", "chat/completions", body=body, no_retry=no_retry)
        reply = self._parse_completion(payload, time.perf_counter() - started, body.get("model"))
        if not reply.text.strip():
            raise LlmOutputError(
                f"{self._what('chat/completions')} gave an empty answer (finish_reason {reply.finish_reason}) — "
                "try again, raise max_tokens, or use a stronger model",
                raw=reply.text,
            )
        return reply

    def _parse_completion(self, payload: Any, elapsed: float, model: str | None) -> ChatReply:
        what = self._what("chat/completions")
        raw = json.dumps(payload)[:2000]
        if (
            not isinstance(payload, dict)
            or not isinstance(payload.get("choices"), list)
            or not payload["choices"]
        ):
            raise LlmOutputError(f"{what} answered without choices: {raw[:200]}", raw=raw)
        choice = payload["choices"][0]
        message = choice.get("message") if isinstance(choice, dict) else None
        content = message.get("content") if isinstance(message, dict) else None
        if content is None and isinstance(choice, dict):
            content = choice.get("text")
        if content is None:
            content = ""
        if not isinstance(content, str):
            raise LlmOutputError(f"{what} answered a non-text message: {raw[:200]}", raw=raw)
        usage = payload.get("usage") if isinstance(payload.get("usage"), dict) else {}
        return ChatReply(
            text=content,
            finish_reason=choice.get("finish_reason"),
            model=payload.get("model") if isinstance(payload.get("model"), str) else model,
            prompt_tokens=usage.get("prompt_tokens") if isinstance(usage.get("prompt_tokens"), int) else None,
            completion_tokens=(
                usage.get("completion_tokens") if isinstance(usage.get("completion_tokens"), int) else None
            ),
            elapsed_s=elapsed,
        )

    async def stream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        """Stream the answer as it is generated (SSE); the last chunk carries ``finish_reason``.

        Raises :class:`LlmUnavailable` (``partial_text`` set) when the stream breaks after text
        arrived, :class:`LlmTimeout` when the server stalls, :class:`LlmOutputError` for an empty
        answer or a server that ignores ``max_tokens``.
        """
        what = self._what("chat/completions")
        body = await self._body(request, stream=True)
        deadline = self._deadline()
        runaway_limit = request.max_tokens * RUNAWAY_FACTOR + 32
        delivered: list[str] = []
        attempt = 0
        pause = 0.0  # backoff before re-asking after a stream that broke before any text
        while True:
            attempt += 1
            if pause:
                await asyncio.sleep(min(pause, self._remaining(deadline)))
                pause = 0.0
            try:
                response = await self._open_stream(body, what, deadline)
            except _Retryable as retryable:
                if attempt >= self.retries.attempts:
                    raise retryable.error from None
                delay = self.retries.delay(attempt, retryable.retry_after)
                if delay >= self._remaining(deadline):
                    raise retryable.error from None
                await asyncio.sleep(delay)
                continue
            finished = False
            chunks = 0
            try:
                if not response.headers.get("content-type", "").startswith("text/event-stream"):
                    # A server that ignored stream=true and sent one JSON completion.
                    await self._read_with_deadline(response.aread(), deadline, what, delivered)
                    reply = self._parse_completion(_json_or_error(response, what), 0.0, body.get("model"))
                    if not reply.text.strip():
                        raise LlmOutputError(f"{what} gave an empty answer", raw=reply.text)
                    yield ChatChunk(reply.text, reply.finish_reason or "stop")
                    return
                parser = SseParser()
                lines = response.aiter_lines()
                at_end = False
                while not finished and not at_end:
                    try:
                        line = await self._read_with_deadline(anext(lines), deadline, what, delivered)
                        events = parser.feed(line)
                    except StopAsyncIteration:
                        events, at_end = parser.flush(), True
                    for event in events:
                        parsed = parse_chat_event(event.data)
                        if parsed == DONE:
                            finished = True
                            break
                        if parsed is None:
                            continue
                        assert isinstance(parsed, ChatChunk)
                        chunks += 1
                        if chunks > runaway_limit:
                            raise LlmOutputError(
                                f"{what} went on past {runaway_limit} chunks with max_tokens {request.max_tokens} — "
                                "the server ignores max_tokens; cap it on the server or use another one",
                                raw="".join(delivered),
                            )
                        if parsed.text:
                            delivered.append(parsed.text)
                        yield parsed
                        if parsed.finish_reason is not None:
                            finished = True  # [DONE] may follow; we have all we need
                            break
            except _TRANSPORT_ERRORS as exc:
                if not delivered and attempt < self.retries.attempts and not finished:
                    log.info("%s: stream broke before any text (%r); retrying", what, exc)
                    pause = self.retries.delay(attempt)
                    continue
                raise LlmUnavailable(
                    f"{what}: the stream broke after {len(''.join(delivered))} characters ({type(exc).__name__}) — "
                    "the server may have crashed; check it and try again",
                    partial_text="".join(delivered),
                ) from exc
            finally:
                await response.aclose()
            if not finished:
                if not delivered and attempt < self.retries.attempts:
                    pause = self.retries.delay(attempt)
                    continue
                raise LlmUnavailable(
                    f"{what}: the stream ended before the answer was complete "
                    f"({len(''.join(delivered))} characters, no finish) — the server may have crashed; try again",
                    partial_text="".join(delivered),
                )
            if not "".join(delivered).strip():
                raise LlmOutputError(
                    f"{what} gave an empty answer — try again, raise max_tokens, or use a stronger model"
                )
            return

    async def _open_stream(self, body: dict[str, Any], what: str, deadline: float) -> httpx.Response:
        http = self._client()
        request = http.build_request(
            "POST", self._url("chat/completions"), json=body, headers={"Accept": "text/event-stream"}
        )
        try:
            async with asyncio.timeout(self._remaining(deadline)):
                response = await http.send(request, stream=True)
        except TimeoutError as exc:
            raise LlmTimeout(f"{what} did not start answering within {self.timeouts.total:g} s") from exc
        except httpx.ReadTimeout as exc:
            raise LlmTimeout(
                f"{what} sent nothing for {self.timeouts.read:g} s — the server hangs; restart it or raise "
                "timeouts.read in llm.toml"
            ) from exc
        except httpx.TimeoutException as exc:
            raise _Retryable(LlmUnavailable(f"{what}: timed out connecting ({exc!r})")) from exc
        except _TRANSPORT_ERRORS as exc:
            raise _Retryable(self._unreachable(what, exc)) from exc
        if response.status_code >= 400:
            try:
                await self._read_with_deadline(response.aread(), deadline, what, [])
                text = response.text
            except (LlmError, httpx.HTTPError):
                text = ""
            finally:
                await response.aclose()
            self._classify_status(response, text, what, no_retry=None)
        return response

    async def _read_with_deadline(
        self, awaitable: Any, deadline: float, what: str, delivered: list[str]
    ) -> Any:
        try:
            async with asyncio.timeout(self._remaining(deadline)):
                return await awaitable
        except TimeoutError as exc:
            raise LlmTimeout(
                f"{what} was still answering after {self.timeouts.total:g} s — raise timeouts.total in llm.toml "
                "or lower max_tokens",
                partial_text="".join(delivered),
            ) from exc
        except httpx.ReadTimeout as exc:
            raise LlmTimeout(
                f"{what} stalled for {self.timeouts.read:g} s mid-answer — the server hangs; restart it",
                partial_text="".join(delivered),
            ) from exc

    # --- structured output -------------------------------------------------------------------

    async def complete_json(
        self, request: ChatRequest, schema: Mapping[str, Any], *, schema_name: str, max_attempts: int = 3
    ) -> dict[str, Any]:
        """An answer that is a JSON object valid against ``schema``.

        Asks with ``response_format`` ``json_schema``; a server that refuses it is asked with
        ``json_object`` + ``schema``, then with the schema in the prompt (the dialect that worked
        is remembered for this backend). Near-JSON is repaired (code fences, trailing text); an
        answer that is still invalid is re-asked with the errors, up to ``max_attempts`` answers
        in all, then :class:`LlmOutputError` (its ``raw`` is the last answer).
        """
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        check_schema(schema)
        dialect = self.json_dialect or JsonDialect.JSON_SCHEMA
        messages = request.messages
        errors: tuple[str, ...] = ()
        raw = ""
        answers = 0
        while answers < max_attempts:
            asked = (
                messages
                if dialect is JsonDialect.JSON_SCHEMA
                else _with_instruction(messages, schema, schema_name)
            )
            body = await self._body(request, stream=False, messages=asked)
            fmt = response_format(dialect, schema, schema_name)
            if fmt is not None:
                body["response_format"] = fmt
            try:
                reply = await self._complete(body, no_retry=is_response_format_refusal if fmt else None)
            except LlmHttpError as exc:
                following = dialect.next()
                if (
                    fmt is not None
                    and following is not None
                    and is_response_format_refusal(exc.status, exc.body)
                ):
                    log.info(
                        "%s refuses response_format %s; asking with %s",
                        self.backend.name,
                        dialect.value,
                        following.value,
                    )
                    dialect = following
                    continue
                raise
            except LlmOutputError as exc:  # empty answer
                self._dialects[self.backend.base_url] = dialect
                answers += 1
                raw, errors = exc.raw, ("the answer is empty",)
            else:
                self._dialects[self.backend.base_url] = dialect
                answers += 1
                raw = reply.text
                try:
                    value = extract_json(raw)
                except ValueError as exc:
                    errors = (str(exc),)
                else:
                    if isinstance(value, dict):
                        errors = validate(value, schema)
                        if not errors:
                            return value
                    else:
                        errors = (f"expected a JSON object, got {type(value).__name__}",)
                    if reply.finish_reason == "length":
                        errors = (*errors, "the answer was cut at max_tokens")
            log.info(
                "%s: answer %d of %d invalid: %s", schema_name, answers, max_attempts, "; ".join(errors[:3])
            )
            messages = (
                *request.messages,
                ChatMessage("assistant", raw[:2000]),
                ChatMessage(
                    "user",
                    f"That answer is not valid: {'; '.join(errors[:3])}. Answer again with only the corrected "
                    "JSON object.",
                ),
            )
        raise LlmOutputError(
            f"{schema_name}: no valid JSON from {self.backend.name} in {max_attempts} answers ({errors[0] if errors else 'unknown'}) "
            "— try again, raise max_tokens, or use a stronger model",
            raw=raw,
            errors=errors,
        )

    # --- models and tokens -------------------------------------------------------------------

    async def list_models(self) -> list[str]:
        """The model ids the server lists at ``GET /models``."""
        payload = await self._request_json("GET", "models", deadline=self._deadline(self.timeouts.probe * 3))
        data = payload.get("data") if isinstance(payload, dict) else None
        if not isinstance(data, list):
            raise LlmOutputError(
                f"{self._what('models')} answered without a 'data' list", raw=json.dumps(payload)[:500]
            )
        return [item["id"] for item in data if isinstance(item, dict) and isinstance(item.get("id"), str)]

    @property
    def token_count_source(self) -> str | None:
        """``"/tokenize"``-style route the server counts with, ``"estimate"``, or ``None`` before the first count."""
        if not self._token_route_known:
            return None
        return self._token_route[0] if self._token_route else "estimate"

    async def count_tokens(self, text: str) -> int:
        """Tokens in ``text`` as the server counts them where it can, else :func:`estimate_tokens`.

        The route that works is remembered; a server without one is asked once. A server that is
        down gives an estimate (and is asked again next time).
        """
        if self._token_route_known and self._token_route is None:
            return estimate_tokens(text)
        root = self.backend.root_url
        routes: list[tuple[str, str, Callable[[Any], int]]] = [
            ("/tokenize", "content", lambda p: len(p["tokens"])),  # llama.cpp C++ server
            ("/extras/tokenize/count", "input", lambda p: int(p["count"])),  # llama-cpp-python
            ("/api/extra/tokencount", "prompt", lambda p: int(p["value"])),  # KoboldCpp
        ]
        if self._token_route is not None:
            routes = [self._token_route]
        deadline = self._deadline(self.timeouts.probe * len(routes))
        for route in routes:
            path, key, read = route
            try:
                payload = await self._request_json(
                    "POST", path, url=root + path, body={key: text}, deadline=deadline, retry=False
                )
                count = read(payload)
            except LlmHttpError:
                continue  # no such route here
            except (LlmUnavailable, LlmTimeout):
                return estimate_tokens(text)
            except (LlmOutputError, KeyError, TypeError, ValueError):
                continue
            self._token_route, self._token_route_known = route, True
            return count
        self._token_route, self._token_route_known = None, True
        return estimate_tokens(text)


def _json_or_error(response: httpx.Response, what: str) -> Any:
    try:
        return response.json()
    except ValueError as exc:
        raise LlmOutputError(f"{what} answered non-JSON: {response.text[:200]!r}", raw=response.text) from exc


def _with_instruction(
    messages: tuple[ChatMessage, ...], schema: Mapping[str, Any], schema_name: str
) -> tuple[ChatMessage, ...]:
    """Add the schema to the first system message (or a new one): some chat templates allow only one."""
    instruction = schema_instruction(schema, schema_name)
    if messages and messages[0].role == "system":
        return (ChatMessage("system", f"{messages[0].content}\n\n{instruction}"), *messages[1:])
    return (ChatMessage("system", instruction), *messages)
