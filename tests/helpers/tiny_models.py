"""Tiny random-weight models saved as .safetensors in each real key layout (test helpers).

Owns the builders the model tests use instead of multi-GB downloads. Each builder makes a
reference module (diffusers / transformers, built from a config, never from the hub), gives it
random weights from a fixed seed and writes its state dict in one of the layouts users have.
Plain functions, called from the test thread.

Sections (keep each owner's functions together):
  1. VAE builders and the checkpoint assembler — owned by the VAE engineer.
  2. CLIP builders — owned by the CLIP engineer (appended below section 1).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

# =============================================================================================
# 1. VAE builders and checkpoint assembler (VAE engineer)
# =============================================================================================

#: Four levels like the real SD/SDXL VAE (so the down-scale factor is 8), but narrow channels.
#: GroupNorm uses 32 groups in every SD VAE, so channel counts stay multiples of 32.
TINY_VAE_CONFIG: dict = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (32, 32, 64, 64),
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 64,
}

#: The real SD1.5 / SDXL VAE configuration (diffusers names).
FULL_VAE_CONFIG: dict = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 1024,
}


@dataclass(frozen=True)
class TinyVAE:
    """A saved VAE file plus the diffusers module it came from (fp32, eval mode)."""

    path: Path
    layout: str
    reference: torch.nn.Module  # diffusers.AutoencoderKL
    ldm_state: dict[str, torch.Tensor]  # the same weights in LDM layout (for checkpoints)


def build_diffusers_vae(config: Mapping | None = None, *, seed: int = 0, randomize: bool = True):
    """A ``diffusers.AutoencoderKL`` from ``config`` (default: tiny) with seeded random weights.

    ``randomize`` perturbs every tensor (GroupNorm scales/biases included, which diffusers
    initialises to 1/0), so a wrong mapping of any single tensor changes the outputs.
    """
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    model = AutoencoderKL(**dict(config or TINY_VAE_CONFIG))
    if randomize:
        generator = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for name, param in model.named_parameters():
                noise = torch.randn(param.shape, generator=generator) * 0.05
                if "norm" in name and name.endswith(".weight"):
                    param.copy_(1.0 + noise)
                else:
                    param.add_(noise)
    return model.eval()


def _vae_key_pairs(num_levels: int, enc_blocks: int, dec_blocks: int) -> list[tuple[str, str]]:
    """(diffusers prefix, LDM prefix) pairs, enumerated from the architecture.

    Written independently of the daemon's converter (which rewrites by pattern) so the two
    cross-check each other.
    """
    pairs: list[tuple[str, str]] = []
    for i in range(num_levels):
        for j in range(enc_blocks):
            pairs.append((f"encoder.down_blocks.{i}.resnets.{j}.", f"encoder.down.{i}.block.{j}."))
        if i < num_levels - 1:
            pairs.append((f"encoder.down_blocks.{i}.downsamplers.0.", f"encoder.down.{i}.downsample."))
        up = num_levels - 1 - i
        for j in range(dec_blocks):
            pairs.append((f"decoder.up_blocks.{i}.resnets.{j}.", f"decoder.up.{up}.block.{j}."))
        if i < num_levels - 1:
            pairs.append((f"decoder.up_blocks.{i}.upsamplers.0.", f"decoder.up.{up}.upsample."))
    for part in ("encoder", "decoder"):
        pairs.append((f"{part}.mid_block.resnets.0.", f"{part}.mid.block_1."))
        pairs.append((f"{part}.mid_block.resnets.1.", f"{part}.mid.block_2."))
        attn = f"{part}.mid_block.attentions.0."
        ldm_attn = f"{part}.mid.attn_1."
        for d_name, l_name in (
            ("group_norm.", "norm."),
            ("to_q.", "q."),
            ("to_k.", "k."),
            ("to_v.", "v."),
            ("to_out.0.", "proj_out."),
        ):
            pairs.append((attn + d_name, ldm_attn + l_name))
        pairs.append((f"{part}.conv_norm_out.", f"{part}.norm_out."))
    return pairs


def diffusers_vae_state_to_ldm(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a diffusers AutoencoderKL state dict to the LDM layout (4-D attention weights)."""
    num_levels = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("encoder.down_blocks."))
    enc_blocks = 1 + max(
        int(k.split(".")[4]) for k in state if k.startswith("encoder.down_blocks.0.resnets.")
    )
    dec_blocks = 1 + max(int(k.split(".")[4]) for k in state if k.startswith("decoder.up_blocks.0.resnets."))
    pairs = _vae_key_pairs(num_levels, enc_blocks, dec_blocks)
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        new_key = key
        for d_prefix, l_prefix in pairs:
            if key.startswith(d_prefix):
                new_key = l_prefix + key[len(d_prefix) :]
                break
        new_key = new_key.replace(".conv_shortcut.", ".nin_shortcut.")
        if ".mid.attn_1." in new_key and new_key.endswith(".weight") and tensor.ndim == 2:
            tensor = tensor.reshape(*tensor.shape, 1, 1)
        out[new_key] = tensor.detach().clone().contiguous()
    return out


