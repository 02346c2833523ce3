"""The four ComfyUI node classes of the Luna shared-daemon pack.

Owns the node schemas (INPUT_TYPES / RETURN_TYPES / FUNCTION / CATEGORY; the input names are
a contract with the workflow templates in ``workflows/``, keep them stable) and each node's
function. Encoding and decoding go to the Luna daemon through the shared blocking client;
``mode="auto"`` falls back to the optional local CLIP/VAE input when the daemon fails.
ComfyUI instantiates the classes and calls FUNCTION on its prompt-worker thread.
"""

from __future__ import annotations

from typing import Any

from .connection import (
    CONNECTION_FAILURES,
    MODES,
    DaemonConnections,
    LunaDaemonNodeError,
    daemon_client,
    resolve_endpoint,
    run_with_fallback,
)
from .conversion import (
    TILING_OPTIONS,
    array_to_tensor,
    build_conditioning,
    image_to_array,
    is_sdxl,
    latent_to_array,
    sdxl_size_conditioning,
    tile_flag,
)
from .fallback import decode_latent_locally, encode_pixels_locally, encode_text_locally

CATEGORY = "Luna/daemon"
#: ComfyUI's nodes.MAX_RESOLUTION (not imported: ComfyUI modules stay out of the import path).
MAX_RESOLUTION = 16384

#: Seconds the status node waits for the daemon's answer.
STATUS_TIMEOUT = 5.0

#: One shared client per daemon endpoint for every node instance of the pack.
SHARED_CONNECTIONS = DaemonConnections()

_MODE_INPUT = (
    list(MODES),
    {
        "default": "auto",
        "tooltip": "daemon: always use the Luna daemon, fail if it is unreachable. "
        "auto: use the daemon, fall back to the local input below when it is down.",
    },
)
_MODEL_SET_INPUT = (
    "STRING",
    {
        "default": "default",
        "tooltip": "Model set configured in the daemon ([models.NAME] in its config).",
    },
)
_HOST_INPUT = (
    "STRING",
    {
        "default": "",
        "tooltip": "Daemon host; empty = LUNA_DAEMON_HOST or 127.0.0.1.",
    },
)
_PORT_INPUT = (
    "INT",
    {
        "default": 0,
        "min": 0,
        "max": 65535,
        "tooltip": "Daemon TCP port; 0 = LUNA_DAEMON_PORT or 19283.",
    },
)
_TILING_INPUT = (
    list(TILING_OPTIONS),
    {
        "default": "auto",
        "tooltip": "auto: tile large images (and after out-of-memory); on/off: force.",
    },
)


def _size_input(default: int) -> tuple:
    return ("INT", {"default": default, "min": 0, "max": MAX_RESOLUTION})


class _DaemonNode:
    """Shared plumbing: the connections every node of the pack uses (tests swap them)."""

    connections: DaemonConnections = SHARED_CONNECTIONS
    CATEGORY = CATEGORY


