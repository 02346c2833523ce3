"""Model layer of the daemon: real SD/SDXL VAE and CLIP text encoders (torch + safetensors).

The public API the worker pools and the ComfyUI nodes' tests use. Loading runs in the daemon's
executor threads; loaded models are read-only and shared by every worker thread.
"""

from daemon.models.clip import Conditioning, PromptError, TextEncoder, load_text_encoder
from daemon.models.io import ModelLoadError
from daemon.models.vae import VAE, VAEInputError, load_vae

__all__ = [
    "VAE",
    "Conditioning",
    "ModelLoadError",
    "PromptError",
    "TextEncoder",
    "VAEInputError",
    "load_text_encoder",
    "load_vae",
]
