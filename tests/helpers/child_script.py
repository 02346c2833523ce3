"""A tiny child process for the supervision tests: ``python -m tests.helpers.child_script MODE [ARG]``.

Modes (each prints ``CHILD_READY pid=N`` on stdout and ``CHILD_JSON_READY {"pid": N, "port": 1234}``
on stderr when it is "up", except where said):

* ``serve``: ready, then waits; SIGTERM prints ``terminated`` and exits 0; SIGUSR1 prints
  ``graceful`` and exits 0 (the graceful-stop step of the tests).
* ``stubborn``: like serve but ignores SIGTERM (only SIGKILL ends it).
* ``crash CODE``: prints two lines and exits with CODE before it is ready.
* ``crash-after-ready CODE``: ready, then prints ``dying`` and exits with CODE.
* ``crash-once MARKER``: the first run (MARKER missing) creates MARKER and exits 3 before ready;
  the next run serves.
* ``flood N``: writes N bytes of output to each of stdout and stderr BEFORE it is ready (a child
  whose pipes nobody drains would block here), then serves.
* ``silent``: never prints the ready line; waits for signals.
* ``spawn-grandchild``: used by the orphan test: it is itself a parent that supervises a
  ``serve`` child with :class:`~app.supervision.child.ManagedChild`, prints
  ``GRANDCHILD pid=N`` once that child is ready, and then waits to be killed.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path


def _ready() -> None:
    print(f"CHILD_READY pid={os.getpid()}", flush=True)
    print(f'CHILD_JSON_READY {{"pid": {os.getpid()}, "port": 1234}}', file=sys.stderr, flush=True)


def _wait_forever() -> None:
    while True:
        signal.pause()


def _serve(*, stubborn: bool = False) -> None:
    def on_term(signum: int, frame: object) -> None:
        print("terminated", flush=True)
        sys.exit(0)

    def on_usr1(signum: int, frame: object) -> None:
        print("graceful", flush=True)
        sys.exit(0)

    signal.signal(signal.SIGTERM, signal.SIG_IGN if stubborn else on_term)
    signal.signal(signal.SIGUSR1, on_usr1)
    _ready()
    _wait_forever()


async def _spawn_grandchild() -> None:
    from app.supervision.child import ChildSpec, ManagedChild, ReadyWhenLine

    child = ManagedChild(
        ChildSpec("grandchild", (sys.executable, "-m", "tests.helpers.child_script", "serve")),
        ready=ReadyWhenLine(lambda line: line if line.startswith("CHILD_READY") else None),
    )
    ready = await child.start()
    print(f"GRANDCHILD pid={ready.pid}", flush=True)
    await asyncio.Event().wait()


def main(argv: list[str]) -> int:
    mode = argv[0]
    arg = argv[1] if len(argv) > 1 else ""
    if mode == "serve":
        _serve()
    elif mode == "stubborn":
        _serve(stubborn=True)
    elif mode == "crash":
        print("starting", flush=True)
        print("fatal: something broke", file=sys.stderr, flush=True)
        return int(arg or 3)
    elif mode == "crash-after-ready":
        _ready()
        print("dying", flush=True)
        return int(arg or 4)
    elif mode == "crash-once":
        marker = Path(arg)
        if not marker.exists():
            marker.write_text("crashed once")
            print("first run crashes", file=sys.stderr, flush=True)
            return 3
        _serve()
    elif mode == "flood":
        size = int(arg or 1_000_000)
        line = "x" * 99 + "\n"
        for _ in range(size // 100):
            sys.stdout.write(line)
            sys.stderr.write(line)
        sys.stdout.flush()
        sys.stderr.flush()
        _serve()
    elif mode == "silent":
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        _wait_forever()
    elif mode == "spawn-grandchild":
        asyncio.run(_spawn_grandchild())
    else:
        print(f"unknown mode {mode}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
