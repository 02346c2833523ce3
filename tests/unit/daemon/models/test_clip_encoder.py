"""TextEncoder: ComfyUI-exact SD1.5/SDXL conditioning from tiny CLIP files and checkpoints."""

from __future__ import annotations

import threading

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon.models.clip import Conditioning, PromptError, TextEncoder, load_text_encoder
from daemon.models.io import ModelLoadError
from daemon.models.tokenizer import END_TOKEN, PAD_CLIP_G, PAD_CLIP_L, START_TOKEN, ClipTokenizer
from tests.helpers.tiny_models import clip_state_in_layout, make_tiny_checkpoint, make_tiny_clip

LONG_PROMPT = ", ".join(f"detail number {i}" for i in range(40))  # > 75 tokens → 2+ windows


@pytest.fixture(scope="module")
def tokenizer() -> ClipTokenizer:
    return ClipTokenizer.from_file()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clip")
    return {
        "l": make_tiny_clip(folder / "clip_l.safetensors", "l", "hf", seed=11),
        "g": make_tiny_clip(folder / "clip_g.safetensors", "g", "openclip", seed=12),
        "g_hf": make_tiny_clip(folder / "clip_g_hf.safetensors", "g", "hf", seed=12),
    }


@pytest.fixture(scope="module")
def sd15(files, tokenizer) -> TextEncoder:
    return load_text_encoder(clip_l=files["l"].path, dtype="fp32", tokenizer=tokenizer)


@pytest.fixture(scope="module")
def sdxl(files, tokenizer) -> TextEncoder:
    return load_text_encoder(
        clip_l=files["l"].path, clip_g=files["g"].path, dtype="fp32", tokenizer=tokenizer
    )


def _window_ids(tokenizer, text, pad):
    ids = tokenizer.encode(text)
    assert len(ids) <= 75
    return torch.tensor([[START_TOKEN, *ids, END_TOKEN] + [pad] * (75 - len(ids))])


def _ref_hidden(module, tokens):
    with torch.inference_mode():
        return module(input_ids=tokens, output_hidden_states=True)


# -- SD1.5 ---------------------------------------------------------------------------------------


def test_sd15_cond_is_the_final_normed_last_layer_and_pooled_is_unprojected(sd15, files, tokenizer):
    out = sd15.encode("a photo of a cat")
    assert isinstance(out, Conditioning) and sd15.kind == "sd15"
    assert (
        out.cond.shape == (1, 77, 128) and out.cond.dtype == torch.float32 and out.cond.device.type == "cpu"
    )
    ref = _ref_hidden(files["l"].reference, _window_ids(tokenizer, "a photo of a cat", PAD_CLIP_L))
    torch.testing.assert_close(out.cond, ref.last_hidden_state, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.pooled, ref.pooler_output, rtol=1e-4, atol=1e-5)


