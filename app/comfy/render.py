"""The render service: one template render on ComfyUI, from request to files on disk.

Owns the whole render pipeline that the CLI (``luna render``), the Narrates engine's Dreamer and
the GUI share: load the template (a name, a file, or a loaded :class:`~app.comfy.templates.Template`;
a UI-format file is converted with the chosen instance's node definitions), read the parameter
values, upload local images, inject, validate against the instance's ``/object_info``, submit
through the :class:`~app.comfy.router.StyleRouter`, follow the job, write the outputs under
Windows-safe names with their SHA-256, and map every failure to a typed :class:`RenderError`
that names the node by title and the parameter bound there.

One instance is pinned per attempt: the router hands the job to an instance, and the upload,
the validation and the run all happen there (:data:`~app.comfy.router.Prepare`). If that
instance loses the job before starting it, the router resubmits to another one and the
preparation runs again there (re-upload, re-validate); the seed stays the same. A job never
runs twice: a ``POST /prompt`` that may have been accepted is settled by asking that instance
for our own prompt id before anything is resubmitted (see :mod:`app.comfy.client`).

Values (:attr:`RenderRequest.values`): typed values (``int``, ``float``, ``bool``, a list of
:class:`~app.comfy.inject.LoraSpec`…) are used as given; a ``str`` is read as ``--set`` text
(:func:`~app.comfy.inject.parse_value`: ``"30"`` for an int, ``"random"`` for a seed, ``"a:0.8"``
for LoRAs), so the CLI can pass its strings and the engine its typed values. Images:
:attr:`RenderRequest.images` maps ``image`` parameters to local files that are uploaded to the
instance first (its answer — possibly a renamed file — is what the prompt references); with
:attr:`RenderRequest.upload_local_paths` (the CLI sets it) a string value of an ``image``
parameter that names an existing local file is uploaded too, as ``luna render --set
init_image=photo.png`` always did.

The service and its handles run on the router's asyncio event loop; no threads, no Qt. Progress
reaches the caller as typed events (:data:`RenderEvent` and the job's
:data:`~app.comfy.events.ComfyEvent` stream). The request, outcome, event and error types are
plain immutable data, usable on any thread (e.g. handed to the GUI through its adapters).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.comfy.client import ComfyClient
from app.comfy.errors import (
    ComfyError,
    ComfyUnavailable,
    ExecutionFailed,
    JobFailed,
    JobInterrupted,
    JobLost,
    JobTimeout,
    NoInstanceAvailable,
    PromptRejected,
)
from app.comfy.events import ComfyEvent
from app.comfy.filenames import path_inside, safe_filename
from app.comfy.graph import UiFormatWorkflowError, WorkflowFormatError, describe_node
from app.comfy.inject import InjectedWorkflow, InjectionError, LoraSpec, inject, parse_value
from app.comfy.rejections import explain_reasons, explain_rejection
from app.comfy.replay import EventReplay
from app.comfy.results import JobResult, JobTimings
from app.comfy.router import PreparedPrompt, RoutedJob, StyleRouter
from app.comfy.templates import (
    Template,
    TemplateError,
    find_template,
    load_template,
    read_json,
    read_map,
    template_from_workflow,
)
from app.comfy.ui_convert import convert_ui_workflow
from app.comfy.validate import ValidationIssue, validate_workflow
from app.paths import user_dirs

log = logging.getLogger(__name__)

__all__ = [
    "EventCallback",
    "ImageUploaded",
    "PromptPrepared",
    "RenderBadInput",
    "RenderCancelled",
    "RenderError",
    "RenderEvent",
    "RenderExecutionFailed",
    "RenderHandle",
    "RenderInvalid",
    "RenderLost",
    "RenderOutcome",
    "RenderOutputError",
    "RenderRejected",
    "RenderRequest",
    "RenderServerError",
    "RenderService",
    "RenderTimedOut",
    "RenderUnavailable",
    "RenderedFile",
    "StyleFallback",
    "TemplateNote",
    "convert_ui_template",
    "default_output_dir",
    "json_value",
    "parse_assignments",
    "parse_values",
    "write_outputs",
]


# ---------------------------------------------------------------------------------------------
# request, outcome, events


@dataclass(frozen=True)
class RenderRequest:
    """What to render; see the module docstring for how ``values`` and ``images`` are read.

    ``instance`` (a configured instance name or a base URL) pins the render to that instance;
    otherwise ``style`` routes it (unknown styles fall back to the default style). ``output_dir``
    defaults to the service's (``<user data>/renders``). ``timeout`` bounds the job once queued;
    ``validate=False`` skips the check against ``/object_info`` (ComfyUI still validates).
    """

    template: str | Path | Template
    values: Mapping[str, Any] = field(default_factory=dict)
    style: str | None = None
    instance: str | None = None
    images: Mapping[str, Path] = field(default_factory=dict)
    output_dir: Path | None = None
    timeout: float | None = None
    validate: bool = True
    upload_local_paths: bool = False


@dataclass(frozen=True)
class RenderedFile:
    """One output written to disk: where, its SHA-256, and where ComfyUI had it."""

    path: Path
    sha256: str
    node_id: str
    filename: str  # the server's name (``/view`` filename), before sanitizing
    subfolder: str
    type: str
    mime_type: str
    size: int


@dataclass(frozen=True)
class RenderOutcome:
    """A finished render. ``values`` are the injected values, the seed actually used included."""

    template: str
    prompt_id: str
    instance: str
    url: str
    values: Mapping[str, Any]
    timings: JobTimings
    files: tuple[RenderedFile, ...]
    warnings: tuple[str, ...]
    cached_nodes: tuple[str, ...]
    workflow: Mapping[str, Any] = field(repr=False, default_factory=dict)  # the prompt as submitted

    @property
    def seed(self) -> int | None:
        value = self.values.get("seed")
        return value if isinstance(value, int) else None


@dataclass(frozen=True)
class TemplateNote:
    """A note about the template (detected map, UI conversion, …) worth showing the operator."""

    text: str


@dataclass(frozen=True)
class StyleFallback:
    """No instance serves the requested style; the default style is used."""

    requested: str
    used: str


@dataclass(frozen=True)
class ImageUploaded:
    """A local image was uploaded; the prompt references it as ``reference``."""

    param: str
    path: Path
    reference: str
    instance: str


@dataclass(frozen=True)
class PromptPrepared:
    """The prompt for ``instance`` is injected and validated; it is submitted next."""

    instance: str
    workflow: Mapping[str, Any] = field(repr=False)
    warnings: tuple[str, ...] = ()


RenderEvent = TemplateNote | StyleFallback | ImageUploaded | PromptPrepared
"""The render service's own events; ``on_event`` also gets the job's ComfyEvent stream."""

EventCallback = Callable[[RenderEvent | ComfyEvent], None]


# ---------------------------------------------------------------------------------------------
# errors


class RenderError(Exception):
    """Base of every render failure; ``str()`` is the one line the CLI prints.

    ``kind`` is the machine-readable kind (``luna render --json`` prints it), ``issues`` the
    located problems (node title, input, parameters), ``prompt_id``/``instance`` where known.
    """

    default_kind = "error"

    def __init__(
        self,
        message: str,
        *,
        kind: str | None = None,
        issues: Sequence[ValidationIssue] = (),
        prompt_id: str | None = None,
        instance: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.kind = kind or self.default_kind
        self.issues = tuple(issues)
        self.prompt_id = prompt_id
        self.instance = instance


class RenderBadInput(RenderError):
    """Unknown template, unreadable template or map, unknown parameter, a value that does not fit.

    ``kind`` is ``template``, ``parameter``, ``usage`` or ``config``; nothing was submitted.
    """

    default_kind = "parameter"


class RenderInvalid(RenderError):
    """The prompt is invalid for the chosen instance (local check against its ``/object_info``)."""

    default_kind = "invalid"


class RenderRejected(RenderError):
    """ComfyUI answered 400: ``issues`` maps each per-node reason to its title and parameter."""

    default_kind = "rejected"

    def __init__(self, message: str, *, error_type: str, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.error_type = error_type


class RenderExecutionFailed(RenderError):
    """A node raised while the job ran; ``node_title`` and ``params`` locate it in the template."""

    default_kind = "execution_error"

    def __init__(
        self,
        message: str,
        *,
        node_id: str | None,
        node_title: str,
        params: Sequence[str],
        exception_type: str,
        exception_message: str,
        **kwargs: Any,
    ) -> None:
        super().__init__(message, **kwargs)
        self.node_id = node_id
        self.node_title = node_title
        self.params = tuple(params)
        self.exception_type = exception_type
        self.exception_message = exception_message


class RenderUnavailable(RenderError):
    """No instance for the style (or the pinned one) is reachable."""

    default_kind = "unavailable"


class RenderLost(RenderError):
    """The job vanished (instance restarted, unreachable too long) and could not be resubmitted."""

    default_kind = "JobLost"


class RenderCancelled(RenderError):
    """The job was cancelled or interrupted; ``outcome`` says what the server did, when known."""

    default_kind = "JobInterrupted"

    def __init__(self, message: str, *, outcome: str | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.outcome = outcome


class RenderTimedOut(RenderError):
    """The request's ``timeout`` passed; the job may still be running on the server."""

    default_kind = "JobTimeout"


