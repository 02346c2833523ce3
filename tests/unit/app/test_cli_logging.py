"""`luna` keeps library warnings out of its output unless asked (-v)."""

import io
import socket

import pytest

from app.cli import main
from daemon.paths import user_dirs


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _configure_one_dead_instance() -> None:
    config = user_dirs().config
    config.mkdir(parents=True, exist_ok=True)
    (config / "instances.toml").write_text(
        f'[[instances]]\nname = "dead"\nurl = "http://127.0.0.1:{_closed_port()}"\nstyles = ["anime"]\n',
        encoding="utf-8",
    )


def test_instances_reports_a_down_instance_once_without_router_warnings(caplog):
    _configure_one_dead_instance()
    out, err = io.StringIO(), io.StringIO()
    main(["instances", "--connect-timeout", "2"], stdout=out, stderr=err)
    assert "DOWN" in out.getvalue()
    assert "is unhealthy" not in err.getvalue()
    # Not even to other handlers (outside pytest: logging's last-resort stderr handler).
    assert not [r for r in caplog.records if "is unhealthy" in r.getMessage()]


@pytest.mark.expect_log_warnings
def test_verbose_shows_the_router_warnings():
    _configure_one_dead_instance()
    out, err = io.StringIO(), io.StringIO()
    main(["-v", "instances", "--connect-timeout", "2"], stdout=out, stderr=err)
    assert "is unhealthy" in err.getvalue()
