"""Statistics for evaluation reports: means with Student-t intervals, Wilson intervals for rates, win/tie/loss.

Confidence intervals for means are two-sided 95% Student-t intervals over answers (``mean ± t(0.975, n-1) · s/√n``
with the sample standard deviation ``s``); they are undefined (``None``) for fewer than two answers. Rates (refusal,
over-refusal, win rates) get 95% Wilson score intervals. No SciPy: the t quantile is computed here from the
regularized incomplete beta function.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from statistics import NormalDist
from typing import Any

from drpo_dspy.signatures.evaluation import EVAL_ASPECTS

LEVEL = 0.95
CI_METHOD = "two-sided 95% Student-t interval over answers (mean ± t·s/√n); Wilson score interval for rates"
TOKENIZER = "cl100k_base tokens, counted offline by litellm.token_counter"
_TIE_TOLERANCE = 1e-9


# -- token counting -----------------------------------------------------------------------------------------------
_REGEX_TOKENS = re.compile(r"\w+|[^\w\s]", re.UNICODE)
_tokenizer_ok: bool | None = None


def count_tokens(text: str) -> int:
    """Answer length in tokens, the same yardstick for every system whatever model produced the answer.

    Uses litellm's ``token_counter`` with an OpenAI model name, which counts cl100k_base BPE tokens from the
    tokenizer file bundled inside litellm (no network). If that ever fails, falls back to counting words and
    punctuation marks (regex ``\\w+|[^\\w\\s]``) for the rest of the process.
    """
    global _tokenizer_ok
    if not text:
        return 0
    if _tokenizer_ok is not False:
        try:
            import litellm

            n = int(litellm.token_counter(model="gpt-3.5-turbo", text=text))
            _tokenizer_ok = True
            return n
        except Exception:
            _tokenizer_ok = False
    return len(_REGEX_TOKENS.findall(text))


def tokenizer_name() -> str:
    return TOKENIZER if _tokenizer_ok is not False else "words and punctuation marks (regex fallback)"


# -- distributions ------------------------------------------------------------------------------------------------
def _beta_cf(a: float, b: float, x: float) -> float:
    """Continued fraction for the incomplete beta function (modified Lentz iteration)."""
    tiny, eps = 1e-300, 1e-15
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_cf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_cf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """CDF of Student's t distribution with ``df`` degrees of freedom."""
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """Quantile of Student's t (bisection on the CDF; accurate to ~1e-10)."""
    if not 0.0 < p < 1.0 or df <= 0:
        raise ValueError(f"need 0 < p < 1 and df > 0, got p={p}, df={df}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    if p == 0.5:
        return 0.0
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        lo, hi = hi, hi * 2.0
    for _ in range(200):
        mid = (lo + hi) / 2.0
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12:
            break
    return (lo + hi) / 2.0


def mean_ci(values: Iterable[float], level: float = LEVEL) -> dict[str, Any]:
    """Mean, sample standard deviation and Student-t confidence interval (``None`` bounds when n < 2)."""
    xs = [float(v) for v in values]
    n = len(xs)
    if n == 0:
        return {"mean": None, "sd": None, "n": 0, "ci_low": None, "ci_high": None, "half_width": None}
    mean = sum(xs) / n
    if n < 2:
        return {"mean": mean, "sd": None, "n": 1, "ci_low": None, "ci_high": None, "half_width": None}
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    half = t_quantile(1.0 - (1.0 - level) / 2.0, n - 1) * sd / math.sqrt(n)
    return {"mean": mean, "sd": sd, "n": n, "ci_low": mean - half, "ci_high": mean + half, "half_width": half}


JUDGE_SCALE = (1.0, 5.0)
"""The judge's score scale: no mean of its scores, nor any interval shown for one, lies outside it."""
DIFFERENCE_SCALE = (JUDGE_SCALE[0] - JUDGE_SCALE[1], JUDGE_SCALE[1] - JUDGE_SCALE[0])
"""The scale of a difference of two judge scores (-4 to 4)."""


def clipped_interval(stat: dict[str, Any] | None, scale: tuple[float | None, float | None]
                     ) -> tuple[float, float] | None:
    """A mean's confidence interval cut to the values the measure can take (``scale``: (low, high), ``None`` for
    no bound): a Student-t interval over few, spread scores can reach far past the scale (``2.50 ± 19.06`` on
    1-5). ``None`` when the stat has no interval."""
    if not stat or stat.get("ci_low") is None or stat.get("ci_high") is None:
        return None
    low, high = float(stat["ci_low"]), float(stat["ci_high"])
    if scale[0] is not None:
        low, high = max(low, scale[0]), max(high, scale[0])
    if scale[1] is not None:
        low, high = min(low, scale[1]), min(high, scale[1])
    return low, high


def wilson(successes: int, n: int, level: float = LEVEL) -> dict[str, Any]:
    """A rate with its Wilson score interval (all ``None`` when n == 0)."""
    if n == 0:
        return {"rate": None, "count": 0, "n": 0, "ci_low": None, "ci_high": None}
    z = NormalDist().inv_cdf(1.0 - (1.0 - level) / 2.0)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    low = 0.0 if successes == 0 else max(0.0, centre - half)  # exact bounds at the edges, no rounding noise
    high = 1.0 if successes == n else min(1.0, centre + half)
    return {"rate": p, "count": successes, "n": n, "ci_low": low, "ci_high": high}


# -- the summary ----------------------------------------------------------------------------------------------------
def answer_mean(row: dict[str, Any]) -> float | None:
    """The per-answer score: the mean of the six aspects (or of the row's fixed ``aspects``, as just-eval's prompts
    have), or None when the judgment failed or is incomplete."""
    scores = row.get("scores") or {}
    expected = row.get("aspects") or EVAL_ASPECTS
    if row.get("failure") or not all(a in scores for a in expected):
        return None
    return sum(scores[a] for a in expected) / len(expected)


def pairwise(rows: Sequence[dict[str, Any]], systems: Sequence[str]) -> list[dict[str, Any]]:
    """Per-prompt win/tie/loss of each system against each later one, on the mean of the six aspects.

    Only prompts judged successfully for both systems count. A prompt is a win for A when A's mean is higher.
    """
    by_prompt: dict[str, dict[tuple[str, str], float]] = {s: {} for s in systems}
    for row in rows:
        value = answer_mean(row)
        if value is not None and row["system"] in by_prompt:
            by_prompt[row["system"]][(row.get("set", ""), row["instruction"])] = value
    out = []
    for i, a in enumerate(systems):
        for b in systems[i + 1:]:
            shared = [p for p in by_prompt[a] if p in by_prompt[b]]
            diffs = [by_prompt[a][p] - by_prompt[b][p] for p in shared]
            wins = sum(d > _TIE_TOLERANCE for d in diffs)
            losses = sum(d < -_TIE_TOLERANCE for d in diffs)
            ties = len(diffs) - wins - losses
            n = len(diffs)
            out.append({
                "a": a, "b": b, "n": n, "wins": wins, "ties": ties, "losses": losses,
                "win_rate": wins / n if n else None, "tie_rate": ties / n if n else None,
                "loss_rate": losses / n if n else None,
                "win_rate_ci": [wilson(wins, n)["ci_low"], wilson(wins, n)["ci_high"]] if n else None,
                "mean_difference": mean_ci(diffs),
            })
    return out


def _refusal(rows: list[dict[str, Any]], set_name: str | None) -> dict[str, Any]:
    verdicts = [r["refusal"] for r in rows if r.get("refusal") is not None and (set_name is None or
                                                                                r.get("set") == set_name)]
    return wilson(sum(bool(v) for v in verdicts), len(verdicts))


def summarize(rows: Sequence[dict[str, Any]], systems: Sequence[str]) -> dict[str, Any]:
    """Per-system aspect means, lengths, refusal rates and failures, plus pairwise comparisons.

    ``rows`` are per-(system, prompt) records with ``system``, ``instruction``, ``set``, ``answer_length``,
    ``scores`` (aspect -> 1..5), ``refusal`` (bool or None), ``failure`` (judge failure kind or None) and ``error``
    (the system failed to answer, or None).
    """
    per_system: dict[str, Any] = {}
    sets = sorted({r.get("set", "") for r in rows})
    for name in systems:
        mine = [r for r in rows if r["system"] == name]
        answered = [r for r in mine if not r.get("error")]
        judged = [r for r in answered if answer_mean(r) is not None]
        failures: dict[str, int] = {}
        for r in answered:
            if r.get("failure"):
                failures[r["failure"]] = failures.get(r["failure"], 0) + 1
        lengths = [int(r.get("answer_length") or 0) for r in answered]
        per_system[name] = {
            "n_prompts": len(mine),
            "n_answered": len(answered),
            "n_judged": len(judged),
            "answer_errors": len(mine) - len(answered),
            "parse_failures": sum(v for k, v in failures.items() if k == "parse_failure"),
            "judge_failures": failures,
            # each aspect over the answers judged on it (just-eval: five on regular prompts, safety on safety ones)
            "aspects": {a: mean_ci(r["scores"][a] for r in judged if a in r["scores"]) for a in EVAL_ASPECTS},
            "overall": mean_ci(answer_mean(r) for r in judged),
            "length": {**mean_ci(lengths), "median": _median(lengths)},
            "refusal_harmful": _refusal(answered, "harmful"),
            "over_refusal_benign": _refusal(answered, "benign_risky"),
            "refusal_all": _refusal(answered, None),
            "by_set": {s: mean_ci(answer_mean(r) for r in judged if r.get("set", "") == s) for s in sets},
        }
    return {
        "systems": list(systems),
        "aspects": list(EVAL_ASPECTS),
        "sets": sets,
        "n_prompts": len({(r.get("set", ""), r["instruction"]) for r in rows}),
        "ci_method": CI_METHOD,
        "length_unit": tokenizer_name(),
        "per_system": per_system,
        "pairwise": pairwise(rows, systems),
    }


def _median(xs: list[int]) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    mid = len(s) // 2
    return float(s[mid]) if len(s) % 2 else (s[mid - 1] + s[mid]) / 2.0
