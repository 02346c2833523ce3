"""Node-pack upgrades that survive Windows file semantics, and installs from a frozen bundle.

Fault injection stands in for what Windows does: a pack folder that cannot be renamed (a file in
it held open), an old pack whose deletion fails (files in use by a running ComfyUI), a read-only
file that cannot be deleted until its flag is cleared. The frozen bundle is a fake ``_MEIPASS``
laid out as build.spec must ship the sources. Only a real Windows box (with ComfyUI holding the
files) can confirm which of these Windows actually raises and when it releases the files.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import sys
from pathlib import Path

import pytest

from daemon.comfyui_nodes import install as installer


@pytest.fixture
def comfy_root(tmp_path: Path) -> Path:
    root = tmp_path / "ComfyUI"
    (root / "custom_nodes").mkdir(parents=True)
    (root / "main.py").write_text("# ComfyUI entry point stand-in\n", encoding="utf-8")
    return root


@pytest.fixture(autouse=True)
def no_retry_pause(monkeypatch):
    monkeypatch.setattr(installer, "DELETE_RETRY_SECONDS", 0.0)


def quiet(lines: list[str]):
    return lines.append


def entries(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "custom_nodes").iterdir())


def version_of(target: Path) -> str:
    return json.loads((target / installer.MANIFEST_NAME).read_text(encoding="utf-8"))["version"]


def mark_old(target: Path) -> None:
    manifest = json.loads((target / installer.MANIFEST_NAME).read_text(encoding="utf-8"))
    manifest["version"] = "0.0.1-old"
    (target / installer.MANIFEST_NAME).write_text(json.dumps(manifest), encoding="utf-8")


def test_an_old_pack_in_use_stays_disabled_and_the_new_one_is_complete(comfy_root, monkeypatch):
    target = installer.install(comfy_root, out=quiet([])).target
    mark_old(target)
    real = installer._rmtree
    attempts = []

    def in_use(path):  # Windows: a file held open by ComfyUI cannot be deleted
        if path.name.startswith(installer.OLD_PREFIX):
            attempts.append(path)
            return
        real(path)

    monkeypatch.setattr(installer, "_rmtree", in_use)
    printed: list[str] = []
    report = installer.install(comfy_root, out=quiet(printed))
    assert len(attempts) == installer.DELETE_ATTEMPTS
    [leftover] = [name for name in entries(comfy_root) if name != "luna_shared_daemon"]
    assert leftover.startswith(".luna_shared_daemon-old-") and leftover.endswith(".disabled")
    assert any("stays disabled" in line and leftover in line for line in printed)
    assert report.replaced_version == "0.0.1-old" and version_of(target) != "0.0.1-old"
    assert set(report.files) <= {p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file()}

    monkeypatch.setattr(installer, "_rmtree", real)
    installer.install(comfy_root, out=quiet([]))  # the next install clears the leftover
    assert entries(comfy_root) == ["luna_shared_daemon"]


def test_a_file_released_a_moment_later_is_deleted_by_the_retry(comfy_root, monkeypatch):
    installer.install(comfy_root, out=quiet([]))
    real = installer._rmtree
    failures = [1, 1]

    def busy_twice(path):
        if path.name.startswith(installer.OLD_PREFIX) and failures:
            failures.pop()
            return
        real(path)

    monkeypatch.setattr(installer, "_rmtree", busy_twice)
    printed: list[str] = []
    installer.install(comfy_root, out=quiet(printed))
    assert entries(comfy_root) == ["luna_shared_daemon"] and failures == []
    assert not any("stays disabled" in line for line in printed)


def test_a_pack_that_cannot_be_moved_aside_is_left_untouched(comfy_root, monkeypatch):
    target = installer.install(comfy_root, out=quiet([])).target
    mark_old(target)
    real_replace = os.replace

    def locked(source, dest):
        if Path(source) == target:
            raise PermissionError(13, "The process cannot access the file because it is being used")
        return real_replace(source, dest)

    monkeypatch.setattr(installer.os, "replace", locked)
    with pytest.raises(installer.InstallError, match="Close ComfyUI and run the command again"):
        installer.install(comfy_root, out=quiet([]))
    assert entries(comfy_root) == ["luna_shared_daemon"] and version_of(target) == "0.0.1-old"
    with pytest.raises(installer.InstallError, match="holds files"):
        installer.uninstall(comfy_root, out=quiet([]))
    assert version_of(target) == "0.0.1-old"


def test_if_the_new_pack_cannot_move_in_the_old_one_is_put_back(comfy_root, monkeypatch):
    target = installer.install(comfy_root, out=quiet([])).target
    mark_old(target)
    real_replace = os.replace

    def staging_blocked(source, dest):
        if Path(source).name.startswith(installer.STAGING_PREFIX):
            raise PermissionError(5, "Access is denied")  # e.g. an antivirus scanning it
        return real_replace(source, dest)

    monkeypatch.setattr(installer.os, "replace", staging_blocked)
    with pytest.raises(PermissionError):
        installer.install(comfy_root, out=quiet([]))
    assert entries(comfy_root) == ["luna_shared_daemon"] and version_of(target) == "0.0.1-old"


def test_uninstall_leaves_a_disabled_folder_when_files_are_in_use(comfy_root, monkeypatch):
    installer.install(comfy_root, out=quiet([]))
    monkeypatch.setattr(installer, "_rmtree", lambda path: None)
    printed: list[str] = []
    installer.uninstall(comfy_root, out=quiet(printed))
    [leftover] = entries(comfy_root)
    assert leftover.endswith(".disabled") and "stays disabled" in printed[-1]


def test_read_only_files_are_made_writable_and_deleted(tmp_path):
    victim = tmp_path / "nodes.py"
    victim.write_text("x", encoding="utf-8")
    victim.chmod(stat.S_IREAD)
    calls = []

    def windows_unlink(path):  # Windows refuses to delete a file with the read-only attribute
        calls.append(path)
        if not os.stat(path).st_mode & stat.S_IWRITE:
            raise PermissionError(5, "Access is denied")
        os.unlink(path)

    with pytest.raises(PermissionError):
        windows_unlink(str(victim))
    installer._clear_read_only(windows_unlink, str(victim), None)
    assert not victim.exists() and len(calls) == 2


def frozen_bundle(tmp_path: Path, monkeypatch, *, with_pack: bool = True) -> Path:
    """A fake PyInstaller bundle: the pack's sources as data, as build.spec ships them."""
    bundle = tmp_path / "_MEI12345"
    data = bundle / "resources" / installer.FROZEN_PACK_DATA
    data.mkdir(parents=True)
    if with_pack:
        shutil.copytree(
            installer.PACKAGE_DIR,
            data / installer.PACK_DIR_NAME,
            ignore=shutil.ignore_patterns("__pycache__"),
        )
        shutil.copytree(installer.WIRE_DIR, data / "wire", ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    monkeypatch.setattr(sys, "_MEIPASS", str(bundle), raising=False)
    return data


def test_a_frozen_bundle_installs_from_its_data_files(comfy_root, tmp_path, monkeypatch):
    data = frozen_bundle(tmp_path, monkeypatch)
    assert installer.source_dirs() == (data / installer.PACK_DIR_NAME, data / "wire")
    report = installer.install(comfy_root, out=quiet([]))
    assert (report.target / "_vendor" / "client.py").read_bytes() == (
        data / "wire" / "client.py"
    ).read_bytes()
    assert (report.target / "nodes.py").is_file() and not (report.target / "install.py").exists()
    with pytest.raises(installer.InstallError, match="link mode needs a source checkout"):
        installer.install(comfy_root, mode="link", out=quiet([]))


def test_a_frozen_bundle_without_the_pack_data_says_so(comfy_root, tmp_path, monkeypatch):
    frozen_bundle(tmp_path, monkeypatch, with_pack=False)
    with pytest.raises(installer.InstallError, match="application bundle does not contain the node pack"):
        installer.install(comfy_root, out=quiet([]))
