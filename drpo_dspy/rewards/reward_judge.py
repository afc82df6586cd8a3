"""Dynamic rewarding: pick the aspects that matter for a query, then judge an answer on them.

A reward is the mean of the integer 1-5 scores over the selected aspects. A judge output that cannot be
parsed gives *no* reward (``Judgment.reward is None``), counted as a failure, never a silent zero: a score outside
1-5 ("6", "0") is a ``score_out_of_range`` failure, a score that is not an integer ("4/5", "five", 4.5) a
``score_not_an_integer`` failure, a prose refusal to grade a ``refusal``, anything else unreadable a
``parse_failure``. User-controlled text (queries, answers) reaches the helper LMs with DSPy's field markers
neutralised (see :mod:`drpo_dspy.adapters.field_markers`).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

import dspy

from drpo_dspy.adapters.exact_schemas import (
    clean_proposed_aspect,
    judge_signature,
    means_nothing,
    selector_signature,
    verdicts,
)
from drpo_dspy.adapters.field_markers import neutralize_field_markers
from drpo_dspy.adapters.typed_calls import call_typed, requests_per_call, sampling_config, supports_schema
from drpo_dspy.clients.budget import Budget, BudgetExhausted, guarded
from drpo_dspy.clients.metering import Meter
from drpo_dspy.primitives.fidelity import DEFAULT, Fidelity
from drpo_dspy.rewards.aspects import AspectCatalogue, normalize_aspect_name
from drpo_dspy.signatures import (
    JudgeResponse,
    JudgeResponsePaper,
    JudgeResponseStrict,
    SelectAspects,
    SelectAspectsStrict,
)

logger = logging.getLogger(__name__)

FALLBACK_ASPECTS = ("Helpfulness", "Clarity", "Factuality", "Safety", "Depth", "Engagement")


@dataclass
class AspectSelection:
    """The aspects chosen for one query and why."""

    aspects: list[str]
    reasoning: str = ""
    analysis: str = ""
    fallback: bool = False  # True when the selector failed and default aspects were used

    def to_dict(self) -> dict[str, Any]:
        return {"aspects": self.aspects, "reasoning": self.reasoning, "analysis": self.analysis,
                "fallback": self.fallback}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AspectSelection:
        return cls(list(data["aspects"]), data.get("reasoning", ""), data.get("analysis", ""),
                   bool(data.get("fallback", False)))


@dataclass
class Judgment:
    """Per-aspect scores and rationales for one answer; ``failure`` names what went wrong, if anything."""

    aspects: list[str]
    scores: dict[str, int] = field(default_factory=dict)
    rationales: dict[str, str] = field(default_factory=dict)
    failure: str | None = None
    samples: list[float] = field(default_factory=list)  # with repeated judging: each readable judgment's reward
    copied: dict[str, Any] | None = None  # the answer copied a shown example: which, and how much (still judged)

    @property
    def reward(self) -> float | None:
        """Mean score over the scored aspects (over the repeated judgments, if any); None when nothing was scored."""
        if self.samples:
            return sum(self.samples) / len(self.samples)
        if not self.scores:
            return None
        return sum(self.scores.values()) / len(self.scores)

    @property
    def spread(self) -> float | None:
        """Standard deviation of the repeated judgments' rewards (None with fewer than two)."""
        if len(self.samples) < 2:
            return None
        mean = sum(self.samples) / len(self.samples)
        return (sum((x - mean) ** 2 for x in self.samples) / (len(self.samples) - 1)) ** 0.5

    @property
    def all_max(self) -> bool:
        return bool(self.scores) and len(self.scores) == len(self.aspects) and all(
            s == 5 for s in self.scores.values()
        ) and all(x == 5 for x in self.samples)

    def to_published(self) -> dict[str, dict[str, str]]:
        """The original release's evaluation shape: ``{aspect: {"rationale", "score"}}`` (scores as text)."""
        return {a: {"rationale": self.rationales.get(a, ""), "score": str(s)} for a, s in self.scores.items()}

    def render(self) -> str:
        """Readable critique for the optimizer."""
        if not self.scores:
            return f"(the evaluation could not be read: {self.failure})"
        return "\n".join(f"- {a}: {s}/5. {self.rationales.get(a, '')}" for a, s in self.scores.items())

    def to_dict(self) -> dict[str, Any]:
        data = {"aspects": self.aspects, "scores": self.scores, "rationales": self.rationales,
                "failure": self.failure, "reward": self.reward}
        if self.samples:
            data.update(samples=self.samples, spread=self.spread)
        if self.copied:
            data["copied"] = self.copied
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Judgment:
        scores = {k: int(v) for k, v in data.get("scores", {}).items()}
        if any(not 1 <= s <= 5 for s in scores.values()):
            raise ValueError(f"judgment scores must be 1-5, got {scores}")
        samples = [float(x) for x in data.get("samples", [])]
        return cls(list(data["aspects"]), scores, dict(data.get("rationales", {})), data.get("failure"), samples,
                   data.get("copied"))