def make_tiny_vae(
    path: str | Path,
    layout: str = "ldm",
    seed: int = 0,
    *,
    config: Mapping | None = None,
    dtype: torch.dtype = torch.float32,
) -> TinyVAE:
    """Save a tiny random VAE at ``path`` in ``layout`` (``"ldm"`` or ``"diffusers"``)."""
    if layout not in ("ldm", "diffusers"):
        raise ValueError(f"unknown VAE layout {layout!r}")
    model = build_diffusers_vae(config, seed=seed)
    diffusers_state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    ldm_state = diffusers_vae_state_to_ldm(diffusers_state)
    to_save = ldm_state if layout == "ldm" else diffusers_state
    path = Path(path)
    save_file({k: v.to(dtype) for k, v in to_save.items()}, str(path))
    return TinyVAE(path=path, layout=layout, reference=model, ldm_state=ldm_state)


#: Where each part lives inside a single-file checkpoint (see daemon/models/checkpoint.py).
CHECKPOINT_PREFIXES = {
    "sd15": {"vae": "first_stage_model.", "clip_l": "cond_stage_model.transformer.", "clip_g": None},
    "sdxl": {
        "vae": "first_stage_model.",
        "clip_l": "conditioner.embedders.0.transformer.",
        "clip_g": "conditioner.embedders.1.model.",
    },
}


def make_tiny_checkpoint(
    path: str | Path,
    kind: str,
    vae_state: Mapping[str, torch.Tensor] | None = None,
    clip_l_state: Mapping[str, torch.Tensor] | None = None,
    clip_g_state: Mapping[str, torch.Tensor] | None = None,
    *,
    with_unet: bool = True,
    dtype: torch.dtype | None = None,
) -> Path:
    """Assemble a single-file SD1.5/SDXL checkpoint from parts, each in its checkpoint layout.

    ``vae_state`` must be LDM layout (``TinyVAE.ldm_state``); ``clip_l_state`` HF layout (with
    or without ``text_model.``); ``clip_g_state`` OpenCLIP layout. A small placeholder UNet
    tensor is added (``with_unet``) because real checkpoints always carry one.
    """
    if kind not in CHECKPOINT_PREFIXES:
        raise ValueError(f"unknown checkpoint kind {kind!r}")
    prefixes = CHECKPOINT_PREFIXES[kind]
    if clip_g_state is not None and prefixes["clip_g"] is None:
        raise ValueError("an SD1.5 checkpoint has no CLIP-G")
    tensors: dict[str, torch.Tensor] = {}
    for part, state in (("vae", vae_state), ("clip_l", clip_l_state), ("clip_g", clip_g_state)):
        if state is None:
            continue
        for key, tensor in state.items():
            tensors[prefixes[part] + key] = tensor.detach().contiguous()
    if with_unet:
        generator = torch.Generator().manual_seed(1234)
        tensors["model.diffusion_model.input_blocks.0.0.weight"] = torch.randn(
            8, 4, 3, 3, generator=generator
        )
        tensors["model.diffusion_model.input_blocks.0.0.bias"] = torch.zeros(8)
    if dtype is not None:
        tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
    path = Path(path)
    save_file(tensors, str(path))
    return path


# =============================================================================================
# 2. CLIP builders (CLIP engineer) — append below this line
# =============================================================================================

#: Tiny CLIP text encoders: the REAL vocab (49408) and context (77) so tokenizer ids work, but
#: narrow and shallow. 128 wide = 2 heads of 64 (the real head width), so head splitting is tested.
TINY_CLIP_HIDDEN = 128
TINY_CLIP_LAYERS = 3
TINY_CLIP_MLP = 256

#: Full-size architectures (slow tests and benchmarks).
FULL_CLIP = {
    "l": {"hidden": 768, "layers": 12, "mlp": 3072},
    "g": {"hidden": 1280, "layers": 32, "mlp": 5120},
}


