"""Command line of the daemon: ``python -m daemon`` / ``luna-daemon`` (console script ``main``).

Owns argument parsing and the merge order defaults < ``--config FILE`` (TOML) < flags. The
parser uses sub-commands with ``serve`` as the default, so ``luna-daemon --port 0`` and
``luna-daemon serve --port 0`` are the same; other commands (the ComfyUI node installer) add
themselves with one ``add_..._command(commands)`` call in :func:`build_parser`, each setting
``handler=`` to a function ``(args) -> exit status``. Runs on the main thread.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from daemon import __version__
from daemon.config import ConfigError, DaemonConfig, build_config, load_config_file
from daemon.wire.ready import DaemonExit

#: flag dest → config key (the TOML name), for merging and for naming flags in errors.
FLAG_KEYS: dict[str, str] = {
    "host": "network.host",
    "port": "network.port",
    "ws_port": "network.ws_port",
    "allowed_origin": "network.allowed_origins",
    "token_file": "network.token_file",
    "require_token": "network.require_token",
    "device": "daemon.device",
    "precision": "daemon.precision",
    "load_models": "daemon.load_models",
    "status_interval": "daemon.status_interval",
    "prompt_cache_size": "daemon.prompt_cache_size",
    "shutdown_grace": "daemon.shutdown_grace",
    "log_level": "daemon.log_level",
    "mode": "scaling.mode",
    "min_vae_workers": "scaling.min_vae_workers",
    "max_vae_workers": "scaling.max_vae_workers",
    "min_clip_workers": "scaling.min_clip_workers",
    "max_clip_workers": "scaling.max_clip_workers",
    "idle_timeout": "scaling.idle_timeout",
    "scale_up_threshold": "scaling.scale_up_queue_threshold",
    "scale_up_delay": "scaling.scale_up_delay",
    "safety_margin_gb": "scaling.safety_margin_gb",
    "vae": "models.default.vae",
    "clip_l": "models.default.clip_l",
    "clip_g": "models.default.clip_g",
    "checkpoint": "models.default.checkpoint",
    "embeddings_dir": "models.default.embeddings_dir",
}


def add_serve_command(commands: Any) -> argparse.ArgumentParser:
    """The ``serve`` sub-command (the default): run the daemon in the foreground."""
    serve = commands.add_parser(
        "serve",
        help="run the daemon in the foreground (default)",
        description="Run the Luna VAE/CLIP daemon. Flags override the TOML file given with --config.",
    )
    add_serve_arguments(serve)
    serve.set_defaults(handler=run_serve)
    return serve


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", metavar="FILE", help="TOML config file (see resources/daemon.example.toml)"
    )
    net = parser.add_argument_group("network")
    net.add_argument("--host", help="address to listen on (default 127.0.0.1; others need a token)")
    net.add_argument("--port", type=int, help="protocol port (default 19283; 0 = any free port)")
    net.add_argument("--ws-port", type=int, help="status WebSocket port (default 19284; 0 = any free port)")
    net.add_argument(
        "--allowed-origin",
        action="append",
        metavar="ORIGIN",
        help="browser Origin allowed on the status WebSocket (repeatable)",
    )
    net.add_argument("--token-file", metavar="FILE", help="token file (default: user config dir)")
    net.add_argument(
        "--require-token",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="require the token from every client (default: only off loopback)",
    )
    dev = parser.add_argument_group("device")
    dev.add_argument("--device", help="auto (default: cuda:1 when present, else best), cpu, mps, cuda:N")
    dev.add_argument("--precision", choices=["bf16", "fp16", "fp32"], help="model dtype (default bf16)")
    dev.add_argument(
        "--load-models", choices=["lazy", "start"], help="load on first use (default) or at start"
    )
    pools = parser.add_argument_group("worker pools")
    mode = pools.add_mutually_exclusive_group()
    mode.add_argument(
        "--static", dest="mode", action="store_const", const="static", help="one worker per pool, no scaling"
    )
    mode.add_argument(
        "--dynamic",
        dest="mode",
        action="store_const",
        const="dynamic",
        help="scale workers with demand (default)",
    )
    pools.add_argument("--min-vae-workers", type=int, help="default 1")
    pools.add_argument("--max-vae-workers", type=int, help="default 4")
    pools.add_argument("--min-clip-workers", type=int, help="default 1")
    pools.add_argument("--max-clip-workers", type=int, help="default 2")
    pools.add_argument("--idle-timeout", type=float, metavar="SECONDS", help="default 60")
    pools.add_argument(
        "--scale-up-threshold",
        type=int,
        metavar="N",
        help="scale up when more than N requests wait (default 1)",
    )
    pools.add_argument("--scale-up-delay", type=float, metavar="SECONDS", help="default 0.5")
    pools.add_argument("--safety-margin-gb", type=float, help="free memory kept in reserve (default 1.0)")
    models = parser.add_argument_group("model set 'default'")
    models.add_argument("--vae", metavar="FILE", help="VAE .safetensors (LDM or diffusers layout)")
    models.add_argument("--clip-l", metavar="FILE", help="CLIP-L text encoder .safetensors")
    models.add_argument("--clip-g", metavar="FILE", help="CLIP-G text encoder .safetensors (SDXL)")
    models.add_argument(
        "--checkpoint", metavar="FILE", help="full SD1.5/SDXL checkpoint: VAE and CLIP are taken from it"
    )
    models.add_argument("--embeddings-dir", metavar="DIR", help="textual-inversion embeddings folder")
    misc = parser.add_argument_group("misc")
    misc.add_argument(
        "--status-interval", type=float, metavar="SECONDS", help="status broadcast period (default 1)"
    )
    misc.add_argument("--prompt-cache-size", type=int, metavar="N", help="cached prompts (default 256)")
    misc.add_argument(
        "--shutdown-grace",
        type=float,
        metavar="SECONDS",
        help="on stop, time given to requests in flight before the process exits (default 5)",
    )
    misc.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], type=str.upper)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="luna-daemon", description="Luna shared VAE/CLIP daemon. Without a command, runs 'serve'."
    )
    parser.add_argument("--version", action="version", version=f"luna-daemon {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_serve_command(commands)
    from daemon.comfyui_nodes.install import add_install_commands  # torch-free

    add_install_commands(commands)
    return parser


def config_from_args(args: argparse.Namespace) -> DaemonConfig:
    """defaults < --config file < flags; ConfigError names the TOML key and the flag."""
    overrides: dict[str, Any] = {}
    source = "defaults"
    if getattr(args, "config", None):
        overrides.update(load_config_file(args.config))
        source = f"{args.config} + flags"
    flagged: dict[str, str] = {}
    for dest, key in FLAG_KEYS.items():
        value = getattr(args, dest, None)
        if value is None:
            continue
        if key.startswith("models.default."):
            overrides["models.default"] = True
        overrides[key] = value
        flagged[key] = "--" + dest.replace("_", "-")
    try:
        return build_config(overrides, source=source)
    except ConfigError as exc:
        flag = flagged.get(exc.key)
        if flag is None:
            raise
        raise ConfigError(f"{flag} ({exc.key})", str(exc).split(": ", 2)[-1]) from None


def run_serve(args: argparse.Namespace) -> int:
    config = config_from_args(args)  # config errors are reported before torch loads
    from daemon.server import run_daemon  # torch is imported only when serving

    return run_daemon(config)


def _with_default_command(argv: list[str], parser: argparse.ArgumentParser) -> list[str]:
    commands = set()
    for action in parser._subparsers._group_actions if parser._subparsers else []:
        commands.update(getattr(action, "choices", {}) or {})
    if argv and (argv[0] in commands or argv[0] in ("-h", "--help", "--version")):
        return argv
    return ["serve", *argv]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(_with_default_command(list(sys.argv[1:] if argv is None else argv), parser))
    try:
        return args.handler(args)
    except ConfigError as exc:
        print(f"luna-daemon: {exc}", file=sys.stderr)
        return DaemonExit.START_FAILED


if __name__ == "__main__":
    sys.exit(main())
