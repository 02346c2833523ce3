"""``luna story``: the Narrates engine headless (the GUI and scripts rely on this interface).

::

    luna story new [--title T] [--style S] [--template NAME] [--cast FILE.toml] [--json]
    luna story turn SESSION TEXT [--llm URL] [--llm-model M] [--url COMFY_URL | --style S] [--no-render] [--json]
    luna story rerender SCENE [--set name=value …] [--url URL | --style S] [--json]
    luna story list [--json]
    luna story show SESSION [--json]
    luna story export SESSION --format md|html --out PATH [--json]
    luna story undo SESSION [--json]
    luna story regenerate SESSION [--llm URL] [--llm-model M] [--url URL | --style S] [--no-render] [--json]
    luna story edit TURN --prose TEXT [--json]

``turn`` streams the prose to stdout as it arrives (stage progress goes to stderr); with
``--json`` stdout carries exactly one JSON object at the end — the turn id, every stage's
output, the prose, the scene id and the render (files, seed, instance) or the render error —
also on failure (``{"ok": false, "error": {...}}``).

``--llm`` is the base URL of any OpenAI-compatible server (``http://host:port/v1``) or
``embedded`` (the bundled llama.cpp runtime); without it ``llm.toml``, then discovery of local
servers, then the embedded runtime decide; the effective choice is reported on stderr (and as
``llm`` in the JSON). ``--url`` renders on that ComfyUI alone; otherwise ``--style`` (or the
session's style) routes through the configured instances, like ``luna render``.

Exit codes are ``luna render``'s — 0 ok; 1 the render failed (for ``turn``/``regenerate``: the
turn was committed, the render of its scene failed); 2 bad command line or input (unknown
session, invalid cast file, newer database); 3 the prompt is invalid for the instance; 4 no
instance reachable (or the daemon down for a daemon-only template); 130 cancelled — plus
**5: the LLM failed** (unreachable, timed out, garbage output); the error names the stage.

One ``asyncio.run`` per invocation; the store is opened and closed around the command.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, TextIO

from app.comfy.instances import InstanceConfigError
from app.comfy.render import RenderBadInput, RenderService, parse_assignments
from app.comfy.router import StyleRouter, command_line_router
from app.narrates.cast import load_cast
from app.narrates.errors import CastError, InvalidEdit, NarratesError, NotFound, StageFailed, StoreError
from app.narrates.events import (
    Notice,
    RenderFailed,
    RenderFinished,
    RenderStarted,
    StageFinished,
    StageStarted,
    StageToken,
)
from app.narrates.events import (
    StageFailed as StageFailedEvent,
)
from app.narrates.export import FORMATS
from app.narrates.health import DaemonHealthGate
from app.narrates.llm.client import LlmClient
from app.narrates.llm.config import AGENTS, LlmSettings, load_llm_settings, open_backend, resolve_backend
from app.narrates.llm.errors import LlmConfigError, LlmError
from app.narrates.pipeline import TurnOutcome, TurnPipeline
from app.narrates.rendering import SceneRenderer
from app.narrates.service import ServiceNotReady, SessionView, StoryService
from app.narrates.store import RenderRecord, SessionStore, StageRecord

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INVALID = 3
EXIT_UNAVAILABLE = 4
EXIT_LLM = 5
EXIT_CANCELLED = 130
RENDER_EXIT = {"unavailable": EXIT_UNAVAILABLE, "invalid": EXIT_INVALID}


class StoryCliError(Exception):
    """A ``luna story`` failure with its exit code and error kind (printed, or as JSON)."""

    def __init__(self, code: int, message: str, *, kind: str, extra: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.kind = kind
        self.extra = extra or {}


# ---------------------------------------------------------------------------------------------
# parser


def add_parser(sub: Any) -> None:
    """Add ``story`` and its actions to the ``luna`` subparsers."""
    story = sub.add_parser(
        "story",
        help="interactive stories: sessions, turns, scenes and their renders",
        description="Play and manage Narrates sessions headless (see README, 'luna story').",
        epilog="Exit codes: 0 ok, 1 render failed (the turn is kept), 2 bad input, 3 invalid for the "
        "instance, 4 unreachable, 5 the LLM failed (the error names the stage), 130 cancelled.",
    )
    ssub = story.add_subparsers(dest="story_command", metavar="ACTION", required=True)

    def llm_options(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--llm", metavar="URL", help="OpenAI-compatible base URL (http://host:port/v1) or 'embedded'"
        )
        p.add_argument("--llm-model", metavar="M", help="model id on that server")

    def render_target(p: argparse.ArgumentParser) -> None:
        where = p.add_mutually_exclusive_group()
        where.add_argument("--url", help="ComfyUI base URL, e.g. http://127.0.0.1:8188")
        where.add_argument("--style", help="route by style to a configured instance (instances.toml)")
        p.add_argument("--connect-timeout", type=float, default=5.0, help="seconds to reach an instance (5)")

    new = ssub.add_parser("new", help="start a session; prints its id")
    new.add_argument("--title")
    new.add_argument("--style", help="router style of the session's scenes")
    new.add_argument("--template", help="template name or workflow file (as 'luna render' takes it)")
    new.add_argument("--cast", metavar="FILE.toml", help="characters, world notes and settings")
    new.add_argument("--json", action="store_true")

    for name, helptext in (
        ("turn", "play one turn"),
        ("regenerate", "a new variant of the last turn (old kept)"),
    ):
        p = ssub.add_parser(name, help=helptext)
        p.add_argument("session", type=int, metavar="SESSION")
        if name == "turn":
            p.add_argument("text", metavar="TEXT")
        llm_options(p)
        render_target(p)
        p.add_argument("--no-render", action="store_true", help="store the scene but do not render it")
        p.add_argument("--json", action="store_true")

    rerender = ssub.add_parser("rerender", help="render a stored scene again, with changes")
    rerender.add_argument("scene", type=int, metavar="SCENE")
    rerender.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="seed, prompt, negative, style, template, size (WxH), loras (a.safetensors:0.8,…) or a template parameter",
    )
    render_target(rerender)
    rerender.add_argument("--json", action="store_true")

    listing = ssub.add_parser("list", help="sessions, newest first")
    listing.add_argument("--json", action="store_true")
    show = ssub.add_parser("show", help="a session: cast, turns, stages, scenes and renders")
    show.add_argument("session", type=int, metavar="SESSION")
    show.add_argument("--json", action="store_true")
    export = ssub.add_parser("export", help="write the story as Markdown or self-contained HTML")
    export.add_argument("session", type=int, metavar="SESSION")
    export.add_argument("--format", choices=FORMATS, required=True)
    export.add_argument("--out", required=True, metavar="PATH")
    export.add_argument("--json", action="store_true")
    undo = ssub.add_parser("undo", help="undo the last turn (kept in the database)")
    undo.add_argument("session", type=int, metavar="SESSION")
    undo.add_argument("--json", action="store_true")
    edit = ssub.add_parser("edit", help="replace a turn's prose")
    edit.add_argument("turn", type=int, metavar="TURN")
    edit.add_argument("--prose", required=True)
    edit.add_argument("--json", action="store_true")


# ---------------------------------------------------------------------------------------------
# wiring


class _Printer:
    """Turn and render events → the terminal: prose on stdout, progress on stderr."""

    def __init__(self, out: TextIO, err: TextIO, *, as_json: bool) -> None:
        self.out, self.err, self.as_json = out, err, as_json
        self.streaming = False

    def _end_prose(self) -> None:
        if self.streaming:
            print(file=self.out, flush=True)
            self.streaming = False

    def __call__(self, event: Any) -> None:
        if isinstance(event, StageToken):
            if not self.as_json:
                print(event.text, end="", file=self.out, flush=True)
                self.streaming = True
        elif isinstance(event, StageStarted):
            print(f"[{event.stage}] …", file=self.err, flush=True)
        elif isinstance(event, StageFinished):
            self._end_prose()
            print(f"[{event.stage}] done in {event.elapsed_s:.2f} s", file=self.err, flush=True)
        elif isinstance(event, StageFailedEvent):
            self._end_prose()
            print(f"[{event.stage}] FAILED: {event.error}", file=self.err, flush=True)
        elif isinstance(event, Notice):
            print(f"note: {event.message}", file=self.err, flush=True)
        elif isinstance(event, RenderStarted):
            where = f" (style {event.style})" if event.style else ""
            print(
                f"[render] scene {event.scene_id} with {event.template}{where} …", file=self.err, flush=True
            )
        elif isinstance(event, RenderFinished):
            print(
                f"[render] done in {event.elapsed_s:.2f} s on {event.instance}, seed {event.seed}",
                file=self.err,
            )
            for path in event.files:
                print(f"[render] image {path}", file=self.err, flush=True)
        elif isinstance(event, RenderFailed):
            print(f"[render] FAILED ({event.kind}): {event.error}", file=self.err, flush=True)


def _router(args: argparse.Namespace) -> tuple[StyleRouter, str | None]:
    try:
        return command_line_router(args.url, args.style, connect_timeout=args.connect_timeout)
    except InstanceConfigError as exc:
        raise StoryCliError(EXIT_USAGE, str(exc), kind="config") from exc


@contextlib.asynccontextmanager
async def _llm(args: argparse.Namespace, err: TextIO) -> AsyncIterator[tuple[LlmClient, LlmSettings]]:
    """The LLM client for ``--llm`` / ``--llm-model``, ``llm.toml``, discovery or the embedded
    runtime (:func:`~app.narrates.llm.config.resolve_backend`); the choice is reported on stderr."""
    settings = load_llm_settings()
    effective = await resolve_backend(settings, args.llm, args.llm_model)
    print(effective.describe(), file=err, flush=True)
    async with open_backend(effective) as backend:
        async with LlmClient(backend, timeouts=settings.timeouts, retries=settings.retries) as client:
            yield client, settings


def _backend_report(client: LlmClient) -> dict[str, Any]:
    b = client.backend
    return {"name": b.name, "base_url": b.base_url, "model": b.model, "origin": b.origin}


# ---------------------------------------------------------------------------------------------
# JSON views


def _stage_json(record: StageRecord) -> dict[str, Any]:
    return {"output": record.output, "model": record.model, "elapsed_s": round(record.elapsed_s, 4)}


def _render_json(render: RenderRecord | None) -> dict[str, Any] | None:
    if render is None:
        return None
    body: dict[str, Any] = {
        "id": render.id,
        "scene": render.scene_id,
        "status": render.status,
        "template": render.template,
        "template_hash": render.template_hash,
        "style": render.style,
        "instance": render.instance,
        "prompt_id": render.prompt_id,
        "seed": render.seed,
        "chosen": render.chosen,
        "changes": dict(render.changes),
        "params": render.params,
        "timings": render.timings,
        "warnings": list(render.warnings),
        "files": [
            {"path": str(f.path), "sha256": f.sha256, "mime_type": f.mime_type, "bytes": f.bytes}
            for f in render.files
        ],
    }
    if render.status != "done":
        body["error"] = {"kind": render.error_kind, "message": render.error}
    return body


def _turn_json(outcome: TurnOutcome, client: LlmClient) -> dict[str, Any]:
    turn = outcome.turn
    return {
        "ok": True,
        "session": turn.session_id,
        "turn": turn.id,
        "position": turn.position,
        "variant": turn.variant,
        "llm": _backend_report(client),
        "stages": {name: _stage_json(record) for name, record in outcome.stages.items()},
        "prose": outcome.prose,
        "scene": outcome.scene.id if outcome.scene else None,
        "render": _render_json(outcome.render),
    }


def _view_json(view: SessionView) -> dict[str, Any]:
    s = view.session
    return {
        "ok": True,
        "session": s.id,
        "title": s.title,
        "settings": s.settings.as_dict(),
        "summary": s.summary,
        "summary_through": s.summary_through,
        "characters": [
            {
                "name": c.name,
                "description": c.description,
                "visual": c.visual,
                "aliases": list(c.aliases),
                "seed": c.seed,
            }
            for c in view.characters
        ],
        "world": [{"title": n.title, "keys": list(n.keys), "content": n.content} for n in view.world],
        "turns": [
            {
                "turn": tv.turn.id,
                "position": tv.turn.position,
                "variant": tv.turn.variant,
                "variants": tv.variants,
                "input": tv.turn.player_input,
                "prose": tv.turn.prose,
                "edited": tv.turn.prose_edited,
                "stages": {name: _stage_json(r) for name, r in tv.stages.items()},
                "scenes": [
                    {
                        "scene": scene.id,
                        "prompt": scene.plan.positive,
                        "negative": scene.plan.negative,
                        "seed": scene.plan.seed,
                        "template": scene.plan.template,
                        "template_hash": scene.template_hash,
                        "style": scene.plan.style,
                        "renders": [_render_json(r) for r in renders],
                    }
                    for scene, renders in tv.scenes
                ],
            }
            for tv in view.turns
        ],
        "other_turns": [
            {
                "turn": t.id,
                "position": t.position,
                "variant": t.variant,
                "status": t.status,
                "undone": t.undone,
                "error_stage": t.error_stage,
                "error": t.error,
            }
            for t in view.other_turns
        ],
    }


def _print_view(view: SessionView, out: TextIO) -> None:
    s = view.session
    print(f"session {s.id}: {s.title}", file=out)
    if s.settings.premise:
        print(f"  premise: {s.settings.premise}", file=out)
    print(
        f"  style {s.settings.style or '(default)'}, template {s.settings.template}, seeds {s.settings.seed_policy}",
        file=out,
    )
    for c in view.characters:
        print(f"  cast: {c.name} — {c.visual or c.description}", file=out)
    if s.summary:
        print(f"  summary (to turn {s.summary_through}): {s.summary}", file=out)
    for tv in view.turns:
        t = tv.turn
        swipes = f" (variant {t.variant} of {tv.variants})" if tv.variants > 1 else ""
        print(
            f"\n#{t.position} turn {t.id}{swipes}{' [edited]' if t.prose_edited else ''}: > {t.player_input}",
            file=out,
        )
        print(t.prose or "", file=out)
        for scene, renders in tv.scenes:
            print(f"  scene {scene.id}: {scene.plan.positive}", file=out)
            for r in renders:
                files = ", ".join(str(f.path) for f in r.files)
                mark = "*" if r.chosen else " "
                detail = files if r.status == "done" else f"{r.error_kind}: {r.error}"
                print(f"   {mark}render {r.id} [{r.status}] seed {r.seed} {detail}", file=out)
    for t in view.other_turns:
        state = "undone" if t.undone else t.status
        print(
            f"  (turn {t.id} at #{t.position} v{t.variant}: {state}{': ' + t.error if t.error else ''})",
            file=out,
        )


# ---------------------------------------------------------------------------------------------
# commands


async def _turn_like(
    args: argparse.Namespace, store: SessionStore, out: TextIO, err: TextIO
) -> tuple[dict, int]:
    printer = _Printer(out, err, as_json=args.json)
    store.session(args.session)
    async with _llm(args, err) as (client, settings):
        router, style = _router(args)
        try:  # the render service starts the router (its health probes) only when a scene renders
            renderer = SceneRenderer(store, RenderService(router), daemon_health=DaemonHealthGate())
            params = {name: settings.agent(name) for name in AGENTS}
            pipeline = TurnPipeline(store, client, params=params, renderer=renderer)
            service = StoryService(store, pipeline=pipeline)
            kwargs = dict(
                style=None if args.url else style,  # --url pins the instance; the scene keeps its style
                instance=args.url or None,
                render=not args.no_render,
                on_event=printer,
            )
            if args.story_command == "turn":
                outcome = await service.turn(args.session, args.text, **kwargs)
            else:
                outcome = await service.regenerate(args.session, **kwargs)
        finally:
            await router.close()
        result = _turn_json(outcome, client)
    code = EXIT_OK
    if outcome.render is not None and outcome.render.status != "done":
        code = RENDER_EXIT.get(outcome.render.error_kind or "", EXIT_FAILED)
    return result, code


async def _rerender(
    args: argparse.Namespace, store: SessionStore, out: TextIO, err: TextIO
) -> tuple[dict, int]:
    printer = _Printer(out, err, as_json=args.json)
    try:
        changes = parse_assignments(args.set)
    except RenderBadInput as exc:
        raise StoryCliError(EXIT_USAGE, str(exc), kind="usage") from exc
    store.scene(args.scene)
    router, style = _router(args)
    async with router:
        service = StoryService(
            store, renderer=SceneRenderer(store, RenderService(router), daemon_health=DaemonHealthGate())
        )
        render = await service.rerender(
            args.scene,
            changes=changes,
            style=None if args.url else style,
            instance=args.url if args.url else None,
            on_event=printer,
        )
    code = EXIT_OK if render.status == "done" else RENDER_EXIT.get(render.error_kind or "", EXIT_FAILED)
    return {"ok": render.status == "done", "scene": args.scene, "render": _render_json(render)}, code


async def _dispatch(args: argparse.Namespace, out: TextIO, err: TextIO) -> tuple[dict, int]:
    command = args.story_command
    if command == "new":
        cast = load_cast(args.cast) if args.cast else None
        if args.template:
            from app.comfy.graph import UiFormatWorkflowError, WorkflowFormatError
            from app.comfy.templates import TemplateError, load_template

            try:
                load_template(args.template)
            except UiFormatWorkflowError as exc:
                raise StoryCliError(
                    EXIT_USAGE,
                    f"{exc} — a session renders many scenes, so give it the API format: "
                    "'luna templates convert FILE --url URL > NAME.json'",
                    kind="template",
                ) from exc
            except (TemplateError, WorkflowFormatError) as exc:
                raise StoryCliError(EXIT_USAGE, str(exc), kind="template") from exc
    with SessionStore.open() as store:
        service = StoryService(store)
        if command == "new":
            session = service.new_session(
                title=args.title, cast=cast, style=args.style, template=args.template
            )
            return {
                "ok": True,
                "session": session.id,
                "title": session.title,
                "characters": [c.name for c in store.characters(session.id)],
                "world": [n.title for n in store.world_notes(session.id)],
                "settings": session.settings.as_dict(),
                "database": str(store.path),
            }, EXIT_OK
        if command in ("turn", "regenerate"):
            return await _turn_like(args, store, out, err)
        if command == "rerender":
            return await _rerender(args, store, out, err)
        if command == "list":
            return {
                "ok": True,
                "sessions": [
                    {"session": s.id, "title": s.title, "turns": s.turns, "updated_at": s.updated_at}
                    for s in store.sessions()
                ],
            }, EXIT_OK
        if command == "show":
            return _view_json(service.view(args.session)) | {"_view": service.view(args.session)}, EXIT_OK
        if command == "export":
            path = service.export(args.session, args.format, Path(args.out).expanduser())
            return {"ok": True, "session": args.session, "format": args.format, "path": str(path)}, EXIT_OK
        if command == "undo":
            turn = service.undo(args.session)
            return {
                "ok": True,
                "session": args.session,
                "undone": turn.id,
                "position": turn.position,
            }, EXIT_OK
        turn = service.edit(args.turn, args.prose)
        return {"ok": True, "turn": turn.id, "session": turn.session_id, "prose": turn.prose}, EXIT_OK


def _print_result(args: argparse.Namespace, result: dict[str, Any], out: TextIO, err: TextIO) -> None:
    command = args.story_command
    if command == "new":
        print(result["session"], file=out)
    elif command in ("turn", "regenerate"):
        render = result.get("render")
        print(f"turn {result['turn']} (#{result['position']}), scene {result['scene']}", file=err)
        if render and render["status"] == "done":
            for file in render["files"]:
                print(file["path"], file=err)
    elif command == "rerender":
        for file in result["render"]["files"]:
            print(file["path"], file=out)
    elif command == "list":
        for s in result["sessions"]:
            print(f"{s['session']:>5}  {s['turns']:>4} turns  {s['title']}", file=out)
    elif command == "show":
        _print_view(result["_view"], out)
    elif command == "export":
        print(result["path"], file=out)
    elif command == "undo":
        print(f"undid turn {result['undone']} (#{result['position']})", file=out)
    elif command == "edit":
        print(f"turn {result['turn']} edited", file=out)


def _report(error: StoryCliError, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if getattr(args, "json", False):
        body = {
            "ok": False,
            "error": {"kind": error.kind, "message": error.message, "exit_code": error.code, **error.extra},
        }
        print(json.dumps(body, indent=2), file=out)
    print(f"luna: error: {error.message}", file=err, flush=True)
    return error.code


def _classify(exc: BaseException) -> StoryCliError:
    if isinstance(exc, StoryCliError):
        return exc
    if isinstance(exc, StageFailed):
        extra = {"stage": exc.stage, "turn": exc.turn_id}
        return StoryCliError(
            EXIT_LLM if exc.llm else EXIT_USAGE, str(exc), kind="llm" if exc.llm else "prompt", extra=extra
        )
    if isinstance(exc, LlmConfigError):
        return StoryCliError(EXIT_USAGE, str(exc), kind="config")
    if isinstance(exc, LlmError):
        return StoryCliError(EXIT_LLM, f"llm: {exc}", kind="llm")
    if isinstance(exc, NotFound):
        return StoryCliError(EXIT_USAGE, str(exc), kind="not_found")
    if isinstance(exc, CastError):
        return StoryCliError(EXIT_USAGE, str(exc), kind="cast")
    if isinstance(exc, StoreError):
        return StoryCliError(EXIT_USAGE, str(exc), kind="store")
    if isinstance(exc, (InvalidEdit, ServiceNotReady)):
        return StoryCliError(EXIT_USAGE, str(exc), kind="usage")
    if isinstance(exc, NarratesError):
        return StoryCliError(EXIT_USAGE, str(exc), kind=type(exc).__name__)
    raise exc


def run(args: argparse.Namespace, *, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    """Run one ``luna story`` action (``args`` from :func:`add_parser`); returns the exit code."""
    out, err = stdout or sys.stdout, stderr or sys.stderr
    try:
        result, code = asyncio.run(_dispatch(args, out, err))
    except KeyboardInterrupt:
        print("luna: cancelled", file=err, flush=True)
        return EXIT_CANCELLED
    except Exception as exc:
        return _report(_classify(exc), args, out, err)
    if args.json:
        result.pop("_view", None)
        print(json.dumps(result, indent=2, ensure_ascii=False), file=out)
    else:
        _print_result(args, result, out, err)
    return code
