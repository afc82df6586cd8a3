"""DRPO's dynamic reward as a reusable DSPy metric: for ``dspy.Evaluate`` and as a GEPA feedback metric.

Per query, the metrics LM picks the aspects that matter (cached per query and model), the judge LM scores the
answer 1-5 on each, and the metric is the mean score rescaled to [0, 1]: ``(mean - 1) / 4``.

Unreadable judgments are never silent zeros. By default (``on_failure="score"``) such a call returns
``failure_score`` (0.0), increments ``metric.failures`` (and ``metric.failure_kinds``), logs a warning, and - in
the GEPA form - says in its feedback that the judgment was unreadable, so a reflection LM does not read it as a
verdict on the answer. With ``on_failure="raise"`` it raises :class:`UnreadableJudgment` instead, which
``dspy.Evaluate`` counts as an error (applying its own ``failure_score`` and ``max_errors``).
"""

from __future__ import annotations

import logging
import os
import threading
from collections import Counter, OrderedDict
from pathlib import Path
from typing import Any

import dspy

from drpo_dspy.clients.budget import Budget, StopSignal
from drpo_dspy.clients.failures import DEFAULT_MAX_ERRORS, FailurePolicy
from drpo_dspy.clients.metering import Meter
from drpo_dspy.primitives.checks import is_real
from drpo_dspy.primitives.conversation_query import parse_conversation
from drpo_dspy.rewards.aspects import AspectCatalogue
from drpo_dspy.rewards.reward_judge import AspectSelection, Judgment, RewardJudge

logger = logging.getLogger(__name__)

__all__ = ["DynamicReward", "UnreadableJudgment", "rescale"]

_UNSET: Any = object()  # tells the 3-argument (Evaluate) call from the 5-argument (GEPA) one
ON_FAILURE = ("score", "raise")


class UnreadableJudgment(ValueError):
    """The judge's output could not be read, so the answer has no reward."""


def rescale(mean_score: float) -> float:
    """A mean 1-5 judge score mapped to [0, 1]."""
    return min(1.0, max(0.0, (float(mean_score) - 1.0) / 4.0))


def _field(example: Any, name: str) -> Any:
    return example.get(name) if isinstance(example, dict) else getattr(example, name, None)


def _query_of(example: Any) -> str:
    """The text the judge reads: the query, or for a conversation (``history`` or ``messages``) its transcript."""
    if isinstance(example, str):
        return example
    if _field(example, "history") is not None or _field(example, "messages") is not None:
        return parse_conversation(example, "the example")
    for name in ("query", "instruction"):
        value = _field(example, name)
        if isinstance(value, str) and value.strip():
            return value
    raise ValueError("the example has no 'query' or 'instruction' field to judge the answer against")


def _response_of(prediction: Any) -> str:
    if isinstance(prediction, str):
        return prediction
    value = prediction.get("response") if isinstance(prediction, dict) else getattr(prediction, "response", None)
    if value is None:
        raise ValueError("the prediction has no 'response' field to judge")
    return str(value)


