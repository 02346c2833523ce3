"""Installer for the Luna shared-daemon node pack into a ComfyUI installation.

Owns putting the pack into ``ComfyUI/custom_nodes/luna_shared_daemon/`` and taking it out again:
the node modules and README from this folder, plus a vendored copy of the wire package
(``daemon/wire/``: client, protocol, shared memory, status types) under ``_vendor/``, so the
installed pack imports nothing else
from this project. ``copy`` mode copies the files; ``link`` mode makes a real folder of
per-file symlinks into this checkout (edits show up after a ComfyUI restart).

A manifest (``luna_install.json``) marks every folder this installer made; reinstall and
uninstall only ever delete a folder carrying it. The build happens in a hidden staging folder
next to the target; an old pack is first *renamed aside* (hidden, ending in ``.disabled``, which
ComfyUI skips), the new one is renamed into place, and only then is the old one deleted. So a
failed install leaves the old pack working, and a file Windows will not delete (in use by a
running ComfyUI, read-only) never leaves a half-deleted pack: deletion is retried, read-only
flags are cleared, and what still resists stays behind as a clearly named ``.disabled`` folder
that the installer reports and removes next time.

In a frozen (PyInstaller) bundle there are no ``.py`` files to copy: the pack's sources ship as
data under ``resources/comfyui_node_pack/`` (``luna_shared_daemon/`` and ``wire/``; build.spec
collects them), and only copy mode is possible. Blocking file-system code, run from the CLI
(``luna-daemon install-comfyui-nodes`` or ``python -m daemon.comfyui_nodes.install``) or the
GUI's thread pool.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import stat
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from .. import __version__

PACK_DIR_NAME = "luna_shared_daemon"
MANIFEST_NAME = "luna_install.json"
INSTALLER_ID = "luna-narrates-operator"
MODES = ("copy", "link")
#: The staging folder's name: hidden, and ending in ".disabled", which ComfyUI's loader skips,
#: so a folder left by an interrupted install is never loaded as a second copy of the pack.
STAGING_PREFIX = f".{PACK_DIR_NAME}-staging-"
STAGING_SUFFIX = ".disabled"
#: An old pack renamed aside during an upgrade or uninstall, deleted right after (or next time).
OLD_PREFIX = f".{PACK_DIR_NAME}-old-"
#: Where a frozen bundle keeps the pack's sources (under ``resources/``).
FROZEN_PACK_DATA = "comfyui_node_pack"
DELETE_ATTEMPTS = 5
DELETE_RETRY_SECONDS = 0.2

PACKAGE_DIR = Path(__file__).resolve().parent
DAEMON_DIR = PACKAGE_DIR.parent
#: The wire package (``daemon/wire/``), vendored whole: relative imports among its modules,
#: stdlib + numpy only, so it runs inside ComfyUI as it is.
WIRE_DIR = DAEMON_DIR / "wire"
VENDORED_MODULES = tuple(sorted(p.name for p in WIRE_DIR.glob("*.py") if p.name != "__init__.py"))
#: Files of this folder that stay behind: the installer itself is not part of the pack.
_NOT_SHIPPED = {"install.py"}

_VENDOR_INIT = (
    '"""Vendored copy of the Luna daemon wire package (client, protocol, shared memory, status).\n\n'
    "Written by the Luna installer (luna-daemon install-comfyui-nodes); do not edit: reinstall\n"
    'to update them together with the daemon.\n"""\n'
)

Printer = Callable[[str], None]


class InstallError(Exception):
    """The pack could not be installed or removed; the message says why and what to do."""


class NotComfyUIRoot(InstallError):
    """The given path does not look like a ComfyUI root (main.py + custom_nodes/)."""


@dataclass(frozen=True)
class InstallReport:
    """What :func:`install` did."""

    target: Path
    mode: str
    version: str
    files: tuple[str, ...]
    replaced_version: str | None  # the version that was there before, if any


