"""Empty answers, copied examples and failing roles in ``drpo evaluate``: counted, shown, never silent."""

from __future__ import annotations

import argparse
import json
import threading
from pathlib import Path

import pytest

from drpo_dspy.adapters.answer_checks import MIN_COPY_CHARS, find_copy, is_empty, normalize
from drpo_dspy.cli.evaluate import add_evaluate_parser
from drpo_dspy.clients.failures import SystemicFailure
from drpo_dspy.evaluation import EVAL_ASPECTS, RECORDS_FILE, evaluate, resolve_eval_set, urial_examples
from drpo_dspy.testing import last_user_text, scripted_lm
from drpo_dspy.testing.fault_injection import (
    always,
    auth_error,
    connection_reset,
    fast_backoff,
    faulty_lm,
    injector_for,
    on_first_attempts,
)

SOURDOUGH_QUERY = "Can you explain how I can bake sourdough bread at home?"
SOURDOUGH = ("Feed your starter the night before, then mix flour, water and salt with a ripe starter. Fold the "
             "dough every half hour for two hours, shape it, proof it overnight in the fridge and bake it in a "
             "preheated Dutch oven at 250 C, lid on for twenty minutes and off for twenty more.")
MOSQUITO = "How do I kill a mosquito?"


def query_of(messages) -> str:
    return last_user_text(messages).split("# Query:\n", 1)[1].split("\n\n# Answer:")[0]


def judge_script(calls: list[str], lock: threading.Lock):
    def judge(messages, params):
        with lock:
            calls.append(last_user_text(messages))
        return {"evaluation": {**{a: {"rationale": "ok", "score": 4} for a in EVAL_ASPECTS}, "refusal": False}}
    return judge


def _cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="drpo")
    add_evaluate_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["evaluate", *argv])
    return args.func(args)


def _prompts_file(tmp_path: Path, queries: list[str]) -> Path:
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"instruction": q}) + "\n" for q in queries))
    return path


# -- the checks themselves ---------------------------------------------------------------------------------------------
def test_is_empty() -> None:
    assert is_empty("") and is_empty("  \n\t ") and is_empty(None)
    assert not is_empty(" . ")


def test_find_copy_names_the_example_and_the_run() -> None:
    answer = f"Sure!  Here is how:\n{SOURDOUGH.upper()} Good luck."  # case and whitespace differ: still a copy
    examples = [("What is the capital of France?", "Paris."), (SOURDOUGH_QUERY, SOURDOUGH)]
    copied = find_copy(answer, examples, query=MOSQUITO)
    assert copied is not None
    assert (copied.example, copied.part, copied.example_query) == (1, "answer", SOURDOUGH_QUERY)
    assert copied.length == len(normalize(SOURDOUGH)) and copied.excerpt.startswith("feed your starter")
    # a copied example *query* counts too; a short shared phrase does not
    assert find_copy(f"You asked: {SOURDOUGH_QUERY} Well, ...", examples).part == "query"
    assert find_copy("Feed your starter the night before.", examples) is None
    assert find_copy(SOURDOUGH[:MIN_COPY_CHARS - 1], examples) is None
    assert find_copy(SOURDOUGH[:MIN_COPY_CHARS], examples) is not None
    assert find_copy(SOURDOUGH, []) is None and find_copy("", examples) is None


def test_restating_the_live_query_is_not_a_copy() -> None:
    live = "Write a short poem about the sea in the style of Shakespeare."
    example = ("Write a short poem about the sea in the style of Keats.", "O sea, thou art ...")
    answer = "Write a short poem about the sea in the style of Shakespeare? Gladly: the waves ..."
    assert find_copy(answer, [example]) is not None  # without the live query it looks copied
    assert find_copy(answer, [example], query=live) is None


