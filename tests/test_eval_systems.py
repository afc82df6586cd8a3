"""The systems an evaluation compares mean what they say: raw is the query alone, every system's cap is sent (a
program's too), and what is sent (cap, stops, layout) is part of each system's identity."""

from __future__ import annotations

import json

import dspy
import litellm

from drpo_dspy import AlignedResponder
from drpo_dspy.evaluation.systems import build_systems
from drpo_dspy.testing import scripted_lm


def _recording(seen: list) -> dspy.LM:
    def script(messages, params):
        seen.append((messages, params))
        return "An answer.\n<END>\nnot this"
    return scripted_lm(script)


def test_raw_sends_the_query_alone_to_a_chat_model():
    seen: list = []
    systems = build_systems("raw,base", base_lm=_recording(seen))
    answers = {s.name: s.answer("Name a prime number.") for s in systems}
    raw = [m for m, _ in seen if len(m) == 1]
    assert raw == [[{"role": "user", "content": "Name a prime number."}]]
    params = next(p for m, p in seen if len(m) == 1)
    assert params["max_tokens"] == 1024 and params["temperature"] == 0.0 and "<END" in params["stop"]
    assert answers == {"raw": "An answer.", "base": "An answer."}
    assert len(seen) == 2 and seen[1][0][0]["role"] == "system"  # base: the default prompt, in the DRPO layout


def test_raw_sends_the_query_alone_to_a_text_model(monkeypatch):
    captured: dict = {}

    def fake_text_completion(**kwargs):
        captured.update(kwargs)
        return litellm.TextCompletionResponse(choices=[{"text": " 2, 3 and 5.", "index": 0, "finish_reason": "stop"}])

    monkeypatch.setattr(litellm, "text_completion", fake_text_completion)
    base = dspy.LM("hosted_vllm/base-model", model_type="text", api_base="http://localhost:9/v1", cache=False)
    (raw,) = build_systems("raw", base_lm=base, max_tokens=64)
    assert raw.answer("The first primes are") == "2, 3 and 5."
    assert captured["prompt"] == "The first primes are" and captured["max_tokens"] == 64


def test_max_tokens_replaces_a_programs_own_cap_and_is_recorded_as_sent(tmp_path):
    path = tmp_path / "program.json"
    AlignedResponder("Be brief.", examples=[], k=0, max_tokens=None).save(str(path))
    assert json.loads(path.read_text())["decoding"]["max_tokens"] is None  # an old-style program without a cap
    seen: list = []
    (program,) = build_systems(f"program:{path}", base_lm=_recording(seen), max_tokens=77)
    program.answer("Hi?")
    assert seen[-1][1]["max_tokens"] == 77
    assert program.details["decoding"] == {"stop": ["<END", "\n# Query:", "\n# Answer:", "<|eot_id|>"],
                                           "temperature": 0.0, "max_tokens": 77, "layout": "plain"}
    (default,) = build_systems(f"program:{path}", base_lm=_recording(seen))
    default.answer("Hi?")
    assert seen[-1][1]["max_tokens"] == 1024  # saved without a cap: the default cap, never the server's


def test_the_layout_is_part_of_a_systems_identity(tmp_path):
    base = _recording([])
    path = tmp_path / "program.json"
    AlignedResponder("Be brief.", examples=[], k=0).save(str(path))
    (first,) = build_systems(f"program:{path}", base_lm=base)
    AlignedResponder("Be brief.", examples=[], k=0, layout="marked").save(str(path))
    (second,) = build_systems(f"program:{path}", base_lm=base)
    assert first.identity != second.identity and second.details["decoding"]["layout"] == "marked"
