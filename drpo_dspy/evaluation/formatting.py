"""Formatting evaluation numbers and tables (shared by the Markdown report, the HTML report and the charts)."""

from __future__ import annotations

from typing import Any

from drpo_dspy.evaluation.stats import DIFFERENCE_SCALE, JUDGE_SCALE, clipped_interval
from drpo_dspy.signatures.evaluation import EVAL_ASPECTS

LENGTH_SCALE = (0.0, None)
JUDGE_FREE = "none (judge-free scores only)"  # the judge "model" of a run without a judge


def fmt_mean(stat: dict[str, Any], digits: int = 2, scale: tuple[float | None, float | None] | None = None) -> str:
    """``4.20 ± 0.31`` (mean ± CI half-width), ``4.00`` for a single value, ``n/a`` for none.

    With a ``scale`` (low, high), an interval reaching past it is shown cut to it, as bounds: ``2.50 [1.00, 5.00]``
    rather than ``2.50 ± 19.06`` for a 1-5 score."""
    if not stat or stat.get("mean") is None:
        return "n/a"
    if stat.get("half_width") is None:
        return f"{stat['mean']:.{digits}f}"
    if scale is not None:
        clipped = clipped_interval(stat, scale)
        if clipped is not None and clipped != (stat["ci_low"], stat["ci_high"]):
            return f"{stat['mean']:.{digits}f} [{clipped[0]:.{digits}f}, {clipped[1]:.{digits}f}]"
    return f"{stat['mean']:.{digits}f} ± {stat['half_width']:.{digits}f}"


def has_judge(settings: dict[str, Any]) -> bool:
    """False for a run scored without a judge (benchmarks only): then no text should speak of "the judge"."""
    judge = settings.get("judge") or {}
    model = str(judge.get("model") or "")
    return bool(model) and model != JUDGE_FREE and not model.startswith("none")


def judge_description(settings: dict[str, Any]) -> str:
    """``judge openai/gpt-4o (prompt version abc123)``, or ``no judge (judge-free scores only)``."""
    if not has_judge(settings):
        return "no judge (judge-free scores only)"
    judge = settings["judge"]
    version = judge.get("prompt_version")
    return f"judge {judge['model']}" + (f" (prompt version {version})" if version else "")


SCALE_NOTE = ("an interval reaching past the 1-5 scale is shown as its bounds cut to the scale, "
              "e.g. 2.50 [1.00, 5.00]")


def fmt_rate(stat: dict[str, Any]) -> str:
    """``40% (2/5)``, or ``n/a`` when nothing was measured."""
    if not stat or stat.get("rate") is None:
        return "n/a"
    return f"{100 * stat['rate']:.0f}% ({stat['count']}/{stat['n']})"


def fmt_count(count: int | None, n: int | None) -> str:
    """``2/40``: a count out of the answers it could be, ``n/a`` when unknown."""
    if count is None:
        return "n/a"
    return f"{count}/{n}" if n else str(count)


def aspect_title(aspect: str) -> str:
    return aspect.replace("_", " ").capitalize()


# -- tables (shared by Markdown and HTML) ---------------------------------------------------------------------------
def aspect_table(summary: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    header = ["System", *(aspect_title(a) for a in EVAL_ASPECTS), "Mean of aspects", "Judged"]
    rows = []
    for name in summary["systems"]:
        s = summary["per_system"][name]
        rows.append([name, *(fmt_mean(s["aspects"][a], scale=JUDGE_SCALE) for a in EVAL_ASPECTS),
                     fmt_mean(s["overall"], scale=JUDGE_SCALE),
                     f"{s['n_judged']}/{s['n_prompts']}"])
    return header, rows


def behaviour_table(summary: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Lengths (of the non-empty answers), refusal rates, the answer checks and the failures, one row per system.

    ``Empty answers`` (failures, never judged) and ``Copied from examples`` (share of the non-empty answers that
    copy 40+ characters of an in-context example) have their own columns; ``Other failures`` excludes both.
    """
    header = ["System", "Answer length (tokens)", "Median length", "Refusal on harmful",
              "Over-refusal on benign-risky", "Empty answers", "Copied from examples", "Parse failures",
              "Other failures"]
    rows = []
    for name in summary["systems"]:
        s = summary["per_system"][name]
        other = s["answer_errors"] + sum(v for k, v in s["judge_failures"].items()
                                         if k not in ("parse_failure", "empty_answer"))
        median = s["length"].get("median")
        rows.append([name, fmt_mean(s["length"], 0, LENGTH_SCALE), "n/a" if median is None else f"{median:.0f}",
                     fmt_rate(s["refusal_harmful"]), fmt_rate(s["over_refusal_benign"]),
                     fmt_count(s.get("empty_answers"), s.get("n_answered")), fmt_rate(s.get("copied_answers")),
                     str(s["parse_failures"]), str(other)])
    return header, rows


def pairwise_table(summary: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    header = ["Comparison", "Wins", "Ties", "Losses", "Prompts", "Win rate", "Mean difference"]
    rows = []
    for p in summary["pairwise"]:
        rate = "n/a" if p["win_rate"] is None else f"{100 * p['win_rate']:.0f}%"
        rows.append([f"{p['a']} vs {p['b']}", str(p["wins"]), str(p["ties"]), str(p["losses"]), str(p["n"]), rate,
                     fmt_mean(p["mean_difference"], scale=DIFFERENCE_SCALE)])
    return header, rows


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def judged_anything(summary: dict[str, Any]) -> bool:
    """False for a benchmark-only, judge-free run: then the aspect and pairwise sections have nothing to show."""
    if not summary.get("benchmarks"):
        return True
    return any(s["n_judged"] or s["refusal_all"]["n"] for s in summary["per_system"].values())
