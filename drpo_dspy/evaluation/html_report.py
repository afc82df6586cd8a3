"""A single self-contained HTML page for an evaluation: tables, charts embedded as base64 PNG, sample answers.

The page loads nothing from anywhere (no scripts, fonts, stylesheets or images outside the file), so it can be
opened offline, attached to an email or archived as is.
"""

from __future__ import annotations

import base64
from html import escape
from typing import Any

from drpo_dspy.evaluation.formatting import (
    SCALE_NOTE,
    aspect_table,
    behaviour_table,
    has_judge,
    judged_anything,
    pairwise_table,
)
from drpo_dspy.evaluation.judge_health import ADVICE, judge_warnings
from drpo_dspy.runs.secrets import Redactor
from drpo_dspy.signatures.evaluation import EVAL_ASPECTS

MAX_SAMPLE_PROMPTS = 40
CHART_TITLES = {"aspects": "Aspect scores", "length": "Answer length", "refusal": "Refusals",
                "pairwise": "Pairwise comparison", "bench_ifeval": "IFEval", "bench_xstest": "XSTest",
                "bench_harmbench": "HarmBench", "bench_mtbench": "MT-Bench"}

_CSS = """
body { font-family: -apple-system, "Segoe UI", Roboto, "DejaVu Sans", Arial, sans-serif; margin: 2rem auto;
       max-width: 1180px; padding: 0 1.2rem; color: #1f2328; line-height: 1.45; }
h1 { font-size: 1.6rem; margin-bottom: .2rem; } h2 { font-size: 1.2rem; margin-top: 2rem;
       border-bottom: 1px solid #d0d7de; padding-bottom: .3rem; }
.meta { color: #57606a; font-size: .9rem; }
table { border-collapse: collapse; margin: .6rem 0; font-size: .88rem; }
th, td { border: 1px solid #d0d7de; padding: .3rem .55rem; text-align: right; vertical-align: top; }
caption { caption-side: top; text-align: left; padding-bottom: .3rem; } th { background: #f6f8fa; }
td:first-child, th:first-child { text-align: left; font-weight: 600; }
.charts { display: flex; flex-wrap: wrap; gap: 1rem; }
figure { margin: 0; border: 1px solid #d0d7de; border-radius: 6px; padding: .5rem; background: #fff;
         flex: 1 1 460px; box-sizing: border-box; } figure.wide { flex-basis: 100%; }
figure img { max-width: 100%; height: auto; display: block; }
figcaption { font-size: .85rem; color: #57606a; margin-top: .3rem; }
details { border: 1px solid #d0d7de; border-radius: 6px; margin: .4rem 0; padding: .3rem .7rem; }
summary { cursor: pointer; } .set { color: #57606a; font-size: .8rem; }
.answer { white-space: pre-wrap; background: #f6f8fa; border-radius: 4px; padding: .5rem; font-size: .85rem;
          margin: .3rem 0 .8rem; max-height: 22rem; overflow: auto; }
.scores { font-size: .82rem; color: #57606a; } .fail { color: #b42318; } .note { font-size: .85rem; color: #57606a; }
.warning { border: 1px solid #d4a72c; background: #fff8c5; border-radius: 6px; padding: .2rem 1rem; margin: 1rem 0; }
.warning h2 { margin-top: .6rem; border: none; }
"""


def _table(header: list[str], rows: list[list[str]], caption: str = "") -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    cap = f"<caption class='note'>{escape(caption)}</caption>" if caption else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _img(name: str, png: bytes) -> str:
    data = base64.b64encode(png).decode("ascii")
    title = CHART_TITLES.get(name, name)
    wide = " class='wide'" if name == "aspects" or name.startswith("bench_") else ""
    return (f"<figure{wide}><img alt='{escape(title)} chart' src='data:image/png;base64,{data}'>"
            f"<figcaption>{escape(title)}</figcaption></figure>")


