"""Windows-safe file names (app/comfy/filenames.py), checked with PureWindowsPath as the oracle."""

from __future__ import annotations

import hashlib
from pathlib import PureWindowsPath

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.comfy.filenames import MAX_NAME_LENGTH, is_safe_filename, path_inside, safe_filename
from app.comfy.render import write_outputs
from app.comfy.results import JobResult, JobTimings, OutputFile, OutputRef

FORBIDDEN = set('<>:"/\\|?*') | {chr(c) for c in range(32)}


def windows_accepts(name: str) -> bool:
    """What Windows requires of one path component (CreateFileW on NTFS)."""
    pure = PureWindowsPath(name)
    return (
        bool(name)
        and pure.name == name  # no drive ("a:b" is drive "a:"), no separators
        and not pure.is_reserved()
        and not FORBIDDEN & set(name)
        and not name.endswith((" ", "."))
        and len(name) <= MAX_NAME_LENGTH
    )


@pytest.mark.parametrize(
    "given_name, expected",
    [
        ("ComfyUI_00001_.png", "ComfyUI_00001_.png"),
        ("scene 1: the harbour.png", "scene 1_ the harbour.png"),  # not an NTFS stream of "scene 1"
        ('a<b>c"d|e?f*g.png', "a_b_c_d_e_f_g.png"),
        ("sub/dir\\name.png", "sub_dir_name.png"),
        ("line\nbreak\x00.png", "line_break_.png"),
        ("CON", "CON_"),
        ("con.png", "con_.png"),
        ("Nul.tar.gz", "Nul_.tar.gz"),
        ("COM1 .txt", "COM1_.txt"),
        ("lpt9.jpeg", "lpt9_.jpeg"),
        ("COM10.png", "COM10.png"),  # only COM1-COM9 are devices
        ("CONSOLE.png", "CONSOLE.png"),
        ("name. . ", "name"),
        ("  padded.png  ", "padded.png"),
        ("..", "file"),
        (".", "file"),
        ("", "file"),
        (".env", ".env"),
    ],
)
def test_names_are_made_safe_for_windows(given_name, expected):
    assert safe_filename(given_name) == expected
    assert windows_accepts(expected)


def test_a_long_name_is_cut_in_the_stem_and_keeps_its_extension():
    name = safe_filename("a very long prompt, " * 20 + ".png")
    assert len(name) <= MAX_NAME_LENGTH and name.endswith(".png") and windows_accepts(name)


@given(st.text(max_size=300))
def test_any_text_becomes_a_name_windows_accepts(text):
    name = safe_filename(text)
    assert windows_accepts(name), repr(name)
    assert safe_filename(name) == name and is_safe_filename(name)


@pytest.mark.parametrize(
    "server_name",
    [
        "../../etc/passwd",
        "..\\..\\Windows\\win.ini",
        "/abs/path.png",
        "C:\\x\\y.png",
        "a/../..",
        "sub/CON.png",
    ],
)
def test_a_server_given_name_never_leaves_the_output_folder(tmp_path, server_name):
    target = path_inside(tmp_path, server_name)
    assert target.parent == tmp_path and windows_accepts(target.name)


def test_rendered_files_get_safe_unused_names_inside_the_output_folder(tmp_path):
    def output(filename: str, subfolder: str = "", data: bytes = b"png") -> OutputFile:
        return OutputFile(OutputRef("9", filename, subfolder), data, "image/png")

    files = (
        output("scene: 1.png"),
        output("CON.png", data=b"device"),
        output("../../escape.png", subfolder="../.."),
        output("scene_ 1.png", data=b"second"),  # sanitizes to the first one's name
        output("", data=b"nameless"),
    )
    timings = JobTimings(0.0, 0.0, 0.0, 0.0)
    out = tmp_path / "renders"
    written = write_outputs(JobResult("pid", "gpu0", files, {}, timings), out)
    names = [file.path.name for file in written]
    assert names == ["scene_ 1.png", "CON_.png", "escape.png", "scene_ 1-1.png", "pid.bin"]
    assert all(file.path.parent == out and windows_accepts(file.path.name) for file in written)
    assert [file.path.read_bytes() for file in written] == [f.data for f in files]
    assert written[1].sha256 == hashlib.sha256(b"device").hexdigest() and written[2].subfolder == "../.."
    assert sorted(p.name for p in out.iterdir()) == sorted(names)
