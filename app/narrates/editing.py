"""Text forms of the story's editable fields, for the GUI's cast editor and re-render dialog.

:func:`loras_to_text` / :func:`loras_from_text` use the short form ``luna render --set loras=``
takes (``a.safetensors:0.8:0.6, b.safetensors``, via :func:`app.comfy.inject.parse_value`), so
a LoRA reads the same everywhere; :func:`character_from_fields` and :func:`note_from_fields`
build typed records from a form's strings (an :class:`InvalidEdit` names the field);
:func:`rerender_changes` turns the re-render dialog's fields into the ``changes`` the scene
renderer (:func:`app.narrates.rendering.apply_changes`) takes — only what differs from the
scene, plus the seed choice (keep / new / a typed one). Pure; any thread.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from app.comfy.inject import InjectionError, LoraSpec, ParamSpec, parse_value
from app.narrates.errors import InvalidEdit
from app.narrates.model import Character, ScenePlan, WorldNote
from app.narrates.store import RenderRecord

_LORAS = ParamSpec("loras", "loras")
SEED_MODES = ("keep", "new", "typed")


def loras_to_text(loras: Sequence[LoraSpec]) -> str:
    parts = []
    for lora in loras:
        text = f"{lora.name}:{lora.strength_model:g}"
        if lora.strength_clip is not None:
            text += f":{lora.strength_clip:g}"
        parts.append(text)
    return ", ".join(parts)


def loras_from_text(text: str, where: str = "LoRAs") -> tuple[LoraSpec, ...]:
    if not text.strip():
        return ()
    try:
        value = parse_value(_LORAS, text)
    except InjectionError as exc:
        raise InvalidEdit(f"{where}: write name:strength[:clip], comma-separated ({exc})") from exc
    out = []
    for item in value:
        if isinstance(item, LoraSpec):
            out.append(item)
        elif isinstance(item, Mapping) and "name" in item:
            clip = item.get("clip")
            out.append(
                LoraSpec(
                    str(item["name"]), float(item.get("model", 1.0)), None if clip is None else float(clip)
                )
            )
        else:
            raise InvalidEdit(f"{where}: cannot read {item!r}")
    return tuple(out)


def _names(text: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in text.split(",") if p.strip())


def _seed(text: str, where: str) -> int | None:
    text = text.strip()
    if not text:
        return None
    try:
        seed = int(text)
    except ValueError:
        raise InvalidEdit(f"{where}: the seed must be a whole number (or empty), got {text!r}") from None
    if seed < 0:
        raise InvalidEdit(f"{where}: the seed must not be negative")
    return seed


def character_from_fields(
    name: str, aliases: str, description: str, visual: str, loras: str, seed: str
) -> Character:
    where = f"character {name.strip() or '(no name)'}"
    if not name.strip():
        raise InvalidEdit("a character has no name")
    return Character(
        name.strip(),
        description.strip(),
        visual.strip(),
        _names(aliases),
        loras_from_text(loras, f"{where}, LoRAs"),
        _seed(seed, where),
    )


def note_from_fields(title: str, keys: str, priority: str, content: str) -> WorldNote:
    if not title.strip():
        raise InvalidEdit("a world note has no title")
    try:
        rank = int(priority.strip() or 0)
    except ValueError:
        raise InvalidEdit(f"world note {title.strip()}: the priority must be a whole number") from None
    return WorldNote(title.strip(), content.strip(), _names(keys), rank)


@dataclass(frozen=True)
class RerenderForm:
    """The re-render dialog's fields as text (``seed_mode``: keep / new / typed)."""

    seed_mode: str
    seed: str
    prompt: str
    negative: str
    style: str
    template: str
    width: str
    height: str
    loras: str


def _plan_size(plan: ScenePlan) -> tuple[str, str]:
    """The size a render of ``plan`` asks for: its own, else the session's render values ("" = the template's)."""
    width = plan.width if plan.width is not None else plan.values.get("width")
    height = plan.height if plan.height is not None else plan.values.get("height")
    return ("" if width is None else str(width), "" if height is None else str(height))


