"""The node-pack installer: copy/link into a fake ComfyUI root, reinstall, uninstall, refusals.

The installed pack is imported in a subprocess whose sys.path holds only the ComfyUI root,
the standard library and the folders numpy/torch come from, with `daemon` and `app` imports
blocked, so it proves the pack runs on its vendored client alone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy
import pytest
import torch

from daemon import __version__
from daemon.comfyui_nodes import install as installer
from tests.helpers.comfyui_standin import load_custom_node, unload_custom_node, validate_node_class

STANDIN = Path(__file__).resolve().parents[2] / "helpers" / "comfyui_standin.py"
EXPECTED_NODES = {"LunaSharedCLIPEncode", "LunaSharedVAEEncode", "LunaSharedVAEDecode", "LunaDaemonStatus"}


@pytest.fixture
def comfy_root(tmp_path: Path) -> Path:
    root = tmp_path / "ComfyUI"
    (root / "custom_nodes").mkdir(parents=True)
    (root / "main.py").write_text("# ComfyUI entry point stand-in\n", encoding="utf-8")
    return root


def _quiet(lines: list[str]):
    return lines.append


def test_copy_install_builds_the_pack_with_vendored_client_and_manifest(comfy_root):
    printed: list[str] = []
    report = installer.install(comfy_root, out=_quiet(printed))
    target = comfy_root / "custom_nodes" / "luna_shared_daemon"
    assert report.target == target and report.mode == "copy" and report.replaced_version is None
    for name in (
        "__init__.py",
        "nodes.py",
        "connection.py",
        "conversion.py",
        "fallback.py",
        "README.md",
        "_vendor/__init__.py",
        *(f"_vendor/{name}" for name in installer.VENDORED_MODULES),
    ):
        assert (target / name).is_file() and not (target / name).is_symlink(), name
    assert not (target / "install.py").exists()
    assert (target / "_vendor" / "client.py").read_bytes() == (
        Path(installer.WIRE_DIR) / "client.py"
    ).read_bytes()
    manifest = json.loads((target / "luna_install.json").read_text(encoding="utf-8"))
    assert manifest["version"] == __version__ and manifest["mode"] == "copy"
    assert set(manifest["files"]) == set(report.files)
    assert printed[0].startswith(f"Installed Luna shared daemon nodes {__version__} in {target}")
    # nothing left over from the staging folder
    assert sorted(p.name for p in (comfy_root / "custom_nodes").iterdir()) == ["luna_shared_daemon"]


def test_installed_pack_imports_without_this_repository(comfy_root):
    installer.install(comfy_root, out=_quiet([]))
    result = _import_in_clean_interpreter(comfy_root)
    assert result.returncode == 0, result.stdout + result.stderr
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(answer["nodes"]) == EXPECTED_NODES
    assert answer["client_module"].endswith("luna_shared_daemon._vendor.client")
    assert answer["status_ok"] is False and "offline" in answer["status_text"]
    assert answer["project_modules"] == []


def test_link_install_symlinks_every_file_to_this_checkout(comfy_root):
    report = installer.install(comfy_root, mode="link", out=_quiet([]))
    target = report.target
    assert not target.is_symlink() and target.is_dir()
    linked = target / "_vendor" / "protocol.py"
    assert linked.is_symlink() and linked.resolve() == (Path(installer.WIRE_DIR) / "protocol.py")
    assert (target / "nodes.py").resolve() == Path(installer.PACKAGE_DIR) / "nodes.py"
    assert json.loads((target / "luna_install.json").read_text())["mode"] == "link"
    result = _import_in_clean_interpreter(comfy_root)
    assert result.returncode == 0, result.stdout + result.stderr


def test_reinstall_replaces_own_install_and_reports_previous_version(comfy_root):
    installer.install(comfy_root, mode="link", out=_quiet([]))
    target = comfy_root / "custom_nodes" / "luna_shared_daemon"
    (target / "__pycache__").mkdir()
    printed: list[str] = []
    report = installer.install(comfy_root, mode="copy", out=_quiet(printed))
    assert report.replaced_version == __version__
    assert printed[0].startswith("Reinstalled") and "link mode" in printed[1]
    assert not (target / "nodes.py").is_symlink() and not (target / "__pycache__").exists()
    # the checkout the links pointed into is untouched
    assert (Path(installer.PACKAGE_DIR) / "nodes.py").is_file()


def test_uninstall_removes_only_the_installed_folder(comfy_root):
    installer.install(comfy_root, mode="link", out=_quiet([]))
    other = comfy_root / "custom_nodes" / "someone_elses_pack"
    other.mkdir()
    printed: list[str] = []
    removed = installer.uninstall(comfy_root, out=_quiet(printed))
    assert removed == comfy_root / "custom_nodes" / "luna_shared_daemon"
    assert not removed.exists() and other.is_dir()
    assert (Path(installer.WIRE_DIR) / "client.py").is_file()  # link targets survive
    assert printed[0].startswith(f"Removed Luna shared daemon nodes {__version__}")
    assert installer.uninstall(comfy_root, out=_quiet(printed)) is None
    assert "nothing to do" in printed[-1]


def test_refuses_a_folder_it_did_not_create(comfy_root):
    foreign = comfy_root / "custom_nodes" / "luna_shared_daemon"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("keep me", encoding="utf-8")
    with pytest.raises(installer.InstallError, match="not created by this installer"):
        installer.install(comfy_root, out=_quiet([]))
    with pytest.raises(installer.InstallError, match="not created by this installer"):
        installer.uninstall(comfy_root, out=_quiet([]))
    (foreign / "luna_install.json").write_text('{"pack": "luna_shared_daemon"}', encoding="utf-8")
    with pytest.raises(installer.InstallError, match="not created by this installer"):
        installer.uninstall(comfy_root, out=_quiet([]))
    assert (foreign / "precious.txt").read_text(encoding="utf-8") == "keep me"


def test_refuses_a_pack_folder_that_is_a_symlink_even_to_an_install(comfy_root, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "ComfyUI" / "custom_nodes").mkdir(parents=True)
    (elsewhere / "ComfyUI" / "main.py").write_text("", encoding="utf-8")
    real = installer.install(elsewhere / "ComfyUI", out=_quiet([])).target
    (comfy_root / "custom_nodes" / "luna_shared_daemon").symlink_to(real, target_is_directory=True)
    with pytest.raises(installer.InstallError, match="not created by this installer"):
        installer.uninstall(comfy_root, out=_quiet([]))
    with pytest.raises(installer.InstallError, match="not created by this installer"):
        installer.install(comfy_root, out=_quiet([]))
    assert (real / "luna_install.json").is_file() and (real / "nodes.py").is_file()


def test_stale_staging_folders_are_cleaned_and_named_so_comfyui_skips_them(comfy_root):
    stale = comfy_root / "custom_nodes" / f"{installer.STAGING_PREFIX}abc{installer.STAGING_SUFFIX}"
    stale.mkdir()
    (stale / "__init__.py").write_text("raise RuntimeError('half-installed')\n", encoding="utf-8")
    installer.install(comfy_root, out=_quiet([]))
    assert not stale.exists()
    assert stale.name.endswith(".disabled")  # ComfyUI's loader skips *.disabled folders


def test_refuses_a_path_that_is_not_a_comfyui_root(tmp_path):
    not_comfy = tmp_path / "not_comfy"
    (not_comfy / "custom_nodes").mkdir(parents=True)
    with pytest.raises(installer.NotComfyUIRoot, match="missing main.py"):
        installer.install(not_comfy, out=_quiet([]))
    with pytest.raises(installer.NotComfyUIRoot, match="missing main.py and custom_nodes/"):
        installer.uninstall(tmp_path / "nowhere", out=_quiet([]))
    assert list(not_comfy.iterdir()) == [not_comfy / "custom_nodes"]
    assert list((not_comfy / "custom_nodes").iterdir()) == []


def test_unknown_mode_is_refused_before_touching_anything(comfy_root):
    with pytest.raises(installer.InstallError, match="mode must be one of"):
        installer.install(comfy_root, mode="hardlink", out=_quiet([]))
    assert list((comfy_root / "custom_nodes").iterdir()) == []


def test_command_line_installs_and_uninstalls_with_exit_codes(comfy_root, tmp_path, capsys):
    assert installer.main(["install-comfyui-nodes", "--comfyui", str(comfy_root), "--link"]) == 0
    assert "Installed Luna shared daemon nodes" in capsys.readouterr().out
    assert installer.main(["uninstall-comfyui-nodes", "--comfyui", str(comfy_root)]) == 0
    assert "Removed" in capsys.readouterr().out
    assert installer.main(["install-comfyui-nodes", "--comfyui", str(tmp_path / "nope")]) == 2
    assert "does not look like a ComfyUI folder" in capsys.readouterr().err


def test_installed_copy_loads_through_the_standin_in_process(comfy_root):
    installer.install(comfy_root, out=_quiet([]))
    pack = load_custom_node(comfy_root / "custom_nodes" / "luna_shared_daemon")
    try:
        assert set(pack.node_classes) == EXPECTED_NODES
        for class_type, cls in pack.node_classes.items():
            validate_node_class(class_type, cls)
        client_module = sys.modules[pack.module_name + ".connection"].daemon_client
        assert client_module.__name__ == pack.module_name + "._vendor.client"
    finally:
        unload_custom_node(pack.module_name)


def _import_in_clean_interpreter(comfy_root: Path) -> subprocess.CompletedProcess:
    """Load the installed pack like ComfyUI would, in `python -S -I` with a minimal sys.path."""
    library_dirs = sorted({str(Path(numpy.__file__).parents[1]), str(Path(torch.__file__).parents[1])})
    stdlib = [
        sysconfig.get_paths()["stdlib"],
        sysconfig.get_paths()["platstdlib"],
        str(Path(sysconfig.get_paths()["stdlib"]) / "lib-dynload"),
    ]
    script = f"""
