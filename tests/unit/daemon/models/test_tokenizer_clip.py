"""CLIP BPE tokenizer: bundled data, reference-id parity with transformers, 77-token windows."""

from __future__ import annotations

import gzip
import hashlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon.models.io import ModelLoadError
from daemon.models.tokenizer import (
    END_TOKEN,
    MAX_WORD_LENGTH,
    PAD_CLIP_G,
    PAD_CLIP_L,
    START_TOKEN,
    VOCAB_SIZE,
    ClipTokenizer,
    default_merges_path,
    empty_window,
    read_merges,
    split_into_windows,
)
from tests.helpers.reference_bpe import quadratic_reference_bpe as _quadratic_reference_bpe

MERGES_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"

TRICKY = [
    "",
    "a photo of a cat",
    "A PHOTO OF A CAT, Masterpiece!!!",
    "naïve café déjà vu, Ångström, Øresund",
    "e\u0301 (decomposed accent)",
    "ΟΔΟΣ Σ σ ς",
    "İstanbul ß ẞ ǅ",
    "emoji 😀🎉 👍🏽 family 👨‍👩‍👧",
    "1234 3.14 1e5 -42 ½ ² Ⅻ ٣",
    "(masterpiece:1.2), ((best quality)), \\(escaped\\) [not weighted]",
    "don't can't I'm we'll they've she'd it's",
    "<|endoftext|> x <|startoftext|>y",
    "<|ENDOFTEXT|>",
    "日本語のテキスト 中文 한국어",
    "tab\tnew\nline   many    spaces  ",
    "\u00a0nbsp\u2003em\u3000ideographic",
    "ﬁ ligature “curly quotes” ‘single’",
    "&amp; &lt;b&gt; <b>html</b>",
    "ＦＵＬＬＷＩＤＴＨ",
    "\x00ctrl\x07\x1b",
    "عربي עברית हिन्दी",
    "a" * 300,
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "hyphen-ated snake_case camelCase dot.separated slash/path",
    "$100 #hashtag @mention 50% a+b=c ~tilde `tick`",
    "!!!??? ... --- ***",
    ", ".join(["1girl", "solo", "long hair", "looking at viewer", "blue eyes"] * 20),
]