def form_for(plan: ScenePlan, seed: int | None) -> RerenderForm:
    """The dialog pre-filled with the scene's current values (``seed``: the one its shown render used)."""
    shown = plan.seed if plan.seed is not None else seed
    return RerenderForm(
        "keep",
        "" if shown is None else str(shown),
        plan.positive,
        plan.negative,
        plan.style or "",
        plan.template,
        *_plan_size(plan),
        loras_to_text(plan.loras),
    )


def rerender_changes(plan: ScenePlan, form: RerenderForm, shown_seed: int | None = None) -> dict[str, str]:
    """The changes for :meth:`StoryService.rerender`: what the form changed, and the seed choice.

    ``keep`` re-uses the scene's seed (or the seed its shown render drew, for a ``random``-policy
    scene), ``new`` draws a fresh one, ``typed`` uses the form's number.
    """
    if form.seed_mode not in SEED_MODES:
        raise InvalidEdit(f"seed choice must be one of {SEED_MODES}")
    changes: dict[str, str] = {}
    if form.seed_mode == "new":
        changes["seed"] = "random"
    elif form.seed_mode == "typed":
        seed = _seed(form.seed, "re-render")
        if seed is None:
            raise InvalidEdit("re-render: type a seed, or choose keep / new")
        changes["seed"] = str(seed)
    elif plan.seed is None and shown_seed is not None:
        changes["seed"] = str(shown_seed)
    if form.prompt.strip() != plan.positive.strip():
        if not form.prompt.strip():
            raise InvalidEdit("re-render: the prompt is empty")
        changes["prompt"] = form.prompt.strip()
    if form.negative.strip() != plan.negative.strip():
        changes["negative"] = form.negative.strip()
    if form.style.strip() != (plan.style or ""):
        changes["style"] = form.style.strip()
    if form.template.strip() and form.template.strip() != plan.template:
        changes["template"] = form.template.strip()
    width, height = form.width.strip(), form.height.strip()
    if (width, height) != _plan_size(plan):
        if not (width.isdigit() and height.isdigit()) or int(width) < 8 or int(height) < 8:
            raise InvalidEdit("re-render: width and height must both be whole numbers of at least 8")
        changes["size"] = f"{width}x{height}"
    if loras_from_text(form.loras) != tuple(plan.loras):
        changes["loras"] = form.loras.strip()
    return changes


def render_facts(render: RenderRecord) -> dict[str, str]:
    """A render's parameters and timings as labelled text (the history shows and compares these)."""
    params = dict(render.params or {})
    timings = render.timings or {}
    facts = {
        "status": render.status + (f" ({render.error_kind})" if render.error_kind else ""),
        "seed": "" if render.seed is None else str(render.seed),
        "template": render.template,
        "style": render.style or "default",
        "instance": render.instance or "",
        "size": f"{params['width']}x{params['height']}" if "width" in params and "height" in params else "",
        "prompt": str(params.get("positive", "")),
        "negative": str(params.get("negative", "")),
        "loras": ", ".join(
            f"{x.get('name')}:{x.get('strength', 1.0):g}"
            for x in params.get("loras") or ()
            if isinstance(x, Mapping)
        ),
        "changes": ", ".join(f"{k}={v}" for k, v in sorted(render.changes.items())) or "none",
    }
    for name in ("queued", "running", "total"):
        if name in timings:
            facts[f"{name} (s)"] = f"{timings[name]:.2f}"
    for name in ("steps", "cfg", "sampler", "scheduler", "checkpoint"):
        if name in params:
            facts[name] = str(params[name])
    return facts


def compare_renders(a: RenderRecord, b: RenderRecord) -> list[tuple[str, str, str, bool]]:
    """``(label, a's value, b's value, differs)`` for every fact either render has."""
    left, right = render_facts(a), render_facts(b)
    labels = list(left) + [k for k in right if k not in left]
    return [(k, left.get(k, ""), right.get(k, ""), left.get(k, "") != right.get(k, "")) for k in labels]
