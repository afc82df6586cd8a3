"""Offline optimization of in-context example answers (DRPO's ICL stage).

For every example, a strict critic picks 3-6 aspects for the query and scores the seed answer. Then, for up
to ``rounds`` rounds, a rewriter improves the most recent answer from the most recent critique and the critic
scores the result. The best-scoring answer survives (a tie goes to the newer answer), and an example stops
early once its best answer has a 5 on every aspect. A round whose rewrite or judgment cannot be read is
recorded and counted, never fatal: the best answer so far is kept and the next round rewrites again from the
latest answer that was judged.

Each round is appended to the example's ``provenance`` as a dict with ``stage="icl_optimization"``; round 0 is
the seed answer's judgment.
"""

from __future__ import annotations

import contextvars
import logging
import re
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any

import dspy

from drpo_dspy.adapters.typed_calls import call_typed
from drpo_dspy.clients.budget import Budget, BudgetExhausted, guarded
from drpo_dspy.clients.metering import Meter
from drpo_dspy.primitives.checks import is_whole
from drpo_dspy.retrievers.bank import AlignmentBank, ICLExample
from drpo_dspy.retrievers.bank_loading import bank_like
from drpo_dspy.retrievers.examples import coerce_example
from drpo_dspy.rewards.aspects import AspectCatalogue
from drpo_dspy.rewards.reward_judge import AspectSelection, Judgment, RewardJudge
from drpo_dspy.signatures import RewriteResponse

logger = logging.getLogger(__name__)

STAGE = "icl_optimization"
MIN_ASPECTS, MAX_ASPECTS = 3, 6
REWRITER_ROLE = "rewriter"

ExampleLike = ICLExample | dict[str, Any] | Sequence[str]
_MARKER = re.compile(r"<\s*/?\s*(?:START|END)\s*>", re.I)


def clean_answer(text: str) -> str:
    """A rewriter's answer without any ``<START>``/``<END>`` markers, wherever it put them (tolerant)."""
    return _MARKER.sub("", text).strip()


# -- one example ----------------------------------------------------------------------------------------
@dataclass
class _Progress:
    """The running state of one example's optimization."""

    selection: AspectSelection
    best_answer: str
    best_total: int | None
    latest_answer: str  # the newest answer that was judged readably (or the seed)
    latest_judgment: Judgment
    rounds: list[dict[str, Any]] = field(default_factory=list)

    @property
    def max_total(self) -> int:
        return 5 * len(self.selection.aspects)

    @property
    def done(self) -> bool:
        return self.best_total is not None and self.best_total >= self.max_total


def _total(judgment: Judgment) -> int | None:
    return sum(judgment.scores.values()) if judgment.scores else None


