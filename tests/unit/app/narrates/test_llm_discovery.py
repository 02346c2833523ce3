"""Discovery of OpenAI-compatible servers on loopback: real sockets, injected ports."""

from __future__ import annotations

import socket

from aiohttp import web

from app.narrates.llm import KNOWN_SERVERS, discover_backends
from tests.helpers.fake_openai import FakeOpenAI


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class OtherWebServer:
    """Some non-LLM web server on a usual port (e.g. a Flask app on 5000): /v1/models is not JSON."""

    async def __aenter__(self):
        async def html(request: web.Request) -> web.Response:
            return web.Response(text="<html>hello</html>")

        app = web.Application()
        app.router.add_get("/v1/models", html)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc):
        await self.runner.cleanup()


def test_the_usual_ports_are_known_in_preference_order():
    assert KNOWN_SERVERS == (
        ("ollama", 11434),
        ("lm-studio", 1234),
        ("llama.cpp", 8080),
        ("koboldcpp", 5001),
        ("text-generation-webui", 5000),
        ("vllm", 8000),
    )


async def test_discovery_lists_the_servers_that_answer_in_preference_order():
    async with FakeOpenAI(models=("llama3", "qwen")) as first, FakeOpenAI(models=()) as second:
        async with OtherWebServer() as other:
            servers = [
                ("ollama", closed_port()),
                ("lm-studio", second.port),
                ("flask", other.port),
                ("vllm", first.port),
            ]
            found = await discover_backends("127.0.0.1", timeout=5.0, servers=servers)
    assert [(d.name, d.port, d.models) for d in found] == [
        ("lm-studio", second.port, ()),
        ("vllm", first.port, ("llama3", "qwen")),
    ]
    assert found[1].base_url == f"http://127.0.0.1:{first.port}/v1"
    backend = found[1].backend()
    assert backend.origin == "discovered" and backend.model == "llama3" and backend.name == "vllm"
    assert found[0].backend().model is None


async def test_a_server_that_hangs_is_skipped_after_the_timeout():
    hung = socket.socket()  # listens but never accepts/answers
    hung.bind(("127.0.0.1", 0))
    hung.listen()
    try:
        found = await discover_backends("127.0.0.1", timeout=0.2, servers=[("stuck", hung.getsockname()[1])])
    finally:
        hung.close()
    assert found == []


async def test_no_servers_means_no_probes():
    assert await discover_backends(servers=()) == []
