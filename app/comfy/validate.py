"""Validation of an API workflow against one instance's ``/object_info`` — before submitting.

Checks what ComfyUI's own ``validate_prompt`` checks, but all at once and with the template in
mind: every ``class_type`` exists on the instance, required inputs are present, links point at
existing nodes and output indexes with a matching type, combo values (model files, samplers,
schedulers) are in the instance's lists, numbers are within min/max, there is an output node;
and every input the injection map binds exists in the node's schema. Each
:class:`ValidationIssue` names the node by title and the injection parameter(s) bound there, so
"'Load Checkpoint' (#4) input 'ckpt_name' [parameter checkpoint]: 'x.safetensors' is not on this
instance" is what the operator reads. Issue codes reuse ComfyUI's error ``type`` names.

A pure function over plain dicts (the client's ``object_info()`` result); any thread.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from app.comfy.graph import Workflow, is_link, node_title, sorted_node_ids
from app.comfy.templates import InjectionMap

LIST_PREVIEW = 8


@dataclass(frozen=True)
class ValidationIssue:
    """One problem, located by node (id, title, class) and input, with the parameters bound there."""

    code: str
    message: str
    node_id: str | None = None
    node_title: str | None = None
    class_type: str | None = None
    input_name: str | None = None
    params: tuple[str, ...] = ()
    severity: str = "error"  # "error" | "warning"

    def describe(self) -> str:
        where = []
        if self.node_id is not None:
            where.append(f"'{self.node_title}' (#{self.node_id} {self.class_type})")
        if self.input_name:
            where.append(f"input '{self.input_name}'")
        if self.params:
            where.append(f"[parameter {', '.join(self.params)}]")
        prefix = " ".join(where)
        return f"{prefix}: {self.message}" if prefix else self.message

    def as_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(self).items()}


@dataclass(frozen=True)
class ValidationReport:
    """All issues of one validation; ``ok`` when none is an error (warnings do not block)."""

    issues: tuple[ValidationIssue, ...] = ()

    @property
    def errors(self) -> list[ValidationIssue]:
        return [i for i in self.issues if i.severity == "error"]

    @property
    def warnings(self) -> list[ValidationIssue]:
        return [i for i in self.issues if i.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors


def input_specs(schema: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(required, optional)`` input specs of one object_info entry (hidden inputs excluded)."""
    inputs = schema.get("input", {}) or {}
    return dict(inputs.get("required", {}) or {}), dict(inputs.get("optional", {}) or {})


def combo_options(spec: Any) -> list | None:
    """The allowed values of a combo input, in both the classic and the ``COMBO`` form."""
    if not isinstance(spec, (list, tuple)) or not spec:
        return None
    if isinstance(spec[0], list):
        return spec[0]
    if spec[0] == "COMBO" and len(spec) > 1 and isinstance(spec[1], Mapping):
        options = spec[1].get("options")
        return list(options) if isinstance(options, list) else None
    return None


def _type_matches(received: str, expected: str) -> bool:
    if received == "*" or expected == "*" or received == expected:
        return True
    return bool(set(received.split(",")) & set(expected.split(",")))


def _preview(options: list) -> str:
    shown = ", ".join(repr(o) for o in options[:LIST_PREVIEW])
    return shown + (f", … ({len(options)} in all)" if len(options) > LIST_PREVIEW else "")


