"""``python -m tests.helpers.ws_flooder URI SECONDS``: a status WebSocket client in its own
process that sends ``{"type":"get_status"}`` as fast as it can for SECONDS, reads every reply,
and reconnects whenever the daemon closes it; then prints what it sent, received and how often it
was closed (for the status-WebSocket flood benchmark in tests/bench/test_bench_hardening.py: the
flood must come from another process, or the measuring client's own loop is the bottleneck).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed


async def flood(uri: str, seconds: float) -> tuple[int, int, int]:
    sent = received = closed = 0
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    announced = False
    while loop.time() < deadline:
        async with connect(uri, max_queue=None, close_timeout=0.1) as websocket:

            async def drain() -> None:
                nonlocal received
                with contextlib.suppress(ConnectionClosed):
                    async for _ in websocket:
                        received += 1

            reader = asyncio.ensure_future(drain())
            if not announced:
                print("flooding", flush=True)
                announced = True
            try:
                while loop.time() < deadline:
                    await websocket.send('{"type":"get_status"}')
                    sent += 1
                    if sent % 32 == 0:
                        await asyncio.sleep(0)
            except ConnectionClosed:
                closed += 1
            reader.cancel()
    return sent, received, closed


if __name__ == "__main__":
    sent, received, closed = asyncio.run(flood(sys.argv[1], float(sys.argv[2])))
    print(f"sent {sent}, {received} replies, closed {closed}× for flooding", flush=True)
