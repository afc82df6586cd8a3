"""The evaluation judge: scores one answer on the six aspects and says whether it is a refusal.

The judge receives exactly two inputs, the user's query and the answer; the system under test's prompt and
examples never reach it. An output that cannot be parsed is a counted failure with no scores, never a zero.
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
from drpo_dspy.signatures.evaluation import EVAL_ASPECTS, AnswerEvaluation, EvaluateAnswer

logger = logging.getLogger(__name__)

EMPTY_ANSWER = "(empty answer)"


def judge_version() -> str:
    """A digest of the judge's prompt (instructions and rubrics): judgments are reused only under the same one."""
    parts = [EvaluateAnswer.instructions, json.dumps(AnswerEvaluation.model_json_schema(), sort_keys=True)]
    for name, f in EvaluateAnswer.fields.items():
        parts.append(f"{name}:{f.json_schema_extra.get('desc', '')}")
    return hashlib.sha256("\n".join(parts).encode("utf-8")).hexdigest()[:12]


@dataclass
class EvalJudgment:
    """Six aspect scores with rationales and a refusal verdict; ``failure`` names what went wrong, if anything."""

    scores: dict[str, int] = field(default_factory=dict)
    rationales: dict[str, str] = field(default_factory=dict)
    refusal: bool | None = None
    failure: str | None = None

    @property
    def mean(self) -> float | None:
        if self.failure or not all(a in self.scores for a in EVAL_ASPECTS):
            return None
        return sum(self.scores[a] for a in EVAL_ASPECTS) / len(EVAL_ASPECTS)

    def to_dict(self) -> dict[str, Any]:
        return {"scores": dict(self.scores), "rationales": dict(self.rationales), "refusal": self.refusal,
                "failure": self.failure}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvalJudgment:
        return cls({k: int(v) for k, v in (data.get("scores") or {}).items()}, dict(data.get("rationales") or {}),
                   data.get("refusal"), data.get("failure"))


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

    @property
    def model(self) -> str:
        return str(getattr(self.lm, "model", self.lm))

    def __call__(self, query: str, response: str) -> EvalJudgment:
        try:
            with self.meter.usage("judge"):
                pred = call_typed(self.predictor, self.lm, {"temperature": self.temperature},
                                  query=query, response=response if response.strip() else EMPTY_ANSWER)
        except Exception as exc:  # parse failures and transient LM errors are data, not crashes
            kind = failure_kind(exc)
            self.meter.record_failure("judge", kind)
            if kind.startswith("lm_error:"):
                self.meter.policy.record_error("judge", exc)  # a systemic error stops the evaluation
            logger.warning("judge failed on query %.60r: %s", query, kind)
            return EvalJudgment(failure=kind)
        judgment = EvalJudgment()
        try:
            evaluation = pred.evaluation
            for aspect in EVAL_ASPECTS:
                verdict = getattr(evaluation, aspect)
                judgment.scores[aspect] = int(verdict.score)
                judgment.rationales[aspect] = str(verdict.rationale or "")
            judgment.refusal = bool(evaluation.refusal)
        except Exception as exc:  # a prediction without a usable evaluation
            logger.warning("judge output incomplete on query %.60r: %s", query, exc)
            self.meter.record_failure("judge", "parse_failure")
            return EvalJudgment(failure="parse_failure")
        return judgment
