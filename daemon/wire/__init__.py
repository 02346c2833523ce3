"""The daemon's wire library: everything a client of the Luna daemon needs, and nothing more.

Owns the TCP protocol codec (``protocol``), the shared-memory transport (``shm``), the Sans-I/O
client session (``session``) under the blocking and asyncio clients (``client``), the READY line and exit codes a supervisor reads (``ready``),
the typed status-WebSocket messages (``status``) and the asyncio status feed (``status_feed``).

It imports only the standard library and numpy (``status_feed`` and the WebSocket health check
also use ``websockets``), never torch or the server; the modules import each other relatively,
so the ComfyUI node pack vendors this folder as it is (``daemon/comfyui_nodes/install.py``).
An import-linter contract in ``pyproject.toml`` keeps it that way.
"""
