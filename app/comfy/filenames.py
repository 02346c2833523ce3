"""File names that are safe on Windows (and everywhere else), built from untrusted text.

Owns the one rule for every file name the app builds from a template name, a prompt, a node
title or a name a ComfyUI server sent (``/view`` filename and subfolder): :func:`safe_filename`
makes one path component that Windows accepts and that cannot address anything but a plain file
in the folder it is joined to, and :func:`path_inside` joins it and proves the result stays in
that folder. The render box is Windows: there ``a:b.png`` writes an NTFS alternate data stream of
``a``, ``CON.png`` / ``nul.txt`` / ``COM1.tar.gz`` open devices, ``"name. "`` loses its trailing
dot and space, and ``<>"/\\|?*`` and control characters are refused — so the rule is applied on
every platform, not only on Windows, and a render written on Linux can be copied there.

Pure functions, any thread.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

__all__ = ["MAX_NAME_LENGTH", "UnsafePathError", "is_safe_filename", "path_inside", "safe_filename"]

# NTFS allows 255 UTF-16 units per component; stay well below so a "-12" suffix still fits and
# the whole path stays under the classic 260-character MAX_PATH in ordinary output folders.
MAX_NAME_LENGTH = 120

_FORBIDDEN = re.compile(r'[<>:"/\\|?*\x00-\x1f\x7f]')
_RESERVED = frozenset(
    ["CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"]
    + [f"COM{i}" for i in range(1, 10)]
    + [f"LPT{i}" for i in range(1, 10)]
    # Windows also treats the superscript digits as device numbers (COM¹, LPT³).
    + [f"{p}{d}" for p in ("COM", "LPT") for d in "\u00b9\u00b2\u00b3"]
)


class UnsafePathError(ValueError):
    """A joined path would leave the folder it was meant to stay in."""


def _is_reserved(name: str) -> bool:
    # "CON", "con.png", "Nul.tar.gz" and "COM1 .txt" are all the device: Windows ignores every
    # extension and trailing spaces/dots of the part before the first dot.
    stem = name.split(".", 1)[0].rstrip(" .")
    return stem.upper() in _RESERVED


def safe_filename(name: str, *, fallback: str = "file", max_length: int = MAX_NAME_LENGTH) -> str:
    """One path component safe on Windows, made from ``name`` (untrusted text).

    Forbidden characters (``<>:"/\\|?*``, control characters) become ``_``; leading and trailing
    spaces and trailing dots are dropped; a reserved device name (``CON``, ``PRN``, ``AUX``,
    ``NUL``, ``COM1``–``COM9``, ``LPT1``–``LPT9``, any case, with any extension) gets a ``_``
    suffix on its stem; ``.``/``..``/empty results become ``fallback``; the result is at most
    ``max_length`` characters, cut in the stem so the extension survives.
    """
    text = unicodedata.normalize("NFC", str(name))
    text = _FORBIDDEN.sub("_", text).strip(" ").rstrip(" .")
    if not text:  # "", ".", "..", "   "
        text = fallback
    if _is_reserved(text):
        first, dot, rest = text.partition(".")
        text = f"{first.rstrip(' .')}_{dot}{rest}"
    if len(text) > max_length:
        stem, dot, suffix = text.rpartition(".")
        extension = dot + suffix if stem and len(dot + suffix) <= 16 else ""
        base = stem if extension else text
        text = base[: max_length - len(extension)].rstrip(" .") + extension
        if not text.strip(" .") or _is_reserved(text):
            text = fallback[:max_length]
    return text


def is_safe_filename(name: str) -> bool:
    """True when ``name`` is already what :func:`safe_filename` would make of it."""
    return bool(name) and safe_filename(name, fallback="\0") == name


def path_inside(folder: Path, name: str) -> Path:
    """``folder / safe_filename(name)``, checked to be a direct child of ``folder``.

    Only the last component of a server-given name is ever used (a ``subfolder`` or ``../`` in
    it cannot move the file elsewhere); :class:`UnsafePathError` if the result still escapes.
    """
    component = safe_filename(name.replace("\\", "/").rsplit("/", 1)[-1])
    target = folder / component
    if target.parent != folder or component in (".", ".."):
        raise UnsafePathError(f"{name!r} does not name a file inside {folder}")
    return target
