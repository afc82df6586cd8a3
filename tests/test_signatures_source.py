"""signatures/ is the single source of every prompt: each role's LM receives its signature's instructions and
every field description verbatim, so editing a signature changes what the LM is sent."""

from __future__ import annotations

import re

import dspy
import pytest
from drpo_dspy.signatures import (
    JudgeResponse,
    JudgeResponsePaper,
    ProposeInstructions,
    ProposeInstructionsWithBudget,
    SelectAspects,
)
from world import World

from drpo_dspy import DRPO, AlignedResponder


def _squash(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def _descriptions(signature: type[dspy.Signature]) -> list[str]:
    fields = {**signature.input_fields, **signature.output_fields}
    return [(info.json_schema_extra or {}).get("desc", "") for info in fields.values()]


class RecordingWorld(World):
    """Keeps every request's full text per role."""

    def __init__(self, *args, **kwargs):
        self.texts: dict[str, list[str]] = {}
        super().__init__(*args, **kwargs)

    def _keep(self, role, messages):
        self.texts.setdefault(role, []).append(_squash("\n".join(str(m.get("content", "")) for m in messages)))

    def _metrics(self, messages, params):
        self._keep("metrics", messages)
        return super()._metrics(messages, params)

    def _judge(self, messages, params):
        self._keep("judge", messages)
        return super()._judge(messages, params)

    def _optimizer(self, messages, params):
        self._keep("optimizer", messages)
        return super()._optimizer(messages, params)


@pytest.mark.parametrize(("paper", "signatures"), [
    (False, {"metrics": SelectAspects, "judge": JudgeResponse, "optimizer": ProposeInstructionsWithBudget}),
    (True, {"metrics": SelectAspects, "judge": JudgeResponsePaper, "optimizer": ProposeInstructions}),
])
def test_every_role_is_sent_its_signature_verbatim(paper, signatures):
    world = RecordingWorld(lambda p, q: [3, 3])
    DRPO(**world.roles(), beam_size=1, n_actions=1, depth=2, max_depth_increase=0, k=0, progress=False,
         paper_mode=paper).compile(AlignedResponder(examples=[], k=0), trainset=["q1", "q2"])
    for role, signature in signatures.items():
        sent = world.texts[role][0]
        assert _squash(signature.instructions) in sent, role
        for desc in _descriptions(signature):
            assert _squash(desc) in sent, (role, desc)


def test_editing_a_signature_changes_what_the_judge_is_sent(monkeypatch):
    marker = "Grade like a careful teacher who explains each point."
    edited = JudgeResponse.with_instructions(JudgeResponse.instructions + " " + marker)
    monkeypatch.setattr("drpo_dspy.rewards.reward_judge.JudgeResponse", edited)
    world = RecordingWorld(lambda p, q: [3, 3])
    DRPO(**world.roles(), beam_size=1, n_actions=1, depth=1, k=0, progress=False).compile(
        AlignedResponder(examples=[], k=0), trainset=["q1"])
    assert marker in world.texts["judge"][0]