@dataclass(frozen=True)
class TinyClip:
    """A saved CLIP text-encoder file plus the transformers module it came from (fp32, eval)."""

    path: Path
    layout: str
    reference: torch.nn.Module  # CLIPTextModel (L) or CLIPTextModelWithProjection (G)
    hf_state: dict[str, torch.Tensor]  # HF layout with the text_model. prefix
    openclip_state: dict[str, torch.Tensor] | None  # G only: the same weights in OpenCLIP layout


def build_hf_clip_text(
    kind: str,
    *,
    seed: int = 0,
    hidden: int = TINY_CLIP_HIDDEN,
    layers: int = TINY_CLIP_LAYERS,
    mlp: int = TINY_CLIP_MLP,
    randomize: bool = True,
):
    """``transformers`` CLIP-L (``kind="l"``, quick_gelu, no projection) or CLIP-G (``"g"``,
    gelu, with projection), built from a config with seeded random weights (no hub).

    ``randomize`` perturbs LayerNorm scales and all biases (initialised to 1/0), so a wrong
    mapping of any tensor changes the outputs.
    """
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    if kind not in ("l", "g"):
        raise ValueError(f"unknown CLIP kind {kind!r}")
    config = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=hidden,
        intermediate_size=mlp,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 64,
        max_position_embeddings=77,
        hidden_act="quick_gelu" if kind == "l" else "gelu",
        projection_dim=hidden,
        layer_norm_eps=1e-5,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407 if kind == "l" else 0,
    )
    torch.manual_seed(seed)
    model = CLIPTextModel(config) if kind == "l" else CLIPTextModelWithProjection(config)
    if randomize:
        generator = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for name, param in model.named_parameters():
                noise = torch.randn(param.shape, generator=generator)
                if "layer_norm" in name and name.endswith(".weight"):
                    param.copy_(1.0 + 0.1 * noise)
                elif name.endswith(".bias"):
                    param.copy_(0.02 * noise)
    return model.eval()


def hf_clip_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights in the HF file layout (``text_model.`` prefix, ``text_projection``)."""
    out: dict[str, torch.Tensor] = {}
    for key, tensor in model.state_dict().items():
        if key.endswith("position_ids"):
            continue
        if not key.startswith(("text_model.", "text_projection.")):
            key = "text_model." + key
        out[key] = tensor.detach().clone().contiguous()
    return out


def hf_clip_state_to_openclip(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF-layout CLIP text weights → OpenCLIP layout (fused q,k,v; transposed projection).

    Written key by key from the OpenCLIP naming, independently of the daemon's converter.
    """
    p = "text_model."
    layers = 1 + max(int(k.split(".")[3]) for k in state if k.startswith(p + "encoder.layers."))
    out: dict[str, torch.Tensor] = {
        "token_embedding.weight": state[p + "embeddings.token_embedding.weight"],
        "positional_embedding": state[p + "embeddings.position_embedding.weight"],
        "ln_final.weight": state[p + "final_layer_norm.weight"],
        "ln_final.bias": state[p + "final_layer_norm.bias"],
        "logit_scale": torch.tensor(4.6052),
    }
    if "text_projection.weight" in state:
        out["text_projection"] = state["text_projection.weight"].t().contiguous()
    for n in range(layers):
        src = f"{p}encoder.layers.{n}."
        dst = f"transformer.resblocks.{n}."
        out[dst + "attn.in_proj_weight"] = torch.cat(
            [state[src + f"self_attn.{x}_proj.weight"] for x in ("q", "k", "v")], dim=0
        )
        out[dst + "attn.in_proj_bias"] = torch.cat(
            [state[src + f"self_attn.{x}_proj.bias"] for x in ("q", "k", "v")], dim=0
        )
        for kind in ("weight", "bias"):
            out[dst + f"attn.out_proj.{kind}"] = state[src + f"self_attn.out_proj.{kind}"]
            out[dst + f"ln_1.{kind}"] = state[src + f"layer_norm1.{kind}"]
            out[dst + f"ln_2.{kind}"] = state[src + f"layer_norm2.{kind}"]
            out[dst + f"mlp.c_fc.{kind}"] = state[src + f"mlp.fc1.{kind}"]
            out[dst + f"mlp.c_proj.{kind}"] = state[src + f"mlp.fc2.{kind}"]
    return {k: v.contiguous() for k, v in out.items()}


CLIP_LAYOUTS = ("hf", "hf_no_prefix", "hf_old", "openclip")


