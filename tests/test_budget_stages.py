"""One accounting for every stage: the ICL stage, the search and the metric never exceed a budget, and the STOP
file stops each of them."""

from __future__ import annotations

import pytest
from world import World

from drpo_dspy import DRPO, AlignedResponder, DynamicReward
from drpo_dspy.clients.budget import BudgetExhausted, StopRequested

EXAMPLES = [(f"How do I do task number {i}?", f"Do step A, then step B, for task {i}.") for i in range(6)]


def icl_world():
    return World(lambda p, q: [3, 3, 3], aspects=("Helpfulness", "Clarity", "Depth"))


@pytest.mark.parametrize("max_calls", [3, 5, 12, 40])
def test_the_icl_stage_and_the_search_share_max_calls(max_calls):
    world = icl_world()
    drpo = DRPO(**world.roles(), depth=3, n_actions=2, k=1, optimize_icl=True, icl_rounds=3, max_calls=max_calls,
                progress=False, num_threads=2)
    program = drpo.compile(AlignedResponder("Start.", EXAMPLES, k=1, embedder="hashing"), trainset=["q1", "q2", "q3"])
    total = sum(row["lm_calls"] for row in program.drpo_result.usage.values())
    assert total <= max_calls and world.requests <= max_calls
    assert program.drpo_result.stopped is None or "max_calls" in program.drpo_result.stopped


def test_a_stop_file_stops_the_icl_stage(tmp_path):
    run = tmp_path / "run"

    class StoppingWorld(World):
        def _metrics(self, messages, params):  # someone creates the STOP file while the ICL stage runs
            (run / "STOP").write_text("")
            return super()._metrics(messages, params)

    world = StoppingWorld(lambda p, q: [3, 3, 3], aspects=("Helpfulness", "Clarity", "Depth"))
    program = DRPO(**world.roles(), depth=2, n_actions=1, k=1, optimize_icl=True, log_dir=run, progress=False,
                   num_threads=1).compile(AlignedResponder("Start.", EXAMPLES, k=1, embedder="hashing"),
                                          trainset=["q1", "q2"])
    assert world.requests == 1 and "stop file" in program.drpo_result.stopped  # nothing after the STOP file
    assert [e.answer for e in program.bank.examples] == [a for _, a in EXAMPLES]  # kept as they were


def test_the_metric_refuses_a_call_past_its_budget():
    world = World(lambda p, q: [4, 4])
    metric = DynamicReward(metrics_lm=world.metrics_lm, judge_lm=world.judge_lm, max_calls=3)
    import dspy

    gold = dspy.Example(query="How do tides work?").with_inputs("query")
    pred = dspy.Prediction(response="ANSWER prompt=<P> query=<How do tides work?>")
    assert metric(gold, pred) == pytest.approx(0.75)  # 2 calls: aspects, then the judgment
    with pytest.raises(BudgetExhausted, match="max_calls=3"):
        metric(dspy.Example(query="Why is the sky blue?"), dspy.Prediction(
            response="ANSWER prompt=<P> query=<Why is the sky blue?>"))
    assert world.requests <= 3


def test_the_metric_stops_on_its_stop_file(tmp_path):
    import dspy

    world = World(lambda p, q: [4, 4])
    stop = tmp_path / "STOP"
    metric = DynamicReward(metrics_lm=world.metrics_lm, judge_lm=world.judge_lm, stop_file=stop)
    stop.write_text("")
    with pytest.raises(StopRequested):
        metric(dspy.Example(query="q"), dspy.Prediction(response="ANSWER prompt=<P> query=<q>"))
    assert world.requests == 0


def test_evaluation_never_exceeds_its_budget_and_resumes(tmp_path):
    from drpo_dspy.evaluation import evaluate
    from drpo_dspy.testing import scripted_lm

    calls = {"n": 0}

    def base(messages, params):
        calls["n"] += 1
        return "A plain answer.\n<END>"

    def judge(messages, params):
        calls["n"] += 1
        return {"evaluation": {**{a: {"rationale": "fine", "score": 4} for a in (
            "helpfulness", "clarity", "factuality", "depth", "engagement", "safety")}, "refusal": False}}

    prompts = [f"Question number {i}?" for i in range(6)]
    lms = {"base_lm": scripted_lm(base), "judge_lm": scripted_lm(judge)}
    first = evaluate(["base"], prompts, out_dir=tmp_path / "eval", max_calls=7, num_threads=1, **lms)
    assert calls["n"] <= 7 and first.stopped and "max_calls=7" in first.stopped
    assert len(first.rows) < len(prompts)
    second = evaluate(["base"], prompts, out_dir=tmp_path / "eval", num_threads=1, **lms)
    assert second.stopped is None and len(second.rows) == len(prompts) and second.reused == len(first.rows)
