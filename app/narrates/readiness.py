"""Before a turn: will its scene render, and if not, what will happen instead — in words.

:func:`render_readiness` looks at what the scene renderer (:mod:`app.narrates.rendering`) will
meet — the session's template (does it use the Luna daemon's shared nodes? does its map declare a
stock variant?), whether the daemon answers, and the ComfyUI instances serving the style
(:class:`~app.comfy.router.InstanceSnapshot`) — and says it the way the renderer will act on it:
daemon down → the stock variant (or the render fails at once); the style's instances down → the
render is refused and the prose is kept. The GUI's story panel shows it above the input box; it is
the same rule the renderer applies, so the two cannot disagree. Pure; any thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from app.comfy.graph import WorkflowFormatError
from app.comfy.router import InstanceSnapshot
from app.comfy.templates import TemplateError
from app.narrates.rendering import TemplateCache, needs_daemon, stock_variant


@dataclass(frozen=True)
class RenderReadiness:
    """``level``: ``ok`` (renders as planned), ``fallback`` (renders differently), ``blocked``
    (the render will fail; the turn's text is not affected). ``lines`` say why, one fact each."""

    level: str
    lines: tuple[str, ...]
    template: str  # the template the render will really use

    @property
    def ok(self) -> bool:
        return self.level == "ok"

    def describe(self) -> str:
        return " ".join(self.lines)


def render_readiness(
    template_ref: str,
    style: str | None,
    *,
    daemon_up: bool,
    daemon_detail: str = "",
    instances: Sequence[InstanceSnapshot],
    templates: TemplateCache | None = None,
) -> RenderReadiness:
    """What a render of ``template_ref`` in ``style`` will do now (see the module docstring)."""
    templates = templates or TemplateCache()
    lines: list[str] = []
    level = "ok"
    used = template_ref
    try:
        template, _digest = templates.load(template_ref)
    except (TemplateError, WorkflowFormatError) as exc:
        return RenderReadiness(
            "blocked", (f"Template '{template_ref}' cannot be loaded ({exc}): scenes will not render.",), used
        )
    if needs_daemon(template) and not daemon_up:
        why = f" ({daemon_detail})" if daemon_detail else ""
        variant = stock_variant(template)
        if variant is None:
            level = "blocked"
            lines.append(
                f"The Luna daemon is down{why}: template '{template_ref}' needs it and has no stock "
                "variant, so the scene's render will fail. Start the daemon, or pick another template."
            )
        else:
            level = "fallback"
            used = variant
            lines.append(
                f"The Luna daemon is down{why}: the render will use the stock variant '{variant}' "
                "(ComfyUI's own CLIP and VAE on the render GPU — slower, more VRAM)."
            )
    label = f"style '{style}'" if style else "the default style"
    if not instances:
        level = "blocked"
        lines.append(f"No ComfyUI instance serves {label}: the scene's render will fail (the prose is kept).")
    elif not any(i.healthy for i in instances) and all(i.state == "unknown" for i in instances):
        lines.append(f"ComfyUI for {label} is being checked ({', '.join(i.name for i in instances)}).")
    elif not any(i.healthy for i in instances):
        level = "blocked"
        names = ", ".join(f"{i.name} ({i.last_error or i.state})" for i in instances)
        lines.append(
            f"ComfyUI for {label} is down — {names}: the render will be refused; the prose and the scene "
            "are kept, re-render it when the instance is back."
        )
    if not lines:
        up = ", ".join(i.name for i in instances if i.healthy)
        lines.append(f"Renders go to {up} with template '{template_ref}'.")
    return RenderReadiness(level, tuple(lines), used)
