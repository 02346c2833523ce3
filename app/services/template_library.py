"""The operator's template library: list, open, duplicate, import, rename, delete and save.

Owns where templates live and how they are written. User templates are ``NAME.json`` +
``NAME.luna.toml`` in :func:`app.comfy.templates.user_workflows_dir` (they hide a shipped
template of the same name, as :func:`app.comfy.templates.list_templates` does); shipped ones
(``workflows/``) are read-only — :meth:`TemplateLibrary.duplicate` makes a user copy to edit.

Nothing here can leave a template half-written: every file is written to a temporary file in
the same folder, flushed to disk and moved over the old one (:func:`atomic_write_text`), and a
map is only written after it parsed back to the same map. A map with problems is never written
as the template's map: :meth:`TemplateLibrary.save` keeps it as a *draft*
(``drafts/NAME.json`` beside the templates, outside the name lookup) with its problems listed,
and the template keeps working with its last good map until the draft is fixed and saved.

Imports take pasted text, a file or parsed JSON in the API or the UI format; the UI format is
converted with the ``/object_info`` of an instance the caller chose (:mod:`app.comfy.ui_convert`).
Pure Python, blocking file I/O on small files; called from the GUI loop by its adapter.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.comfy.filenames import is_safe_filename
from app.comfy.graph import WorkflowFormatError, ensure_api_format, looks_like_ui_format
from app.comfy.templates import (
    Binding,
    LoraChainTarget,
    LoraStackerTarget,
    TemplateError,
    dump_map,
    load_template,
    map_path_for,
    parse_map,
    read_json,
    template_from_workflow,
    user_workflows_dir,
)
from app.comfy.ui_convert import convert_ui_workflow
from app.paths import workflows_dir
from app.services.template_editing import DocumentError, MapProblem, ParamRow, TemplateDocument

DRAFT_FORMAT = "luna-template-draft/1"


class LibraryError(Exception):
    """A library operation failed; the message says what to do. Nothing was changed."""


class ReadOnlyTemplate(LibraryError):
    """A shipped template cannot be changed; duplicate it to edit."""


class TemplateExists(LibraryError):
    """A user template of that name exists already."""


class NeedsObjectInfo(LibraryError):
    """A UI-format workflow needs an instance's node definitions to be converted."""


@dataclass(frozen=True)
class TemplateEntry:
    """One template in the list: where it is, whether it may be edited, what it has."""

    name: str
    path: Path
    origin: str  # "user" | "shipped"
    description: str = ""
    has_map: bool = False
    has_draft: bool = False
    overrides_shipped: bool = False
    error: str = ""  # the template cannot be loaded (shown, never hidden)

    @property
    def read_only(self) -> bool:
        return self.origin == "shipped"


@dataclass(frozen=True)
class SaveResult:
    """What :meth:`TemplateLibrary.save` did: saved the map, or kept a draft (with why)."""

    name: str
    draft: bool
    problems: tuple[MapProblem, ...] = ()
    path: Path | None = None


