"""The reference CLIP BPE merge loop (OpenAI ``simple_tokenizer`` / transformers' slow
``CLIPTokenizer``), written out for tests and benchmarks to compare the daemon's bounded BPE
against: merge the lowest-ranked adjacent pair everywhere, rescan, repeat (quadratic)."""

from __future__ import annotations


def quadratic_reference_bpe(ranks: dict, symbols: str) -> list[str]:
    """The reference algorithm (OpenAI simple_tokenizer / transformers' slow CLIPTokenizer),
    written out here: merge the lowest-ranked pair everywhere, rescan, repeat."""
    word = [*symbols[:-1], symbols[-1] + "</w>"]
    while len(word) > 1:
        pairs = [(ranks[p], p) for p in zip(word, word[1:]) if p in ranks]
        if not pairs:
            break
        _, (first, second) = min(pairs)
        merged, i = [], 0
        while i < len(word):
            if i < len(word) - 1 and word[i] == first and word[i + 1] == second:
                merged.append(first + second)
                i += 2
            else:
                merged.append(word[i])
                i += 1
        word = merged
    return word
