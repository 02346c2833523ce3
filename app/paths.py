"""Path resolution for the app: the same rules as the daemon (see :mod:`daemon.paths`).

Re-exported so app code has one import for user directories and bundled resources; the
implementation lives in ``daemon.paths`` because the daemon runs on its own and needs it too.
Pure Python, any thread.
"""

from daemon.paths import (
    LUNA_HOME_ENV,
    UserDirs,
    bundle_root,
    bundled_executable,
    is_frozen,
    resource_path,
    user_dirs,
    workflows_dir,
)

__all__ = [
    "LUNA_HOME_ENV",
    "UserDirs",
    "bundle_root",
    "bundled_executable",
    "is_frozen",
    "resource_path",
    "user_dirs",
    "workflows_dir",
]
