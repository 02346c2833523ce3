"""The template being edited: its workflow, one row per parameter, and what is wrong with them.

Owns the editor's document model (:class:`TemplateDocument`): the API workflow (node values
editable), one :class:`ParamRow` per logical parameter — the standard ones (positive, negative,
seed, width, height, steps, cfg, sampler, scheduler, denoise, checkpoint, loras, init_image)
always listed, mapped or not, plus the template's own and the operator's custom ones — with the
detection's ambiguities on the rows they concern, the map's problems per row
(:meth:`TemplateDocument.problems`), the conversion back to an
:class:`~app.comfy.templates.InjectionMap`, and the mapping of a validation report
(:mod:`app.comfy.validate`) onto parameter and node rows (:func:`locate_issues`).

The widgets show these rows; the rules (what a valid binding is, how a default is read) live
here, so the editor, tests and any later tool share them. Pure Python; any thread, one owner.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from app.comfy.detect import LORA_LOADERS, detect_map
from app.comfy.graph import Workflow, consumers, describe_node, is_link, node_title, sorted_node_ids
from app.comfy.inject import InjectionError, parse_value
from app.comfy.render import json_value
from app.comfy.templates import (
    PARAM_KINDS,
    Binding,
    InjectionMap,
    LoraChainTarget,
    LoraStackerTarget,
    ParamSpec,
    Template,
)
from app.comfy.validate import ValidationIssue, ValidationReport

#: The logical parameters every template is checked for, in the order the editor lists them.
STANDARD_PARAMS: tuple[tuple[str, str, str], ...] = (
    ("positive", "text", "What the image shows"),
    ("negative", "text", "What the image must avoid"),
    ("seed", "seed", "Noise seed ('random' for a fresh one)"),
    ("width", "int", "Image width in pixels"),
    ("height", "int", "Image height in pixels"),
    ("steps", "int", "Sampler steps"),
    ("cfg", "float", "Classifier-free guidance scale"),
    ("sampler", "choice", "Sampler name as the instance lists it"),
    ("scheduler", "choice", "Scheduler name as the instance lists it"),
    ("denoise", "float", "Denoising strength (1.0 = from noise)"),
    ("checkpoint", "choice", "Checkpoint file as the instance lists it"),
    ("loras", "loras", "LoRAs (name:strength, …)"),
    ("init_image", "image", "Input image (file name on the instance)"),
)
STANDARD_NAMES = tuple(name for name, _, _ in STANDARD_PARAMS)
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,39}$")


class DocumentError(ValueError):
    """An edit that cannot be made (unknown parameter, a name taken); the message says why."""


@dataclass(frozen=True)
class ParamRow:
    """One parameter as the editor shows it; unmapped standard parameters have no bindings.

    ``default`` is the text the operator typed ("" = keep the workflow's value); it is read by
    the parameter's kind (:func:`app.comfy.inject.parse_value`) when the map is built.
    ``ambiguity`` is the detection's warning for this row, if any.
    """

    name: str
    kind: str
    bindings: tuple[Binding, ...] = ()
    default: str = ""
    description: str = ""
    randomize: bool = False
    minimum: float | None = None
    maximum: float | None = None
    lora: LoraChainTarget | LoraStackerTarget | None = None
    ambiguity: str = ""

    @property
    def standard(self) -> bool:
        return self.name in STANDARD_NAMES

    @property
    def mapped(self) -> bool:
        return bool(self.bindings) or self.lora is not None

    @property
    def binding(self) -> Binding | None:
        """The first binding (the one the editor's node/input pickers edit)."""
        return self.bindings[0] if self.bindings else None


@dataclass(frozen=True)
class InputCell:
    """One input of a node: a literal value, or a link to ``source`` output ``output``."""

    name: str
    value: Any
    source: str | None = None
    output: int | None = None
    source_title: str = ""

    @property
    def is_link(self) -> bool:
        return self.source is not None

    def display(self) -> str:
        if self.is_link:
            return f"→ #{self.source} {self.source_title} [output {self.output}]"
        return value_text(self.value)


@dataclass(frozen=True)
class NodeRow:
    """One node of the workflow for the node table."""

    node_id: str
    class_type: str
    title: str
    inputs: tuple[InputCell, ...]


@dataclass(frozen=True)
class MapProblem:
    """Something that makes the map unusable; ``param`` names the row it belongs to."""

    param: str
    message: str


@dataclass(frozen=True)
class LocatedIssues:
    """A validation report sorted onto the editor's rows (see :func:`locate_issues`)."""

    by_param: dict[str, tuple[ValidationIssue, ...]] = field(default_factory=dict)
    by_node: dict[str, tuple[ValidationIssue, ...]] = field(default_factory=dict)
    general: tuple[ValidationIssue, ...] = ()


def value_text(value: Any) -> str:
    """A workflow or default value as one editable line (strings bare, the rest as JSON)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(json_value(value))


def parse_literal(text: str, like: Any) -> Any:
    """Text typed into the node table, read as the type the input had (a number stays a number)."""
    if isinstance(like, bool):
        lowered = text.strip().lower()
        if lowered in ("true", "1", "yes", "on"):
            return True
        if lowered in ("false", "0", "no", "off"):
            return False
        raise DocumentError(f"expected true or false, got {text!r}")
    if isinstance(like, int):
        try:
            return int(text)
        except ValueError:
            raise DocumentError(f"expected a whole number, got {text!r}") from None
    if isinstance(like, float):
        try:
            return float(text)
        except ValueError:
            raise DocumentError(f"expected a number, got {text!r}") from None
    if isinstance(like, str) or like is None:
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DocumentError(f"expected JSON like the current value: {exc}") from None


def _row_from_spec(spec: ParamSpec, ambiguity: str = "") -> ParamRow:
    return ParamRow(
        name=spec.name,
        kind=spec.kind,
        bindings=spec.bindings,
        default="" if spec.default is None else value_text(spec.default),
        description=spec.description,
        randomize=spec.randomize,
        minimum=spec.minimum,
        maximum=spec.maximum,
        lora=spec.lora,
        ambiguity=ambiguity,
    )


class TemplateDocument:
    """An open template: a private copy of its workflow and its parameter rows (see module doc).

    ``origin`` is ``user`` or ``shipped`` (read-only: saved only as a copy); ``dirty`` is set by
    every edit and cleared by the library after a save; ``from_draft`` when it was opened from a
    saved draft (:mod:`app.services.template_library`).
    """

    def __init__(
        self,
        name: str,
        workflow: Workflow,
        rows: Iterable[ParamRow],
        *,
        origin: str = "user",
        description: str = "",
        notes: Iterable[str] = (),
        detected: bool = False,
        ui_workflow: dict | None = None,
        from_draft: bool = False,
    ) -> None:
        self.name = name
        self.workflow: Workflow = copy.deepcopy(workflow)
        self.origin = origin
        self.description = description
        self.notes = tuple(notes)
        self.detected = detected
        self.ui_workflow = ui_workflow
        self.from_draft = from_draft
        self.dirty = False
        self.workflow_dirty = False
        self._rows: dict[str, ParamRow] = {}
        for name_, kind, text in STANDARD_PARAMS:
            self._rows[name_] = ParamRow(name_, kind, description=text)
        for row in rows:
            base = self._rows.get(row.name)
            self._rows[row.name] = (
                row if row.description or base is None else replace(row, description=base.description)
            )

    # --- building ----------------------------------------------------------------------------

    @classmethod
    def from_template(cls, template: Template, *, origin: str = "user") -> TemplateDocument:
        """The document of a loaded template; a detected map brings its ambiguities to the rows."""
        ambiguities: dict[str, list[str]] = {}
        if template.detected:
            for ambiguity in detect_map(template.workflow).ambiguities:
                message = ambiguity.message
                if ambiguity.param == "sampler" and len(ambiguity.candidates) > 1:
                    # The same choice concerns six rows: say it short, row by row.
                    chosen, *others = ambiguity.candidates
                    message = (
                        f"{len(ambiguity.candidates)} samplers: bound to {describe_node(template.workflow, chosen)}, "
                        f"not {', '.join(describe_node(template.workflow, o) for o in others)}"
                    )
                for param in _ambiguity_params(ambiguity.param):
                    ambiguities.setdefault(param, []).append(message)
        rows = [
            _row_from_spec(spec, "; ".join(ambiguities.get(spec.name, ())))
            for spec in template.injection_map.params.values()
        ]
        return cls(
            template.name,
            template.workflow,
            rows,
            origin=origin,
            description=template.description if template.description != "detected" else "",
            notes=template.notes,
            detected=template.detected,
            ui_workflow=template.ui_workflow,
        )

    @property
    def read_only(self) -> bool:
        return self.origin == "shipped"

    # --- reading -----------------------------------------------------------------------------

    @property
    def rows(self) -> list[ParamRow]:
        return list(self._rows.values())

    def row(self, name: str) -> ParamRow:
        try:
            return self._rows[name]
        except KeyError:
            raise DocumentError(f"the template has no parameter '{name}'") from None

    def node_ids(self) -> list[str]:
        return sorted_node_ids(self.workflow)

    def node_label(self, node_id: str) -> str:
        node = self.workflow.get(node_id, {})
        return f"#{node_id} {node_title(self.workflow, node_id)} ({node.get('class_type', '?')})"

    def literal_inputs(self, node_id: str) -> list[str]:
        """Inputs of a node that hold a value (what a parameter can be bound to)."""
        inputs = self.workflow.get(node_id, {}).get("inputs", {})
        return [name for name, value in inputs.items() if not is_link(value)]

    def nodes(self) -> list[NodeRow]:
        rows = []
        for node_id in self.node_ids():
            node = self.workflow[node_id]
            cells = []
            for name, value in node.get("inputs", {}).items():
                if is_link(value):
                    source, output = value
                    cells.append(InputCell(name, value, source, output, node_title(self.workflow, source)))
                else:
                    cells.append(InputCell(name, value))
            rows.append(
                NodeRow(node_id, node["class_type"], node_title(self.workflow, node_id), tuple(cells))
            )
        return rows

    def current_value(self, name: str) -> Any:
        """What the parameter's first binding holds in the workflow now (None when unmapped)."""
        binding = self.row(name).binding
        if binding is None:
            return None
        return self.workflow.get(binding.node, {}).get("inputs", {}).get(binding.input)

    def params_at(self, node_id: str, input_name: str) -> list[str]:
        return [
            row.name
            for row in self._rows.values()
            if any(b.node == node_id and b.input == input_name for b in row.bindings)
        ]

    # --- editing -----------------------------------------------------------------------------

    def _put(self, row: ParamRow) -> None:
        self._rows[row.name] = row
        self.dirty = True

    def set_binding(self, name: str, node_id: str | None, input_name: str | None) -> None:
        """Point the parameter's first binding at ``node_id.input_name`` (None: unmap it).

        Further bindings (e.g. width also written to an SDXL encoder's target_width) stay.
        """
        row = self.row(name)
        rest = row.bindings[1:]
        if node_id is None or not input_name:
            self._put(replace(row, bindings=rest, ambiguity=""))
            return
        self._put(replace(row, bindings=(Binding(node_id, input_name), *rest), ambiguity=""))

    def set_lora_target(self, node_id: str | None) -> None:
        """Where ``loras`` go, picked by one node: a ``LoraLoader`` (its chain of loaders is
        filled, unused ones spliced out) or any model loader (new loaders inserted after it, with
        its CLIP output too when the prompts take CLIP from it). None unmaps it."""
        row = self.row("loras")
        if node_id is None:
            self._put(replace(row, lora=None, ambiguity=""))
            return
        if node_id not in self.workflow:
            raise DocumentError(f"the workflow has no node #{node_id}")
        if self.workflow[node_id]["class_type"] in LORA_LOADERS:
            chain = [node_id]
            while True:
                following = [
                    consumer
                    for consumer, input_name in consumers(self.workflow, chain[-1], 0)
                    if input_name == "model" and self.workflow[consumer]["class_type"] in LORA_LOADERS
                ]
                if not following or following[0] in chain:
                    break
                chain.append(following[0])
            target = LoraChainTarget(nodes=tuple(chain))
        else:
            clip_used = any(name == "clip" for _, name in consumers(self.workflow, node_id, 1))
            target = LoraChainTarget(
                model_source=(node_id, 0), clip_source=(node_id, 1) if clip_used else None
            )
        self._put(replace(row, lora=target, ambiguity=""))

    def set_default(self, name: str, text: str) -> None:
        self._put(replace(self.row(name), default=text.strip() if self.row(name).kind != "text" else text))

    def set_kind(self, name: str, kind: str) -> None:
        if kind not in PARAM_KINDS:
            raise DocumentError(f"unknown kind {kind!r}; expected one of {', '.join(PARAM_KINDS)}")
        row = self.row(name)
        if row.standard:
            raise DocumentError(f"'{name}' is a standard parameter; its kind is {row.kind}")
        self._put(replace(row, kind=kind))

    def add_custom(
        self, name: str, kind: str = "text", node_id: str | None = None, input_name: str | None = None
    ) -> None:
        name = name.strip()
        if not _NAME_RE.match(name):
            raise DocumentError(
                f"'{name}' is not a parameter name: use lower-case letters, digits and _ (starting with a letter)"
            )
        if name in self._rows:
            raise DocumentError(f"the template already has a parameter '{name}'")
        if kind not in PARAM_KINDS or kind == "loras":
            raise DocumentError(
                f"a custom parameter's kind is one of {', '.join(k for k in PARAM_KINDS if k != 'loras')}"
            )
        bindings = (Binding(node_id, input_name),) if node_id and input_name else ()
        self._put(ParamRow(name, kind, bindings, description="custom parameter"))

    def remove(self, name: str) -> None:
        row = self.row(name)
        if row.standard:
            # A standard parameter is never removed from the list, only unmapped.
            self._put(ParamRow(row.name, row.kind, description=row.description))
            return
        del self._rows[name]
        self.dirty = True

    def set_input_value(self, node_id: str, input_name: str, text: str) -> None:
        """Edit a literal input of the workflow (links are not editable here)."""
        inputs = self.workflow.get(node_id, {}).get("inputs")
        if inputs is None or input_name not in inputs:
            raise DocumentError(f"node #{node_id} has no input '{input_name}'")
        current = inputs[input_name]
        if is_link(current):
            raise DocumentError(f"input '{input_name}' of node #{node_id} is a link; edit the source node")
        value = parse_literal(text, current)
        if value != current:
            inputs[input_name] = value
            self.dirty = self.workflow_dirty = True

    # --- checking and building ---------------------------------------------------------------

    def problems(self) -> list[MapProblem]:
        """Everything that stops this map from being saved as the template's map."""
        problems: list[MapProblem] = []
        for row in self._rows.values():
            if not row.mapped:
                if not row.standard:
                    problems.append(MapProblem(row.name, "not bound: pick the node and input it writes"))
                continue
            for binding in row.bindings:
                problems += self._binding_problems(row, binding)
            if row.lora is not None:
                problems += self._lora_problems(row)
            if row.default:
                try:
                    parse_value(self._spec(row, with_default=False), row.default)
                except InjectionError as exc:
                    problems.append(
                        MapProblem(row.name, f"default {row.default!r} is not a {row.kind} value ({exc})")
                    )
        writers: dict[Binding, list[str]] = {}
        for row in self._rows.values():
            for binding in row.bindings:
                writers.setdefault(binding, []).append(row.name)
        for binding, names in writers.items():
            for name in names if len(names) > 1 else ():
                others = ", ".join(n for n in names if n != name)
                problems.append(
                    MapProblem(
                        name,
                        f"{self.node_label(binding.node)} input '{binding.input}' is also written by "
                        f"'{others}': bind each input to one parameter",
                    )
                )
        return problems

    def _binding_problems(self, row: ParamRow, binding: Binding) -> list[MapProblem]:
        if binding.node not in self.workflow:
            return [MapProblem(row.name, f"bound to node #{binding.node}, which the workflow does not have")]
        inputs = self.workflow[binding.node].get("inputs", {})
        where = describe_node(self.workflow, binding.node)
        if binding.input not in inputs:
            choices = ", ".join(self.literal_inputs(binding.node)) or "none"
            return [MapProblem(row.name, f"{where} has no input '{binding.input}'; its inputs: {choices}")]
        value = inputs[binding.input]
        if is_link(value):
            return [
                MapProblem(
                    row.name,
                    f"{where} input '{binding.input}' is a link from "
                    f"{describe_node(self.workflow, value[0])}: bind the value on that node instead",
                )
            ]
        return []

    def _lora_problems(self, row: ParamRow) -> list[MapProblem]:
        lora = row.lora
        nodes: list[str] = []
        if isinstance(lora, LoraStackerTarget):
            nodes.append(lora.node)
        elif isinstance(lora, LoraChainTarget):
            nodes += list(lora.nodes)
            nodes += [src[0] for src in (lora.model_source, lora.clip_source) if src]
        missing = [n for n in nodes if n not in self.workflow]
        return [
            MapProblem(row.name, f"the LoRA target names node #{n}, which the workflow does not have")
            for n in missing
        ]

    def _spec(self, row: ParamRow, *, with_default: bool = True) -> ParamSpec:
        spec = ParamSpec(
            name=row.name,
            kind=row.kind,
            bindings=row.bindings,
            description=row.description,
            randomize=row.randomize,
            minimum=row.minimum,
            maximum=row.maximum,
            lora=row.lora,
        )
        if with_default and row.default:
            value = parse_value(spec, row.default)
            spec = replace(spec, default=json_value(value))
        return spec

    def injection_map(self) -> InjectionMap:
        """The map of the mapped rows; :class:`DocumentError` listing the problems otherwise."""
        problems = self.problems()
        if problems:
            raise DocumentError("; ".join(f"{p.param}: {p.message}" for p in problems))
        params = {row.name: self._spec(row) for row in self._rows.values() if row.mapped}
        return InjectionMap(params=params, description=self.description)

    def template(self) -> Template:
        """A :class:`Template` of the document as it is now (for validation and test renders)."""
        return Template(
            name=self.name,
            workflow=copy.deepcopy(self.workflow),
            injection_map=self.injection_map(),
            ui_workflow=self.ui_workflow,
        )


def _ambiguity_params(param: str) -> tuple[str, ...]:
    # detect.py reports sampler ambiguity under "sampler" for all the sampler's inputs, and the
    # size ambiguity under "width" for both dimensions.
    if param == "sampler":
        return ("seed", "steps", "cfg", "sampler", "scheduler", "denoise")
    if param == "width":
        return ("width", "height")
    return (param,)


def locate_issues(report: ValidationReport, document: TemplateDocument) -> LocatedIssues:
    """Sort a validation report onto parameter rows (by the parameters bound where it happened,
    or the node a LoRA parameter writes) and node rows; the rest is general."""
    by_param: dict[str, list[ValidationIssue]] = {}
    by_node: dict[str, list[ValidationIssue]] = {}
    general: list[ValidationIssue] = []
    for issue in report.issues:
        params = list(issue.params)
        if not params and issue.node_id is not None:
            params = [
                row.name
                for row in document.rows
                if row.lora is not None and issue.node_id in _lora_nodes(row.lora)
            ]
        for param in params:
            by_param.setdefault(param, []).append(issue)
        if issue.node_id is not None:
            by_node.setdefault(issue.node_id, []).append(issue)
        if not params and issue.node_id is None:
            general.append(issue)
    return LocatedIssues(
        {k: tuple(v) for k, v in by_param.items()}, {k: tuple(v) for k, v in by_node.items()}, tuple(general)
    )


def _lora_nodes(lora: LoraChainTarget | LoraStackerTarget) -> set[str]:
    if isinstance(lora, LoraStackerTarget):
        return {lora.node}
    return set(lora.nodes)


def parse_test_values(document: TemplateDocument, texts: Mapping[str, str]) -> dict[str, Any]:
    """Test-render values typed per parameter ("" = use the default / the workflow's value)."""
    template = document.template()
    values: dict[str, Any] = {}
    for name, text in texts.items():
        if not text.strip() or name not in template.injection_map.params:
            continue
        try:
            values[name] = parse_value(template.injection_map.params[name], text)
        except InjectionError as exc:
            raise DocumentError(str(exc)) from exc
    return values
