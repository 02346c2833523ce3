"""Discovery of OpenAI-compatible LLM servers the user already runs on this machine.

Owns :data:`KNOWN_SERVERS` (the usual ports: Ollama 11434, LM Studio 1234, llama.cpp 8080,
KoboldCpp 5001, text-generation-webui 5000, vLLM 8000), :class:`DiscoveredBackend` and
:func:`discover_backends`, which asks every port's ``GET /v1/models`` at once with a short
timeout and returns those that answer like an OpenAI-compatible server, in :data:`KNOWN_SERVERS`
order (the first is the default choice). A closed port on loopback fails in well under a
millisecond, so the whole scan costs about one timeout at worst. Runs on the caller's event loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

import httpx

from app.narrates.llm.types import LlmBackend

#: (name, port) in the order they are preferred when several answer.
KNOWN_SERVERS: tuple[tuple[str, int], ...] = (
    ("ollama", 11434),
    ("lm-studio", 1234),
    ("llama.cpp", 8080),
    ("koboldcpp", 5001),
    ("text-generation-webui", 5000),
    ("vllm", 8000),
)


@dataclass(frozen=True)
class DiscoveredBackend:
    """A server that answered ``GET /v1/models``: where, what it calls itself here, its models."""

    name: str
    base_url: str
    port: int
    models: tuple[str, ...]
    elapsed_s: float

    def backend(self, model: str | None = None) -> LlmBackend:
        """An :class:`LlmBackend` for it (``model``, else its first listed model)."""
        return LlmBackend(
            name=self.name,
            base_url=self.base_url,
            model=model or (self.models[0] if self.models else None),
            origin="discovered",
        )


async def _probe(
    http: httpx.AsyncClient, host: str, name: str, port: int, timeout: float
) -> DiscoveredBackend | None:
    base_url = f"http://{host}:{port}/v1"
    started = time.perf_counter()
    try:
        response = await http.get(f"{base_url}/models", timeout=timeout)
        if response.status_code != 200:
            return None
        payload = response.json()
    except (httpx.HTTPError, ValueError):
        return None
    data = payload.get("data") if isinstance(payload, dict) else None
    if not isinstance(data, list):
        return None  # some other web server on that port
    models = tuple(item["id"] for item in data if isinstance(item, dict) and isinstance(item.get("id"), str))
    return DiscoveredBackend(name, base_url, port, models, time.perf_counter() - started)


async def discover_backends(
    host: str = "127.0.0.1",
    timeout: float = 0.5,
    *,
    servers: Sequence[tuple[str, int]] = KNOWN_SERVERS,
) -> list[DiscoveredBackend]:
    """Every server in ``servers`` that answers on ``host``, in ``servers`` order; never raises for
    a closed port or a non-LLM answer."""
    if not servers:
        return []
    bracketed = f"[{host}]" if ":" in host and not host.startswith("[") else host
    async with httpx.AsyncClient(trust_env=False, headers={"User-Agent": "LunaNarrates-Operator"}) as http:
        results = await asyncio.gather(
            *(_probe(http, bracketed, name, port, timeout) for name, port in servers)
        )
    return [found for found in results if found is not None]
