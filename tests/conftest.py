"""Test-wide settings: offscreen Qt and a private LUNA_HOME so no test touches real user files."""

from __future__ import annotations

import os
import tempfile

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
# Subprocesses started by tests inherit this, so they stay out of the real user's directories too.
if not os.environ.get("LUNA_HOME"):
    os.environ["LUNA_HOME"] = tempfile.mkdtemp(prefix="luna-test-home-")


@pytest.fixture(autouse=True)
def luna_home(tmp_path, monkeypatch):
    """Every test gets its own empty LUNA_HOME."""
    home = tmp_path / "luna-home"
    home.mkdir()
    monkeypatch.setenv("LUNA_HOME", str(home))
    return home
