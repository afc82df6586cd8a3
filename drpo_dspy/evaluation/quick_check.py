"""A small judge-free before/after check: the seed program and the compiled one on the same IFEval prompts.

``drpo optimize --quick`` ends with it. Both programs answer the same fixed, seeded sample (20 prompts by default)
with the same decoding; IFEval's official checkers score each answer, so no judge is involved. The two systems are
compared on the same prompts, so the difference is tested as paired: an exact McNemar test on the prompts where
exactly one of them follows every instruction. With 20 prompts only a large change can be told from noise, and the
verdict says so plainly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

QUICK_CHECK_PROMPTS = 20
NOISE_LEVEL = 0.05


def mcnemar_p(only_before: int, only_after: int) -> float:
    """Two-sided exact McNemar p-value from the discordant pairs (1.0 when there are none)."""
    n = only_before + only_after
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(only_before, only_after) + 1)) / 2**n
    return min(1.0, 2 * tail)


@dataclass
class CheckResult:
    """Prompt-level strict accuracy before and after, on the same prompts."""

    n: int
    before: dict[str, Any]  # a Wilson rate: rate, count, n, ci_low, ci_high
    after: dict[str, Any]
    only_before: int  # prompts only the seed program got right
    only_after: int
    empty_before: int
    empty_after: int
    p_value: float

    @property
    def within_noise(self) -> bool:
        return self.p_value >= NOISE_LEVEL

    def render(self) -> str:
        def pct(r: dict[str, Any]) -> str:
            return f"{100 * r['rate']:.0f}% [{100 * r['ci_low']:.0f}-{100 * r['ci_high']:.0f}]"

        lines = [f"Judge-free check on {self.n} IFEval prompts (prompt-level strict, 95% Wilson intervals):",
                 f"  before (seed prompt): {pct(self.before)}, {self.empty_before} empty answers",
                 f"  after (compiled):     {pct(self.after)}, {self.empty_after} empty answers"]
        change = f"{self.only_after} prompts gained, {self.only_before} lost"
        if self.within_noise:
            lines.append(f"  The difference is within the noise ({change}; paired McNemar p={self.p_value:.2f}): "
                         f"{self.n} prompts cannot tell these two programs apart.")
        else:
            direction = "better" if self.only_after > self.only_before else "worse"
            lines.append(f"  The compiled program is {direction} ({change}; paired McNemar p={self.p_value:.3f}).")
        return "\n".join(lines)


def before_after_check(before: Any, after: Any, base_lm: Any, *, n: int = QUICK_CHECK_PROMPTS, seed: int = 0,
                       num_threads: int = 4) -> CheckResult:
    """Answer a fixed, seeded sample of ``n`` IFEval prompts with both programs and compare them, judge-free.

    Raises ImportError (with the pip command) when IFEval's checkers are not installed.
    """
    from drpo_dspy.evaluation.benchmarks.ifeval import checker_registry
    from drpo_dspy.evaluation.runner import evaluate, resolve_eval_set
    from drpo_dspy.evaluation.stats import wilson

    checker_registry()  # ImportError with the pip command, before any answer
    prompts, _ = resolve_eval_set("ifeval", sample=n, seed=seed)
    result = evaluate([("before", before), ("after", after)], prompts, base_lm=base_lm, judge_lm=None,
                      num_threads=num_threads, write_report=False)
    passed: dict[str, dict[str, bool]] = {"before": {}, "after": {}}
    empty = {"before": 0, "after": 0}
    for row in result.rows:
        passed[row["system"]][row["instruction"]] = bool(row["bench"]["prompt_strict"])
        empty[row["system"]] += not str(row.get("answer") or "").strip()
    shared = sorted(set(passed["before"]) & set(passed["after"]))
    only_before = sum(passed["before"][q] and not passed["after"][q] for q in shared)
    only_after = sum(passed["after"][q] and not passed["before"][q] for q in shared)
    return CheckResult(len(shared), wilson(sum(passed["before"][q] for q in shared), len(shared)),
                       wilson(sum(passed["after"][q] for q in shared), len(shared)), only_before, only_after,
                       empty["before"], empty["after"], mcnemar_p(only_before, only_after))
