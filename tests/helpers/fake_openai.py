"""A fake OpenAI-compatible LLM server for tests (aiohttp, real HTTP and real SSE, port 0).

Shaped after what real servers send (llama-cpp-python 0.3.36 captured on this machine, OpenAI's
API): ``POST /v1/chat/completions`` plain and streamed (first chunk role-only, then content
deltas, a finish chunk with ``finish_reason``, then ``data: [DONE]``), ``GET /v1/models``
(``{"object": "list", "data": [{"id": …}]}``) and llama.cpp's ``POST /tokenize`` at the server
root (``{"content": …}`` → ``{"tokens": [...]}``).

Basic use::

    async with FakeOpenAI() as fake:                 # FakeOpenAI(models=("m1",), tokenize=False, ...)
        backend = LlmBackend("fake", fake.url)       # fake.url == "http://127.0.0.1:PORT/v1"
        fake.script(Reply("Once upon a time."), Error(429, retry_after=0), Reply('{"a": 1}'))
        ...                                          # each chat request takes the next answer
        assert fake.chat_requests[0]["max_tokens"] == 64   # the JSON bodies as received

When the script is empty, ``fake.responder(body)`` answers (default: ``Reply(fake.default_text)``);
set it to route by request, e.g. by ``body["response_format"]["json_schema"]["name"]``. A script
entry may itself be a callable ``body -> answer``.

Answers (every one works for both plain and streamed requests unless said):

* :class:`Reply` ``(text, finish_reason="stop")`` — a normal answer; ``Reply("")`` is an empty
  answer, ``Reply('{"oops": ')`` malformed JSON, ``Reply('{"x": 1}')`` JSON of the wrong shape.
* :class:`Error` ``(status, body=None, retry_after=None)`` — an HTTP error (429 with
  ``Retry-After``, 500, …) with an OpenAI-style error body.
* :class:`Slow` ``(text, delay_s, first_delay_s=None)`` — a stream with ``delay_s`` between
  chunks (``first_delay_s`` before the first one, default the same; plain: one ``delay_s``).
* :class:`Cut` ``(text, after_chunks=2)`` — the connection is dropped mid-answer (stream: after
  that many content chunks; plain: halfway through the body).
* :class:`Endless` ``(piece=" and on", honour_max_tokens=False)`` — a stream that never ends
  (until the client goes); with ``honour_max_tokens`` it stops at ``max_tokens`` with
  ``finish_reason="length"`` like a real server whose model runs on.
* :class:`Hang` — headers never come (until the client gives up).
* :class:`Raw` ``(body, status=200, content_type=...)`` — exactly these bytes.

Server knobs (constructor keywords or attributes): ``models``; ``tokenize`` (False: no
``/tokenize`` route, 404 like OpenAI); ``refuse_json_schema`` (answer ``response_format``
``json_schema`` with llama-cpp-python's real HTTP 500); ``refuse_response_format`` (any
``response_format`` gets a 400, like servers that support neither); ``api_key`` (require
``Authorization: Bearer KEY``, else 401).

Inspection: ``requests`` (every :class:`RecordedRequest`: method, path, JSON body, headers),
``chat_requests`` (the chat bodies only), ``disconnects`` (how many streams the client closed
early) and the ``disconnected`` event (set at the first such close; tests wait on it).

Standalone, in its own process (benchmarks, subprocess tests, trying ``luna story`` by hand):
``python -m tests.helpers.fake_openai [--port N] [--reply TEXT] [--delay S] [--refuse-json-schema]``
prints ``FAKE_OPENAI_READY <base url>`` and serves (every answer ``Reply(TEXT)``, or ``Slow`` with
``--delay``) until stdin closes.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

# llama-cpp-python 0.3.36's answer to response_format {"type": "json_schema"} (captured).
LLAMA_CPP_PYTHON_JSON_SCHEMA_500 = json.dumps(
    {
        "error": {
            "message": (
                "1 validation error:\n  {'type': 'literal_error', 'loc': ('body', 'response_format', 'type'), "
                "'msg': \"Input should be 'text' or 'json_object'\", 'input': 'json_schema', 'ctx': "
                "{'expected': \"'text' or 'json_object'\"}}\n\n  File \"llama_cpp/server/app.py\", line 376, "
                "in create_chat_completion\n    POST /v1/chat/completions"
            ),
            "type": "internal_server_error",
            "param": None,
            "code": None,
        }
    }
)


@dataclass(frozen=True)
class Reply:
    text: str
    finish_reason: str = "stop"


@dataclass(frozen=True)
class Error:
    status: int
    body: str | None = None
    retry_after: float | None = None


@dataclass(frozen=True)
class Slow:
    text: str
    delay_s: float = 0.05
    first_delay_s: float | None = None  # before the first chunk (default: delay_s)


@dataclass(frozen=True)
class Cut:
    text: str
    after_chunks: int = 2


@dataclass(frozen=True)
class Endless:
    piece: str = " and on"
    honour_max_tokens: bool = False


@dataclass(frozen=True)
class Hang:
    pass


@dataclass(frozen=True)
class Raw:
    body: str
    status: int = 200
    content_type: str = "application/json"


Answer = Reply | Error | Slow | Cut | Endless | Hang | Raw


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    body: Any
    headers: dict[str, str] = field(default_factory=dict)


_PIECES = re.compile(r"\s*\S+|\s+")


def split_text(text: str) -> list[str]:
    """How the fake streams ``text``: one chunk per word with its leading whitespace."""
    return _PIECES.findall(text) or ([text] if text else [])


def fake_tokens(text: str) -> list[int]:
    """A deterministic stand-in tokenizer: one token per word or punctuation mark."""
    return [hash(piece) % 50_000 for piece in re.findall(r"\w+|[^\w\s]", text)]


class FakeOpenAI:
    """The fake server (see the module docstring). Runs on the test's event loop."""

    def __init__(
        self,
        *,
        models: Sequence[str] = ("fake-model",),
        tokenize: bool = True,
        refuse_json_schema: bool = False,
        refuse_response_format: bool = False,
        api_key: str | None = None,
        default_text: str = "The fake narrator speaks.",
        host: str = "127.0.0.1",
    ) -> None:
        self.models = tuple(models)
        self.tokenize = tokenize
        self.refuse_json_schema = refuse_json_schema
        self.refuse_response_format = refuse_response_format
        self.api_key = api_key
        self.default_text = default_text
        self.host = host
        self.responder: Callable[[dict[str, Any]], Answer] = lambda body: Reply(self.default_text)
        self.requests: list[RecordedRequest] = []
        self.disconnects = 0
        self.disconnected = asyncio.Event()
        self._script: list[Answer | Callable[[dict[str, Any]], Answer]] = []
        self._runner: web.AppRunner | None = None
        self._closing = asyncio.Event()  # Hang waits on it: the client gives up first, or close() ends it
        self.port = 0

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self) -> FakeOpenAI:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/tokenize", self._tokenize)
        app.router.add_route("*", "/{tail:.*}", self._not_found)  # recorded, like every request
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)  # 0 unless set: a free port
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def close(self) -> None:
        self._closing.set()
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def __aenter__(self) -> FakeOpenAI:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def root_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """The OpenAI base URL (what ``--llm`` and ``LlmBackend.base_url`` take)."""
        return f"{self.root_url}/v1"

    # --- scripting -----------------------------------------------------------------------

    def script(self, *answers: Answer | Callable[[dict[str, Any]], Answer]) -> None:
        """Queue answers for the next chat requests, one each, in order."""
        self._script.extend(answers)

    @property
    def pending(self) -> int:
        """Scripted answers not used yet."""
        return len(self._script)

    @property
    def chat_requests(self) -> list[dict[str, Any]]:
        return [r.body for r in self.requests if r.path == "/v1/chat/completions"]

    # --- handlers ------------------------------------------------------------------------

    async def _record(self, request: web.Request) -> Any:
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        self.requests.append(RecordedRequest(request.method, request.path, body, dict(request.headers)))
        return body

    def _unauthorized(self, request: web.Request) -> web.Response | None:
        if self.api_key and request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return _error_response(401, "Incorrect API key provided", "invalid_request_error")
        return None

    async def _sleep(self, seconds: float) -> bool:
        """Wait ``seconds``, or less when the server closes (then True): close() never waits on a delay."""
        try:
            await asyncio.wait_for(self._closing.wait(), seconds)
        except TimeoutError:
            return False
        return True

    async def _not_found(self, request: web.Request) -> web.StreamResponse:
        await self._record(request)
        return web.json_response({"detail": "Not Found"}, status=404)

    async def _models(self, request: web.Request) -> web.StreamResponse:
        await self._record(request)
        denied = self._unauthorized(request)
        if denied is not None:
            return denied
        data = [{"id": m, "object": "model", "owned_by": "fake", "permissions": []} for m in self.models]
        return web.json_response({"object": "list", "data": data})

    async def _tokenize(self, request: web.Request) -> web.StreamResponse:
        body = await self._record(request)
        if not self.tokenize:
            return web.Response(status=404, text="Not Found")
        if not isinstance(body, dict) or not isinstance(body.get("content"), str):
            return _error_response(400, "content must be a string", "invalid_request_error")
        return web.json_response({"tokens": fake_tokens(body["content"])})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await self._record(request)
        denied = self._unauthorized(request)
        if denied is not None:
            return denied
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            return _error_response(400, "messages is required", "invalid_request_error")
        fmt = body.get("response_format")
        if isinstance(fmt, dict):
            if self.refuse_response_format:
                return _error_response(
                    400, "Unrecognized request argument supplied: response_format", "invalid_request_error"
                )
            if self.refuse_json_schema and fmt.get("type") == "json_schema":
                return web.Response(
                    status=500, text=LLAMA_CPP_PYTHON_JSON_SCHEMA_500, content_type="application/json"
                )
        answer: Any = self._script.pop(0) if self._script else self.responder
        if callable(answer):
            answer = answer(body)
        stream = bool(body.get("stream"))
        model = body.get("model") or (self.models[0] if self.models else "fake-model")
        max_tokens = int(body.get("max_tokens") or 16)
        if isinstance(answer, Error):
            headers = {"Retry-After": f"{answer.retry_after:g}"} if answer.retry_after is not None else None
            if answer.body is not None:
                return web.Response(
                    status=answer.status, text=answer.body, content_type="application/json", headers=headers
                )
            return _error_response(
                answer.status, f"scripted HTTP {answer.status}", "server_error", headers=headers
            )
        if isinstance(answer, Raw):
            return web.Response(status=answer.status, text=answer.body, content_type=answer.content_type)
        if isinstance(answer, Hang):
            await self._closing.wait()
            return _error_response(503, "the fake server is closing", "server_error")
        if stream:
            return await self._stream(request, answer, model, max_tokens)
        return await self._plain(request, answer, model, body, max_tokens)

    async def _plain(
        self, request: web.Request, answer: Answer, model: str, body: dict[str, Any], max_tokens: int
    ) -> web.StreamResponse:
        if isinstance(answer, Endless):
            text, finish = answer.piece * max_tokens, "length"
        else:
            text = answer.text  # type: ignore[union-attr]
            finish = answer.finish_reason if isinstance(answer, Reply) else "stop"
        if isinstance(answer, Slow) and await self._sleep(answer.delay_s):
            return _error_response(503, "the fake server is closing", "server_error")
        prompt = " ".join(str(m.get("content", "")) for m in body["messages"] if isinstance(m, dict))
        payload = json.dumps(
            {
                "id": "chatcmpl-fake",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "logprobs": None,
                        "finish_reason": finish,
                    }
                ],
                "usage": {
                    "prompt_tokens": len(fake_tokens(prompt)),
                    "completion_tokens": len(split_text(text)),
                    "total_tokens": len(fake_tokens(prompt)) + len(split_text(text)),
                },
            }
        ).encode()
        if isinstance(answer, Cut):
            response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
            response.content_length = len(payload)
            await response.prepare(request)
            await response.write(payload[: len(payload) // 2])
            _drop(request)
            return response
        return web.Response(body=payload, content_type="application/json")

    async def _stream(
        self, request: web.Request, answer: Answer, model: str, max_tokens: int
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            status=200, headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)

        def frame(delta: dict[str, Any], finish: str | None) -> bytes:
            chunk = {
                "id": "chatcmpl-fake",
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": model,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
            }
            return f"data: {json.dumps(chunk)}\r\n\r\n".encode()

        try:
            await response.write(frame({"role": "assistant"}, None))
            if isinstance(answer, Endless):
                sent = 0
                while not answer.honour_max_tokens or sent < max_tokens:
                    await response.write(frame({"content": answer.piece}, None))
                    sent += 1
                    await asyncio.sleep(0)
                finish = "length"
            else:
                pieces = split_text(answer.text)  # type: ignore[union-attr]
                for index, piece in enumerate(pieces):
                    if isinstance(answer, Cut) and index >= answer.after_chunks:
                        _drop(request)
                        return response
                    if isinstance(answer, Slow):
                        first = answer.first_delay_s if answer.first_delay_s is not None else answer.delay_s
                        if await self._sleep(first if index == 0 else answer.delay_s):
                            _drop(request)
                            return response
                    await response.write(frame({"content": piece}, None))
                if isinstance(answer, Cut):
                    _drop(request)
                    return response
                finish = answer.finish_reason if isinstance(answer, Reply) else "stop"
            await response.write(frame({}, finish))
            await response.write(b"data: [DONE]\r\n\r\n")
            await response.write_eof()
        except (ConnectionError, asyncio.CancelledError):
            self.disconnects += 1
            self.disconnected.set()
            raise
        return response


def _drop(request: web.Request) -> None:
    """Cut the TCP connection without finishing the HTTP message (a crashed server)."""
    transport = request.transport
    if transport is not None:
        transport.abort()


def _error_response(
    status: int, message: str, kind: str, *, headers: dict[str, str] | None = None
) -> web.Response:
    body = {"error": {"message": message, "type": kind, "param": None, "code": None}}
    return web.json_response(body, status=status, headers=headers)


async def _serve_standalone(argv: list[str] | None = None) -> None:
    import argparse
    import sys

    parser = argparse.ArgumentParser(description="fake OpenAI-compatible server")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--reply", default="The fake narrator speaks.")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds between streamed chunks")
    parser.add_argument("--refuse-json-schema", action="store_true")
    args = parser.parse_args(argv)
    fake = FakeOpenAI(default_text=args.reply, refuse_json_schema=args.refuse_json_schema)
    fake.responder = lambda body: Slow(args.reply, args.delay) if args.delay else Reply(args.reply)
    fake.port = args.port
    await fake.start()
    print(f"FAKE_OPENAI_READY {fake.url}", flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)  # until stdin closes
    await fake.close()


if __name__ == "__main__":
    asyncio.run(_serve_standalone())