def _reference_vocab(merges: list[tuple[str, str]]) -> dict[str, int]:
    """The vocab derived independently (GPT-2 byte table written out here, not imported)."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    extra = [b for b in range(256) if b not in printable]
    chars = [chr(b) for b in printable] + [chr(256 + i) for i in range(len(extra))]
    tokens = chars + [c + "</w>" for c in chars] + [a + b for a, b in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}


@pytest.fixture(scope="module")
def merges() -> list[tuple[str, str]]:
    return read_merges()


@pytest.fixture(scope="module")
def tokenizer(merges) -> ClipTokenizer:
    return ClipTokenizer(merges)


@pytest.fixture(scope="module")
def reference(merges, tmp_path_factory):
    """transformers.CLIPTokenizer built from vocab.json + merges.txt derived from the .gz."""
    import json

    from transformers import CLIPTokenizer

    folder = tmp_path_factory.mktemp("clip-tokenizer")
    vocab_path = folder / "vocab.json"
    merges_path = folder / "merges.txt"
    vocab_path.write_text(json.dumps(_reference_vocab(merges)), encoding="utf-8")
    merges_path.write_text(
        "#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n", encoding="utf-8"
    )
    vocab = json.loads(vocab_path.read_text(encoding="utf-8"))
    merge_pairs = [tuple(line.split()) for line in merges_path.read_text(encoding="utf-8").splitlines()[1:]]
    return CLIPTokenizer(vocab=vocab, merges=merge_pairs)


def test_bundled_merges_file_is_the_documented_openai_file():
    data = default_merges_path().read_bytes()
    assert hashlib.sha256(data).hexdigest() == MERGES_SHA256
    assert (default_merges_path().parent / "LICENSE").read_text().startswith("MIT License")


def test_vocab_has_49408_entries_with_special_ids_at_the_end(tokenizer):
    assert len(tokenizer.vocab) == VOCAB_SIZE
    assert tokenizer.vocab["<|startoftext|>"] == START_TOKEN == 49406
    assert tokenizer.vocab["<|endoftext|>"] == END_TOKEN == 49407
    assert tokenizer.vocab["!"] == 0


@pytest.mark.parametrize("text", TRICKY)
def test_ids_match_transformers_clip_tokenizer(tokenizer, reference, text):
    assert tokenizer.encode(text) == reference(text)["input_ids"][1:-1]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(alphabet=st.characters(exclude_categories=("Cn", "Cs", "Co")), max_size=30))
def test_random_assigned_unicode_matches_transformers(tokenizer, reference, text):
    # Unassigned code points are excluded: the `regex` module and tokenizers' Oniguruma ship
    # different Unicode versions, so characters assigned only recently classify differently.
    assert tokenizer.encode(text) == reference(text)["input_ids"][1:-1]


def test_decode_round_trips_plain_text(tokenizer):
    assert tokenizer.decode(tokenizer.encode("A Photo of a cat, 2 dogs!")) == "a photo of a cat , 2 dogs !"


def test_fix_text_option_applies_ftfy_like_the_old_slow_tokenizer(merges):
    fixed = ClipTokenizer(merges, fix_text=True)
    plain = ClipTokenizer(merges)
    assert fixed.encode("“quoted”") == plain.encode('"quoted"')
    assert plain.encode("“quoted”") != plain.encode('"quoted"')


def test_corrupt_or_missing_merges_file_is_a_model_load_error(tmp_path):
    with pytest.raises(ModelLoadError, match="cannot read"):
        read_merges(tmp_path / "missing.txt.gz")
    short = tmp_path / "short.txt.gz"
    with gzip.open(short, "wt", encoding="utf-8") as handle:
        handle.write("#version: 0.2\ni n\nt h\n")
    with pytest.raises(ModelLoadError, match="expected at least"):
        read_merges(short)


# -- windows --------------------------------------------------------------------------------


def _ids(window):
    return list(window.tokens)


def test_empty_prompt_is_one_window_of_start_end_and_padding():
    (window,) = split_into_windows([], pad_token=PAD_CLIP_L)
    assert _ids(window) == [START_TOKEN, END_TOKEN] + [PAD_CLIP_L] * 75
    (window_g,) = split_into_windows([], pad_token=PAD_CLIP_G)
    assert _ids(window_g) == [START_TOKEN, END_TOKEN] + [0] * 75
    assert tuple(_ids(window_g)) == empty_window(PAD_CLIP_G)


def test_75_tokens_fit_one_window_and_76_need_two():
    (one,) = split_into_windows([(list(range(100, 175)), 1.0)], pad_token=PAD_CLIP_L)
    assert _ids(one) == [START_TOKEN, *range(100, 175), END_TOKEN]
    two = split_into_windows([(list(range(100, 176)), 1.0)], pad_token=PAD_CLIP_L)
    assert len(two) == 2
    assert _ids(two[0]) == [START_TOKEN, *range(100, 175), END_TOKEN]
    assert _ids(two[1]) == [START_TOKEN, 175, END_TOKEN] + [PAD_CLIP_L] * 74
    assert all(len(w.tokens) == len(w.weights) == 77 for w in two)


def test_short_group_that_does_not_fit_moves_whole_to_the_next_window():
    filler = (list(range(1000, 1073)), 1.0)  # 73 tokens: 2 places left
    word = ([7, 8, 9], 1.5)  # 3 tokens, shorter than MAX_WORD_LENGTH
    first, second = split_into_windows([filler, word], pad_token=0)
    assert _ids(first) == [START_TOKEN, *range(1000, 1073), END_TOKEN, 0, 0]
    assert _ids(second)[:5] == [START_TOKEN, 7, 8, 9, END_TOKEN]
    assert second.weights[1:4] == (1.5, 1.5, 1.5)
    assert second.weights[0] == second.weights[4] == 1.0


def test_long_group_is_split_across_windows():
    filler = (list(range(1000, 1073)), 1.0)
    long_word = (list(range(2000, 2000 + MAX_WORD_LENGTH)), 1.2)
    first, second = split_into_windows([filler, long_word], pad_token=PAD_CLIP_L)
    assert _ids(first)[-3:] == [2000, 2001, END_TOKEN]
    assert _ids(second)[: MAX_WORD_LENGTH - 2 + 2] == [
        START_TOKEN,
        *range(2002, 2000 + MAX_WORD_LENGTH),
        END_TOKEN,
    ]


def test_very_long_prompt_gives_ceil_windows(tokenizer):
    ids = tokenizer.encode("cat " * 400)
    windows = split_into_windows([(ids, 1.0)], pad_token=PAD_CLIP_L)
    assert len(windows) == -(-400 // 75)
    assert sum(t == tokenizer.vocab["cat</w>"] for w in windows for t in w.tokens) == 400


# -- bounded BPE: the same tokens as the reference, without its quadratic loop -------


def test_every_merge_ranks_after_the_merges_that_made_its_parts(merges):
    # The heap BPE equals the reference exactly when this holds for the merge table.
    made_by = {}
    for rank, (a, b) in enumerate(merges):
        made_by.setdefault(a + b, rank)
    assert all(made_by.get(part, -1) < rank for rank, pair in enumerate(merges) for part in pair)


def test_heap_bpe_equals_the_reference_on_every_vocab_word(tokenizer, merges):
    encoder = tokenizer.byte_encoder
    words = {a + b for a, b in merges[::7]} | {
        "supercalifragilisticexpialidocious",
        "aaaaaaaaaaaaaaaaaaaaaaa",
    }
    for word in words:
        text = word.removesuffix("</w>")
        if not text:
            continue
        symbols = "".join(encoder[b] for b in bytes(tokenizer.byte_decoder[c] for c in text))
        assert tokenizer._bpe(symbols) == _quadratic_reference_bpe(tokenizer.ranks, symbols), word


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(alphabet=st.sampled_from("abcdeilnorstuy'!.-éß日"), min_size=1, max_size=120))
def test_heap_bpe_equals_the_reference_on_random_words(tokenizer, word):
    symbols = "".join(tokenizer.byte_encoder[b] for b in word.encode("utf-8"))
    assert tokenizer._bpe(symbols) == _quadratic_reference_bpe(tokenizer.ranks, symbols)


def test_a_long_word_matches_transformers(tokenizer, reference):
    import random
    import string

    rng = random.Random(9)
    word = "".join(rng.choice(string.ascii_lowercase) for _ in range(3000))
    punctuation = "".join(rng.choice("!?.,;:-+*/#~^") for _ in range(1000))
    for text in (word, punctuation, f"{word} {punctuation}{word[:500]}"):
        assert tokenizer.encode(text) == reference(text)["input_ids"][1:-1]


class _CountingRanks(dict):
    """The merge ranks, counting lookups (a measure of work that does not depend on the clock)."""

    lookups = 0

    def get(self, key, default=None):
        self.lookups += 1
        return super().get(key, default)


@pytest.mark.parametrize("length", [4_000, 16_000])
def test_bpe_work_grows_linearly_with_the_word_not_quadratically(merges, length):
    import random
    import string

    counted = ClipTokenizer(merges)
    counted.ranks = _CountingRanks(counted.ranks)
    rng = random.Random(length)
    counted.encode("".join(rng.choice(string.ascii_lowercase) for _ in range(length)))
    # The reference rescans all pairs after every merge: about length**2 / 4 lookups here
    # (4e6 and 6.4e7). Bounded BPE: a few per symbol.
    assert counted.ranks.lookups < 8 * length


def test_long_pieces_are_not_kept_in_the_bpe_cache(tokenizer):
    tokenizer.encode("z" * 5000 + " zebra")
    assert "z" * 5000 not in tokenizer._cache and "zebra" in tokenizer._cache
