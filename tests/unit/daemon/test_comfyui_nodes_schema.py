"""The node pack as ComfyUI's loader sees it, imported straight from the repository.

Covers the class_type / display-name contract, every INPUT_TYPES schema (names, types,
defaults the workflow templates rely on), endpoint resolution, and that the Luna nodes in
`workflows/*.json` only use inputs the nodes declare.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from daemon.comfyui_nodes import connection
from tests.helpers.comfyui_standin import (
    NodeContractError,
    load_custom_node,
    run_node,
    unload_custom_node,
    validate_node_class,
)

REPO = Path(__file__).resolve().parents[3]
PACK_DIR = REPO / "daemon" / "comfyui_nodes"


@pytest.fixture
def pack():
    loaded = load_custom_node(PACK_DIR)
    yield loaded
    unload_custom_node(loaded.module_name)


def test_mappings_carry_the_four_nodes_and_their_display_names(pack):
    assert pack.display_names == {
        "LunaSharedCLIPEncode": "Luna Shared CLIP Encode",
        "LunaSharedVAEEncode": "Luna Shared VAE Encode",
        "LunaSharedVAEDecode": "Luna Shared VAE Decode",
        "LunaDaemonStatus": "Luna Daemon Status",
    }
    assert set(pack.node_classes) == set(pack.display_names)
    for class_type, cls in pack.node_classes.items():
        validate_node_class(class_type, cls)
        assert cls.CATEGORY == "Luna/daemon"


def test_repository_import_uses_the_real_daemon_client(pack):
    module = __import__("sys").modules[pack.module_name + ".connection"]
    assert module.daemon_client.__name__ == "daemon.wire.client"


def test_clip_encode_schema(pack):
    cls = pack.node_classes["LunaSharedCLIPEncode"]
    schema = cls.INPUT_TYPES()
    required, optional = schema["required"], schema["optional"]
    assert list(required) == ["text", "model_set", "mode"]
    assert required["text"][0] == "STRING" and required["text"][1]["multiline"] is True
    assert required["model_set"] == ("STRING", required["model_set"][1])
    assert required["model_set"][1]["default"] == "default"
    assert required["mode"][0] == ["auto", "daemon"]
    assert optional["clip_skip"][0] == "INT"
    assert {k: optional["clip_skip"][1][k] for k in ("default", "min", "max")} == {
        "default": 0,
        "min": -24,
        "max": 0,
    }
    defaults = {
        name: optional[name][1]["default"]
        for name in ("width", "height", "crop_w", "crop_h", "target_width", "target_height")
    }
    assert defaults == {
        "width": 1024,
        "height": 1024,
        "crop_w": 0,
        "crop_h": 0,
        "target_width": 1024,
        "target_height": 1024,
    }
    assert optional["clip"][0] == "CLIP"
    assert optional["host"][0] == "STRING" and optional["port"][0] == "INT"
    assert cls.RETURN_TYPES == ("CONDITIONING",)


@pytest.mark.parametrize(
    ("class_type", "image_input", "image_type", "local", "returns"),
    [
        ("LunaSharedVAEEncode", "pixels", "IMAGE", "vae", ("LATENT",)),
        ("LunaSharedVAEDecode", "samples", "LATENT", "vae", ("IMAGE",)),
    ],
)
def test_vae_node_schemas(pack, class_type, image_input, image_type, local, returns):
    cls = pack.node_classes[class_type]
    schema = cls.INPUT_TYPES()
    assert list(schema["required"]) == [image_input, "model_set", "mode", "tiling"]
    assert schema["required"][image_input] == (image_type,)
    assert schema["required"]["tiling"][0] == ["auto", "on", "off"]
    assert list(schema["optional"]) == [local, "host", "port"]
    assert schema["optional"][local][0] == "VAE"
    assert returns == cls.RETURN_TYPES


def test_status_schema(pack):
    cls = pack.node_classes["LunaDaemonStatus"]
    schema = cls.INPUT_TYPES()
    assert schema["required"] == {} and list(schema["optional"]) == ["host", "port"]
    assert cls.RETURN_TYPES == ("STRING", "BOOLEAN") and cls.RETURN_NAMES == ("status", "ok")
    assert cls.OUTPUT_NODE is True
    assert cls.IS_CHANGED() != cls.IS_CHANGED()  # NaN: re-run on every queue


def test_standin_rejects_values_comfyui_would_reject(pack):
    cls = pack.node_classes["LunaSharedCLIPEncode"]
    with pytest.raises(NodeContractError, match="not one of"):
        run_node(cls, text="x", model_set="default", mode="remote")
    with pytest.raises(NodeContractError, match="bigger than max"):
        run_node(cls, text="x", model_set="default", mode="auto", clip_skip=2)
    with pytest.raises(NodeContractError, match="required input missing"):
        run_node(cls, text="x", mode="auto")
    with pytest.raises(NodeContractError, match="unknown inputs"):
        run_node(cls, text="x", model_set="default", mode="auto", clip_type="sdxl")


def test_luna_nodes_in_workflow_templates_use_declared_inputs(pack):
    templates = sorted((REPO / "workflows").glob("*.json"))
    used = 0
    for template in templates:
        graph = json.loads(template.read_text(encoding="utf-8"))
        for node_id, node in graph.items():
            cls = pack.node_classes.get(node.get("class_type"))
            if cls is None:
                continue
            used += 1
            schema = cls.INPUT_TYPES()
            declared = {**schema["required"], **schema.get("optional", {})}
            where = f"{template.name} node {node_id}"
            assert set(schema["required"]) <= set(node["inputs"]), where
            assert set(node["inputs"]) <= set(declared), where
            for name, value in node["inputs"].items():
                if isinstance(declared[name][0], list):
                    assert value in declared[name][0], where
    if used == 0:
        pytest.skip("no workflow template uses the Luna nodes yet")


class TestEndpointResolution:
    def test_defaults_without_inputs_or_environment(self):
        endpoint = connection.resolve_endpoint("", 0, environ={})
        assert (endpoint.host, endpoint.port, endpoint.token) == ("127.0.0.1", 19283, None)
        assert endpoint.address == "127.0.0.1:19283"

    def test_environment_overrides_defaults(self):
        env = {"LUNA_DAEMON_HOST": "10.0.0.5", "LUNA_DAEMON_PORT": "20000", "LUNA_DAEMON_TOKEN": "secret"}
        assert connection.resolve_endpoint("", 0, environ=env) == connection.DaemonEndpoint(
            "10.0.0.5", 20000, "secret"
        )

    def test_node_inputs_override_environment(self):
        env = {"LUNA_DAEMON_HOST": "10.0.0.5", "LUNA_DAEMON_PORT": "20000"}
        endpoint = connection.resolve_endpoint(" render-box ", 4242, environ=env)
        assert (endpoint.host, endpoint.port) == ("render-box", 4242)
        # localhost is dialled as the IPv4 loopback the daemon binds for it (Windows tries ::1 first)
        assert connection.resolve_endpoint(" localhost ", 4242, environ=env).host == "127.0.0.1"

    @pytest.mark.parametrize("raw", ["abc", "70000", "-3"])
    def test_bad_environment_port_is_a_clear_error(self, raw):
        with pytest.raises(connection.LunaDaemonNodeError, match="LUNA_DAEMON_PORT|out of range"):
            connection.resolve_endpoint("", 0, environ={"LUNA_DAEMON_PORT": raw})


def test_importing_the_pack_and_installer_does_not_import_torch_or_comfy():
    import subprocess
    import sys

    code = (
        "import sys, daemon.comfyui_nodes.install, daemon.comfyui_nodes as pack; "
        "assert len(pack.NODE_CLASS_MAPPINGS) == 4; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'comfy', 'nodes')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
