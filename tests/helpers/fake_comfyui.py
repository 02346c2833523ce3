"""A faithful fake ComfyUI server for tests (aiohttp, port 0, runs on the test's event loop).

Written from ComfyUI's ``server.py``/``execution.py`` and messages captured from a real ComfyUI
0.33: same routes (each under ``/x`` and ``/api/x``), same JSON
shapes, same WebSocket event order, the same validation errors, and the same awkward parts —
``execution_success`` is sent BEFORE the history entry is written, identical prompts are fully
cached (no new image, history points at the old file), execution events go only to the socket
whose ``clientId`` matches the prompt's ``client_id``, interrupt/queue-delete answer a bare 200.

Basic use::

    async with FakeComfyUI() as fake:            # or FakeComfyUI(object_info=..., render_delay=0.01)
        client_url = fake.url                   # "http://127.0.0.1:PORT"
        ...
        assert len(fake.prompts) == 1           # every accepted prompt, as received

Helpers: :func:`default_object_info` (stock SD nodes with small model lists; pass
``object_info=`` to replace it or ``extra_object_info=`` to add classes, e.g. Luna nodes),
:func:`txt2img_prompt` (a valid API-format prompt for it), :func:`png_bytes`. Standalone, in its
own process: ``python -m tests.helpers.fake_comfyui [--port N] [--render-delay S]`` prints
``FAKE_COMFYUI_READY <url>`` and serves until stdin closes (benchmarks, trying the CLI by hand).

Knobs (attributes you may set at any time, or constructor keywords):

* ``render_delay`` seconds per job (spread over the sampler steps), ``progress_steps_cap``
  (most ``progress`` messages per sampler node), ``image_size``;
* ``send_execution_success`` (False = an old server: only ``executing`` null marks the end),
  ``send_progress_state``, ``accept_client_prompt_id`` (False = old server that ignores a
  client ``prompt_id`` and makes its own), ``strict_prompt_id`` (400 ``invalid_prompt_id`` for
  a non-canonical UUID, as v0.25+), ``legacy_errors`` (old ``"error": "no prompt"`` strings and
  node reasons as plain strings), ``accept_websockets`` (False = the ``/ws`` upgrade is refused
  with 503, e.g. while a proxy is down);
* ``vram_total`` / ``vram_free`` / ``version`` for ``/system_stats``;
* previews: a prompt with ``extra_data.preview_method`` (not ``none``) gets one binary preview
  per sampler step — type 4 (with metadata) for sockets that sent the ``feature_flags``
  handshake, legacy type 1 otherwise.

The input folder (``files`` entries of type ``input``) works like ComfyUI's: ``POST /upload/image``
stores there (or in temp/output, with ``subfolder``; without ``overwrite`` a different file of the
same name is renamed ``name (1).ext``, identical bytes reuse the file) and survives :meth:`crash`;
the names an upload widget lists at start (``example.png``) exist in it; ``/object_info`` lists its
top-level images in every ``image_upload`` combo (LoadImage), read fresh on each request; and such an
input is checked like LoadImage's ``VALIDATE_INPUTS`` — the file must exist (``sub/name.png``,
``name.png [output]``), the possibly stale list is not consulted, a missing file is a
``custom_validation_failed`` 400 ("image - Invalid image file: NAME"). :meth:`input_files` shows
what the widget would list.

Scripted failures (all deterministic — tests wait on futures, never sleep):

* identical prompts are served from the node cache (all nodes cached, no new file);
  :meth:`clear_cache` (or ``POST /free {"free_memory": true}``) forgets it;
* prompts are validated against ``object_info`` like ComfyUI does (real-shaped 400s);
  :meth:`reject_next` forces the next answer(s) whatever the prompt;
* :meth:`fail_on` — the next job(s) raise ``execution_error`` at a node id or class type;
* :meth:`swallow_prompt_replies` — the next prompt(s) are queued and run, but their
  ``POST /prompt`` is never answered (the reply is lost; the client times out);
* :meth:`drop_websockets_on` — close every socket right before a given event is sent
  (the event is lost, the job carries on, like a network blip);
* :meth:`die_on` — crash the whole server right before a given job event (``execution_start``,
  ``executing``, ``progress``…; :meth:`crash` does it now; :meth:`restart` brings it back on the
  same port with empty memory, like a real restart);
* :meth:`pause` / :meth:`resume` — hold the worker at its next step (a "running" job that
  stays running, to test cancel and reconnects); ``hold_history = True`` holds the history write
  after ``execution_success`` until :meth:`release_history`;
* :meth:`wait_state` — await a job reaching ``pending`` / ``running`` / ``done``;
  :meth:`wait_for_prompts` — await the n-th accepted prompt (e.g. from a task running ``run``).

Inspection: ``prompts`` (accepted prompts), ``rejected`` (bodies answered 400), ``interrupts``
(bodies of ``POST /interrupt``), ``crashes``,
``requests`` (method, path, headers of every HTTP request), ``ws_connections`` (client id and
upgrade headers), ``files`` (``(type, subfolder, filename) -> bytes``), ``history``,
:meth:`request_count`.
"""

from __future__ import annotations

import asyncio
import copy
import heapq
import io
import itertools
import json
import mimetypes
import posixpath
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web
from PIL import Image

from app.comfy.events import encode_preview

_UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_PRIMITIVES = {"INT", "FLOAT", "STRING", "BOOLEAN"}

SAMPLERS = [
    "euler",
    "euler_ancestral",
    "heun",
    "dpm_2",
    "lms",
    "dpmpp_2m",
    "dpmpp_2m_sde",
    "dpmpp_sde",
    "ddim",
    "uni_pc",
    "lcm",
    "dpmpp_3m_sde",
    "res_multistep",
    "ddpm",
    "deis",
    "ipndm",
    "er_sde",
    "dpm_fast",
    "dpm_adaptive",
    "dpmpp_2s_ancestral",
    "heunpp2",
    "sa_solver",
]
SCHEDULERS = [
    "simple",
    "sgm_uniform",
    "karras",
    "exponential",
    "ddim_uniform",
    "beta",
    "normal",
    "linear_quadratic",
    "kl_optimal",
]


def _is_upload_combo(kind: Any, options: Any) -> bool:
    """A file-picker combo (``image_upload``): the fake validates it like LoadImage's VALIDATE_INPUTS."""
    return (
        (isinstance(kind, list) or kind == "COMBO")
        and isinstance(options, dict)
        and bool(options.get("image_upload"))
    )


def _node(
    required: dict,
    output: list[str],
    *,
    optional: dict | None = None,
    output_node: bool = False,
    hidden: dict | None = None,
    category: str = "",
) -> dict:
    inputs: dict[str, Any] = {"required": required}
    order: dict[str, list[str]] = {"required": list(required)}
    if optional:
        inputs["optional"] = optional
        order["optional"] = list(optional)
    if hidden:
        inputs["hidden"] = hidden
        order["hidden"] = list(hidden)
    return {
        "input": inputs,
        "input_order": order,
        "is_input_list": False,
        "output": output,
        "output_is_list": [False] * len(output),
        "output_name": list(output),
        "output_node": output_node,
        "category": category,
        "python_module": "nodes",
        "description": "",
        "has_intermediate_output": False,
        "search_aliases": [],
    }


