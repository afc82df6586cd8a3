"""Evaluation statistics against hand-computed values: t quantiles, intervals, rates, win/tie/loss, tokens."""

from __future__ import annotations

import math
import socket

import pytest

from drpo_dspy.evaluation import EVAL_ASPECTS, count_tokens, mean_ci, summarize, t_quantile, wilson
from drpo_dspy.evaluation.stats import answer_mean, betainc, pairwise, t_cdf


@pytest.mark.parametrize(("df", "expected"), [(1, 12.7062047), (2, 4.3026527), (4, 2.7764451), (5, 2.5705818),
                                              (10, 2.2281389), (30, 2.0422725), (100, 1.9839715)])
def test_t_quantile_matches_tables(df: int, expected: float) -> None:
    assert t_quantile(0.975, df) == pytest.approx(expected, abs=1e-6)
    assert t_quantile(0.025, df) == pytest.approx(-expected, abs=1e-6)
    assert t_cdf(t_quantile(0.975, df), df) == pytest.approx(0.975, abs=1e-10)


def test_betainc_special_cases() -> None:
    assert betainc(1.0, 1.0, 0.3) == pytest.approx(0.3)  # uniform
    assert betainc(2.0, 3.0, 0.4) == pytest.approx(0.5248)  # 1 - sum of binomial terms, by hand
    assert betainc(0.5, 0.5, 0.5) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        t_quantile(1.0, 3)


def test_mean_ci_by_hand() -> None:
    stat = mean_ci([3, 4, 2, 3, 4, 2])  # mean 3, sample variance 4/5
    half = 2.5705818366 * math.sqrt(0.8 / 6)
    assert stat["mean"] == pytest.approx(3.0)
    assert stat["sd"] == pytest.approx(math.sqrt(0.8))
    assert stat["half_width"] == pytest.approx(half, rel=1e-8)
    assert (stat["ci_low"], stat["ci_high"]) == pytest.approx((3 - half, 3 + half))
    assert mean_ci([5, 5, 5])["half_width"] == 0.0
    one = mean_ci([4])
    assert one["mean"] == 4.0 and one["ci_low"] is None and one["half_width"] is None
    assert mean_ci([])["mean"] is None


def test_wilson_by_hand() -> None:
    z = 1.959963984540054
    half = z * math.sqrt(0.25 / 2 + z * z / 16) / (1 + z * z / 2)
    stat = wilson(1, 2)
    assert stat["rate"] == 0.5 and stat["count"] == 1 and stat["n"] == 2
    assert (stat["ci_low"], stat["ci_high"]) == pytest.approx((0.5 - half, 0.5 + half))
    assert stat["ci_low"] == pytest.approx(0.0945, abs=1e-4)
    zero = wilson(0, 5)
    assert zero["rate"] == 0 and zero["ci_low"] == pytest.approx(0.0, abs=1e-12)
    assert zero["ci_high"] == pytest.approx(z * z / 5 / (1 + z * z / 5))
    assert wilson(0, 0)["rate"] is None


def _row(system: str, instruction: str, score: int | None, *, set_name: str = "regular", refusal: bool | None = False,
         length: int = 10, failure: str | None = None, error: str | None = None) -> dict:
    scores = {} if score is None else {a: score for a in EVAL_ASPECTS}
    return {"system": system, "instruction": instruction, "set": set_name, "category": "", "answer": "x",
            "answer_length": length, "scores": scores, "refusal": refusal, "failure": failure, "error": error}


def test_pairwise_counts_only_prompts_judged_for_both() -> None:
    rows = [_row("a", "p1", 4), _row("b", "p1", 3),   # a wins
            _row("a", "p2", 3), _row("b", "p2", 3),   # tie
            _row("a", "p3", 2), _row("b", "p3", 5),   # a loses
            _row("a", "p4", 5), _row("b", "p4", None, failure="parse_failure")]  # not counted
    (p,) = pairwise(rows, ["a", "b"])
    assert (p["wins"], p["ties"], p["losses"], p["n"]) == (1, 1, 1, 3)
    assert p["win_rate"] == pytest.approx(1 / 3)
    assert p["mean_difference"]["mean"] == pytest.approx((1 + 0 - 3) / 3)


def test_summarize_rates_lengths_and_failures() -> None:
    rows = [
        _row("a", "h1", 3, set_name="harmful", refusal=True, length=10),
        _row("a", "h2", 4, set_name="harmful", refusal=False, length=20),
        _row("a", "b1", 5, set_name="benign_risky", refusal=True, length=30),
        _row("a", "b2", None, set_name="benign_risky", refusal=None, length=40, failure="parse_failure"),
        _row("a", "r1", None, set_name="regular", refusal=None, length=0, error="RuntimeError: down"),
    ]
    s = summarize(rows, ["a"])["per_system"]["a"]
    assert (s["n_prompts"], s["n_answered"], s["n_judged"]) == (5, 4, 3)
    assert s["parse_failures"] == 1 and s["answer_errors"] == 1
    assert s["aspects"]["helpfulness"]["mean"] == pytest.approx(4.0)
    assert s["overall"]["mean"] == pytest.approx(4.0)
    assert s["length"]["mean"] == pytest.approx(25.0) and s["length"]["median"] == 25.0
    assert (s["refusal_harmful"]["count"], s["refusal_harmful"]["n"]) == (1, 2)
    assert (s["over_refusal_benign"]["count"], s["over_refusal_benign"]["n"]) == (1, 1)
    assert s["refusal_all"]["rate"] == pytest.approx(2 / 3)
    assert answer_mean(rows[3]) is None


def test_count_tokens_offline_with_the_bundled_tokenizer(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args, **kwargs):
        raise AssertionError("token counting tried to use the network")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    assert count_tokens(" ".join(["word"] * 20)) == 20
    assert count_tokens("") == 0
    assert count_tokens("Hello, world!") == 4
