"""The node pack remembers "daemon down" per host:port.

On Windows a refused connect costs about 2 s (the SYN is retried), so ``auto`` nodes must not pay
it on every node of a graph while the daemon is down. Checked here with a fake clock and fake
clients: the window, its end, per-endpoint keys, that answers (DaemonError) and successes do not
mark the daemon down, that ``daemon`` mode and nodes without a local input always try, and that
``localhost`` is dialled as 127.0.0.1. The 2 s cost itself is Windows behaviour, not checked here.
"""

from __future__ import annotations

import threading

import pytest

from daemon.comfyui_nodes.connection import (
    DaemonConnections,
    DaemonEndpoint,
    DaemonError,
    LunaDaemonNodeError,
    resolve_endpoint,
    run_with_fallback,
)
from daemon.wire.protocol import ErrorCode


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class FakeClient:
    def close(self):
        pass


class Daemon:
    """daemon_call stand-in: fails with ``error`` while set, counts its calls."""

    def __init__(self):
        self.calls = 0
        self.error: BaseException | None = ConnectionRefusedError(10061, "refused")

    def __call__(self, _client):
        self.calls += 1
        if self.error is not None:
            raise self.error
        return "daemon"


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def connections(clock):
    shared = DaemonConnections(lambda *a, **k: FakeClient(), down_for=8.0, clock=clock)
    yield shared
    shared.close_all()


ENDPOINT = DaemonEndpoint("127.0.0.1", 19283)


def run(connections, daemon, *, mode="auto", local=True, endpoint=ENDPOINT):
    return run_with_fallback(
        connections=connections,
        endpoint=endpoint,
        mode=mode,
        node_name="Luna Shared VAE Decode",
        daemon_call=daemon,
        local_call=(lambda: "local") if local else None,
        local_input="vae",
    )


def test_auto_nodes_skip_a_daemon_found_down_until_the_window_ends(connections, clock, caplog):
    daemon = Daemon()
    assert run(connections, daemon) == "local" and daemon.calls == 1
    assert "unreachable" in caplog.text  # the first failure is reported once
    clock.now += 7.9
    assert [run(connections, daemon) for _ in range(5)] == ["local"] * 5
    assert daemon.calls == 1  # no connect paid inside the window
    clock.now += 0.2
    daemon.error = None
    assert run(connections, daemon) == "daemon" and daemon.calls == 2


def test_a_success_clears_and_a_new_failure_opens_a_new_window(connections, clock, caplog):
    daemon = Daemon()
    daemon.error = None
    assert run(connections, daemon) == "daemon"
    assert not connections.recently_down(ENDPOINT)
    daemon.error = ConnectionResetError("reset")
    assert run(connections, daemon) == "local"
    assert connections.recently_down(ENDPOINT)


def test_the_window_is_per_host_and_port(connections, caplog):
    daemon = Daemon()
    run(connections, daemon)
    other = DaemonEndpoint("127.0.0.1", 19290)
    assert connections.recently_down(ENDPOINT) and not connections.recently_down(other)
    run(connections, daemon, endpoint=other)
    assert daemon.calls == 2


def test_an_error_answer_does_not_mark_the_daemon_down(connections, caplog):
    daemon = Daemon()
    daemon.error = DaemonError(ErrorCode.NOT_LOADED, "model set 'pony' is not configured")
    assert run(connections, daemon) == "local"
    assert not connections.recently_down(ENDPOINT)
    run(connections, daemon)
    assert daemon.calls == 2


def test_daemon_mode_and_nodes_without_a_local_input_always_try(connections, caplog):
    daemon = Daemon()
    run(connections, daemon)
    assert connections.recently_down(ENDPOINT)
    with pytest.raises(LunaDaemonNodeError, match="127.0.0.1:19283"):
        run(connections, daemon, mode="daemon")
    with pytest.raises(LunaDaemonNodeError, match="no local vae input"):
        run(connections, daemon, local=False)
    assert daemon.calls == 3


def test_marks_from_many_threads_are_consistent(connections, clock):
    endpoints = [DaemonEndpoint("127.0.0.1", 20000 + i) for i in range(50)]
    threads = [threading.Thread(target=connections.mark_down, args=(e,)) for e in endpoints]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(connections.recently_down(e) for e in endpoints)
    clock.now += 9
    assert not any(connections.recently_down(e) for e in endpoints)


def test_localhost_is_dialled_as_the_ipv4_loopback_the_daemon_binds():
    assert resolve_endpoint("localhost", 19283, environ={}).host == "127.0.0.1"
    assert resolve_endpoint("", 0, environ={"LUNA_DAEMON_HOST": "LOCALHOST"}).host == "127.0.0.1"
    assert resolve_endpoint("render-box", 19283, environ={}).host == "render-box"
