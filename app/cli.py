"""The ``luna`` command line: render templates on ComfyUI, inspect templates and instances.

Subcommands (``luna --help`` for the details)::

    luna render TEMPLATE [--url URL | --style STYLE] [--set name=value ...] [--out DIR] [--json]
    luna templates list | show TEMPLATE | detect TEMPLATE | validate TEMPLATE [--url URL | --style STYLE] [--set ...]
    luna templates convert UI_WORKFLOW (--url URL | --style STYLE)
    luna instances [--json]

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
The template is injected, image parameters naming local files are uploaded, and the prompt is
validated against the chosen instance's ``/object_info`` before it is submitted. A UI-format
file (plain "Save") is converted with that instance's node definitions
(:mod:`app.comfy.ui_convert`) and sent with the original as ``extra_pnginfo.workflow``.

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
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from app.comfy.client import ComfyClient, ComfyTimeouts
from app.comfy.detect import detect_map
from app.comfy.errors import (
    ComfyError,
    ComfyUnavailable,
    ExecutionFailed,
    JobFailed,
    NoInstanceAvailable,
    PromptRejected,
)
from app.comfy.events import ConnectionLost, ExecutionCached, ExecutionStart, JobQueued, Progress, Reconnected
from app.comfy.graph import UiFormatWorkflowError, WorkflowFormatError, describe_node
from app.comfy.inject import InjectedWorkflow, InjectionError, LoraSpec, inject, parse_value
from app.comfy.instances import InstanceConfig, InstanceConfigError, InstancesConfig, load_instances
from app.comfy.rejections import explain_reasons, explain_rejection
from app.comfy.results import JobResult
from app.comfy.router import InstanceSnapshot, RouterSettings, StyleRouter
from app.comfy.templates import (
    Template,
    TemplateError,
    dump_map,
    find_template,
    list_templates,
    load_template,
    read_json,
    read_map,
    template_from_workflow,
)
from app.comfy.ui_convert import convert_ui_workflow
from app.comfy.validate import ValidationIssue, validate_workflow
from app.paths import user_dirs

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INVALID = 3
EXIT_UNAVAILABLE = 4
URL_STYLE = "url"  # the one style of the ad-hoc instance made from --url
EXIT_CANCELLED = 130  # Ctrl-C, as shells report SIGINT
CANCEL_TIMEOUT = 5.0


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
    path = find_template(ref)
    data = read_json(path)
    try:
        conversion = convert_ui_workflow(data, object_info)
        injection_map, map_file = read_map(path)
        template = template_from_workflow(
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
        raise CliError(EXIT_USAGE, str(exc), kind="template") from exc
    for note in template.notes:
        console.info(f"note: {note}")
    return template


def _parse_sets(template: Template, assignments: Sequence[str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    params = template.injection_map.params
    for assignment in assignments:
        name, sep, text = assignment.partition("=")
        name = name.strip()
        if not sep or not name:
            raise CliError(EXIT_USAGE, f"--set expects name=value, got {assignment!r}", kind="usage")
        if name not in params:
            raise CliError(
                EXIT_USAGE,
                f"template '{template.name}' has no parameter '{name}' "
                f"(it has: {', '.join(params) or 'none'})",
                kind="parameter",
            )
        try:
            values[name] = parse_value(params[name], text)
        except InjectionError as exc:
            raise CliError(EXIT_USAGE, str(exc), kind="parameter") from exc
    return values


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


def _router_for(args: argparse.Namespace, timeouts: ComfyTimeouts) -> tuple[StyleRouter, str | None]:
    """A router over ``--url`` alone, or over the configured instances; and the style to use."""
    if getattr(args, "url", None):
        try:
            instance = InstanceConfig(args.url, args.url, styles=(URL_STYLE,))
        except InstanceConfigError as exc:
            raise CliError(EXIT_USAGE, str(exc), kind="usage") from exc
        config, style = InstancesConfig((instance,), default_style=URL_STYLE), URL_STYLE
    else:
        config, style = _instances_config(), getattr(args, "style", None)
    settings = RouterSettings(
        timeouts=timeouts, probe_timeout=timeouts.connect + 1.0, no_instance_timeout=timeouts.connect
    )
    return StyleRouter(config, settings=settings), style


async def _pick(router: StyleRouter, style: str | None, console: Console) -> str:
    """Probe now and return the name of the instance a job of ``style`` goes to."""
    resolved = router.config.resolve_style(style)
    if style and style != resolved:
        console.info(f"no instance serves style '{style}'; using '{resolved}'")
    snapshot = await router.check_now()
    member = router.pick(resolved)
    if member is None:
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
    return member.config.name


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


def _json_value(value: Any) -> Any:
    if isinstance(value, LoraSpec):
        return {"name": value.name, "strength_model": value.strength_model, "strength_clip": value.clip}
    if isinstance(value, list):
        return [_json_value(v) for v in value]
    return value


# ---------------------------------------------------------------------------------------------
# luna render


class _ProgressPrinter:
    """Prints a job's progress to stderr: a rewritten line on a terminal, sparse lines otherwise."""

    def __init__(self, console: Console, workflow: dict):
        self.console = console
        self.workflow = workflow
        self.tty = console.err.isatty()
        self.last = ""
        self.prompt_id: str | None = None
        self.instance: str | None = None
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

    def __call__(self, event: Any) -> None:
        if isinstance(event, JobQueued):
            self.prompt_id, self.instance = event.prompt_id, event.instance
            self.line(f"queued on {event.instance} as {event.prompt_id}", final=True)
        elif isinstance(event, ExecutionStart):
            self.line("running", final=True)
        elif isinstance(event, ExecutionCached) and event.nodes:
            self.line(f"{len(event.nodes)} node(s) cached", final=True)
        elif isinstance(event, Progress) and event.max:
            title = describe_node(self.workflow, event.node) if event.node in self.workflow else "progress"
            value, maximum = int(event.value), int(event.max)
            if self.tty or value in (1, maximum) or value % 5 == 0:
                self.line(f"{title} {value}/{maximum} ({100 * value // maximum}%)")
        elif isinstance(event, ConnectionLost):
            self.line(f"connection lost ({event.reason}); reconnecting", final=True)
        elif isinstance(event, Reconnected):
            self.line("reconnected", final=True)

    def finish(self) -> None:
        if self.open_line:
            print(file=self.console.err, flush=True)
            self.open_line = False


