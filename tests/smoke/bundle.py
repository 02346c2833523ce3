"""Where the built PyInstaller bundle is, and how to run its executables (tests/smoke, scripts).

The bundle is ``dist/Luna/`` from ``make bundle`` (build.spec), or the folder named by
``LUNA_BUNDLE_DIR``. Pure functions, any thread.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
BUNDLE_DIR_ENV = "LUNA_BUNDLE_DIR"
EXECUTABLES = ("Luna", "luna-daemon", "luna-llm-server")


def bundle_dir() -> Path:
    """The bundle folder to test (it may not exist)."""
    configured = os.environ.get(BUNDLE_DIR_ENV)
    return Path(configured).expanduser().resolve() if configured else REPO_ROOT / "dist" / "Luna"


def executable(name: str) -> Path:
    return bundle_dir() / (name + (".exe" if sys.platform == "win32" else ""))


def missing_reason() -> str | None:
    """Why the bundle cannot be tested, or None when every executable is there."""
    missing = [name for name in EXECUTABLES if not executable(name).is_file()]
    if not missing:
        return None
    return (
        f"no PyInstaller bundle at {bundle_dir()} (missing {', '.join(missing)}): "
        f"build it with `make bundle`, or set {BUNDLE_DIR_ENV}"
    )


def child_env(luna_home: Path, **extra: str) -> dict[str, str]:
    """The environment for a bundled program: a private LUNA_HOME, offscreen Qt, and none of
    this checkout's Python settings (a frozen program must not need them)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTHON")}
    env.update({"LUNA_HOME": str(luna_home), "QT_QPA_PLATFORM": "offscreen", **extra})
    return env