def test_sd15_clip_skip_minus_two_is_the_penultimate_layer_with_final_norm(sd15, files, tokenizer):
    out = sd15.encode("a photo of a cat", clip_skip=-2)
    ref_model = files["l"].reference
    ref = _ref_hidden(ref_model, _window_ids(tokenizer, "a photo of a cat", PAD_CLIP_L))
    with torch.inference_mode():
        expected = ref_model.final_layer_norm(ref.hidden_states[-2])
    torch.testing.assert_close(out.cond, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(
        out.pooled, ref.pooler_output, rtol=1e-4, atol=1e-5
    )  # pooled: last layer always


def test_sd15_clip_skip_minus_one_equals_the_default(sd15):
    assert torch.equal(sd15.encode("red car", clip_skip=-1).cond, sd15.encode("red car").cond)


def test_clip_skip_beyond_the_depth_falls_back_to_the_last_layer(sd15):
    assert torch.equal(sd15.encode("red car", clip_skip=-24).cond, sd15.encode("red car").cond)


@pytest.mark.parametrize("bad", [0, 1, True, 1.5, "-2"])
def test_invalid_clip_skip_is_a_prompt_error(sd15, bad):
    with pytest.raises(PromptError, match="clip_skip"):
        sd15.encode("x", clip_skip=bad)


def test_non_string_text_is_a_prompt_error(sd15):
    with pytest.raises(PromptError, match="string"):
        sd15.encode(b"bytes")


# -- SDXL ----------------------------------------------------------------------------------------


def test_sdxl_cond_concatenates_penultimate_l_and_g_without_final_norm(sdxl, files, tokenizer):
    text = "a majestic lion, golden hour"
    out = sdxl.encode(text)
    assert sdxl.kind == "sdxl"
    assert out.cond.shape == (1, 77, 256) and out.pooled.shape == (1, 128)
    ref_l = _ref_hidden(files["l"].reference, _window_ids(tokenizer, text, PAD_CLIP_L))
    ref_g = _ref_hidden(files["g"].reference, _window_ids(tokenizer, text, PAD_CLIP_G))
    expected = torch.cat([ref_l.hidden_states[-2], ref_g.hidden_states[-2]], dim=-1)
    torch.testing.assert_close(out.cond, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.pooled, ref_g.text_embeds, rtol=1e-4, atol=1e-5)


def test_sdxl_clip_skip_minus_one_is_the_last_layer_without_final_norm(sdxl, files, tokenizer):
    text = "a lion"
    out = sdxl.encode(text, clip_skip=-1)
    ref_l = _ref_hidden(files["l"].reference, _window_ids(tokenizer, text, PAD_CLIP_L))
    ref_g = _ref_hidden(files["g"].reference, _window_ids(tokenizer, text, PAD_CLIP_G))
    expected = torch.cat([ref_l.hidden_states[-1], ref_g.hidden_states[-1]], dim=-1)
    torch.testing.assert_close(out.cond, expected, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(out.cond[..., :128], ref_l.last_hidden_state)


def test_openclip_and_hf_clip_g_files_give_identical_conditioning(files, tokenizer):
    a = load_text_encoder(clip_l=files["l"].path, clip_g=files["g"].path, dtype="fp32", tokenizer=tokenizer)
    b = load_text_encoder(
        clip_l=files["l"].path, clip_g=files["g_hf"].path, dtype="fp32", tokenizer=tokenizer
    )
    for text in ("a (cat:1.3)", LONG_PROMPT):
        x, y = a.encode(text), b.encode(text)
        assert torch.equal(x.cond, y.cond) and torch.equal(x.pooled, y.pooled)


def test_long_prompts_give_several_windows_and_pooled_from_the_first_only(sdxl, files, tokenizer):
    out = sdxl.encode(LONG_PROMPT)
    windows = sdxl.tokenize(LONG_PROMPT)
    k = len(windows["clip_g"])
    assert k >= 2 and len(windows["clip_l"]) == k
    assert out.cond.shape == (1, 77 * k, 256)
    first = torch.tensor([list(windows["clip_g"][0].tokens)])
    second = torch.tensor([list(windows["clip_g"][1].tokens)])
    ref_first = _ref_hidden(files["g"].reference, first)
    ref_second = _ref_hidden(files["g"].reference, second)
    torch.testing.assert_close(out.pooled, ref_first.text_embeds, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.cond[:, 77:154, 128:], ref_second.hidden_states[-2], rtol=1e-4, atol=1e-5)
    assert windows["clip_l"][0].tokens[-1] == PAD_CLIP_L or windows["clip_l"][0].tokens[-1] == END_TOKEN
    assert windows["clip_g"][1].tokens[-1] in (PAD_CLIP_G, END_TOKEN)


def test_empty_prompt_encodes_one_window(sdxl, sd15):
    assert sdxl.encode("").cond.shape == (1, 77, 256)
    assert sd15.encode("").cond.shape == (1, 77, 128)


# -- weighting -----------------------------------------------------------------------------------


def test_weights_interpolate_from_the_empty_prompt_encoding_per_token(sd15, files, tokenizer):
    plain = sd15.encode("a cat on a mat")
    weighted = sd15.encode("a (cat:1.5) on a mat")
    windows = sd15.tokenize("a (cat:1.5) on a mat")["clip_l"]
    weights = torch.tensor(windows[0].weights)
    assert weights.tolist().count(1.5) == 1
    empty = _ref_hidden(files["l"].reference, _window_ids(tokenizer, "", PAD_CLIP_L)).last_hidden_state
    # Same ids as the plain prompt (segments tokenise the same here), so z is the plain encoding.
    assert list(windows[0].tokens) == list(sd15.tokenize("a cat on a mat")["clip_l"][0].tokens)
    w = weights[None, :, None]
    expected = torch.where(w != 1.0, (plain.cond - empty) * w + empty, plain.cond)
    torch.testing.assert_close(weighted.cond, expected, rtol=1e-4, atol=1e-5)
    unweighted = weights == 1.0
    assert torch.allclose(weighted.cond[0, unweighted], plain.cond[0, unweighted], atol=1e-5)
    torch.testing.assert_close(weighted.pooled, plain.pooled, rtol=1e-4, atol=1e-5)  # pooled unaffected


def test_weight_one_everywhere_leaves_the_encoding_untouched(sdxl):
    a, b = sdxl.encode("cat dog"), sdxl.encode("(cat:1.0) dog")
    assert sdxl.tokenize("cat dog") == sdxl.tokenize("(cat:1.0) dog")
    assert torch.equal(a.cond, b.cond) and torch.equal(a.pooled, b.pooled)


def test_sdxl_weighting_is_applied_per_encoder_before_concatenation(sdxl):
    plain = sdxl.encode("a cat")
    weighted = sdxl.encode("a (cat:2)")
    changed = (plain.cond - weighted.cond).abs().amax(dim=-1)[0]
    assert changed[2] > 0  # "cat" is token 2 (after START and "a")
    assert torch.all(changed[torch.arange(77) != 2] < 1e-5)


# -- loading -------------------------------------------------------------------------------------


def test_sdxl_checkpoint_gives_the_same_tensors_as_separate_files(files, tokenizer, tmp_path, sdxl):
    path = make_tiny_checkpoint(
        tmp_path / "sdxl.safetensors",
        "sdxl",
        clip_l_state=files["l"].hf_state,
        clip_g_state=files["g"].openclip_state,
    )
    from_ckpt = load_text_encoder(checkpoint=path, dtype="fp32", tokenizer=tokenizer)
    assert from_ckpt.kind == "sdxl"
    for text in ("a (cat:1.3) in the rain", LONG_PROMPT):
        a, b = from_ckpt.encode(text), sdxl.encode(text)
        assert torch.equal(a.cond, b.cond) and torch.equal(a.pooled, b.pooled)


def test_sd15_checkpoint_without_text_model_prefix_matches_the_separate_file(
    files, tokenizer, tmp_path, sd15
):
    old_style = clip_state_in_layout(files["l"].hf_state, "hf_old")
    path = make_tiny_checkpoint(
        tmp_path / "sd15.safetensors", "sd15", clip_l_state=old_style, dtype=torch.float16
    )
    from_ckpt = load_text_encoder(checkpoint=path, dtype="fp32", tokenizer=tokenizer)
    assert from_ckpt.kind == "sd15"
    a, b = from_ckpt.encode("a cat"), sd15.encode("a cat")
    torch.testing.assert_close(a.cond, b.cond, rtol=0.02, atol=0.02)  # fp16 file


def test_fp32_files_are_converted_to_bf16_and_footprint_is_measured(files, tokenizer):
    enc = load_text_encoder(
        clip_l=files["l"].path, clip_g=files["g"].path, tokenizer=tokenizer, strict_dtype=True
    )
    assert enc.dtype == torch.bfloat16 and enc.device == torch.device("cpu")
    for part in enc.parts:
        assert all(p.dtype == torch.bfloat16 and p.device.type == "cpu" for p in part.model.parameters())
    params = sum(p.numel() for part in enc.parts for p in part.model.parameters())
    assert enc.footprint_bytes == 2 * params
    out = enc.encode("a cat")
    assert out.cond.dtype == torch.float32 and torch.isfinite(out.cond).all()


def test_pickle_files_are_refused(tmp_path):
    bad = tmp_path / "clip_l.ckpt"
    bad.write_bytes(b"not really a pickle")
    with pytest.raises(ModelLoadError, match="pickle"):
        load_text_encoder(clip_l=bad)


def test_a_vae_file_is_not_a_clip(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "vae.safetensors"
    save_file({"decoder.conv_in.weight": torch.zeros(2, 2)}, str(path))
    with pytest.raises(ModelLoadError, match="not a CLIP text encoder"):
        load_text_encoder(clip_l=path)


def test_missing_key_in_a_file_is_named(files, tmp_path):
    from safetensors.torch import save_file

    state = dict(files["l"].hf_state)
    del state["text_model.encoder.layers.0.self_attn.v_proj.weight"]
    path = tmp_path / "broken.safetensors"
    save_file(state, str(path))
    with pytest.raises(
        ModelLoadError,
        match=r"broken.safetensors: missing keys text_model\.encoder\.layers\.0\.self_attn\.v_proj\.weight",
    ):
        load_text_encoder(clip_l=path)


def test_argument_combinations_are_checked(files):
    with pytest.raises(ValueError, match="clip_l"):
        load_text_encoder(clip_g=files["g"].path)
    with pytest.raises(ValueError, match="not both"):
        load_text_encoder(clip_l=files["l"].path, checkpoint=files["l"].path)


def test_unavailable_device_is_refused(files):
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(ModelLoadError, match="CUDA is not available"):
        load_text_encoder(clip_l=files["l"].path, device="cuda:1")


def test_concurrent_encodes_from_threads_match_sequential_results(sdxl):
    prompts = ["a cat", "a (dog:1.4)", LONG_PROMPT, "", "((sunset)) over the sea"]
    expected = {p: sdxl.encode(p) for p in prompts}
    results: dict[tuple[int, str], Conditioning] = {}
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            for p in prompts:
                results[(worker, p)] = sdxl.encode(p)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for (_, p), out in results.items():
        torch.testing.assert_close(out.cond, expected[p].cond, rtol=1e-5, atol=1e-6)


def test_auto_precision_picks_bf16_only_where_the_cpu_computes_it_natively(files, tokenizer):
    from daemon.models.clip import cpu_has_native, preferred_precision

    native = cpu_has_native(torch.bfloat16)
    assert preferred_precision(torch.device("cpu")) == ("bf16" if native else "fp32")
    enc = load_text_encoder(clip_l=files["l"].path, dtype="auto", tokenizer=tokenizer)
    assert enc.dtype == (torch.bfloat16 if native else torch.float32)


def test_half_precision_on_a_cpu_without_native_support_runs_in_fp32(files, tokenizer, caplog):
    from daemon.models.clip import cpu_has_native

    enc = load_text_encoder(clip_l=files["l"].path, dtype="bf16", tokenizer=tokenizer)
    if cpu_has_native(torch.bfloat16):
        assert enc.dtype == torch.bfloat16
    else:
        assert enc.dtype == torch.float32
        assert all(p.dtype == torch.float32 for p in enc.parts[0].model.parameters())
        assert "running the text encoders in fp32" in caplog.text


def test_a_weighted_phrase_that_does_not_fit_starts_the_next_window(sd15, tokenizer):
    filler = " ".join(["cat"] * 74)  # START + 74 tokens: 1 place left before END
    windows = sd15.tokenize(filler + " (red fox:1.2)")["clip_l"]
    assert len(windows) == 2
    fox = tokenizer.encode("red fox")
    assert list(windows[0].tokens[75:]) == [END_TOKEN, PAD_CLIP_L]
    assert list(windows[1].tokens[: 2 + len(fox)]) == [START_TOKEN, *fox, END_TOKEN]
    assert windows[1].weights[1 : 1 + len(fox)] == (1.2,) * len(fox)
    assert sd15.encode(filler + " (red fox:1.2)").cond.shape == (1, 154, 128)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(alphabet=st.sampled_from(list("ab (:)\\,.1e2-\n😀é")) | st.characters(), max_size=120))
def test_any_prompt_encodes_or_raises_a_typed_error(sdxl, prompt):
    try:
        out = sdxl.encode(prompt)
    except ValueError as exc:  # PromptWeightError / EmbeddingError are ValueErrors with a message
        assert str(exc)
        return
    k = len(sdxl.tokenize(prompt)["clip_l"])
    assert out.cond.shape == (1, 77 * k, 256) and out.pooled.shape == (1, 128)
    assert torch.isfinite(out.cond).all()


def test_weights_that_overflow_the_conditioning_are_a_prompt_error(sd15):
    with pytest.raises(PromptError, match="overflows"):
        sd15.encode("(cat:1e300)")
