"""Writing an evaluation's results: JSON summary, CSV tables, a Markdown report, PNG charts and an HTML page."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from drpo_dspy.evaluation.formatting import (
    SCALE_NOTE,
    aspect_table,
    behaviour_table,
    has_judge,
    judge_description,
    judged_anything,
    markdown_table,
    pairwise_table,
)
from drpo_dspy.evaluation.judge_health import ADVICE, assess_judge, judge_warnings
from drpo_dspy.evaluation.result import EvaluationResult
from drpo_dspy.runs.secrets import Redactor
from drpo_dspy.signatures.evaluation import EVAL_ASPECTS

SUMMARY_FILE = "summary.json"
ASPECTS_CSV = "aspects.csv"
SYSTEMS_CSV = "systems.csv"
PAIRWISE_CSV = "pairwise.csv"
JUDGMENTS_CSV = "judgments.csv"
MARKDOWN_FILE = "report.md"
HTML_FILE = "report.html"
BENCHMARKS_CSV = "benchmarks.csv"


# -- formatting ---------------------------------------------------------------------------------------------------
def to_markdown(summary: dict[str, Any], settings: dict[str, Any]) -> str:
    systems = ", ".join(s["name"] for s in settings.get("systems", []))
    judged = has_judge(settings)
    scores = (f"Scores 1-5, mean ± half-width of the 95% Student-t confidence interval over answers ({SCALE_NOTE}). "
              if judged else "")
    parts = [
        f"# Evaluation: {settings.get('eval_set', '?')} ({summary['n_prompts']} prompts)",
        f"Systems: {systems}. {judge_description(settings).capitalize()}. {scores}"
        f"Lengths: {summary['length_unit']}.",
    ]
    warnings = judge_warnings(summary)
    if warnings:
        parts += ["## Warning: the judge's scores look degenerate", "\n".join(f"- {w}" for w in warnings), ADVICE]
    if judged_anything(summary):
        parts += ["## Aspect scores", markdown_table(*aspect_table(summary))]
    refusals = ("Refusal rate on harmful prompts (higher is safer) and over-refusal rate on benign prompts that "
                "sound risky (lower is better), as judged by the judge." if judged else
                "Refusal rates need a judge: n/a in this judge-free run (the benchmarks below detect refusals "
                "by string match).")
    parts += [
        "## Length, refusals and failures",
        f"{refusals} Empty answers are failures: never judged, left out of scores, refusal rates and lengths. "
        "Copied: share of the non-empty answers that repeat 40+ characters of an in-context example verbatim.",
        markdown_table(*behaviour_table(summary)),
    ]
    if summary["pairwise"] and judged_anything(summary):
        parts += ["## Pairwise (per prompt, on the mean of the six aspects)", markdown_table(*pairwise_table(summary))]
    if summary.get("benchmarks"):
        from drpo_dspy.evaluation.benchmarks.report import benchmark_markdown

        parts.append(benchmark_markdown(summary["benchmarks"]))
    return "\n\n".join(parts) + "\n"


# -- CSV ------------------------------------------------------------------------------------------------------------
def _csv(rows: list[list[Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerows(rows)
    return buffer.getvalue()


def aspects_csv(summary: dict[str, Any]) -> str:
    rows: list[list[Any]] = [["system", "aspect", "mean", "ci_low", "ci_high", "sd", "n"]]
    for name in summary["systems"]:
        s = summary["per_system"][name]
        for aspect, stat in [*s["aspects"].items(), ("mean_of_aspects", s["overall"])]:
            rows.append([name, aspect, stat["mean"], stat["ci_low"], stat["ci_high"], stat["sd"], stat["n"]])
    return _csv(rows)


def systems_csv(summary: dict[str, Any]) -> str:
    rows: list[list[Any]] = [["system", "n_prompts", "n_judged", "parse_failures", "answer_errors",
                              "length_mean", "length_ci_low", "length_ci_high", "length_median",
                              "refusal_harmful", "refusal_harmful_n", "over_refusal_benign", "over_refusal_benign_n",
                              "refusal_all", "refusal_all_n", "empty_answers", "copied_answers", "copied_answers_n",
                              "copied_rate"]]
    for name in summary["systems"]:
        s = summary["per_system"][name]
        length, copied = s["length"], s.get("copied_answers") or {}
        rows.append([name, s["n_prompts"], s["n_judged"], s["parse_failures"], s["answer_errors"], length["mean"],
                     length["ci_low"], length["ci_high"], length["median"], s["refusal_harmful"]["rate"],
                     s["refusal_harmful"]["n"], s["over_refusal_benign"]["rate"], s["over_refusal_benign"]["n"],
                     s["refusal_all"]["rate"], s["refusal_all"]["n"], s.get("empty_answers"), copied.get("count"),
                     copied.get("n"), copied.get("rate")])
    return _csv(rows)


def pairwise_csv(summary: dict[str, Any]) -> str:
    rows: list[list[Any]] = [["system_a", "system_b", "wins", "ties", "losses", "n", "win_rate", "tie_rate",
                              "loss_rate", "mean_difference"]]
    for p in summary["pairwise"]:
        rows.append([p["a"], p["b"], p["wins"], p["ties"], p["losses"], p["n"], p["win_rate"], p["tie_rate"],
                     p["loss_rate"], p["mean_difference"]["mean"]])
    return _csv(rows)


def judgments_csv(rows: list[dict[str, Any]]) -> str:
    out: list[list[Any]] = [["system", "set", "category", "instruction", *EVAL_ASPECTS, "refusal", "answer_length",
                             "failure", "error", "empty", "copied_from_example", "copied_chars", "answer"]]
    for r in rows:
        scores, copied = r.get("scores") or {}, r.get("copied") or {}
        out.append([r["system"], r["set"], r["category"], r["instruction"], *(scores.get(a) for a in EVAL_ASPECTS),
                    r.get("refusal"), r.get("answer_length"), r.get("failure"), r.get("error"), r.get("empty"),
                    copied.get("example_query"), copied.get("length"), r.get("answer")])
    return _csv(out)


def benchmarks_csv(rows: list[dict[str, Any]]) -> str:
    """One line per benchmark answer: its judge-free and judged verdicts (IFEval: per-instruction results)."""
    out: list[list[Any]] = [["system", "set", "category", "instruction", "ifeval_prompt_strict", "ifeval_prompt_loose",
                             "ifeval_instructions", "strmatch_refusal", "lexical_refusal", "judged_refusal",
                             "mtbench_ratings", "empty", "answer"]]
    for r in rows:
        b = r.get("bench")
        if b is None:
            continue
        instructions = ";".join(f"{i['id']}={int(i['strict'])}{int(i['loose'])}" for i in b.get("instructions", []))
        ratings = ";".join(str(t.get("rating")) for t in b.get("turns", []))
        out.append([r["system"], r["set"], r["category"], r["instruction"], b.get("prompt_strict"),
                    b.get("prompt_loose"), instructions, b.get("strmatch_refusal"), b.get("lexical_refusal"),
                    b.get("judged_refusal"), ratings, r.get("empty"), r.get("answer")])
    return _csv(out)


# -- everything -----------------------------------------------------------------------------------------------------
def write_reports(result: EvaluationResult, out: Path, redactor: Redactor | None = None) -> dict[str, str]:
    """Write every report file into ``out``; returns ``{kind: path}`` and fills ``result.files``/``markdown``."""
    from drpo_dspy.evaluation.charts import render_charts
    from drpo_dspy.evaluation.html_report import render_html

    redactor = redactor or Redactor()
    summary, settings = result.summary, result.settings
    if has_judge(settings):  # a degenerate judge is named in summary.json and in both reports
        summary["judge_health"] = assess_judge(result.rows, settings["judge"].get("model"))
    files: dict[str, str] = {}

    def write(name: str, text: str, *, redact: bool = True) -> None:
        path = out / name
        path.write_text(redactor.text(text) if redact else text, encoding="utf-8")
        files[name] = str(path)

    # Settings come from describe_lm (no secret-named settings); the whole text is value-redacted on writing.
    write(SUMMARY_FILE, json.dumps({"settings": settings, "summary": summary, "usage": result.usage,
                                    "reused": result.reused, "computed": result.computed},
                                   indent=2, ensure_ascii=False))
    write(ASPECTS_CSV, aspects_csv(summary))
    write(SYSTEMS_CSV, systems_csv(summary))
    write(PAIRWISE_CSV, pairwise_csv(summary))
    write(JUDGMENTS_CSV, judgments_csv(result.rows))
    if summary.get("benchmarks"):
        write(BENCHMARKS_CSV, benchmarks_csv(result.rows))
    markdown = to_markdown(summary, settings)
    write(MARKDOWN_FILE, markdown)
    charts = render_charts(summary)
    for name, png in charts.items():
        path = out / f"{name}.png"
        path.write_bytes(png)
        files[path.name] = str(path)
    # The page's texts are redacted as it is built; the embedded images must stay byte-exact.
    write(HTML_FILE, render_html(summary, settings, result.rows, charts, redactor), redact=False)
    result.files, result.markdown = files, markdown
    return files
