"""A degenerate judge is named in the evaluation summary and reports; a judge that reads the answers is not."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from drpo_dspy.evaluation import EVAL_ASPECTS, evaluate
from drpo_dspy.evaluation.formatting import fmt_mean
from drpo_dspy.evaluation.judge_health import assess_judge
from drpo_dspy.evaluation.plotting import clipped_err
from drpo_dspy.testing import last_user_text, scripted_lm

PROMPTS = [{"instruction": q, "set": "regular", "category": "c"} for q in
           ("Plan a trip to Lisbon.", "Explain tides.", "Write a haiku about rain.", "How do I boil an egg?")]


def _field(messages, name: str) -> str:
    match = re.search(rf"\[\[ ## {name} ## \]\]\n(.*?)(?=\n\n\[\[ ## |\n\nRespond with|\Z)",
                      last_user_text(messages), re.S)
    return match.group(1).strip() if match else ""


def _base(messages, params):
    query = last_user_text(messages).split("# Query:\n", 1)[1].split("\n\n# Answer:")[0]
    return f"An answer about {query} " + "word " * (3 + len(query) % 7) + "\n<END>"


def degenerate_judge(messages, params):
    """What the embedded 135M judge did: 1 on everything, one copied sentence as every rationale."""
    return {"evaluation": {**{a: {"rationale": "The response is helpful and clear.", "score": 1}
                              for a in EVAL_ASPECTS}, "refusal": False}}


def healthy_judge(messages, params):
    query, response = _field(messages, "query"), _field(messages, "response")
    verdicts = {}
    for i, a in enumerate(EVAL_ASPECTS):
        score = 1 + (len(query) + 3 * i + len(response)) % 5
        verdicts[a] = {"rationale": f"On {a}, the answer to '{query}' ({len(response.split())} words) earns {score}.",
                       "score": score}
    return {"evaluation": {**verdicts, "refusal": False}}


def _evaluate(judge, out: Path, name: str):
    return evaluate(["base"], PROMPTS, base_lm=scripted_lm(_base), judge_lm=scripted_lm(judge, name=name),
                    out_dir=out, eval_set_name="four", num_threads=2)


def test_a_degenerate_judge_is_named_in_the_summary_and_both_reports(tmp_path):
    result = _evaluate(degenerate_judge, tmp_path, "tiny-judge")
    health = json.loads((tmp_path / "summary.json").read_text())["summary"]["judge_health"]
    assert health["healthy"] is False and health["judge_model"] == "scripted/tiny-judge"
    assert {s["sign"] for s in health["signs"]} == {"single_score", "copied_rationale"}
    assert all("scripted/tiny-judge" in w for w in health["warnings"])
    assert any("one score, 1, on every aspect of all 4 judged answers" in w for w in health["warnings"])
    assert any('same rationale for 4 of 4 judged answers: "The response is helpful and clear."' in w
               for w in health["warnings"])
    markdown = (tmp_path / "report.md").read_text()
    assert markdown == result.markdown and "## Warning: the judge's scores look degenerate" in markdown
    assert "stronger judge" in markdown
    html = (tmp_path / "report.html").read_text()
    assert "class='warning'" in html and "scripted/tiny-judge" in html.split("class='warning'", 1)[1]


def test_a_judge_that_reads_the_answers_raises_no_warning(tmp_path):
    result = _evaluate(healthy_judge, tmp_path, "good-judge")
    health = json.loads((tmp_path / "summary.json").read_text())["summary"]["judge_health"]
    assert health == {"judge_model": "scripted/good-judge", "healthy": True, "n_judged": 4, "signs": [],
                      "warnings": []}
    assert "Warning" not in result.markdown
    assert "class='warning'" not in (tmp_path / "report.html").read_text()


def _rows(scores, rationales):
    return [{"system": "s", "scores": dict(zip(EVAL_ASPECTS, sc, strict=False)),
             "rationales": dict(zip(EVAL_ASPECTS, ra, strict=False)), "failure": None}
            for sc, ra in zip(scores, rationales, strict=True)]


def test_each_sign_on_its_own():
    varied = [[f"reason {i}-{j}" for j in range(6)] for i in range(4)]
    constant = assess_judge(_rows([[3, 4, 3, 4, 3, 4]] * 4, varied), "m")
    assert [s["sign"] for s in constant["signs"]] == ["constant_scores"]
    assert "judge m gave s the same score on each aspect for all 4 judged answers" in constant["warnings"][0]
    numbers = assess_judge(_rows([[1, 2, 3, 4, 5, 1], [2, 3, 4, 5, 1, 2], [3, 4, 5, 1, 2, 3]],
                                 [["1.0", "2.0", "3", "4/5", "", "1"]] * 3), "m")
    signs = [s["sign"] for s in numbers["signs"]]
    assert "numeric_rationales" in signs
    warning = numbers["warnings"][signs.index("numeric_rationales")]
    assert '18 of 18 rationales are only a number (e.g. "1.0")' in warning
    too_few = assess_judge(_rows([[1] * 6] * 2, [["same"] * 6] * 2), "m")  # two answers prove nothing
    assert too_few["healthy"] and too_few["warnings"] == []
    failed = _rows([[1] * 6] * 4, [["same"] * 6] * 4)
    for row in failed:
        row["failure"] = "parse_failure"
    assert assess_judge(failed, "m")["n_judged"] == 0 and assess_judge(failed, "m")["healthy"]


def test_intervals_are_shown_within_the_scale():
    wide = {"mean": 2.5, "half_width": 19.06, "ci_low": 2.5 - 19.06, "ci_high": 2.5 + 19.06, "n": 2}
    assert fmt_mean(wide, scale=(1.0, 5.0)) == "2.50 [1.00, 5.00]"
    assert fmt_mean(wide) == "2.50 ± 19.06"  # no scale, no clipping (e.g. a difference of lengths)
    narrow = {"mean": 4.2, "half_width": 0.31, "ci_low": 3.89, "ci_high": 4.51, "n": 30}
    assert fmt_mean(narrow, scale=(1.0, 5.0)) == "4.20 ± 0.31"
    top = {"mean": 4.5, "half_width": 0.9, "ci_low": 3.6, "ci_high": 5.4, "n": 4}
    assert fmt_mean(top, scale=(1.0, 5.0)) == "4.50 [3.60, 5.00]"
    below, above = clipped_err([wide, top, {"mean": None}], (1.0, 5.0))
    assert below == pytest.approx([1.5, 0.9, 0.0]) and above == pytest.approx([2.5, 0.5, 0.0])


def test_two_spread_answers_report_a_clipped_interval(tmp_path):
    def judge(messages, params):
        score = 1 if "Lisbon" in _field(messages, "query") else 4
        return {"evaluation": {**{a: {"rationale": f"{a}: {score} for this one", "score": score}
                                  for a in EVAL_ASPECTS}, "refusal": False}}

    result = evaluate(["base"], PROMPTS[:2], base_lm=scripted_lm(_base), judge_lm=scripted_lm(judge),
                      out_dir=tmp_path, eval_set_name="two")
    assert "| base | 2.50 [1.00, 5.00] |" in result.markdown  # not 2.50 ± 19.06
    assert "19.06" not in result.markdown and "19.06" not in (tmp_path / "report.html").read_text()


def test_a_judge_free_report_speaks_of_no_judge(tmp_path):
    from drpo_dspy.evaluation import resolve_eval_set

    prompts, label = resolve_eval_set("xstest", sample=4)
    def refuser(query: str) -> str:
        return "I'm sorry, but I can't help with that."

    result = evaluate([("refuser", refuser)], prompts, judge_lm=None, out_dir=tmp_path, eval_set_name=label)
    html = (tmp_path / "report.html").read_text()
    for text in (result.markdown, html):
        assert "as judged by the judge" not in text and "prompt version ?" not in text
        assert "judge none" not in text.lower() and "Judge: none" not in text
        assert "no judge (judge-free scores only)" in text.lower()
        assert "The judge saw only" not in text
    summary = json.loads((tmp_path / "summary.json").read_text())["summary"]
    assert "judge_health" not in summary  # nothing was judged
