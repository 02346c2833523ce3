"""Entry script of the bundle's ``luna-llm-server`` executable (console): llama-cpp-python's server.

Frozen, ``sys.executable`` is this program, so ``python -m llama_cpp.server`` cannot be run; the
embedded LLM (app/narrates/llm/embedded.py) starts this executable with the same arguments
instead. Its own program keeps llama.cpp's native library and the server's FastAPI stack out of
the GUI process and its collection. See build.spec (repository root).
"""

import multiprocessing
import sys

from llama_cpp.server.__main__ import main

if __name__ == "__main__":
    multiprocessing.freeze_support()
    sys.exit(main())
