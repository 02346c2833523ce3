"""Instance configuration: the seed's defaults, instances.toml loading and validation."""

from __future__ import annotations

import pytest

from app.comfy.instances import (
    InstanceConfig,
    InstanceConfigError,
    default_instances,
    load_instances,
    parse_instances,
)
from app.paths import user_dirs


def test_defaults_reproduce_the_seed_table():
    config = default_instances()
    ports = {instance.styles[0]: instance.base_url.rsplit(":", 1)[1] for instance in config.instances}
    assert ports == {"anime": "8188", "realistic": "8189", "semi_realistic": "8190", "artistic": "8191"}
    assert config.resolve_style("noir") == "anime"
    assert config.for_style("noir")[0].base_url == "http://127.0.0.1:8188"
    assert config.for_style("realistic")[0].base_url == "http://127.0.0.1:8189"


def test_missing_file_gives_the_defaults():
    assert load_instances() == default_instances()


def test_toml_file_in_the_user_config_dir_is_loaded():
    config_dir = user_dirs().config
    config_dir.mkdir(parents=True)
    (config_dir / "instances.toml").write_text(
        'default_style = "realistic"\n'
        '[[instances]]\nname = "a1"\nurl = "https://gpu-box.lan/comfy/"\nstyles = ["anime", "artistic"]\n'
        'headers = { Authorization = "Bearer x" }\n'
        '[[instances]]\nname = "r1"\nurl = "http://10.0.0.5:8189"\nstyles = ["realistic"]\napi_prefix = ""\n'
    )
    config = load_instances()
    first, second = config.instances
    assert first.base_url == "https://gpu-box.lan/comfy" and first.ws_url == "wss://gpu-box.lan/comfy/ws"
    assert first.headers == {"Authorization": "Bearer x"} and first.styles == ("anime", "artistic")
    assert second.api_prefix == "" and second.ws_url == "ws://10.0.0.5:8189/ws"
    assert config.resolve_style("unknown") == "realistic"
    assert [i.name for i in config.for_style("artistic")] == ["a1"]


def test_several_instances_may_serve_one_style_and_default_style_defaults_to_the_first():
    config = parse_instances(
        {"instances": [{"url": "http://a:1", "styles": ["anime"]}, {"url": "http://b:1", "styles": "anime"}]}
    )
    assert config.default_style == "anime" and len(config.for_style("anime")) == 2
    assert config.instances[0].name == "http://a:1"


@pytest.mark.parametrize(
    "data, message",
    [
        ({}, "at least one"),
        ({"instances": [{"styles": ["anime"]}]}, "'url'"),
        ({"instances": [{"url": "ftp://x", "styles": ["anime"]}]}, "must be http"),
        ({"instances": [{"url": "http://x:1", "styles": [3]}]}, "styles"),
        ({"instances": [{"url": "http://x:1", "colour": "red"}]}, "unknown keys"),
        ({"instances": [{"url": "http://x:1", "headers": {"Origin": "http://evil"}}]}, "403"),
        ({"instances": [{"url": "http://x:1", "headers": ["a"]}]}, "headers"),
        (
            {"instances": [{"name": "a", "url": "http://x:1"}, {"name": "a", "url": "http://y:1"}]},
            "duplicate",
        ),
        (
            {"default_style": "noir", "instances": [{"url": "http://x:1", "styles": ["anime"]}]},
            "served by no",
        ),
    ],
)
def test_invalid_config_is_a_clear_error(data, message):
    with pytest.raises(InstanceConfigError, match=message):
        parse_instances(data)


def test_broken_toml_names_the_file(tmp_path):
    path = tmp_path / "instances.toml"
    path.write_text("[[instances]\nurl=")
    with pytest.raises(InstanceConfigError, match="instances.toml"):
        load_instances(path)


def test_instance_config_validates_itself():
    with pytest.raises(InstanceConfigError):
        InstanceConfig("x", "localhost:8188")
    with pytest.raises(InstanceConfigError):
        InstanceConfig("x", "http://h:1", api_prefix="api")