def _write_files(result: JobResult, out_dir: Path) -> list[dict[str, Any]]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for file in result.files:
        name = Path(file.filename).name or f"{result.prompt_id}.bin"
        target = out_dir / name
        counter = 1
        while target.exists():
            target = out_dir / f"{Path(name).stem}-{counter}{Path(name).suffix}"
            counter += 1
        target.write_bytes(file.data)
        written.append(
            {
                "path": str(target),
                "node_id": file.node_id,
                "filename": file.filename,
                "subfolder": file.ref.subfolder,
                "mime_type": file.mime_type,
                "bytes": len(file.data),
            }
        )
    return written


async def _upload_local_images(
    client: ComfyClient, template: Template, values: dict[str, Any], console: Console
) -> None:
    """``image`` parameters naming a local file are uploaded; the server's name replaces them."""
    for name, spec in template.injection_map.params.items():
        value = values.get(name)
        if spec.kind != "image" or not isinstance(value, str):
            continue
        path = Path(value).expanduser()
        if path.is_file():
            uploaded = await client.upload_image(path.read_bytes(), path.name)
            values[name] = uploaded.reference
            console.info(f"uploaded {path} as {uploaded.reference}")


async def _cancel_on_server(client: ComfyClient, prompt_id: str, console: Console) -> None:
    """Dequeue or interrupt the job; bounded, and shielded from the cancellation in progress."""
    try:
        outcome = await asyncio.shield(asyncio.wait_for(client.cancel(prompt_id), CANCEL_TIMEOUT))
        console.info(f"cancelled job {prompt_id} on {client.name}: {outcome}")
    except (ComfyError, TimeoutError, asyncio.CancelledError) as exc:
        console.info(f"could not cancel job {prompt_id} on {client.name}: {exc or type(exc).__name__}")


