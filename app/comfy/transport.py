"""A leaner httpx transport for plain-``http://`` ComfyUI instances: asyncio streams, no anyio.

httpx's default transport reaches the socket through httpcore's anyio backend, which wraps every
read and write in anyio cancel scopes and rebuilds a dict of socket attributes each time the pool
checks whether an idle connection is still usable. Against a local ComfyUI that is about a sixth
of the client's CPU per job (three requests). :func:`plain_http_transport` keeps httpx and
httpcore (HTTP/1.1 parsing, pooling, keep-alive, httpx's error mapping) and swaps only the
network layer for :class:`LoopBackend`, which talks to the socket with asyncio streams.

Only for ``http://``: ``https://`` instances and environment proxies keep httpx's own transports
(their TLS and proxy code is left untouched). Runs on the event loop of the client that uses it.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterable
from typing import Any

import httpcore
import httpx
from httpcore._utils import is_socket_readable

_SocketOption = tuple[int, int, Any]


class LoopStream(httpcore.AsyncNetworkStream):
    """One TCP connection as asyncio (reader, writer); errors mapped to httpcore's types."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        try:
            async with asyncio.timeout(timeout):
                return await self._reader.read(max_bytes)
        except TimeoutError as exc:
            raise httpcore.ReadTimeout(exc) from exc
        except OSError as exc:
            raise httpcore.ReadError(exc) from exc

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        try:
            async with asyncio.timeout(timeout):
                self._writer.write(buffer)
                await self._writer.drain()
        except TimeoutError as exc:
            raise httpcore.WriteTimeout(exc) from exc
        except OSError as exc:
            raise httpcore.WriteError(exc) from exc

    async def aclose(self) -> None:
        self._writer.close()
        try:
            await self._writer.wait_closed()
        except OSError:
            pass  # already reset by the peer: closed either way

    async def start_tls(self, ssl_context: Any, server_hostname: str | None = None,
                        timeout: float | None = None) -> httpcore.AsyncNetworkStream:
        # plain_http_transport() is never mounted for https:// (nor for proxies, which may tunnel).
        raise httpcore.ConnectError("LoopStream carries plain HTTP only")

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":
            # The pool asks this of idle keep-alive connections: readable = closed by the server.
            sock = self._writer.get_extra_info("socket")
            return sock is None or is_socket_readable(sock)
        if info == "socket":
            return self._writer.get_extra_info("socket")
        if info == "client_addr":
            return self._writer.get_extra_info("sockname")
        if info == "server_addr":
            return self._writer.get_extra_info("peername")
        return None  # "ssl_object": none on plain HTTP


class LoopBackend(httpcore.AsyncNetworkBackend):
    """httpcore network backend on asyncio streams (plain TCP only)."""

    def __init__(self) -> None:
        self.connections_opened = 0

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None,
                          socket_options: Iterable[_SocketOption] | None = None) -> httpcore.AsyncNetworkStream:
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(
                    host, port, local_addr=(local_address, 0) if local_address else None)
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(exc) from exc
        except OSError as exc:
            raise httpcore.ConnectError(exc) from exc
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for option in socket_options or ():
                sock.setsockopt(*option)
        self.connections_opened += 1
        return LoopStream(reader, writer)

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: Iterable[_SocketOption] | None = None) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("LoopBackend does not open Unix sockets")

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


def plain_http_transport(limits: httpx.Limits | None = None) -> httpx.AsyncHTTPTransport:
    """An ``httpx.AsyncHTTPTransport`` whose connection pool uses :class:`LoopBackend`.

    httpx has no public switch for httpcore's network backend, so the pool the transport built is
    replaced by an identical one on our backend (``_pool`` is what httpx sends through; a test
    checks that requests really go through :class:`LoopBackend`).
    """
    limits = limits or httpx.Limits(max_connections=100, max_keepalive_connections=20, keepalive_expiry=5.0)
    transport = httpx.AsyncHTTPTransport(limits=limits, trust_env=False)
    transport._pool = httpcore.AsyncConnectionPool(
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        http1=True, http2=False, network_backend=LoopBackend(),
    )
    return transport
