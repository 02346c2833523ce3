"""What the story panel says before a turn: daemon down → stock variant or a failing render;
the style's ComfyUI down → the render is refused; all up → where renders go."""

from __future__ import annotations

from app.comfy.router import InstanceSnapshot
from app.narrates.readiness import render_readiness


def instance(name: str, state: str = "healthy", error: str | None = None) -> InstanceSnapshot:
    return InstanceSnapshot(
        name, "http://127.0.0.1:1", ("anime",), state, state == "healthy", error,
        0, 0, 0, 0, 0, None, None, None, None, (), 0, None,
    )  # fmt: skip


def test_all_up_says_where_renders_go():
    ready = render_readiness("sdxl_txt2img_luna_daemon", "anime", daemon_up=True, instances=[instance("box")])
    assert ready.ok and "box" in ready.describe()


def test_daemon_down_names_the_stock_variant_the_render_falls_back_to():
    ready = render_readiness(
        "sdxl_txt2img_luna_daemon",
        "anime",
        daemon_up=False,
        daemon_detail="not running",
        instances=[instance("a")],
    )
    assert ready.level == "fallback" and ready.template == "sdxl_txt2img"
    assert "daemon is down (not running)" in ready.describe() and "'sdxl_txt2img'" in ready.describe()


def test_daemon_down_does_not_matter_for_a_stock_template():
    assert render_readiness("sdxl_txt2img", None, daemon_up=False, instances=[instance("a")]).ok


def test_the_styles_instances_down_block_the_render_and_say_the_prose_is_kept():
    ready = render_readiness(
        "sdxl_txt2img", "anime", daemon_up=True, instances=[instance("a", "unhealthy", "connection refused")]
    )
    assert ready.level == "blocked" and "a (connection refused)" in ready.describe()
    assert "prose" in ready.describe()
    assert render_readiness("sdxl_txt2img", "anime", daemon_up=True, instances=[]).level == "blocked"


def test_an_unknown_template_is_blocked_with_the_reason():
    ready = render_readiness("no_such_template", None, daemon_up=True, instances=[instance("a")])
    assert ready.level == "blocked" and "no_such_template" in ready.describe()
