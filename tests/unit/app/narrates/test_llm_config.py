"""llm.toml validation and the effective-backend precedence (CLI > config > discovery > embedded)."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.narrates.llm import (
    DEFAULT_AGENTS,
    ChatMessage,
    DiscoveredBackend,
    LlmConfigError,
    LlmSettings,
    llm_config_path,
    load_llm_settings,
    parse_llm_settings,
    resolve_backend,
)
from app.paths import resource_path


def test_the_shipped_example_parses_and_matches_the_defaults():
    settings = load_llm_settings(resource_path("llm.example.toml"))
    assert settings.backend == "auto" and settings.server is None
    assert dict(settings.agents) == dict(DEFAULT_AGENTS)
    assert settings.embedded.model_path is None and settings.embedded.n_threads is None
    assert settings.timeouts == LlmSettings().timeouts and settings.retries == LlmSettings().retries


def test_the_config_file_lives_in_luna_home(luna_home):
    assert llm_config_path() == luna_home / "config" / "llm.toml"
    assert load_llm_settings() == LlmSettings()  # no file: defaults
    (luna_home / "config").mkdir()
    llm_config_path().write_text('[server]\nurl = "http://box:11434"\nmodel = "llama3"\n')
    server = load_llm_settings().server
    assert server is not None and server.url == "http://box:11434/v1" and server.model == "llama3"


def test_a_full_file_is_read(tmp_path, monkeypatch):
    monkeypatch.setenv("MY_LLM_KEY", "sk-from-env")
    path = tmp_path / "llm.toml"
    path.write_text(
        """
