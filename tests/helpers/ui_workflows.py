"""UI-format (LiteGraph) workflows for tests, shaped as ComfyUI's frontend saves them."""

from __future__ import annotations

from typing import Any


def ui_node(
    node_id: int, kind: str, widgets: Any, inputs=(), outputs=(), title: str | None = None, mode: int = 0
) -> dict:
    """One UI node; ``inputs`` are ``(name, type, link[, extra])``, ``outputs`` ``(name, type, links)``."""
    node = {
        "id": node_id,
        "type": kind,
        "pos": [0, 0],
        "size": [100, 100],
        "flags": {},
        "order": 0,
        "mode": mode,
        "inputs": [
            {"name": n, "type": t, "link": link, **extra}
            for n, t, link, *rest in inputs
            for extra in [rest[0] if rest else {}]
        ],
        "outputs": [{"name": n, "type": t, "links": links} for n, t, links in outputs],
        "properties": {"Node name for S&R": kind},
        "widgets_values": widgets,
    }
    if title:
        node["title"] = title
    return node


def default_ui_workflow() -> dict:
    """ComfyUI's default graph as the UI saves it (ids, links and widget order as in the app)."""
    return {
        "last_node_id": 9,
        "last_link_id": 9,
        "nodes": [
            ui_node(
                4,
                "CheckpointLoaderSimple",
                ["sd_xl_base_1.0.safetensors"],
                outputs=[("MODEL", "MODEL", [1]), ("CLIP", "CLIP", [3, 5]), ("VAE", "VAE", [8])],
            ),
            ui_node(5, "EmptyLatentImage", [1024, 1024, 1], outputs=[("LATENT", "LATENT", [2])]),
            ui_node(
                6,
                "CLIPTextEncode",
                ["a lighthouse at dusk"],
                inputs=[("clip", "CLIP", 3)],
                outputs=[("CONDITIONING", "CONDITIONING", [4])],
                title="Positive",
            ),
            ui_node(
                7,
                "CLIPTextEncode",
                ["text, watermark"],
                inputs=[("clip", "CLIP", 5)],
                outputs=[("CONDITIONING", "CONDITIONING", [6])],
                title="Negative",
            ),
            ui_node(
                3,
                "KSampler",
                [156680208700286, "randomize", 20, 8, "euler", "normal", 1],
                inputs=[
                    ("model", "MODEL", 1),
                    ("positive", "CONDITIONING", 4),
                    ("negative", "CONDITIONING", 6),
                    ("latent_image", "LATENT", 2),
                ],
                outputs=[("LATENT", "LATENT", [7])],
            ),
            ui_node(
                8,
                "VAEDecode",
                [],
                inputs=[("samples", "LATENT", 7), ("vae", "VAE", 8)],
                outputs=[("IMAGE", "IMAGE", [9])],
            ),
            ui_node(9, "SaveImage", ["ComfyUI"], inputs=[("images", "IMAGE", 9)]),
        ],
        "links": [
            [1, 4, 0, 3, 0, "MODEL"],
            [2, 5, 0, 3, 3, "LATENT"],
            [3, 4, 1, 6, 0, "CLIP"],
            [4, 6, 0, 3, 1, "CONDITIONING"],
            [5, 4, 1, 7, 0, "CLIP"],
            [6, 7, 0, 3, 2, "CONDITIONING"],
            [7, 3, 0, 8, 0, "LATENT"],
            [8, 4, 2, 8, 1, "VAE"],
            [9, 8, 0, 9, 0, "IMAGE"],
        ],
        "groups": [],
        "config": {},
        "extra": {},
        "version": 0.4,
    }
