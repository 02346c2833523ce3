"""Luna daemon: the shared VAE/CLIP service and its protocol, client and ComfyUI nodes.

Importing this package is cheap and torch-free: ``daemon.wire.protocol`` and ``daemon.wire.client`` are
used by the app and inside ComfyUI. Only ``daemon.models``, ``daemon.pools`` and the server
import torch.
"""

__version__ = "0.1.0"
