"""The evaluation judge: scores one answer on the six aspects and says whether it is a refusal.

The judge receives exactly two inputs, the user's query and the answer; the system under test's prompt and
examples never reach it. An output that cannot be parsed is a counted failure with no scores, never a zero.
A prompt that carries its own fixed ``aspects`` (just-eval-instruct: five for regular prompts, safety for safety
prompts) is judged on those only (:func:`fixed_aspects`).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from typing import Any

import dspy

from drpo_dspy.adapters.typed_calls import call_typed
from drpo_dspy.clients.metering import Meter
from drpo_dspy.signatures.evaluation import (
    EVAL_ASPECTS,
    AnswerEvaluation,
    EvaluateAnswer,
    evaluate_answer_signature,
)

logger = logging.getLogger(__name__)

EMPTY_ANSWER = "(empty answer)"


def judge_version() -> str:
    """A digest of the judge's prompt (instructions and rubrics): judgments are reused only under the same one."""
    parts = [EvaluateAnswer.instructions, json.dumps(AnswerEvaluation.model_json_schema(), sort_keys=True)]
    for name, f in EvaluateAnswer.fields.items():
        parts.append(f"{name}:{f.json_schema_extra.get('desc', '')}")
    return hashlib.sha256("\n".join(parts).encode("utf-8")).hexdigest()[:12]


def fixed_aspects(aspects: Any) -> tuple[str, ...] | None:
    """A prompt's fixed judge aspects in report order (None: the default six).

    Raises:
        ValueError: not a non-empty list of aspect names among :data:`EVAL_ASPECTS`.
    """
    if aspects is None:
        return None
    if isinstance(aspects, str) or not isinstance(aspects, list | tuple) or not aspects or \
            any(a not in EVAL_ASPECTS for a in aspects):
        raise ValueError(f"'aspects' must be a non-empty list among {', '.join(EVAL_ASPECTS)}; got {aspects!r}")
    return tuple(a for a in EVAL_ASPECTS if a in aspects)


def aspects_scope(item: dict[str, Any]) -> str:
    """What a prompt's fixed aspects add to its record key (``""`` without them): a judgment on five aspects is not
    the same record as one on six. Checked for every prompt before any LM call.

    Raises:
        ValueError: the prompt's ``aspects`` are not a list of evaluation aspects (see :func:`fixed_aspects`).
    """
    try:
        fixed = fixed_aspects(item.get("aspects"))
    except ValueError as exc:
        raise ValueError(f"prompt {str(item.get('instruction'))[:60]!r}: {exc}") from exc
    return "" if fixed is None else f"|aspects={','.join(fixed)}"


@dataclass
class EvalJudgment:
    """Aspect scores with rationales and a refusal verdict; ``failure`` names what went wrong, if anything.

    ``aspects`` is the prompt's fixed aspect list when it has one (None: the six :data:`EVAL_ASPECTS`)."""

    scores: dict[str, int] = field(default_factory=dict)
    rationales: dict[str, str] = field(default_factory=dict)
    refusal: bool | None = None
    failure: str | None = None
    aspects: tuple[str, ...] | None = None

    @property
    def mean(self) -> float | None:
        expected = self.aspects or EVAL_ASPECTS
        if self.failure or not all(a in self.scores for a in expected):
            return None
        return sum(self.scores[a] for a in expected) / len(expected)

    def to_dict(self) -> dict[str, Any]:
        out = {"scores": dict(self.scores), "rationales": dict(self.rationales), "refusal": self.refusal,
               "failure": self.failure}
        if self.aspects is not None:
            out["aspects"] = list(self.aspects)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvalJudgment:
        aspects = data.get("aspects")
        return cls({k: int(v) for k, v in (data.get("scores") or {}).items()}, dict(data.get("rationales") or {}),
                   data.get("refusal"), data.get("failure"), tuple(aspects) if aspects else None)


def failure_kind(exc: BaseException) -> str:
    from dspy.utils.exceptions import AdapterParseError
    from pydantic import ValidationError

    if isinstance(exc, AdapterParseError | ValidationError):
        return "parse_failure"
    return f"lm_error:{type(exc).__name__}"


class AnswerJudge:
    """Calls the :class:`EvaluateAnswer` signature on ``lm`` (JSON schema output where the provider enforces it).

    Args:
        lm: Any ``dspy.LM``; wrap it with ``meter.watch(lm, "judge")`` to count its calls.
        meter: Counts tokens and failures under the ``judge`` role.
        temperature: Judge sampling temperature (0 for reproducible, cacheable judgments).
    """

    def __init__(self, lm: Any, *, meter: Meter | None = None, temperature: float = 0.0):
        if lm is None:
            raise ValueError("the judge needs an LM")
        self.lm = lm
        self.meter = meter or Meter()
        self.temperature = temperature
        self.predictor = dspy.Predict(EvaluateAnswer)
        self._fixed: dict[tuple[str, ...], dspy.Predict] = {}

    @property
    def model(self) -> str:
        return str(getattr(self.lm, "model", self.lm))

    def predictor_for(self, aspects: tuple[str, ...] | None) -> dspy.Predict:
        """The six-aspect predictor, or one asking only a prompt's fixed aspects (built once per aspect list)."""
        if aspects is None or aspects == EVAL_ASPECTS:
            return self.predictor
        if aspects not in self._fixed:
            self._fixed[aspects] = dspy.Predict(evaluate_answer_signature(aspects))
        return self._fixed[aspects]

    def __call__(self, query: str, response: str, aspects: Any = None) -> EvalJudgment:
        """Judge ``response`` on the six aspects, or on ``aspects`` when the prompt fixes them (see
        :func:`fixed_aspects`)."""
        fixed = fixed_aspects(aspects)
        try:
            with self.meter.usage("judge"):
                pred = call_typed(self.predictor_for(fixed), self.lm, {"temperature": self.temperature},
                                  query=query, response=response if response.strip() else EMPTY_ANSWER)
        except Exception as exc:  # parse failures and transient LM errors are data, not crashes
            kind = failure_kind(exc)
            self.meter.record_failure("judge", kind)
            if kind.startswith("lm_error:"):
                self.meter.policy.record_error("judge", exc)  # a systemic error stops the evaluation
            logger.warning("judge failed on query %.60r: %s", query, kind)
            return EvalJudgment(failure=kind, aspects=fixed)
        judgment = EvalJudgment(aspects=fixed)
        try:
            evaluation = pred.evaluation
            for aspect in fixed or EVAL_ASPECTS:
                verdict = getattr(evaluation, aspect)
                judgment.scores[aspect] = int(verdict.score)
                judgment.rationales[aspect] = str(verdict.rationale or "")
            judgment.refusal = bool(evaluation.refusal)
        except Exception as exc:  # a prediction without a usable evaluation
            logger.warning("judge output incomplete on query %.60r: %s", query, exc)
            self.meter.record_failure("judge", "parse_failure")
            return EvalJudgment(failure="parse_failure", aspects=fixed)
        return judgment