class _ExampleOptimizer:
    """Runs the rewrite/judge loop for one example at a time; safe to share across threads."""

    def __init__(self, rewarder: RewardJudge, rewriter_lm: Any, meter: Meter, rounds: int,
                 budget: Budget | None = None):
        self.rewarder, self.rewriter_lm, self.meter, self.rounds = rewarder, rewriter_lm, meter, rounds
        self.budget = budget
        self._rewrite = dspy.Predict(RewriteResponse)

    def __call__(self, example: ICLExample) -> ICLExample:
        """The example with its best answer; a budget or stop request ends its rounds early (best kept)."""
        query = example.shown_query  # a conversation example is judged and rewritten with its earlier turns
        try:
            selection = self.rewarder.select(query)
            seed_judgment = self.rewarder.judge(query, example.answer, selection)
        except BudgetExhausted as exc:
            logger.warning("ICL stage: example %.60r left as it is (%s)", query, exc)
            return example
        state = _Progress(selection, example.answer, _total(seed_judgment), example.answer, seed_judgment)
        try:
            self._rounds(query, selection, state, seed_judgment)
        except BudgetExhausted as exc:
            state.rounds.append({"stage": STAGE, "round": len(state.rounds), "stopped": str(exc), "kept": False,
                                 "failure": "stopped", "answer": None, "scores": {}, "rationales": {},
                                 "total": None, "max_total": state.max_total, "aspects": list(selection.aspects)})
        return ICLExample(example.query, state.best_answer, [*example.provenance, *state.rounds], example.history)

    def _rounds(self, query: str, selection: AspectSelection, state: _Progress, seed_judgment: Judgment) -> None:
        self._record(state, 0, state.best_answer, seed_judgment, kept=True,
                     failure=_judge_failure(seed_judgment), reasoning=selection.reasoning,
                     fallback=selection.fallback)
        retry = 0  # how many rounds in a row failed on the same latest answer and critique
        for index in range(1, self.rounds + 1):
            if state.done:
                break
            new_answer, failure = self._rewrite_once(query, state.latest_answer, state.latest_judgment, retry)
            if new_answer is None:
                self._record(state, index, None, None, kept=False, failure=failure)
                retry += 1
                continue
            judgment = self.rewarder.judge(query, new_answer, selection)
            total = _total(judgment)
            if total is None:
                self._record(state, index, new_answer, judgment, kept=False, failure=_judge_failure(judgment))
                retry += 1
                continue
            retry = 0
            state.latest_answer, state.latest_judgment = new_answer, judgment
            kept = state.best_total is None or total >= state.best_total
            if kept:
                state.best_answer, state.best_total = new_answer, total
            self._record(state, index, new_answer, judgment, kept=kept, failure=None)

    def _rewrite_once(self, query: str, answer: str, judgment: Judgment, retry: int) -> tuple[str | None, str | None]:
        """The rewriter's new answer, or ``(None, failure kind)``; failures are counted in the meter."""
        config: dict[str, Any] = {"temperature": 0.0}
        if retry:  # these exact inputs led to a failed round: bypass the response cache for a fresh completion
            config["cache"] = False
        try:
            with guarded(self.budget, self.rewriter_lm, len(query) + 2 * len(answer) + 3000), \
                    self.meter.usage(REWRITER_ROLE):
                pred = call_typed(self._rewrite, self.rewriter_lm, config,
                                  query=query, response=answer, critique=judgment.render())
            text = clean_answer(str(pred.new_response or ""))
        except BudgetExhausted:
            raise
        except Exception as exc:  # unreadable output or transient LM error: a failed round, not a crash
            kind = self.meter.record_call_failure(REWRITER_ROLE, exc)  # a systemic failure stops the stage
            logger.warning("ICL rewrite failed (%s) for query %.60r", kind, query)
            return None, f"rewriter:{kind}"
        if not text:
            self.meter.record_failure(REWRITER_ROLE, "empty_response")
            return None, "rewriter:empty_response"
        return text, None

    @staticmethod
    def _record(state: _Progress, index: int, answer: str | None, judgment: Judgment | None, *, kept: bool,
                failure: str | None, **extra: Any) -> None:
        scores = dict(judgment.scores) if judgment else {}
        state.rounds.append({
            "stage": STAGE, "round": index, "aspects": list(state.selection.aspects), "answer": answer,
            "scores": scores, "rationales": dict(judgment.rationales) if judgment else {},
            "total": sum(scores.values()) if scores else None, "max_total": state.max_total,
            "kept": kept, "failure": failure, **extra,
        })


def _judge_failure(judgment: Judgment) -> str | None:
    return f"judge:{judgment.failure}" if judgment.failure else None


# -- many examples --------------------------------------------------------------------------------------
def _watched(lm: Any, meter: Meter, role: str) -> Any:
    """``lm`` counted under ``role`` in ``meter`` (unchanged when it is not a dspy.LM or already counted there)."""
    if not isinstance(lm, dspy.LM):
        return lm
    if any(getattr(cb, "meter", None) is meter for cb in (lm.callbacks or [])):
        return lm
    return meter.watch(lm, role)


