"""Double-click launcher of the operator window from a source checkout (Windows and Linux).

Runs ``python -m app`` (the window; it starts the daemon) in this checkout's ``.venv``, the one
``make run`` / ``make test`` create. Started by another interpreter (Windows runs ``.pyw`` files
with the system's pythonw), it re-launches itself in the venv and exits; without a venv it says
how to make one (a message box on Windows, stderr elsewhere). Luna.bat and Luna.desktop call it.
The frozen bundle does not use it: there ``Luna.exe`` is the double-click.
"""

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
VENV = HERE / ".venv"
IS_WIN = sys.platform == "win32"
VENV_PYTHON = VENV / "Scripts" / "pythonw.exe" if IS_WIN else VENV / "bin" / "python"


def in_venv() -> bool:
    return Path(sys.prefix).resolve() == VENV.resolve()


def complain(message: str) -> None:
    if IS_WIN:
        import ctypes

        ctypes.windll.user32.MessageBoxW(None, message, "Luna Narrates Operator", 0x10)
    elif sys.stderr is not None:
        print(message, file=sys.stderr)


def main() -> int:
    if not in_venv():
        if not VENV_PYTHON.is_file():
            complain(
                f"No virtual environment in {VENV}.\n\nCreate it once: `make run` (Linux), or on "
                "Windows follow README.md, section 'Windows from source'."
            )
            return 1
        flags = subprocess.CREATE_NO_WINDOW if IS_WIN else 0
        subprocess.Popen(
            [str(VENV_PYTHON), str(Path(__file__).resolve()), *sys.argv[1:]], cwd=HERE, creationflags=flags
        )
        return 0
    os.chdir(HERE)
    sys.path.insert(0, str(HERE))
    from app.__main__ import main as luna_main

    return luna_main()


if __name__ == "__main__":
    sys.exit(main())