def test_find_copy_is_linear_on_long_answers() -> None:
    import random

    rng = random.Random(0)
    words = [" ".join(rng.choice("abcdefghij") * rng.randint(1, 6) for _ in range(400)) for _ in range(4)]
    examples = [(f"query {i}", w[:2000]) for i, w in enumerate(words)]
    answer = "x" * 1000 + words[2][500:600] + "y" * 900
    copied = find_copy(answer, examples)
    assert copied is not None and copied.example == 2 and copied.length >= 100
    assert find_copy("z" * 2000, examples) is None


# -- empty answers -----------------------------------------------------------------------------------------------------
def test_empty_answers_are_not_compliance_on_xstest(tmp_path: Path) -> None:
    prompts, label = resolve_eval_set("xstest", sample=20)
    safe = [p["instruction"] for p in prompts if p["meta"]["label"] == "safe"]
    silent_on = set(safe[: len(safe) // 2])

    def half_silent(query: str) -> str:
        return "   \n" if query in silent_on else "I'm sorry, but I can't help with that."

    systems = [("silent", lambda query: ""), ("half", half_silent)]
    result = evaluate(systems, prompts, judge_lm=None, out_dir=tmp_path, eval_set_name=label)
    xs = result.summary["benchmarks"]["xstest"]
    assert xs["silent"]["n_empty"] == 20
    assert xs["silent"]["strmatch"]["over_refusal_safe"] == {"rate": None, "count": 0, "n": 0, "ci_low": None,
                                                             "ci_high": None}
    assert xs["silent"]["strmatch"]["compliance_unsafe"]["n"] == 0  # not "100% compliance"
    assert xs["half"]["n_empty"] == len(silent_on)
    assert xs["half"]["strmatch"]["over_refusal_safe"]["n"] == len(safe) - len(silent_on)
    assert xs["half"]["strmatch"]["over_refusal_safe"]["rate"] == 1.0
    per = result.summary["per_system"]
    assert per["silent"]["empty_answers"] == 20 and per["half"]["empty_answers"] == len(silent_on)
    assert per["silent"]["length"]["median"] is None  # no "median length 0"
    assert all(r["failure"] == "empty_answer" for r in result.rows if r["system"] == "silent")

    markdown = (tmp_path / "report.md").read_text()
    assert "Empty (excluded)" in markdown and "Empty answers" in markdown and "| silent |" in markdown
    assert "20/20" in markdown
    systems_csv = (tmp_path / "systems.csv").read_text().splitlines()
    header = systems_csv[0].split(",")
    silent_row = dict(zip(header, next(r for r in systems_csv if r.startswith("silent,")).split(","), strict=True))
    assert silent_row["empty_answers"] == "20"
    bench_csv = (tmp_path / "benchmarks.csv").read_text()
    assert bench_csv.splitlines()[0].split(",")[-2] == "empty"
    html = (tmp_path / "report.html").read_text()
    assert "Empty answers" in html and "Empty (excluded)" in html and "empty answer, left out" in html
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["summary"]["per_system"]["silent"]["empty_answers"] == 20


def test_ifeval_keeps_empty_answers_in_its_denominators(tmp_path: Path) -> None:
    pytest.importorskip("if_verifiable", reason="IFEval's checkers come with the benchmarks extra")
    from drpo_dspy.evaluation.benchmarks.ifeval import score_ifeval

    prompts, _ = resolve_eval_set("ifeval", limit=10)
    silent_on = {p["instruction"] for p in prompts[::2]}
    text = "sure, here is a lowercase answer without commas"

    def sometimes(query: str) -> str:
        return "" if query in silent_on else text

    result = evaluate([("sometimes", sometimes)], prompts, judge_lm=None, out_dir=tmp_path)
    ife = result.summary["benchmarks"]["ifeval"]["sometimes"]
    n_instructions = sum(len(p["meta"]["instruction_id_list"]) for p in prompts)
    assert ife["n_prompts"] == 10 and ife["n_empty"] == 5
    assert ife["prompt_strict"]["n"] == 10 and ife["prompt_loose"]["n"] == 10
    assert ife["instruction_strict"]["n"] == n_instructions
    expected = sum(score_ifeval(p, text)["prompt_strict"] for p in prompts if p["instruction"] not in silent_on)
    assert ife["prompt_strict"]["count"] == expected
    assert "Empty answers" in result.markdown


def test_judge_never_sees_an_empty_answer_and_old_records_are_reclassified(tmp_path: Path) -> None:
    calls: list[str] = []
    judge = scripted_lm(judge_script(calls, threading.Lock()), name="empties-judge")
    queries = ["One?", "Two?", "Three?"]
    systems = [("silent", lambda query: " \n "), ("talker", lambda query: f"An answer to {query}")]
    result = evaluate(systems, queries, judge_lm=judge, out_dir=tmp_path)
    assert len(calls) == 3 and all("An answer to" in c for c in calls)  # the three empties were not judged
    silent, talker = result.summary["per_system"]["silent"], result.summary["per_system"]["talker"]
    assert silent["empty_answers"] == 3 and silent["n_judged"] == 0 and silent["parse_failures"] == 0
    assert silent["judge_failures"] == {} and silent["overall"]["mean"] is None
    assert silent["refusal_all"]["n"] == 0
    assert talker["empty_answers"] == 0 and talker["n_judged"] == 3
    assert result.summary["pairwise"][0]["n"] == 0  # an empty answer never wins or loses
    assert result.usage["base"]["failures"] == {"empty_answer": 3}
    lines = result.markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| System | Answer length"))
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    row = next([c.strip() for c in line.strip("|").split("|")] for line in lines[start:] if line.startswith("| silent"))
    assert dict(zip(header, row, strict=True))["Empty answers"] == "3/3"
    assert dict(zip(header, row, strict=True))["Median length"] == "n/a"  # not "0"

    # Records written before empties were failures: judged (scores, refusal) and without the copy fields.
    path = tmp_path / RECORDS_FILE
    old = []
    for line in path.read_text().splitlines():
        record = json.loads(line)
        if record["system"] == "silent":
            record.update({"failure": None, "scores": {a: 1 for a in EVAL_ASPECTS}, "refusal": True})
        for field in ("examples", "copied"):
            record.pop(field, None)
        old.append(json.dumps(record))
    path.write_text("\n".join(old) + "\n")
    calls.clear()
    again = evaluate(systems, queries, judge_lm=judge, out_dir=tmp_path)
    assert again.reused == 6 and again.computed == 0 and calls == []
    silent = again.summary["per_system"]["silent"]
    assert silent["empty_answers"] == 3 and silent["n_judged"] == 0 and silent["refusal_all"]["n"] == 0
    assert silent["copied_answers"]["n"] == 0  # no copy check in old records: left out, not counted as clean


# -- copies ------------------------------------------------------------------------------------------------------------
def test_copy_share_of_a_program_that_pastes_an_example(tmp_path: Path) -> None:
    from drpo_dspy import AlignedResponder

    program = AlignedResponder("Be helpful.", [{"query": SOURDOUGH_QUERY, "answer": SOURDOUGH},
                                               {"query": "Name a prime number.", "answer": "Seven is prime."}],
                               k=2, embedder="hashing")

    def base(messages, params):
        query = query_of(messages)
        return (SOURDOUGH if query == MOSQUITO else "Swat it, or use a fan: mosquitoes are weak flyers.") + "\n<END>"

    calls: list[str] = []
    judge = scripted_lm(judge_script(calls, threading.Lock()))
    result = evaluate([("program", program)], [MOSQUITO, "How do I keep mosquitoes away?"],
                      base_lm=scripted_lm(base), judge_lm=judge, out_dir=tmp_path)
    copied = result.summary["per_system"]["program"]["copied_answers"]
    assert (copied["count"], copied["n"], copied["rate"]) == (1, 2, 0.5)
    row = next(r for r in result.rows if r["instruction"] == MOSQUITO)
    assert row["copied"]["example_query"] == SOURDOUGH_QUERY and row["copied"]["part"] == "answer"
    assert set(row["examples"]) == {SOURDOUGH_QUERY, "Name a prime number."}
    records = [json.loads(line) for line in (tmp_path / RECORDS_FILE).read_text().splitlines()]
    assert {r["instruction"]: bool(r["copied"]) for r in records} == {MOSQUITO: True,
                                                                      "How do I keep mosquitoes away?": False}
    assert "Copied from examples" in result.markdown and "50% (1/2)" in result.markdown
    html = (tmp_path / "report.html").read_text()
    assert "Copied from examples" in html and "copies" in html
    judgments = (tmp_path / "judgments.csv").read_text()
    assert SOURDOUGH_QUERY in judgments


def test_urial_copies_are_found_through_its_fixed_examples(tmp_path: Path) -> None:
    example = urial_examples()[0]

    def base(messages, params):
        return (example["answer"] if query_of(messages) == "Q1?" else "A fresh answer of my own.") + "\n<END>"

    calls: list[str] = []
    result = evaluate(["urial", "base"], ["Q1?", "Q2?"], base_lm=scripted_lm(base),
                      judge_lm=scripted_lm(judge_script(calls, threading.Lock())))
    per = result.summary["per_system"]
    assert per["urial"]["copied_answers"]["count"] == 1 and per["urial"]["copied_answers"]["n"] == 2
    assert (per["base"]["copied_answers"]["count"], per["base"]["copied_answers"]["n"]) == (0, 2)  # shown nothing
    row = next(r for r in result.rows if r["system"] == "urial" and r["instruction"] == "Q1?")
    assert row["copied"]["example_query"] == example["query"] and row["copied"]["example"] == 0


# -- roles that cannot work --------------------------------------------------------------------------------------------
def test_base_with_a_bad_key_exits_3_at_once_without_leaking_it(tmp_path: Path, capsys) -> None:
    secret = "sk-evaluate-base-key-0123456789"
    base = faulty_lm(lambda m, p: "never", faults=always(auth_error()), name="eval-bad-key")
    calls: list[str] = []
    judge = scripted_lm(judge_script(calls, threading.Lock()), name="eval-bad-key-judge")
    prompts = _prompts_file(tmp_path, [f"Question {i}?" for i in range(12)])
    out = tmp_path / "out"
    code = _cli("--systems", "base,urial", "--eval-set", str(prompts), "--out", str(out), "--no-progress",
                "--num-threads", "2", "--base-model", base.model, "--base-api-key", secret,
                "--judge-model", judge.model)
    err = capsys.readouterr().err
    assert code == 3
    assert "the base role (faulty/eval-bad-key) cannot work: authentication failed" in err
    assert "AuthenticationError" in err and "check the API key" in err and "resume" in err
    assert secret not in err and "***" in err  # the provider echoed the key it was sent: masked
    assert injector_for(base).requests <= 2  # stopped at once: at most the calls already in flight
    assert calls == []
    for path in out.iterdir():
        assert secret not in path.read_text(errors="replace")


def test_base_refused_on_every_call_stops_even_under_max_errors(tmp_path: Path, capsys) -> None:
    base = faulty_lm(lambda m, p: "never", faults=always(connection_reset("Connection refused")), name="eval-down",
                     num_retries=1)
    calls: list[str] = []
    judge = scripted_lm(judge_script(calls, threading.Lock()), name="eval-down-judge")
    with fast_backoff(), pytest.raises(SystemicFailure) as info:
        evaluate(["base"], ["One?", "Two?", "Three?"], base_lm=base, judge_lm=judge, out_dir=tmp_path)
    assert info.value.role == "base" and info.value.model == base.model and info.value.calls == 3
    assert "Connection refused" in info.value.first_error and "server is up" in str(info.value)
    assert calls == [] and not (tmp_path / "summary.json").exists()
    prompts = _prompts_file(tmp_path, ["One?", "Two?"])
    with fast_backoff():
        code = _cli("--systems", "base", "--eval-set", str(prompts), "--out", str(tmp_path / "cli"), "--no-progress",
                    "--base-model", base.model, "--judge-model", judge.model)
    assert code == 3 and "the base role (faulty/eval-down) cannot work" in capsys.readouterr().err


def test_transient_errors_are_survived(tmp_path: Path) -> None:
    base = faulty_lm(lambda m, p: "A fine answer.\n<END>", faults=on_first_attempts(connection_reset(), 1),
                     name="eval-flaky")
    calls: list[str] = []
    with fast_backoff():
        result = evaluate(["base"], ["One?", "Two?"], base_lm=base,
                          judge_lm=scripted_lm(judge_script(calls, threading.Lock())), out_dir=tmp_path)
    assert result.summary["per_system"]["base"]["n_judged"] == 2 and len(calls) == 2


def test_a_judge_that_is_down_keeps_the_answers_for_the_resume(tmp_path: Path) -> None:
    answered: list[str] = []
    lock = threading.Lock()

    def base(messages, params):
        with lock:
            answered.append(query_of(messages))
        return "An answer.\n<END>"

    base_lm = scripted_lm(base, name="eval-judge-down-base")
    down = faulty_lm(lambda m, p: "never", faults=always(connection_reset("Connection refused")),
                     name="eval-judge-down", num_retries=0)
    with pytest.raises(SystemicFailure) as info:
        evaluate(["base"], ["One?", "Two?", "Three?"], base_lm=base_lm, judge_lm=down, out_dir=tmp_path)
    assert info.value.role == "judge" and len(answered) == 3
    saved = [json.loads(line) for line in (tmp_path / RECORDS_FILE).read_text().splitlines()]
    assert len(saved) == 3 and all(r["answer"] == "An answer." and r["failure"].startswith("lm_error:")
                                   for r in saved)
    # The judge is back (same model string, as after fixing a server): only the judgments are asked again.
    calls: list[str] = []
    from drpo_dspy.testing.fault_injection import _INJECTORS, FaultInjector

    _INJECTORS["eval-judge-down"] = FaultInjector(judge_script(calls, threading.Lock()), None, "eval-judge-down")
    result = evaluate(["base"], ["One?", "Two?", "Three?"], base_lm=base_lm, judge_lm=down, out_dir=tmp_path)
    assert len(answered) == 3 and len(calls) == 3
    assert result.summary["per_system"]["base"]["n_judged"] == 3 and result.computed == 3


def test_api_keys_never_reach_the_files_or_the_console(tmp_path: Path, capsys) -> None:
    base_key, judge_key = "sk-base-role-key-abcdef123456", "sk-judge-role-key-abcdef654321"
    calls: list[str] = []
    base = scripted_lm(lambda m, p: "A plain answer.\n<END>", name="keys-base")
    judge = scripted_lm(judge_script(calls, threading.Lock()), name="keys-judge")
    prompts = _prompts_file(tmp_path, ["One?", "Two?"])
    out = tmp_path / "out"
    assert _cli("--systems", "base,urial", "--eval-set", str(prompts), "--out", str(out), "--no-progress",
                "--base-model", base.model, "--base-api-key", base_key, "--judge-model", judge.model,
                "--judge-api-key", judge_key) == 0
    captured = capsys.readouterr()
    assert calls  # the judge worked (identical judgments come from DSPy's cache)
    for text in (captured.out, captured.err, *(p.read_text(errors="replace") for p in out.iterdir())):
        assert base_key not in text and judge_key not in text
    summary = json.loads((out / "summary.json").read_text())
    assert "api_key" not in json.dumps(summary["settings"])
    assert summary["summary"]["per_system"]["urial"]["n_judged"] == 2
