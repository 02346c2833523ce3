"""Textual-inversion embeddings (``embedding:name`` in prompts) from an embeddings folder.

Owns finding ``name`` under the folder the way ComfyUI does (subfolders allowed, no escaping
the folder, ``.safetensors`` suffix optional), reading it with safetensors only (``.pt`` /
``.bin`` embeddings are pickles and are refused), and picking the vectors for one encoder:
the ``clip_l`` / ``clip_g`` entry of SDXL embeddings, else the file's first tensor (A1111's
``emb_params``), as ComfyUI does.

Unlike ComfyUI, which logs a warning and drops an embedding it cannot find, a missing or
unusable embedding raises :class:`EmbeddingError`: the daemon would otherwise return
conditioning that silently differs from what the user's ComfyUI produces.

:class:`EmbeddingLibrary` caches loaded files behind a lock; pool threads share one.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from daemon.models.errors import ModelInputError
from daemon.models.io import PICKLE_SUFFIXES


class EmbeddingError(ModelInputError):
    """An ``embedding:name`` in a prompt cannot be used (missing, pickled, wrong width…)."""


@dataclass(frozen=True)
class TextualInversion:
    """All tensors of one embedding file, by key, as float32 CPU ``[n, D]``."""

    name: str
    tensors: dict[str, torch.Tensor]

    def vectors_for(self, encoder_key: str, width: int) -> torch.Tensor:
        """``[n, width]`` vectors for the encoder called ``encoder_key`` ("clip_l"/"clip_g")."""
        chosen = self.tensors.get(encoder_key)
        if chosen is None:
            chosen = self.tensors[sorted(self.tensors)[0]]
        if chosen.shape[-1] != width:
            raise EmbeddingError(
                f"embedding {self.name!r} has vectors of width {chosen.shape[-1]}, "
                f"but {encoder_key} needs {width}"
            )
        return chosen


class EmbeddingLibrary:
    """Embeddings found under one folder, loaded on first use and cached."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory).resolve()
        self._cache: dict[str, TextualInversion] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> TextualInversion:
        with self._lock:
            cached = self._cache.get(name)
        if cached is not None:
            return cached
        loaded = self._load(self.find(name), name)
        with self._lock:
            self._cache[name] = loaded
        return loaded

    def find(self, name: str) -> Path:
        """Path of ``name`` under the folder (or one of its subfolders); never outside it."""
        if not name:
            raise EmbeddingError("empty embedding name after 'embedding:'")
        if not self.directory.is_dir():
            raise EmbeddingError(f"embeddings folder {self.directory} does not exist")
        folders = [self.directory] + sorted(
            Path(root)
            for root, _dirs, _files in os.walk(self.directory, followlinks=True)
            if Path(root) != self.directory
        )
        for folder in folders:
            candidate = (folder / name).resolve()
            if os.path.commonpath((folder.resolve(), candidate)) != str(folder.resolve()):
                continue
            for path in (candidate, candidate.with_name(candidate.name + ".safetensors")):
                if path.is_file():
                    return path
            for suffix in sorted(PICKLE_SUFFIXES):
                if candidate.with_name(candidate.name + suffix).is_file() or (
                    candidate.is_file() and candidate.suffix == suffix
                ):
                    raise EmbeddingError(
                        f"embedding {name!r} is a pickle file ({suffix}); convert it to .safetensors"
                    )
        raise EmbeddingError(f"embedding {name!r} not found in {self.directory}")

    @staticmethod
    def _load(path: Path, name: str) -> TextualInversion:
        if path.suffix.lower() in PICKLE_SUFFIXES:
            raise EmbeddingError(
                f"embedding {name!r} is a pickle file ({path.suffix}); convert it to .safetensors"
            )
        try:
            with safe_open(str(path), framework="pt", device="cpu") as handle:
                tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        except Exception as exc:  # safetensors raises its own error type on garbage
            raise EmbeddingError(
                f"embedding {name!r} ({path.name}) is not a valid safetensors file: {exc}"
            ) from exc
        usable = {
            key: (t.reshape(-1, t.shape[-1]) if t.ndim != 1 else t.reshape(1, -1)).float()
            for key, t in tensors.items()
            if t.is_floating_point() and t.ndim >= 1 and t.numel() > 0
        }
        if not usable:
            raise EmbeddingError(f"embedding {name!r} ({path.name}) holds no vectors")
        return TextualInversion(name=name, tensors=usable)
