"""Our CLIP text transformer vs transformers' CLIPTextModel(WithProjection), every layout."""

from __future__ import annotations

import pytest
import torch

from daemon.models.clip_layouts import build_model, convert_state, detect_layout
from daemon.models.io import ModelLoadError, load_tensors
from daemon.models.tokenizer import PAD_CLIP_G, PAD_CLIP_L, ClipTokenizer, split_into_windows
from tests.helpers.tiny_models import CLIP_LAYOUTS, build_hf_clip_text, clip_state_in_layout, hf_clip_state

PROMPT = "a photo of an astronaut riding a horse on the moon, (masterpiece:1.2)"


@pytest.fixture(scope="module")
def tokenizer() -> ClipTokenizer:
    return ClipTokenizer.from_file()


def _tokens(tokenizer, pad: int, text: str = PROMPT) -> torch.Tensor:
    windows = split_into_windows(
        [(tokenizer.encode(text), 1.0), (tokenizer.encode("short"), 1.0)], pad_token=pad
    )
    return torch.tensor([list(w.tokens) for w in windows] * 2)  # batch of 2 rows


def _ours(state, kind: str, dtype=torch.float32):
    activation = "quick_gelu" if kind == "l" else "gelu"
    config, converted, layout = convert_state(
        dict(state), activation=activation, dtype=dtype, with_projection=(kind == "g"), what="test"
    )
    return build_model(config, converted, what="test"), layout


@pytest.fixture(scope="module")
def clip_l():
    return build_hf_clip_text("l", seed=1)


@pytest.fixture(scope="module")
def clip_g():
    return build_hf_clip_text("g", seed=2)


