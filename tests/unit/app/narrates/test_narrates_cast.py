"""Cast files: characters, world notes and settings; every unknown or ill-typed key is named."""

from __future__ import annotations

import pytest

from app.comfy.inject import LoraSpec
from app.narrates.cast import load_cast, parse_cast
from app.narrates.errors import CastError
from app.narrates.model import SessionSettings
from app.paths import resource_path


def test_the_shipped_example_cast_parses():
    cast = load_cast(resource_path("cast.example.toml"))
    assert cast.characters and cast.world and cast.title


def test_a_full_cast_becomes_typed_records_and_settings():
    cast = parse_cast(
        {
            "session": {
                "title": "T",
                "style": "anime",
                "width": 832,
                "height": 1216,
                "seed_policy": "character",
                "render": {"steps": 12},
            },
            "styles": {"anime": {"prefix": "anime", "loras": [{"name": "s.safetensors", "strength": 0.5}]}},
            "characters": [
                {"name": "Mira", "visual": "silver hair", "loras": [{"name": "m.safetensors"}], "seed": 4}
            ],
            "world": [{"title": "Lamp", "content": "dark", "keys": ["lamp"]}],
        }
    )
    settings = cast.apply(SessionSettings())
    assert settings.style == "anime" and (settings.width, settings.height) == (832, 1216)
    assert settings.render_values == {"steps": 12} and settings.styles["anime"].loras == (
        LoraSpec("s.safetensors", 0.5),
    )
    assert cast.characters[0].loras == (LoraSpec("m.safetensors", 1.0),) and cast.characters[0].seed == 4


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"characters": [{"name": "Mira", "hair": "silver"}]}, r"characters\[0\]: unknown key 'hair'"),
        ({"session": {"titel": "x"}}, r"\[session\]: unknown key 'titel'"),
        ({"world": [{"title": "a", "content": "b", "key": ["x"]}]}, r"world\[0\]: unknown key 'key'"),
        (
            {"characters": [{"name": "M", "loras": [{"name": "a", "weight": 1}]}]},
            r"loras\[0\]: unknown key 'weight'",
        ),
        ({"styles": {"anime": {"prefx": "a"}}}, r"\[styles.anime\]: unknown key 'prefx'"),
        ({"cast": []}, r"top level: unknown key 'cast'"),
        ({"characters": [{"description": "no name"}]}, r"'name' is required"),
        ({"characters": [{"name": "A"}, {"name": "a"}]}, r"a second character named"),
        ({"characters": [{"name": "A", "seed": "42"}]}, r"seed: expected an integer"),
        ({"session": {"width": 512}}, r"both width and height"),
        ({"session": {"seed_policy": "sometimes"}}, r"seed_policy: expected one of"),
    ],
)
def test_a_bad_cast_is_a_cast_error_naming_the_key(data, message):
    with pytest.raises(CastError, match=message):
        parse_cast(data, "cast.toml")


def test_a_cast_file_that_is_not_toml_names_the_file(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[characters\nname=", encoding="utf-8")
    with pytest.raises(CastError, match="bad.toml is not valid TOML"):
        load_cast(path)
