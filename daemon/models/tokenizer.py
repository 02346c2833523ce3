"""The CLIP BPE tokenizer (shared by CLIP-L and CLIP-G) and ComfyUI's 77-token windowing.

Owns: reading the OpenAI merges file shipped under ``resources/clip/`` (works offline and in a
PyInstaller bundle through :func:`daemon.paths.resource_path`), deriving the 49408-entry vocab
from it, text normalisation, the pre-tokenising regex, byte-level BPE, and cutting a prompt's
token groups into 77-token windows exactly like ComfyUI's ``SDTokenizer``.

Normalisation follows ``transformers.CLIPTokenizer`` (what ComfyUI calls for every prompt):
NFC, runs of whitespace to one space, lower-case, special tokens recognised verbatim before
normalising. ``fix_text=True`` adds ``ftfy.fix_text`` first, like the older slow
``CLIPTokenizer`` when ftfy is installed (it differs only on mojibake, curly quotes,
ligatures and similar).

Known differences from other reference tokenizers (all outside ordinary prompts): characters
assigned in very recent Unicode versions may be classified differently by the ``regex`` module
and by ``tokenizers``' Oniguruma; transformers 4 without ftfy (ComfyUI's slow tokenizer then
falls back to a BERT-style clean-up) puts spaces around CJK characters and drops control
characters, which transformers 5 and this module do not.

A :class:`ClipTokenizer` is read-only after construction apart from its BPE cache, which is
guarded by a lock, so the daemon's worker threads share one instance.
"""

from __future__ import annotations

import gzip
import heapq
import threading
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

import regex

from daemon.models.io import ModelLoadError
from daemon.paths import resource_path

START_TOKEN = 49406
END_TOKEN = 49407
VOCAB_SIZE = 49408
CONTEXT_LENGTH = 77
#: Pad ids as ComfyUI uses them: CLIP-L pads with EOS, CLIP-G (OpenCLIP) with 0 ("!").
PAD_CLIP_L = END_TOKEN
PAD_CLIP_G = 0
#: ComfyUI keeps a token group shorter than this in one window; longer groups may be split.
MAX_WORD_LENGTH = 8

#: Merge lines used from the file: 49152 - 256 byte symbols - 2 special tokens.
MERGES_USED = 49152 - 256 - 2
SPECIAL_TOKENS = {"<|startoftext|>": START_TOKEN, "<|endoftext|>": END_TOKEN}