class LunaSharedCLIPEncode(_DaemonNode):
    """Text → CONDITIONING via the daemon, a drop-in for CLIPTextEncode / CLIPTextEncodeSDXL."""

    DESCRIPTION = (
        "Encodes a prompt with the Luna daemon's shared CLIP (SD1.5 or SDXL) so this "
        "ComfyUI does not hold the text encoders. For SDXL the size conditioning is "
        "added like CLIPTextEncodeSDXL."
    )
    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "text": (
                    "STRING",
                    {"multiline": True, "dynamicPrompts": True, "tooltip": "The prompt to encode."},
                ),
                "model_set": _MODEL_SET_INPUT,
                "mode": _MODE_INPUT,
            },
            "optional": {
                "clip_skip": (
                    "INT",
                    {
                        "default": 0,
                        "min": -24,
                        "max": 0,
                        "step": 1,
                        "tooltip": "0 = the model's default; -1 last layer, -2 penultimate … "
                        "(like CLIP Set Last Layer).",
                    },
                ),
                "width": _size_input(1024),
                "height": _size_input(1024),
                "crop_w": _size_input(0),
                "crop_h": _size_input(0),
                "target_width": _size_input(1024),
                "target_height": _size_input(1024),
                "clip": ("CLIP", {"tooltip": "Local CLIP for mode 'auto' when the daemon is down."}),
                "host": _HOST_INPUT,
                "port": _PORT_INPUT,
            },
        }

    def encode(
        self,
        text: str,
        model_set: str = "default",
        mode: str = "auto",
        clip_skip: int = 0,
        width: int = 1024,
        height: int = 1024,
        crop_w: int = 0,
        crop_h: int = 0,
        target_width: int = 1024,
        target_height: int = 1024,
        clip: Any = None,
        host: str = "",
        port: int = 0,
    ) -> tuple[list]:
        if clip_skip > 0:
            raise LunaDaemonNodeError(
                f"Luna Shared CLIP Encode: clip_skip must be 0 or negative, got {clip_skip}"
            )
        size = sdxl_size_conditioning(width, height, crop_w, crop_h, target_width, target_height)

        def via_daemon(client: daemon_client.DaemonClient) -> list:
            # request() rather than clip_encode(): its answer also says the model kind.
            result, tensors = client.request(
                "clip_encode", {"text": text, "model": model_set, "clip_skip": clip_skip or None}
            )
            if len(tensors) not in (1, 2):
                raise LunaDaemonNodeError(
                    f"Luna Shared CLIP Encode: the daemon sent {len(tensors)} tensors, expected "
                    "cond and pooled; is the vendored client older than the daemon? Reinstall "
                    "the nodes."
                )
            cond = array_to_tensor(tensors[0])
            pooled = array_to_tensor(tensors[1]) if len(tensors) == 2 else None
            kind = result.get("kind") if isinstance(result, dict) else None
            return build_conditioning(cond, pooled, size if is_sdxl(kind, cond) else None)

        local = None
        if clip is not None:

            def local() -> list:
                return encode_text_locally(clip, text, clip_skip=clip_skip, sdxl_size=size)

        conditioning = run_with_fallback(
            connections=self.connections,
            endpoint=resolve_endpoint(host, port),
            mode=mode,
            node_name="Luna Shared CLIP Encode",
            daemon_call=via_daemon,
            local_call=local,
            local_input="CLIP",
        )
        return (conditioning,)


def _vae_node_inputs(io_name: str, io_type: str) -> dict:
    """INPUT_TYPES shared by the two VAE nodes; only the main input (IMAGE or LATENT) differs."""
    return {
        "required": {
            io_name: (io_type,),
            "model_set": _MODEL_SET_INPUT,
            "mode": _MODE_INPUT,
            "tiling": _TILING_INPUT,
        },
        "optional": {
            "vae": ("VAE", {"tooltip": "Local VAE for mode 'auto' when the daemon is down."}),
            "host": _HOST_INPUT,
            "port": _PORT_INPUT,
        },
    }


