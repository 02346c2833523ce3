"""User and resource paths for every Luna process (daemon, app, CLI).

This module owns the one rule for where files live:

* user paths (config, data, logs, cache) come from :mod:`platformdirs`; when the environment
  variable ``LUNA_HOME`` is set, all of them move together under that directory, so tests, CI
  and portable installs never touch the real user's files;
* bundled read-only resources (``resources/``, ``workflows/``) are found next to the source tree
  in a checkout or an editable install, and under ``sys._MEIPASS`` in a PyInstaller bundle.

It is pure Python (stdlib + platformdirs) and thread-safe: every call re-reads the environment,
so a test that changes ``LUNA_HOME`` is honoured at once. The app imports it through
:mod:`app.paths`; the ComfyUI node pack does not need it.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import platformdirs

APP_NAME = "LunaNarrates"
APP_AUTHOR = "Luna"
LUNA_HOME_ENV = "LUNA_HOME"


@dataclass(frozen=True)
class UserDirs:
    """The four user directories of one installation (not created until asked)."""

    config: Path
    data: Path
    logs: Path
    cache: Path

    def ensure(self) -> UserDirs:
        for path in (self.config, self.data, self.logs, self.cache):
            path.mkdir(parents=True, exist_ok=True)
        return self


def user_dirs() -> UserDirs:
    """Return the user directories, honouring ``LUNA_HOME`` when it is set."""
    home = os.environ.get(LUNA_HOME_ENV)
    if home:
        root = Path(home).expanduser().resolve()
        return UserDirs(
            config=root / "config",
            data=root / "data",
            logs=root / "logs",
            cache=root / "cache",
        )
    dirs = platformdirs.PlatformDirs(APP_NAME, APP_AUTHOR)
    return UserDirs(
        config=Path(dirs.user_config_dir),
        data=Path(dirs.user_data_dir),
        logs=Path(dirs.user_log_dir),
        cache=Path(dirs.user_cache_dir),
    )


def bundle_root() -> Path:
    """The directory holding ``resources/`` and ``workflows/``.

    Frozen (PyInstaller): ``sys._MEIPASS``. A checkout or editable install: the repository root
    (the parent of this package). A regular wheel install: ``<sys.prefix>/share/luna-narrates``.
    """
    frozen_root = getattr(sys, "_MEIPASS", None)
    if frozen_root:
        return Path(frozen_root)
    source_root = Path(__file__).resolve().parent.parent
    if (source_root / "resources").is_dir():
        return source_root
    # A regular (non-editable) wheel install ships the data under <prefix>/share (pyproject data-files).
    installed_root = Path(sys.prefix) / "share" / "luna-narrates"
    return installed_root if installed_root.is_dir() else source_root


def is_frozen() -> bool:
    """True inside a PyInstaller bundle (build.spec), where ``sys.executable`` is the program itself."""
    return bool(getattr(sys, "frozen", False))


def bundled_executable(name: str) -> Path:
    """A sibling executable of this frozen program (``luna-daemon``, ``luna-llm-server``).

    build.spec puts every executable of the bundle in one folder; ``.exe`` is added on Windows.
    """
    return Path(sys.executable).resolve().with_name(name + (".exe" if sys.platform == "win32" else ""))


def resource_path(*parts: str) -> Path:
    """Path of a bundled read-only file under ``resources/``."""
    return bundle_root().joinpath("resources", *parts)


def workflows_dir() -> Path:
    """Directory of the shipped ComfyUI workflow templates."""
    return bundle_root() / "workflows"
