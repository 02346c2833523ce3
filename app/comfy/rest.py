"""The HTTP (REST) side of one ComfyUI instance: health, queue, history, files, node schemas.

Owns :class:`ComfyTimeouts` and :class:`ComfyRest`, the httpx session with the instance's extra
headers and every REST call the operator needs, each with a timeout and a typed error
(:class:`~app.comfy.errors.ComfyUnavailable` for transport failures and 5xx,
:class:`~app.comfy.errors.ComfyProtocolError` for replies that break the API). Paths use the
``/api/...`` form (what the official frontend calls; every route has been registered under both
``/x`` and ``/api/x`` since 2023; ``InstanceConfig.api_prefix = ""`` for older builds). No
``Origin`` header is ever sent (ComfyUI answers 403 to cross-origin requests on loopback), and
loopback URLs never go through an environment proxy.

:class:`~app.comfy.client.ComfyClient` adds the WebSocket and job tracking on top. Runs on one
asyncio event loop; not thread-safe.
"""

from __future__ import annotations

import asyncio
import mimetypes
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from app.comfy.errors import ComfyProtocolError, ComfyUnavailable, OutputMissing
from app.comfy.instances import InstanceConfig
from app.comfy.results import (
    HistoryEntry,
    OutputFile,
    OutputRef,
    QueueSnapshot,
    SystemStats,
    UploadedImage,
    output_refs,
)


@dataclass(frozen=True)
class ComfyTimeouts:
    """Every time limit of the client, in seconds."""

    connect: float = 5.0  # TCP connect of HTTP requests
    request: float = 30.0  # read/write of one HTTP request
    upload: float = 120.0  # upload/download of one file
    ws_open: float = 10.0  # how long submit() waits for the socket to be open
    history_grace: float = 0.25  # after execution_success: wait this long for "executing null"
    history: float = 30.0  # after the job finished: give up waiting for its history entry
    reconnect_max_delay: float = 5.0  # cap of the reconnect backoff
    reconnect_give_up: float = 60.0  # unreachable this long -> unfinished jobs are JobLost
    watchdog: float = 10.0  # a job silent this long is reconciled over HTTP
    poll: float = 1.0  # while the socket is down, unfinished jobs are polled this often
    poll_fallback: bool = True  # submit even when the socket cannot open (track by polling)