def test_clip_l_hidden_states_of_every_layer_and_pooled_match_transformers(clip_l, tokenizer):
    ours, layout = _ours(hf_clip_state(clip_l), "l")
    assert layout == "hf"
    assert ours.config.num_heads == 2 and ours.config.activation == "quick_gelu"
    tokens = _tokens(tokenizer, PAD_CLIP_L)
    with torch.inference_mode():
        ref = clip_l(input_ids=tokens, output_hidden_states=True)
        for index in range(ours.config.num_layers):
            hidden, _ = ours(tokens, layer_index=index, norm_hidden=False)
            torch.testing.assert_close(hidden, ref.hidden_states[index + 1], rtol=1e-4, atol=1e-5)
        last, pooled = ours(tokens, layer_index=None, pooled="raw")
    torch.testing.assert_close(last, ref.last_hidden_state, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(pooled, ref.pooler_output, rtol=1e-4, atol=1e-5)


def test_clip_g_hidden_states_and_projected_pooled_match_transformers(clip_g, tokenizer):
    ours, _ = _ours(hf_clip_state(clip_g), "g")
    assert ours.config.activation == "gelu" and ours.config.projection_dim == 128
    tokens = _tokens(tokenizer, PAD_CLIP_G)
    with torch.inference_mode():
        ref = clip_g(input_ids=tokens, output_hidden_states=True)
        for index in range(ours.config.num_layers):
            hidden, _ = ours(tokens, layer_index=index, norm_hidden=False)
            torch.testing.assert_close(hidden, ref.hidden_states[index + 1], rtol=1e-4, atol=1e-5)
        last, projected = ours(tokens, pooled="projected")
    torch.testing.assert_close(last, ref.last_hidden_state, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(projected, ref.text_embeds, rtol=1e-4, atol=1e-5)


def test_intermediate_layer_with_final_norm_is_the_normed_hf_hidden_state(clip_l, tokenizer):
    ours, _ = _ours(hf_clip_state(clip_l), "l")
    tokens = _tokens(tokenizer, PAD_CLIP_L)
    with torch.inference_mode():
        ref = clip_l(input_ids=tokens, output_hidden_states=True)
        expected = clip_l.final_layer_norm(ref.hidden_states[-2])
        hidden, _ = ours(tokens, layer_index=ours.config.num_layers - 2, norm_hidden=True)
    torch.testing.assert_close(hidden, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("layout", CLIP_LAYOUTS)
def test_every_layout_gives_identical_results(clip_g, tokenizer, layout):
    reference, _ = _ours(hf_clip_state(clip_g), "g")
    other, detected = _ours(clip_state_in_layout(hf_clip_state(clip_g), layout), "g")
    assert detected == ("openclip" if layout == "openclip" else "hf")
    tokens = _tokens(tokenizer, PAD_CLIP_G)
    with torch.inference_mode():
        for layer in (None, 1):
            a = reference(tokens, layer_index=layer, norm_hidden=False, pooled="projected")
            b = other(tokens, layer_index=layer, norm_hidden=False, pooled="projected")
            assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_layers_after_the_requested_one_are_skipped_without_changing_it(clip_l, tokenizer):
    ours, _ = _ours(hf_clip_state(clip_l), "l")
    tokens = _tokens(tokenizer, PAD_CLIP_L)
    with torch.inference_mode():
        early, none = ours(tokens, layer_index=0, norm_hidden=False, pooled="none")
        full, pooled = ours(tokens, layer_index=0, norm_hidden=False, pooled="raw")
    assert none is None and pooled is not None
    assert torch.equal(early, full)


def test_sizes_are_read_from_shapes(clip_g):
    ours, _ = _ours(hf_clip_state(clip_g), "g")
    c = ours.config
    assert (c.hidden_size, c.num_layers, c.intermediate_size, c.vocab_size, c.max_positions) == (
        128,
        3,
        256,
        49408,
        77,
    )


def test_bf16_conversion_on_load_stays_close_to_fp32(clip_l, tokenizer):
    fp32, _ = _ours(hf_clip_state(clip_l), "l")
    bf16, _ = _ours(hf_clip_state(clip_l), "l", dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in bf16.parameters())
    tokens = _tokens(tokenizer, PAD_CLIP_L)
    with torch.inference_mode():
        a, _ = fp32(tokens)
        b, _ = bf16(tokens)
    assert b.dtype == torch.bfloat16
    torch.testing.assert_close(b.float(), a, rtol=0.05, atol=0.08)


def test_missing_keys_are_named_in_the_files_spelling(clip_g):
    state = clip_state_in_layout(hf_clip_state(clip_g), "openclip")
    del state["transformer.resblocks.1.attn.in_proj_bias"]
    with pytest.raises(ModelLoadError, match=r"missing keys transformer\.resblocks\.1\.attn\.in_proj_bias"):
        _ours(state, "g")
    hf = hf_clip_state(clip_g)
    del hf["text_projection.weight"]
    with pytest.raises(ModelLoadError, match="text_projection.weight"):
        _ours(hf, "g")


def test_unknown_layout_is_refused_with_its_first_keys():
    with pytest.raises(ModelLoadError, match="not a CLIP text encoder.*first keys: decoder.conv_in.weight"):
        detect_layout({"decoder.conv_in.weight": torch.zeros(1)}, what="vae.safetensors")


def test_inconsistent_shapes_are_refused(clip_l):
    state = hf_clip_state(clip_l)
    state["text_model.encoder.layers.2.mlp.fc2.weight"] = torch.zeros(128, 64)
    with pytest.raises(ModelLoadError, match="layers.2.fc2.weight has shape"):
        _ours(state, "l")


def test_unrelated_keys_in_a_full_clip_file_are_ignored(clip_l, tmp_path):
    state = hf_clip_state(clip_l)
    state["vision_model.embeddings.patch_embedding.weight"] = torch.zeros(4, 3, 2, 2)
    state["logit_scale"] = torch.tensor(1.0)
    ours, _ = _ours(state, "l")
    assert ours.config.num_layers == 3


def test_load_tensors_round_trip_keeps_fp16_files_loadable(clip_l, tmp_path, tokenizer):
    from safetensors.torch import save_file

    path = tmp_path / "clip_l_fp16.safetensors"
    save_file({k: v.half() for k, v in hf_clip_state(clip_l).items()}, str(path))
    ours, _ = _ours(load_tensors(path), "l")
    tokens = _tokens(tokenizer, PAD_CLIP_L)
    with torch.inference_mode():
        out, _ = ours(tokens)
        ref = clip_l(input_ids=tokens).last_hidden_state
    torch.testing.assert_close(out, ref, rtol=0.02, atol=0.02)


def test_wrapper_prefixes_from_other_tools_are_found(clip_g, tokenizer):
    reference, _ = _ours(hf_clip_state(clip_g), "g")
    wrapped = {"clip_g.transformer." + k: v for k, v in hf_clip_state(clip_g).items()}
    other, layout = _ours(wrapped, "g")
    openclip = {"model." + k: v for k, v in clip_state_in_layout(hf_clip_state(clip_g), "openclip").items()}
    openclip["model.visual.transformer.resblocks.0.ln_1.weight"] = torch.ones(4)  # vision tower: ignored
    third, layout3 = _ours(openclip, "g")
    assert (layout, layout3) == ("hf", "openclip")
    tokens = _tokens(tokenizer, PAD_CLIP_G)
    with torch.inference_mode():
        a, b, c = (m(tokens, pooled="projected") for m in (reference, other, third))
    assert (
        torch.equal(a[0], b[0])
        and torch.equal(a[1], b[1])
        and torch.equal(a[0], c[0])
        and torch.equal(a[1], c[1])
    )


def test_a_file_with_several_text_encoders_is_refused(clip_l, clip_g):
    state = {"conditioner.embedders.0.transformer." + k: v for k, v in hf_clip_state(clip_l).items()}
    state.update(
        {
            "conditioner.embedders.1.model." + k: v
            for k, v in clip_state_in_layout(hf_clip_state(clip_g), "openclip").items()
        }
    )
    with pytest.raises(ModelLoadError, match="several text encoders.*checkpoint="):
        detect_layout(state, what="sdxl.safetensors")
