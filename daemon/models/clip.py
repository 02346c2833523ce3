"""Text encoding for SD1.5 (CLIP-L) and SDXL (CLIP-L ‖ CLIP-G), ComfyUI's ``CLIPTextEncode``.

Owns the public text-encoder API the daemon's pools use: :class:`Conditioning`,
:class:`TextEncoder` and :func:`load_text_encoder` (standalone CLIP files in HF/OpenCLIP layout
or the CLIP parts of a full SD1.5/SDXL checkpoint).

What ComfyUI does, and so what this does (facts from ComfyUI's ``sd1_clip.py``,
``sdxl_clip.py``, ``clip_model.py``):

* prompt → weighted segments (``prompt_weights``) → token groups (one per segment, split
  before ``embedding:`` words) → 77-token windows (``tokenizer.split_into_windows``); CLIP-L
  pads with 49407, CLIP-G with 0;
* all windows are encoded as one batch; when any token weight ≠ 1 the empty prompt
  ``[START, END, pad…]`` is encoded in the same batch and every weighted token vector becomes
  ``e + w·(z − e)`` (per encoder, per window, before the L‖G concatenation);
* SD1.5: last layer with final LayerNorm; pooled = final-normed last layer at the first
  end-of-text token of the first window, NOT projected (``SD1CheckpointClipModel``), [1, 768];
* SDXL: both encoders' penultimate layer WITHOUT final LayerNorm, windows concatenated on the
  sequence axis, then L and G on the feature axis → [1, 77·k, 2048]; pooled = CLIP-G's last
  layer, final-normed, projected, first window only → [1, 1280];
* ``clip_skip`` = CLIPSetLastLayer: −1 last, −2 penultimate…; the final LayerNorm is applied
  to that layer for SD1.5 and not for SDXL; a value beyond the encoder's depth falls back to
  the final-normed last layer (ComfyUI's rule, per encoder); ``None`` = the defaults above.

Compute runs in the loaded dtype (bf16 by default; ComfyUI computes in fp32 from fp16
weights, so bf16 results differ from it by bf16 rounding; use ``dtype="fp32"`` for the closest
match). Outputs are float32 CPU tensors.

Threads: a :class:`TextEncoder` is read-only after loading; :meth:`TextEncoder.encode` runs
under ``torch.inference_mode()`` and may be called from several pool threads at once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from daemon.models.checkpoint import detect_checkpoint
from daemon.models.clip_layouts import build_model, convert_state
from daemon.models.clip_model import Activation, ClipTextModel, EmbeddingOverride
from daemon.models.embeddings import EmbeddingError, EmbeddingLibrary, TextualInversion
from daemon.models.errors import ModelInputError
from daemon.models.io import (
    ModelLoadError,
    cpu_has_native,
    load_tensors,
    parameter_bytes,
    resolve_device,
    resolve_dtype,
    verify_placement,
)
from daemon.models.prompt_weights import EMBEDDING_PREFIX, parse_weighted_prompt, split_embedding_words
from daemon.models.tokenizer import (
    PAD_CLIP_G,
    PAD_CLIP_L,
    ClipTokenizer,
    TokenWindow,
    empty_window,
    split_into_windows,
)

log = logging.getLogger(__name__)

#: ComfyUI tells bigG from CLIP-L by depth (a 31st layer exists only in bigG).
_BIGG_MIN_LAYERS = 31


class PromptError(ModelInputError):
    """The text or options given to :meth:`TextEncoder.encode` cannot be encoded."""


@dataclass(frozen=True)
class Conditioning:
    """What ComfyUI's CLIPTextEncode returns: ``cond`` and its ``pooled_output``."""

    cond: torch.Tensor  # float32 CPU [1, 77*k, D]  (D = 768 SD1.5, 2048 SDXL)
    pooled: torch.Tensor | None  # float32 CPU [1, P]  (768 SD1.5 un-projected, 1280 SDXL)


@dataclass(frozen=True)
class EmbeddingSlot:
    """Row ``row`` of a textual inversion, standing in one token position."""

    inversion: TextualInversion
    row: int


