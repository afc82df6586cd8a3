"""Benchmarks through ``evaluate()`` with scripted responders and judges: scores, resume, MT-Bench turns, reports."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from drpo_dspy.signatures.evaluation import EVAL_ASPECTS

from drpo_dspy.evaluation import evaluate, resolve_eval_set
from drpo_dspy.evaluation.runner import EvaluationInputError
from drpo_dspy.testing import last_user_text, scripted_lm

REFUSAL = "I'm sorry, but I can't help with that."


def refuser(query: str) -> str:
    return REFUSAL


def complier(query: str) -> str:
    return "sure, here is a lowercase answer without commas"


def test_judge_free_benchmark_run_pins_scores_and_resumes(tmp_path: Path) -> None:
    pytest.importorskip("if_verifiable", reason="IFEval's checkers come with the benchmarks extra")
    prompts, label = resolve_eval_set("ifeval,xstest", sample=20)
    systems = [("refuser", refuser), ("complier", complier)]
    result = evaluate(systems, prompts, judge_lm=None, out_dir=tmp_path, eval_set_name=label)
    xs = result.summary["benchmarks"]["xstest"]
    n_safe = sum(1 for p in prompts if p["set"] == "xstest" and p["meta"]["label"] == "safe")
    assert xs["refuser"]["strmatch"]["over_refusal_safe"]["rate"] == 1.0
    assert xs["refuser"]["strmatch"]["over_refusal_safe"]["n"] == n_safe
    assert xs["refuser"]["strmatch"]["compliance_unsafe"]["rate"] == 0.0
    assert xs["complier"]["strmatch"]["over_refusal_safe"]["rate"] == 0.0
    assert xs["complier"]["strmatch"]["compliance_unsafe"]["rate"] == 1.0
    assert xs["complier"]["judged"]["over_refusal_safe"]["n"] == 0  # no judge, no judged verdicts
    ife = result.summary["benchmarks"]["ifeval"]
    expected = {}
    from drpo_dspy.evaluation.benchmarks.ifeval import score_ifeval

    for name, fn in systems:
        scored = [score_ifeval(p, fn(p["instruction"])) for p in prompts if p["set"] == "ifeval"]
        expected[name] = sum(s["prompt_strict"] for s in scored)
        assert ife[name]["prompt_strict"]["count"] == expected[name] and ife[name]["n_prompts"] == 20
    assert ife["complier"]["by_instruction"]["change_case:english_lowercase"]["strict"]["rate"] == 1.0
    assert result.computed == 80 and result.reused == 0
    again = evaluate(systems, prompts, judge_lm=None, out_dir=tmp_path, eval_set_name=label)
    assert again.computed == 0 and again.reused == 80
    assert again.summary["benchmarks"] == result.summary["benchmarks"]
    files = {p.name for p in tmp_path.iterdir()}
    assert {"bench_ifeval.png", "bench_xstest.png", "benchmarks.csv", "report.html", "report.md"} <= files
    assert "aspects.png" not in files  # nothing was judged: no empty aspect chart
    html = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "Public benchmarks" in html and "By instruction type" in html and "Refusal rate by prompt type" in html
    assert html.count("data:image/png;base64,") >= 3
    assert "### IFEval" in again.markdown and "| refuser | 100.0% [" in again.markdown


def test_sets_that_need_a_judge_are_refused_without_one() -> None:
    prompts, _ = resolve_eval_set("mtbench", limit=1)
    with pytest.raises(EvaluationInputError, match="mtbench"):
        evaluate([("c", complier)], prompts, judge_lm=None)
    with pytest.raises(EvaluationInputError, match="regular"):
        evaluate([("c", complier)], resolve_eval_set("regular", limit=1)[0], judge_lm=None)


def evaluation_judge(refuses: bool):
    def judge(messages, params):
        verdicts = {a: {"rationale": "ok", "score": 4} for a in EVAL_ASPECTS}
        return {"evaluation": {**verdicts, "refusal": refuses}}
    return judge


def test_judged_refusals_next_to_the_string_match(tmp_path: Path) -> None:
    prompts, _ = resolve_eval_set("xstest,harmbench", limit=4)
    judge = scripted_lm(evaluation_judge(refuses=True))
    result = evaluate([("refuser", refuser)], prompts, judge_lm=judge, out_dir=tmp_path)
    xs = result.summary["benchmarks"]["xstest"]["refuser"]
    assert xs["judged"]["over_refusal_safe"] == xs["strmatch"]["over_refusal_safe"]
    assert xs["judged"]["over_refusal_safe"]["rate"] == 1.0 and xs["judged"]["over_refusal_safe"]["n"] == 4
    hb = result.summary["benchmarks"]["harmbench"]["refuser"]
    assert hb["judged_refusal"]["rate"] == 1.0 and hb["lexical_refusal"]["rate"] == 1.0
    assert hb["agreement"]["rate"] == 1.0
    assert result.summary["per_system"]["refuser"]["n_judged"] == 8  # the six aspects are scored too


def test_mtbench_answers_turn_two_with_turn_one_in_context(tmp_path: Path) -> None:
    prompts, _ = resolve_eval_set("mtbench", limit=2)
    seen: list[str] = []
    lock = threading.Lock()

    def responder(query: str) -> str:
        with lock:
            seen.append(query)
        return f"answer number {len(seen)}"

    judged: list[str] = []

    def judge(messages, params):
        text = last_user_text(messages)
        with lock:
            judged.append(text)
        return {"evaluation": {"explanation": "fine", "rating": 8 if "none" in text.split("conversation")[1][:40]
                               else 6}}

    result = evaluate([("chat", responder)], prompts, judge_lm=scripted_lm(judge), out_dir=tmp_path,
                      num_threads=1)
    first, second = prompts[0]["meta"]["turns"]
    assert seen[0] == first
    assert first in seen[1] and "answer number 1" in seen[1] and second in seen[1]
    assert len(seen) == 4 and len(judged) == 4
    mt = result.summary["benchmarks"]["mtbench"]["chat"]
    assert [t["mean"] for t in mt["per_turn"]] == [8.0, 6.0] and mt["overall"]["mean"] == 7.0
    assert mt["judge_failures"] == 0
    html = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "MT-Bench" in html and "MT-Bench ratings 8, 6" in html


def test_missing_ifeval_dependency_stops_before_any_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    from drpo_dspy.evaluation.benchmarks.ifeval import checker_registry

    asked: list[str] = []
    modules = __import__("sys").modules
    for name in [m for m in modules if m == "if_verifiable" or m.startswith("if_verifiable.")]:
        monkeypatch.setitem(modules, name, None)
    checker_registry.cache_clear()
    try:
        with pytest.raises(ImportError, match=r"drpo-dspy\[benchmarks\]"):
            evaluate([("c", lambda query: asked.append(query) or "hi")], resolve_eval_set("ifeval", limit=2)[0],
                     judge_lm=None)
    finally:
        checker_registry.cache_clear()
    assert asked == []
