"""The daemon's OpHandler: validates each op, runs the model work in the pools, shapes results.

Owns the meaning of the handler ops of ``daemon/PROTOCOL.md`` (``clip_encode``, ``vae_encode``,
``vae_decode``, ``status``, ``models``, ``shutdown``): option and tensor validation (a bad
request is answered BAD_REQUEST before it queues, and costs nobody else anything), model-set
resolution through :class:`~daemon.model_registry.ModelRegistry`, the prompt cache, and the
mapping of domain errors to wire codes: the registry's ``ModelError`` (set not configured,
file missing, load failed) → NOT_LOADED; the model layer's ``ModelInputError`` (bad prompt
syntax, unknown embedding, wrong tensor for the model) → BAD_REQUEST; out-of-memory → OOM
retryable; full queue → BUSY; shutdown → SHUTTING_DOWN. Anything else is a bug and reaches the
transport, which logs it and answers INTERNAL — never BAD_REQUEST.

Threads: :meth:`DaemonOps.handle` runs on the event loop; tensor conversion and model calls run
inside pool jobs on worker threads, so the loop never touches torch compute.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import torch

from daemon.auth import tokens_match
from daemon.model_registry import CLIP_KIND, ModelError, ModelRegistry
from daemon.models.errors import ModelInputError
from daemon.pools import PoolClosed, PoolFull, WorkerPool
from daemon.prompt_cache import CacheKey, PromptCache
from daemon.tcp_service import Peer
from daemon.wire.protocol import ErrorCode, Limits, OpError

MAX_PROMPT_CHARS = 100_000
CLIP_SKIP_RANGE = range(-24, 0)  # ComfyUI CLIPSetLastLayer: -24 … -1
MAX_SIDE = 16_384  # pixels (or 8× latent) per side
#: Largest result tensor: the protocol's per-tensor limit (Limits.max_elements, 2^28 values).
MAX_RESULT_ELEMENTS = Limits().max_elements


def _is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, (MemoryError, torch.cuda.OutOfMemoryError)):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def _bad(message: str) -> OpError:
    return OpError(ErrorCode.BAD_REQUEST, message)


def _model_option(options: dict) -> str:
    model = options.get("model", "default")
    if model is None:
        model = "default"
    if not isinstance(model, str) or not model:
        raise _bad(f"model must be a model set name (string), got {model!r}")
    return model


def _tile_option(options: dict) -> bool | None:
    tile = options.get("tile")
    if tile is not None and not isinstance(tile, bool):
        raise _bad(f"tile must be true, false or null, got {tile!r}")
    return tile


def _one_float_tensor(op: str, tensors: list[np.ndarray], what: str) -> np.ndarray:
    if len(tensors) != 1:
        raise _bad(f"{op} takes exactly one tensor ({what}), got {len(tensors)}")
    array = tensors[0]
    if not isinstance(array, np.ndarray):
        raise _bad(f"{op}: the tensor is not an array")
    if array.dtype.kind != "f":
        raise _bad(f"{op}: {what} must be float32 (or float16/bfloat16 on the wire), got {array.dtype}")
    if array.ndim != 4:
        raise _bad(f"{op}: {what} must be 4-D, got shape {list(array.shape)}")
    if array.size == 0:
        raise _bad(f"{op}: {what} is empty (shape {list(array.shape)})")
    return array


def _to_torch(array: np.ndarray) -> torch.Tensor:
    """float32 CPU tensor over the request's array, without a copy when it is writable float32
    C order: a view on the decoder's payload or the client's shared-memory lease is safe to
    alias, since neither is reused while the tensor lives. Anything else is copied."""
    if array.dtype != np.float32 or not array.flags.writeable or not array.flags.c_contiguous:
        array = np.array(array, dtype=np.float32, order="C", copy=True)
    if not np.isfinite(array).all():
        raise _bad("tensor contains NaN or infinity")
    return torch.from_numpy(array)


def _to_numpy(tensor: torch.Tensor) -> np.ndarray:
    array = tensor.detach().to("cpu", torch.float32).contiguous().numpy()
    array.flags.writeable = False  # shared by the prompt cache and the sender
    return array


class DaemonOps:
    """Implements ``daemon.tcp_service.OpHandler`` for the daemon (one instance per server)."""

    def __init__(
        self,
        *,
        registry: ModelRegistry,
        vae_pool: WorkerPool,
        clip_pool: WorkerPool,
        prompt_cache: PromptCache,
        status: Callable[[], dict[str, Any]],  # the full status data, for the ``status`` op
        request_shutdown: Callable[[str], None],
        shutdown_token: str | None,
        logger: logging.Logger | None = None,
    ):
        self.registry = registry
        self.vae_pool = vae_pool
        self.clip_pool = clip_pool
        self.prompt_cache = prompt_cache
        self._status = status
        self._request_shutdown = request_shutdown
        self._shutdown_token = shutdown_token
        self._log = logger or logging.getLogger("luna.daemon.ops")

    async def handle(
        self, op: str, options: dict, tensors: list[np.ndarray], peer: Peer
    ) -> tuple[dict, list[np.ndarray]]:
        if op == "clip_encode":
            return await self._clip_encode(options, tensors)
        if op == "vae_encode":
            return await self._vae(op, options, tensors)
        if op == "vae_decode":
            return await self._vae(op, options, tensors)
        if op == "status":
            return self._status(), []
        if op == "models":
            return self.registry.describe(), []
        if op == "shutdown":
            return self._shutdown(options, peer), []
        raise _bad(f"unknown op {op!r}")

    # ------------------------------------------------------------------ clip

    async def _clip_encode(self, options: dict, tensors: list[np.ndarray]) -> tuple[dict, list]:
        text = options.get("text")
        if not isinstance(text, str):
            raise _bad(f"clip_encode needs text (a string), got {type(text).__name__}")
        if len(text) > MAX_PROMPT_CHARS:
            raise _bad(f"text is {len(text)} characters; the limit is {MAX_PROMPT_CHARS}")
        clip_skip = options.get("clip_skip")
        if clip_skip is not None and (
            isinstance(clip_skip, bool) or not isinstance(clip_skip, int) or clip_skip not in CLIP_SKIP_RANGE
        ):
            raise _bad(
                f"clip_skip must be null or an integer from -24 to -1 "
                f"(ComfyUI's CLIPSetLastLayer), got {clip_skip!r}"
            )
        if tensors:
            raise _bad(f"clip_encode takes no tensors, got {len(tensors)}")
        model = _model_option(options)
        encoder = await self._model(self.registry.text_encoder, model)
        key = CacheKey(repr(self.registry.model_key(model, CLIP_KIND)), clip_skip, text)

        async def encode() -> tuple[str, tuple[np.ndarray, ...]]:
            def job() -> tuple[str, tuple[np.ndarray, ...]]:
                conditioning = encoder.encode(text, clip_skip=clip_skip)
                arrays = [_to_numpy(conditioning.cond)]
                if conditioning.pooled is not None:
                    arrays.append(_to_numpy(conditioning.pooled))
                return encoder.kind, tuple(arrays)

            return await self._submit(self.clip_pool, job)

        (kind, arrays), hit = await self.prompt_cache.get_or_compute(key, encode)
        return {"model": model, "kind": kind, "cache_hit": hit}, list(arrays)

    # ------------------------------------------------------------------ vae

    async def _vae(self, op: str, options: dict, tensors: list[np.ndarray]) -> tuple[dict, list]:
        tile = _tile_option(options)
        model = _model_option(options)
        if op == "vae_encode":
            array = _one_float_tensor(op, tensors, "pixels B×H×W×C")
            _, height, width, channels = array.shape
            if channels < 3:
                raise _bad(
                    f"vae_encode: pixels need at least 3 channels (B×H×W×C), got shape {list(array.shape)}"
                )
            if min(height, width) < 8 or max(height, width) > MAX_SIDE:
                raise _bad(f"vae_encode: image sides must be 8…{MAX_SIDE} pixels, got {height}×{width}")
        else:
            array = _one_float_tensor(op, tensors, "latent B×C×h×w")
            if max(array.shape[2:]) * 8 > MAX_SIDE:
                raise _bad(
                    f"vae_decode: latent {list(array.shape)} decodes to more than {MAX_SIDE} pixels per side"
                )
            batch, _, height, width = array.shape
            values = batch * height * 8 * width * 8 * 3
            if values > MAX_RESULT_ELEMENTS:
                # A small latent batch can ask for a huge answer (64×4×256×256 → 3.2 GB of pixels,
                # plus the activations): refused before any memory is taken.
                raise _bad(
                    f"vae_decode: latent {list(array.shape)} decodes to {values} values, more than "
                    f"the {MAX_RESULT_ELEMENTS} one answer may carry; decode fewer or smaller latents"
                )
        vae = await self._model(self.registry.vae, model)
        if op == "vae_decode" and array.shape[1] != vae.latent_channels:
            raise _bad(
                f"vae_decode: latent has {array.shape[1]} channels, model set {model!r} "
                f"expects {vae.latent_channels} (shape B×C×h×w)"
            )

        def job() -> tuple[np.ndarray, float]:
            started = time.perf_counter()
            tensor = _to_torch(array)
            out = vae.encode(tensor, tile=tile) if op == "vae_encode" else vae.decode(tensor, tile=tile)
            return _to_numpy(out), time.perf_counter() - started

        result, seconds = await self._submit(self.vae_pool, job)
        # run_ms: time on the worker (conversion + model); lets clients see the transport share.
        return {"model": model, "shape": list(result.shape), "run_ms": round(seconds * 1000, 3)}, [result]

    # ------------------------------------------------------------------ shutdown

    def _shutdown(self, options: dict, peer: Peer) -> dict:
        token = options.get("token")
        allowed = peer.authenticated or tokens_match(token, self._shutdown_token)
        if not allowed:
            raise OpError(
                ErrorCode.UNAUTHORIZED,
                "shutdown needs the daemon token (hello token, or options.token; "
                "the token is in the daemon's token file)",
            )
        self._log.info("shutdown requested by %s", peer.address)
        # Answer first, then stop: the reply must leave before the port closes.
        asyncio.get_running_loop().call_soon(self._request_shutdown, f"shutdown op from {peer.address}")
        return {"shutting_down": True}

    # ------------------------------------------------------------------ running

    @staticmethod
    async def _model(get: Callable[[str], Awaitable[Any]], set_name: str) -> Any:
        try:
            return await get(set_name)
        except ModelError as exc:
            raise OpError(ErrorCode.NOT_LOADED, exc.message) from None

    async def _submit(self, pool: WorkerPool, job: Callable[[], Any]) -> Any:
        try:
            return await pool.submit(job)
        except OpError:
            raise
        except PoolFull as exc:
            raise OpError(ErrorCode.BUSY, str(exc), retryable=True) from None
        except PoolClosed as exc:
            raise OpError(ErrorCode.SHUTTING_DOWN, str(exc), retryable=True) from None
        except ModelInputError as exc:  # only the model layer's own input errors: other
            raise _bad(str(exc)) from None  # ValueErrors are bugs, answered INTERNAL
        except Exception as exc:
            if _is_out_of_memory(exc):
                self._log.warning("%s pool: out of memory: %s", pool.name, exc)
                raise OpError(
                    ErrorCode.OOM, f"out of memory on the daemon's device: {exc}", retryable=True
                ) from None
            raise