backend = "server"
[server]
url = "https://api.example.com/v1/"
api_key_env = "MY_LLM_KEY"
name = "cloud"
[discovery]
enabled = false
[embedded]
model_path = "models/mine.gguf"
n_threads = 3
[timeouts]
total = 90
[retries]
attempts = 5
[agents.writer]
model = "big"
temperature = 1.1
max_tokens = 900
"""
    )
    settings = load_llm_settings(path)
    assert settings.server.url == "https://api.example.com/v1" and settings.server.api_key == "sk-from-env"
    assert settings.embedded.model_path == tmp_path / "models" / "mine.gguf"
    assert (
        settings.embedded.n_threads == 3
        and settings.timeouts.total == 90.0
        and settings.retries.attempts == 5
    )
    writer = settings.agent("writer")
    assert (writer.model, writer.temperature, writer.max_tokens) == ("big", 1.1, 900)
    assert settings.agent("dreamer") == DEFAULT_AGENTS["dreamer"]
    request = writer.request((ChatMessage("user", "go"),), stop=("END",))
    assert (request.model, request.temperature, request.max_tokens, request.stop) == (
        "big",
        1.1,
        900,
        ("END",),
    )


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("colour = 1", "'colour'"),
        ("[server]\nurl = 'http://x:1/v1'\nmodle = 'm'", "'server.modle'"),
        ("[agents.writer]\ntemprature = 0.5", "'agents.writer.temprature'"),
        ("[agents.narrator]\ntemperature = 0.5", "agents.narrator"),
        ("[timeouts]\ntotal = 'long'", "timeouts.total must be a number"),
        ("[timeouts]\nread = -1", "timeouts.read must be >= 0.1"),
        ("[agents.writer]\ntemperature = 3", "agents.writer.temperature must be 0..2"),
        ("[agents.writer]\nmax_tokens = 0", "agents.writer.max_tokens must be at least 1"),
        ("[discovery]\nenabled = 'yes'", "discovery.enabled must be true or false"),
        ("[retries]\nattempts = true", "retries.attempts must be an integer, not a boolean"),
        ("backend = 'cloud'", "backend must be auto, server or embedded"),
        ("backend = 'server'", "needs a [server] table with url"),
        ("[server]\nurl = 'ftp://x'", "not an http(s)://host:port/v1 URL"),
        ("[server]\nmodel = 'm'", "[server] needs url"),
        ("server = 3", "[server] must be a table"),
        ("not toml =", "not valid TOML"),
    ],
)
def test_invalid_settings_name_the_offending_key(text, named):
    with pytest.raises(LlmConfigError) as caught:
        parse_llm_settings(text, file="llm.toml")
    assert named in str(caught.value) and "llm.toml" in str(caught.value)


def test_an_unknown_agent_name_is_rejected_by_agent():
    with pytest.raises(ValueError, match="unknown agent"):
        LlmSettings().agent("narrator")


def found(name: str, port: int, *models: str) -> DiscoveredBackend:
    return DiscoveredBackend(name, f"http://127.0.0.1:{port}/v1", port, models, 0.001)


class FakeDiscovery:
    def __init__(self, *results: DiscoveredBackend) -> None:
        self.results = list(results)
        self.calls: list[tuple] = []

    async def __call__(self, host, timeout):
        self.calls.append((host, timeout))
        return self.results


async def test_the_cli_url_wins_over_everything():
    settings = parse_llm_settings("[server]\nurl = 'http://box:1/v1'")
    discovery = FakeDiscovery(found("ollama", 11434, "llama3"))
    effective = await resolve_backend(settings, "http://other:8080", "qwen", discover=discovery)
    assert effective.kind == "server" and effective.backend.origin == "cli"
    assert effective.backend.base_url == "http://other:8080/v1" and effective.backend.model == "qwen"
    assert "--llm" in effective.reason and "/v1 added" in effective.reason and discovery.calls == []


async def test_the_cli_embedded_forces_the_embedded_runtime():
    settings = parse_llm_settings("[server]\nurl = 'http://box:1/v1'\n[embedded]\nmodel_path = '/m/x.gguf'")
    effective = await resolve_backend(settings, "embedded", None, discover=FakeDiscovery())
    assert effective.kind == "embedded" and effective.backend is None
    assert effective.embedded.model_path == Path("/m/x.gguf") and not effective.is_starter
    assert "--llm embedded" in effective.describe()


async def test_a_configured_server_comes_before_discovery():
    settings = parse_llm_settings(
        "[server]\nurl = 'http://box:1/v1'\nmodel = 'm'\napi_key = 'sk-secret'\nname = 'box'"
    )
    discovery = FakeDiscovery(found("ollama", 11434))
    effective = await resolve_backend(settings, None, None, discover=discovery)
    assert effective.backend.origin == "configured" and effective.backend.api_key == "sk-secret"
    assert effective.backend.name == "box" and discovery.calls == []
    assert "configured in" in effective.describe() and "sk-secret" not in effective.describe()


async def test_the_api_key_of_the_configured_server_is_kept_for_the_same_cli_url():
    settings = parse_llm_settings("[server]\nurl = 'http://box:1/v1'\napi_key = 'k'")
    effective = await resolve_backend(settings, "http://box:1/v1", None, discover=FakeDiscovery())
    assert effective.backend.api_key == "k"


async def test_discovery_picks_the_first_found_or_the_preferred_one():
    discovery = FakeDiscovery(found("ollama", 11434, "llama3"), found("vllm", 8000, "mistral"))
    effective = await resolve_backend(LlmSettings(), None, None, discover=discovery)
    assert effective.backend.name == "ollama" and effective.backend.model == "llama3"
    assert effective.backend.origin == "discovered" and "found ollama" in effective.reason
    assert "Also found: vllm" in effective.describe()
    preferring = parse_llm_settings("[discovery]\nprefer = 'vllm'\nhost = '127.0.0.2'\ntimeout = 0.2")
    effective = await resolve_backend(preferring, None, "override", discover=discovery)
    assert effective.backend.name == "vllm" and effective.backend.model == "override"
    assert discovery.calls[-1] == ("127.0.0.2", 0.2)


async def test_nothing_found_falls_back_to_the_embedded_starter_and_says_it_is_weak():
    effective = await resolve_backend(LlmSettings(), None, None, discover=FakeDiscovery())
    assert effective.kind == "embedded" and effective.is_starter
    text = effective.describe()
    assert "none answered" in text and "starter" in text and "weak" in text


async def test_backend_embedded_in_the_file_skips_discovery():
    discovery = FakeDiscovery(found("ollama", 11434))
    effective = await resolve_backend(
        parse_llm_settings("backend = 'embedded'"), None, None, discover=discovery
    )
    assert effective.kind == "embedded" and discovery.calls == []
    off = await resolve_backend(
        parse_llm_settings("[discovery]\nenabled = false"), None, None, discover=discovery
    )
    assert off.kind == "embedded" and "discovery is off" in off.reason


async def test_a_bad_cli_url_is_a_config_error():
    with pytest.raises(LlmConfigError, match="--llm"):
        await resolve_backend(LlmSettings(), "localhost:11434", None, discover=FakeDiscovery())


async def test_open_backend_yields_a_server_backend_as_is():
    from app.narrates.llm import open_backend

    settings = parse_llm_settings("[server]\nurl = 'http://box:1/v1'")
    effective = await resolve_backend(settings, None, None, discover=FakeDiscovery())
    async with open_backend(effective) as backend:
        assert backend is effective.backend
