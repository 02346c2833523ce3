"""The daemon token file: created once, owner-only, stable, and refused when unusable."""

from __future__ import annotations

import os
import sys

import pytest

from daemon.auth import TokenFileError, load_or_create_token, read_token, token_path
from daemon.paths import user_dirs


def test_token_lives_in_the_user_config_dir():
    assert token_path() == user_dirs().config / "daemon.token"


def test_first_call_creates_a_long_random_token_and_later_calls_return_it():
    assert read_token() is None
    token = load_or_create_token()
    assert len(token) >= 40
    assert load_or_create_token() == token
    assert read_token() == token
    assert token_path().read_text().strip() == token


def test_each_installation_gets_its_own_token(tmp_path):
    assert load_or_create_token(tmp_path / "a.token") != load_or_create_token(tmp_path / "b.token")


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")
def test_token_file_is_created_owner_only():
    load_or_create_token()
    assert token_path().stat().st_mode & 0o777 == 0o600


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")
def test_token_file_readable_by_others_is_refused():
    load_or_create_token()
    os.chmod(token_path(), 0o644)
    with pytest.raises(TokenFileError, match="chmod 600"):
        load_or_create_token()


def test_empty_token_file_is_refused_with_advice():
    path = token_path()
    path.parent.mkdir(parents=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.close(fd)
    with pytest.raises(TokenFileError, match="too short"):
        load_or_create_token()