class RenderServerError(RenderError):
    """The instance broke the API or an output could not be downloaded."""


class RenderOutputError(RenderError):
    """The job succeeded but its files could not be written (folder not writable, disk full)."""

    default_kind = "output"


# ---------------------------------------------------------------------------------------------
# values


def parse_assignments(assignments: Sequence[str]) -> dict[str, str]:
    """``["seed=42", "positive=a fox"]`` → ``{"seed": "42", ...}``; RenderBadInput on a bad item."""
    values: dict[str, str] = {}
    for assignment in assignments:
        name, sep, text = assignment.partition("=")
        name = name.strip()
        if not sep or not name:
            raise RenderBadInput(f"--set expects name=value, got {assignment!r}", kind="usage")
        values[name] = text
    return values


def _check_names(template: Template, names: Iterable[str]) -> None:
    params = template.injection_map.params
    for name in names:
        if name not in params:
            raise RenderBadInput(
                f"template '{template.name}' has no parameter '{name}' "
                f"(it has: {', '.join(params) or 'none'})",
                kind="parameter",
            )


def parse_values(template: Template, values: Mapping[str, Any]) -> dict[str, Any]:
    """Check the names against the template and read ``str`` values as ``--set`` text."""
    params = template.injection_map.params
    parsed: dict[str, Any] = {}
    for name, value in values.items():
        _check_names(template, [name])
        if isinstance(value, str):
            try:
                value = parse_value(params[name], value)
            except InjectionError as exc:
                raise RenderBadInput(str(exc), kind="parameter") from exc
        parsed[name] = value
    return parsed


