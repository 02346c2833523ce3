"""The SD / SDXL VAE (AutoencoderKL) in plain torch, and the :class:`VAE` the daemon's pools call.

Owns: the encoder/decoder modules (LDM parameter names, so ``sdxl_vae.safetensors`` and a
checkpoint's ``first_stage_model.*`` load unchanged; diffusers files are renamed by
:mod:`daemon.models.vae_layouts`), :func:`load_vae`, and the call path of ``encode``/``decode``:
input validation, ComfyUI's pixel conventions, automatic tiling for large inputs and after an
out-of-memory error (:mod:`daemon.models.tiling`), and the fp16 NaN → fp32 retry.

Threads: loading runs on the daemon's executor; a loaded :class:`VAE` is read-only and its
``encode``/``decode`` may run concurrently on several pool worker threads (inference mode, no
per-call state on the object; the lazily built fp32 fallback copy is created under a lock).
"""

from __future__ import annotations

import copy
import logging
import threading
from collections.abc import Callable
from pathlib import Path

import psutil
import torch
import torch.nn.functional as F
from torch import nn

from daemon.models.errors import ModelInputError
from daemon.models.io import (
    ModelLoadError,
    cpu_has_native,
    load_tensors,
    parameter_bytes,
    read_keys,
    require_keys,
    resolve_device,
    resolve_dtype,
    verify_placement,
)
from daemon.models.tiling import TileSettings, tiled_map
from daemon.models.vae_layouts import VAEConfig, read_config, to_ldm

log = logging.getLogger(__name__)

#: Key prefixes under which a VAE may sit inside a bigger file (full checkpoint, diffusers bundle).
VAE_KEY_PREFIXES = ("first_stage_model.", "vae.")
#: Parts of a full checkpoint other than the VAE (UNet, SD1.5 CLIP, SDXL conditioner).
_CHECKPOINT_PART_PREFIXES = ("model.diffusion_model.", "cond_stage_model.", "conditioner.")
#: Leftovers of training found in some VAE files; ignored without a warning.
_IGNORED_PREFIXES = ("loss.", "model_ema.")
#: Working-memory estimates per batch item, in elements (ComfyUI's measured constants):
#: decode ≈ 2178·64 per latent pixel, encode ≈ 1767 per image pixel.
_DECODE_ELEMENTS_PER_LATENT_PIXEL = 2178 * 64
_ENCODE_ELEMENTS_PER_PIXEL = 1767
_MEMORY_HEADROOM = 0.8


class VAEInputError(ModelInputError):
    """An encode/decode argument has the wrong type, rank, channel count, size or dtype."""


