"""Export a session: Markdown (images copied beside it) or one self-contained HTML file.

The story is the session's timeline (the chosen variant of every turn, undone turns left out);
each turn shows the player's input, the prose and the chosen render of its scene (else its
latest finished one). HTML embeds the images as ``data:`` URIs, so the file can be mailed or
archived on its own; every text is escaped. Pure file writing; any thread.
"""

from __future__ import annotations

import base64
import html
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from app.narrates.store import RenderFileRecord, SessionStore

FORMATS = ("md", "html")


@dataclass(frozen=True)
class ExportedTurn:
    """One turn of the story as exported: input, prose and the chosen images."""

    position: int
    player_input: str
    prose: str
    images: tuple[RenderFileRecord, ...]


def story_turns(store: SessionStore, session_id: int) -> list[ExportedTurn]:
    out = []
    for turn in store.timeline(session_id):
        images: tuple[RenderFileRecord, ...] = ()
        for scene in store.scenes_for_turn(turn.id):
            done = [r for r in store.renders(scene.id) if r.status == "done" and r.files]
            chosen = [r for r in done if r.chosen] or done[-1:]
            if chosen:
                images = chosen[0].files
        out.append(ExportedTurn(turn.position, turn.player_input, turn.prose or "", images))
    return out


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp")
    try:
        temp.write_bytes(data)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def export_markdown(store: SessionStore, session_id: int, out: Path) -> Path:
    session = store.session(session_id)
    image_dir = out.with_name(out.stem + "_images")
    lines = [f"# {session.title}", ""]
    if session.settings.premise:
        lines += [f"*{session.settings.premise}*", ""]
    characters = store.characters(session_id)
    if characters:
        lines += (
            ["## Cast", ""] + [f"- **{c.name}** — {c.description or c.visual}" for c in characters] + [""]
        )
    for turn in story_turns(store, session_id):
        lines += [f"## Turn {turn.position}", "", f"> {turn.player_input}", "", turn.prose.strip(), ""]
        for image in turn.images:
            if image.path.is_file():
                image_dir.mkdir(parents=True, exist_ok=True)
                target = image_dir / image.path.name
                if not target.exists():
                    shutil.copyfile(image.path, target)
                lines += [f"![Turn {turn.position}]({image_dir.name}/{target.name})", ""]
    _atomic_write(out, "\n".join(lines).encode("utf-8"))
    return out


_CSS = """
body { font-family: Georgia, serif; max-width: 46rem; margin: 2rem auto; padding: 0 1rem; line-height: 1.55;
       color: #222; background: #fbfaf7; }
h1 { font-size: 2rem; } h2 { font-size: 1.1rem; color: #666; margin-top: 2.5rem; }
blockquote { color: #555; border-left: 3px solid #c9b; margin: 0; padding-left: 1rem; font-style: italic; }
figure { margin: 1rem 0; } img { max-width: 100%; border-radius: 4px; }
.cast li { margin: .2rem 0; }
"""


def export_html(store: SessionStore, session_id: int, out: Path) -> Path:
    session = store.session(session_id)
    e = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(session.title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{e(session.title)}</h1>",
    ]
    if session.settings.premise:
        parts.append(f"<p><em>{e(session.settings.premise)}</em></p>")
    characters = store.characters(session_id)
    if characters:
        parts.append('<ul class="cast">')
        parts += [
            f"<li><strong>{e(c.name)}</strong> — {e(c.description or c.visual)}</li>" for c in characters
        ]
        parts.append("</ul>")
    for turn in story_turns(store, session_id):
        parts.append(f'<section id="turn-{turn.position}"><h2>Turn {turn.position}</h2>')
        parts.append(f"<blockquote>{e(turn.player_input)}</blockquote>")
        parts += [f"<p>{e(p.strip())}</p>" for p in turn.prose.split("\n\n") if p.strip()]
        for image in turn.images:
            if image.path.is_file():
                data = base64.b64encode(image.path.read_bytes()).decode("ascii")
                mime = image.mime_type or "image/png"
                parts.append(
                    f'<figure><img alt="Turn {turn.position}" src="data:{mime};base64,{data}"></figure>'
                )
        parts.append("</section>")
    parts.append("</body></html>")
    _atomic_write(out, "\n".join(parts).encode("utf-8"))
    return out


def export_session(store: SessionStore, session_id: int, fmt: str, out: Path) -> Path:
    if fmt == "md":
        return export_markdown(store, session_id, out)
    if fmt == "html":
        return export_html(store, session_id, out)
    raise ValueError(f"unknown export format {fmt!r} (expected one of {', '.join(FORMATS)})")
