"""The model layer's error for a caller's bad input, shared by the VAE, the text encoder, prompt
parsing and embeddings. No dependencies, so the torch-free prompt parser can use it too.

``daemon/ops.py`` answers exactly these as BAD_REQUEST; any other exception from a model is a
bug and answered INTERNAL.
"""

from __future__ import annotations


class ModelInputError(ValueError):
    """The input given to a model cannot be processed: the caller's fault, not the daemon's."""