# ---------------------------------------------------------------------------------------------
# Modules (LDM names)
# ---------------------------------------------------------------------------------------------


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(groups, channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """GN → SiLU → conv3×3 → GN → SiLU → conv3×3, plus the input (1×1 ``nin_shortcut`` if widths differ)."""

    def __init__(self, cin: int, cout: int, groups: int):
        super().__init__()
        self.norm1 = _norm(cin, groups)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = _norm(cout, groups)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # In-place SiLU on fresh GroupNorm outputs keeps one activation-sized buffer per step.
        h = self.conv1(F.silu(self.norm1(x), inplace=True))
        h = self.conv2(F.silu(self.norm2(h), inplace=True))
        shortcut = self.nin_shortcut(x) if self.nin_shortcut is not None else x
        return h.add_(shortcut)


class AttnBlock(nn.Module):
    """Single-head self-attention over all H·W positions; q/k/v/proj_out are 1×1 convs (LDM shapes)."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm = _norm(channels, groups)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        normed = self.norm(x)

        def tokens(t: torch.Tensor) -> torch.Tensor:  # B×C×H×W → B×1×HW×C
            return t.reshape(b, 1, c, h * w).transpose(-1, -2)

        attended = F.scaled_dot_product_attention(
            tokens(self.q(normed)), tokens(self.k(normed)), tokens(self.v(normed))
        )
        attended = attended.transpose(-1, -2).reshape(b, c, h, w)
        return self.proj_out(attended).add_(x)


class Downsample(nn.Module):
    """Zero-pad right/bottom by one, then a stride-2 3×3 conv (the asymmetric SD padding)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


def _phase_kernels(weight: torch.Tensor) -> torch.Tensor:
    """3×3 kernel applied after nearest ×2 upsampling → four 2×2 kernels on the original grid.

    Output pixel (2i+a, 2j+b) of "upsample, then 3×3 conv" only sees input rows (i-1, i) when
    a = 0 and (i, i+1) when a = 1 (likewise for columns), with the 3×3 taps that land on the
    same input pixel summed. Returned as C_out·4 × C_in × 2 × 2, phases (0,0), (0,1), (1,0), (1,1).
    """
    rows = (
        torch.stack([weight[:, :, 0], weight[:, :, 1] + weight[:, :, 2]], dim=2),  # a = 0
        torch.stack([weight[:, :, 0] + weight[:, :, 1], weight[:, :, 2]], dim=2),  # a = 1
    )
    phases = []
    for row in rows:
        phases.append(torch.stack([row[..., 0], row[..., 1] + row[..., 2]], dim=-1))  # b = 0
        phases.append(torch.stack([row[..., 0] + row[..., 1], row[..., 2]], dim=-1))  # b = 1
    return torch.cat(phases, dim=0)


class Upsample(nn.Module):
    """Nearest-neighbour ×2, then a 3×3 conv — computed without materialising the ×2 image.

    The four output phases are 2×2 convolutions of the input (see :func:`_phase_kernels`):
    the same result (up to float rounding) with 16 instead of 36 multiply-adds per input
    pixel and channel pair, which makes the decoder's upsampling levels ~1.5× faster.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        cout = self.conv.out_channels
        bias = self.conv.bias.repeat(4) if self.conv.bias is not None else None
        # Tap sums in fp32 so bf16/fp16 kernels carry one rounding, like the original weights.
        kernels = _phase_kernels(self.conv.weight.float()).to(x.dtype)
        phases = F.conv2d(F.pad(x, (1, 1, 1, 1)), kernels, bias)
        out = x.new_empty(b, cout, 2 * h, 2 * w)
        for index, (row, col) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
            out[:, :, row::2, col::2] = phases[
                :, index * cout : (index + 1) * cout, row : row + h, col : col + w
            ]
        return out


class MidBlock(nn.Module):
    """Resnet → attention → resnet at the lowest resolution."""

    def __init__(self, channels: int, groups: int, attention: bool):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, groups)
        self.attn_1 = AttnBlock(channels, groups) if attention else None
        self.block_2 = ResnetBlock(channels, channels, groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block_1(x)
        if self.attn_1 is not None:
            x = self.attn_1(x)
        return self.block_2(x)


class Level(nn.Module):
    """One resolution level: resnets (``block``) and an optional ``downsample``/``upsample``."""

    def __init__(self, cin: int, cout: int, blocks: int, groups: int):
        super().__init__()
        self.block = nn.ModuleList(ResnetBlock(cin if j == 0 else cout, cout, groups) for j in range(blocks))


class Encoder(nn.Module):
    """Image (in [-1, 1]) → 2·z_channels moments at 1/downscale resolution."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        ch, g = cfg.channels, cfg.norm_groups
        self.conv_in = nn.Conv2d(cfg.in_channels, ch[0], 3, padding=1)
        self.down = nn.ModuleList()
        for i, cout in enumerate(ch):
            level = Level(ch[i - 1] if i else ch[0], cout, cfg.encoder_blocks, g)
            if i < len(ch) - 1:
                level.downsample = Downsample(cout)
            self.down.append(level)
        self.mid = MidBlock(ch[-1], g, cfg.mid_attention)
        self.norm_out = _norm(ch[-1], g)
        self.conv_out = nn.Conv2d(ch[-1], 2 * cfg.z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for level in self.down:
            for block in level.block:
                x = block(x)
            if hasattr(level, "downsample"):
                x = level.downsample(x)
        x = self.mid(x)
        return self.conv_out(F.silu(self.norm_out(x), inplace=True))


class Decoder(nn.Module):
    """z_channels latent → image in roughly [-1, 1]; ``up[i]`` is level i (0 = full resolution)."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        ch, g = cfg.channels, cfg.norm_groups
        self.conv_in = nn.Conv2d(cfg.z_channels, ch[-1], 3, padding=1)
        self.mid = MidBlock(ch[-1], g, cfg.mid_attention)
        self.up = nn.ModuleList()
        for i, cout in enumerate(ch):
            cin = ch[i + 1] if i < len(ch) - 1 else ch[-1]
            level = Level(cin, cout, cfg.decoder_blocks, g)
            if i > 0:
                level.upsample = Upsample(cout)
            self.up.append(level)
        self.norm_out = _norm(ch[0], g)
        self.conv_out = nn.Conv2d(ch[0], cfg.out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            for block in level.block:
                x = block(x)
            if hasattr(level, "upsample"):
                x = level.upsample(x)
        return self.conv_out(F.silu(self.norm_out(x), inplace=True))


class AutoencoderKL(nn.Module):
    """Encoder + ``quant_conv`` and ``post_quant_conv`` + decoder, parameter names as LDM files."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.config = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        z2, e2 = 2 * cfg.z_channels, 2 * cfg.latent_channels
        self.quant_conv = nn.Conv2d(z2, e2, 1) if cfg.has_quant_conv else None
        self.post_quant_conv = (
            nn.Conv2d(cfg.latent_channels, cfg.z_channels, 1) if cfg.has_post_quant_conv else None
        )

    def encode_moments(self, x: torch.Tensor) -> torch.Tensor:
        """Pixels in [-1, 1] → mean ‖ logvar (2·latent_channels channels)."""
        moments = self.encoder(x)
        return self.quant_conv(moments) if self.quant_conv is not None else moments

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)


# ---------------------------------------------------------------------------------------------
# The public VAE
# ---------------------------------------------------------------------------------------------


def is_out_of_memory(exc: BaseException) -> bool:
    """True for CUDA/CPU allocator failures (torch raises OutOfMemoryError or a RuntimeError)."""
    oom_type = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
    if isinstance(exc, oom_type):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


class VAE:
    """A loaded SD/SDXL VAE: ComfyUI-compatible ``encode``/``decode``, shareable across threads.

    ``layout`` is the key layout the file had (``"ldm"`` or ``"diffusers"``); ``downscale`` the
    image/latent size ratio (8 for SD/SDXL). Latents are unscaled, as ComfyUI's LATENT holds them.
    """

    def __init__(
        self,
        model: AutoencoderKL,
        *,
        device: torch.device,
        dtype: torch.dtype,
        layout: str,
        source: Path,
        tiling: TileSettings,
    ):
        self._model = model
        self._fp32_model: AutoencoderKL | None = None
        self._fp32_lock = threading.Lock()
        self.config = model.config
        self.device = device
        self.dtype = dtype
        self.layout = layout
        self.source = source
        self.tiling = tiling
        self.latent_channels = model.config.latent_channels
        self.downscale = model.config.downscale
        self.footprint_bytes = parameter_bytes(model)

    def __repr__(self) -> str:
        return f"VAE({self.source.name}, layout={self.layout}, device={self.device}, dtype={self.dtype})"

    # -- public API -----------------------------------------------------------------------------

    def encode(
        self,
        pixels: torch.Tensor,
        *,
        tile: bool | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """IMAGE B×H×W×C in [0, 1] → unscaled latent B×latent_channels×H/8×W/8, float32 on CPU.

        Sizes that are not multiples of 8 are centre-cropped like ComfyUI's VAEEncode. The
        result is the posterior mean (deterministic). ComfyUI samples ``mean + std·noise``
        with its global RNG; pass ``generator`` to sample the same way, reproducibly.
        """
        with torch.inference_mode():
            latent = self._encode(pixels, tile, generator)
        return latent.clone()  # a normal tensor: callers may modify it outside inference mode

    def decode(self, latent: torch.Tensor, *, tile: bool | None = None) -> torch.Tensor:
        """Unscaled latent B×latent_channels×h×w → IMAGE B×8h×8w×3 float32 on CPU, in [0, 1]."""
        with torch.inference_mode():
            images = self._decode(latent, tile)
        return images.clone()

    def _encode(
        self, pixels: torch.Tensor, tile: bool | None, generator: torch.Generator | None
    ) -> torch.Tensor:
        x = self._image_to_model_input(pixels)
        item_bytes = _ENCODE_ELEMENTS_PER_PIXEL * x.shape[-2] * x.shape[-1] * self._element_size()
        # Image tiles start on multiples of the downscale factor so they map onto whole latent pixels.
        f = self.downscale
        tile_size = max(f, self.tiling.encode_tile // f * f)
        overlap = min(self.tiling.encode_overlap // f * f, tile_size - f)
        moments = self._run(
            lambda model, t: model.encode_moments(t),
            x,
            tile=tile,
            item_bytes=item_bytes,
            tile_size=tile_size,
            overlap=overlap,
            scale=1.0 / self.downscale,
            out_channels=2 * self.latent_channels,
        )
        mean, logvar = moments.split(self.latent_channels, dim=1)
        if generator is None:
            return mean.contiguous()
        std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
        noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype)
        return mean + std * noise

    def _decode(self, latent: torch.Tensor, tile: bool | None) -> torch.Tensor:
        z = self._check_latent(latent)
        item_bytes = _DECODE_ELEMENTS_PER_LATENT_PIXEL * z.shape[-2] * z.shape[-1] * self._element_size()
        images = self._run(
            lambda model, t: model.decode(t),
            z,
            tile=tile,
            item_bytes=item_bytes,
            tile_size=self.tiling.decode_tile,
            overlap=self.tiling.decode_overlap,
            scale=float(self.downscale),
            out_channels=self.config.out_channels,
        )
        return images.add_(1.0).div_(2.0).clamp_(0.0, 1.0).movedim(1, -1).contiguous()

    # -- input checks -----------------------------------------------------------------------------

    def _image_to_model_input(self, pixels: torch.Tensor) -> torch.Tensor:
        if not isinstance(pixels, torch.Tensor):
            raise VAEInputError(f"pixels must be a torch.Tensor, got {type(pixels).__name__}")
        if pixels.ndim != 4:
            raise VAEInputError(f"pixels must be B×H×W×C (4-D), got shape {tuple(pixels.shape)}")
        if not pixels.is_floating_point():
            raise VAEInputError(f"pixels must be a float tensor in [0, 1], got {pixels.dtype}")
        b, h, w, c = pixels.shape
        need = self.config.in_channels
        if c < need:
            raise VAEInputError(f"pixels have {c} channels, the VAE needs {need} (shape B×H×W×C)")
        f = self.downscale
        if b < 1 or h < f or w < f:
            raise VAEInputError(f"pixels of shape {tuple(pixels.shape)} are empty or smaller than {f}×{f}")
        # ComfyUI crops to a multiple of the downscale factor, centred.
        hh, ww = (h // f) * f, (w // f) * f
        top, left = (h % f) // 2, (w % f) // 2
        x = pixels[:, top : top + hh, left : left + ww, :need].to(dtype=torch.float32)
        return x.movedim(-1, 1).mul(2.0).sub_(1.0)

    def _check_latent(self, latent: torch.Tensor) -> torch.Tensor:
        if not isinstance(latent, torch.Tensor):
            raise VAEInputError(f"latent must be a torch.Tensor, got {type(latent).__name__}")
        if latent.ndim != 4:
            raise VAEInputError(f"latent must be B×C×h×w (4-D), got shape {tuple(latent.shape)}")
        if not latent.is_floating_point():
            raise VAEInputError(f"latent must be a float tensor, got {latent.dtype}")
        if latent.shape[1] != self.latent_channels:
            raise VAEInputError(
                f"latent has {latent.shape[1]} channels, this VAE takes {self.latent_channels} "
                f"(shape {tuple(latent.shape)})"
            )
        if latent.shape[0] < 1 or latent.shape[2] < 1 or latent.shape[3] < 1:
            raise VAEInputError(f"latent of shape {tuple(latent.shape)} is empty")
        return latent.to(dtype=torch.float32)

    # -- execution ----------------------------------------------------------------------------------

    def _element_size(self) -> int:
        return torch.empty((), dtype=self.dtype).element_size()

    def _free_bytes(self) -> int:
        if self.device.type == "cuda":
            free, _total = torch.cuda.mem_get_info(self.device)
            cached = torch.cuda.memory_reserved(self.device) - torch.cuda.memory_allocated(self.device)
            return free + cached
        return psutil.virtual_memory().available

    def _run(
        self,
        forward: Callable[[AutoencoderKL, torch.Tensor], torch.Tensor],
        x: torch.Tensor,
        *,
        tile: bool | None,
        item_bytes: int,
        tile_size: int,
        overlap: int,
        scale: float,
        out_channels: int,
    ) -> torch.Tensor:
        """Run ``forward`` over the batch (chunked/tiled to fit memory); float32 CPU result."""
        budget = int(self._free_bytes() * _MEMORY_HEADROOM)
        if self.tiling.max_working_bytes is not None:
            budget = min(budget, self.tiling.max_working_bytes)
        tiled = tile if tile is not None else item_bytes > budget
        # Batch items are independent: run as many at once as the budget allows (tiled: one).
        fitting = max(1, min(x.shape[0], budget // max(item_bytes, 1)))

        def attempt(model: AutoencoderKL, dtype: torch.dtype, use_tiles: bool) -> torch.Tensor:
            chunk = 1 if use_tiles else fitting
            outputs = []
            for start in range(0, x.shape[0], chunk):
                part = x[start : start + chunk].to(device=self.device, dtype=dtype)
                if use_tiles:
                    out = tiled_map(
                        lambda t: forward(model, t),
                        part,
                        tile=tile_size,
                        overlap=overlap,
                        scale=scale,
                        out_channels=out_channels,
                    )
                else:
                    out = forward(model, part).to(device="cpu", dtype=torch.float32)
                outputs.append(out)
            return torch.cat(outputs) if len(outputs) > 1 else outputs[0]

        try:
            result = attempt(self._model, self.dtype, tiled)
        except (RuntimeError, MemoryError) as exc:
            if tiled or tile is False or not (isinstance(exc, MemoryError) or is_out_of_memory(exc)):
                raise
            log.warning("VAE ran out of memory on %s; retrying with tiles", self.device)
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            tiled = True
            result = attempt(self._model, self.dtype, tiled)

        if self.dtype == torch.float16 and not torch.isfinite(result).all():
            log.warning("VAE produced NaN/Inf in fp16 (%s); retrying in fp32", self.source.name)
            result = attempt(self._float32_model(), torch.float32, tiled)
        return result

    def _float32_model(self) -> AutoencoderKL:
        """An fp32 copy for the NaN retry, built once on first need (under a lock)."""
        with self._fp32_lock, torch.inference_mode(False):  # ordinary parameters, like the original
            if self._fp32_model is None:
                self._fp32_model = copy.deepcopy(self._model).to(torch.float32)
            return self._fp32_model


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def _vae_prefix(keys: list[str]) -> str:
    for prefix in VAE_KEY_PREFIXES:
        if any(k.startswith(prefix + "decoder.") for k in keys):
            return prefix
    return ""


def load_vae(
    path: str | Path,
    *,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype = "bf16",
    tiling: TileSettings | None = None,
    strict_dtype: bool = False,
) -> VAE:
    """Load a VAE from a standalone file (LDM or diffusers keys) or a full SD1.5/SDXL checkpoint.

    Tensors are memory-mapped and converted to ``dtype`` while being copied into the module
    on ``device``, so a large file is never held twice. Raises :class:`ModelLoadError` for
    pickle files, files that are not VAEs, and incomplete files (naming the missing keys).

    On a CPU without native bf16/fp16 convolutions a half precision is replaced by fp32 with a
    warning (ComfyUI runs the VAE in fp32 on CPU as well); ``strict_dtype=True`` keeps it.
    The chosen precision is in ``VAE.dtype``.
    """
    path = Path(path)
    torch_dtype = resolve_dtype(dtype)
    torch_device = resolve_device(device)
    if torch_device.type == "cpu" and not strict_dtype and not cpu_has_native(torch_dtype):
        log.warning(
            "%s: this CPU has no native %s convolutions (they would run ~100x slower than fp32); "
            "running the VAE in fp32",
            path.name,
            torch_dtype,
        )
        torch_dtype = torch.float32
    keys = read_keys(path)
    prefix = _vae_prefix(keys)
    if not prefix and any(k.startswith(_CHECKPOINT_PART_PREFIXES) for k in keys):
        raise ModelLoadError(f"{path.name}: this checkpoint contains no VAE (no first_stage_model.* tensors)")
    state = load_tensors(path, prefix=prefix)
    try:
        state, layout = to_ldm(state)
        config = read_config(state)
    except ModelLoadError as exc:
        raise ModelLoadError(f"{path.name}: {exc}") from None

    with torch.device("meta"):
        model = AutoencoderKL(config)
    model = model.to(torch_dtype).to_empty(device=torch_device).eval()
    model.requires_grad_(False)

    expected = model.state_dict().keys()
    require_keys(state, expected, what=f"{path.name} (VAE, {layout} layout)")
    unexpected = sorted(k for k in state if k not in expected and not k.startswith(_IGNORED_PREFIXES))
    if unexpected:
        log.warning(
            "%s: ignoring %d unexpected VAE tensors: %s",
            path.name,
            len(unexpected),
            ", ".join(unexpected[:10]),
        )
    for name, tensor in model.state_dict().items():
        if tuple(state[name].shape) != tuple(tensor.shape):
            raise ModelLoadError(
                f"{path.name}: tensor {name} has shape {tuple(state[name].shape)}, expected {tuple(tensor.shape)}"
            )
    with torch.no_grad():
        model.load_state_dict({k: state[k] for k in expected}, strict=True)
    verify_placement(model, torch_device, torch_dtype)

    if torch_dtype == torch.float16:
        log.warning(
            "%s: VAE forced to fp16; the stock SDXL VAE overflows in fp16, outputs are checked "
            "for NaN/Inf and recomputed in fp32 when that happens",
            path.name,
        )
    vae = VAE(
        model,
        device=torch_device,
        dtype=torch_dtype,
        layout=layout,
        source=path,
        tiling=tiling or TileSettings(),
    )
    log.info("loaded %r: %d MiB of weights", vae, vae.footprint_bytes >> 20)
    return vae
