"""Agent prompts as editable text files.

Each agent has ``resources/prompts/NAME.txt`` with a ``[system]`` and a ``[user]`` section
(lines starting with ``#`` before the first section are comments). A file of the same name in
``<config dir>/prompts/`` replaces the shipped one, so an operator can tune an agent without
touching the install. Placeholders are ``$name`` (``string.Template``; ``$$`` is a dollar sign);
a placeholder the template names but the agent does not provide is an error naming the file.

Files are read once per :class:`PromptLibrary` (per story service). Pure Python; any thread.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from string import Template

from app.narrates.errors import NarratesError
from app.paths import resource_path, user_dirs

PROMPT_NAMES = ("preprocessor", "strategist", "writer", "dreamer", "summary")


class PromptError(NarratesError):
    """A prompt file is missing, has no [system]/[user] section, or names an unknown placeholder."""


@dataclass(frozen=True)
class PromptTemplate:
    """A loaded prompt file: its ``[system]`` and ``[user]`` templates."""

    name: str
    source: Path
    system: Template
    user: Template

    def render(self, values: Mapping[str, object]) -> tuple[str, str]:
        """The (system, user) texts with ``values`` filled in."""
        text = {k: "" if v is None else str(v) for k, v in values.items()}
        try:
            return self.system.substitute(text).strip(), self.user.substitute(text).strip()
        except KeyError as exc:
            raise PromptError(
                f"{self.source}: unknown placeholder ${exc.args[0]} "
                f"(this prompt can use: {', '.join('$' + k for k in sorted(text))})"
            ) from exc
        except ValueError as exc:
            raise PromptError(f"{self.source}: {exc} (write $$ for a literal dollar sign)") from exc


def parse_prompt(name: str, text: str, source: Path) -> PromptTemplate:
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        marker = line.strip().lower()
        if marker in ("[system]", "[user]"):
            current = sections.setdefault(marker[1:-1], [])
        elif current is not None:
            current.append(line)
        elif line.strip() and not line.lstrip().startswith("#"):
            raise PromptError(f"{source}: text before the [system] section: {line.strip()[:60]!r}")
    missing = [s for s in ("system", "user") if s not in sections]
    if missing:
        raise PromptError(f"{source}: no [{missing[0]}] section")
    return PromptTemplate(
        name, source, Template("\n".join(sections["system"])), Template("\n".join(sections["user"]))
    )


def user_prompts_dir() -> Path:
    return user_dirs().config / "prompts"


class PromptLibrary:
    """The prompts of one story service: the user's copy when it exists, else the shipped file."""

    def __init__(self, search: tuple[Path, ...] | None = None) -> None:
        self._search = search or (user_prompts_dir(), resource_path("prompts"))
        self._cache: dict[str, PromptTemplate] = {}

    def get(self, name: str) -> PromptTemplate:
        if name not in self._cache:
            for directory in self._search:
                path = directory / f"{name}.txt"
                if path.is_file():
                    try:
                        text = path.read_text(encoding="utf-8")
                    except (OSError, UnicodeDecodeError) as exc:
                        raise PromptError(f"cannot read prompt {path}: {exc}") from exc
                    self._cache[name] = parse_prompt(name, text, path)
                    break
            else:
                raise PromptError(f"no prompt file {name}.txt in {', '.join(map(str, self._search))}")
        return self._cache[name]