class _Checker:
    def __init__(
        self, workflow: Workflow, object_info: Mapping[str, Any], injection_map: InjectionMap | None
    ):
        self.workflow = workflow
        self.object_info = object_info
        self.map = injection_map
        self.issues: list[ValidationIssue] = []

    def issue(
        self,
        code: str,
        message: str,
        node_id: str | None = None,
        input_name: str | None = None,
        severity: str = "error",
    ) -> None:
        node = self.workflow.get(node_id, {}) if node_id is not None else {}
        params = tuple(self.map.params_at(node_id, input_name)) if self.map and node_id is not None else ()
        self.issues.append(
            ValidationIssue(
                code=code,
                message=message,
                node_id=node_id,
                node_title=node_title(self.workflow, node_id) if node_id is not None else None,
                class_type=node.get("class_type") if node_id is not None else None,
                input_name=input_name,
                params=params,
                severity=severity,
            )
        )

    def check_link(self, node_id: str, name: str, link: list, expected: Any) -> None:
        source, index = link
        if source not in self.workflow:
            self.issue(
                "bad_linked_input", f"links to node #{source}, which is not in the workflow", node_id, name
            )
            return
        schema = self.object_info.get(self.workflow[source]["class_type"])
        if schema is None:
            return  # reported on the source node itself
        outputs = schema.get("output", []) or []
        if not 0 <= index < len(outputs):
            self.issue(
                "bad_linked_input",
                f"links to output {index} of '{node_title(self.workflow, source)}' "
                f"(#{source}), which has {len(outputs)} output(s)",
                node_id,
                name,
            )
            return
        received = outputs[index]
        if isinstance(expected, str) and isinstance(received, str) and not _type_matches(received, expected):
            self.issue(
                "return_type_mismatch",
                f"expects {expected} but is linked to a {received} output of "
                f"'{node_title(self.workflow, source)}' (#{source})",
                node_id,
                name,
            )

    def check_value(self, node_id: str, name: str, value: Any, spec: Any) -> None:
        options = combo_options(spec)
        if options is not None:
            config = spec[1] if len(spec) > 1 and isinstance(spec[1], Mapping) else {}
            if value not in options and any(
                config.get(k) for k in ("image_upload", "video_upload", "audio_upload")
            ):
                # Upload widgets (LoadImage) are checked by the node's own VALIDATE_INPUTS on the
                # server, and the list is stale right after an upload: only a warning here.
                self.issue(
                    "value_not_in_list",
                    f"{value!r} is not in this instance's input files as last listed "
                    "(fine if it was just uploaded)",
                    node_id,
                    name,
                    severity="warning",
                )
                return
            if value not in options:
                hint = " (a model file missing on this instance?)" if name.endswith("_name") else ""
                self.issue(
                    "value_not_in_list",
                    f"{value!r} is not offered by this instance{hint}; choices: {_preview(options)}"
                    if options
                    else f"{value!r} is not offered by this instance{hint}; it lists no choices",
                    node_id,
                    name,
                )
            return
        if not isinstance(spec, (list, tuple)) or not spec or not isinstance(spec[0], str):
            return
        kind = spec[0]
        config = spec[1] if len(spec) > 1 and isinstance(spec[1], Mapping) else {}
        converters = {"INT": int, "FLOAT": float, "STRING": str, "BOOLEAN": bool}
        if kind not in converters:
            self.issue(
                "bad_linked_input",
                f"expects a {kind} link but has the literal value {value!r}",
                node_id,
                name,
            )
            return
        if isinstance(value, (list, dict)) and not (isinstance(value, dict) and "__value__" in value):
            self.issue("invalid_input_type", f"expects {kind} but has {value!r}", node_id, name)
            return
        try:
            number = converters[kind](value)
        except (TypeError, ValueError):
            self.issue(
                "invalid_input_type", f"expects {kind} but {value!r} cannot be read as one", node_id, name
            )
            return
        if kind in ("INT", "FLOAT"):
            if "min" in config and number < config["min"]:
                self.issue(
                    "value_smaller_than_min", f"{value!r} is below the minimum {config['min']}", node_id, name
                )
            if "max" in config and number > config["max"]:
                self.issue(
                    "value_bigger_than_max", f"{value!r} is above the maximum {config['max']}", node_id, name
                )

    def check_node(self, node_id: str) -> None:
        node = self.workflow[node_id]
        class_type = node["class_type"]
        schema = self.object_info.get(class_type)
        if schema is None:
            self.issue(
                "missing_node_type",
                f"node type '{class_type}' is not available on this instance (custom node not installed?)",
                node_id,
            )
            return
        required, optional = input_specs(schema)
        inputs = node.get("inputs", {})
        for name in required:
            if name not in inputs:
                self.issue("required_input_missing", "required input is missing", node_id, name)
        for name, value in inputs.items():
            spec = required.get(name, optional.get(name))
            if spec is None:
                if self.map and self.map.params_at(node_id, name):
                    self.issue(
                        "unknown_bound_input",
                        f"the template binds this input but '{class_type}' on this "
                        "instance has no such input (different node version?)",
                        node_id,
                        name,
                    )
                else:
                    self.issue(
                        "unknown_input",
                        f"'{class_type}' has no input '{name}'; ComfyUI ignores it",
                        node_id,
                        name,
                        severity="warning",
                    )
                continue
            if is_link(value):
                self.check_link(
                    node_id, name, value, spec[0] if isinstance(spec, (list, tuple)) and spec else None
                )
            else:
                self.check_value(node_id, name, value, spec)

    def check_map(self) -> None:
        if self.map is None:
            return
        for spec in self.map.params.values():
            for binding in spec.bindings:
                if binding.node not in self.workflow:
                    self.issues.append(
                        ValidationIssue(
                            "unknown_bound_input",
                            f"parameter '{spec.name}' is bound to node #{binding.node}, "
                            "which the workflow lacks",
                            node_id=binding.node,
                            input_name=binding.input,
                            params=(spec.name,),
                        )
                    )
                    continue
                schema = self.object_info.get(self.workflow[binding.node]["class_type"])
                if schema is None or binding.input in self.workflow[binding.node].get("inputs", {}):
                    continue  # missing class reported per node; present inputs checked per node
                required, optional = input_specs(schema)
                if binding.input not in required and binding.input not in optional:
                    self.issue(
                        "unknown_bound_input",
                        f"parameter '{spec.name}' is bound to this input, which the "
                        "node does not have on this instance",
                        binding.node,
                        binding.input,
                    )


def validate_workflow(
    workflow: Workflow, object_info: Mapping[str, Any], injection_map: InjectionMap | None = None
) -> ValidationReport:
    """Validate an (injected) API workflow against an instance's ``/object_info`` dict."""
    checker = _Checker(workflow, object_info, injection_map)
    for node_id in sorted_node_ids(workflow):
        checker.check_node(node_id)
    checker.check_map()
    known = [n for n in workflow.values() if n["class_type"] in object_info]
    if len(known) == len(workflow) and not any(
        object_info[n["class_type"]].get("output_node") for n in known
    ):
        checker.issue(
            "prompt_no_outputs",
            "the workflow has no output node (SaveImage, PreviewImage, …), so ComfyUI would run nothing",
        )
    return ValidationReport(tuple(checker.issues))
