"""Crash safety: a ``luna story turn`` process killed in the middle of the Writer's stream leaves a
consistent database that keeps the finished stages, and the next start marks the turn interrupted."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

from app.narrates.model import Character, SessionSettings
from app.narrates.store import SessionStore
from tests.helpers.fake_openai import FakeOpenAI, Slow
from tests.helpers.story_llm import PROSE, StoryLlm

REPO = Path(__file__).resolve().parents[2]


async def test_a_process_killed_mid_stream_keeps_the_finished_stages_and_the_turn_is_marked_interrupted():
    with SessionStore.open() as store:
        session = store.create_session(
            "Crash", SessionSettings(), [Character("Mira", "brave", "silver hair")]
        ).id
    async with FakeOpenAI() as llm:
        llm.responder = StoryLlm(writer=Slow(PROSE, delay_s=0.2))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "app",
            "story",
            "turn",
            str(session),
            "climb",
            "--llm",
            llm.url,
            "--no-render",
            cwd=REPO,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            first = await asyncio.wait_for(process.stdout.read(1), 60)  # the first byte of streamed prose
            assert first, (await process.stderr.read()).decode()
            # the database must be readable while the writer streams (WAL: a reader beside the writer)
            with SessionStore.open() as live:
                [running] = live.turns(session)
                assert running.status == "running"  # its process is alive: not marked interrupted
                assert list(live.stages(running.id)) == ["preprocessor", "strategist"]
            process.send_signal(signal.SIGKILL)
            assert await process.wait() == -signal.SIGKILL
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    with SessionStore.open() as store:
        assert store.integrity_check() == "ok"
        [turn] = store.turns(session)
        assert turn.status == "interrupted" and turn.error_stage == "writer" and turn.prose is None
        assert list(store.stages(turn.id)) == ["preprocessor", "strategist"]
        assert store.stages(turn.id)["strategist"].output["present"] == ["Mira", "Tobias"]
        assert store.timeline(session) == []
