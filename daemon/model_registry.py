"""Model sets → loaded VAE / TextEncoder objects, each loaded once and shared read-only.

Owns: resolving a request's model set name (``"default"``, ``"pony"`` …) to the model objects
of :mod:`daemon.models`, loading them lazily on first use or all at start, and describing what
is loaded where (the ``models`` op and the status). Several sets are served at the same time;
nothing is ever replaced by a later registration (the old daemon's "last one wins").

Identity: a loaded model is keyed by (kind, file identity = resolved path + size + mtime,
device, dtype), so two sets naming the same file share one copy, and a file replaced on disk
is loaded afresh on its next use. A file that fails to load is remembered with its error for
that identity (no reload storm on every request) and raised again with the reason; the daemon
keeps running.

Errors are the registry's own (:class:`ModelError` and its kinds: :class:`ModelNotConfigured`,
:class:`ModelFileMissing`, :class:`ModelLoadFailed`); the ops layer (``daemon/ops.py``) maps
them to wire codes, so this module knows nothing of the protocol.

Threads: public coroutines run on the event loop; loading itself runs on a one-thread loader
executor (serialised, so two big loads never peak memory together). Concurrent requests for a
model being loaded wait for the same load.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from daemon.config import ModelSetConfig
from daemon.devices import memory_info
from daemon.wire.status import ModelState

VAE_KIND = "vae"
CLIP_KIND = "clip"


class ModelError(Exception):
    """A model set's model cannot be handed out (the request itself may be fine)."""

    def __init__(self, set_name: str, message: str):
        super().__init__(message)
        self.set_name = set_name
        self.message = message


class ModelNotConfigured(ModelError):
    """The set is not configured, or has no model of the kind asked for."""


class ModelFileMissing(ModelError):
    """A configured weights file does not exist (or cannot be stat'ed)."""


class ModelLoadFailed(ModelError):
    """Loading the model failed (bad file, unknown layout, device error); remembered per file."""


@dataclass(frozen=True)
class FileIdentity:
    """What makes a weights file "the same file": path, size and modification time."""

    path: str
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: Path) -> FileIdentity:
        try:
            st = path.stat()
        except OSError as exc:
            raise FileNotFoundError(f"model file not found: {path} ({exc.strerror})") from None
        return cls(str(path), st.st_size, st.st_mtime_ns)


@dataclass
class LoadedModel:
    """One load attempt: its state, the model object once loaded, or the error."""

    kind: str
    key: tuple
    files: dict[str, str]
    state: str = "loading"  # loading | loaded | error
    model: Any = None
    error: str | None = None
    load_seconds: float | None = None
    device_bytes_measured: int | None = None
    waiters: asyncio.Future | None = field(default=None, repr=False)

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"state": self.state, "files": self.files}
        if self.error:
            out["error"] = self.error
        if self.model is not None:
            model = self.model
            out.update(
                {
                    "device": str(model.device),
                    "dtype": str(model.dtype).replace("torch.", ""),
                    "footprint_bytes": int(getattr(model, "footprint_bytes", 0)),
                    "load_seconds": round(self.load_seconds or 0.0, 3),
                }
            )
            for attr in ("kind", "layout", "latent_channels"):
                if hasattr(model, attr):
                    out[attr] = getattr(model, attr)
            if self.device_bytes_measured is not None:
                out["device_bytes_measured"] = self.device_bytes_measured
        return out


def _default_vae_loader(path: Path, *, device: torch.device, dtype: str) -> Any:
    from daemon.models.vae import load_vae

    return load_vae(path, device=device, dtype=dtype)


def _default_clip_loader(
    *,
    clip_l: Path | None,
    clip_g: Path | None,
    checkpoint: Path | None,
    device: torch.device,
    dtype: str,
    embeddings_dir: Path | None,
) -> Any:
    try:
        from daemon.models.clip import load_text_encoder
    except ImportError as exc:  # the text-encoder module is not part of this build
        raise RuntimeError(f"text encoders are unavailable in this build ({exc})") from None
    return load_text_encoder(
        clip_l=clip_l,
        clip_g=clip_g,
        checkpoint=checkpoint,
        device=device,
        dtype=dtype,
        embeddings_dir=embeddings_dir,
    )