class ComfyRest:
    """REST calls to one instance (see the module docstring); the session opens on first use."""

    def __init__(self, instance: InstanceConfig | str, *, timeouts: ComfyTimeouts | None = None) -> None:
        self.instance = (
            instance if isinstance(instance, InstanceConfig) else InstanceConfig(instance, instance)
        )
        self.name = self.instance.name
        self.timeouts = timeouts or ComfyTimeouts()
        self.queue_remaining_seen: int | None = None
        self._http: httpx.AsyncClient | None = None
        self._object_info: dict[str, Any] | None = None
        self._object_info_lock = asyncio.Lock()
        self._last_http_ok: float | None = None

    def _open_http(self) -> None:
        if self._http is not None:
            return
        headers = {"User-Agent": "LunaNarrates-Operator"}
        headers.update(self.instance.headers)
        self._http = httpx.AsyncClient(
            base_url=self.instance.base_url + "/",
            headers=headers,
            timeout=httpx.Timeout(self.timeouts.request, connect=self.timeouts.connect),
            follow_redirects=True,
            trust_env=not self.instance.is_loopback,  # env proxies for remote hosts only
        )

    async def _close_http(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def _ensure_started(self) -> None:
        """Called before the first request; subclasses start their other machinery here."""
        self._open_http()

    # --- HTTP plumbing ---------------------------------------------------------------------

    def _path(self, path: str) -> str:
        return (self.instance.api_prefix + path).lstrip("/")

    async def _request(
        self, method: str, path: str, *, timeout: float | None = None, **kwargs: Any
    ) -> httpx.Response:
        if self._http is None:
            await self._ensure_started()
        assert self._http is not None
        if timeout is not None:
            kwargs["timeout"] = httpx.Timeout(timeout, connect=self.timeouts.connect)
        try:
            response = await self._http.request(method, self._path(path), **kwargs)
        except httpx.TimeoutException as exc:
            raise ComfyUnavailable(
                f"{self.name}: {method} {path} timed out",
                instance=self.name,
                cause=f"timeout: {exc!r}",
                maybe_delivered=not isinstance(exc, httpx.ConnectTimeout),
            ) from exc
        except httpx.HTTPError as exc:
            raise ComfyUnavailable(
                f"{self.name}: {method} {path} failed: {exc}",
                instance=self.name,
                cause=repr(exc),
                # A refused or failed TCP connect sent nothing; anything later may have been read.
                maybe_delivered=not isinstance(exc, httpx.ConnectError),
            ) from exc
        if response.status_code < 500:
            self._last_http_ok = time.monotonic()
        if response.status_code >= 500:
            raise ComfyUnavailable(
                f"{self.name}: {method} {path} answered {response.status_code}: {response.text[:200]}",
                instance=self.name,
                cause=f"HTTP {response.status_code}",
                maybe_delivered=True,
            )
        return response

    def _json(self, response: httpx.Response, what: str) -> Any:
        try:
            return response.json()
        except ValueError as exc:
            raise ComfyProtocolError(
                f"{self.name}: {what} answered non-JSON ({response.status_code}): {response.text[:200]}",
                instance=self.name,
            ) from exc

    async def _get_json(self, path: str, **kwargs: Any) -> Any:
        response = await self._request("GET", path, **kwargs)
        if response.status_code != 200:
            raise ComfyProtocolError(
                f"{self.name}: GET {path} answered {response.status_code}", instance=self.name
            )
        return self._json(response, f"GET {path}")

    # --- health / load ---------------------------------------------------------------------

    async def system_stats(self) -> SystemStats:
        """``/system_stats``: versions and per-device VRAM (cheap liveness probe)."""
        body = await self._get_json("/system_stats")
        if not isinstance(body, Mapping):
            raise ComfyProtocolError(f"{self.name}: /system_stats is not an object", instance=self.name)
        return SystemStats.parse(body)

    async def queue_remaining(self) -> int:
        """``GET /prompt`` → ``exec_info.queue_remaining`` (pending + running, all clients)."""
        body = await self._get_json("/prompt")
        try:
            value = int(body["exec_info"]["queue_remaining"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ComfyProtocolError(
                f"{self.name}: GET /prompt has no exec_info.queue_remaining", instance=self.name
            ) from exc
        self.queue_remaining_seen = value
        return value

    async def get_queue(self) -> QueueSnapshot:
        body = await self._get_json("/queue")
        if not isinstance(body, Mapping):
            raise ComfyProtocolError(f"{self.name}: /queue is not an object", instance=self.name)
        return QueueSnapshot.parse(body)

    async def object_info(self, *, refresh: bool = False) -> dict[str, Any]:
        """``/object_info`` (all node schemas), cached per client until ``refresh=True``."""
        async with self._object_info_lock:
            if self._object_info is None or refresh:
                body = await self._get_json("/object_info", timeout=max(self.timeouts.request, 60.0))
                if not isinstance(body, dict):
                    raise ComfyProtocolError(
                        f"{self.name}: /object_info is not an object", instance=self.name
                    )
                self._object_info = body
            return self._object_info

    async def features(self) -> dict[str, Any]:
        """``/features`` server flags; ``{}`` on servers that predate it (404)."""
        response = await self._request("GET", "/features")
        if response.status_code == 404:
            return {}
        body = self._json(response, "GET /features")
        return dict(body) if isinstance(body, Mapping) else {}

    async def free(self, *, unload_models: bool = True, free_memory: bool = False) -> None:
        """``POST /free``: unload models (and caches); applied once the current job ends."""
        await self._request(
            "POST", "/free", json={"unload_models": unload_models, "free_memory": free_memory}
        )

    # --- files -----------------------------------------------------------------------------

    async def history(self, prompt_id: str) -> HistoryEntry | None:
        """``/history/{id}``; None while the entry does not exist (pending, running, lost…)."""
        body = await self._get_json(f"/history/{prompt_id}")
        if not isinstance(body, Mapping):
            raise ComfyProtocolError(
                f"{self.name}: /history/{prompt_id} is not an object", instance=self.name
            )
        entry = body.get(prompt_id)
        return HistoryEntry.parse(prompt_id, entry) if isinstance(entry, Mapping) else None

    async def download(self, ref: OutputRef) -> OutputFile:
        """Fetch one output with ``/view`` (filename, subfolder, type exactly as listed)."""
        params = {"filename": ref.filename, "subfolder": ref.subfolder, "type": ref.type}
        response = await self._request("GET", "/view", params=params, timeout=self.timeouts.upload)
        if response.status_code != 200:
            raise OutputMissing(
                f"{self.name}: /view {ref.type}/{ref.subfolder}/{ref.filename} answered "
                f"{response.status_code}",
                instance=self.name,
            )
        mime = response.headers.get("content-type", "").split(";")[0].strip()
        if not mime or mime == "application/octet-stream":
            mime = mimetypes.guess_type(ref.filename)[0] or "application/octet-stream"
        return OutputFile(ref, response.content, mime)

    async def download_outputs(self, outputs: Mapping[str, Any]) -> tuple[OutputFile, ...]:
        """Download every file listed in a history ``outputs`` mapping, concurrently."""
        refs = output_refs(outputs)
        return tuple(await asyncio.gather(*(self.download(ref) for ref in refs)))

    async def upload_image(
        self, data: bytes, filename: str, *, subfolder: str = "", type: str = "input", overwrite: bool = False
    ) -> UploadedImage:
        """``POST /upload/image`` (multipart). The server may rename: use the returned reference."""
        mime = mimetypes.guess_type(filename)[0] or "application/octet-stream"
        form = {"type": type, "subfolder": subfolder, "overwrite": "true" if overwrite else "false"}
        response = await self._request(
            "POST",
            "/upload/image",
            files={"image": (filename, data, mime)},
            data=form,
            timeout=self.timeouts.upload,
        )
        if response.status_code != 200:
            raise ComfyProtocolError(
                f"{self.name}: upload of {filename!r} answered {response.status_code}: {response.text[:200]}",
                instance=self.name,
            )
        body = self._json(response, "POST /upload/image")
        try:
            return UploadedImage(
                str(body["name"]), str(body.get("subfolder") or ""), str(body.get("type") or type)
            )
        except (KeyError, TypeError) as exc:
            raise ComfyProtocolError(
                f"{self.name}: upload reply has no 'name': {body!r}", instance=self.name
            ) from exc
