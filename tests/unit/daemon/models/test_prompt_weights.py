"""ComfyUI prompt weighting syntax: weights, nesting, escapes, odd input."""

from __future__ import annotations

import math

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from daemon.models.prompt_weights import (
    MAX_NESTING,
    PromptWeightError,
    WeightedText,
    parse_weighted_prompt,
    split_embedding_words,
)


def _pairs(prompt):
    return [(s.text, round(s.weight, 6)) for s in parse_weighted_prompt(prompt)]


def test_plain_text_is_one_segment_of_weight_one():
    assert parse_weighted_prompt("a photo of a cat") == [WeightedText("a photo of a cat", 1.0)]


def test_empty_prompt_has_no_segments():
    assert parse_weighted_prompt("") == []


def test_bare_parentheses_multiply_by_1_1_and_nest():
    assert _pairs("a (b) c") == [("a ", 1.0), ("b", 1.1), (" c", 1.0)]
    assert _pairs("((b))") == [("b", 1.21)]
    assert _pairs("(((b)))") == [("b", 1.331)]


def test_explicit_weight_is_absolute_and_uses_the_last_colon():
    assert _pairs("(b:1.5)") == [("b", 1.5)]
    assert _pairs("((b:1.5))") == [("b", 1.5)]
    assert _pairs("((b:0.5) c)") == [("b", 0.5), (" c", 1.1)]
    assert _pairs("(a:b:0.8)") == [("a:b", 0.8)]
    assert _pairs("(x: 1.3 )") == [("x", 1.3)]


def test_colon_without_a_number_stays_text_and_gets_1_1():
    assert _pairs("(time: noon)") == [("time: noon", 1.1)]
    assert _pairs("(:1.5)") == [(":1.5", 1.1)]  # colon at position 0 does not count


def test_escaped_parentheses_are_literal_text():
    assert _pairs(r"a \(b\) c") == [("a (b) c", 1.0)]
    assert _pairs(r"(\(b\):1.2)") == [("(b)", 1.2)]


def test_unbalanced_parentheses_are_kept_as_comfyui_keeps_them():
    assert _pairs("a (b c") == [("a ", 1.0), ("(b c", 1.0)]
    assert _pairs("a) b") == [("a) b", 1.0)]
    assert _pairs(")(a)") == [(")(a)", 1.0)]
    assert _pairs("()") == []


def test_nested_groups_keep_prompt_order():
    assert _pairs("a (b (c:2) d) e") == [("a ", 1.0), ("b ", 1.1), ("c", 2.0), (" d", 1.1), (" e", 1.0)]


def test_square_brackets_are_plain_text():
    assert _pairs("[b]") == [("[b]", 1.0)]


@pytest.mark.parametrize("bad", ["(x:nan)", "(x:inf)", "(x:-inf)"])
def test_non_finite_weights_are_a_typed_error(bad):
    with pytest.raises(PromptWeightError, match="finite"):
        parse_weighted_prompt(bad)


def test_nesting_up_to_the_limit_parses_and_deeper_is_a_typed_error():
    depth = MAX_NESTING
    segments = parse_weighted_prompt("(" * depth + "x" + ")" * depth)
    assert [s.text for s in segments] == ["x"]
    assert segments[0].weight == pytest.approx(1.1**depth, rel=1e-6)
    # Deeper nesting would cost one pass over the prompt per level (a 100,000-character
    # prompt nested 20,000 deep took most of a minute); it is refused before that work is done.
    for deep in ("(" * 1500 + "x" + ")" * 1500, "(" * 20_000 + "x" + ":1)" * 20_000):
        with pytest.raises(PromptWeightError, match="deeper than"):
            parse_weighted_prompt(deep)


def test_work_per_prompt_is_bounded_by_the_nesting_limit(monkeypatch):
    import daemon.models.prompt_weights as module

    scanned = []
    real = module._top_level_items
    monkeypatch.setattr(module, "_top_level_items", lambda text: scanned.append(len(text)) or real(text))
    prompt = "(" * 20_000 + "x" + ":1)" * 20_000
    with pytest.raises(PromptWeightError):
        parse_weighted_prompt(prompt)
    assert sum(scanned) <= (MAX_NESTING + 1) * len(prompt)


def test_a_weight_that_overflows_through_nesting_is_a_typed_error():
    with pytest.raises(PromptWeightError, match="overflows"):
        parse_weighted_prompt("(" + "(" * 8 + "x" + ")" * 8 + ":1e308)")


def test_embedding_words_are_split_before_embedding_prefix():
    assert split_embedding_words("a cat embedding:foo, red\nembedding:bar") == [
        "a cat",
        "embedding:foo, red",
        "embedding:bar",
    ]
    assert split_embedding_words("embedding:x y") == ["embedding:x y"]
    assert split_embedding_words("noembedding:x") == ["noembedding:x"]


_syntax = st.text(alphabet=st.sampled_from(list("ab :()\\.1259-e\n")), max_size=40)


@settings(max_examples=500, deadline=None)
@given(_syntax | st.text(max_size=40))
def test_parser_never_crashes_and_keeps_all_non_syntax_text(prompt):
    # ComfyUI's escape placeholders are NUL+\x01/\x02; a prompt containing them literally turns
    # them into parentheses (there and here), so they are left out of the invariant.
    assume("\0" not in prompt)
    try:
        segments = parse_weighted_prompt(prompt)
    except PromptWeightError:
        return
    joined = "".join(s.text for s in segments)
    if ":" not in prompt:
        # Without weights only grouping parentheses can disappear: everything else survives.
        assert [c for c in joined if c not in "()"] == [
            c for c in prompt.replace("\\(", "(").replace("\\)", ")") if c not in "()"
        ]
    assert all(math.isfinite(s.weight) for s in segments)  # negative weights are allowed, as in ComfyUI


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ab ")), max_size=20))
def test_escaped_parentheses_always_come_back_literally(word):
    segments = parse_weighted_prompt("\\(" + word + "\\)")
    assert "".join(s.text for s in segments) == "(" + word + ")"
    assert all(s.weight == 1.0 for s in segments)