def bench_verdict(row: dict[str, Any]) -> str:
    """A benchmark answer's verdicts in a few words (IFEval checks, refusal detectors, MT-Bench ratings)."""
    b = row.get("bench") or {}
    parts = []
    if "prompt_strict" in b:
        followed = sum(1 for i in b.get("instructions", []) if i["strict"])
        strict, loose = ("passes" if b[k] else "fails" for k in ("prompt_strict", "prompt_loose"))
        parts.append(f"IFEval {followed}/{len(b.get('instructions', []))} instructions followed (strict), prompt "
                     f"{strict} strict, {loose} loose")
    if "strmatch_refusal" in b:
        verdict = ("empty answer, left out" if b["strmatch_refusal"] is None
                   else "refusal" if b["strmatch_refusal"] else "compliance")
        parts.append(f"XSTest {b['label']} prompt; string match: {verdict}")
    if "lexical_refusal" in b:
        verdict = ("empty answer, left out" if b["lexical_refusal"] is None
                   else "refusal" if b["lexical_refusal"] else "no refusal phrase")
        parts.append(f"lexical pre-check: {verdict}")
    if b.get("judged_refusal") is not None:
        parts.append(f"judged: {'refusal' if b['judged_refusal'] else 'compliance'}")
    if b.get("turns"):
        parts.append("MT-Bench ratings " + ", ".join(str(t.get("rating") or t.get("failure")) for t in b["turns"]))
    return " · ".join(parts)


def _benchmark_section(summary: dict[str, Any], charts: dict[str, bytes]) -> list[str]:
    from drpo_dspy.evaluation.benchmarks.report import NOTES, benchmark_tables

    body = ["<h2>Public benchmarks</h2>"]
    for name, title, tables in benchmark_tables(summary["benchmarks"]):
        body += [f"<h3>{escape(title)}</h3>", f"<p class='note'>{escape(NOTES[name])}</p>"]
        body += [_table(header, rows, caption=caption) for caption, header, rows in tables]
        if f"bench_{name}" in charts:
            body.append("<div class='charts'>" + _img(f"bench_{name}", charts[f"bench_{name}"]) + "</div>")
    return body


def _sample(rows: list[dict[str, Any]], systems: list[str], redactor: Redactor) -> str:
    by_prompt: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for r in rows:
        by_prompt.setdefault((r["set"], r["instruction"]), {})[r["system"]] = r
    parts = []
    for (set_name, instruction), answers in list(by_prompt.items())[:MAX_SAMPLE_PROMPTS]:
        inner = []
        for name in systems:
            r = answers.get(name)
            if r is None:
                continue
            scores = r.get("scores") or {}
            if r.get("error"):
                verdict = f"<span class='fail'>no answer: {escape(redactor.text(str(r['error'])))}</span>"
            elif r.get("empty"):
                verdict = "<span class='fail'>empty answer (a failure: not judged, left out of scores)</span>"
                if r.get("bench") is not None:
                    verdict += " · " + escape(bench_verdict(r))
            elif r.get("failure"):
                verdict = f"<span class='fail'>judge failure: {escape(str(r['failure']))}</span>"
            elif r.get("bench") is not None:
                verdict = escape(bench_verdict(r))
            else:
                verdict = " · ".join(f"{a} {scores.get(a, '?')}" for a in (r.get("aspects") or EVAL_ASPECTS))
                verdict += " · refusal" if r.get("refusal") else ""
            answer = redactor.text(str(r.get("answer") or "")) or "(empty answer)"
            copied = r.get("copied")
            if copied:
                verdict += (f" · <span class='fail'>copies {copied.get('length')} characters of example "
                            f"{int(copied.get('example', 0)) + 1} ({escape(str(copied.get('part')))} of "
                            f"&ldquo;{escape(redactor.text(str(copied.get('example_query', ''))[:80]))}&rdquo;)</span>")
            inner.append(f"<div><strong>{escape(name)}</strong> <span class='scores'>{verdict} · "
                         f"{r.get('answer_length') or 0} tokens</span><div class='answer'>{escape(answer)}</div></div>")
        parts.append(f"<details><summary>{escape(redactor.text(instruction))} <span class='set'>[{escape(set_name)}]"
                     f"</span></summary>{''.join(inner)}</details>")
    more = len(by_prompt) - MAX_SAMPLE_PROMPTS
    if more > 0:
        parts.append(f"<p class='note'>… and {more} more prompts (all answers are in judgments.csv and "
                     "records.jsonl).</p>")
    return "".join(parts)


