"""The ``luna`` command line: render templates on ComfyUI, inspect templates and instances.

Subcommands (``luna --help`` for the details)::

    luna render TEMPLATE [--url URL | --style STYLE] [--set name=value ...] [--out DIR] [--json]
    luna templates list | show TEMPLATE | detect TEMPLATE | validate TEMPLATE [--url URL | --style STYLE] [--set ...]
    luna templates convert UI_WORKFLOW (--url URL | --style STYLE)
    luna instances [--json]
    luna [gui [--self-test] [--no-daemon]]   (no command: the operator window)

TEMPLATE is a file path or a template name (see ``workflows/README.md``). Progress goes to
stderr; with ``--json`` stdout carries exactly one JSON document, also on failure.

Exit codes: 0 done; 1 the render failed on the server (node error, interrupted, lost, timed
out); 2 bad command line, template or parameter; 3 the prompt is invalid for the instance (local
validation or a ComfyUI 400), every problem named by node title and parameter; 4 no instance
reachable; 130 cancelled with Ctrl-C (the job is dequeued or interrupted on the server first).

Instances: ``--url`` renders on that server alone; otherwise the configured instances
(``instances.toml``, else the seed's four local ports) are probed and the job goes through the
:class:`~app.comfy.router.StyleRouter` (``--style``, else the default style): a healthy
instance with the shortest queue, resubmitted elsewhere if it dies before starting the job.
``luna render`` is a thin shell over :class:`app.comfy.render.RenderService`, which injects the
template, uploads image parameters naming local files, validates the prompt against the chosen
instance's ``/object_info`` and runs it there (a UI-format file, plain "Save", is converted with
that instance's node definitions and sent with the original as ``extra_pnginfo.workflow``); this
module only turns ``--set`` text and flags into a :class:`~app.comfy.render.RenderRequest`, the
service's events into progress lines, and its outcome or :class:`~app.comfy.render.RenderError`
into the output and exit codes above.

Runs one asyncio event loop per invocation (``asyncio.run``); all network I/O goes through
:class:`app.comfy.client.ComfyClient` (via the router) with its timeouts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from app.comfy.client import ComfyTimeouts
from app.comfy.detect import detect_map
from app.comfy.errors import ComfyError, ComfyUnavailable, NoInstanceAvailable
from app.comfy.events import (
    ComfyEvent,
    ConnectionLost,
    ExecutionCached,
    ExecutionStart,
    JobCancelled,
    JobQueued,
    Progress,
    Reconnected,
)
from app.comfy.graph import UiFormatWorkflowError, WorkflowFormatError, describe_node
from app.comfy.inject import InjectedWorkflow, InjectionError, inject
from app.comfy.instances import InstanceConfigError, InstancesConfig, load_instances
from app.comfy.render import (
    ImageUploaded,
    PromptPrepared,
    RenderBadInput,
    RenderError,
    RenderEvent,
    RenderInvalid,
    RenderOutcome,
    RenderRejected,
    RenderRequest,
    RenderService,
    RenderUnavailable,
    StyleFallback,
    TemplateNote,
    convert_ui_template,
    json_value,
    parse_assignments,
    parse_values,
)
from app.comfy.router import InstanceSnapshot, RouterSettings, StyleRouter, command_line_router
from app.comfy.templates import (
    Template,
    TemplateError,
    dump_map,
    list_templates,
    load_template,
)
from app.comfy.validate import ValidationIssue, validate_workflow

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INVALID = 3
EXIT_UNAVAILABLE = 4
EXIT_CANCELLED = 130  # Ctrl-C, as shells report SIGINT


@dataclass
class CliError(Exception):
    """A failure to report: exit code, one-line message, and the located issues if any."""

    code: int
    message: str
    issues: list[ValidationIssue] = field(default_factory=list)
    kind: str = "error"
    prompt_id: str | None = None

    def __str__(self) -> str:
        return self.message


@dataclass
class Console:
    """Where output goes: ``out`` for results, ``err`` for progress and human errors."""

    out: TextIO
    err: TextIO
    json: bool = False
    quiet: bool = False

    def info(self, text: str) -> None:
        if not self.quiet:
            print(text, file=self.err, flush=True)


# ---------------------------------------------------------------------------------------------
# shared helpers


def _load(ref: str, *, allow_ui: bool = False) -> Template | None:
    """The template; None for a UI-format file when ``allow_ui`` (converted once an instance is
    known, see :func:`_convert_ui`)."""
    try:
        return load_template(ref)
    except UiFormatWorkflowError as exc:
        if allow_ui:
            return None
        raise CliError(EXIT_USAGE, str(exc), kind="template") from exc
    except (TemplateError, WorkflowFormatError) as exc:
        raise CliError(EXIT_USAGE, str(exc), kind="template") from exc


def _convert_ui(ref: str, object_info: dict[str, Any], instance: str, console: Console) -> Template:
    """Convert a UI-format template file with the instance's node definitions."""
    try:
        template = convert_ui_template(ref, object_info, instance)
    except RenderBadInput as exc:
        raise _cli_error(exc) from exc
    for note in template.notes:
        console.info(f"note: {note}")
    return template


