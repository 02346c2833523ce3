"""``python -m tests.helpers.ws_flooder URI SECONDS``: a status WebSocket client in its own
process that sends ``{"type":"get_status"}`` as fast as the daemon takes them for SECONDS and
reads every reply, then prints how many it sent and received (benchmarks of issue 9 item 5:
the flood must come from another process, or the measuring client's own loop is the bottleneck).
"""

from __future__ import annotations

import asyncio
import sys

from websockets.asyncio.client import connect


async def flood(uri: str, seconds: float) -> tuple[int, int]:
    sent = received = 0
    async with connect(uri, max_queue=None) as websocket:

        async def drain() -> None:
            nonlocal received
            async for _ in websocket:
                received += 1

        reader = asyncio.ensure_future(drain())
        print("flooding", flush=True)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while loop.time() < deadline:
            await websocket.send('{"type":"get_status"}')
            sent += 1
            if sent % 32 == 0:
                await asyncio.sleep(0)
        reader.cancel()
    return sent, received


if __name__ == "__main__":
    sent, received = asyncio.run(flood(sys.argv[1], float(sys.argv[2])))
    print(f"sent {sent} received {received}", flush=True)
