"""The typed DSPy signatures: every prompt DRPO sends to a helper LM lives here, in plain view."""

from drpo_dspy.signatures.judge import (
    AspectScore,
    AspectVerdict,
    JudgeResponse,
    JudgeResponsePaper,
    JudgeResponseStrict,
)
from drpo_dspy.signatures.propose import ProposeInstructions, ProposeInstructionsWithBudget
from drpo_dspy.signatures.refusal import ClassifyRefusal
from drpo_dspy.signatures.rewrite import RewriteResponse
from drpo_dspy.signatures.select_aspects import SelectAspects, SelectAspectsStrict

__all__ = [
    "AspectScore",
    "AspectVerdict",
    "ClassifyRefusal",
    "JudgeResponse",
    "JudgeResponsePaper",
    "JudgeResponseStrict",
    "ProposeInstructions",
    "ProposeInstructionsWithBudget",
    "RewriteResponse",
    "SelectAspects",
    "SelectAspectsStrict",
]