def check_comfyui_root(path: str | os.PathLike) -> Path:
    """The resolved ComfyUI root, or :class:`NotComfyUIRoot` naming what is missing."""
    root = Path(path).expanduser().resolve()
    missing = [
        name
        for name, ok in (
            ("main.py", (root / "main.py").is_file()),
            ("custom_nodes/", (root / "custom_nodes").is_dir()),
        )
        if not ok
    ]
    if missing:
        raise NotComfyUIRoot(
            f"{root} does not look like a ComfyUI folder (missing {' and '.join(missing)}); "
            "pass the folder that contains ComfyUI's main.py"
        )
    return root


def pack_target(comfyui_root: Path) -> Path:
    return comfyui_root / "custom_nodes" / PACK_DIR_NAME


def is_frozen() -> bool:
    return bool(getattr(sys, "frozen", False))


def source_dirs() -> tuple[Path, Path]:
    """(node modules folder, wire package folder): this checkout, or a frozen bundle's data."""
    if is_frozen():
        from ..paths import resource_path

        return resource_path(FROZEN_PACK_DATA, PACK_DIR_NAME), resource_path(FROZEN_PACK_DATA, "wire")
    return PACKAGE_DIR, WIRE_DIR


def pack_sources() -> dict[str, Path]:
    """Relative path in the installed pack → source file (in this checkout or the bundle)."""
    nodes_dir, wire_dir = source_dirs()
    where = "the application bundle" if is_frozen() else "this checkout"
    if not nodes_dir.is_dir() or not wire_dir.is_dir():
        raise InstallError(f"{where} does not contain the node pack sources ({nodes_dir}, {wire_dir})")
    sources = {path.name: path for path in sorted(nodes_dir.glob("*.py")) if path.name not in _NOT_SHIPPED}
    readme = nodes_dir / "README.md"
    if readme.is_file():
        sources["README.md"] = readme
    for path in sorted(wire_dir.glob("*.py")):
        if path.name != "__init__.py":
            sources[f"_vendor/{path.name}"] = path
    missing = [name for name in ("__init__.py", "nodes.py", "_vendor/client.py") if name not in sources]
    if missing:
        raise InstallError(f"{where} is incomplete, missing: {', '.join(missing)}")
    return sources


