"""Luna shared-daemon ComfyUI node pack: CLIP encode, VAE encode/decode and status via the daemon.

ComfyUI imports this package from ``custom_nodes/luna_shared_daemon/`` (put there by
``luna-daemon install-comfyui-nodes``) and reads the two mappings below; the class_type keys
are used by the workflow templates in ``workflows/`` and must never change. The package imports
only the daemon client (vendored under ``_vendor/`` when installed, ``daemon.wire.client`` in the
repository), numpy, and torch lazily; see README.md.
"""

from .nodes import LunaDaemonStatus, LunaSharedCLIPEncode, LunaSharedVAEDecode, LunaSharedVAEEncode

NODE_CLASS_MAPPINGS = {
    "LunaSharedCLIPEncode": LunaSharedCLIPEncode,
    "LunaSharedVAEEncode": LunaSharedVAEEncode,
    "LunaSharedVAEDecode": LunaSharedVAEDecode,
    "LunaDaemonStatus": LunaDaemonStatus,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "LunaSharedCLIPEncode": "Luna Shared CLIP Encode",
    "LunaSharedVAEEncode": "Luna Shared VAE Encode",
    "LunaSharedVAEDecode": "Luna Shared VAE Decode",
    "LunaDaemonStatus": "Luna Daemon Status",
}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