def _parse_sets(template: Template, assignments: Sequence[str]) -> dict[str, Any]:
    try:
        return parse_values(template, parse_assignments(assignments))
    except RenderBadInput as exc:
        raise _cli_error(exc) from exc


def _cli_error(error: RenderError) -> CliError:
    """The exit code and report of a render-layer error (the module docstring lists the codes)."""
    if isinstance(error, RenderBadInput):
        return CliError(EXIT_USAGE, error.message, list(error.issues), kind=error.kind)
    if isinstance(error, (RenderInvalid, RenderRejected)):
        return CliError(EXIT_INVALID, error.message, list(error.issues), kind=error.kind)
    if isinstance(error, RenderUnavailable):
        return CliError(EXIT_UNAVAILABLE, error.message, list(error.issues), kind=error.kind)
    return CliError(
        EXIT_FAILED, error.message, list(error.issues), kind=error.kind, prompt_id=error.prompt_id
    )


def _inject(template: Template, values: dict[str, Any]) -> InjectedWorkflow:
    try:
        return inject(template, values)
    except InjectionError as exc:
        raise CliError(EXIT_USAGE, str(exc), kind="parameter") from exc


def _instances_config() -> InstancesConfig:
    try:
        return load_instances()
    except InstanceConfigError as exc:
        raise CliError(EXIT_USAGE, str(exc), kind="config") from exc


def _timeouts(args: argparse.Namespace) -> ComfyTimeouts:
    connect = getattr(args, "connect_timeout", 5.0)
    return ComfyTimeouts(connect=connect, ws_open=max(connect, 2.0))


def _router_for(args: argparse.Namespace) -> tuple[StyleRouter, str | None]:
    """A router over ``--url`` alone, or over the configured instances; and the style to use."""
    url = getattr(args, "url", None)
    try:
        return command_line_router(
            url, getattr(args, "style", None), connect_timeout=getattr(args, "connect_timeout", 5.0)
        )
    except InstanceConfigError as exc:
        raise CliError(EXIT_USAGE, str(exc), kind="usage" if url else "config") from exc


async def _pick(router: StyleRouter, style: str | None, console: Console) -> str:
    """Probe now and return the name of the instance a job of ``style`` goes to."""
    resolved = router.config.resolve_style(style)
    if style and style != resolved:
        console.info(f"no instance serves style '{style}'; using '{resolved}'")
    snapshot = await router.check_now()
    name = router.pick(resolved)
    if name is None:
        reasons = "; ".join(
            f"{i.name} ({i.base_url}): {i.last_error or i.state}"
            for i in snapshot.instances
            if resolved in i.styles
        )
        raise CliError(
            EXIT_UNAVAILABLE,
            f"no reachable ComfyUI instance for style '{resolved}': {reasons}",
            kind="unavailable",
        )
    return name