class RewardJudge:
    """Aspect selection (cached per query and model) plus judging, with failures counted in a ``Meter``.

    A ``PAPER`` fidelity policy uses the original code's judge wording and one request per call (no JSON retry of an
    unreadable reply). An LM error is counted and, when systemic, stops the run (``SystemicFailure``); an
    unreadable judgment is a missing reward, counted.
    """

    def __init__(
        self,
        *,
        metrics_lm: dspy.LM,
        judge_lm: dspy.LM,
        catalogue: AspectCatalogue | None = None,
        meter: Meter | None = None,
        min_aspects: int = 2,
        max_aspects: int = 5,
        strict: bool = False,
        cache: dict[str, dict[str, Any]] | None = None,
        budget: Budget | None = None,
        fidelity: Fidelity = DEFAULT,
    ):
        if not 1 <= min_aspects <= max_aspects:
            raise ValueError(f"need 1 <= min_aspects <= max_aspects, got {min_aspects}, {max_aspects}")
        self.metrics_lm, self.judge_lm = metrics_lm, judge_lm
        self.catalogue = catalogue or AspectCatalogue()
        self.meter = meter or Meter()
        self.min_aspects, self.max_aspects = min_aspects, max_aspects
        self.fidelity = fidelity
        self._select = dspy.Predict(SelectAspectsStrict if strict else SelectAspects)
        wording = JudgeResponsePaper if fidelity.judge_wording == "paper" else JudgeResponse
        self._judge = dspy.Predict(JudgeResponseStrict if strict else wording)
        self._cache: dict[str, dict[str, Any]] = dict(cache or {})
        self.budget = budget
        self._lock = threading.Lock()
        self._inflight: dict[str, threading.Event] = {}

    # -- aspect selection ----------------------------------------------------------------------------
    def cache_key(self, query: str) -> str:
        return f"{self.metrics_lm.model}\x1f{query}"

    @property
    def cache(self) -> dict[str, dict[str, Any]]:
        """The metrics cache: ``{model + U+001F + query: selection}`` (JSON-able)."""
        with self._lock:
            return dict(self._cache)

    def preload(self, cache: dict[str, dict[str, Any]]) -> None:
        """Reuse aspect selections saved by an earlier run (``metrics_cache.json``)."""
        if not isinstance(cache, dict):
            raise ValueError("a metrics cache must be a JSON object")
        for key, value in cache.items():
            try:  # validates the shape before anything is used
                selection = AspectSelection.from_dict(value)
                if not selection.aspects or not all(isinstance(a, str) and a.strip() for a in selection.aspects):
                    raise ValueError("no aspect names")
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                raise ValueError(f"the metrics cache entry {key!r:.80} is corrupt ({type(exc).__name__}: {exc}); "
                                 "delete metrics_cache.json to select the aspects again") from exc
        with self._lock:
            self._cache.update(cache)

    def select(self, query: str) -> AspectSelection:
        """The aspects to judge ``query`` on; one metrics call per distinct (query, model)."""
        key = self.cache_key(query)
        while True:
            with self._lock:
                if key in self._cache:
                    return AspectSelection.from_dict(self._cache[key])
                waiter = self._inflight.get(key)
                if waiter is None:
                    self._inflight[key] = threading.Event()
                    break
            waiter.wait()  # another thread is selecting for this query: reuse its answer
        try:
            selection = self._select_uncached(query)
            with self._lock:
                self._cache[key] = selection.to_dict()
            return selection
        finally:
            with self._lock:
                self._inflight.pop(key).set()

    def _select_uncached(self, query: str) -> AspectSelection:
        menu = self.catalogue.render_menu()
        signature = self._select.signature
        if supports_schema(self.metrics_lm):  # schema-enforcing provider: only catalogue names can come out
            signature = selector_signature(signature, tuple(self.catalogue.names))
        single = self.fidelity.single_request
        try:
            with guarded(self.budget, self.metrics_lm, len(query) + len(menu),
                         requests=requests_per_call(self.metrics_lm, single_request=single)), \
                    self.meter.usage("metrics"):
                pred = call_typed(self._select, self.metrics_lm, {"temperature": 0.0}, single_request=single,
                                  query=neutralize_field_markers(query), aspect_catalogue=menu, signature=signature)
            names = [n for n in (pred.selected_aspects or []) if isinstance(n, str) and n.strip()]
            proposed = getattr(pred, "proposed_aspect", None)
            if proposed and not means_nothing(str(proposed)):
                cleaned = clean_proposed_aspect(str(proposed))
                if cleaned is None:
                    self.meter.record_failure("metrics", "proposed_aspect_rejected")
                elif cleaned not in self.catalogue:
                    names.append(cleaned)
        except BudgetExhausted:
            raise
        except Exception as exc:  # parse failures and transient LM errors are data, not crashes
            kind = self.meter.record_call_failure("metrics", exc)  # raises SystemicFailure when the role cannot work
            logger.warning("aspect selection failed (%s); using default aspects", kind)
            return AspectSelection(list(FALLBACK_ASPECTS[: max(self.min_aspects, 3)]), fallback=True)
        self.meter.record_success("metrics")
        return AspectSelection(self._repair(names), str(pred.reasoning or ""), str(pred.query_analysis or ""))

    def _repair(self, names: list[str]) -> list[str]:
        chosen: list[str] = []
        for name in names:
            canonical = self.catalogue.get(name).name
            if normalize_aspect_name(canonical) not in {normalize_aspect_name(c) for c in chosen}:
                chosen.append(canonical)
        if len(chosen) > self.max_aspects:
            self.meter.record_failure("metrics", "too_many_aspects")
            chosen = chosen[: self.max_aspects]
        if len(chosen) < self.min_aspects:
            self.meter.record_failure("metrics", "too_few_aspects")
            for fallback in FALLBACK_ASPECTS:
                if len(chosen) >= self.min_aspects:
                    break
                if fallback not in chosen:
                    chosen.append(fallback)
        return chosen

    # -- judging -------------------------------------------------------------------------------------
    def judge_repeatedly(self, query: str, response: str, selection: AspectSelection, samples: int,
                         seed: int = 0) -> Judgment:
        """``samples`` judgments (different rollouts and seeds, the aspect order rotated, temperature 0.7); the
        result keeps the first readable one's verdicts and averages the readable rewards (``samples``, ``spread``)."""
        if samples <= 1:
            return self.judge(query, response, selection)
        judgments = []
        for i in range(samples):
            order = selection.aspects[i % len(selection.aspects):] + selection.aspects[:i % len(selection.aspects)]
            rotated = AspectSelection(order, selection.reasoning, selection.analysis, selection.fallback)
            judgments.append(self.judge(query, response, rotated, sample=i, seed=seed))
        readable = [j for j in judgments if j.reward is not None]
        if not readable:
            return judgments[0]
        first = readable[0]
        ordered = {a: first.scores[a] for a in selection.aspects if a in first.scores}
        return Judgment(list(selection.aspects), ordered, first.rationales, None, [j.reward for j in readable])

    def judge(self, query: str, response: str, selection: AspectSelection, *, sample: int | None = None,
              seed: int = 0) -> Judgment:
        """Score ``response`` on the selected aspects (``sample``: one of several repeated judgments)."""
        aspects = [self.catalogue.get(name) for name in selection.aspects]
        rubrics = "\n\n".join(a.render() for a in aspects)
        names = tuple(a.name for a in aspects)
        single = self.fidelity.single_request
        try:
            with guarded(self.budget, self.judge_lm, len(query) + len(response) + len(rubrics),
                         requests=requests_per_call(self.judge_lm, single_request=single)), \
                    self.meter.usage("judge"):
                config = ({"temperature": 0.0} if sample is None
                          else sampling_config(self.judge_lm, temperature=0.7, sample=sample, seed=seed))
                pred = call_typed(
                    self._judge, self.judge_lm, config, single_request=single,
                    query=neutralize_field_markers(query),
                    response=neutralize_field_markers(response) if response.strip() else "(empty answer)",
                    aspects=rubrics,
                    selection_reasoning=neutralize_field_markers(selection.reasoning) or "(none given)",
                    signature=judge_signature(self._judge.signature, names),
                )
            found = verdicts(pred.evaluations, names)
        except BudgetExhausted:
            raise
        except Exception as exc:  # systemic, or no judgment ever readable: SystemicFailure
            return Judgment(selection.aspects, failure=self.meter.record_call_failure("judge", exc, unreadable=True))
        judgment = Judgment(list(names))
        for name, verdict in found.items():
            judgment.scores[name] = int(verdict.score)
            judgment.rationales[name] = str(verdict.rationale)
        if not judgment.scores:
            judgment.failure = "no_listed_aspect_scored"
            self.meter.record_unreadable("judge", judgment.failure)
            return judgment
        if len(judgment.scores) < len(selection.aspects):
            self.meter.record_failure("judge", "some_aspects_unscored")
        self.meter.record_success("judge")
        return judgment

    def score(self, query: str, response: str) -> Judgment:
        """Select aspects for ``query`` (cached) and judge ``response``."""
        return self.judge(query, response, self.select(query))


DynamicRewarder = RewardJudge  # the earlier name, kept for code written against it
