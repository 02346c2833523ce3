"""Supervision of child processes (the embedded LLM server, the Luna daemon): see :mod:`app.supervision.child`.

Pure asyncio, no Qt; the GUI wraps these services in thin adapters.
"""

from app.supervision.child import (
    ChildError,
    ChildEvent,
    ChildGaveUp,
    ChildSpec,
    ChildState,
    ChildStopped,
    EventStream,
    Exited,
    GaveUp,
    ManagedChild,
    Output,
    Ready,
    ReadyWhenLine,
    ReadyWhenProbe,
    Restarting,
    RestartPolicy,
    Starting,
    Stopped,
    StopPolicy,
)
from app.supervision.orphans import orphan_protection

__all__ = [
    "ChildError",
    "ChildEvent",
    "ChildGaveUp",
    "ChildSpec",
    "ChildState",
    "ChildStopped",
    "EventStream",
    "Exited",
    "GaveUp",
    "ManagedChild",
    "Output",
    "Ready",
    "ReadyWhenLine",
    "ReadyWhenProbe",
    "RestartPolicy",
    "Restarting",
    "Starting",
    "StopPolicy",
    "Stopped",
    "orphan_protection",
]