class LunaSharedVAEEncode(_DaemonNode):
    """IMAGE → LATENT via the daemon, a drop-in for VAEEncode."""

    DESCRIPTION = "Encodes an image to a latent with the Luna daemon's shared VAE."
    RETURN_TYPES = ("LATENT",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return _vae_node_inputs("pixels", "IMAGE")

    def encode(
        self,
        pixels: Any,
        model_set: str = "default",
        mode: str = "auto",
        tiling: str = "auto",
        vae: Any = None,
        host: str = "",
        port: int = 0,
    ) -> tuple[dict]:
        tile = tile_flag(tiling)

        def via_daemon(client: daemon_client.DaemonClient) -> dict:
            latent = client.vae_encode(image_to_array(pixels), model=model_set, tile=tile)
            return {"samples": array_to_tensor(latent)}

        local = None
        if vae is not None:

            def local() -> dict:
                return encode_pixels_locally(vae, pixels, tiling=tiling)

        latent = run_with_fallback(
            connections=self.connections,
            endpoint=resolve_endpoint(host, port),
            mode=mode,
            node_name="Luna Shared VAE Encode",
            daemon_call=via_daemon,
            local_call=local,
            local_input="VAE",
        )
        return (latent,)


class LunaSharedVAEDecode(_DaemonNode):
    """LATENT → IMAGE via the daemon, a drop-in for VAEDecode."""

    DESCRIPTION = "Decodes a latent to an image with the Luna daemon's shared VAE."
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "decode"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return _vae_node_inputs("samples", "LATENT")

    def decode(
        self,
        samples: dict,
        model_set: str = "default",
        mode: str = "auto",
        tiling: str = "auto",
        vae: Any = None,
        host: str = "",
        port: int = 0,
    ) -> tuple[Any]:
        tile = tile_flag(tiling)

        def via_daemon(client: daemon_client.DaemonClient) -> Any:
            pixels = client.vae_decode(latent_to_array(samples), model=model_set, tile=tile)
            return array_to_tensor(pixels)

        local = None
        if vae is not None:

            def local() -> Any:
                return decode_latent_locally(vae, samples, tiling=tiling)

        image = run_with_fallback(
            connections=self.connections,
            endpoint=resolve_endpoint(host, port),
            mode=mode,
            node_name="Luna Shared VAE Decode",
            daemon_call=via_daemon,
            local_call=local,
            local_input="VAE",
        )
        return (image,)


class LunaDaemonStatus(_DaemonNode):
    """Daemon health inside a workflow: a status line and a boolean. Never raises."""

    DESCRIPTION = "Reports whether the Luna daemon answers, with its device, version and load."
    RETURN_TYPES = ("STRING", "BOOLEAN")
    RETURN_NAMES = ("status", "ok")
    FUNCTION = "check"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {}, "optional": {"host": _HOST_INPUT, "port": _PORT_INPUT}}

    @classmethod
    def IS_CHANGED(cls, **_inputs: Any) -> float:
        return float("nan")  # NaN never equals itself: ComfyUI re-checks on every run

    def check(self, host: str = "", port: int = 0) -> dict:
        text, ok = self._probe(host, port)
        return {"ui": {"text": [text]}, "result": (text, ok)}

    def _probe(self, host: str, port: int) -> tuple[str, bool]:
        try:
            endpoint = resolve_endpoint(host, port)
        except LunaDaemonNodeError as exc:
            return f"Luna daemon: bad address ({exc})", False
        try:
            # A short-lived client with short timeouts: a hung daemon must not hang the check.
            with daemon_client.DaemonClient(
                endpoint.host,
                endpoint.port,
                token=endpoint.token,
                timeout=STATUS_TIMEOUT,
                shared_memory=False,
            ) as client:
                status = client.status()
            return _summarise_status(endpoint.address, status), status.get("status", "ok") == "ok"
        except CONNECTION_FAILURES as exc:
            return f"Luna daemon at {endpoint.address}: offline ({_reason(exc)})", False
        except Exception as exc:  # a status node must report, not break the workflow
            return f"Luna daemon at {endpoint.address}: error ({type(exc).__name__}: {exc})", False


def _reason(exc: BaseException) -> str:
    return getattr(exc, "reason", None) or str(exc) or type(exc).__name__


def _summarise_status(address: str, status: dict) -> str:
    parts = [f"Luna daemon at {address}: {status.get('status', 'ok')}"]
    for key, label in (("version", "version"), ("device", "device"), ("precision", "precision")):
        if status.get(key) is not None:
            parts.append(f"{label} {status[key]}")
    if status.get("uptime_seconds") is not None:
        parts.append(f"up {float(status['uptime_seconds']):.0f} s")
    if status.get("total_requests") is not None:
        parts.append(f"{status['total_requests']} requests")
    for pool in ("clip_pool", "vae_pool"):
        info = status.get(pool)
        if isinstance(info, dict):
            parts.append(
                f"{pool.split('_')[0]} workers {info.get('active_workers', '?')}"
                f" (queue {info.get('queue_depth', '?')})"
            )
    return " · ".join(parts)