class DynamicReward:
    """DRPO's dynamic reward as a metric: ``metric(example, prediction, trace=None) -> float`` in [0, 1].

    Called with GEPA's five arguments ``(gold, pred, trace, pred_name, pred_trace)`` it returns
    ``dspy.Prediction(score=..., feedback=..., objective_scores={aspect: score in [0, 1]})``.

    Args:
        metrics_lm: Picks the aspects per query; default ``dspy.settings.lm`` at call time.
        judge_lm: Scores the answer per aspect; default ``dspy.settings.lm`` at call time.
        catalogue: Reward aspects (default: the 14 built-in ones).
        on_failure: ``"score"`` (return ``failure_score``, counted in ``failures``) or ``"raise"``.
        failure_score: The score of an unreadable judgment with ``on_failure="score"``.
        strict: Use the harsher critic prompts of the ICL stage.
        min_aspects, max_aspects: How many aspects the selection may hold (2-5, as published).
        memo_size: Judgments remembered per (query, answer), so GEPA's score and feedback calls judge once.
        max_calls, max_total_tokens, max_cost_usd: Budgets over all of this metric's LM calls; a call that could
            exceed one raises ``BudgetExhausted`` before it is sent (never a silent score).
        max_errors: LM errors a role may have before calls raise ``SystemicFailure``; a systemic error (bad key,
            unknown model) raises at once. ``None``: never on counts.
        stop_file: A path whose existence stops further calls (``StopRequested``), as a run's ``STOP`` file does.

    The query is read from ``example.query`` (or ``example.instruction``) — for a conversation (``history`` or
    ``messages`` on the example) the judge reads its transcript — and the answer from ``prediction.response``.
    ``metric.meter.summary()`` gives LM calls, tokens and failures per role.
    """

    def __init__(self, metrics_lm: dspy.BaseLM | None = None, judge_lm: dspy.BaseLM | None = None,
                 catalogue: AspectCatalogue | None = None, *, on_failure: str = "score", failure_score: float = 0.0,
                 strict: bool = False, min_aspects: int = 2, max_aspects: int = 5, memo_size: int = 4096,
                 max_calls: int | None = None, max_total_tokens: int | None = None,
                 max_cost_usd: float | None = None, max_errors: int | None = DEFAULT_MAX_ERRORS,
                 stop_file: str | os.PathLike | None = None):
        if on_failure not in ON_FAILURE:
            raise ValueError(f"on_failure must be one of {ON_FAILURE}, got {on_failure!r}")
        if catalogue is not None and not isinstance(catalogue, AspectCatalogue):
            raise ValueError("catalogue must be an AspectCatalogue")
        if not is_real(failure_score):
            raise ValueError(f"failure_score must be a number, got {failure_score!r}")
        if not 1 <= min_aspects <= max_aspects:
            raise ValueError(f"need 1 <= min_aspects <= max_aspects, got {min_aspects}, {max_aspects}")
        self.metrics_lm, self.judge_lm = metrics_lm, judge_lm
        self.catalogue = catalogue or AspectCatalogue()
        self.on_failure, self.failure_score = on_failure, float(failure_score)
        self.strict, self.min_aspects, self.max_aspects = strict, min_aspects, max_aspects
        self.memo_size = memo_size
        self.meter = Meter(FailurePolicy(max_errors))
        self.budget = Budget(self.meter, max_calls=max_calls, max_total_tokens=max_total_tokens,
                             max_cost_usd=max_cost_usd, stop=StopSignal(Path(stop_file)) if stop_file else None)
        self.calls = 0
        self.failures = 0
        self.failure_kinds: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._rewarders: dict[tuple[int, int], tuple[Any, Any, RewardJudge]] = {}
        self._memo: OrderedDict[tuple[str, str, str, str], tuple[Judgment, AspectSelection]] = OrderedDict()

    # -- judging ---------------------------------------------------------------------------------------------
    def _rewarder(self) -> RewardJudge:
        from drpo_dspy.runs.validation import resolve_lm

        metrics_lm, judge_lm = resolve_lm("metrics", self.metrics_lm), resolve_lm("judge", self.judge_lm)
        key = (id(metrics_lm), id(judge_lm))
        with self._lock:
            entry = self._rewarders.get(key)
            if entry is None:  # keeps the LMs referenced, so their ids stay theirs
                watched = {role: self.meter.watch(lm, role) if isinstance(lm, dspy.LM) else lm
                           for role, lm in (("metrics", metrics_lm), ("judge", judge_lm))}
                rewarder = RewardJudge(metrics_lm=watched["metrics"], judge_lm=watched["judge"],
                                       catalogue=self.catalogue, meter=self.meter, strict=self.strict,
                                       min_aspects=self.min_aspects, max_aspects=self.max_aspects,
                                       budget=self.budget)
                entry = self._rewarders[key] = (metrics_lm, judge_lm, rewarder)
        return entry[2]

    def judge(self, query: str, response: str) -> tuple[Judgment, AspectSelection]:
        """The judgment of ``response`` to ``query`` and the aspect selection behind it (readable ones memoized)."""
        rewarder = self._rewarder()
        key = (str(rewarder.metrics_lm.model), str(rewarder.judge_lm.model), query, response)
        with self._lock:
            self.calls += 1
            if key in self._memo:
                self._memo.move_to_end(key)
                return self._memo[key]
        selection = rewarder.select(query)
        judgment = rewarder.judge(query, response, selection)
        if judgment.reward is None:
            with self._lock:
                self.failures += 1
                self.failure_kinds[judgment.failure or "unreadable"] += 1
            logger.warning("unreadable judgment (%s) for query %.60r: counted in metric.failures", judgment.failure,
                           query)
        else:
            with self._lock:
                self._memo[key] = (judgment, selection)
                while len(self._memo) > self.memo_size:
                    self._memo.popitem(last=False)
        return judgment, selection

    def _score(self, judgment: Judgment, query: str) -> float:
        if judgment.reward is not None:
            return rescale(judgment.reward)
        if self.on_failure == "raise":
            raise UnreadableJudgment(f"the judge's output could not be read ({judgment.failure}) for query "
                                     f"{query[:80]!r}: the answer has no reward")
        return self.failure_score

    # -- the metric ------------------------------------------------------------------------------------------
    def __call__(self, gold: Any, pred: Any, trace: Any = None, pred_name: Any = _UNSET,
                 pred_trace: Any = _UNSET) -> float | dspy.Prediction:
        query, response = _query_of(gold), _response_of(pred)
        judgment, selection = self.judge(query, response)
        score = self._score(judgment, query)
        if pred_name is _UNSET and pred_trace is _UNSET:
            return score
        return dspy.Prediction(score=score, feedback=self.feedback(judgment, selection, score),
                               objective_scores=self.objective_scores(judgment))

    @staticmethod
    def objective_scores(judgment: Judgment) -> dict[str, float]:
        """Per-aspect scores in [0, 1] (empty for an unreadable judgment)."""
        return {aspect: rescale(score) for aspect, score in judgment.scores.items()}

    def feedback(self, judgment: Judgment, selection: AspectSelection, score: float) -> str:
        """Readable feedback for a reflection LM: per-aspect scores and rationales, and what to improve."""
        if judgment.reward is None:
            return (f"The judge's evaluation of this answer could not be read ({judgment.failure}). The answer got "
                    f"no reward: the score {score:.2f} is a counted failure, not a verdict on its quality.")
        lines = [f"Dynamic reward {score:.2f} (mean judge score {judgment.reward:.2f}/5 on the aspects chosen for "
                 f"this query: {', '.join(judgment.scores)})."]
        lines += [f"- {a}: {s}/5. {judgment.rationales.get(a, '').strip()}".rstrip()
                  for a, s in judgment.scores.items()]
        unscored = [a for a in judgment.aspects if a not in judgment.scores]
        if unscored:
            lines.append(f"Not scored (unreadable): {', '.join(unscored)}.")
        if selection.reasoning.strip():
            lines.append(f"Why these aspects: {selection.reasoning.strip()}")
        lowest = min(judgment.scores.values())
        if lowest < 5:
            weakest = [a for a, s in judgment.scores.items() if s == lowest]
            lines.append(f"To improve: address the rationale for {', '.join(weakest)} ({lowest}/5) first.")
        else:
            lines.append("Every aspect scored 5/5: keep what this answer does.")
        return "\n".join(lines)

    def usage(self) -> dict[str, Any]:
        """LM calls, tokens, cost and failures per role, plus the metric's own call and failure counts."""
        with self._lock:
            counts = {"calls": self.calls, "failures": self.failures, "failure_kinds": dict(self.failure_kinds)}
        return {"roles": self.meter.summary(), **counts}