def read_manifest(target: Path) -> dict | None:
    """The manifest of a pack folder this installer made, else None (never raises)."""
    if target.is_symlink() or not target.is_dir():
        return None  # the installer never makes the pack folder itself a link
    try:
        manifest = json.loads((target / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if (
        not isinstance(manifest, dict)
        or manifest.get("installer") != INSTALLER_ID
        or manifest.get("pack") != PACK_DIR_NAME
    ):
        return None
    return manifest


def install(comfyui_path: str | os.PathLike, *, mode: str = "copy", out: Printer = print) -> InstallReport:
    """Install (or reinstall) the pack into ``comfyui_path``; see the module docstring."""
    if mode not in MODES:
        raise InstallError(f"mode must be one of {MODES}, got {mode!r}")
    if mode == "link" and is_frozen():
        raise InstallError("link mode needs a source checkout; the application bundle can only copy")
    root = check_comfyui_root(comfyui_path)
    target = pack_target(root)
    previous = _claim_existing(target) if (target.exists() or target.is_symlink()) else None
    sources = pack_sources()

    _remove_stale_staging(target.parent)
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, suffix=STAGING_SUFFIX, dir=target.parent))
    try:
        staging.chmod(0o755)  # mkdtemp makes it owner-only; the pack is ordinary code
        (staging / "_vendor").mkdir()
        (staging / "_vendor" / "__init__.py").write_text(_VENDOR_INIT, encoding="utf-8")
        for relative, source in sources.items():
            _place(source, staging / relative, mode)
        files = tuple(sorted([*sources, "_vendor/__init__.py"]))
        manifest = {
            "installer": INSTALLER_ID,
            "pack": PACK_DIR_NAME,
            "version": __version__,
            "mode": mode,
            "source": str(PACKAGE_DIR),
            "installed_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "files": list(files),
        }
        (staging / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        aside = _move_aside(target) if previous is not None else None
        try:
            os.replace(staging, target)
        except OSError:
            if aside is not None:
                os.replace(aside, target)  # put the old pack back: it still works
            raise
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    leftover = _delete_tree(aside) if aside is not None else None

    report = InstallReport(
        target, mode, __version__, files, None if previous is None else str(previous.get("version", "?"))
    )
    action = "Reinstalled" if previous is not None else "Installed"
    verb = "linked" if mode == "link" else "copied"
    out(
        f"{action} Luna shared daemon nodes {__version__} in {target} ({len(files)} files {verb}"
        + (f" from {PACKAGE_DIR}" if mode == "link" else "")
        + ")"
    )
    if previous is not None:
        out(f"  replaced version {report.replaced_version} ({previous.get('mode', '?')} mode)")
    if leftover is not None:
        out(_leftover_message(leftover))
    out("  vendored daemon client: " + ", ".join(name for name in files if name.startswith("_vendor/")))
    out(
        "  restart ComfyUI to load: Luna Shared CLIP Encode, Luna Shared VAE Encode, "
        "Luna Shared VAE Decode, Luna Daemon Status"
    )
    return report


def uninstall(comfyui_path: str | os.PathLike, *, out: Printer = print) -> Path | None:
    """Remove the pack from ``comfyui_path``; returns the removed folder, None if absent."""
    root = check_comfyui_root(comfyui_path)
    target = pack_target(root)
    if not (target.exists() or target.is_symlink()):
        out(f"Luna shared daemon nodes are not installed in {root} (no {target.name}/); nothing to do")
        return None
    manifest = _claim_existing(target)
    leftover = _delete_tree(_move_aside(target))  # unlinks the per-file symlinks, never follows them
    out(
        f"Removed Luna shared daemon nodes {manifest.get('version', '?')} from {target}; "
        "restart ComfyUI to unload them"
    )
    if leftover is not None:
        out(_leftover_message(leftover))
    return target


def _remove_stale_staging(custom_nodes: Path) -> None:
    """Staging folders an interrupted install left behind and old packs that could not be deleted
    last time (only this installer's names)."""
    for pattern in (f"{STAGING_PREFIX}*{STAGING_SUFFIX}", f"{OLD_PREFIX}*{STAGING_SUFFIX}"):
        for stale in custom_nodes.glob(pattern):
            if stale.is_dir() and not stale.is_symlink():
                _rmtree(stale)


def _move_aside(target: Path) -> Path:
    """Rename the installed pack to a hidden ``.disabled`` name next to it (ComfyUI skips it)."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
    aside = target.with_name(f"{OLD_PREFIX}{stamp}{STAGING_SUFFIX}")
    try:
        os.replace(target, aside)
    except OSError as exc:
        raise InstallError(
            f"cannot move the installed pack {target} aside ({exc}); a program (ComfyUI?) holds "
            "files in it. Close ComfyUI and run the command again; nothing was changed."
        ) from exc
    return aside


def _clear_read_only(function: Callable, path: str, _exc_info: object) -> None:
    """rmtree error handler: Windows refuses to delete read-only files; clear the flag, retry."""
    try:
        os.chmod(path, stat.S_IWRITE | stat.S_IREAD | (stat.S_IEXEC if os.path.isdir(path) else 0))
        function(path)
    except OSError:
        pass  # still there: the caller retries and reports


def _rmtree(path: Path) -> None:
    """``shutil.rmtree`` that clears read-only flags and never raises (3.12 renamed the hook)."""
    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=_clear_read_only)
    else:
        shutil.rmtree(path, onerror=_clear_read_only)


def _delete_tree(path: Path) -> Path | None:
    """Delete ``path``, retried ``DELETE_ATTEMPTS`` times (a file in use is often released a
    moment later). Returns the folder if it still exists after the last attempt, else None."""
    for attempt in range(DELETE_ATTEMPTS):
        _rmtree(path)
        if not (path.exists() or path.is_symlink()):
            return None
        if attempt + 1 < DELETE_ATTEMPTS:
            time.sleep(DELETE_RETRY_SECONDS)
    return path


def _leftover_message(leftover: Path) -> str:
    return (
        f"  could not delete all of the old pack (files in use? close ComfyUI): it stays disabled "
        f"in {leftover}; ComfyUI skips it, and the next install or uninstall removes it (or delete it)"
    )


def _claim_existing(target: Path) -> dict:
    manifest = read_manifest(target)
    if manifest is None:
        raise InstallError(
            f"{target} exists but was not created by this installer (no valid {MANIFEST_NAME}); "
            "not touching it. Move or delete it yourself, then run the command again."
        )
    return manifest


def _place(source: Path, destination: Path, mode: str) -> None:
    destination.parent.mkdir(parents=True, exist_ok=True)
    if mode == "copy":
        shutil.copy2(source, destination)
        return
    try:
        os.symlink(source, destination)
    except OSError as exc:
        raise InstallError(
            f"could not create a symlink {destination} -> {source} ({exc}). On Windows enable "
            "Developer Mode or run as administrator, or install in copy mode (without --link)."
        ) from exc


# ----------------------------------------------------------------------------- command line


def run_install_command(comfyui: str, *, link: bool = False) -> int:
    """``install-comfyui-nodes``: exit status 0 on success, 2 with a message on stderr."""
    try:
        install(comfyui, mode="link" if link else "copy")
    except (InstallError, OSError) as exc:
        print(f"luna-daemon: install-comfyui-nodes: {exc}", file=sys.stderr)
        return 2
    return 0


def run_uninstall_command(comfyui: str) -> int:
    """``uninstall-comfyui-nodes``: exit status 0 on success, 2 with a message on stderr."""
    try:
        uninstall(comfyui)
    except (InstallError, OSError) as exc:
        print(f"luna-daemon: uninstall-comfyui-nodes: {exc}", file=sys.stderr)
        return 2
    return 0


def add_install_commands(commands: argparse._SubParsersAction) -> None:
    """Add ``install-comfyui-nodes`` / ``uninstall-comfyui-nodes`` to a CLI's sub-commands.

    Each sets ``handler=<callable(args) -> exit status>``, the convention of
    ``daemon/__main__.py`` (which calls ``args.handler(args)``).
    """
    install_parser = commands.add_parser(
        "install-comfyui-nodes", help="install the Luna shared-daemon nodes into ComfyUI"
    )
    install_parser.add_argument(
        "--comfyui", required=True, metavar="PATH", help="ComfyUI folder (the one containing main.py)"
    )
    install_parser.add_argument(
        "--link", action="store_true", help="symlink the files from this checkout instead of copying"
    )
    install_parser.set_defaults(handler=lambda args: run_install_command(args.comfyui, link=args.link))
    uninstall_parser = commands.add_parser(
        "uninstall-comfyui-nodes", help="remove the Luna shared-daemon nodes from ComfyUI"
    )
    uninstall_parser.add_argument(
        "--comfyui", required=True, metavar="PATH", help="ComfyUI folder (the one containing main.py)"
    )
    uninstall_parser.set_defaults(handler=lambda args: run_uninstall_command(args.comfyui))


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone CLI: ``python -m daemon.comfyui_nodes.install install-comfyui-nodes ...``."""
    parser = argparse.ArgumentParser(
        prog="python -m daemon.comfyui_nodes.install",
        description="Install or remove the Luna shared-daemon ComfyUI nodes.",
    )
    add_install_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