def _instance_report(snapshot: InstanceSnapshot) -> dict[str, Any]:
    return {
        "name": snapshot.name,
        "url": snapshot.base_url,
        "styles": list(snapshot.styles),
        "healthy": snapshot.healthy,
        "error": snapshot.last_error,
        "queue_remaining": snapshot.queue_remaining,
        "comfyui_version": snapshot.comfyui_version,
        "devices": [
            {"name": d.name, "type": d.type, "vram_total": d.vram_total, "vram_free": d.vram_free}
            for d in snapshot.devices
        ],
    }


def _issue_lines(issues: Sequence[ValidationIssue]) -> str:
    return "\n".join(f"  - {issue.describe()}" for issue in issues)


# ---------------------------------------------------------------------------------------------
# luna render


class _ProgressPrinter:
    """Prints a render's events to stderr: a rewritten line on a terminal, sparse lines otherwise."""

    def __init__(self, console: Console):
        self.console = console
        self.workflow: dict[str, Any] = {}
        self.tty = console.err.isatty()
        self.last = ""
        self.open_line = False  # a progress line waiting to be ended (terminal only)

    def line(self, text: str, final: bool = False) -> None:
        if self.console.quiet or text == self.last:
            return
        self.last = text
        if self.tty:
            print("\r\033[K" + text, end="\n" if final else "", file=self.console.err, flush=True)
            self.open_line = not final
        else:
            print(text, file=self.console.err, flush=True)

    def __call__(self, event: RenderEvent | ComfyEvent) -> None:
        if isinstance(event, TemplateNote):
            self.console.info(f"note: {event.text}")
        elif isinstance(event, StyleFallback):
            self.console.info(f"no instance serves style '{event.requested}'; using '{event.used}'")
        elif isinstance(event, ImageUploaded):
            self.console.info(f"uploaded {event.path} as {event.reference}")
        elif isinstance(event, PromptPrepared):
            self.workflow = dict(event.workflow)
        elif isinstance(event, JobQueued):
            self.line(f"queued on {event.instance} as {event.prompt_id}", final=True)
        elif isinstance(event, ExecutionStart):
            self.line("running", final=True)
        elif isinstance(event, ExecutionCached) and event.nodes:
            self.line(f"{len(event.nodes)} node(s) cached", final=True)
        elif isinstance(event, Progress) and event.max:
            node = event.node
            title = (
                describe_node(self.workflow, node)
                if node is not None and node in self.workflow
                else "progress"
            )
            value, maximum = int(event.value), int(event.max)
            if self.tty or value in (1, maximum) or value % 5 == 0:
                self.line(f"{title} {value}/{maximum} ({100 * value // maximum}%)")
        elif isinstance(event, ConnectionLost):
            self.line(f"connection lost ({event.reason}); reconnecting", final=True)
        elif isinstance(event, Reconnected):
            self.line("reconnected", final=True)
        elif isinstance(event, JobCancelled):
            self.finish()
            if event.error is None:
                self.console.info(f"cancelled job {event.prompt_id} on {event.instance}: {event.outcome}")
            else:
                self.console.info(
                    f"could not cancel job {event.prompt_id} on {event.instance}: {event.error}"
                )

    def finish(self) -> None:
        if self.open_line:
            print(file=self.console.err, flush=True)
            self.open_line = False