# The reference regex also lists the two special tokens; they are split off verbatim before
# normalising (as ``transformers`` does), and a lower-cased "<|ENDOFTEXT|>" is ordinary text
# there, so they are left out here. Case-sensitive like ``tokenizers`` (after lower-casing).
_PIECE_PATTERN = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""")
_SPECIAL_SPLIT = regex.compile(r"(<\|startoftext\|>|<\|endoftext\|>)")
_WHITESPACE = regex.compile(r"\s+")
_BPE_CACHE_LIMIT = 100_000
_BPE_CACHE_MAX_PIECE = 64  # characters; longer pieces are tokenized every time


def default_merges_path() -> Path:
    """The bundled OpenAI merges file (``resources/clip/bpe_simple_vocab_16e6.txt.gz``)."""
    return resource_path("clip", "bpe_simple_vocab_16e6.txt.gz")


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte → printable character table (defines the first 256 vocab ids)."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    table = {b: chr(b) for b in printable}
    shift = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + shift)
            shift += 1
    # Vocab order is the order of the printable list followed by the remapped bytes.
    ordered = printable + [b for b in range(256) if b not in printable]
    return {b: table[b] for b in ordered}


def read_merges(path: str | Path | None = None) -> list[tuple[str, str]]:
    """The merge pairs used by CLIP, from the gzipped OpenAI file (header line skipped)."""
    p = Path(path) if path is not None else default_merges_path()
    try:
        with gzip.open(p, "rt", encoding="utf-8") as handle:
            lines = handle.read().split("\n")
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"cannot read CLIP merges file {p}: {exc}") from exc
    body = lines[1 : 1 + MERGES_USED]
    if len(body) != MERGES_USED:
        raise ModelLoadError(f"{p.name}: expected at least {MERGES_USED} merges, found {len(body)}")
    merges: list[tuple[str, str]] = []
    for number, line in enumerate(body, start=2):
        parts = line.split()
        if len(parts) != 2:
            raise ModelLoadError(f"{p.name}: line {number} is not a merge pair: {line!r}")
        merges.append((parts[0], parts[1]))
    return merges


def build_vocab(merges: Sequence[tuple[str, str]]) -> dict[str, int]:
    """token → id: 256 byte symbols, the same with ``</w>``, one per merge, then the specials."""
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(pair) for pair in merges]
    tokens += list(SPECIAL_TOKENS)
    vocab = {token: index for index, token in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise ModelLoadError("CLIP merges produce duplicate vocab entries")
    return vocab


class ClipTokenizer:
    """Text → CLIP token ids (no start/end tokens added; see :meth:`encode`).

    Built once per text encoder (≈0.25 s); called from any pool thread (the BPE cache is the
    only mutable state and is locked).
    """

    def __init__(self, merges: Sequence[tuple[str, str]], *, fix_text: bool = False) -> None:
        self.vocab = build_vocab(merges)
        self.inverse_vocab = {index: token for token, index in self.vocab.items()}
        self.ranks = {pair: rank for rank, pair in enumerate(merges)}
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {v: k for k, v in self.byte_encoder.items()}
        self.fix_text = fix_text
        self._cache: dict[str, tuple[int, ...]] = {}
        self._cache_lock = threading.Lock()

    @classmethod
    def from_file(cls, path: str | Path | None = None, *, fix_text: bool = False) -> ClipTokenizer:
        """Build from the gzipped merges file (default: the bundled one)."""
        return cls(read_merges(path), fix_text=fix_text)

    # -- text → ids -------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without start/end tokens (HF ``input_ids[1:-1]``)."""
        ids: list[int] = []
        for part in _SPECIAL_SPLIT.split(text):
            if not part:
                continue
            special = SPECIAL_TOKENS.get(part)
            if special is not None:
                ids.append(special)
                continue
            for piece in _PIECE_PATTERN.findall(self.normalize(part)):
                ids.extend(self._bpe_ids(piece))
        return ids

    def normalize(self, text: str) -> str:
        """NFC, whitespace runs → one space, lower-case (per character, as ``tokenizers`` does)."""
        if self.fix_text:
            import ftfy  # optional: only for the old slow-tokenizer behaviour

            text = ftfy.fix_text(text)
        if text.isascii():
            return _WHITESPACE.sub(" ", text).lower()
        text = unicodedata.normalize("NFC", text)
        text = _WHITESPACE.sub(" ", text)
        # Per-character lowering: str.lower() special-cases a word-final sigma, tokenizers doesn't.
        return "".join(ch.lower() for ch in text)

    def _bpe_ids(self, piece: str) -> tuple[int, ...]:
        cached = self._cache.get(piece)
        if cached is not None:
            return cached
        symbols = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
        ids = tuple(self.vocab[token] for token in self._bpe(symbols))
        if len(piece) > _BPE_CACHE_MAX_PIECE:
            return ids  # long pieces are rare and would let one prompt fill the cache's memory
        with self._cache_lock:
            if len(self._cache) >= _BPE_CACHE_LIMIT:
                self._cache.clear()
            self._cache[piece] = ids
        return ids

    def _bpe(self, symbols: str) -> list[str]:
        """Byte-level BPE of one piece in O(n log n): the reference result, bounded work.

        The reference (OpenAI's ``simple_tokenizer``, transformers' slow ``CLIPTokenizer``)
        merges the lowest-ranked adjacent pair everywhere, rescanning the whole word after each
        merge: quadratic, so one 16,000-letter word took seconds. Here every known pair sits in
        a heap keyed by (rank, position) over a linked list of symbols; popping the lowest gives
        the same merges in the same order, because each merge only creates pairs containing
        the new symbol, and in a learned merge table those rank after the merge that made the
        symbol (checked for the bundled file by the tokenizer tests). Equal ranks pop left to
        right, as the reference's left-to-right scan merges them; entries made stale by an
        earlier merge are skipped.
        """
        word: list = [*symbols[:-1], symbols[-1] + "</w>"]  # None marks a merged-away symbol
        count = len(word)
        if count == 1:
            return word
        ranks = self.ranks
        following = [*range(1, count), -1]
        preceding = list(range(-1, count - 1))
        heap = [
            (rank, i) for i, pair in enumerate(zip(word, word[1:])) if (rank := ranks.get(pair)) is not None
        ]
        heapq.heapify(heap)
        while heap:
            rank, i = heapq.heappop(heap)
            left, j = word[i], following[i]
            if left is None or j < 0 or ranks.get((left, word[j])) != rank:
                continue  # stale: one of the two symbols was merged away since
            merged = left + word[j]
            word[i], word[j] = merged, None
            after = following[j]
            following[i] = after
            if after >= 0:
                preceding[after] = i
                right_rank = ranks.get((merged, word[after]))
                if right_rank is not None:
                    heapq.heappush(heap, (right_rank, i))
            before = preceding[i]
            if before >= 0:
                left_rank = ranks.get((word[before], merged))
                if left_rank is not None:
                    heapq.heappush(heap, (left_rank, before))
        return [symbol for symbol in word if symbol is not None]

    # -- ids → text (debugging, tests) --------------------------------------------------------

    def decode(self, ids: Sequence[int]) -> str:
        """Readable text of ``ids`` (word ends become spaces)."""
        text = "".join(self.inverse_vocab[i] for i in ids).replace("</w>", " ")
        raw = bytearray(32 if ch == " " else self.byte_decoder[ch] for ch in text)
        return raw.decode("utf-8", errors="replace").strip()