def atomic_write_text(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` all at once: temp file in the same folder, fsync, rename.

    On any failure the old file is untouched and the temporary file is removed.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _check_name(name: str) -> str:
    name = name.strip()
    if not name or name.startswith(".") or name.endswith(".luna") or not is_safe_filename(f"{name}.json"):
        raise LibraryError(
            f"'{name}' cannot be a template name: use letters, digits, '-' and '_' "
            "(no path separators, no Windows device names)"
        )
    return name


class TemplateLibrary:
    """User and shipped templates (see module docstring); directories injected for tests."""

    def __init__(self, user_dir: Path | None = None, shipped_dir: Path | None = None) -> None:
        self.user_dir = user_dir or user_workflows_dir()
        self.shipped_dir = shipped_dir or workflows_dir()

    @property
    def drafts_dir(self) -> Path:
        return self.user_dir / "drafts"

    def _draft_path(self, name: str) -> Path:
        return self.drafts_dir / f"{name}.json"

    def _user_path(self, name: str) -> Path:
        return self.user_dir / f"{name}.json"

    # --- listing and opening -----------------------------------------------------------------

    def entries(self) -> list[TemplateEntry]:
        """Every template, user ones first where they hide a shipped one; sorted by name."""
        shipped = (
            {p.stem: p for p in sorted(self.shipped_dir.glob("*.json"))} if self.shipped_dir.is_dir() else {}
        )
        user = {p.stem: p for p in sorted(self.user_dir.glob("*.json"))} if self.user_dir.is_dir() else {}
        entries = []
        for name in sorted(set(shipped) | set(user)):
            origin, path = ("user", user[name]) if name in user else ("shipped", shipped[name])
            description, error = "", ""
            try:
                description = load_template(path).description
            except WorkflowFormatError as exc:
                if looks_like_ui_format(read_json(path)):
                    description = "UI-format workflow (converted when an instance is chosen)"
                else:
                    error = str(exc)
            except TemplateError as exc:
                error = str(exc)
            entries.append(
                TemplateEntry(
                    name=name,
                    path=path,
                    origin=origin,
                    description="" if description == "detected" else description,
                    has_map=map_path_for(path).is_file(),
                    has_draft=origin == "user" and self._draft_path(name).is_file(),
                    overrides_shipped=origin == "user" and name in shipped,
                    error=error,
                )
            )
        return entries

    def entry(self, name: str) -> TemplateEntry:
        for entry in self.entries():
            if entry.name == name:
                return entry
        raise LibraryError(f"no template named '{name}'")

    def open(
        self, name: str, *, object_info: Mapping[str, Any] | None = None, draft: bool = True
    ) -> TemplateDocument:
        """The template as an editable document; its draft instead when it has one (``draft``).

        A UI-format file needs ``object_info`` (:class:`NeedsObjectInfo` otherwise).
        """
        entry = self.entry(name)
        if draft and entry.has_draft:
            return self._open_draft(entry)
        try:
            data = read_json(entry.path)
            if looks_like_ui_format(data):
                if object_info is None:
                    raise NeedsObjectInfo(
                        f"'{name}' is a UI-format workflow: choose an instance to convert it with its node definitions"
                    )
                template = self._converted(name, data, object_info, entry.path)
            else:
                template = load_template(entry.path)
        except (TemplateError, WorkflowFormatError) as exc:
            raise LibraryError(str(exc)) from exc
        return TemplateDocument.from_template(template, origin=entry.origin)

    @staticmethod
    def _converted(name: str, data: Any, object_info: Mapping[str, Any], path: Path | None = None):
        conversion = convert_ui_workflow(data, object_info)
        return template_from_workflow(
            name,
            conversion.workflow,
            source=str(path or name),
            ui_workflow=dict(data),
            notes=("converted from the UI format with the chosen instance's node definitions",)
            + conversion.notes,
        )

    # --- changing the library ----------------------------------------------------------------

    def _writable(self, name: str) -> TemplateEntry:
        entry = self.entry(name)
        if entry.read_only:
            raise ReadOnlyTemplate(f"'{name}' is a shipped template and read-only: duplicate it to edit")
        return entry

    def _free(self, name: str) -> None:
        if self._user_path(name).exists():
            raise TemplateExists(f"a template named '{name}' exists already: choose another name")

    def suggest_name(self, base: str) -> str:
        """``base-copy``, ``base-copy-2``… : the first name no user template has."""
        candidate, number = f"{base}-copy", 1
        while self._user_path(candidate).exists():
            number += 1
            candidate = f"{base}-copy-{number}"
        return candidate

    def duplicate(self, name: str, new_name: str) -> TemplateEntry:
        """Copy a template (shipped or user) to a new user template, map included."""
        source = self.entry(name)
        new_name = _check_name(new_name)
        self._free(new_name)
        atomic_write_text(self._user_path(new_name), source.path.read_text(encoding="utf-8"))
        source_map = map_path_for(source.path)
        if source_map.is_file():
            atomic_write_text(map_path_for(self._user_path(new_name)), source_map.read_text(encoding="utf-8"))
        return self.entry(new_name)

    def import_text(
        self, name: str, text: str, *, object_info: Mapping[str, Any] | None = None
    ) -> TemplateDocument:
        """Import pasted JSON (API or UI format) as a new user template; see :meth:`import_data`."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise LibraryError(f"the pasted text is not JSON ({exc}); paste the whole workflow file") from exc
        return self.import_data(name, data, object_info=object_info)

    def import_file(
        self, path: Path, name: str | None = None, *, object_info: Mapping[str, Any] | None = None
    ) -> TemplateDocument:
        try:
            data = read_json(path)
        except TemplateError as exc:
            raise LibraryError(str(exc)) from exc
        stem = path.stem.removesuffix("_api").removesuffix(".api")
        return self.import_data(name or stem, data, object_info=object_info)

    def import_data(
        self, name: str, data: Any, *, object_info: Mapping[str, Any] | None = None
    ) -> TemplateDocument:
        """Write the workflow (converted to the API format) as ``NAME.json``; the returned
        document carries the detected map, unsaved, for the operator to check and save."""
        name = _check_name(name)
        self._free(name)
        try:
            if looks_like_ui_format(data):
                if object_info is None:
                    raise NeedsObjectInfo(
                        "this is a UI-format workflow (what ComfyUI's plain Save writes): choose an "
                        "instance so it can be converted with that instance's node definitions"
                    )
                template = self._converted(name, data, object_info)
            else:
                template = template_from_workflow(name, ensure_api_format(data, "the imported workflow"))
        except (TemplateError, WorkflowFormatError) as exc:
            raise LibraryError(str(exc)) from exc
        atomic_write_text(
            self._user_path(name), json.dumps(template.workflow, indent=2, ensure_ascii=False) + "\n"
        )
        document = TemplateDocument.from_template(template, origin="user")
        document.dirty = True  # the detected map is a proposal until saved
        return document

    def rename(self, name: str, new_name: str) -> TemplateEntry:
        self._writable(name)
        new_name = _check_name(new_name)
        if new_name == name:
            return self.entry(name)
        self._free(new_name)
        moves = [(self._user_path(name), self._user_path(new_name))]
        moves.append((map_path_for(self._user_path(name)), map_path_for(self._user_path(new_name))))
        moves.append((self._draft_path(name), self._draft_path(new_name)))
        for old, new in moves:
            if old.exists():
                os.replace(old, new)
        return self.entry(new_name)

    def delete(self, name: str) -> None:
        self._writable(name)
        for path in (self._user_path(name), map_path_for(self._user_path(name)), self._draft_path(name)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    # --- saving ------------------------------------------------------------------------------

    def save(self, document: TemplateDocument) -> SaveResult:
        """Save the map (and the workflow, when edited), or a draft when the map has problems.

        Never writes a map that does not parse back to itself; a shipped template raises
        :class:`ReadOnlyTemplate`.
        """
        self._writable(document.name)
        problems = tuple(document.problems())
        if problems:
            path = self.save_draft(document, problems)
            return SaveResult(document.name, True, problems, path)
        try:
            injection_map = document.injection_map()
        except DocumentError as exc:  # problems() said none; keep the work anyway
            path = self.save_draft(document, (MapProblem("", str(exc)),))
            return SaveResult(document.name, True, (MapProblem("", str(exc)),), path)
        map_text = f"# Injection map for {document.name}.json (format: workflows/README.md).\n" + dump_map(
            injection_map
        )
        if parse_map(tomllib.loads(map_text), "the map being saved") != injection_map:
            raise LibraryError("the map did not read back as written; nothing was saved (please report this)")
        workflow_path = self._user_path(document.name)
        if document.workflow_dirty or not workflow_path.exists():
            atomic_write_text(
                workflow_path, json.dumps(document.workflow, indent=2, ensure_ascii=False) + "\n"
            )
        atomic_write_text(map_path_for(workflow_path), map_text)
        with contextlib.suppress(FileNotFoundError):
            self._draft_path(document.name).unlink()
        document.dirty = document.workflow_dirty = document.from_draft = False
        return SaveResult(document.name, False, (), map_path_for(workflow_path))

    def save_draft(self, document: TemplateDocument, problems: tuple[MapProblem, ...] | None = None) -> Path:
        """Keep the document as a draft (the template's own files are left as they are)."""
        self._writable(document.name)
        problems = tuple(document.problems()) if problems is None else problems
        body = {
            "format": DRAFT_FORMAT,
            "name": document.name,
            "saved_at": time.time(),
            "description": document.description,
            "workflow": document.workflow,
            "params": [_row_to_dict(row) for row in document.rows],
            "problems": [{"param": p.param, "message": p.message} for p in problems],
        }
        path = self._draft_path(document.name)
        atomic_write_text(path, json.dumps(body, indent=2, ensure_ascii=False) + "\n")
        document.from_draft = True
        document.dirty = False
        return path

    def discard_draft(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._draft_path(name).unlink()

    def draft_problems(self, name: str) -> list[MapProblem]:
        body = self._read_draft(name)
        return [MapProblem(p.get("param", ""), p.get("message", "")) for p in body.get("problems", [])]

    def _read_draft(self, name: str) -> dict:
        path = self._draft_path(name)
        try:
            body = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise LibraryError(
                f"the draft {path} cannot be read ({exc}); discard it to open the template"
            ) from exc
        if not isinstance(body, dict) or body.get("format") != DRAFT_FORMAT:
            raise LibraryError(f"{path} is not a Luna template draft; discard it to open the template")
        return body

    def _open_draft(self, entry: TemplateEntry) -> TemplateDocument:
        body = self._read_draft(entry.name)
        try:
            workflow = ensure_api_format(body.get("workflow"), f"draft of {entry.name}")
            rows = [_row_from_dict(raw) for raw in body.get("params", [])]
        except (WorkflowFormatError, KeyError, TypeError, ValueError) as exc:
            raise LibraryError(
                f"the draft of '{entry.name}' is damaged ({exc}); discard it to open the template"
            ) from exc
        document = TemplateDocument(
            entry.name,
            workflow,
            rows,
            origin=entry.origin,
            description=str(body.get("description", "")),
            notes=(
                f"opened from the draft saved {time.strftime('%Y-%m-%d %H:%M', time.localtime(body.get('saved_at', 0)))}",
            ),
            from_draft=True,
        )
        saved = read_json(entry.path)
        document.workflow_dirty = saved != workflow
        return document


def _row_to_dict(row: ParamRow) -> dict[str, Any]:
    lora: dict[str, Any] | None = None
    if isinstance(row.lora, LoraChainTarget):
        lora = {
            "chain": list(row.lora.nodes),
            "model_source": row.lora.model_source,
            "clip_source": row.lora.clip_source,
        }
    elif isinstance(row.lora, LoraStackerTarget):
        lora = {"stacker": vars(row.lora)}
    return {
        "name": row.name,
        "kind": row.kind,
        "bind": [{"node": b.node, "input": b.input} for b in row.bindings],
        "default": row.default,
        "description": row.description,
        "randomize": row.randomize,
        "min": row.minimum,
        "max": row.maximum,
        "lora": lora,
    }


def _row_from_dict(raw: Mapping[str, Any]) -> ParamRow:
    lora_raw = raw.get("lora")
    lora: LoraChainTarget | LoraStackerTarget | None = None
    if isinstance(lora_raw, Mapping) and "stacker" in lora_raw:
        lora = LoraStackerTarget(**lora_raw["stacker"])
    elif isinstance(lora_raw, Mapping):
        model, clip = lora_raw.get("model_source"), lora_raw.get("clip_source")
        lora = LoraChainTarget(
            nodes=tuple(str(n) for n in lora_raw.get("chain", [])),
            model_source=(str(model[0]), int(model[1])) if model else None,
            clip_source=(str(clip[0]), int(clip[1])) if clip else None,
        )
    row = ParamRow(
        name=str(raw["name"]),
        kind=str(raw["kind"]),
        bindings=tuple(Binding(str(b["node"]), str(b["input"])) for b in raw.get("bind", [])),
        default=str(raw.get("default", "")),
        description=str(raw.get("description", "")),
        randomize=bool(raw.get("randomize", False)),
        minimum=raw.get("min"),
        maximum=raw.get("max"),
        lora=lora,
    )
    return row
