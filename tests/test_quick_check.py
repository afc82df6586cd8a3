"""--quick's judge-free before/after check: paired, exact, and plain about noise."""

from __future__ import annotations

import pytest

from drpo_dspy import AlignedResponder
from drpo_dspy.evaluation.quick_check import CheckResult, before_after_check, mcnemar_p
from drpo_dspy.evaluation.stats import wilson
from drpo_dspy.testing import scripted_lm


def test_mcnemar_exact_p_values():
    assert mcnemar_p(0, 0) == 1.0
    assert mcnemar_p(3, 3) == 1.0
    assert mcnemar_p(0, 5) == pytest.approx(2 / 32)
    assert mcnemar_p(0, 10) < 0.01 and mcnemar_p(10, 0) == mcnemar_p(0, 10)


def _result(before: int, after: int, only_before: int, only_after: int) -> CheckResult:
    return CheckResult(20, wilson(before, 20), wilson(after, 20), only_before, only_after, 0, 0,
                       mcnemar_p(only_before, only_after))


def test_the_verdict_says_plainly_when_the_difference_is_noise():
    noise = _result(3, 5, 1, 3)
    assert noise.within_noise and "within the noise" in noise.render() and "cannot tell" in noise.render()
    real = _result(2, 14, 0, 12)
    assert not real.within_noise and "The compiled program is better" in real.render()
    assert "within the noise" not in real.render()


def test_identical_programs_on_ifeval_are_within_the_noise():
    seen: list = []

    def script(messages, params):
        seen.append(messages)
        return "A short answer."

    base = scripted_lm(script)
    program = AlignedResponder("Be helpful.", examples=[], k=0, max_tokens=32)
    try:
        check = before_after_check(program, program.deepcopy(), base, n=6)
    except ImportError as exc:
        pytest.skip(str(exc))
    assert check.n == 6 and len(seen) == 12  # both programs answered the same six prompts
    assert check.only_before == check.only_after == 0 and check.within_noise
    assert check.before == check.after and "within the noise" in check.render()