T = TypeVar("T")


@dataclass(frozen=True)
class TokenWindow(Generic[T]):
    """One 77-token encoder input: ``tokens[i]`` has weight ``weights[i]``.

    A token is an id, or (textual inversion) a vector the encoder puts in that slot.
    """

    tokens: tuple[T | int, ...]
    weights: tuple[float, ...]


def split_into_windows(
    groups: Sequence[tuple[Sequence[T | int], float]],
    *,
    pad_token: int,
    max_length: int = CONTEXT_LENGTH,
) -> list[TokenWindow[T]]:
    """Cut weighted token groups into ``[START] + ≤75 tokens + [END] + pad`` windows.

    ComfyUI's rule: a group that does not fit in the current window closes it (END + padding)
    and starts the next one, unless the group has ``MAX_WORD_LENGTH`` tokens or more, in which
    case it fills the current window and continues in the next. An empty prompt gives one
    window. Special tokens always have weight 1.0.
    """
    windows: list[list[tuple[T | int, float]]] = []
    current: list[tuple[T | int, float]] = [(START_TOKEN, 1.0)]
    windows.append(current)
    for group_tokens, weight in groups:
        pending = list(group_tokens)
        splittable = len(pending) >= MAX_WORD_LENGTH
        while pending:
            room = max_length - 1 - len(current)
            if len(pending) <= room:
                current.extend((token, weight) for token in pending)
                pending = []
                continue
            if splittable:
                current.extend((token, weight) for token in pending[:room])
                current.append((END_TOKEN, 1.0))
                pending = pending[room:]
            else:
                current.append((END_TOKEN, 1.0))
                current.extend([(pad_token, 1.0)] * room)
            current = [(START_TOKEN, 1.0)]
            windows.append(current)
    current.append((END_TOKEN, 1.0))
    current.extend([(pad_token, 1.0)] * (max_length - len(current)))
    return [TokenWindow(tokens=tuple(t for t, _ in w), weights=tuple(x for _, x in w)) for w in windows]


def empty_window(pad_token: int, max_length: int = CONTEXT_LENGTH) -> tuple[int, ...]:
    """``[START, END, pad…]``: the sequence weighted tokens are interpolated from."""
    return (START_TOKEN, END_TOKEN) + (pad_token,) * (max_length - 2)
