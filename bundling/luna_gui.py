"""Entry script of the bundle's ``Luna`` executable (windowed): the operator window and ``luna`` CLI.

PyInstaller runs this file as ``__main__`` (a package's ``__main__.py`` cannot be a script: its
relative imports need the package), so it only calls :func:`app.__main__.main`. See build.spec (repository root).
"""

import multiprocessing
import sys

from app.__main__ import main

if __name__ == "__main__":
    multiprocessing.freeze_support()
    sys.exit(main())
