"""Rendering stored scenes: health check, the daemon-down fallback, the render service, images by hash.

:class:`SceneRenderer` takes a stored scene (and, for a re-render, the operator's changes),
and:

1. applies the changes to the scene's plan (seed, prompt, negative, style, template, size,
   LoRAs; any other name is a template parameter) — the scene row itself never changes;
2. loads the template and hashes its content (workflow + map), so a render records exactly
   what it ran;
3. checks health before dispatch: a template that uses the Luna shared nodes while the daemon
   does not answer is swapped for the stock variant its map declares (``[template]
   stock_variant = "NAME"`` in ``NAME.luna.toml``) or the render fails at once with a message
   that says so — a turn never hangs on a render. ComfyUI's own health is the router's
   (:class:`~app.comfy.render.RenderService` refuses an unhealthy style at once);
4. opens a ``renders`` row, renders through :class:`~app.comfy.render.RenderService`, stores
   each image under the data dir by content hash (:class:`~app.narrates.store.ImageStore`) and
   closes the row ``done`` — or ``failed`` with the error's kind. A render failure never
   raises into the turn: it is the row's status and the :class:`RenderFailed` event.

Runs on the caller's asyncio loop (the router's).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import tomllib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from app.comfy.graph import WorkflowFormatError
from app.comfy.inject import InjectionError, LoraSpec, parse_value
from app.comfy.render import (
    RenderBadInput,
    RenderError,
    RenderInvalid,
    RenderOutputError,
    RenderRejected,
    RenderRequest,
    RenderService,
    RenderUnavailable,
)
from app.comfy.templates import (
    ParamSpec,
    Template,
    TemplateError,
    dump_map,
    find_template,
    load_template,
    map_path_for,
)
from app.narrates.errors import InvalidEdit
from app.narrates.events import EventListener, RenderFailed, RenderFinished, RenderProgress, RenderStarted
from app.narrates.model import ScenePlan
from app.narrates.store import RenderFileRecord, RenderRecord, SceneRecord, SessionStore

log = logging.getLogger(__name__)

LUNA_NODE_PREFIX = "LunaShared"  # class types of the node pack that call the daemon
DaemonHealth = Callable[[], Awaitable[bool]]
# names --set understands besides template parameters (the scene's own fields)
SCENE_FIELDS = (
    "prompt",
    "positive",
    "negative",
    "seed",
    "style",
    "template",
    "size",
    "width",
    "height",
    "loras",
)
_LORA_SPEC = ParamSpec("loras", "loras")
_SEED_SPEC = ParamSpec("seed", "seed")


def template_hash(template: Template) -> str:
    """SHA-256 of the template's content: the workflow (canonical JSON) and its injection map."""
    digest = hashlib.sha256()
    digest.update(json.dumps(template.workflow, sort_keys=True, separators=(",", ":")).encode())
    digest.update(b"\0")
    digest.update(dump_map(template.injection_map).encode())
    return digest.hexdigest()


class TemplateCache:
    """Loaded templates and their content hashes, reloaded when a file changes (size or mtime).

    A turn needs the scene's template twice (its hash for the scene row, then the render);
    parsing the JSON and the TOML map each time would be most of the pipeline's own overhead.
    """

    def __init__(self) -> None:
        self._entries: dict[str, tuple[tuple, Template, str]] = {}

    @staticmethod
    def _stamp(ref: str) -> tuple:
        try:
            path = find_template(ref)
        except TemplateError:
            return ()
        stamp = []
        for file in (path, map_path_for(path)):
            try:
                info = file.stat()
                stamp.append((str(file), info.st_mtime_ns, info.st_size))
            except OSError:
                stamp.append((str(file), None, None))
        return tuple(stamp)

    def load(self, ref: str) -> tuple[Template, str]:
        """The template and its hash; raises TemplateError / WorkflowFormatError like load_template."""
        stamp = self._stamp(ref)
        entry = self._entries.get(ref)
        if entry is not None and stamp and entry[0] == stamp:
            return entry[1], entry[2]
        template = load_template(ref)
        digest = template_hash(template)
        if stamp:
            self._entries[ref] = (stamp, template, digest)
        return template, digest

    def hash_of(self, ref: str) -> str | None:
        """The content hash of the template ``ref`` names, or None when it cannot be loaded now."""
        try:
            return self.load(ref)[1]
        except (TemplateError, WorkflowFormatError):
            return None


