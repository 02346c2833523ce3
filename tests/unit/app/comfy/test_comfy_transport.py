"""app.comfy.transport: httpx over asyncio streams — keep-alive, reconnect, timeouts, errors.

A tiny HTTP/1.1 server on port 0 (asyncio streams): echoes POST bodies, ``/close`` answers then
drops the connection, ``/silent`` never answers (until the test ends).
"""

from __future__ import annotations

import asyncio
import socket

import httpx
import pytest

from app.comfy.rest import ComfyRest
from app.comfy.transport import LoopBackend, plain_http_transport


class TinyServer:
    def __init__(self) -> None:
        self.connections = 0
        self.release = asyncio.Event()
        self.closed_one = asyncio.Event()  # a connection was closed by the server (socket gone)
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task] = set()

    async def __aenter__(self) -> "TinyServer":
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release.set()
        self._server.close()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._handlers.add(asyncio.current_task())
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode().split("\r\n")
                path = lines[0].split()[1]
                length = next((int(line.split(":")[1]) for line in lines if line.lower().startswith("content-length")), 0)
                body = await reader.readexactly(length) if length else b"ok"
                if path == "/silent":
                    await self.release.wait()
                    return
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
                await writer.drain()
                if path == "/close":
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except ConnectionError:
                pass
            finally:
                self._handlers.discard(asyncio.current_task())
            self.closed_one.set()


def backend_of(client: httpx.AsyncClient) -> LoopBackend:
    return client._transport._pool._network_backend  # type: ignore[attr-defined]


async def test_requests_go_through_the_loop_backend_and_reuse_one_connection():
    async with TinyServer() as server:
        async with httpx.AsyncClient(base_url=server.url, transport=plain_http_transport()) as client:
            replies = [await client.post("/echo", content=f"body {n}".encode()) for n in range(5)]
            assert [r.content for r in replies] == [f"body {n}".encode() for n in range(5)]
            assert backend_of(client).connections_opened == 1 and server.connections == 1


async def test_a_connection_the_server_closed_while_idle_is_replaced():
    async with TinyServer() as server:
        async with httpx.AsyncClient(base_url=server.url, transport=plain_http_transport()) as client:
            assert (await client.get("/close")).content == b"ok"
            await server.closed_one.wait()  # the server's socket is closed: ours reads EOF
            assert (await client.get("/again")).content == b"ok"
            assert backend_of(client).connections_opened == 2


async def test_timeouts_and_refused_connections_raise_httpx_errors():
    async with TinyServer() as server:
        async with httpx.AsyncClient(base_url=server.url, transport=plain_http_transport()) as client:
            with pytest.raises(httpx.ReadTimeout):
                await client.get("/silent", timeout=0.05)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    async with httpx.AsyncClient(base_url=dead, transport=plain_http_transport()) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get("/")


async def test_comfy_rest_uses_it_for_plain_http_only():
    plain, tls = ComfyRest("http://127.0.0.1:8188"), ComfyRest("https://comfy.example:443")
    plain._open_http()
    tls._open_http()
    try:
        assert isinstance(backend_of(plain._http), LoopBackend)
        assert not isinstance(getattr(tls._http._transport._pool, "_network_backend", None), LoopBackend)
    finally:
        await plain._close_http()
        await tls._close_http()