def json_value(value: Any) -> Any:
    """A value as JSON shows it (LoRAs as objects)."""
    if isinstance(value, LoraSpec):
        return {"name": value.name, "strength_model": value.strength_model, "strength_clip": value.clip}
    if isinstance(value, list):
        return [json_value(v) for v in value]
    return value


def default_output_dir() -> Path:
    return user_dirs().data / "renders"


# ---------------------------------------------------------------------------------------------
# files


def write_outputs(result: JobResult, out_dir: Path) -> tuple[RenderedFile, ...]:
    """Write every downloaded output into ``out_dir`` under a Windows-safe, unused name.

    Only the last component of the server's filename is used (its ``subfolder`` never makes a
    folder here), sanitized by :func:`~app.comfy.filenames.safe_filename`; an existing file is
    never overwritten (``name-1.png``, ``name-2.png``…).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for file in result.files:
        target = path_inside(out_dir, file.filename or f"{result.prompt_id}.bin")
        stem, suffix = target.stem, target.suffix
        counter = 0
        while True:
            try:
                # "x": never overwrite, not even a file another render creates at this moment.
                with open(target, "xb") as handle:
                    handle.write(file.data)
                break
            except FileExistsError:
                counter += 1
                target = path_inside(out_dir, f"{stem}-{counter}{suffix}")
        written.append(
            RenderedFile(
                path=target,
                sha256=hashlib.sha256(file.data).hexdigest(),
                node_id=file.node_id,
                filename=file.filename,
                subfolder=file.ref.subfolder,
                type=file.ref.type,
                mime_type=file.mime_type,
                size=len(file.data),
            )
        )
    return tuple(written)


# ---------------------------------------------------------------------------------------------
# the service


class _Attempt:
    """What one preparation made on one instance (to map its rejection or failure back)."""

    def __init__(self, instance: str, template: Template, injected: InjectedWorkflow, warnings: list[str]):
        self.instance = instance
        self.template = template
        self.injected = injected
        self.warnings = warnings


class RenderHandle:
    """A render in progress (from :meth:`RenderService.start`); runs on the service's loop.

    ``prompt_id`` is ours from the start; :meth:`events` yields the render's events (replayed
    for late iterators) until it ends, :meth:`result` waits for the :class:`RenderOutcome` (or
    raises its :class:`RenderError`), :meth:`cancel` stops it wherever it is, on the server too.
    """

    def __init__(self, prompt_id: str, on_event: EventCallback | None) -> None:
        self.prompt_id = prompt_id
        self.routed: RoutedJob | None = None
        self._on_event = on_event
        self._task: asyncio.Task[RenderOutcome] | None = None
        self._log: EventReplay[RenderEvent | ComfyEvent] = EventReplay(lambda: self.done)
        self._cancel_requested = False

    def _emit(self, event: RenderEvent | ComfyEvent) -> None:
        self._log.append(event)
        if self._on_event is not None:
            try:
                self._on_event(event)
            except Exception:  # a broken progress display must not lose the render
                log.exception("render %s: on_event callback failed", self.prompt_id)

    def _start(self, coro: Coroutine[Any, Any, RenderOutcome]) -> None:
        self._task = asyncio.create_task(coro, name=f"render-{self.prompt_id}")
        self._task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[RenderOutcome]) -> None:
        if not task.cancelled():
            task.exception()  # retrieved: a caller that only cancels is not warned about it
        self._log.wake()

    @property
    def done(self) -> bool:
        return self._task is not None and self._task.done()

    async def events(self) -> AsyncIterator[RenderEvent | ComfyEvent]:
        """Every event of the render so far, then each new one; ends when the render has."""
        async for event in self._log.follow():
            yield event

    def __aiter__(self) -> AsyncIterator[RenderEvent | ComfyEvent]:
        return self.events()

    async def result(self) -> RenderOutcome:
        """The outcome; :class:`RenderCancelled` after :meth:`cancel`. Awaiting does not own the job."""
        assert self._task is not None
        try:
            return await asyncio.shield(self._task)
        except asyncio.CancelledError:
            if self._task.cancelled() and self._cancel_requested:
                outcome = self.routed.cancel_outcome if self.routed is not None else None
                raise RenderCancelled(
                    f"render {self.prompt_id} was cancelled" + (f" ({outcome})" if outcome else ""),
                    outcome=outcome,
                    prompt_id=self.prompt_id,
                    instance=self.routed.instance if self.routed is not None else None,
                ) from None
            raise

    async def cancel(self) -> str:
        """Cancel the render; returns what the server did (see :meth:`RoutedJob.cancel`)."""
        assert self._task is not None
        self._cancel_requested = True
        if not self._task.done():
            self._task.cancel()
            await asyncio.wait([self._task])
        if self.routed is not None and self.routed.cancel_outcome is not None:
            return self.routed.cancel_outcome
        return "not_found"


class RenderService:
    """Renders :class:`RenderRequest` s through one :class:`StyleRouter` (see the module docstring).

    Built by the composition root (or the CLI) from the router it owns; starts the router on
    first use. ``output_dir`` is where files go when a request names none (default
    ``<user data>/renders``). Runs on the router's event loop.
    """

    def __init__(self, router: StyleRouter, *, output_dir: Path | None = None) -> None:
        self.router = router
        self.output_dir = output_dir

    async def render(self, request: RenderRequest, *, on_event: EventCallback | None = None) -> RenderOutcome:
        """Render and return the outcome; raises a :class:`RenderError`.

        Cancelling the awaiting task cancels the job on its server (dequeue or interrupt)
        before ``CancelledError`` propagates.
        """
        handle = self.start(request, on_event=on_event)
        try:
            return await handle.result()
        except asyncio.CancelledError:
            await asyncio.shield(handle.cancel())
            raise

    def start(self, request: RenderRequest, *, on_event: EventCallback | None = None) -> RenderHandle:
        """Start a render without waiting for it; see :class:`RenderHandle`."""
        handle = RenderHandle(str(uuid.uuid4()), on_event)
        handle._start(self._render(request, handle))
        return handle

    # --- the pipeline ---------------------------------------------------------------------

    async def _render(self, request: RenderRequest, handle: RenderHandle) -> RenderOutcome:
        template, ui_ref = _load(request.template)
        values: dict[str, Any] | None = None
        if template is not None:
            for note in template.notes:
                handle._emit(TemplateNote(note))
            values = parse_values(template, request.values)
            _check_names(template, request.images)
        await self.router.start()
        pinned, style = await self._target(request, handle)
        # Same random seeds on every attempt: a resubmitted job makes the same image.
        rng_seed = random.SystemRandom().getrandbits(64)
        attempts: list[_Attempt] = []

        async def prepare(instance: str, client: ComfyClient) -> PreparedPrompt:
            attempt_template, attempt_values = template, values
            if attempt_template is None:
                assert ui_ref is not None
                attempt_template = _convert_ui(ui_ref, await client.object_info(), instance)
                for note in attempt_template.notes:
                    handle._emit(TemplateNote(note))
                attempt_values = parse_values(attempt_template, request.values)
            assert attempt_values is not None
            attempt_values = dict(attempt_values)
            await self._upload(client, instance, attempt_template, attempt_values, request, handle)
            try:
                injected = inject(attempt_template, attempt_values, rng=random.Random(rng_seed))
            except InjectionError as exc:
                raise RenderBadInput(str(exc), kind="parameter") from exc
            warnings = list(injected.warnings)
            if request.validate:
                report = validate_workflow(
                    injected.workflow, await client.object_info(), attempt_template.injection_map
                )
                if report.errors:
                    raise RenderInvalid(
                        f"template '{attempt_template.name}' is not valid on {instance}",
                        issues=report.issues,
                        instance=instance,
                    )
                warnings += [issue.describe() for issue in report.warnings]
            attempts.append(_Attempt(instance, attempt_template, injected, warnings))
            handle._emit(PromptPrepared(instance, injected.workflow, tuple(warnings)))
            return PreparedPrompt(injected.workflow, attempt_template.ui_workflow)

        routed = self.router.submit(
            prepare,
            style=style,
            instance=pinned,
            timeout=request.timeout,
            prompt_id=handle.prompt_id,
            on_event=handle._emit,
        )
        handle.routed = routed
        try:
            result = await routed.result()
        except asyncio.CancelledError:
            await routed.cancel()
            raise
        except RenderError:
            raise
        except ComfyError as exc:
            raise _map_error(exc, attempts[-1] if attempts else None, routed) from exc
        attempt = attempts[-1]
        handle.prompt_id = result.prompt_id
        # A 200 with node_errors: some outputs were dropped. Say which, by title and parameter.
        warnings = attempt.warnings + [
            issue.describe()
            for issue in explain_reasons(
                result.warnings, attempt.injected.workflow, attempt.template.injection_map, severity="warning"
            )
        ]
        out_dir = request.output_dir or self.output_dir or default_output_dir()
        try:
            # image bytes are hashed and written off the loop (the GUI's, in the app)
            files = await asyncio.to_thread(write_outputs, result, Path(out_dir).expanduser())
        except OSError as exc:
            raise RenderOutputError(
                f"job {result.prompt_id} finished on {result.instance} but its files could not be "
                f"written to {out_dir}: {exc}",
                prompt_id=result.prompt_id,
                instance=result.instance,
            ) from exc
        return RenderOutcome(
            template=attempt.template.name,
            prompt_id=result.prompt_id,
            instance=result.instance,
            url=self.router.client(result.instance).instance.base_url,
            values=dict(attempt.injected.values),
            timings=result.timings,
            files=files,
            warnings=tuple(warnings),
            cached_nodes=tuple(result.cached_nodes),
            workflow=attempt.injected.workflow,
        )

    async def _target(self, request: RenderRequest, handle: RenderHandle) -> tuple[str | None, str | None]:
        """The pinned instance or the style, checked to have a reachable instance now."""
        pinned: str | None = None
        style = request.style
        if request.instance is not None:
            try:
                pinned = self.router.instance_name(request.instance)
            except KeyError:
                known = ", ".join(s.name for s in self.router.snapshot().instances)
                raise RenderBadInput(
                    f"no ComfyUI instance named '{request.instance}' (configured: {known or 'none'})",
                    kind="usage",
                ) from None
            serving = self.router.serving(instance=pinned)
            what = f"instance '{pinned}'"
        else:
            resolved = self.router.config.resolve_style(style)
            if style and style != resolved:
                handle._emit(StyleFallback(style, resolved))
            style = resolved
            serving = self.router.serving(style)
            what = f"style '{resolved}'"
        if not any(s.healthy for s in serving):
            await self.router.check_now()
            serving = self.router.serving(style, instance=pinned)
            if not any(s.healthy for s in serving):
                reasons = "; ".join(f"{s.name} ({s.base_url}): {s.last_error or s.state}" for s in serving)
                raise RenderUnavailable(f"no reachable ComfyUI instance for {what}: {reasons}")
        return pinned, style

    async def _upload(
        self,
        client: ComfyClient,
        instance: str,
        template: Template,
        values: dict[str, Any],
        request: RenderRequest,
        handle: RenderHandle,
    ) -> None:
        """Upload the request's images (and, if asked, local paths in image values) to ``client``."""
        wanted: dict[str, Path] = {}
        for name, spec in template.injection_map.params.items():
            value = values.get(name)
            if name in request.images:
                wanted[name] = Path(request.images[name]).expanduser()
            elif request.upload_local_paths and spec.kind == "image" and isinstance(value, str):
                path = Path(value).expanduser()
                if path.is_file():
                    wanted[name] = path
        for name, path in wanted.items():
            try:
                data = await asyncio.to_thread(path.read_bytes)
            except OSError as exc:
                raise RenderBadInput(
                    f"cannot read image for parameter '{name}': {exc}", kind="parameter"
                ) from exc
            uploaded = await client.upload_image(data, safe_filename(path.name, fallback="image.png"))
            values[name] = uploaded.reference
            handle._emit(ImageUploaded(name, path, uploaded.reference, instance))


