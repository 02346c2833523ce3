"""Prompt files: sections, placeholders, the user copy overriding the shipped one."""

from __future__ import annotations

import pytest

from app.narrates.prompts import PROMPT_NAMES, PromptError, PromptLibrary, parse_prompt, user_prompts_dir
from app.paths import resource_path


def test_every_shipped_prompt_parses_and_renders_with_its_agents_placeholders():
    library = PromptLibrary()
    for name in PROMPT_NAMES:
        prompt = library.get(name)
        assert prompt.source == resource_path("prompts", f"{name}.txt")
        with pytest.raises(PromptError, match="unknown placeholder"):
            prompt.render({})


def test_a_user_copy_overrides_the_shipped_prompt():
    directory = user_prompts_dir()
    directory.mkdir(parents=True)
    (directory / "summary.txt").write_text(
        "[system]\nBe brief.\n[user]\n$summary / $events\n", encoding="utf-8"
    )
    prompt = PromptLibrary().get("summary")
    assert prompt.render({"summary": "S", "events": "E"}) == ("Be brief.", "S / E")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[user]\nhi\n", r"no \[system\] section"),
        ("[system]\nhi\n", r"no \[user\] section"),
        ("stray text\n[system]\na\n[user]\nb\n", "text before the"),
    ],
)
def test_a_malformed_prompt_file_is_a_prompt_error_naming_the_file(tmp_path, text, message):
    with pytest.raises(PromptError, match=message):
        parse_prompt("x", text, tmp_path / "x.txt")


def test_a_lone_dollar_sign_says_how_to_write_one(tmp_path):
    prompt = parse_prompt("x", "[system]\ncosts 5 $ today\n[user]\n$a\n", tmp_path / "x.txt")
    with pytest.raises(PromptError, match=r"\$\$"):
        prompt.render({"a": "1"})