def needs_daemon(template: Template) -> bool:
    return any(
        str(node.get("class_type", "")).startswith(LUNA_NODE_PREFIX) for node in template.workflow.values()
    )


def stock_variant(template: Template) -> str | None:
    """The ``[template] stock_variant`` a map declares for when the daemon is down."""
    if template.map_path is None:
        return None
    try:
        data = tomllib.loads(Path(template.map_path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None
    value = (
        data.get("template", {}).get("stock_variant") if isinstance(data.get("template"), Mapping) else None
    )
    return value if isinstance(value, str) and value else None


def _parse_size(text: str) -> tuple[int, int]:
    width, sep, height = text.lower().partition("x")
    try:
        if sep:
            return int(width), int(height)
    except ValueError:
        pass
    raise InvalidEdit(f"size must be WIDTHxHEIGHT (e.g. 1024x1024), got {text!r}")


def apply_changes(plan: ScenePlan, changes: Mapping[str, str]) -> tuple[ScenePlan, dict[str, str]]:
    """The plan with the operator's ``--set`` changes; also the template parameters left over."""
    fields: dict[str, Any] = {}
    extra: dict[str, str] = {}
    for name, text in changes.items():
        try:
            if name in ("prompt", "positive"):
                fields["positive"] = text
            elif name == "negative":
                fields["negative"] = text
            elif name == "seed":
                fields["seed"] = (
                    None if text.strip().lower() in ("random", "-1") else parse_value(_SEED_SPEC, text)
                )
            elif name == "style":
                fields["style"] = text or None
            elif name == "template":
                fields["template"] = text
            elif name == "size":
                fields["width"], fields["height"] = _parse_size(text)
            elif name in ("width", "height"):
                fields[name] = int(text)
            elif name == "loras":
                fields["loras"] = tuple(parse_value(_LORA_SPEC, text)) if text.strip() else ()
            else:
                extra[name] = text
        except (InjectionError, ValueError) as exc:
            if isinstance(exc, InvalidEdit):
                raise
            raise InvalidEdit(f"--set {name}={text!r}: {exc}") from exc
    values = {**plan.values, **extra}
    return replace(plan, **fields, values=values), extra


@dataclass(frozen=True)
class PreparedRender:
    """A plan made concrete for one template: what goes into the render request."""

    template: Template
    template_hash: str
    values: dict[str, Any]
    notes: tuple[str, ...]


def prepare_values(
    plan: ScenePlan, template: Template, explicit: Mapping[str, str], digest: str | None = None
) -> PreparedRender:
    """The template values for ``plan``; a plan field the template cannot take is noted and skipped,
    an operator-given parameter the template lacks is an error."""
    params = template.injection_map.params
    values: dict[str, Any] = {}
    notes: list[str] = []

    def put(name: str, value: Any, why: str) -> None:
        if name in params:
            values[name] = value
        elif why:
            notes.append(f"template '{template.name}' has no parameter '{name}'; {why} not applied")

    # the session's extra values first: the scene's own fields (size, seed …) win over them
    for name, value in plan.values.items():
        if name in params:
            values[name] = value
        elif name in explicit:
            raise InvalidEdit(
                f"template '{template.name}' has no parameter '{name}' "
                f"(it has: {', '.join(params) or 'none'}; scene fields: {', '.join(SCENE_FIELDS)})"
            )
        else:
            notes.append(
                f"template '{template.name}' has no parameter '{name}'; the session's value not applied"
            )
    put("positive", plan.positive, "the prompt")
    put("negative", plan.negative, "the negative prompt")
    if plan.seed is not None:
        put("seed", plan.seed, "the seed")
    if plan.width is not None and plan.height is not None:
        put("width", plan.width, "the size")
        put("height", plan.height, "the size")
    if plan.loras:
        put("loras", [LoraSpec(x.name, x.strength_model, x.strength_clip) for x in plan.loras], "the LoRAs")
    return PreparedRender(template, digest or template_hash(template), values, tuple(notes))


async def _no_daemon_check() -> bool:
    return True


class SceneRenderer:
    """Renders stored scenes into new ``renders`` rows (see the module docstring)."""

    def __init__(
        self,
        store: SessionStore,
        service: RenderService,
        *,
        daemon_health: DaemonHealth = _no_daemon_check,
        render_timeout: float | None = 600.0,
        staging_dir: Path | None = None,
        templates: TemplateCache | None = None,
    ) -> None:
        self.store = store
        self.service = service
        self.daemon_health = daemon_health
        self.render_timeout = render_timeout
        self.staging_dir = staging_dir or store.path.parent / "staging"
        self.templates = templates or TemplateCache()

    async def render(
        self,
        scene: SceneRecord,
        *,
        changes: Mapping[str, str] | None = None,
        style: str | None = None,
        instance: str | None = None,
        on_event: EventListener | None = None,
    ) -> RenderRecord:
        """Render ``scene`` with ``changes``; returns the new render row (``done`` or ``failed``).

        Raises :class:`InvalidEdit` (nothing stored) for a change that cannot apply.
        """
        emit = on_event or (lambda event: None)
        changes = dict(changes or {})
        plan, extra = apply_changes(scene.plan, changes)
        if style is not None:
            plan = replace(plan, style=style)
        try:
            template, digest = self.templates.load(plan.template)
        except (TemplateError, WorkflowFormatError) as exc:
            if changes:
                raise InvalidEdit(str(exc)) from exc
            template = None
            load_error = str(exc)
        if template is not None:
            prepared = prepare_values(plan, template, extra, digest)
        render_id = self.store.start_render(
            scene.id,
            style=plan.style,
            template=plan.template,
            template_hash=prepared.template_hash if template is not None else None,
            changes=changes,
        )
        emit(RenderStarted(scene.id, render_id, plan.style, plan.template))
        if template is None:
            return self._failed(scene, render_id, "invalid", load_error, emit)
        try:
            return await self._run(scene, render_id, plan, template, prepared, instance, emit)
        except asyncio.CancelledError:
            # The operator (or a cancelled turn) stopped it: the row must not stay 'running' for
            # the rest of this process's life (only a dead owner's rows are marked at open).
            self._close_if_running(scene, render_id, "cancelled", "cancelled by the operator", emit)
            raise
        except Exception as exc:  # a bug must not leave the row 'running' either
            self._close_if_running(
                scene, render_id, "failed", f"internal error: {type(exc).__name__}: {exc}", emit
            )
            raise

    async def _run(
        self,
        scene: SceneRecord,
        render_id: int,
        plan: ScenePlan,
        template: Template,
        prepared: PreparedRender,
        instance: str | None,
        emit: EventListener,
    ) -> RenderRecord:
        """Health check, dispatch and storage of one opened ``renders`` row; closes the row."""
        notes = list(prepared.notes)
        if needs_daemon(template) and not await self._daemon_ok():
            variant = stock_variant(template)
            if variant is None:
                return self._failed(
                    scene,
                    render_id,
                    "unavailable",
                    f"template '{template.name}' needs the Luna daemon (shared CLIP/VAE nodes), which is not "
                    "answering, and declares no stock variant ([template] stock_variant in its .luna.toml); "
                    "start the daemon or re-render with --set template=<a stock template>",
                    emit,
                )
            try:
                stock, stock_digest = self.templates.load(variant)
            except (TemplateError, WorkflowFormatError) as exc:
                return self._failed(
                    scene, render_id, "invalid", f"stock variant of '{template.name}': {exc}", emit
                )
            notes.append(f"the Luna daemon is not answering: rendering with the stock variant '{variant}'")
            prepared = prepare_values(plan, stock, {}, stock_digest)
            notes += prepared.notes
        for note in notes:
            log.info("scene %s: %s", scene.id, note)
        staging = self.staging_dir / str(render_id)
        request = RenderRequest(
            template=prepared.template,
            values=prepared.values,
            style=plan.style,
            instance=instance,
            output_dir=staging,
            timeout=self.render_timeout,
        )
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            outcome = await self.service.render(
                request, on_event=lambda event: emit(RenderProgress(scene.id, render_id, event))
            )
        except RenderError as exc:
            kind = _kind(exc)
            self.store.fail_render(
                render_id,
                kind=kind,
                error=_message(exc),
                instance=exc.instance,
                prompt_id=exc.prompt_id,
                template=prepared.template.name,
            )
            emit(RenderFailed(scene.id, render_id, kind, _message(exc)))
            return self.store.render(render_id)
        except OSError as exc:  # the render service could not write an output file
            return self._failed(scene, render_id, "storage", f"cannot write the image: {exc}", emit)
        except asyncio.CancelledError:
            # the operator cancelled (the render service has cancelled the job on its server):
            # the row says so now rather than staying 'running' until the next start
            self._failed(scene, render_id, "cancelled", "cancelled by the operator", emit)
            _remove_staging(staging)
            raise
        try:
            # reading, hashing and fsyncing the images is disk work: off the loop (the GUI's)
            files = await asyncio.to_thread(self._store_files, outcome.files)
        except OSError as exc:
            return self._failed(
                scene,
                render_id,
                "storage",
                f"cannot store the image under {self.store.images.root}: {exc}",
                emit,
            )
        finally:
            _remove_staging(staging)
        record = self.store.finish_render(
            render_id,
            instance=outcome.instance,
            prompt_id=outcome.prompt_id,
            params=_jsonable(outcome.values),
            seed=outcome.seed,
            timings=_timings(outcome.timings),
            warnings=[*notes, *outcome.warnings],
            files=files,
            template=outcome.template,
        )
        emit(
            RenderFinished(
                scene.id,
                render_id,
                tuple(str(f.path) for f in files),
                outcome.seed,
                outcome.instance,
                loop.time() - started,
            )
        )
        return record

    async def _daemon_ok(self) -> bool:
        try:
            return await asyncio.wait_for(self.daemon_health(), 5.0)
        except (TimeoutError, OSError):
            return False
        except Exception as exc:  # a health check that cannot say "up" means not up, never a crash
            log.info("the daemon health check failed (%r); treating the daemon as down", exc)
            return False

    def _close_if_running(
        self, scene: SceneRecord, render_id: int, kind: str, message: str, emit: EventListener
    ) -> None:
        if self.store.render(render_id).status == "running":
            self._failed(scene, render_id, kind, message, emit)

    def _failed(
        self, scene: SceneRecord, render_id: int, kind: str, message: str, emit: EventListener
    ) -> RenderRecord:
        self.store.fail_render(render_id, kind=kind, error=message)
        emit(RenderFailed(scene.id, render_id, kind, message))
        return self.store.render(render_id)

    def _store_files(self, rendered: Any) -> list[RenderFileRecord]:
        files = []
        for file in rendered:
            data = Path(file.path).read_bytes()
            digest, path = self.store.images.put(data, Path(file.path).suffix or ".png")
            files.append(RenderFileRecord(digest, path, file.filename, file.mime_type, len(data)))
        return files


def _remove_staging(staging: Path) -> None:
    if staging.is_dir():
        for child in staging.iterdir():
            try:
                child.unlink()
            except OSError:
                pass
        try:
            staging.rmdir()
        except OSError:
            pass


def _kind(exc: RenderError) -> str:
    if isinstance(exc, RenderOutputError):  # the job ran; its files could not be written (disk full)
        return "storage"
    if isinstance(exc, RenderUnavailable):
        return "unavailable"
    if isinstance(exc, (RenderInvalid, RenderRejected, RenderBadInput)):
        return "invalid"
    return "failed"


def _message(exc: RenderError) -> str:
    lines = [str(exc)] + [f"  - {issue.describe()}" for issue in exc.issues]
    return "\n".join(lines)


def _timings(timings: Any) -> dict[str, float]:
    out = {}
    for name in ("queued", "running", "fetching", "total"):
        value = getattr(timings, name, None)
        if isinstance(value, (int, float)):
            out[name] = float(value)
    return out


def _jsonable(values: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in values.items():
        if isinstance(value, (list, tuple)):
            out[name] = [
                {"name": v.name, "strength": v.strength_model, "clip": v.clip}
                if isinstance(v, LoraSpec)
                else v
                for v in value
            ]
        else:
            out[name] = value
    return out