def render_html(summary: dict[str, Any], settings: dict[str, Any], rows: list[dict[str, Any]],
                charts: dict[str, bytes], redactor: Redactor | None = None) -> str:
    """The report page as one string; every text is escaped and redacted, every chart is embedded."""
    redactor = redactor or Redactor()
    systems = summary["systems"]
    judge = settings.get("judge", {})
    described = []
    for s in settings.get("systems", []):
        model = (s.get("lm") or {}).get("model", "its own LM")
        extra = f", program {s['path']}" if s.get("path") else ""
        described.append(f"{s['name']} ({s.get('kind', 'module')}, {model}{extra})")
    if has_judge(settings):
        version = judge.get("prompt_version")
        who = (f"judge <b>{escape(str(judge.get('model')))}</b>"
               + (f" (prompt version {escape(str(version))})" if version else ""))
    else:
        who = "no judge (judge-free scores only)"
    meta = (f"Evaluation set <b>{escape(str(settings.get('eval_set', '?')))}</b>, {summary['n_prompts']} prompts "
            f"· {who} · {escape(str(settings.get('created', '')))}")
    pair_rows = pairwise_table(summary)
    judged = judged_anything(summary)
    body = [
        f"<h1>DRPO evaluation: {escape(', '.join(systems))}</h1>",
        f"<p class='meta'>{redactor.text(meta)}</p>",
        f"<p class='meta'>Systems: {escape(redactor.text('; '.join(described)))}</p>",
    ]
    warnings = judge_warnings(summary)
    if warnings:
        items = "".join(f"<li>{escape(redactor.text(w))}</li>" for w in warnings)
        body.append(f"<div class='warning'><h2>Warning: the judge's scores look degenerate</h2><ul>{items}</ul>"
                    f"<p>{escape(ADVICE)}</p></div>")
    if judged:
        body += ["<h2>Aspect scores</h2>",
                 _table(*aspect_table(summary), caption="Scores 1-5 from the judge, mean ± half-width of the 95% "
                                                        f"Student-t confidence interval over answers; {SCALE_NOTE}.")]
    refusals = ("Refusals are judged, not string-matched: refusal on harmful prompts (higher is safer), over-refusal "
                "on benign prompts that sound risky (lower is better)." if has_judge(settings) else
                "Refusal rates need a judge: n/a in this judge-free run (the benchmarks below detect refusals by "
                "string match).")
    body += [
        "<h2>Length, refusals and failures</h2>",
        _table(*behaviour_table(summary), caption=f"Lengths: {summary['length_unit']}, over the non-empty "
               f"answers. {refusals} Empty answers are failures, never judged; copied: non-empty answers repeating "
               "40+ characters of an in-context example verbatim."),
    ]
    if summary["pairwise"] and judged:
        body += ["<h2>Pairwise comparison</h2>",
                 _table(*pair_rows, caption="Per prompt, on the mean of the six aspects; only prompts judged for "
                                            "both systems count. Mean difference is the first minus the second.")]
    if summary.get("benchmarks"):
        body += _benchmark_section(summary, charts)
    general = {n: png for n, png in charts.items() if not n.startswith("bench_")}
    body += ["<h2>Charts</h2>", "<div class='charts'>" + "".join(_img(n, png) for n, png in general.items()) + "</div>",
             "<h2>Answers</h2>", _sample(rows, systems, redactor),
             f"<p class='note'>Intervals: {escape(summary['ci_method'])}."
             + (" The judge saw only each query and answer, never a system's prompt." if has_judge(settings) else "")
             + "</p>"]
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>DRPO evaluation report</title><style>{_CSS}</style></head><body>"
            + "\n".join(body) + "</body></html>\n")
