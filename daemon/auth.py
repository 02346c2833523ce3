"""The daemon's access token: one random secret per installation, kept in the user config dir.

``load_or_create_token()`` returns the token in ``<user config>/daemon.token`` (created on first
use with owner-only permissions: mode 0600 on POSIX; on Windows a protected ACL for the user and
SYSTEM only, ``daemon/win_security.py``). Reading refuses a file other accounts can read (group
or other mode bits; on Windows any other account in the ACL but SYSTEM and Administrators). The
daemon checks it with :func:`tokens_match` (constant time) in ``hello``, in the ``shutdown`` op
and on the status WebSocket; local clients (the app, the ComfyUI node pack) read the same file.
Pure stdlib plus ``daemon.paths`` and the ctypes calls of ``daemon/winapi.py``; load the token
from any thread at start-up, never per request.
"""

from __future__ import annotations

import hmac
import os
import secrets
import sys
from pathlib import Path

from . import win_security
from .paths import user_dirs

TOKEN_FILE_NAME = "daemon.token"
TOKEN_BYTES = 32  # 256 bits: guessing is hopeless, so no rate limiting is needed


class TokenFileError(OSError):
    """The token file exists but cannot be used (unreadable, empty or too open)."""


def token_path() -> Path:
    """Where the token lives: ``user_dirs().config / "daemon.token"``."""
    return user_dirs().config / TOKEN_FILE_NAME


def _check_private(path: Path) -> None:
    if sys.platform == "win32":
        try:
            readers = win_security.check_private_file(path)
        except (OSError, ValueError) as exc:
            raise TokenFileError(f"cannot check who may read the daemon token {path}: {exc}") from None
        if readers:
            raise TokenFileError(
                f"{path} is readable by other accounts ({', '.join(readers)}); delete it and the "
                "daemon creates a new one only you can read"
            )
        return
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise TokenFileError(f"{path} is readable by other users (mode {mode:o}); run: chmod 600 {path}")


def _create_private(path: Path) -> int:
    if sys.platform == "win32":
        return win_security.create_private_file(path)  # the ACL, since chmod means read-only there
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    return os.open(path, flags, 0o600)


def read_token(path: Path | None = None) -> str | None:
    """The token in ``path`` (default :func:`token_path`), or None when there is no file."""
    path = path or token_path()
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise TokenFileError(f"cannot read the daemon token {path}: {exc}") from None
    if len(text) < 16:
        raise TokenFileError(
            f"the daemon token in {path} is empty or too short; delete the file to make a new one"
        )
    _check_private(path)
    return text


def load_or_create_token(path: Path | None = None) -> str:
    """Return the installation's token, creating the file (owner-only) the first time."""
    path = path or token_path()
    existing = read_token(path)
    if existing is not None:
        return existing
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(TOKEN_BYTES)
    try:
        fd = _create_private(path)  # created private: no window where others can read it
    except FileExistsError:  # another process won the race: use its token
        existing = read_token(path)
        assert existing is not None
        return existing
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(token + "\n")
    return token


def tokens_match(presented: object, expected: str | None) -> bool:
    """Constant-time check of a token a peer presented against the daemon's token.

    Anything that is not a string, and any string that cannot be encoded (a lone surrogate such
    as ``"\\ud800"`` from JSON), is simply a wrong token: never an exception. ``expected`` None
    (no token configured) matches nothing.
    """
    if expected is None or not isinstance(presented, str):
        return False
    # surrogatepass: a lone surrogate encodes to bytes no real (ASCII) token has, so it is a
    # wrong token like any other instead of a UnicodeEncodeError.
    given = presented.encode("utf-8", "surrogatepass")
    return hmac.compare_digest(given, expected.encode("utf-8", "surrogatepass"))