async def _render(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    template = _load(args.template, allow_ui=True)
    if template is not None:
        for note in template.notes:
            console.info(f"note: {note}")
        values = _parse_sets(template, args.set)
    router, style = _router_for(args, _timeouts(args))
    async with router:
        name = await _pick(router, style, console)
        client = router.client(name)
        if template is None:
            template = _convert_ui(args.template, await client.object_info(), name, console)
            values = _parse_sets(template, args.set)
        await _upload_local_images(client, template, values, console)
        injected = _inject(template, values)
        warnings = list(injected.warnings)
        if not args.no_validate:
            report = validate_workflow(injected.workflow, await client.object_info(), template.injection_map)
            if report.errors:
                raise CliError(
                    EXIT_INVALID,
                    f"template '{template.name}' is not valid on {name}",
                    list(report.issues),
                    kind="invalid",
                )
            warnings += [issue.describe() for issue in report.warnings]
        printer = _ProgressPrinter(console, injected.workflow)
        try:
            # Our own prompt id: known before the POST returns, so Ctrl-C can always cancel it.
            printer.prompt_id = str(uuid.uuid4())
            result = await router.run(
                injected.workflow,
                style=style,
                timeout=args.timeout,
                on_event=printer,
                ui_workflow=template.ui_workflow,
                prompt_id=printer.prompt_id,
            )
        except PromptRejected as exc:
            raise CliError(
                EXIT_INVALID,
                f"{exc.instance or name} rejected the prompt ({exc.error_type})",
                explain_rejection(exc, injected.workflow, template.injection_map),
                kind="rejected",
            ) from exc
        except ExecutionFailed as exc:
            where = (
                describe_node(injected.workflow, exc.node_id)
                if exc.node_id in injected.workflow
                else (f"{exc.node_type or 'node'} #{exc.node_id}")
            )
            params = template.injection_map.params_at(exc.node_id) if exc.node_id else []
            raise CliError(
                EXIT_FAILED,
                f"{where} failed on {exc.instance or name}: {exc.exception_type}: "
                f"{exc.exception_message.strip()}"
                + (f" [parameters bound there: {', '.join(params)}]" if params else ""),
                kind="execution_error",
                prompt_id=exc.prompt_id,
            ) from exc
        except JobFailed as exc:
            raise CliError(EXIT_FAILED, str(exc), kind=type(exc).__name__, prompt_id=exc.prompt_id) from exc
        except asyncio.CancelledError:
            # Ctrl-C: do not leave the job running on the server for nobody.
            if printer.prompt_id is not None:
                await _cancel_on_server(router.client(printer.instance or name), printer.prompt_id, console)
            raise
        finally:
            printer.finish()
        instance = router.client(result.instance).instance
    # A 200 with node_errors: some outputs were dropped. Say which, by title and parameter.
    warnings += [
        i.describe()
        for i in explain_reasons(
            result.warnings, injected.workflow, template.injection_map, severity="warning"
        )
    ]
    out_dir = Path(args.out).expanduser() if args.out else user_dirs().data / "renders"
    files = _write_files(result, out_dir)
    timings = result.timings
    return {
        "ok": True,
        "template": template.name,
        "prompt_id": result.prompt_id,
        "instance": result.instance,
        "url": instance.base_url,
        "values": {k: _json_value(v) for k, v in injected.values.items()},
        "timings": {
            "queued": round(timings.queued, 4),
            "running": round(timings.running, 4),
            "fetching": round(timings.fetching, 4),
            "total": round(timings.total, 4),
        },
        "files": files,
        "cached_nodes": list(result.cached_nodes),
        "warnings": warnings,
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
    router, style = _router_for(args, _timeouts(args))
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

    from app.narrates.cli import add_parser as add_story_parser  # luna story lives with its engine

    add_story_parser(sub)
    return parser


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
    if args.command is None:
        parser.print_help(out)
        return EXIT_OK
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
