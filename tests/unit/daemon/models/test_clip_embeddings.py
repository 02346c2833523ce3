"""Textual inversion: ``embedding:name`` puts the file's vectors in the token slots."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from daemon.models.clip import load_text_encoder
from daemon.models.embeddings import EmbeddingError
from daemon.models.tokenizer import ClipTokenizer
from tests.helpers.tiny_models import make_tiny_clip

EMBED_KEY = "text_model.embeddings.token_embedding.weight"


@pytest.fixture(scope="module")
def tokenizer() -> ClipTokenizer:
    return ClipTokenizer.from_file()


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tokenizer):
    folder = tmp_path_factory.mktemp("ti")
    l_file = make_tiny_clip(folder / "clip_l.safetensors", "l", seed=21)
    g_file = make_tiny_clip(folder / "clip_g.safetensors", "g", seed=22)
    embeddings = folder / "embeddings"
    (embeddings / "sub").mkdir(parents=True)

    def rows(file, *words):
        table = file.hf_state[EMBED_KEY]
        return torch.stack([table[tokenizer.encode(w)[0]] for w in words])

    # SD1-style file: one tensor (A1111's emb_params) = the embedding of "cat".
    save_file({"emb_params": rows(l_file, "cat")}, str(embeddings / "kitty.safetensors"))
    # Two vectors in a subfolder: "red" then "cat".
    save_file({"emb_params": rows(l_file, "red", "cat")}, str(embeddings / "sub" / "redcat.safetensors"))
    # SDXL-style file with per-encoder vectors.
    save_file(
        {"clip_l": rows(l_file, "dog"), "clip_g": rows(g_file, "dog")}, str(embeddings / "puppy.safetensors")
    )
    (embeddings / "pickled.pt").write_bytes(b"\x80\x04pickle")
    save_file({"emb_params": torch.zeros(1, 64)}, str(embeddings / "narrow.safetensors"))
    sd15 = load_text_encoder(clip_l=l_file.path, dtype="fp32", embeddings_dir=embeddings, tokenizer=tokenizer)
    sdxl = load_text_encoder(
        clip_l=l_file.path, clip_g=g_file.path, dtype="fp32", embeddings_dir=embeddings, tokenizer=tokenizer
    )
    plain = load_text_encoder(clip_l=l_file.path, dtype="fp32", tokenizer=tokenizer)
    return sd15, sdxl, plain


def test_single_vector_embedding_equals_the_word_it_copies(setup):
    sd15, _, _ = setup
    torch.testing.assert_close(
        sd15.encode("a embedding:kitty").cond, sd15.encode("a cat").cond, rtol=0, atol=1e-6
    )


def test_multi_vector_embedding_in_a_subfolder(setup):
    sd15, _, _ = setup
    torch.testing.assert_close(
        sd15.encode("embedding:sub/redcat sat").cond, sd15.encode("red cat sat").cond, rtol=0, atol=1e-6
    )


def test_sdxl_embedding_uses_each_encoders_own_vectors(setup):
    _, sdxl, _ = setup
    a, b = sdxl.encode("a embedding:puppy"), sdxl.encode("a dog")
    torch.testing.assert_close(a.cond, b.cond, rtol=0, atol=1e-6)
    torch.testing.assert_close(a.pooled, b.pooled, rtol=0, atol=1e-6)


def test_weighted_embedding_and_trailing_comma(setup):
    sd15, _, _ = setup
    torch.testing.assert_close(
        sd15.encode("(a embedding:kitty:1.3)").cond, sd15.encode("(a cat:1.3)").cond, rtol=0, atol=1e-5
    )
    torch.testing.assert_close(
        sd15.encode("a embedding:kitty, red").cond, sd15.encode("a cat , red").cond, rtol=0, atol=1e-6
    )


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ("embedding:nothere", "not found"),
        ("embedding:pickled", "pickle"),
        ("embedding:narrow", "width 64"),
        ("embedding:../clip_l", "not found"),
        ("a embedding:", "empty embedding name"),
    ],
)
def test_unusable_embeddings_are_clear_errors(setup, prompt, message):
    sd15, _, _ = setup
    with pytest.raises(EmbeddingError, match=message):
        sd15.encode(prompt)


def test_without_an_embeddings_folder_embedding_syntax_is_an_error(setup):
    _, _, plain = setup
    with pytest.raises(EmbeddingError, match="no embeddings folder"):
        plain.encode("embedding:kitty")
    assert plain.encode("myembedding:kitty").cond.shape == (1, 77, 128)  # only " embedding:" words count