# ---------------------------------------------------------------------------------------------
# helpers


def _load(ref: str | Path | Template) -> tuple[Template | None, str | Path | None]:
    """The template, or ``(None, ref)`` for a UI-format file (converted once an instance is known)."""
    if isinstance(ref, Template):
        return ref, None
    try:
        return load_template(ref), None
    except UiFormatWorkflowError:
        return None, ref
    except (TemplateError, WorkflowFormatError) as exc:
        raise RenderBadInput(str(exc), kind="template") from exc


def convert_ui_template(ref: str | Path, object_info: Mapping[str, Any], instance: str) -> Template:
    """A UI-format template file converted with one instance's node definitions."""
    return _convert_ui(ref, object_info, instance)


def _convert_ui(ref: str | Path, object_info: Mapping[str, Any], instance: str) -> Template:
    try:
        path = find_template(ref)
        data = read_json(path)
        conversion = convert_ui_workflow(data, object_info)
        injection_map, map_file = read_map(path)
        return template_from_workflow(
            path.stem,
            conversion.workflow,
            injection_map=injection_map,
            source=str(path),
            workflow_path=path,
            map_path=map_file,
            ui_workflow=dict(data),
            notes=(f"converted from the UI format with {instance}'s node definitions",) + conversion.notes,
        )
    except (TemplateError, WorkflowFormatError) as exc:
        raise RenderBadInput(str(exc), kind="template") from exc


