"""Safe weight loading shared by every model in the daemon (torch + safetensors only).

Owns: refusing pickle-based files, memory-mapped safetensors reading, key-prefix handling,
"missing keys" errors that name the keys, dtype/device resolution and verification, and
measuring a model's parameter footprint. Pure functions; callable from any thread (loading
runs in the daemon's executor, never on the event loop).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from safetensors import safe_open

PICKLE_SUFFIXES = {".ckpt", ".pt", ".pth", ".bin", ".pkl"}

PRECISIONS: dict[str, torch.dtype] = {
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
    "fp32": torch.float32,
}


class ModelLoadError(Exception):
    """A weights file cannot be used: wrong format, unknown layout or missing tensors."""


def resolve_dtype(precision: str | torch.dtype) -> torch.dtype:
    """``"bf16" | "fp16" | "fp32"`` (or a torch dtype) → torch dtype."""
    if isinstance(precision, torch.dtype):
        if precision not in PRECISIONS.values():
            raise ModelLoadError(f"unsupported dtype {precision}; use one of {sorted(PRECISIONS)}")
        return precision
    try:
        return PRECISIONS[precision]
    except KeyError:
        raise ModelLoadError(f"unknown precision {precision!r}; use one of {sorted(PRECISIONS)}") from None


def resolve_device(device: str | torch.device) -> torch.device:
    """Parse a device string and check it exists on this machine (``cuda:1`` must really be there)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelLoadError(f"device {dev} requested but CUDA is not available")
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        if index >= torch.cuda.device_count():
            raise ModelLoadError(
                f"device {dev} requested but only {torch.cuda.device_count()} CUDA device(s) exist"
            )
        return torch.device("cuda", index)
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ModelLoadError(f"device {dev} requested but MPS is not available")
    return dev


def cpu_has_native(dtype: torch.dtype) -> bool:
    """Whether this CPU runs ``dtype`` matmuls and convolutions natively through oneDNN.

    bf16/fp16 need AVX-512-BF16, AMX or AVX-512-FP16; without them torch's fallback runs
    ~6× (matmul) to ~100× (conv) slower than fp32, so the loaders then compute in fp32.
    """
    checks = {torch.bfloat16: "_is_mkldnn_bf16_supported", torch.float16: "_is_mkldnn_fp16_supported"}
    if dtype not in checks:
        return True
    check = getattr(torch.ops.mkldnn, checks[dtype], None)
    try:
        return bool(check()) if check is not None else False
    except RuntimeError:
        return False


def check_safetensors_path(path: str | Path) -> Path:
    """Return ``path`` if it is an existing ``.safetensors`` file, else raise a clear error."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        raise ModelLoadError(
            f"{p.name}: pickle-based checkpoints ({suffix}) are refused because loading them can "
            "run arbitrary code; convert the file to .safetensors first"
        )
    if suffix != ".safetensors":
        raise ModelLoadError(f"{p.name}: only .safetensors files are supported")
    if not p.is_file():
        raise ModelLoadError(f"model file not found: {p}")
    return p


def read_keys(path: str | Path) -> list[str]:
    """Tensor names in a safetensors file, without reading any tensor data."""
    p = check_safetensors_path(path)
    try:
        with safe_open(str(p), framework="pt", device="cpu") as handle:
            return list(handle.keys())
    except Exception as exc:  # safetensors raises its own SafetensorError on garbage
        raise ModelLoadError(f"{p.name}: not a valid safetensors file ({exc})") from exc


def load_tensors(
    path: str | Path,
    *,
    prefix: str = "",
    strip_prefix: bool = True,
) -> dict[str, torch.Tensor]:
    """Memory-map the tensors whose names start with ``prefix`` (all when empty).

    Tensors stay on the CPU in their stored dtype; the caller converts while copying into the
    module, so a 6 GB fp32 checkpoint is never materialised twice.
    """
    p = check_safetensors_path(path)
    out: dict[str, torch.Tensor] = {}
    try:
        with safe_open(str(p), framework="pt", device="cpu") as handle:
            for key in handle.keys():
                if not key.startswith(prefix):
                    continue
                name = key[len(prefix) :] if strip_prefix else key
                out[name] = handle.get_tensor(key)
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(f"{p.name}: not a valid safetensors file ({exc})") from exc
    return out


def require_keys(state: Mapping[str, object], required: Iterable[str], *, what: str) -> None:
    """Raise :class:`ModelLoadError` naming up to 10 missing keys."""
    missing = [k for k in required if k not in state]
    if missing:
        shown = ", ".join(missing[:10])
        more = f" (and {len(missing) - 10} more)" if len(missing) > 10 else ""
        raise ModelLoadError(f"{what}: missing keys {shown}{more}")


def parameter_bytes(module: torch.nn.Module) -> int:
    """Bytes held by a module's parameters and buffers (its resident weight footprint)."""
    total = 0
    for tensor in list(module.parameters()) + list(module.buffers()):
        total += tensor.numel() * tensor.element_size()
    return total


def verify_placement(module: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> None:
    """Fail loudly if any parameter is not where it was asked to be (the prior daemon's bug)."""
    for name, param in module.named_parameters():
        if param.device != device:
            raise ModelLoadError(f"{name} is on {param.device}, expected {device}")
        if param.is_floating_point() and param.dtype != dtype:
            raise ModelLoadError(f"{name} is {param.dtype}, expected {dtype}")