class ModelRegistry:
    """Loads and hands out the models of the configured sets (see module docstring)."""

    def __init__(
        self,
        model_sets: Mapping[str, ModelSetConfig],
        *,
        device: torch.device,
        precision: str,
        vae_loader: Callable[..., Any] = _default_vae_loader,
        clip_loader: Callable[..., Any] = _default_clip_loader,
        on_loaded: Callable[[str, Any], None] | None = None,
        logger: logging.Logger | None = None,
    ):
        self.model_sets = dict(model_sets)
        self.device = device
        self.precision = precision
        self._vae_loader = vae_loader
        self._clip_loader = clip_loader
        self._on_loaded = on_loaded
        self._log = logger or logging.getLogger("luna.daemon.models")
        self._entries: dict[tuple, LoadedModel] = {}
        self._set_keys: dict[tuple[str, str], tuple] = {}  # (set, kind) → entry key last used
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="luna-loader")
        self._tasks: set[asyncio.Task] = set()

    async def aclose(self) -> None:
        """Abandon loads in progress (their thread finishes on its own) and stop the loader."""
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._executor.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ public

    async def vae(self, set_name: str) -> Any:
        """The set's VAE (its own file, or the one inside its checkpoint)."""
        model_set = self._model_set(set_name)
        if not model_set.has_vae:
            raise ModelNotConfigured(set_name, f"model set {set_name!r} has no VAE configured")
        path = model_set.vae or model_set.checkpoint
        files = {"vae" if model_set.vae else "checkpoint": str(path)}
        key = self._key(set_name, VAE_KIND, {"vae": path})
        return await self._get(
            set_name,
            VAE_KIND,
            key,
            files,
            lambda: self._vae_loader(path, device=self.device, dtype=self.precision),
        )

    async def text_encoder(self, set_name: str) -> Any:
        """The set's text encoder (CLIP-L, CLIP-L + CLIP-G, or from its checkpoint)."""
        model_set = self._model_set(set_name)
        if not model_set.has_clip:
            raise ModelNotConfigured(
                set_name,
                f"model set {set_name!r} has no text encoder (clip_l/clip_g or checkpoint) configured",
            )
        parts = {"clip_l": model_set.clip_l, "clip_g": model_set.clip_g}
        if model_set.clip_l is None:
            parts = {"checkpoint": model_set.checkpoint}
        parts = {k: v for k, v in parts.items() if v is not None}
        files = {k: str(v) for k, v in parts.items()}
        key = self._key(set_name, CLIP_KIND, parts, extra=str(model_set.embeddings_dir))
        return await self._get(
            set_name,
            CLIP_KIND,
            key,
            files,
            lambda: self._clip_loader(
                clip_l=model_set.clip_l,
                clip_g=model_set.clip_g,
                checkpoint=None if model_set.clip_l else model_set.checkpoint,
                device=self.device,
                dtype=self.precision,
                embeddings_dir=model_set.embeddings_dir,
            ),
        )

    def model_key(self, set_name: str, kind: str) -> tuple | None:
        """The identity of the model a set last resolved to (the prompt cache keys on it)."""
        return self._set_keys.get((set_name, kind))

    async def load_all(self) -> list[str]:
        """Load every configured model now; returns the error messages (start-up logs them)."""
        errors = []
        for name, model_set in self.model_sets.items():
            wanted = [(VAE_KIND, self.vae)] if model_set.has_vae else []
            if model_set.has_clip:
                wanted.append((CLIP_KIND, self.text_encoder))
            for _, getter in wanted:
                try:
                    await getter(name)
                except ModelError as exc:
                    errors.append(exc.message)
        return errors

    def describe(self) -> dict[str, Any]:
        """``{"sets": {name: {"vae": {...}, "clip": {...}}}, …}`` for the ``models`` op."""
        sets: dict[str, Any] = {}
        for name, model_set in self.model_sets.items():
            entry: dict[str, Any] = {}
            for kind, configured in ((VAE_KIND, model_set.has_vae), (CLIP_KIND, model_set.has_clip)):
                if not configured:
                    continue
                loaded = self._entries.get(self._set_keys.get((name, kind), ()))
                entry[kind] = (
                    loaded.describe()
                    if loaded
                    else {"state": "not_loaded", "files": _configured_files(model_set, kind)}
                )
            sets[name] = entry
        return {"sets": sets, "device": str(self.device), "precision": self.precision}

    def summary(self) -> dict[str, dict[str, ModelState]]:
        """Compact per-set states for the 1 s status, with the dtype each model really runs in."""
        out: dict[str, dict[str, ModelState]] = {}
        for name, described in self.describe()["sets"].items():
            out[name] = {
                kind: ModelState(
                    state=info["state"],
                    dtype=info.get("dtype"),
                    device=info.get("device"),
                    error=info.get("error"),
                )
                for kind, info in described.items()
            }
        return out

    # ------------------------------------------------------------------ internals

    def _model_set(self, set_name: str) -> ModelSetConfig:
        if not isinstance(set_name, str) or set_name not in self.model_sets:
            known = ", ".join(sorted(self.model_sets)) or "none"
            raise ModelNotConfigured(
                str(set_name),
                f"model set {set_name!r} is not configured (configured sets: {known}); "
                "add [models.NAME] to the daemon config or pass --vae/--clip-l/--checkpoint",
            )
        return self.model_sets[set_name]

    def _key(self, set_name: str, kind: str, parts: Mapping[str, Path], extra: str = "") -> tuple:
        try:
            identities = tuple((name, FileIdentity.of(path)) for name, path in sorted(parts.items()))
        except FileNotFoundError as exc:
            raise ModelFileMissing(set_name, f"model set {set_name!r}: {exc}") from None
        return (kind, identities, str(self.device), self.precision, extra)

    async def _get(
        self, set_name: str, kind: str, key: tuple, files: dict[str, str], load: Callable[[], Any]
    ) -> Any:
        self._set_keys[(set_name, kind)] = key
        entry = self._entries.get(key)
        if entry is None:
            entry = LoadedModel(kind=kind, key=key, files=files)
            entry.waiters = asyncio.get_running_loop().create_future()
            self._entries[key] = entry
            task = asyncio.create_task(self._load(entry, set_name, load), name=f"load-{kind}-{set_name}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if entry.state == "loading":
            assert entry.waiters is not None
            await asyncio.shield(entry.waiters)
        if entry.state != "loaded":
            raise ModelLoadFailed(set_name, f"model set {set_name!r}: {kind} failed to load: {entry.error}")
        return entry.model

    async def _load(self, entry: LoadedModel, set_name: str, load: Callable[[], Any]) -> None:
        loop = asyncio.get_running_loop()
        self._log.info(
            "loading %s of model set %r from %s on %s (%s)",
            entry.kind,
            set_name,
            ", ".join(entry.files.values()),
            self.device,
            self.precision,
        )
        started = time.perf_counter()
        before = memory_info(self.device).free_bytes if self.device.type == "cuda" else None
        try:
            model = await loop.run_in_executor(self._executor, load)
        except Exception as exc:  # ModelLoadError, OSError, a bad file of any kind
            entry.state, entry.error = "error", str(exc) or type(exc).__name__
            self._log.error("model set %r: %s failed to load: %s", set_name, entry.kind, entry.error)
        except asyncio.CancelledError:
            entry.state, entry.error = "error", "loading was abandoned: the daemon is shutting down"
            raise
        else:
            entry.model, entry.state = model, "loaded"
            entry.load_seconds = time.perf_counter() - started
            if before is not None:
                entry.device_bytes_measured = max(0, before - memory_info(self.device).free_bytes)
            self._log.info("model set %r: %s loaded in %.2fs", set_name, entry.kind, entry.load_seconds)
            if self._on_loaded is not None:
                self._on_loaded(entry.kind, model)
        finally:
            if entry.waiters is not None and not entry.waiters.done():
                entry.waiters.set_result(None)


def _configured_files(model_set: ModelSetConfig, kind: str) -> dict[str, str]:
    if kind == VAE_KIND:
        names = ("vae",) if model_set.vae else ("checkpoint",)
    else:
        names = ("clip_l", "clip_g") if model_set.clip_l else ("checkpoint",)
    return {n: str(getattr(model_set, n)) for n in names if getattr(model_set, n) is not None}