def optimize_examples(
    examples: Iterable[ExampleLike],
    *,
    metrics_lm: Any,
    judge_lm: Any,
    rewriter_lm: Any,
    rounds: int = 5,
    num_threads: int = 8,
    meter: Meter | None = None,
    catalogue: AspectCatalogue | None = None,
    progress: bool = False,
    budget: Budget | None = None,
) -> list[ICLExample]:
    """Improve each example's answer with the strict critic and the rewriter; results in input order.

    Args:
        examples: ICLExample objects, ``{query, answer}`` dicts or ``(query, answer)`` pairs. Answers may carry
            ``<START>``/``<END>`` markers; they are removed.
        metrics_lm: Picks 3-6 aspects per query (strict critic).
        judge_lm: Scores answers 1-5 per aspect (strict critic); an answer's total is the sum of its scores.
        rewriter_lm: Rewrites the latest answer from the latest critique (temperature 0).
        rounds: Maximum rewrite rounds per example (published: 5); 0 only judges the seeds.
        num_threads: Examples optimized concurrently.
        meter: Counts calls, tokens and failures under ``metrics``, ``judge`` and ``rewriter``.
        catalogue: Reward aspects (default: the built-in ones).
        progress: Show a progress bar.
        budget: Limits (calls, tokens, dollars) and stop requests shared with the rest of the run; when one is
            reached the examples keep their best answers so far. Without one, a budget-free ``Budget`` on
            ``meter`` still applies the failure policy (systemic errors stop the stage).

    Returns:
        One ICLExample per input, holding the best answer and, appended to its provenance, one dict per round
        (round 0 is the seed): ``stage, round, aspects, answer, scores, rationales, total, max_total, kept,
        failure``.
    """
    if not is_whole(rounds) or rounds < 0:
        raise ValueError(f"rounds must be a non-negative integer, got {rounds!r}")
    if not is_whole(num_threads) or num_threads < 1:
        raise ValueError(f"num_threads must be a positive integer, got {num_threads!r}")
    items = [coerce_example(item, i) for i, item in enumerate(examples)]
    if not items:
        return []
    meter = meter if meter is not None else (budget.meter if budget is not None else Meter())
    budget = budget if budget is not None else Budget(meter)
    rewarder = RewardJudge(metrics_lm=_watched(metrics_lm, meter, "metrics"),
                           judge_lm=_watched(judge_lm, meter, "judge"), catalogue=catalogue, meter=meter,
                           min_aspects=MIN_ASPECTS, max_aspects=MAX_ASPECTS, strict=True, budget=budget)
    worker = _ExampleOptimizer(rewarder, _watched(rewriter_lm, meter, REWRITER_ROLE), meter, rounds, budget)
    results: list[ICLExample | None] = [None] * len(items)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(items), desc="ICL examples", unit="example")
    try:
        with ThreadPoolExecutor(max_workers=min(num_threads, len(items))) as pool:
            futures = {pool.submit(contextvars.copy_context().run, worker, item): i for i, item in enumerate(items)}
            for future in as_completed(futures):
                results[futures[future]] = future.result()
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return [r for r in results if r is not None]


def optimize_bank(bank: AlignmentBank, **kwargs: Any) -> AlignmentBank:
    """A new bank holding ``bank``'s examples optimized by :func:`optimize_examples` (same keyword arguments).

    The input bank is not modified; the new one keeps its embedder, index kind and duplicate policy (the queries
    are unchanged, only the answers and provenance are new).
    """
    return bank_like(bank, optimize_examples(bank.examples, **kwargs))


# -- reading the record ---------------------------------------------------------------------------------
def optimization_rounds(example: ICLExample) -> list[dict[str, Any]]:
    """The rounds of the example's most recent ICL optimization (from its provenance)."""
    rounds: list[dict[str, Any]] = []
    for entry in example.provenance:
        if isinstance(entry, dict) and entry.get("stage") == STAGE:
            if entry.get("round") == 0:
                rounds = []
            rounds.append(entry)
    return rounds


def optimization_summary(example: ICLExample) -> dict[str, Any]:
    """Seed and best totals, rounds run and failures of the example's most recent ICL optimization."""
    rounds = optimization_rounds(example)
    if not rounds:
        return {"seed_total": None, "best_total": None, "max_total": None, "rounds": 0, "failures": 0,
                "num_aspects": 0}
    best = [e for e in rounds if e["kept"]][-1]["total"]  # each kept answer scored at least the one before
    return {"seed_total": rounds[0]["total"], "best_total": best, "max_total": rounds[0]["max_total"],
            "rounds": len(rounds) - 1, "failures": sum(1 for e in rounds if e["failure"]),
            "num_aspects": len(rounds[0]["aspects"])}