import importlib.abc, importlib.util, json, sys
sys.path[:] = {[str(comfy_root), *stdlib, *library_dirs]!r}

class BlockProject(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("daemon", "app", "tests"):
            raise ImportError("the installed pack must not import " + name)
        return None

sys.meta_path.insert(0, BlockProject())
spec = importlib.util.spec_from_file_location("comfyui_standin", {str(STANDIN)!r})
standin = importlib.util.module_from_spec(spec)
sys.modules["comfyui_standin"] = standin
spec.loader.exec_module(standin)
pack = standin.load_custom_node({str(comfy_root / "custom_nodes" / "luna_shared_daemon")!r})
for class_type, cls in pack.node_classes.items():
    standin.validate_node_class(class_type, cls)
connection = sys.modules[pack.module_name + ".connection"]
status = pack.node_classes["LunaDaemonStatus"]
# port 1 on loopback: nothing listens there, so the status node must say offline
text, ok = standin.run_node(status, host="127.0.0.1", port=1)
status.connections.close_all()
print(json.dumps({{
    "nodes": sorted(pack.node_classes),
    "client_module": connection.daemon_client.__name__,
    "status_text": text, "status_ok": ok,
    "project_modules": sorted(m for m in sys.modules if m.split(".")[0] in ("daemon", "app")),
}}))
"""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTHON")}
    return subprocess.run(
        [sys.executable, "-S", "-I", "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=comfy_root,
        env=env,
    )