async def _render(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    try:
        values = parse_assignments(args.set)
    except RenderBadInput as exc:
        raise _cli_error(exc) from exc
    router, style = _router_for(args)
    request = RenderRequest(
        template=args.template,
        values=values,
        style=style,
        output_dir=Path(args.out).expanduser() if args.out else None,
        timeout=args.timeout,
        validate=not args.no_validate,
        upload_local_paths=True,  # `--set init_image=photo.png` uploads the local file
    )
    printer = _ProgressPrinter(console)
    try:
        outcome = await RenderService(router).render(request, on_event=printer)
    except RenderError as exc:
        raise _cli_error(exc) from exc
    finally:
        printer.finish()
        await router.close()
    return _render_report(outcome)


def _render_report(outcome: RenderOutcome) -> dict[str, Any]:
    timings = outcome.timings
    return {
        "ok": True,
        "template": outcome.template,
        "prompt_id": outcome.prompt_id,
        "instance": outcome.instance,
        "url": outcome.url,
        "values": {k: json_value(v) for k, v in outcome.values.items()},
        "timings": {
            "queued": round(timings.queued, 4),
            "running": round(timings.running, 4),
            "fetching": round(timings.fetching, 4),
            "total": round(timings.total, 4),
        },
        "files": [
            {
                "path": str(file.path),
                "node_id": file.node_id,
                "filename": file.filename,
                "subfolder": file.subfolder,
                "mime_type": file.mime_type,
                "bytes": file.size,
            }
            for file in outcome.files
        ],
        "cached_nodes": list(outcome.cached_nodes),
        "warnings": list(outcome.warnings),
    }


def _print_render(result: dict[str, Any], console: Console) -> None:
    for warning in result["warnings"]:
        console.info(f"warning: {warning}")
    if "seed" in result["values"]:
        console.info(f"seed {result['values']['seed']}")
    console.info(
        f"done in {result['timings']['total']:.2f} s on {result['instance']} ({result['prompt_id']})"
    )
    for file in result["files"]:
        print(file["path"], file=console.out)


# ---------------------------------------------------------------------------------------------
# luna templates …


def _templates_list(console: Console) -> dict[str, Any]:
    rows = []
    for name, path in list_templates().items():
        try:
            description = load_template(str(path)).description
        except (TemplateError, WorkflowFormatError) as exc:
            description = f"(unusable: {exc})"
        rows.append({"name": name, "path": str(path), "description": description})
    return {"ok": True, "templates": rows}


def _current_value(template: Template, name: str) -> Any:
    spec = template.injection_map.params[name]
    if spec.default is not None:
        return spec.default
    if spec.kind == "loras":
        return []
    for binding in spec.bindings:
        value = template.workflow.get(binding.node, {}).get("inputs", {}).get(binding.input)
        if value is not None:
            return value
    return None


def _templates_show(args: argparse.Namespace) -> dict[str, Any]:
    template = _load(args.template)
    params = []
    for name, spec in template.injection_map.params.items():
        where = [f"{describe_node(template.workflow, b.node)}.{b.input}" for b in spec.bindings]
        if spec.lora is not None:
            where = [type(spec.lora).__name__]
        params.append(
            {
                "name": name,
                "kind": spec.kind,
                "description": spec.description,
                "value": "random"
                if spec.randomize and spec.default is None
                else _current_value(template, name),
                "bound_to": where,
            }
        )
    return {
        "ok": True,
        "template": template.name,
        "description": template.description,
        "path": str(template.workflow_path),
        "map": str(template.map_path) if template.map_path else None,
        "detected": template.detected,
        "notes": list(template.notes),
        "params": params,
    }


def _print_show(result: dict[str, Any], console: Console) -> None:
    print(f"{result['template']}: {result['description']}", file=console.out)
    print(f"  workflow {result['path']}", file=console.out)
    print(f"  map      {result['map'] or '(detected)'}", file=console.out)
    for param in result["params"]:
        value = param["value"]
        shown = value if not isinstance(value, str) or len(value) < 40 else value[:37] + "..."
        print(
            f"  {param['name']:<16} {param['kind']:<7} {shown!r:<42} {param['description']}", file=console.out
        )
    for note in result["notes"]:
        print(f"  note: {note}", file=console.out)


async def _templates_detect(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    template, _, _ = await _template_for_inspection(args, console)
    detection = detect_map(template.workflow)
    return {
        "ok": True,
        "template": template.name,
        "toml": dump_map(detection.injection_map),
        "ambiguities": [
            {"param": a.param, "message": a.message, "candidates": list(a.candidates)}
            for a in detection.ambiguities
        ],
        "notes": list(detection.notes),
        "params": {
            name: {"kind": spec.kind, "bind": [[b.node, b.input] for b in spec.bindings]}
            for name, spec in detection.injection_map.params.items()
        },
    }


async def _instance_object_info(args: argparse.Namespace, console: Console) -> tuple[str, dict[str, Any]]:
    router, style = _router_for(args)
    async with router:
        name = await _pick(router, style, console)
        try:
            return name, await router.client(name).object_info()
        except ComfyError as exc:
            raise CliError(
                EXIT_UNAVAILABLE, f"cannot read /object_info of {name}: {exc}", kind="unavailable"
            ) from exc


async def _template_for_inspection(
    args: argparse.Namespace, console: Console
) -> tuple[Template, str | None, dict[str, Any] | None]:
    """The template (a UI-format file converted with the instance's nodes) and, when an
    instance is given, its name and object_info."""
    template = _load(args.template, allow_ui=bool(args.url or args.style))
    if not (args.url or args.style):
        return template, None, None
    name, info = await _instance_object_info(args, console)
    if template is None:
        template = _convert_ui(args.template, info, name, console)
    return template, name, info


async def _templates_validate(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    template, name, info = await _template_for_inspection(args, console)
    values = _parse_sets(template, args.set)
    injected = _inject(template, values)
    result: dict[str, Any] = {
        "ok": True,
        "template": template.name,
        "instance": None,
        "params": list(template.injection_map.params),
        "issues": [],
        "notes": list(template.notes) + list(injected.warnings),
    }
    if info is None:
        result["notes"].append(
            "checked the template and its map only; give --url or --style to "
            "validate against an instance's nodes and models"
        )
        return result
    report = validate_workflow(injected.workflow, info, template.injection_map)
    result.update(ok=report.ok, instance=name, issues=[i.as_dict() for i in report.issues])
    if not report.ok:
        raise CliError(
            EXIT_INVALID,
            f"template '{template.name}' is not valid on {name}",
            list(report.issues),
            kind="invalid",
        )
    return result


# ---------------------------------------------------------------------------------------------
# luna instances


def _gib(value: int) -> str:
    return f"{value / 2**30:.1f}"


async def _instances(args: argparse.Namespace) -> dict[str, Any]:
    config = _instances_config()
    settings = RouterSettings(timeouts=_timeouts(args), probe_timeout=args.connect_timeout + 1.0)
    async with StyleRouter(config, settings=settings) as router:
        snapshot = await router.check_now()
    return {
        "ok": True,
        "default_style": config.default_style,
        "instances": [_instance_report(instance) for instance in snapshot.instances],
    }


def _print_instances(result: dict[str, Any], console: Console) -> None:
    for report in result["instances"]:
        styles = ",".join(report["styles"]) or "-"
        if report["healthy"]:
            vram = (
                "; ".join(
                    f"{d['name'] or d['type']}: {_gib(d['vram_free'])}/{_gib(d['vram_total'])} GiB free"
                    for d in report["devices"]
                )
                or "no devices"
            )
            state = (
                f"ok  queue {report['queue_remaining']}  {vram}  ComfyUI {report['comfyui_version'] or '?'}"
            )
        else:
            state = f"DOWN  {report['error']}"
        print(f"{report['name']:<24} {report['url']:<28} [{styles}]  {state}", file=console.out)


# ---------------------------------------------------------------------------------------------
# entry point


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="luna",
        description="Luna Narrates Operator: render ComfyUI workflow templates and watch instances.",
        epilog="Exit codes: 0 ok, 1 render failed, 2 bad input, 3 invalid for the instance, 4 unreachable.",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="log what the ComfyUI layer does (health checks, reconnects) on stderr",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def target_options(p: argparse.ArgumentParser) -> None:
        where = p.add_mutually_exclusive_group()
        where.add_argument("--url", help="ComfyUI base URL, e.g. http://127.0.0.1:8188")
        where.add_argument("--style", help="route by style to a configured instance (instances.toml)")
        p.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="NAME=VALUE",
            help="set a template parameter (repeatable), e.g. --set seed=42 --set "
            "loras=a.safetensors:0.8,b.safetensors",
        )
        p.add_argument("--connect-timeout", type=float, default=5.0, help="seconds to reach an instance (5)")
        p.add_argument("--json", action="store_true", help="print one JSON result on stdout")

    render = sub.add_parser("render", help="render a template (file path or name) on ComfyUI")
    render.add_argument(
        "template", help="template name (see 'luna templates list') or path to an API-format JSON"
    )
    target_options(render)
    render.add_argument("--out", help="directory for the images (default: <user data>/renders)")
    render.add_argument("--timeout", type=float, default=None, help="give up after this many seconds")
    render.add_argument("--no-validate", action="store_true", help="skip the check against /object_info")
    render.add_argument("--quiet", action="store_true", help="no progress on stderr")

    templates = sub.add_parser("templates", help="list, show, detect, validate or convert templates")
    tsub = templates.add_subparsers(dest="templates_command", metavar="ACTION", required=True)
    tlist = tsub.add_parser("list", help="templates by name (user templates first)")
    tlist.add_argument("--json", action="store_true")
    show = tsub.add_parser("show", help="a template's parameters (for --set), kinds and current values")
    show.add_argument("template")
    show.add_argument("--json", action="store_true")
    detect = tsub.add_parser("detect", help="print the injection map proposed for a workflow (TOML)")
    detect.add_argument("template")
    detect_where = detect.add_mutually_exclusive_group()
    detect_where.add_argument("--url", help="instance whose node definitions convert a UI-format workflow")
    detect_where.add_argument("--style", help="as --url, the instance routed for this style")
    detect.add_argument("--connect-timeout", type=float, default=5.0)
    detect.add_argument("--json", action="store_true")
    convert = tsub.add_parser(
        "convert", help="convert a UI-format workflow to the API format (JSON on stdout)"
    )
    convert.add_argument("template")
    convert_where = convert.add_mutually_exclusive_group(required=True)
    convert_where.add_argument("--url", help="instance whose /object_info defines the nodes")
    convert_where.add_argument("--style", help="as --url, the instance routed for this style")
    convert.add_argument("--connect-timeout", type=float, default=5.0)
    validate = tsub.add_parser(
        "validate", help="check a template (with --url/--style: against that instance)"
    )
    validate.add_argument("template")
    target_options(validate)

    instances = sub.add_parser("instances", help="health, queue and VRAM of every configured instance")
    instances.add_argument("--json", action="store_true")
    instances.add_argument("--connect-timeout", type=float, default=3.0)
    add_gui_command(sub)

    from app.narrates.cli import add_parser as add_story_parser  # luna story lives with its engine

    add_story_parser(sub)
    return parser


def add_gui_command(sub: Any) -> None:
    """``luna gui`` (also what plain ``luna`` runs): the operator window."""
    gui = sub.add_parser("gui", help="open the operator window (the default without a command)")
    gui.add_argument(
        "--self-test",
        action="store_true",
        help="build the window offscreen, start the daemon, check every panel once, exit 0 or name the failure",
    )
    gui.add_argument("--self-test-timeout", type=float, default=120.0, metavar="SECONDS")
    gui.add_argument(
        "--no-daemon", action="store_true", help="do not start (or attach to) the daemon at start"
    )


async def _dispatch(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    if args.command == "render":
        return await _render(args, console)
    if args.command == "instances":
        return await _instances(args)
    if args.templates_command == "list":
        return _templates_list(console)
    if args.templates_command == "show":
        return _templates_show(args)
    if args.templates_command == "detect":
        return await _templates_detect(args, console)
    if args.templates_command == "convert":
        template, _, _ = await _template_for_inspection(args, console)
        return {"ok": True, "workflow": template.workflow}
    return await _templates_validate(args, console)


def _print_result(args: argparse.Namespace, result: dict[str, Any], console: Console) -> None:
    if args.command == "render":
        _print_render(result, console)
    elif args.command == "instances":
        _print_instances(result, console)
    elif args.templates_command == "list":
        for row in result["templates"]:
            print(f"{row['name']:<28} {row['description']}", file=console.out)
    elif args.templates_command == "show":
        _print_show(result, console)
    elif args.templates_command == "convert":
        print(json.dumps(result["workflow"], indent=2), file=console.out)
    elif args.templates_command == "detect":
        header = [f"# Injection map proposed by `luna templates detect` for {result['template']}."]
        header += [f"# AMBIGUOUS {a['param']}: {a['message']}" for a in result["ambiguities"]]
        header += [f"# note: {n}" for n in result["notes"]]
        print("\n".join(header) + "\n\n" + result["toml"], file=console.out, end="")
    else:
        for note in result["notes"]:
            console.info(f"note: {note}")
        for issue in result["issues"]:
            console.info(
                f"warning: {ValidationIssue(**{**issue, 'params': tuple(issue['params'])}).describe()}"
            )
        where = f" on {result['instance']}" if result["instance"] else ""
        print(
            f"{result['template']}: valid{where} (parameters: {', '.join(result['params'])})",
            file=console.out,
        )


def _report_error(error: CliError, console: Console) -> None:
    if console.json:
        body: dict[str, Any] = {
            "ok": False,
            "error": {
                "kind": error.kind,
                "message": error.message,
                "exit_code": error.code,
                "issues": [i.as_dict() for i in error.issues],
            },
        }
        if error.prompt_id:
            body["prompt_id"] = error.prompt_id
        print(json.dumps(body, indent=2), file=console.out)
    text = f"luna: error: {error.message}"
    if error.issues:
        text += "\n" + _issue_lines(error.issues)
    print(text, file=console.err, flush=True)


@contextlib.contextmanager
def _library_logging(err: TextIO, *, verbose: bool):
    """Route the ComfyUI layer's logs to ``err`` for one command.

    Without ``--verbose`` only errors show: the CLI already reports unhealthy instances and
    failures itself, so the router's warnings would say everything twice.
    """
    handler = logging.StreamHandler(err)
    handler.setFormatter(logging.Formatter("luna: %(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("app")
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO if verbose else logging.ERROR)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)


def main(
    argv: Sequence[str] | None = None, *, stdout: TextIO | None = None, stderr: TextIO | None = None
) -> int:
    """Run the CLI; returns the exit code (see the module docstring)."""
    out, err = stdout or sys.stdout, stderr or sys.stderr
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in (None, "gui"):
        try:
            from app.gui.app import run_gui  # Qt is imported only for the window
        except ImportError as exc:
            print(f"luna: the operator window needs PySide6, qasync and pyqtgraph ({exc})", file=err)
            return EXIT_USAGE
        return run_gui(args, stdout=out, stderr=err)
    if args.command == "story":
        from app.narrates.cli import run as run_story

        with _library_logging(err, verbose=args.verbose):
            return run_story(args, stdout=out, stderr=err)
    console = Console(out, err, json=getattr(args, "json", False), quiet=getattr(args, "quiet", False))
    try:
        with _library_logging(err, verbose=args.verbose):
            result = asyncio.run(_dispatch(args, console))
    except KeyboardInterrupt:
        print("luna: cancelled", file=err, flush=True)
        return EXIT_CANCELLED
    except CliError as exc:
        _report_error(exc, console)
        return exc.code
    except ComfyUnavailable as exc:
        _report_error(CliError(EXIT_UNAVAILABLE, str(exc), kind="unavailable"), console)
        return EXIT_UNAVAILABLE
    except NoInstanceAvailable as exc:
        _report_error(CliError(EXIT_UNAVAILABLE, str(exc), kind="unavailable"), console)
        return EXIT_UNAVAILABLE
    except ComfyError as exc:
        _report_error(CliError(EXIT_FAILED, str(exc), kind=type(exc).__name__), console)
        return EXIT_FAILED
    if console.json:
        print(json.dumps(result, indent=2), file=out)
    else:
        _print_result(args, result, console)
    return EXIT_OK
