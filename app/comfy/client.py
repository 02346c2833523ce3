"""Async client for ONE ComfyUI instance: submit, track, cancel, fetch, upload, health.

Owns the HTTP session (httpx) and the one long-lived WebSocket (websockets) of an instance, and
the jobs submitted through it. It tracks jobs the way ComfyUI's own frontend does:

* the socket (``/ws?clientId=<uuid hex>``) is open BEFORE any ``POST /prompt``; prompts carry the
  same ``client_id`` and a client-made lower-case UUID ``prompt_id`` (the id in the reply wins —
  old servers make their own); ``extra_data`` gets ``extra_pnginfo.workflow`` when a UI workflow
  is known and ``preview_method`` when previews are wanted;
* every text/binary frame is parsed into typed events (:mod:`app.comfy.events`) and routed to
  its :class:`~app.comfy.jobs.Job`; a job ends on ``execution_success`` / ``execution_error`` /
  ``execution_interrupted`` or (old servers) ``executing`` with ``node: null``;
* outputs come from the ``executed`` events when the socket saw the whole job (it ended with
  ``execution_success`` on a socket that never dropped, every ``executed`` carried its output and
  every cached output node re-sent its output): ``executed.output`` is exactly what lands in
  ``history.outputs[node]``, so the ``GET /history`` round trip is skipped. Otherwise — a prompt
  served wholly from the cache, a reconnect, an old server without ``execution_success`` —
  they come from ``/history/{id}``, which may still be ``{}`` right after ``execution_success``
  (ComfyUI #11540): the client waits for the ``executing`` null that follows the history write
  (short grace) and then polls with backoff, bounded;
* a ``POST /prompt`` that fails after the request may have reached the server (read timeout,
  reset, 5xx) is settled by asking the instance for our own prompt id (``/queue``, then
  ``/history``): found, the job is followed as if the reply had come; certainly absent, the
  error says it was not delivered; unknowable, it is a :class:`~app.comfy.errors.JobLost` that
  must not be resubmitted (``maybe_accepted``) — a job never runs twice;
* when the socket drops it reconnects with exponential backoff + jitter under the SAME clientId
  and reconciles every unfinished job through ``/queue`` then ``/history/{id}``; a job in neither
  is :class:`~app.comfy.errors.JobLost`. If the instance stays unreachable for
  ``timeouts.reconnect_give_up`` seconds its unfinished jobs are lost (``started`` tells the
  router whether a resubmit is safe). A watchdog reconciles jobs that went quiet, and while
  the socket is down unfinished jobs are polled every ``timeouts.poll`` seconds — also when it
  never opens (a proxy without WebSocket support): then jobs are tracked by polling alone.

The REST calls (health, queue, history, ``/view``, uploads, ``/object_info``) live in
:class:`~app.comfy.rest.ComfyRest`, which this class extends; HTTP paths use ``/api/...`` (see
there), the socket uses ``/ws`` (registered under both ``/ws`` and ``/api/ws``). No ``Origin``
header is ever sent; the instance's extra headers go on every HTTP request and on the WebSocket
upgrade. Every call has a timeout.

Runs on one asyncio event loop (the one that called :meth:`start`); not thread-safe. Timeouts use
``asyncio.timeout`` rather than ``asyncio.wait_for``: on Python 3.11 ``wait_for`` can swallow a
cancellation that races with its inner future, which left background loops unkillable.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from app.comfy.errors import (
    ComfyProtocolError,
    ComfyUnavailable,
    JobInterrupted,
    JobLost,
    JobTimeout,
    parse_node_errors,
    parse_prompt_rejection,
)
from app.comfy.events import (
    ComfyEvent,
    ConnectionLost,
    FeatureFlags,
    JobQueued,
    MessageParseError,
    Reconnected,
    StatusEvent,
    parse_binary,
    parse_text,
)
from app.comfy.instances import InstanceConfig
from app.comfy.jobs import Job, JobState, JobTracker
from app.comfy.rest import ComfyRest, ComfyTimeouts
from app.comfy.results import HistoryEntry, JobResult, JobTimings, OutputFile, OutputRef, output_refs

__all__ = ["ComfyClient", "ComfyTimeouts", "EventListener"]

log = logging.getLogger(__name__)

EventListener = Callable[[ComfyEvent], None]


class ComfyClient(ComfyRest):
    """One ComfyUI instance; use as ``async with ComfyClient(cfg) as client: await client.run(p)``.

    Public surface (stable, used by the router, the templates layer, the CLI and the GUI):
    ``submit``, ``wait``, ``run``, ``cancel``, ``cancel_job``, ``history``, ``download``, ``download_outputs``,
    ``upload_image``, ``system_stats``, ``queue_remaining``, ``get_queue``, ``object_info``,
    ``features``, ``free``, ``add_listener``, ``connected``, ``jobs``.
    """

    def __init__(
        self,
        instance: InstanceConfig | str,
        *,
        timeouts: ComfyTimeouts | None = None,
        client_id: str | None = None,
        previews: bool = True,
    ) -> None:
        super().__init__(instance, timeouts=timeouts)
        self.client_id = client_id or uuid.uuid4().hex
        self.previews = previews
        self.tracker = JobTracker()
        self.server_features: Mapping[str, Any] = {}  # from the feature_flags handshake reply
        self._listeners: list[EventListener] = []
        self._ws: ClientConnection | None = None
        self._ws_task: asyncio.Task | None = None
        self._watchdog_task: asyncio.Task | None = None
        self._connected = asyncio.Event()
        self._closing = False
        self._disconnected_since: float | None = None
        self._reconcile_lock = asyncio.Lock()

    # --- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> ComfyClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Create the HTTP session and start the socket task (it connects in the background)."""
        self.start_soon()

    def start_soon(self) -> None:
        """:meth:`start` without awaiting: usable from synchronous code on the client's loop."""
        if self._closing:
            raise ComfyUnavailable(f"{self.name}: client is closed", instance=self.name, cause="closed")
        if self._http is not None:
            return
        self._open_http()
        self._ws_task = asyncio.create_task(self._socket_loop(), name=f"comfy-ws-{self.name}")
        self._watchdog_task = asyncio.create_task(self._watchdog_loop(), name=f"comfy-watchdog-{self.name}")

    async def _ensure_started(self) -> None:
        await self.start()

    async def close(self) -> None:
        """Stop the socket, fail nothing silently: unfinished jobs become JobLost (client closed)."""
        self._closing = True
        for task in (self._ws_task, self._watchdog_task):
            if task is not None:
                task.cancel()
        tasks = [t for t in (self._ws_task, self._watchdog_task) if t is not None]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._ws_task = self._watchdog_task = None
        if self._ws is not None:
            await self._ws.close()
            self._ws = None
        for job in self.tracker.active:
            job.fail(
                JobLost(
                    "the client was closed", prompt_id=job.prompt_id, started=job.started, instance=self.name
                )
            )
        await self._close_http()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def jobs(self) -> list[Job]:
        """Jobs submitted through this client that have not finished yet."""
        return self.tracker.active

    def add_listener(self, listener: EventListener) -> Callable[[], None]:
        """Call ``listener(event)`` for every event of this instance; returns an unsubscribe."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Wait until the socket is open; ComfyUnavailable after ``timeout`` (default ws_open)."""
        if self._http is None:
            await self.start()
        try:
            async with asyncio.timeout(timeout or self.timeouts.ws_open):
                await self._connected.wait()
        except TimeoutError:
            raise ComfyUnavailable(
                f"{self.name}: WebSocket did not open within {timeout or self.timeouts.ws_open:g} s",
                instance=self.name,
                cause="websocket timeout",
            ) from None

    # --- jobs ------------------------------------------------------------------------------

    async def submit(
        self,
        prompt: Mapping[str, Any],
        *,
        ui_workflow: Mapping[str, Any] | None = None,
        preview_method: str | None = None,
        prompt_id: str | None = None,
        front: bool = False,
        extra_data: Mapping[str, Any] | None = None,
        on_job: Callable[[Job], None] | None = None,
    ) -> Job:
        """Queue an API-format prompt and return its :class:`Job` (already tracked).

        Raises :class:`PromptRejected` (400, with per-node reasons) or :class:`ComfyUnavailable`.
        A 200 with ``node_errors`` is accepted; the reasons land in ``job.warnings``.
        ``on_job(job)`` is called once the job exists, before the POST (so a caller cancelled
        during the POST still holds it and finds the outcome of the cancel in ``cancel_outcome``).
        """
        try:
            await self.wait_connected()
        except ComfyUnavailable:
            if not self.timeouts.poll_fallback:
                raise
            # A proxy that does not pass WebSocket upgrades: HTTP may still work. The POST below
            # fails with ComfyUnavailable if it does not; otherwise the job is tracked by polling.
            log.warning("%s: WebSocket not open; tracking jobs by polling /queue and /history", self.name)
        job_id = (prompt_id or str(uuid.uuid4())).lower()
        extra: dict[str, Any] = dict(extra_data or {})
        if ui_workflow is not None:
            pnginfo = dict(extra.get("extra_pnginfo") or {})
            pnginfo["workflow"] = ui_workflow
            extra["extra_pnginfo"] = pnginfo
        if preview_method is not None:
            extra["preview_method"] = preview_method
        body: dict[str, Any] = {"prompt": prompt, "client_id": self.client_id, "prompt_id": job_id}
        if extra:
            body["extra_data"] = extra
        if front:
            body["front"] = True
        job = Job(job_id, self.name, prompt, wants_previews=preview_method not in (None, "none"))
        self.tracker.register(job)  # before the POST: events can beat the reply
        if on_job is not None:
            on_job(job)
        try:
            response = await self._request(
                "POST",
                "/prompt",
                content=json.dumps(body).encode("utf-8"),
                headers={"Content-Type": "application/json"},
            )
        except asyncio.CancelledError:
            self.tracker.forget(job_id)
            # The server may have queued it before we stopped listening: our own id finds it.
            await self.cancel_job(job)
            raise
        except ComfyUnavailable as exc:
            if not exc.maybe_delivered:
                self.tracker.forget(job_id)
                raise
            return await self._settle_unanswered_submit(job, exc)
        except BaseException:
            self.tracker.forget(job_id)
            raise
        if response.status_code != 200:
            self.tracker.forget(job_id)
            try:
                reply: Any = response.json()
            except ValueError:
                reply = response.text
            raise parse_prompt_rejection(response.status_code, reply, instance=self.name)
        reply = self._json(response, "POST /prompt")
        server_id = str(reply.get("prompt_id") or job_id) if isinstance(reply, Mapping) else job_id
        if server_id != job.prompt_id:
            self.tracker.rekey(job, server_id)
        job.number = reply.get("number") if isinstance(reply, Mapping) else None
        job.warnings = parse_node_errors(reply.get("node_errors") if isinstance(reply, Mapping) else None)
        job.accepted(
            JobQueued(job.prompt_id, job.number, self.name, tuple(r.describe() for r in job.warnings))
        )
        return job

    async def _settle_unanswered_submit(self, job: Job, failure: ComfyUnavailable) -> Job:
        """The POST may have queued ``job`` without us hearing the reply: ask for our own id."""
        try:
            where, entry = await self._ask_for(job.prompt_id)
        except (ComfyUnavailable, ComfyProtocolError, TimeoutError) as exc:
            self.tracker.forget(job.prompt_id)
            raise JobLost(
                f"POST /prompt failed ({failure}) and the instance could not be asked whether it "
                f"queued the job ({exc or type(exc).__name__}); not resubmitting, it may run there",
                prompt_id=job.prompt_id,
                started=False,
                instance=self.name,
                maybe_accepted=True,
            ) from failure
        if where is None and entry is None:
            self.tracker.forget(job.prompt_id)
            raise ComfyUnavailable(
                f"{failure} (the instance does not have the job: it was not queued)",
                instance=self.name,
                cause=failure.cause,
                maybe_delivered=False,
            ) from failure
        log.info(
            "%s: POST /prompt failed (%s) but the job is %s there; following it",
            self.name,
            failure,
            where or "in the history",
        )
        job.accepted(JobQueued(job.prompt_id, None, self.name))
        if where == "running":
            job.mark_running()
        if entry is not None:
            job.finish_from_history(entry)
        return job

    async def _ask_for(self, prompt_id: str) -> tuple[str | None, HistoryEntry | None]:
        """Where the instance has ``prompt_id``: queue state and history entry (both None: absent).

        Retried with backoff while the instance does not answer, for up to
        ``timeouts.reconnect_give_up`` seconds: a restarted ComfyUI answers "absent" (its queue
        lived in memory), which makes a resubmit safe; the last error is raised otherwise.
        """
        deadline = time.monotonic() + self.timeouts.reconnect_give_up
        delay = 0.05
        while True:
            try:
                async with asyncio.timeout(self.timeouts.connect + self.timeouts.request):
                    where = (await self.get_queue()).contains(prompt_id)
                    return where, None if where else await self.history(prompt_id)
            except (ComfyUnavailable, TimeoutError):
                if time.monotonic() + delay > deadline:
                    raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    async def wait(self, job: Job, *, timeout: float | None = None, download: bool = True) -> JobResult:
        """Wait for the job to end, read its history, download its outputs.

        Raises ExecutionFailed / JobInterrupted / JobLost, or JobTimeout after ``timeout``.
        """
        try:
            async with asyncio.timeout(timeout):
                await job.wait_finished()
        except TimeoutError:
            raise JobTimeout(
                f"job {job.prompt_id} not finished after {timeout:g} s",
                prompt_id=job.prompt_id,
                instance=self.name,
            ) from None
        if job.error is not None:
            raise job.error
        if self._outputs_seen_live(job):
            # The socket saw every output: no history round trip (see the module docstring).
            outputs = dict(job.outputs)
            files = await self.download_outputs(outputs) if download else ()
            return self._result(job, outputs, files)
        # Files announced by `executed` events are fetched while the history is read: the
        # history stays the authority on what the job produced, but we save a round trip.
        prefetch = (
            {_ref_key(ref): asyncio.create_task(self.download(ref)) for ref in output_refs(job.outputs)}
            if download
            else {}
        )
        try:
            entry = await self._finished_history(job)
        except BaseException:
            await _cancel_all(prefetch.values())
            raise
        error = entry.error_for(job.prompt_id, self.name)
        if error is not None:
            await _cancel_all(prefetch.values())
            job.state = JobState.INTERRUPTED if isinstance(error, JobInterrupted) else JobState.FAILED
            job.error = error
            raise error
        job.state = JobState.SUCCEEDED
        outputs = dict(entry.outputs) or dict(job.outputs)
        files: tuple[OutputFile, ...] = ()
        if download:
            files = await self._collect_files(outputs, prefetch)
        return self._result(job, outputs, files)

    def _result(self, job: Job, outputs: dict[str, Any], files: tuple[OutputFile, ...]) -> JobResult:
        done = time.monotonic()
        started = job.started_at or job.submitted_at
        finished = job.finished_at or done
        timings = JobTimings(
            queued=started - job.submitted_at,
            running=finished - started,
            fetching=done - finished,
            total=done - job.submitted_at,
        )
        return JobResult(
            job.prompt_id, self.name, files, outputs, timings, job.warnings, tuple(sorted(job.cached_nodes))
        )

    def _outputs_seen_live(self, job: Job) -> bool:
        """Whether ``job.outputs`` (from ``executed``) is everything its history would list.

        Besides :attr:`Job.outputs_complete`, every cached output node must have re-sent its
        output (older executors do not): output nodes are known from ``/object_info`` when it
        was read, else taken to be the prompt's leaves (nodes nothing links from).
        """
        if not job.outputs_complete:
            return False
        cached = job.cached_nodes
        if not cached:
            return True
        return all(node in job.outputs for node in self._output_nodes(job.prompt) & cached)

    def _output_nodes(self, prompt: Mapping[str, Any]) -> set[str]:
        schemas = self._object_info
        if schemas is not None:
            return {
                node_id
                for node_id, node in prompt.items()
                if isinstance(node, Mapping)
                and isinstance(schemas.get(str(node.get("class_type"))), Mapping)
                and schemas[str(node.get("class_type"))].get("output_node")
            }
        linked = {
            str(value[0])
            for node in prompt.values()
            if isinstance(node, Mapping)
            for value in (node.get("inputs") or {}).values()
            if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)
        }
        return set(prompt) - linked

    async def run(
        self,
        prompt: Mapping[str, Any],
        *,
        on_event: EventListener | None = None,
        timeout: float | None = None,
        **submit_kwargs: Any,
    ) -> JobResult:
        """Submit, follow and fetch in one call; ``on_event(event)`` sees every job event.

        Cancelling the task that awaits this also cancels the job on the server (dequeue or
        interrupt), so an abandoned render does not keep the GPU busy.
        """
        job = await self.submit(prompt, **submit_kwargs)
        follower = None
        if on_event is not None:

            async def follow() -> None:
                async for event in job.events():
                    try:
                        on_event(event)
                    except Exception:  # a broken progress display must not lose the render
                        log.exception("%s: on_event callback failed", self.name)

            follower = asyncio.create_task(follow(), name=f"comfy-follow-{job.prompt_id}")
        try:
            return await self.wait(job, timeout=timeout)
        except asyncio.CancelledError:
            # The caller gave up (GUI cancel, Ctrl-C): do not leave the job running on the GPU.
            if not job.done:
                await self.cancel_job(job)
            raise
        finally:
            if follower is not None:
                if job.done:
                    await asyncio.gather(follower, return_exceptions=True)
                else:
                    follower.cancel()
                    await asyncio.gather(follower, return_exceptions=True)

    async def cancel(self, job_or_id: Job | str) -> str:
        """Cancel one job: dequeue it when pending, interrupt it by id when running.

        Returns ``"dequeued"``, ``"interrupted"`` (the job then ends with JobInterrupted) or
        ``"not_found"`` (finished already, or unknown to this instance). Cancelling a tracked job
        again answers what its first cancel did (kept on the :class:`Job`), without new requests.
        """
        prompt_id = job_or_id.prompt_id if isinstance(job_or_id, Job) else job_or_id
        job = job_or_id if isinstance(job_or_id, Job) else self.tracker.jobs.get(prompt_id)
        if job is not None and job.cancel_outcome is not None:
            return job.cancel_outcome
        outcome = "not_found"
        where = (await self.get_queue()).contains(prompt_id)
        if where == "pending":
            await self._request("POST", "/queue", json={"delete": [prompt_id]})
            # It may have started between the two calls: the delete then did nothing.
            where = (await self.get_queue()).contains(prompt_id)
            if where != "running":
                outcome = "dequeued"
                if job is not None:
                    job.fail(JobInterrupted(prompt_id=prompt_id, while_pending=True, instance=self.name))
        if where == "running":
            await self._request("POST", "/interrupt", json={"prompt_id": prompt_id})
            outcome = "interrupted"
        if job is not None and outcome != "not_found":
            job.cancel_outcome = outcome
        return outcome

    async def cancel_job(self, job_or_id: Job | str) -> str:
        """:meth:`cancel`, bounded and shielded from a cancellation in progress, never raising.

        For the one place that cancels a job its caller gave up on (``run``, the router's
        :class:`~app.comfy.router.RoutedJob`). Returns the outcome, or ``"failed: <why>"``.
        """
        prompt_id = job_or_id.prompt_id if isinstance(job_or_id, Job) else job_or_id
        try:
            async with asyncio.timeout(self.timeouts.connect + 2.0):
                return await asyncio.shield(self.cancel(job_or_id))
        except (ComfyUnavailable, ComfyProtocolError, TimeoutError) as exc:
            log.warning("%s: could not cancel job %s on the server: %s", self.name, prompt_id, exc)
            return f"failed: {exc or type(exc).__name__}"

    async def _collect_files(
        self, outputs: Mapping[str, Any], prefetch: dict[tuple, asyncio.Task]
    ) -> tuple[OutputFile, ...]:
        refs = output_refs(outputs)
        wanted = {_ref_key(ref) for ref in refs}
        await _cancel_all(task for key, task in prefetch.items() if key not in wanted)
        try:
            return tuple(
                await asyncio.gather(
                    *(
                        prefetch[_ref_key(ref)] if _ref_key(ref) in prefetch else self.download(ref)
                        for ref in refs
                    )
                )
            )
        finally:
            await _cancel_all(prefetch.values())

    async def _finished_history(self, job: Job) -> HistoryEntry:
        """The job's history entry, waiting out the execution_success → history-write race."""
        if not job.history_written.is_set():
            try:
                async with asyncio.timeout(self.timeouts.history_grace):
                    await job.history_written.wait()
            except TimeoutError:
                pass
        deadline = time.monotonic() + self.timeouts.history
        delay = 0.02
        while True:
            entry = await self.history(job.prompt_id)
            if entry is not None:
                return entry
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise JobLost(
                    f"finished but no history entry appeared within {self.timeouts.history:g} s",
                    prompt_id=job.prompt_id,
                    started=True,
                    instance=self.name,
                )
            try:
                async with asyncio.timeout(min(delay, remaining)):
                    await job.history_written.wait()
            except TimeoutError:
                pass
            delay = min(delay * 2, 1.0)

    # --- socket ----------------------------------------------------------------------------

    def _emit(self, event: ComfyEvent) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:  # a broken listener must not stop event delivery
                log.exception("%s: event listener failed", self.name)

    def _dispatch(self, frame: str | bytes) -> None:
        try:
            if isinstance(frame, str):
                event = parse_text(frame)
            else:
                if not self.tracker.wants_previews and not self._listeners:
                    return
                event = parse_binary(frame)
        except MessageParseError as exc:
            log.warning("%s: dropped a malformed WebSocket frame: %s", self.name, exc)
            return
        if isinstance(event, StatusEvent) and event.queue_remaining is not None:
            self.queue_remaining_seen = event.queue_remaining
        elif isinstance(event, FeatureFlags):
            self.server_features = event.flags
        self.tracker.feed(event)
        self._emit(event)

    async def _socket_loop(self) -> None:
        url = f"{self.instance.ws_url}?clientId={self.client_id}"
        attempt = 0
        ever_connected = False
        while not self._closing:
            try:
                ws = await connect(
                    url,
                    additional_headers=dict(self.instance.headers) or None,
                    open_timeout=self.timeouts.ws_open,
                    max_size=None,
                    proxy=None if self.instance.is_loopback else True,
                    compression=None,
                    user_agent_header="LunaNarrates-Operator",
                    ping_interval=20,
                    ping_timeout=20,
                    close_timeout=2,
                )
            except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as exc:
                attempt += 1
                self._note_unreachable(exc)
                await asyncio.sleep(self._backoff(attempt))
                continue
            self._ws = ws
            try:
                if self.previews:
                    await ws.send(
                        json.dumps({"type": "feature_flags", "data": {"supports_preview_metadata": True}})
                    )
                self._connected.set()
                self._disconnected_since = None
                if ever_connected:
                    back = Reconnected(self.name, attempt)
                    self._emit(back)
                    for job in self.tracker.active:
                        job.note(back)
                    await self._reconcile()
                ever_connected = True
                attempt = 0
                async for frame in ws:
                    self._dispatch(frame)
                reason = "closed by the server"
            except ConnectionClosed as exc:
                reason = f"connection closed ({exc})"
            except (OSError, ComfyUnavailable, ComfyProtocolError) as exc:
                reason = f"connection failed ({exc})"
            finally:
                self._connected.clear()
                self._ws = None
                await ws.close()
            if self._closing:
                return
            self._disconnected_since = time.monotonic()
            lost = ConnectionLost(self.name, reason)
            self._emit(lost)
            for job in self.tracker.active:
                job.note(lost)
            attempt += 1
            await asyncio.sleep(self._backoff(attempt) if attempt > 1 else 0)

    def _backoff(self, attempt: int) -> float:
        base = min(self.timeouts.reconnect_max_delay, 0.05 * (2 ** min(attempt, 10)))
        return base * (0.5 + random.random() / 2)

    def _note_unreachable(self, exc: BaseException) -> None:
        now = time.monotonic()
        if self._disconnected_since is None:
            self._disconnected_since = now
        # Only a server silent on HTTP too is given up on (a WS-hostile proxy is not "dead").
        last_contact = max(self._disconnected_since, self._last_http_ok or 0.0)
        if now - last_contact >= self.timeouts.reconnect_give_up:
            for job in self.tracker.active:
                job.fail(
                    JobLost(
                        f"instance unreachable for {self.timeouts.reconnect_give_up:g} s ({exc})",
                        prompt_id=job.prompt_id,
                        started=job.started,
                        instance=self.name,
                    )
                )

    async def _reconcile(self, jobs: list[Job] | None = None) -> None:
        """Settle unfinished jobs over HTTP: ``/queue`` first, then ``/history/{id}``."""
        async with self._reconcile_lock:
            jobs = [job for job in (jobs if jobs is not None else self.tracker.active) if not job.done]
            if not jobs:
                return
            try:
                queue = await self.get_queue()
            except (ComfyUnavailable, ComfyProtocolError) as exc:
                log.info("%s: reconcile skipped: %s", self.name, exc)
                return
            for job in jobs:
                where = queue.contains(job.prompt_id)
                if where == "running":
                    job.mark_running()
                    job.last_event_at = time.monotonic()
                    continue
                if where == "pending":
                    job.last_event_at = time.monotonic()
                    continue
                try:
                    entry = await self.history(job.prompt_id)
                except (ComfyUnavailable, ComfyProtocolError) as exc:
                    log.info("%s: reconcile of %s skipped: %s", self.name, job.prompt_id, exc)
                    continue
                if entry is not None:
                    job.finish_from_history(entry)
                elif not job.done:
                    job.fail(
                        JobLost(
                            "in neither the queue nor the history (server restarted?)",
                            prompt_id=job.prompt_id,
                            started=job.started,
                            instance=self.name,
                        )
                    )

    async def _watchdog_loop(self) -> None:
        """Poll unfinished jobs while the socket is down; reconcile silent ones while it is up."""
        tick = min(self.timeouts.poll, self.timeouts.watchdog)
        while True:
            await asyncio.sleep(tick)
            active = self.tracker.active
            if not active:
                continue
            if not self.connected:
                await self._reconcile(active)
                continue
            now = time.monotonic()
            stale = [job for job in active if now - job.last_event_at >= self.timeouts.watchdog]
            if stale:
                await self._reconcile(stale)


def _ref_key(ref: OutputRef) -> tuple[str, str, str, str]:
    return (ref.node_id, ref.type, ref.subfolder, ref.filename)


async def _cancel_all(tasks: Iterable[asyncio.Task]) -> None:
    """Cancel and reap tasks (reaping also retrieves exceptions, so none is reported unseen)."""
    tasks = list(tasks)
    for task in tasks:
        if not task.done():
            task.cancel()
    if tasks:
        await asyncio.gather(*tasks, return_exceptions=True)
