"""The token file's owner-only ACL on Windows.

Linux checks our logic: the SDDL a token file is created with, the parsing of the SDDL Windows
hands back (inherited profile ACLs, aliases, hex and letter rights, inherit-only and conditional
entries, a NULL DACL, a foreign owner), the policy naming every other reader, and
``daemon.auth`` on ``win32`` going through the ACL calls instead of file modes (a fake
``WindowsApi`` stores the SDDL it was given). Only a real Windows box can confirm the ctypes
marshalling in ``daemon/winapi.py`` and that Windows really enforces the ACL (e.g. another
account gets "access denied").
"""

from __future__ import annotations

import os
import sys

import pytest

from daemon import auth, winapi
from daemon.auth import TokenFileError, load_or_create_token, read_token
from daemon.win_security import (
    check_private_file,
    others_who_can_read,
    parse_dacl,
    parse_rights,
    private_sddl,
)

ME = "S-1-5-21-1004336348-1177238915-682003330-1001"
OTHER = "S-1-5-21-1004336348-1177238915-682003330-1002"


def test_a_new_token_file_is_protected_and_grants_only_the_user_and_system():
    assert private_sddl(ME) == f"D:P(A;;FA;;;{ME})(A;;FA;;;SY)"
    assert others_who_can_read(private_sddl(ME), ME) == []


def test_the_inherited_acl_of_a_profile_folder_is_private():
    sddl = f"O:{ME}G:{ME}D:AI(A;ID;FA;;;{ME})(A;ID;FA;;;SY)(A;ID;FA;;;BA)"
    assert others_who_can_read(sddl, ME) == []


@pytest.mark.parametrize(
    ("dacl", "reader"),
    [
        ("(A;ID;0x1200a9;;;BU)", "BU"),  # Users: read & execute (a folder outside the profile)
        ("(A;;FR;;;WD)", "WD"),  # Everyone
        (f"(A;;GR;;;{OTHER})", OTHER),
        ("(A;;WD;;;AU)", "AU"),  # may rewrite the DACL, so may read
        ("(A;;CCDCLCSWRPWPDTLOCRSDRCWDWO;;;IU)", "IU"),  # letters Windows uses for odd masks
        ("(XA;;FR;;;WD;(Member_of {SID(BA)}))", "WD"),  # conditional entry with nested parens
    ],
)
def test_any_other_reader_is_named(dacl, reader):
    sddl = f"O:{ME}D:P(A;;FA;;;{ME}){dacl}"
    assert others_who_can_read(sddl, ME) == [reader]


def test_entries_that_do_not_let_others_read_are_ignored():
    sddl = (
        f"O:{ME}D:P(A;;FA;;;{ME})(A;OICIIO;GA;;;CO)"  # inherit-only: applies to children only
        "(D;;FA;;;WD)"  # deny
        "(A;;0x100000;;;BU)"  # SYNCHRONIZE only
        "(A;;FA;;;OW)"  # OWNER RIGHTS, and the owner is us
    )
    assert others_who_can_read(sddl, ME) == []


def test_no_dacl_and_a_foreign_owner_are_refused():
    assert others_who_can_read(f"O:{ME}D:NO_ACCESS_CONTROL", ME) == ["Everyone (no DACL)"]
    assert others_who_can_read(f"O:{OTHER}D:P(A;;FA;;;{ME})", ME) == [f"{OTHER} (owner)"]


def test_rights_parse_hex_decimal_letters_and_unknown_letters_as_everything():
    assert parse_rights("0x1200a9") == 0x1200A9 and parse_rights("1179817") == 0x1200A9
    assert parse_rights("FA") == 0x1F01FF and parse_rights("RCSD") == 0x30000
    assert parse_rights("QQ") == 0xFFFFFFFF
    with pytest.raises(ValueError, match="malformed ACE"):
        parse_dacl("D:(A;;FA)")


class FakeWindowsApi:
    """Creates real files and remembers the SDDL each was given (``sddl`` overrides it)."""

    def __init__(self):
        self.created: dict[str, str] = {}
        self.sddl: dict[str, str] = {}

    def current_user_sid(self):
        return ME

    def create_file_with_sddl(self, path, sddl):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # FileExistsError as Windows
        self.created[path] = sddl
        return fd

    def file_sddl(self, path):
        return self.sddl.get(path) or f"O:{ME}" + self.created[path]


@pytest.fixture
def windows(monkeypatch):
    api = FakeWindowsApi()
    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setattr(winapi, "WINDOWS_API", api)
    return api


def test_on_windows_the_token_is_created_with_the_private_acl_and_read_back(tmp_path, windows):
    path = tmp_path / "config" / "daemon.token"
    token = load_or_create_token(path)
    assert windows.created == {str(path): private_sddl(ME)}
    assert read_token(path) == token == load_or_create_token(path)


def test_on_windows_a_token_others_can_read_is_refused_naming_them(tmp_path, windows):
    path = tmp_path / "daemon.token"
    load_or_create_token(path)
    windows.sddl[str(path)] = f"O:{ME}D:AI(A;ID;FA;;;{ME})(A;ID;0x1200a9;;;BU)"
    with pytest.raises(TokenFileError, match=r"readable by other accounts \(BU\); delete it"):
        read_token(path)


def test_on_windows_the_mode_bits_are_not_what_is_checked(tmp_path, windows):
    path = tmp_path / "daemon.token"
    load_or_create_token(path)
    os.chmod(path, 0o644)  # meaningless on Windows; the ACL says private
    assert read_token(path)


def test_on_windows_an_acl_that_cannot_be_read_is_a_token_file_error(tmp_path, windows, monkeypatch):
    path = tmp_path / "daemon.token"
    load_or_create_token(path)

    def denied(_path):
        raise PermissionError(5, "Access is denied")

    monkeypatch.setattr(windows, "file_sddl", denied)
    with pytest.raises(TokenFileError, match="cannot check who may read"):
        read_token(path)


def test_check_private_file_uses_the_given_api(tmp_path):
    api = FakeWindowsApi()
    path = tmp_path / "secret"
    os.close(auth.win_security.create_private_file(path, api))
    assert check_private_file(path, api) == []


def test_the_real_api_refuses_off_windows():
    if sys.platform == "win32":
        pytest.skip("this checks the non-Windows refusal")
    with pytest.raises(OSError, match="only on Windows"):
        winapi.Win32Api().current_user_sid()
