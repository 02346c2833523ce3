"""A scripted storyteller for :class:`tests.helpers.fake_openai.FakeOpenAI`: answers each Narrates stage.

``StoryLlm`` is a responder (``fake.responder = StoryLlm()``) that recognises the stage of a chat
request by its JSON schema name (``response_format.json_schema.name``, or the schema quoted in
the prompt when a server refused ``response_format``), streams prose to the Writer, and answers
plain text to the summarizer. ``overrides[stage]`` replaces one stage's answer (any fake
answer: ``Reply``, ``Error``, ``Cut``, ``Endless`` … or a callable ``body -> answer``);
``seen[stage]`` keeps each stage's request bodies.
"""

from __future__ import annotations

import json
from typing import Any

from tests.helpers.fake_openai import Reply

SCHEMA_STAGES = {
    "preprocessor_action": "preprocessor",
    "strategist_beat": "strategist",
    "dreamer_scene": "dreamer",
}

ANSWERS: dict[str, Any] = {
    "preprocessor": {
        "mode": "do",
        "action": "You climb the stairs of the lighthouse with Mira.",
        "intent": "reach the lamp room",
        "entities": [{"name": "Mira", "type": "character"}, {"name": "lighthouse", "type": "place"}],
        "wants_image": False,
    },
    "strategist": {
        "goal": "Reach the lamp room and find who has been lighting it.",
        "stakes": "the storm may wreck the ferry",
        "present": ["Mira", "Tobias"],
        "location": "the lighthouse stairs",
        "world_changes": ["the lamp room door is open"],
        "image_worthy": True,
    },
    "dreamer": {
        "scene": "spiral stone staircase, lantern light, rain on windows, night",
        "characters": ["Mira", "Tobias"],
        "framing": "scene",
    },
}
PROSE = (
    "You climb the narrow stairs while the storm hammers the glass. "
    "Mira holds the lantern high, her breath short.\n\n"
    "Above you, the lamp room door stands open, and a smell of fresh oil drifts down."
)
SUMMARY = "Mira and you reached the lighthouse in the storm."


def stage_of(body: dict[str, Any]) -> str:
    """The Narrates stage a chat request comes from."""
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and isinstance(fmt.get("json_schema"), dict):
        name = fmt["json_schema"].get("name")
        if name in SCHEMA_STAGES:
            return SCHEMA_STAGES[name]
    text = json.dumps(body.get("messages", []))
    for name, stage in SCHEMA_STAGES.items():
        if name in text:  # the schema in the prompt (json_object / prompt-only dialects)
            return stage
    return "writer" if body.get("stream") else "summary"


class StoryLlm:
    """Responder for FakeOpenAI (see the module docstring)."""

    def __init__(self, **overrides: Any) -> None:
        self.overrides: dict[str, Any] = dict(overrides)
        self.answers = {k: dict(v) for k, v in ANSWERS.items()}
        self.prose = PROSE
        self.seen: dict[str, list[dict[str, Any]]] = {}

    def __call__(self, body: dict[str, Any]) -> Any:
        stage = stage_of(body)
        self.seen.setdefault(stage, []).append(body)
        if stage in self.overrides:
            answer = self.overrides[stage]
            if isinstance(answer, list):
                answer = answer.pop(0) if len(answer) > 1 else answer[0]
            return answer(body) if callable(answer) and not isinstance(answer, type) else answer
        if stage == "writer":
            return Reply(self.prose)
        if stage == "summary":
            return Reply(SUMMARY)
        return Reply(json.dumps(self.answers[stage]))
