"""What the supervisor takes from the status answer of a daemon it attaches to."""

from __future__ import annotations

import pytest

from app.services.daemon_supervisor import DaemonSupervisor, SupervisorError, attached_ready_info
from app.services.settings import DaemonSettings

SETTINGS = DaemonSettings(host="127.0.0.1", port=19283, ws_port=19284)


def test_a_luna_status_gives_its_pid_and_status_port():
    info = attached_ready_info(SETTINGS, {"pid": 4321, "ports": {"tcp": 19283, "ws": 20000}})
    assert (info.host, info.port, info.ws_port, info.pid) == ("127.0.0.1", 19283, 20000, 4321)


def test_an_older_status_without_ports_falls_back_to_the_configured_status_port():
    info = attached_ready_info(SETTINGS, {"status": "ok"})
    assert info.ws_port == 19284 and info.pid == 0


@pytest.mark.parametrize(
    "status",
    [
        ["not", "an", "object"],
        {"ports": "19284"},
        {"ports": {"ws": "19284"}},
        {"ports": {"ws": 70000}},
        {"ports": {"ws": True}},
        {"pid": "twelve"},
        {"pid": -5},
        {"pid": 1.5},
    ],
)
def test_a_status_without_a_usable_pid_or_port_is_a_value_error_not_a_crash(status):
    with pytest.raises(ValueError, match="its status"):
        attached_ready_info(SETTINGS, status)


def test_a_config_dir_that_cannot_be_written_is_a_supervisor_error(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the config folder should be")
    supervisor = DaemonSupervisor(SETTINGS, config_dir=blocker / "config")
    with pytest.raises(SupervisorError, match="cannot write the daemon's config file"):
        supervisor._daemon_argv()
