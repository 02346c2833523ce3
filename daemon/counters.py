"""The daemon's request counters: the one place that counts what the TCP port carried.

Owned by :class:`daemon.server.DaemonServer`, incremented by the TCP service
(``daemon/tcp_service.py``) as requests arrive and answers leave, read by the status. Pools
keep their own per-pool job counts (a pool's core ``total_requests`` field), which are a
different thing: jobs that reached the pool. Mutated and read on the daemon's event loop only.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from daemon.wire.status import TrafficStats

#: The ops the top-level core field ``total_requests`` counts: the encode/decode work.
WORK_OPS = ("clip_encode", "vae_encode", "vae_decode")


@dataclass
class RequestCounters:
    """Requests per op, errors per code, connections and bytes since the daemon started."""

    connections_open: int = 0
    connections_total: int = 0
    connections_refused: int = 0
    requests_by_op: Counter = field(default_factory=Counter)
    errors_by_code: Counter = field(default_factory=Counter)
    bytes_in: int = 0
    bytes_out: int = 0
    shm_bytes_in: int = 0
    shm_bytes_out: int = 0

    @property
    def work_requests(self) -> int:
        """Encode/decode requests received, cache hits and failures included."""
        return sum(self.requests_by_op[op] for op in WORK_OPS)

    def traffic(self) -> TrafficStats:
        return TrafficStats(
            requests_by_op=dict(self.requests_by_op),
            errors_by_code=dict(self.errors_by_code),
            connections_open=self.connections_open,
            bytes_in=self.bytes_in,
            bytes_out=self.bytes_out,
            shm_bytes_in=self.shm_bytes_in,
            shm_bytes_out=self.shm_bytes_out,
        )

    def snapshot(self) -> dict:
        return {
            "connections_open": self.connections_open,
            "connections_total": self.connections_total,
            "connections_refused": self.connections_refused,
            "requests_by_op": dict(self.requests_by_op),
            "total_requests": sum(self.requests_by_op.values()),
            "errors_by_code": dict(self.errors_by_code),
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "shm_bytes_in": self.shm_bytes_in,
            "shm_bytes_out": self.shm_bytes_out,
        }