def default_object_info() -> dict[str, dict]:
    """A small but real-shaped ``/object_info``: the stock SD/SDXL txt2img + img2img nodes.

    Model lists hold ``tiny_sd15.safetensors``, ``sdxl_base.safetensors`` and a LoRA; merge your
    own classes (e.g. Luna nodes) with ``FakeComfyUI(extra_object_info={...})``.
    """
    seed_spec = ["INT", {"default": 0, "min": 0, "max": 18446744073709551615, "control_after_generate": True}]
    return {
        "CheckpointLoaderSimple": _node(
            {"ckpt_name": [["tiny_sd15.safetensors", "sdxl_base.safetensors"], {}]},
            ["MODEL", "CLIP", "VAE"],
            category="loaders",
        ),
        "CLIPTextEncode": _node(
            {"text": ["STRING", {"multiline": True, "dynamicPrompts": True}], "clip": ["CLIP", {}]},
            ["CONDITIONING"],
            category="conditioning",
        ),
        "EmptyLatentImage": _node(
            {
                "width": ["INT", {"default": 512, "min": 16, "max": 16384, "step": 8}],
                "height": ["INT", {"default": 512, "min": 16, "max": 16384, "step": 8}],
                "batch_size": ["INT", {"default": 1, "min": 1, "max": 4096}],
            },
            ["LATENT"],
            category="latent",
        ),
        "KSampler": _node(
            {
                "model": ["MODEL", {}],
                "seed": seed_spec,
                "steps": ["INT", {"default": 20, "min": 1, "max": 10000}],
                "cfg": ["FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01}],
                "sampler_name": [SAMPLERS, {}],
                "scheduler": [SCHEDULERS, {}],
                "positive": ["CONDITIONING", {}],
                "negative": ["CONDITIONING", {}],
                "latent_image": ["LATENT", {}],
                "denoise": ["FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01}],
            },
            ["LATENT"],
            category="sampling",
        ),
        "VAEDecode": _node({"samples": ["LATENT", {}], "vae": ["VAE", {}]}, ["IMAGE"], category="latent"),
        "VAEEncode": _node({"pixels": ["IMAGE", {}], "vae": ["VAE", {}]}, ["LATENT"], category="latent"),
        "VAELoader": _node(
            {"vae_name": [["sdxl_vae.safetensors", "pixel_space"], {}]}, ["VAE"], category="loaders"
        ),
        "LoraLoader": _node(
            {
                "model": ["MODEL", {}],
                "clip": ["CLIP", {}],
                "lora_name": [["detail.safetensors", "style_anime.safetensors"], {}],
                "strength_model": ["FLOAT", {"default": 1.0, "min": -100.0, "max": 100.0, "step": 0.01}],
                "strength_clip": ["FLOAT", {"default": 1.0, "min": -100.0, "max": 100.0, "step": 0.01}],
            },
            ["MODEL", "CLIP"],
            category="loaders",
        ),
        "LoadImage": _node(
            {"image": [["example.png"], {"image_upload": True}]}, ["IMAGE", "MASK"], category="image"
        ),
        "SaveImage": _node(
            {"images": ["IMAGE", {}], "filename_prefix": ["STRING", {"default": "ComfyUI"}]},
            ["IMAGE"],
            output_node=True,
            hidden={"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
            category="image",
        ),
        "PreviewImage": _node(
            {"images": ["IMAGE", {}]},
            [],
            output_node=True,
            hidden={"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
            category="image",
        ),
    }


def txt2img_prompt(
    *,
    seed: int = 1,
    steps: int = 4,
    text: str = "a lighthouse at dusk",
    width: int = 64,
    height: int = 64,
    batch_size: int = 1,
    ckpt: str = "tiny_sd15.safetensors",
    prefix: str = "luna",
) -> dict[str, dict]:
    """A valid API-format txt2img prompt for :func:`default_object_info` (node ids as ComfyUI's default)."""
    return {
        "4": {
            "class_type": "CheckpointLoaderSimple",
            "inputs": {"ckpt_name": ckpt},
            "_meta": {"title": "Load Checkpoint"},
        },
        "5": {
            "class_type": "EmptyLatentImage",
            "inputs": {"width": width, "height": height, "batch_size": batch_size},
            "_meta": {"title": "Empty Latent Image"},
        },
        "6": {
            "class_type": "CLIPTextEncode",
            "inputs": {"text": text, "clip": ["4", 1]},
            "_meta": {"title": "Positive"},
        },
        "7": {
            "class_type": "CLIPTextEncode",
            "inputs": {"text": "blurry", "clip": ["4", 1]},
            "_meta": {"title": "Negative"},
        },
        "3": {
            "class_type": "KSampler",
            "inputs": {
                "seed": seed,
                "steps": steps,
                "cfg": 7.0,
                "sampler_name": "euler",
                "scheduler": "normal",
                "denoise": 1.0,
                "model": ["4", 0],
                "positive": ["6", 0],
                "negative": ["7", 0],
                "latent_image": ["5", 0],
            },
            "_meta": {"title": "KSampler"},
        },
        "8": {
            "class_type": "VAEDecode",
            "inputs": {"samples": ["3", 0], "vae": ["4", 2]},
            "_meta": {"title": "VAE Decode"},
        },
        "9": {
            "class_type": "SaveImage",
            "inputs": {"filename_prefix": prefix, "images": ["8", 0]},
            "_meta": {"title": "Save Image"},
        },
    }


def png_bytes(size: tuple[int, int] = (64, 64), color: tuple[int, int, int] = (40, 80, 160)) -> bytes:
    """Real PNG bytes (Pillow) of one solid colour."""
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg_bytes(size: tuple[int, int] = (16, 16), color: tuple[int, int, int] = (90, 90, 90)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="JPEG")
    return buffer.getvalue()


@dataclass
class ReceivedPrompt:
    """One accepted ``POST /prompt`` as the fake saw it."""

    prompt_id: str
    client_id: str | None
    prompt: dict
    extra_data: dict
    number: float
    body: dict
    headers: dict[str, str]
    outputs_to_execute: list[str]


@dataclass
class _Job:
    number: float
    prompt_id: str
    prompt: dict
    extra_data: dict
    outputs: list[str]
    client_id: str | None
    messages: list = field(default_factory=list)

    def queue_item(self) -> list:
        return [self.number, self.prompt_id, self.prompt, self.extra_data, self.outputs]


class _Crashed(Exception):
    """Raised inside the worker when a scripted crash happens."""


class _Interrupted(Exception):
    pass


class _NodeFailure(Exception):
    def __init__(self, node_id: str, class_type: str, exception_type: str, message: str) -> None:
        super().__init__(message)
        self.node_id, self.class_type, self.exception_type, self.message = (
            node_id,
            class_type,
            exception_type,
            message,
        )


def _now_ms() -> int:
    return int(time.time() * 1000)


class FakeComfyUI:
    """The fake server; see the module docstring. Runs on the event loop that started it."""

    def __init__(
        self,
        *,
        object_info: dict[str, dict] | None = None,
        extra_object_info: dict[str, dict] | None = None,
        render_delay: float = 0.0,
        progress_steps_cap: int = 4,
        image_size: tuple[int, int] = (32, 32),
        send_execution_success: bool = True,
        send_progress_state: bool = True,
        accept_client_prompt_id: bool = True,
        strict_prompt_id: bool = True,
        legacy_errors: bool = False,
        version: str = "0.33.0",
        vram_total: int = 24 * 1024**3,
        vram_free: int = 20 * 1024**3,
        host: str = "127.0.0.1",
    ) -> None:
        self.object_info = copy.deepcopy(object_info) if object_info is not None else default_object_info()
        if extra_object_info:
            self.object_info.update(copy.deepcopy(extra_object_info))
        self.render_delay = render_delay
        self.progress_steps_cap = progress_steps_cap
        self.image_size = image_size
        self.send_execution_success = send_execution_success
        self.send_progress_state = send_progress_state
        self.accept_client_prompt_id = accept_client_prompt_id
        self.strict_prompt_id = strict_prompt_id
        self.legacy_errors = legacy_errors
        self.accept_websockets = True
        self.hold_history = False
        self.version = version
        self.vram_total = vram_total
        self.vram_free = vram_free
        self.host = host
        self.port = 0

        # inspection
        self.prompts: list[ReceivedPrompt] = []
        self.rejected: list[dict] = []
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.ws_connections: list[tuple[str, dict[str, str]]] = []
        self.interrupts: list[dict | None] = []
        self.crashes = 0
        self._reset_state()
        self._seed_input_folder()

        self._runner: web.AppRunner | None = None
        self._worker: asyncio.Task | None = None
        self._failures: list[dict] = []
        self._forced_rejections: list[tuple[int, dict]] = []
        self._swallowed_replies = 0
        self._held_replies: list[web.Request] = []
        self._reply_gate = asyncio.Event()
        self._prompt_waiters: list[asyncio.Future] = []
        self._drop_triggers: list[dict] = []
        self._die_triggers: list[dict] = []
        self._run_gate = asyncio.Event()
        self._run_gate.set()
        self._history_gate = asyncio.Event()
        self._interrupt_wake = asyncio.Event()
        self._state_waiters: dict[tuple[str, str], list[asyncio.Future]] = {}
        self._states: dict[str, str] = {}
        self._bg_tasks: set[asyncio.Task] = set()

    # --- lifecycle ---------------------------------------------------------------------------

    def _reset_state(self) -> None:
        self.history: dict[str, dict] = {}
        # The input folder is on disk in a real ComfyUI: uploads survive a crash/restart.
        kept = {key: data for key, data in getattr(self, "files", {}).items() if key[0] == "input"}
        self.files: dict[tuple[str, str, str], bytes] = kept
        self._pending: list[tuple[float, int, _Job]] = []
        self._running: _Job | None = None
        self._running_node: str | None = None
        self._seq = itertools.count()
        self._counter = 0
        self._image_counter = 0
        self._cache: dict[str, dict | None] = {}
        self._sockets: dict[str, tuple[web.WebSocketResponse, Any]] = {}
        self._preview_metadata_clients: set[str] = set()
        self._interrupt_flag = False
        self._queue_event = asyncio.Event()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def __aenter__(self) -> FakeComfyUI:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _build_app(self) -> web.Application:
        app = web.Application(client_max_size=100 * 1024**2)
        routes = [
            ("GET", "/ws", self._ws),
            ("POST", "/prompt", self._post_prompt),
            ("GET", "/prompt", self._get_prompt),
            ("GET", "/queue", self._get_queue),
            ("POST", "/queue", self._post_queue),
            ("POST", "/interrupt", self._post_interrupt),
            ("POST", "/free", self._post_free),
            ("GET", "/history", self._get_history_all),
            ("GET", "/history/{prompt_id}", self._get_history),
            ("POST", "/history", self._post_history),
            ("GET", "/view", self._view),
            ("POST", "/upload/image", self._upload_image),
            ("GET", "/system_stats", self._system_stats),
            ("GET", "/features", self._features),
            ("GET", "/object_info", self._object_info_all),
            ("GET", "/object_info/{node_class}", self._object_info_one),
            ("GET", "/embeddings", self._embeddings),
            ("GET", "/models", self._models),
        ]
        for method, path, handler in routes:
            for prefix in ("", "/api"):
                app.router.add_route(method, prefix + path, self._recorded(handler))
        return app

    def _recorded(self, handler: Callable) -> Callable:
        async def wrapper(request: web.Request) -> web.StreamResponse:
            self.requests.append(
                (request.method, request.path, {k.lower(): v for k, v in request.headers.items()})
            )
            return await handler(request)

        return wrapper

    async def start(self) -> None:
        """Listen on ``host``:``port`` (port 0 the first time = any free port)."""
        self._runner = web.AppRunner(
            self._build_app(), handle_signals=False, access_log=None, shutdown_timeout=0.1
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        if self.port == 0:
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._worker = asyncio.create_task(self._work(), name=f"fake-comfyui-{self.port}")

    async def stop(self) -> None:
        """Shut down cleanly (closes sockets, cancels the worker)."""
        await self._shutdown(abort=False)
        for task in list(self._bg_tasks):
            task.cancel()
        if self._bg_tasks:
            await asyncio.gather(*self._bg_tasks, return_exceptions=True)

    async def _shutdown(self, *, abort: bool) -> None:
        for held in self._held_replies:  # a swallowed reply never comes: cut its connection
            if held.transport is not None:
                held.transport.abort()
        self._held_replies.clear()
        self._reply_gate.set()
        worker, self._worker = self._worker, None
        if worker is not None and worker is not asyncio.current_task():
            worker.cancel()
            await asyncio.gather(worker, return_exceptions=True)
        for ws, transport in list(self._sockets.values()):
            if abort and transport is not None:
                transport.abort()
            else:
                await ws.close()
        self._sockets.clear()
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def crash(self) -> None:
        """Die now: connections reset, listener closed, all memory (queue, history, files) gone."""
        self.crashes += 1
        await self._shutdown(abort=True)
        self._reset_state()
        for waiters in self._state_waiters.values():
            for fut in waiters:
                if not fut.done():
                    fut.set_exception(ConnectionResetError("fake ComfyUI crashed"))
        self._state_waiters.clear()

    async def restart(self) -> None:
        """Come back on the same port with empty memory (as after a process restart)."""
        if self._runner is not None:
            await self._shutdown(abort=True)
        self._reset_state()
        self._reply_gate = asyncio.Event()
        await self.start()

    # --- the input folder ----------------------------------------------------------------------

    def input_files(self) -> list[str]:
        """What an upload widget (LoadImage) lists: image files at the top of the input folder, sorted."""
        return sorted(
            filename
            for kind, subfolder, filename in self.files
            if kind == "input"
            and not subfolder
            and (mimetypes.guess_type(filename)[0] or "").startswith("image/")
        )

    def _upload_combos(self) -> list[tuple[Any, dict]]:
        """(combo spec, its options) of every ``image_upload`` input in ``object_info``."""
        found = []
        for info in self.object_info.values():
            for section in ("required", "optional"):
                for spec in ((info.get("input") or {}).get(section) or {}).values():
                    if (
                        isinstance(spec, list)
                        and spec
                        and _is_upload_combo(spec[0], spec[1] if len(spec) > 1 else {})
                    ):
                        found.append((spec, spec[1]))
        return found

    def _seed_input_folder(self) -> None:
        """The files an upload widget lists at start (e.g. ``example.png``) exist in the input folder."""
        for spec, options in self._upload_combos():
            names = spec[0] if isinstance(spec[0], list) else options.get("options", [])
            for name in names:
                subfolder, _, filename = str(name).rpartition("/")
                self.files.setdefault(("input", subfolder, filename), png_bytes())

    def _refresh_upload_lists(self) -> None:
        """Upload widgets list the input folder as it is now (ComfyUI lists it on every ``/object_info``)."""
        current = self.input_files()
        for spec, options in self._upload_combos():
            if isinstance(spec[0], list):
                spec[0] = list(current)
            else:
                options["options"] = list(current)

    def _input_file_exists(self, value: Any) -> bool:
        """``folder_paths.exists_annotated_filepath``: ``sub/name.png``, optionally `` [output]``/``[temp]``."""
        if not isinstance(value, str):
            return False
        kind, name = "input", value
        for annotation in ("output", "input", "temp"):
            if name.endswith(f"[{annotation}]"):
                kind, name = annotation, name[: -len(annotation) - 3]
                break
        subfolder, _, filename = posixpath.normpath(name.replace("\\", "/")).rpartition("/")
        return (kind, subfolder, filename) in self.files

    # --- scripting -----------------------------------------------------------------------------

    def fail_on(
        self,
        *,
        node: str | None = None,
        class_type: str | None = None,
        exception_type: str = "RuntimeError",
        message: str = "simulated failure",
        times: int = 1,
    ) -> None:
        """Make the next ``times`` executions of a node (by id or class type) raise."""
        self._failures.append(
            {
                "node": node,
                "class_type": class_type,
                "exception_type": exception_type,
                "message": message,
                "times": times,
            }
        )

    def drop_websockets_on(self, event: str, *, node: str | None = None, times: int = 1) -> None:
        """Close every WebSocket right before the next ``event`` (for ``node``, if given) is sent."""
        self._drop_triggers.append({"event": event, "node": node, "times": times})

    def die_on(self, event: str, *, node: str | None = None) -> None:
        """Crash the server right before the next ``event`` (for ``node``, if given) is sent."""
        self._die_triggers.append({"event": event, "node": node, "times": 1})

    def reject_next(self, body: dict | None = None, *, status: int = 400, times: int = 1) -> None:
        """Answer the next ``times`` ``POST /prompt`` with ``body`` (default: a missing-model 400)."""
        if body is None:
            body = {
                "error": {
                    "type": "prompt_outputs_failed_validation",
                    "message": "Prompt outputs failed validation",
                    "details": "",
                    "extra_info": {},
                },
                "node_errors": {
                    "4": {
                        "errors": [
                            {
                                "type": "value_not_in_list",
                                "message": "Value not in list",
                                "details": "ckpt_name: 'missing.safetensors' not in ['tiny_sd15.safetensors']",
                                "extra_info": {
                                    "input_name": "ckpt_name",
                                    "input_config": None,
                                    "received_value": "missing.safetensors",
                                },
                            }
                        ],
                        "dependent_outputs": ["9"],
                        "class_type": "CheckpointLoaderSimple",
                    }
                },
            }
        self._forced_rejections.extend([(status, body)] * times)

    def swallow_prompt_replies(self, times: int = 1) -> None:
        """Queue the next ``times`` prompts but never answer their ``POST /prompt`` (a reply lost
        on the way back: the client times out although the job was accepted and runs)."""
        self._swallowed_replies += times

    def clear_cache(self) -> None:
        """Forget cached node outputs, so an identical prompt runs again (like ``POST /free``)."""
        self._cache.clear()

    def pause(self) -> None:
        """Hold the worker at its next step (before the next node or sampler step)."""
        self._run_gate.clear()

    def resume(self) -> None:
        self._run_gate.set()

    def release_history(self) -> None:
        """Let a held history write (``hold_history = True``) happen."""
        self._history_gate.set()

    async def drop_websockets(self) -> None:
        """Close every WebSocket now (abruptly, no close frame)."""
        for ws, transport in list(self._sockets.values()):
            if transport is not None:
                transport.abort()
            else:
                await ws.close()
        self._sockets.clear()

    async def wait_state(self, prompt_id: str, state: str) -> None:
        """Wait until the job is ``pending``, ``running`` or ``done`` (returns at once if past it)."""
        order = {"pending": 0, "running": 1, "done": 2}
        current = self._states.get(prompt_id)
        if current is not None and order[current] >= order[state]:
            return
        fut = asyncio.get_running_loop().create_future()
        self._state_waiters.setdefault((prompt_id, state), []).append(fut)
        await fut

    async def wait_for_prompts(self, count: int) -> list[ReceivedPrompt]:
        """Wait until ``count`` prompts were accepted in total; returns ``prompts``."""
        while len(self.prompts) < count:
            fut = asyncio.get_running_loop().create_future()
            self._prompt_waiters.append(fut)
            await fut
        return self.prompts

    def request_count(self, path: str, method: str | None = None) -> int:
        """How many requests hit ``path`` (with or without the ``/api`` prefix)."""
        bare = path[4:] if path.startswith("/api/") else path
        return sum(
            1
            for m, p, _ in self.requests
            if (p == bare or p == "/api" + bare) and (method is None or m == method)
        )

    @property
    def queue_remaining(self) -> int:
        return len(self._pending) + (1 if self._running else 0)

    def _set_state(self, prompt_id: str, state: str) -> None:
        self._states[prompt_id] = state
        order = ["pending", "running", "done"]
        for name in order[: order.index(state) + 1]:
            for fut in self._state_waiters.pop((prompt_id, name), []):
                if not fut.done():
                    fut.set_result(None)

    # --- sending -----------------------------------------------------------------------------

    async def _check_triggers(self, event: str, data: dict) -> None:
        node = data.get("node") or data.get("node_id")
        for trigger in self._die_triggers:
            if trigger["times"] > 0 and trigger["event"] == event and trigger["node"] in (None, node):
                trigger["times"] -= 1
                await self.crash()
                raise _Crashed()
        for trigger in self._drop_triggers:
            if trigger["times"] > 0 and trigger["event"] == event and trigger["node"] in (None, node):
                trigger["times"] -= 1
                await self.drop_websockets()

    async def _send(self, event: str, data: dict, sid: str | None) -> None:
        """ComfyUI's ``send_sync``: ``sid`` None broadcasts, otherwise only that client's socket."""
        await self._check_triggers(event, data)
        text = json.dumps({"type": event, "data": data})
        targets = (
            list(self._sockets.items())
            if sid is None
            else [(sid, self._sockets[sid])]
            if sid in self._sockets
            else []
        )
        for _, (ws, _transport) in targets:
            try:
                await ws.send_str(text)
            except (ConnectionError, RuntimeError):
                pass

    async def _send_bytes(self, payload: bytes, sid: str | None) -> None:
        targets = (
            list(self._sockets.values())
            if sid is None
            else [self._sockets[sid]]
            if sid in self._sockets
            else []
        )
        for ws, _transport in targets:
            try:
                await ws.send_bytes(payload)
            except (ConnectionError, RuntimeError):
                pass

    async def _broadcast_status(self) -> None:
        await self._send("status", {"status": {"exec_info": {"queue_remaining": self.queue_remaining}}}, None)

    # --- websocket ---------------------------------------------------------------------------

    async def _ws(self, request: web.Request) -> web.StreamResponse:
        if not self.accept_websockets:
            return web.Response(status=503, text="WebSocket refused by the fake")
        client_id = request.query.get("clientId") or uuid.uuid4().hex
        self.ws_connections.append((client_id, {k.lower(): v for k, v in request.headers.items()}))
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        old = self._sockets.get(client_id)
        self._sockets[client_id] = (ws, request.transport)
        if old is not None:
            await old[0].close()
        try:
            await ws.send_str(
                json.dumps(
                    {
                        "type": "status",
                        "data": {
                            "status": {"exec_info": {"queue_remaining": self.queue_remaining}},
                            "sid": client_id,
                        },
                    }
                )
            )
            if self._running is not None and self._running.client_id == client_id and self._running_node:
                await ws.send_str(json.dumps({"type": "executing", "data": {"node": self._running_node}}))
            first = True
            async for message in ws:
                if message.type == WSMsgType.TEXT and first:
                    try:
                        parsed = json.loads(message.data)
                    except ValueError:
                        parsed = None
                    if isinstance(parsed, dict) and parsed.get("type") == "feature_flags":
                        if (parsed.get("data") or {}).get("supports_preview_metadata"):
                            self._preview_metadata_clients.add(client_id)
                        await ws.send_str(
                            json.dumps({"type": "feature_flags", "data": self._feature_flags()})
                        )
                first = False
        finally:
            if self._sockets.get(client_id, (None,))[0] is ws:
                del self._sockets[client_id]
        return ws

    def _feature_flags(self) -> dict:
        return {"supports_preview_metadata": True, "max_upload_size": 100 * 1024**2}

    # --- prompt validation -------------------------------------------------------------------

    def _reject(
        self,
        error_type: str,
        message: str,
        details: str = "",
        extra: dict | None = None,
        node_errors: dict | None = None,
    ) -> web.Response:
        if self.legacy_errors and error_type == "no_prompt":
            body: dict = {"error": "no prompt", "node_errors": []}
        else:
            body = {
                "error": {
                    "type": error_type,
                    "message": message,
                    "details": details,
                    "extra_info": extra or {},
                },
                "node_errors": node_errors or {},
            }
        self.rejected.append(body)
        return web.json_response(body, status=400)

    def _reason(self, reason_type: str, message: str, details: str, extra: dict) -> dict | str:
        if self.legacy_errors:
            return f"{message}: {details}"
        return {"type": reason_type, "message": message, "details": details, "extra_info": extra}

    def _validate_node(self, prompt: dict, node_id: str, validated: dict[str, tuple[bool, list]]) -> bool:
        if node_id in validated:
            return validated[node_id][0]
        validated[node_id] = (True, [])  # cycle guard
        node = prompt[node_id]
        info = self.object_info[node["class_type"]]
        inputs = node.get("inputs") or {}
        specs = dict(info["input"].get("required", {}))
        optional = info["input"].get("optional", {}) or {}
        errors: list = []
        file_checked: list[tuple[str, Any]] = []
        valid = True
        for name in list(specs) + [n for n in optional if n in inputs]:
            spec = specs.get(name) or optional[name]
            kind, options = spec[0], (spec[1] if len(spec) > 1 else {})
            if name not in inputs:
                errors.append(
                    self._reason(
                        "required_input_missing", "Required input is missing", name, {"input_name": name}
                    )
                )
                valid = False
                continue
            value = inputs[name]
            if (
                isinstance(value, list)
                and len(value) == 2
                and isinstance(value[0], str)
                and isinstance(value[1], int)
            ):
                source_id, index = value
                if source_id not in prompt:
                    errors.append(
                        self._reason(
                            "exception_during_inner_validation",
                            "Exception when validating inner node",
                            repr(source_id),
                            {
                                "input_name": name,
                                "input_config": spec,
                                "exception_message": repr(source_id),
                                "exception_type": "KeyError",
                                "traceback": [],
                                "linked_node": value,
                            },
                        )
                    )
                    valid = False
                    continue
                source = prompt[source_id]
                source_info = self.object_info.get(source.get("class_type"), {})
                outputs = source_info.get("output", [])
                received = outputs[index] if 0 <= index < len(outputs) else None
                expected = kind if isinstance(kind, str) else "COMBO"
                if received is None or (
                    received != expected
                    and "*" not in (received, expected)
                    and not (expected == "COMBO" and received == "COMBO")
                ):
                    errors.append(
                        self._reason(
                            "return_type_mismatch",
                            "Return type mismatch between linked nodes",
                            f"{name}, received_type({received}) mismatch input_type({expected})",
                            {
                                "input_name": name,
                                "input_config": spec,
                                "received_type": received,
                                "linked_node": value,
                            },
                        )
                    )
                    valid = False
                    continue
                if not self._validate_node(prompt, source_id, validated):
                    valid = False
                continue
            if _is_upload_combo(kind, options):
                # Like LoadImage: VALIDATE_INPUTS(image) takes this input, so ComfyUI skips the
                # list check (the list is stale right after an upload) and asks the node instead.
                file_checked.append((name, value))
                continue
            error = self._check_value(name, spec, kind, options, value)
            if error is not None:
                errors.append(error)
                valid = False
        for name, value in file_checked:
            if not self._input_file_exists(value):
                errors.append(
                    self._reason(
                        "custom_validation_failed",
                        "Custom validation failed for node",
                        f"{name} - Invalid image file: {value}",
                        {"input_name": name},
                    )
                )
        validated[node_id] = (valid and not errors, errors)
        return validated[node_id][0]

    @staticmethod
    def _upstream(prompt: dict, node_id: str) -> list[str]:
        """``node_id`` and every node it depends on through links."""
        seen: list[str] = []
        stack = [node_id]
        while stack:
            current = stack.pop()
            if current in seen or current not in prompt:
                continue
            seen.append(current)
            for value in (prompt[current].get("inputs") or {}).values():
                if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str):
                    stack.append(value[0])
        return seen

    def _check_value(self, name: str, spec: list, kind: Any, options: dict, value: Any) -> dict | str | None:
        if isinstance(kind, list) or kind == "COMBO":
            choices = kind if isinstance(kind, list) else options.get("options", [])
            if value not in choices:
                shown = f"(list of length {len(choices)})" if len(choices) > 20 else repr(choices)
                return self._reason(
                    "value_not_in_list",
                    "Value not in list",
                    f"{name}: '{value}' not in {shown}",
                    {
                        "input_name": name,
                        "input_config": None if len(choices) > 20 else spec,
                        "received_value": value,
                    },
                )
            return None
        if kind not in _PRIMITIVES:
            return None
        try:
            if kind == "INT":
                converted: Any = int(value)
            elif kind == "FLOAT":
                converted = float(value)
            elif kind == "STRING":
                converted = str(value)
            else:
                converted = bool(value)
        except (TypeError, ValueError) as exc:
            return self._reason(
                "invalid_input_type",
                f"Failed to convert an input value to a {kind} value",
                f"{name}, {value}, {exc}",
                {
                    "input_name": name,
                    "input_config": spec,
                    "received_value": value,
                    "exception_message": str(exc),
                },
            )
        if kind in ("INT", "FLOAT"):
            if "min" in options and converted < options["min"]:
                return self._reason(
                    "value_smaller_than_min",
                    f"Value {converted} smaller than min of {options['min']}",
                    name,
                    {"input_name": name, "input_config": spec, "received_value": converted},
                )
            if "max" in options and converted > options["max"]:
                return self._reason(
                    "value_bigger_than_max",
                    f"Value {converted} bigger than max of {options['max']}",
                    name,
                    {"input_name": name, "input_config": spec, "received_value": converted},
                )
        return None

    def _validate(self, prompt: dict) -> tuple[web.Response | None, list[str], dict]:
        """Return (400 response or None, output ids to execute, node_errors)."""
        for node_id, node in prompt.items():
            title = ((node or {}).get("_meta") or {}).get("title") if isinstance(node, dict) else None
            class_type = node.get("class_type") if isinstance(node, dict) else None
            if class_type is None:
                label = title or node_id
                return (
                    self._reject(
                        "missing_node_type",
                        f"Node '{label}' has no class_type. The workflow may be corrupted or a custom node is missing.",
                        f"Node ID '#{node_id}'",
                        {"node_id": node_id, "class_type": None, "node_title": label},
                    ),
                    [],
                    {},
                )
            if class_type not in self.object_info:
                label = title or class_type
                return (
                    self._reject(
                        "missing_node_type",
                        f"Node '{label}' not found. The custom node may not be installed.",
                        f"Node ID '#{node_id}'",
                        {"node_id": node_id, "class_type": class_type, "node_title": label},
                    ),
                    [],
                    {},
                )
        outputs = [
            nid for nid, node in prompt.items() if self.object_info[node["class_type"]].get("output_node")
        ]
        if not outputs:
            return self._reject("prompt_no_outputs", "Prompt has no outputs"), [], {}
        validated: dict[str, tuple[bool, list]] = {}
        good: list[str] = []
        node_errors: dict[str, dict] = {}
        for output_id in outputs:
            if self._validate_node(prompt, output_id, validated):
                good.append(output_id)
                continue
            for node_id in self._upstream(prompt, output_id):
                reasons = validated.get(node_id, (True, []))[1]
                if reasons:
                    entry = node_errors.setdefault(
                        node_id,
                        {
                            "errors": reasons,
                            "dependent_outputs": [],
                            "class_type": prompt[node_id]["class_type"],
                        },
                    )
                    entry["dependent_outputs"].append(output_id)
        if not good:
            return (
                self._reject(
                    "prompt_outputs_failed_validation",
                    "Prompt outputs failed validation",
                    node_errors=node_errors,
                ),
                [],
                node_errors,
            )
        return None, good, node_errors

    # --- HTTP handlers -----------------------------------------------------------------------

    async def _post_prompt(self, request: web.Request) -> web.Response:
        try:
            body = json.loads(await request.text())
        except ValueError:
            return web.Response(status=500, text="500 Internal Server Error\n\nServer got itself in trouble")
        if self._forced_rejections:
            status, forced = self._forced_rejections.pop(0)
            self.rejected.append(forced)
            return web.json_response(forced, status=status)
        if not isinstance(body, dict) or "prompt" not in body:
            return self._reject("no_prompt", "No prompt provided", "No prompt provided")
        prompt = body["prompt"]
        if not isinstance(prompt, dict):
            return self._reject("no_prompt", "No prompt provided", "No prompt provided")
        prompt_id = str(uuid.uuid4())
        if self.accept_client_prompt_id and "prompt_id" in body:
            prompt_id = str(body["prompt_id"])
            if self.strict_prompt_id and not _UUID_RE.match(prompt_id):
                return self._reject(
                    "invalid_prompt_id",
                    "prompt_id must be a valid UUID",
                    "prompt_id must be a UUID string in canonical lowercase hyphenated form; "
                    "omit it to let the server generate one",
                )
        rejection, outputs, node_errors = self._validate(prompt)
        if rejection is not None:
            return rejection
        if "number" in body:
            number = float(body["number"])
        else:
            self._counter += 1
            number = -self._counter if body.get("front") else self._counter
        extra_data = dict(body.get("extra_data") or {})
        client_id = body.get("client_id")
        if client_id is not None:
            extra_data["client_id"] = client_id
        extra_data["create_time"] = _now_ms()
        job = _Job(number, prompt_id, copy.deepcopy(prompt), extra_data, outputs, client_id)
        self.prompts.append(
            ReceivedPrompt(
                prompt_id,
                client_id,
                copy.deepcopy(prompt),
                extra_data,
                number,
                body,
                {k.lower(): v for k, v in request.headers.items()},
                outputs,
            )
        )
        waiters, self._prompt_waiters = self._prompt_waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)
        heapq.heappush(self._pending, (number, next(self._seq), job))
        self._set_state(prompt_id, "pending")
        self._queue_event.set()
        await self._broadcast_status()
        if self._swallowed_replies:
            self._swallowed_replies -= 1
            self._held_replies.append(request)
            await self._reply_gate.wait()  # set only on shutdown, after the connection was cut
        return web.json_response({"prompt_id": prompt_id, "number": number, "node_errors": node_errors})

    async def _get_prompt(self, request: web.Request) -> web.Response:
        return web.json_response({"exec_info": {"queue_remaining": self.queue_remaining}})

    async def _get_queue(self, request: web.Request) -> web.Response:
        running = [self._running.queue_item()] if self._running else []
        return web.json_response(
            {"queue_running": running, "queue_pending": [job.queue_item() for _, _, job in self._pending]}
        )

    async def _post_queue(self, request: web.Request) -> web.Response:
        body = await request.json()
        if body.get("clear"):
            for _, _, job in self._pending:
                self._set_state(job.prompt_id, "done")
            self._pending.clear()
        if "delete" in body:
            doomed = set(body["delete"])
            for _, _, job in self._pending:
                if job.prompt_id in doomed:
                    self._set_state(job.prompt_id, "done")
            self._pending = [entry for entry in self._pending if entry[2].prompt_id not in doomed]
            heapq.heapify(self._pending)
        await self._broadcast_status()
        return web.Response(status=200)

    async def _post_interrupt(self, request: web.Request) -> web.Response:
        body = None
        if request.can_read_body:
            try:
                body = await request.json()
            except ValueError:
                body = None
        self.interrupts.append(body)
        target = (body or {}).get("prompt_id") if isinstance(body, dict) else None
        if self._running is not None and (target is None or target == self._running.prompt_id):
            self._interrupt_flag = True
            self._run_gate_wakeup()
        return web.Response(status=200)

    def _run_gate_wakeup(self) -> None:
        # An interrupt must reach a job held by pause(): the worker waits on the gate OR this.
        self._interrupt_wake.set()

    async def _post_free(self, request: web.Request) -> web.Response:
        body = await request.json()
        if body.get("free_memory"):
            self._cache.clear()
        return web.Response(status=200)

    async def _get_history_all(self, request: web.Request) -> web.Response:
        items = list(self.history.items())
        if "max_items" in request.query:
            items = items[-int(request.query["max_items"]) :]
        return web.json_response(dict(items))

    async def _get_history(self, request: web.Request) -> web.Response:
        prompt_id = request.match_info["prompt_id"]
        entry = self.history.get(prompt_id)
        return web.json_response({prompt_id: entry} if entry is not None else {})

    async def _post_history(self, request: web.Request) -> web.Response:
        body = await request.json()
        if body.get("clear"):
            self.history.clear()
        for prompt_id in body.get("delete", []):
            self.history.pop(prompt_id, None)
        return web.Response(status=200)

    async def _view(self, request: web.Request) -> web.Response:
        filename = request.query.get("filename")
        if not filename or filename.startswith("/") or ".." in filename:
            return web.Response(status=400)
        subfolder = request.query.get("subfolder", "")
        if ".." in subfolder.split("/") or subfolder.startswith("/"):
            return web.Response(status=403)
        kind = request.query.get("type", "output")
        data = self.files.get((kind, subfolder, filename))
        if data is None:
            return web.Response(status=404)
        content_type = "image/png" if filename.endswith(".png") else "application/octet-stream"
        return web.Response(body=data, content_type=content_type)

    async def _upload_image(self, request: web.Request) -> web.Response:
        """ComfyUI's ``image_upload``: into input/temp/output (+ subfolder), renamed on conflict."""
        form = await request.post()
        upload = form.get("image")
        if upload is None or not hasattr(upload, "file"):
            return web.Response(status=400)
        name = upload.filename
        if not name:
            return web.Response(status=400)
        kind = form.get("type")
        kind = "input" if kind is None else str(kind)
        if kind not in ("input", "temp", "output"):
            # ComfyUI has no folder for it and fails with an unhandled error.
            return web.Response(status=500, text="500 Internal Server Error\n\nServer got itself in trouble")
        subfolder = str(form.get("subfolder", ""))
        folder = posixpath.normpath(subfolder.replace("\\", "/"))
        target = posixpath.normpath(posixpath.join(folder, name))
        if (
            target == ".."
            or target.startswith(("../", "/"))
            or folder.startswith(("../", "/"))
            or folder == ".."
        ):
            return web.Response(status=400)  # outside the folder (ComfyUI's commonpath check)
        folder = "" if folder == "." else folder
        data = upload.file.read()
        overwrite = form.get("overwrite")
        if overwrite not in ("true", "1"):
            stem, ext = posixpath.splitext(name)
            counter = 1
            while (kind, folder, name) in self.files:
                if self.files[(kind, folder, name)] == data:  # same bytes: reuse the file (ComfyUI #3465)
                    break
                name = f"{stem} ({counter}){ext}"
                counter += 1
        self.files[(kind, folder, name)] = data
        self._refresh_upload_lists()  # keep ``object_info`` as the next GET /object_info will show it
        return web.json_response({"name": name, "subfolder": subfolder, "type": kind})

    async def _system_stats(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "system": {
                    "os": "linux",
                    "ram_total": 32 * 1024**3,
                    "ram_free": 16 * 1024**3,
                    "comfyui_version": self.version,
                    "required_frontend_version": "1.49.6",
                    "python_version": "3.11.7",
                    "pytorch_version": "2.14.1+cu130",
                    "embedded_python": False,
                    "argv": ["main.py", "--port", str(self.port)],
                },
                "devices": [
                    {
                        "name": "cuda:0 NVIDIA Fake",
                        "type": "cuda",
                        "index": 0,
                        "vram_total": self.vram_total,
                        "vram_free": self.vram_free,
                        "torch_vram_total": self.vram_total // 2,
                        "torch_vram_free": self.vram_free // 2,
                    }
                ],
            }
        )

    async def _features(self, request: web.Request) -> web.Response:
        return web.json_response(self._feature_flags())

    async def _object_info_all(self, request: web.Request) -> web.Response:
        self._refresh_upload_lists()
        return web.json_response(self.object_info)

    async def _object_info_one(self, request: web.Request) -> web.Response:
        name = request.match_info["node_class"]
        self._refresh_upload_lists()
        return web.json_response({name: self.object_info[name]} if name in self.object_info else {})

    async def _embeddings(self, request: web.Request) -> web.Response:
        return web.json_response([])

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response(["checkpoints", "loras", "vae"])

    # --- execution ---------------------------------------------------------------------------

    async def _work(self) -> None:
        while True:
            while not self._pending:
                self._queue_event.clear()
                await self._queue_event.wait()
            _, _, job = heapq.heappop(self._pending)
            self._running = job
            self._interrupt_flag = False
            self._interrupt_wake.clear()
            try:
                await self._execute(job)
            except _Crashed:
                return
            finally:
                if self._running is job:
                    self._running = None
                    self._running_node = None

    async def _checkpoint(self) -> None:
        if not self._run_gate.is_set():
            wake = self._interrupt_wake
            gate_task = asyncio.ensure_future(self._run_gate.wait())
            wake_task = asyncio.ensure_future(wake.wait())
            try:
                await asyncio.wait({gate_task, wake_task}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                gate_task.cancel()
                wake_task.cancel()
                await asyncio.gather(gate_task, wake_task, return_exceptions=True)
        if self._interrupt_flag:
            raise _Interrupted()

    def _order(self, job: _Job) -> list[str]:
        order: list[str] = []
        seen: set[str] = set()

        def visit(node_id: str) -> None:
            if node_id in seen:
                return
            seen.add(node_id)
            for value in (job.prompt[node_id].get("inputs") or {}).values():
                if (
                    isinstance(value, list)
                    and len(value) == 2
                    and isinstance(value[0], str)
                    and value[0] in job.prompt
                ):
                    visit(value[0])
            order.append(node_id)

        for output_id in job.outputs:
            visit(output_id)
        return order

    def _signatures(self, job: _Job, order: list[str]) -> dict[str, str]:
        signatures: dict[str, str] = {}
        for node_id in order:
            node = job.prompt[node_id]
            parts = {}
            for name, value in sorted((node.get("inputs") or {}).items()):
                if (
                    isinstance(value, list)
                    and len(value) == 2
                    and isinstance(value[0], str)
                    and value[0] in signatures
                ):
                    parts[name] = ["link", signatures[value[0]], value[1]]
                else:
                    parts[name] = value
            signatures[node_id] = json.dumps([node["class_type"], parts], sort_keys=True, default=str)
        return signatures

    def _failure_for(self, node_id: str, class_type: str) -> dict | None:
        for failure in self._failures:
            if failure["times"] > 0 and (failure["node"] == node_id or failure["class_type"] == class_type):
                failure["times"] -= 1
                return failure
        return None

    def _literal_upstream(self, job: _Job, node_id: str, name: str, default: Any) -> Any:
        """Find a literal input ``name`` on this node or any node upstream (e.g. seed, batch_size)."""
        stack, seen = [node_id], set()
        while stack:
            current = stack.pop()
            if current in seen or current not in job.prompt:
                continue
            seen.add(current)
            inputs = job.prompt[current].get("inputs") or {}
            value = inputs.get(name)
            if value is not None and not (
                isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)
            ):
                return value
            stack.extend(
                v[0] for v in inputs.values() if isinstance(v, list) and len(v) == 2 and isinstance(v[0], str)
            )
        return default

    def _make_images(self, job: _Job, node_id: str, class_type: str) -> dict:
        seed = int(self._literal_upstream(job, node_id, "seed", 0) or 0)
        batch = int(self._literal_upstream(job, node_id, "batch_size", 1) or 1)
        if class_type == "SaveImage":
            kind, prefix = (
                "output",
                str((job.prompt[node_id].get("inputs") or {}).get("filename_prefix", "ComfyUI")),
            )
        else:
            kind, prefix = "temp", f"ComfyUI_temp_{job.prompt_id[:5]}"
        subfolder, _, stem = prefix.rpartition("/")
        images = []
        for index in range(batch):
            self._image_counter += 1
            filename = f"{stem}_{self._image_counter:05}_.png"
            color = ((seed * 37 + index * 11) % 256, (seed * 91) % 256, (seed * 53 + 100) % 256)
            self.files[(kind, subfolder, filename)] = png_bytes(self.image_size, color)
            images.append({"filename": filename, "subfolder": subfolder, "type": kind})
        return {"images": images}

    async def _execute(self, job: _Job) -> None:
        sid = job.client_id
        pid = job.prompt_id
        targeted = sid is not None
        self._set_state(pid, "running")
        order = self._order(job)
        signatures = self._signatures(job, order)
        cached = [nid for nid in order if signatures[nid] in self._cache]
        outputs: dict[str, dict] = {}
        executed: list[str] = []
        wants_preview = str(job.extra_data.get("preview_method", "none")) not in ("none", "")

        async def targeted_send(event: str, data: dict) -> None:
            if targeted:
                await self._send(event, data, sid)

        start = {"prompt_id": pid, "timestamp": _now_ms()}
        job.messages.append(["execution_start", start])
        await targeted_send("execution_start", start)
        cached_msg = {"nodes": cached, "prompt_id": pid, "timestamp": _now_ms()}
        job.messages.append(["execution_cached", cached_msg])
        await targeted_send("execution_cached", cached_msg)
        states: dict[str, dict] = {}
        try:
            for node_id in cached:
                if node_id in job.outputs:
                    output = self._cache[signatures[node_id]]
                    if output is not None:
                        outputs[node_id] = output
                    await targeted_send(
                        "executed",
                        {"node": node_id, "display_node": node_id, "output": output, "prompt_id": pid},
                    )
            to_run = [nid for nid in order if nid not in cached]
            steps_total = sum(
                max(1, min(int(self._literal_upstream(job, nid, "steps", 1) or 1), self.progress_steps_cap))
                for nid in to_run
                if "steps" in (job.prompt[nid].get("inputs") or {})
            )
            per_step = self.render_delay / steps_total if steps_total else 0.0
            if not steps_total and self.render_delay:
                per_step = self.render_delay / max(1, len(to_run))
            for node_id in to_run:
                await self._checkpoint()
                class_type = job.prompt[node_id]["class_type"]
                self._running_node = node_id
                if self.send_progress_state:
                    states[node_id] = {
                        "value": 0.0,
                        "max": 1.0,
                        "state": "running",
                        "node_id": node_id,
                        "prompt_id": pid,
                        "display_node_id": node_id,
                        "parent_node_id": None,
                        "real_node_id": node_id,
                    }
                    await self._send(
                        "progress_state", {"prompt_id": pid, "nodes": copy.deepcopy(states)}, None
                    )
                await targeted_send("executing", {"node": node_id, "display_node": node_id, "prompt_id": pid})
                failure = self._failure_for(node_id, class_type)
                if failure is not None:
                    raise _NodeFailure(node_id, class_type, failure["exception_type"], failure["message"])
                inputs = job.prompt[node_id].get("inputs") or {}
                if "steps" in inputs:
                    steps = max(1, min(int(inputs["steps"]), self.progress_steps_cap))
                    for step in range(1, steps + 1):
                        await self._checkpoint()
                        if per_step:
                            await asyncio.sleep(per_step)
                        await self._send(
                            "progress", {"value": step, "max": steps, "prompt_id": pid, "node": node_id}, sid
                        )
                        if wants_preview:
                            await self._send_preview(job, node_id, sid)
                elif per_step and not steps_total:
                    await asyncio.sleep(per_step)
                if node_id in job.outputs:
                    output = self._make_images(job, node_id, class_type)
                    outputs[node_id] = output
                    self._cache[signatures[node_id]] = output
                    await targeted_send(
                        "executed",
                        {"node": node_id, "display_node": node_id, "output": output, "prompt_id": pid},
                    )
                else:
                    self._cache[signatures[node_id]] = None
                executed.append(node_id)
                if self.send_progress_state:
                    states[node_id].update({"value": 1.0, "state": "finished"})
            status_str, completed = "success", True
            if self.send_execution_success:
                success = {"prompt_id": pid, "timestamp": _now_ms()}
                job.messages.append(["execution_success", success])
                await targeted_send("execution_success", success)
            else:
                job.messages.append(["execution_success", {"prompt_id": pid, "timestamp": _now_ms()}])
        except _Interrupted:
            node_id = self._running_node
            data = {
                "prompt_id": pid,
                "node_id": node_id,
                "node_type": job.prompt[node_id]["class_type"] if node_id else None,
                "executed": executed,
                "timestamp": _now_ms(),
            }
            job.messages.append(["execution_interrupted", data])
            await self._send("execution_interrupted", data, None)
            status_str, completed = "error", False
        except _NodeFailure as failure:
            data = {
                "prompt_id": pid,
                "node_id": failure.node_id,
                "node_type": failure.class_type,
                "executed": executed,
                "exception_message": failure.message,
                "exception_type": failure.exception_type,
                "traceback": [
                    '  File "ComfyUI/execution.py", line 306, in process_inputs\n    result = f(**inputs)\n'
                ],
                "current_inputs": {
                    k: [str(v)]
                    for k, v in (job.prompt[failure.node_id].get("inputs") or {}).items()
                    if not isinstance(v, list)
                },
                "current_outputs": list(order),
                "timestamp": _now_ms(),
            }
            job.messages.append(["execution_error", data])
            await targeted_send("execution_error", data)
            status_str, completed = "error", False
        # The race of ComfyUI #11540: history is written only after the terminal event went out.
        await asyncio.sleep(0)
        if self.hold_history:
            await self._history_gate.wait()
            self._history_gate.clear()
        self.history[pid] = {
            "prompt": job.queue_item(),
            "outputs": outputs,
            "status": {"status_str": status_str, "completed": completed, "messages": job.messages},
            "meta": {
                nid: {"node_id": nid, "display_node": nid, "parent_node": None, "real_node_id": nid}
                for nid in outputs
            },
        }
        self._running = None
        self._running_node = None
        self._set_state(pid, "done")
        await self._broadcast_status()
        await targeted_send("executing", {"node": None, "prompt_id": pid})

    async def _send_preview(self, job: _Job, node_id: str, sid: str | None) -> None:
        image = jpeg_bytes()
        if sid is not None and sid in self._preview_metadata_clients:
            metadata = {
                "node_id": node_id,
                "prompt_id": job.prompt_id,
                "display_node_id": node_id,
                "parent_node_id": None,
                "real_node_id": node_id,
                "image_type": "image/jpeg",
            }
            await self._send_bytes(encode_preview(image, metadata=metadata), sid)
        else:
            await self._send_bytes(encode_preview(image, mime_type="image/jpeg"), sid)


def main(argv: list[str] | None = None) -> None:
    """Run a fake ComfyUI in its own process until stdin closes (benchmarks, manual CLI tries).

    ``python -m tests.helpers.fake_comfyui [--port N] [--render-delay S]`` prints
    ``FAKE_COMFYUI_READY http://127.0.0.1:PORT`` once listening.
    """
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--render-delay", type=float, default=0.0)
    args = parser.parse_args(argv)

    async def run() -> None:
        fake = FakeComfyUI(render_delay=args.render_delay)
        fake.port = args.port
        await _serve(fake)

    asyncio.run(run())


async def _serve(fake: FakeComfyUI) -> None:
    import sys
    import threading

    await fake.start()
    try:
        print(f"FAKE_COMFYUI_READY {fake.url}", flush=True)
        loop = asyncio.get_running_loop()
        stdin_closed = loop.create_future()

        def watch_stdin() -> None:
            sys.stdin.read()
            loop.call_soon_threadsafe(lambda: stdin_closed.done() or stdin_closed.set_result(None))

        threading.Thread(target=watch_stdin, daemon=True).start()
        await stdin_closed
    finally:
        await fake.stop()


if __name__ == "__main__":
    main()