def clip_state_in_layout(state: Mapping[str, torch.Tensor], layout: str) -> dict[str, torch.Tensor]:
    """HF-layout weights re-keyed as ``layout`` (``hf_old``: no prefix + float position_ids)."""
    if layout == "hf":
        return dict(state)
    if layout in ("hf_no_prefix", "hf_old"):
        out = {k.removeprefix("text_model."): v for k, v in state.items()}
        if layout == "hf_old":
            positions = out["embeddings.position_embedding.weight"].shape[0]
            out["embeddings.position_ids"] = torch.arange(positions, dtype=torch.float32)[None]
        return out
    if layout == "openclip":
        return hf_clip_state_to_openclip(state)
    raise ValueError(f"unknown CLIP layout {layout!r}")


def make_tiny_clip(
    path: str | Path,
    kind: str,
    layout: str = "hf",
    seed: int = 0,
    *,
    dtype: torch.dtype = torch.float32,
    **sizes,
) -> TinyClip:
    """Save a tiny random CLIP-L (``kind="l"``) or CLIP-G (``"g"``) at ``path`` in ``layout``."""
    model = build_hf_clip_text(kind, seed=seed, **sizes)
    hf_state = hf_clip_state(model)
    to_save = clip_state_in_layout(hf_state, layout)
    path = Path(path)
    save_file({k: v.to(dtype) if v.is_floating_point() else v for k, v in to_save.items()}, str(path))
    openclip = hf_clip_state_to_openclip(hf_state) if kind == "g" else None
    return TinyClip(path=path, layout=layout, reference=model, hf_state=hf_state, openclip_state=openclip)


def random_clip_state(
    kind: str,
    *,
    hidden: int,
    layers: int,
    mlp: int,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """HF-layout CLIP text weights of any size drawn directly (no module init: fast at full size).

    Scaled like a trained model (std 0.02 matrices, LayerNorm scales near 1) so activations stay
    finite through 32 layers. ``kind="g"`` adds ``text_projection.weight``.
    """
    generator = torch.Generator().manual_seed(seed)

    def normal(*shape: int, std: float = 0.02, mean: float = 0.0) -> torch.Tensor:
        return (torch.randn(*shape, generator=generator) * std + mean).to(dtype)

    p = "text_model."
    state = {
        p + "embeddings.token_embedding.weight": normal(49408, hidden),
        p + "embeddings.position_embedding.weight": normal(77, hidden, std=0.01),
        p + "final_layer_norm.weight": normal(hidden, std=0.05, mean=1.0),
        p + "final_layer_norm.bias": normal(hidden),
    }
    for n in range(layers):
        b = f"{p}encoder.layers.{n}."
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            state[b + f"self_attn.{name}.weight"] = normal(hidden, hidden)
            state[b + f"self_attn.{name}.bias"] = normal(hidden)
        for name in ("layer_norm1", "layer_norm2"):
            state[b + f"{name}.weight"] = normal(hidden, std=0.05, mean=1.0)
            state[b + f"{name}.bias"] = normal(hidden)
        state[b + "mlp.fc1.weight"] = normal(mlp, hidden)
        state[b + "mlp.fc1.bias"] = normal(mlp)
        state[b + "mlp.fc2.weight"] = normal(hidden, mlp)
        state[b + "mlp.fc2.bias"] = normal(hidden)
    if kind == "g":
        state["text_projection.weight"] = normal(hidden, hidden)
    return state


def hf_clip_from_state(kind: str, state: Mapping[str, torch.Tensor], *, hidden: int, layers: int, mlp: int):
    """A transformers CLIP text module whose parameters ARE ``state``'s tensors (built on meta)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=hidden,
        intermediate_size=mlp,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 64,
        max_position_embeddings=77,
        hidden_act="quick_gelu" if kind == "l" else "gelu",
        projection_dim=hidden,
        bos_token_id=49406,
        eos_token_id=49407,
    )
    with torch.device("meta"):
        model = CLIPTextModel(config) if kind == "l" else CLIPTextModelWithProjection(config)
    wanted = set(model.state_dict())
    own = {}
    for key, tensor in state.items():
        bare = key.removeprefix("text_model.")
        own[key if key in wanted else bare] = tensor
    own = {k: v for k, v in own.items() if k in wanted}
    for key in wanted - set(own):  # position_ids, when the transformers version persists it
        own[key] = torch.arange(77)[None]
    model.load_state_dict(own, strict=True, assign=True)
    for name, buffer in list(model.named_buffers()):
        if buffer.is_meta:  # non-persistent buffers are not in the state dict: make them real
            owner_name, _, attr = name.rpartition(".")
            owner = model.get_submodule(owner_name)
            if attr != "position_ids":
                raise RuntimeError(f"unexpected meta buffer {name}")
            owner.register_buffer(attr, torch.arange(buffer.shape[-1]).expand(buffer.shape), persistent=False)
    return model.eval().requires_grad_(False)
