"""Entry script of the bundle's ``luna-daemon`` executable (console): :func:`daemon.__main__.main`.

A console executable, so the READY line has a stdout even when the GUI that starts it has none.
The supervisor (app/services/daemon_supervisor.py) runs it beside ``Luna``. See build.spec (repository root).
"""

import multiprocessing
import sys

from daemon.__main__ import main

if __name__ == "__main__":
    multiprocessing.freeze_support()
    sys.exit(main())
