"""Owner-only files on Windows: the ACL a secret file (the daemon token) is created with, and the
check that refuses one other accounts can read — what mode 0600 and its check are on POSIX.

On Windows ``os.chmod(0o600)`` only sets the read-only flag, and a file inherits its folder's ACL.
So :func:`create_private_file` creates the file with a protected DACL granting full access to the
current user and SYSTEM only (``D:P(A;;FA;;;<user SID>)(A;;FA;;;SY)``), in the same call that
creates it (no window in which the inherited ACL applies), and :func:`check_private_file` reads
the owner and DACL back as SDDL and names every other account that can read the file. The SDDL
parsing and the policy are pure Python (tested on any OS); the Windows calls go through
``daemon/winapi.py``. Pure functions, safe on any thread.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from daemon import winapi

#: Accounts that may hold rights on a private file: SYSTEM, and the Administrators group (like
#: root on POSIX, administrators can take any file anyway; inherited profile ACLs include them).
TRUSTED_TRUSTEES = frozenset({"SY", "S-1-5-18", "BA", "S-1-5-32-544"})
#: Rights that let a trustee read the contents, or give itself that right.
READ_RIGHTS = (
    0x00000001  # FILE_READ_DATA
    | 0x80000000  # GENERIC_READ
    | 0x10000000  # GENERIC_ALL
    | 0x02000000  # MAXIMUM_ALLOWED
    | 0x00040000  # WRITE_DAC
    | 0x00080000  # WRITE_OWNER
)
#: The two-letter SDDL rights (file and generic ones, and the directory-service letters that share
#: their bits, which ConvertSecurityDescriptorToStringSecurityDescriptor uses for odd masks).
_RIGHT_LETTERS = {
    "GA": 0x10000000,
    "GR": 0x80000000,
    "GW": 0x40000000,
    "GX": 0x20000000,
    "FA": 0x001F01FF,
    "FR": 0x00120089,
    "FW": 0x00120116,
    "FX": 0x001200A0,
    "RC": 0x00020000,
    "SD": 0x00010000,
    "WD": 0x00040000,
    "WO": 0x00080000,
    "CC": 0x00000001,
    "DC": 0x00000002,
    "LC": 0x00000004,
    "SW": 0x00000008,
    "RP": 0x00000010,
    "WP": 0x00000020,
    "DT": 0x00000040,
    "LO": 0x00000080,
    "CR": 0x00000100,
}
_ALLOW_TYPES = frozenset({"A", "OA", "XA", "ZA"})


@dataclass(frozen=True)
class Ace:
    """One access control entry of an SDDL DACL."""

    kind: str  # "A" allow, "D" deny, "XA" conditional allow …
    flags: str  # "ID" inherited, "IO" inherit-only …
    rights: int
    trustee: str  # a SID string or an SDDL alias ("SY", "BA", "WD" …)


def private_sddl(user_sid: str) -> str:
    """The DACL of a private file: protected (no inheritance), the user and SYSTEM only."""
    return f"D:P(A;;FA;;;{user_sid})(A;;FA;;;SY)"


def parse_rights(text: str) -> int:
    """``0x1200a9`` or letters (``FA``, ``CCDCLCSWRP…``); unknown letters count as every right."""
    text = text.strip()
    if text.lower().startswith("0x"):
        return int(text, 16)
    if text.isdigit():
        return int(text)
    rights = 0
    for i in range(0, len(text), 2):
        rights |= _RIGHT_LETTERS.get(text[i : i + 2].upper(), 0xFFFFFFFF)
    return rights


def _split_aces(text: str) -> list[str]:
    """The top-level ``(...)`` groups (conditional ACEs nest parentheses)."""
    aces, depth, start = [], 0, 0
    for index, char in enumerate(text):
        if char == "(":
            if depth == 0:
                start = index + 1
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0:
                aces.append(text[start:index])
    return aces


def _component(sddl: str, tag: str) -> str | None:
    """The text of ``O:``, ``G:``, ``D:`` or ``S:`` in an SDDL string (None when absent)."""
    depth = 0
    starts: dict[str, int] = {}
    for index, char in enumerate(sddl):
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif depth == 0 and char == ":" and index > 0 and sddl[index - 1] in "OGDS":
            starts[sddl[index - 1]] = index + 1
    if tag not in starts:
        return None
    begin = starts[tag]
    ends = [start - 2 for start in starts.values() if start > begin]
    return sddl[begin : min(ends) if ends else len(sddl)]


def parse_dacl(sddl: str) -> list[Ace] | None:
    """The DACL's entries; None when there is no DACL (``NO_ACCESS_CONTROL``: everyone may do
    anything)."""
    dacl = _component(sddl, "D")
    if dacl is None or "NO_ACCESS_CONTROL" in dacl.upper():
        return None
    entries = []
    for ace in _split_aces(dacl):
        fields = ace.split(";")
        if len(fields) < 6:
            raise ValueError(f"malformed ACE {ace!r}")
        entries.append(Ace(fields[0].upper(), fields[1].upper(), parse_rights(fields[2]), fields[5].strip()))
    return entries


def others_who_can_read(sddl: str, user_sid: str) -> list[str]:
    """Trustees other than ``user_sid``, SYSTEM and Administrators that can read the file (or
    change its ACL or owner); ``["Everyone (no DACL)"]`` for a NULL DACL. Deny entries are ignored:
    a file that needs one to be private is refused (safe side)."""
    allowed = {user_sid.upper(), *TRUSTED_TRUSTEES}
    owner = (_component(sddl, "O") or "").strip().upper()
    readers = []
    if owner and owner not in allowed:
        readers.append(f"{owner} (owner)")
    entries = parse_dacl(sddl)
    if entries is None:
        return [*readers, "Everyone (no DACL)"]
    for ace in entries:
        if ace.kind not in _ALLOW_TYPES or "IO" in _flag_pairs(ace.flags):
            continue  # deny entries, and entries that only apply to children
        trustee = ace.trustee.upper()
        if trustee == "OW" and (not owner or owner in allowed):
            continue  # OWNER RIGHTS: that is us
        if trustee not in allowed and ace.rights & READ_RIGHTS and ace.trustee not in readers:
            readers.append(ace.trustee)
    return readers


def _flag_pairs(flags: str) -> set[str]:
    return {flags[i : i + 2] for i in range(0, len(flags), 2)}


def create_private_file(path: os.PathLike | str, api: winapi.WindowsApi | None = None) -> int:
    """Create ``path`` exclusively (FileExistsError if it exists) with :func:`private_sddl`;
    returns a file descriptor open for writing."""
    api = api or winapi.WINDOWS_API
    return api.create_file_with_sddl(os.fspath(path), private_sddl(api.current_user_sid()))


def check_private_file(path: os.PathLike | str, api: winapi.WindowsApi | None = None) -> list[str]:
    """The accounts other than the user (and SYSTEM/Administrators) that can read ``path``."""
    api = api or winapi.WINDOWS_API
    return others_who_can_read(api.file_sddl(os.fspath(path)), api.current_user_sid())