@dataclass(frozen=True)
class EncoderPart:
    """One text encoder inside a :class:`TextEncoder` and how ComfyUI reads it out."""

    name: Literal["clip_l", "clip_g"]
    model: ClipTextModel
    pad_token: int
    norm_hidden: bool  # ComfyUI layer_norm_hidden_state
    default_layer: int | None  # None = "last" (final-normed); negative = hidden layer
    pooled: Literal["none", "raw", "projected"]

    def layer_index(self, clip_skip: int | None) -> int | None:
        requested = clip_skip if clip_skip is not None else self.default_layer
        depth = len(self.model.layers)
        if requested is None or abs(requested) > depth:
            return None
        return depth + requested


class TextEncoder:
    """A loaded SD1.5 or SDXL text encoder producing ComfyUI-exact conditioning.

    Owns its encoders' weights (read-only), the shared tokenizer and the embeddings library.
    Built on a loading thread; :meth:`encode` is called by the daemon's pool threads,
    concurrently, each call under its own ``torch.inference_mode()``.
    """

    def __init__(
        self,
        *,
        kind: Literal["sd15", "sdxl"],
        parts: tuple[EncoderPart, ...],
        tokenizer: ClipTokenizer,
        device: torch.device,
        dtype: torch.dtype,
        embeddings: EmbeddingLibrary | None = None,
    ) -> None:
        self.kind = kind
        self.parts = parts
        self.tokenizer = tokenizer
        self.device = device
        self.dtype = dtype
        self.embeddings = embeddings
        self.footprint_bytes = sum(parameter_bytes(part.model) for part in parts)

    # -- prompt → windows --------------------------------------------------------------------

    def token_groups(self, text: str) -> list[tuple[list[int | EmbeddingSlot], float]]:
        """Weighted token groups of ``text`` (one per segment piece / embedding), in order."""
        groups: list[tuple[list[int | EmbeddingSlot], float]] = []
        for segment in parse_weighted_prompt(text):
            for piece in split_embedding_words(segment.text):
                if piece.startswith(EMBEDDING_PREFIX):
                    slots, piece = self._embedding(piece[len(EMBEDDING_PREFIX) :])
                    groups.append((slots, segment.weight))
                    if not piece:
                        continue
                groups.append((list(self.tokenizer.encode(piece)), segment.weight))
        return groups

    def _embedding(self, spec: str) -> tuple[list[int | EmbeddingSlot], str]:
        """Slots of the embedding named at the start of ``spec`` and the text left after it."""
        words = spec.strip("\n").split()
        if not words:
            raise EmbeddingError("empty embedding name after 'embedding:'")
        name, leftover = words[0], " ".join(words[1:])
        if self.embeddings is None:
            raise EmbeddingError(f"prompt uses embedding:{name} but no embeddings folder is configured")
        try:
            inversion = self.embeddings.get(name)
        except EmbeddingError:
            stripped = name.strip(",")  # "embedding:name," — ComfyUI retries without commas
            if stripped == name or not stripped:
                raise
            inversion = self.embeddings.get(stripped)
            leftover = f"{name[len(stripped) :]} {leftover}"
        counts = {
            part.name: inversion.vectors_for(part.name, part.model.config.hidden_size).shape[0]
            for part in self.parts
        }
        rows = counts[self.parts[0].name]
        if any(count != rows for count in counts.values()):
            raise EmbeddingError(
                f"embedding {inversion.name!r} has different vector counts per encoder: {counts}"
            )
        return [EmbeddingSlot(inversion, row) for row in range(rows)], leftover

    def tokenize(self, text: str) -> dict[str, list[TokenWindow]]:
        """The 77-token windows each encoder sees for ``text`` (by encoder name)."""
        groups = self.token_groups(text)
        return {p.name: split_into_windows(groups, pad_token=p.pad_token) for p in self.parts}

    # -- encoding ------------------------------------------------------------------------------

    def encode(self, text: str, *, clip_skip: int | None = None) -> Conditioning:
        """Conditioning for ``text`` exactly as ComfyUI's CLIPTextEncode builds it."""
        if not isinstance(text, str):
            raise PromptError(f"text must be a string, not {type(text).__name__}")
        if clip_skip is not None and (
            isinstance(clip_skip, bool) or not isinstance(clip_skip, int) or clip_skip >= 0
        ):
            raise PromptError(
                f"clip_skip must be None or a negative int (-1 = last layer), not {clip_skip!r}"
            )
        groups = self.token_groups(text)
        outputs: list[torch.Tensor] = []
        pooled: torch.Tensor | None = None
        for part in self.parts:
            windows = split_into_windows(groups, pad_token=part.pad_token)
            cond, part_pooled = self._encode_windows(part, windows, clip_skip)
            outputs.append(cond)
            if part_pooled is not None:
                pooled = part_pooled
        length = min(out.shape[1] for out in outputs)
        cond = torch.cat([out[:, :length] for out in outputs], dim=-1)
        return Conditioning(cond=cond, pooled=pooled)

    def _encode_windows(
        self, part: EncoderPart, windows: list[TokenWindow], clip_skip: int | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        weights = torch.tensor([w.weights for w in windows], dtype=torch.float32)
        has_weights = bool((weights != 1.0).any())
        rows = [[t if isinstance(t, int) else 0 for t in w.tokens] for w in windows]
        if has_weights:
            rows.append(list(empty_window(part.pad_token, len(rows[0]))))
        width = part.model.config.hidden_size
        overrides = [
            EmbeddingOverride(r, p, t.inversion.vectors_for(part.name, width)[t.row])
            for r, w in enumerate(windows)
            for p, t in enumerate(w.tokens)
            if isinstance(t, EmbeddingSlot)
        ]
        tokens = torch.tensor(rows, dtype=torch.long, device=self.device)
        with torch.inference_mode():
            hidden, pooled = part.model(
                tokens,
                layer_index=part.layer_index(clip_skip),
                norm_hidden=part.norm_hidden,
                pooled=part.pooled,
                overrides=overrides,
            )
            hidden = hidden.float().cpu()
            if has_weights:
                empty = hidden[-1]
                z = hidden[:-1]
                w = weights.unsqueeze(-1)
                hidden = torch.where(w != 1.0, (z - empty) * w + empty, z)
                if not torch.isfinite(hidden).all():
                    raise PromptError("prompt weights are so large that the conditioning overflows float32")
            cond = hidden.reshape(1, -1, hidden.shape[-1])
            first_pooled = pooled[0:1].float().cpu() if pooled is not None else None
        # Cloned outside inference mode: callers get ordinary tensors they may modify in place.
        return cond.clone(), (first_pooled.clone() if first_pooled is not None else None)


# -- loading -------------------------------------------------------------------------------------


def _load_part(
    state: dict[str, torch.Tensor], *, role: Literal["clip_l", "clip_g"], dtype: torch.dtype, what: str
) -> ClipTextModel:
    activation: Activation = "quick_gelu" if role == "clip_l" else "gelu"
    config, converted, _layout = convert_state(
        state, activation=activation, dtype=dtype, with_projection=(role == "clip_g"), what=what
    )
    return build_model(config, converted, what=what)


def _depth(state: dict[str, torch.Tensor]) -> int:
    markers = ("encoder.layers.", "transformer.resblocks.")
    found = [
        int(k.split(m, 1)[1].split(".", 1)[0])
        for k in state
        for m in markers
        if m in k and k.split(m, 1)[1].split(".", 1)[0].isdigit()
    ]
    return max(found, default=-1) + 1


def preferred_precision(device: torch.device) -> str:
    """The fastest safe precision for text encoders on ``device`` (what ``dtype="auto"`` picks).

    bf16 is only fast on CPUs with AVX512-BF16 or AMX; elsewhere PyTorch emulates it and a
    CLIP forward is several times slower than fp32 (measured: 6× on an AVX2-only CPU).
    """
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type == "cpu":
        return "bf16" if cpu_has_native(torch.bfloat16) else "fp32"
    return "fp32"


def load_text_encoder(
    *,
    clip_l: str | Path | None = None,
    clip_g: str | Path | None = None,
    checkpoint: str | Path | None = None,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype = "bf16",
    embeddings_dir: str | Path | None = None,
    tokenizer: ClipTokenizer | None = None,
    strict_dtype: bool = False,
) -> TextEncoder:
    """Load an SD1.5 (``clip_l``) or SDXL (``clip_l`` + ``clip_g``) text encoder.

    ``checkpoint`` instead takes both from a full SD1.5/SDXL ``.safetensors`` checkpoint.
    Weights are converted to ``dtype`` on load and placed on ``device`` (verified);
    ``dtype="auto"`` picks :func:`preferred_precision` for the device. On a CPU without native
    bf16/fp16 matmuls a half precision is replaced by fp32 with a warning (emulated bf16 is ~6×
    slower; ComfyUI computes the text encoders in fp32 anyway); ``strict_dtype=True`` keeps it.
    The chosen precision is in ``TextEncoder.dtype``.
    ``tokenizer`` lets callers share one already-built tokenizer.
    """
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(preferred_precision(torch_device) if dtype == "auto" else dtype)
    if torch_device.type == "cpu" and not strict_dtype and not cpu_has_native(torch_dtype):
        log.warning(
            "this CPU has no native %s matmuls (a CLIP forward would run ~6x slower than fp32); "
            "running the text encoders in fp32",
            torch_dtype,
        )
        torch_dtype = torch.float32
    if checkpoint is not None:
        if clip_l is not None or clip_g is not None:
            raise ValueError("pass either checkpoint= or clip_l=/clip_g=, not both")
        info = detect_checkpoint(checkpoint)
        name = Path(checkpoint).name
        state_l = load_tensors(checkpoint, prefix=info.clip_l_prefix)
        state_g = load_tensors(checkpoint, prefix=info.clip_g_prefix) if info.clip_g_prefix else None
        what_l, what_g = f"{name} (CLIP-L)", f"{name} (CLIP-G)"
    else:
        if clip_l is None:
            raise ValueError(
                "load_text_encoder needs clip_l= (SD1.5), clip_l= and clip_g= (SDXL), or checkpoint="
            )
        state_l = load_tensors(clip_l)
        state_g = load_tensors(clip_g) if clip_g is not None else None
        what_l, what_g = Path(clip_l).name, (Path(clip_g).name if clip_g is not None else "")
        if state_g is not None and _depth(state_l) >= _BIGG_MIN_LAYERS > _depth(state_g):
            # The two files were given the wrong way round; ComfyUI routes by depth too.
            state_l, state_g, what_l, what_g = state_g, state_l, what_g, what_l

    model_l = _load_part(state_l, role="clip_l", dtype=torch_dtype, what=what_l)
    parts: tuple[EncoderPart, ...]
    if state_g is None:
        kind: Literal["sd15", "sdxl"] = "sd15"
        parts = (EncoderPart("clip_l", model_l, PAD_CLIP_L, True, None, "raw"),)
    else:
        kind = "sdxl"
        model_g = _load_part(state_g, role="clip_g", dtype=torch_dtype, what=what_g)
        parts = (
            EncoderPart("clip_l", model_l, PAD_CLIP_L, False, -2, "none"),
            EncoderPart("clip_g", model_g, PAD_CLIP_G, False, -2, "projected"),
        )
    for part in parts:
        part.model.to(torch_device)
        verify_placement(part.model, torch_device, torch_dtype)
    return TextEncoder(
        kind=kind,
        parts=parts,
        tokenizer=tokenizer or ClipTokenizer.from_file(),
        device=torch_device,
        dtype=torch_dtype,
        embeddings=EmbeddingLibrary(embeddings_dir) if embeddings_dir is not None else None,
    )


__all__ = [
    "Conditioning",
    "EmbeddingError",
    "ModelLoadError",
    "PromptError",
    "TextEncoder",
    "cpu_has_native",
    "load_text_encoder",
    "preferred_precision",
]