def _map_error(exc: ComfyError, attempt: _Attempt | None, routed: RoutedJob) -> RenderError:
    """The RenderError for a failure of the ComfyUI layer, located in the attempt's template."""
    instance = exc.instance or routed.instance
    if isinstance(exc, PromptRejected):
        issues = (
            explain_rejection(exc, attempt.injected.workflow, attempt.template.injection_map)
            if attempt
            else []
        )
        return RenderRejected(
            f"{instance} rejected the prompt ({exc.error_type})",
            error_type=exc.error_type,
            issues=issues,
            instance=instance,
            prompt_id=routed.prompt_id,
        )
    if isinstance(exc, ExecutionFailed):
        workflow = attempt.injected.workflow if attempt else {}
        where = (
            describe_node(workflow, exc.node_id)
            if exc.node_id in workflow
            else (f"{exc.node_type or 'node'} #{exc.node_id}")
        )
        params = attempt.template.injection_map.params_at(exc.node_id) if attempt and exc.node_id else []
        return RenderExecutionFailed(
            f"{where} failed on {instance}: {exc.exception_type}: {exc.exception_message.strip()}"
            + (f" [parameters bound there: {', '.join(params)}]" if params else ""),
            node_id=exc.node_id,
            node_title=where,
            params=params,
            exception_type=exc.exception_type,
            exception_message=exc.exception_message,
            prompt_id=exc.prompt_id,
            instance=instance,
        )
    if isinstance(exc, JobInterrupted):
        return RenderCancelled(str(exc), prompt_id=exc.prompt_id, instance=instance)
    if isinstance(exc, JobTimeout):
        return RenderTimedOut(str(exc), prompt_id=exc.prompt_id, instance=instance)
    if isinstance(exc, JobLost):
        return RenderLost(str(exc), prompt_id=exc.prompt_id, instance=instance)
    if isinstance(exc, JobFailed):
        return RenderServerError(
            str(exc), kind=type(exc).__name__, prompt_id=exc.prompt_id, instance=instance
        )
    if isinstance(exc, (ComfyUnavailable, NoInstanceAvailable)):
        return RenderUnavailable(str(exc), instance=instance)
    return RenderServerError(str(exc), kind=type(exc).__name__, instance=instance)
