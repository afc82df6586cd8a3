"""DynamicReward: DRPO's dynamic reward as a dspy.Evaluate metric and a GEPA feedback metric."""

from __future__ import annotations

import inspect

import dspy
import pytest
from world import field

from drpo_dspy.rewards.metric import DynamicReward, UnreadableJudgment, rescale
from drpo_dspy.testing import scripted_lm

ASPECTS = ["Helpfulness", "Clarity", "Safety"]
SCORES = {"good answer": [5, 4, 3], "weak answer": [2, 1, 1], "perfect answer": [5, 5, 5]}


def _roles(calls: dict[str, int] | None = None):
    calls = {"metrics": 0, "judge": 0} if calls is None else calls

    def metrics(messages, params):
        calls["metrics"] += 1
        return {"query_analysis": "q", "reasoning": "safety matters here", "selected_aspects": ASPECTS,
                "proposed_aspect": ""}

    def judge(messages, params):
        calls["judge"] += 1
        response = field(messages, "response")
        if response not in SCORES:
            return "no fields, just prose"
        return {"evaluations": {a: {"rationale": f"why {a} {s}", "score": s}
                                for a, s in zip(ASPECTS, SCORES[response], strict=True)}}

    return scripted_lm(metrics), scripted_lm(judge), calls


class Fixed(dspy.Module):
    """A program whose answer is looked up from its query (no LM)."""

    def __init__(self, answers: dict[str, str]):
        super().__init__()
        self.answers = answers

    def forward(self, query: str) -> dspy.Prediction:
        return dspy.Prediction(response=self.answers[query])


DEVSET = [dspy.Example(query="Plan a trip.").with_inputs("query"),
          dspy.Example(query="Explain tides.").with_inputs("query")]


def test_evaluate_gives_the_hand_computed_score():
    metrics_lm, judge_lm, calls = _roles()
    metric = DynamicReward(metrics_lm=metrics_lm, judge_lm=judge_lm)
    program = Fixed({"Plan a trip.": "good answer", "Explain tides.": "weak answer"})
    result = dspy.Evaluate(devset=DEVSET, metric=metric, num_threads=2, display_progress=False)(program)
    # good: mean 4 -> (4-1)/4 = 0.75; weak: mean 4/3 -> (4/3-1)/4 = 1/12; average 5/12 = 41.67 %
    assert result.score == pytest.approx(100 * (0.75 + 1 / 12) / 2, abs=0.01)
    assert sorted(round(s, 4) for *_, s in result.results) == [round(1 / 12, 4), 0.75]
    assert calls == {"metrics": 2, "judge": 2} and metric.failures == 0
    assert metric.usage()["roles"]["judge"]["lm_calls"] == 2


def test_query_from_instruction_and_default_lm():
    metrics_lm, judge_lm, _ = _roles()
    metric = DynamicReward(metrics_lm=metrics_lm)
    with dspy.context(lm=judge_lm):
        score = metric(dspy.Example(instruction="Say hi."), dspy.Prediction(response="perfect answer"))
    assert score == 1.0 and rescale(1) == 0.0 and rescale(3) == 0.5
    with pytest.raises(ValueError, match="'query' or 'instruction'"):
        metric(dspy.Example(question="x"), dspy.Prediction(response="good answer"))
    with pytest.raises(ValueError, match="'response'"):
        metric(dspy.Example(query="x"), dspy.Prediction(answer="good answer"))


def test_gepa_form_returns_score_feedback_and_objective_scores():
    metrics_lm, judge_lm, calls = _roles()
    metric = DynamicReward(metrics_lm=metrics_lm, judge_lm=judge_lm)
    gold, pred = dspy.Example(query="Plan a trip."), dspy.Prediction(response="good answer")
    plain = metric(gold, pred)
    out = metric(gold, pred, None, "respond", [])
    assert isinstance(plain, float) and isinstance(out, dspy.Prediction)
    assert out.score == plain == 0.75
    assert out.objective_scores == {"Helpfulness": 1.0, "Clarity": 0.75, "Safety": 0.5}
    assert "Safety: 3/5. why Safety 3" in out.feedback and "To improve" in out.feedback
    assert "safety matters here" in out.feedback
    assert calls["judge"] == 1  # the score call and the feedback call share one judgment
    assert float(out) == 0.75  # usable wherever a number is expected


def test_unreadable_judgment_is_a_counted_failure_not_a_silent_zero(caplog):
    metrics_lm, judge_lm, _ = _roles()
    metric = DynamicReward(metrics_lm=metrics_lm, judge_lm=judge_lm)
    gold, pred = dspy.Example(query="Plan a trip."), dspy.Prediction(response="rambling")
    assert metric(gold, pred) == 0.0
    out = metric(gold, pred, None, "respond", None)
    assert out.score == 0.0 and out.objective_scores == {}
    assert "could not be read" in out.feedback and "not a verdict" in out.feedback
    assert metric.failures == 2 and sum(metric.failure_kinds.values()) == 2
    assert "unreadable judgment" in caplog.text


def test_on_failure_raise_lets_evaluate_count_the_error():
    metrics_lm, judge_lm, _ = _roles()
    metric = DynamicReward(metrics_lm=metrics_lm, judge_lm=judge_lm, on_failure="raise")
    with pytest.raises(UnreadableJudgment, match="could not be read"):
        metric(dspy.Example(query="q"), dspy.Prediction(response="rambling"))
    program = Fixed({"Plan a trip.": "perfect answer", "Explain tides.": "rambling"})
    result = dspy.Evaluate(devset=DEVSET, metric=metric, num_threads=1, display_progress=False,
                           failure_score=0.0, max_errors=5)(program)
    assert result.score == 50.0 and metric.failures == 2
    with pytest.raises(ValueError, match="on_failure"):
        DynamicReward(on_failure="ignore")


def test_gepa_accepts_the_metric():
    metrics_lm, judge_lm, _ = _roles()
    metric = DynamicReward(metrics_lm=metrics_lm, judge_lm=judge_lm)
    inspect.signature(metric).bind(None, None, None, None, None)
    gepa = dspy.GEPA(metric=metric, max_metric_calls=10, reflection_lm=judge_lm)
    assert gepa.metric_fn is metric


def test_no_lm_is_a_clear_error():
    metric = DynamicReward()
    with pytest.raises(ValueError, match="no LM for the metrics role"):
        metric(dspy.Example(query="q"), dspy.Prediction(response="a"))


def test_a_conversation_example_is_judged_with_its_earlier_turns():
    metrics_lm, judge_lm, _ = _roles()
    metric = DynamicReward(metrics_lm=metrics_lm, judge_lm=judge_lm)
    history = dspy.History(messages=[{"query": "I am planning a trip to Lisbon.", "response": "Lovely! When?"}])
    example = dspy.Example(query="In May. What should I pack?", history=history).with_inputs("query", "history")
    assert metric(example, dspy.Prediction(response="good answer")) == pytest.approx(0.75)
    sent = field(judge_lm.history[-1]["messages"], "query")
    assert "User: I am planning a trip to Lisbon." in sent and "Assistant: Lovely! When?" in sent
    assert sent.rstrip().endswith("In May. What should I pack?")
    chat = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                         {"role": "user", "content": "Explain tides."}]}
    assert metric(chat, dspy.Prediction(response="weak answer")) == pytest.approx(1 / 12)
    assert "User: Hi" in field(judge_lm.history[-1]["messages"], "query")
