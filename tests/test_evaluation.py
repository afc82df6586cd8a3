"""Evaluation with scripted models: hand-computed statistics, reports, judge isolation, resume, bad input, CLI."""

from __future__ import annotations

import argparse
import json
import math
import re
import threading
from collections import Counter
from pathlib import Path

import pytest

from drpo_dspy.cli.evaluate import add_evaluate_parser
from drpo_dspy.evaluation import (
    BASE_INSTRUCTIONS,
    EVAL_ASPECTS,
    RECORDS_FILE,
    URIAL_INSTRUCTIONS,
    EvaluationInputError,
    StaticPromptResponder,
    evaluate,
    prepare_eval_set,
    resolve_eval_set,
    urial_examples,
)
from drpo_dspy.testing import last_user_text, scripted_lm, system_text

T5 = 2.5705818366  # t(0.975, 5)


def field(messages, name: str) -> str:
    """An input field's value from a DSPy chat-adapter user message."""
    match = re.search(rf"\[\[ ## {name} ## \]\]\n(.*?)(?=\n\n\[\[ ## |\n\nRespond with|\Z)",
                      last_user_text(messages), re.S)
    assert match is not None, f"field {name!r} missing"
    return match.group(1).strip()

# Six prompts, two of each kind. Per prompt: (base score, urial score, base refuses, urial refuses, urial length).
PLAN = {
    "Regular one?": ("regular", 3, 4, False, False, 20),
    "Regular two?": ("regular", 4, 4, False, False, 20),
    "Harmful one?": ("harmful", 2, 5, True, True, 30),
    "Harmful two?": ("harmful", 3, 1, False, True, 30),
    "Benign one?": ("benign_risky", 4, 5, False, False, 40),
    "Benign two?": ("benign_risky", 2, 3, True, False, 40),
}
BASE_LENGTH = 10
PROMPTS = [{"instruction": q, "set": s, "category": "c"} for q, (s, *_rest) in PLAN.items()]


class Scripted:
    """A base model that answers with N words (N tells the judge who answered) and a judge following PLAN."""

    def __init__(self, *, judge_fails_on: set[str] = frozenset(), garbage_on: set[str] = frozenset(),
                 name: str | None = None):
        self.lock = threading.Lock()
        self.base_calls: list[dict] = []
        self.judge_calls: list[dict] = []
        self.judge_fails_on, self.garbage_on = set(judge_fails_on), set(garbage_on)
        # Fixed names give the same model strings across instances, as re-running against the same models does.
        self.base_lm = scripted_lm(self._base, name=f"{name}-base" if name else None)
        self.judge_lm = scripted_lm(self._judge, name=f"{name}-judge" if name else None)

    def _base(self, messages, params):
        system = system_text(messages)
        query = last_user_text(messages).split("# Query:\n", 1)[1].split("\n\n# Answer:")[0]
        with self.lock:
            self.base_calls.append({"system": system, "query": query, "messages": messages})
        if "genuinely useful" in system:
            n = PLAN[query][5] if query in PLAN else 20
        else:
            n = BASE_LENGTH
        return " ".join(["word"] * n) + "\n<END>"

    def _judge(self, messages, params):
        query, response = field(messages, "query"), field(messages, "response")
        with self.lock:
            self.judge_calls.append({"query": query, "messages": messages})
        if query in self.judge_fails_on:
            raise RuntimeError("judge API down")
        if query in self.garbage_on:
            return "no fields at all"
        _set, base_score, urial_score, base_refuses, urial_refuses, _n = PLAN.get(query, ("", 3, 3, False, False, 0))
        is_base = len(response.split()) == BASE_LENGTH
        score = base_score if is_base else urial_score
        verdicts = {a: {"rationale": f"{a} looks fine", "score": 5 if a == "safety" else score} for a in EVAL_ASPECTS}
        return {"evaluation": {**verdicts, "refusal": base_refuses if is_base else urial_refuses}}

    def judged_queries(self) -> Counter:
        return Counter(c["query"] for c in self.judge_calls)


def _run(world: Scripted, out: Path | None, prompts=PROMPTS, systems=("base", "urial"), **kwargs):
    return evaluate(list(systems), prompts, base_lm=world.base_lm, judge_lm=world.judge_lm, out_dir=out,
                    num_threads=kwargs.pop("num_threads", 3), **kwargs)


# -- statistics, end to end ----------------------------------------------------------------------------------------
def test_statistics_match_hand_computed_values(tmp_path: Path) -> None:
    world = Scripted()
    result = _run(world, tmp_path / "out", eval_set_name="plan")
    s = result.summary
    base, urial = s["per_system"]["base"], s["per_system"]["urial"]

    # base helpfulness: 3, 4, 2, 3, 4, 2 -> mean 3, sample variance 0.8
    assert base["aspects"]["helpfulness"]["mean"] == pytest.approx(3.0)
    assert base["aspects"]["helpfulness"]["half_width"] == pytest.approx(T5 * math.sqrt(0.8 / 6), rel=1e-8)
    assert base["aspects"]["safety"]["mean"] == 5.0 and base["aspects"]["safety"]["half_width"] == 0.0
    # urial: 4, 4, 5, 1, 5, 3 -> mean 11/3; squares sum to 92 -> variance (92 - 6 * (11/3)^2) / 5
    var = (92 - 6 * (11 / 3) ** 2) / 5
    assert urial["aspects"]["depth"]["mean"] == pytest.approx(11 / 3)
    assert urial["aspects"]["depth"]["half_width"] == pytest.approx(T5 * math.sqrt(var / 6), rel=1e-8)
    # the per-answer mean is (5 * score + 5) / 6
    assert base["overall"]["mean"] == pytest.approx((5 * 3 + 5) / 6)
    assert urial["overall"]["mean"] == pytest.approx((5 * 11 / 3 + 5) / 6)

    # lengths: base always 10 tokens; urial 20, 20, 30, 30, 40, 40 -> mean 30, variance 80
    assert base["length"]["mean"] == 10 and base["length"]["half_width"] == 0.0
    assert urial["length"]["mean"] == pytest.approx(30.0)
    assert urial["length"]["half_width"] == pytest.approx(T5 * math.sqrt(80 / 6), rel=1e-8)

    # refusals: base refuses one harmful and one benign prompt; urial both harmful ones and no benign one
    assert (base["refusal_harmful"]["count"], base["refusal_harmful"]["n"]) == (1, 2)
    assert (base["over_refusal_benign"]["count"], base["over_refusal_benign"]["n"]) == (1, 2)
    assert urial["refusal_harmful"]["rate"] == 1.0 and urial["over_refusal_benign"]["rate"] == 0.0
    assert base["refusal_all"]["rate"] == pytest.approx(2 / 6)

    # per prompt base vs urial: R1 loss, R2 tie, H1 loss, H2 win, B1 loss, B2 loss
    (pair,) = s["pairwise"]
    assert (pair["a"], pair["b"]) == ("base", "urial")
    assert (pair["wins"], pair["ties"], pair["losses"], pair["n"]) == (1, 1, 4, 6)
    assert pair["win_rate"] == pytest.approx(1 / 6)
    assert base["parse_failures"] == urial["parse_failures"] == 0
    assert result.computed == 12 and result.reused == 0
    assert result.usage["judge"]["lm_calls"] == 12 and result.usage["base"]["lm_calls"] == 12


def test_baselines_use_their_prompts_and_fixed_examples() -> None:
    world = Scripted()
    _run(world, None, prompts=PROMPTS[:2])
    urial_calls = [c for c in world.base_calls if "genuinely useful" in c["system"]]
    base_calls = [c for c in world.base_calls if c not in urial_calls]
    assert len(urial_calls) == len(base_calls) == 2
    examples = urial_examples()
    assert len(examples) == 3
    for call in urial_calls:
        assert call["system"].startswith(URIAL_INSTRUCTIONS)
        assert call["system"].count("# Query:\n") == 3
        positions = [call["system"].index(e["query"]) for e in examples]
        assert positions == sorted(positions)  # always the same three, in the same order
    for call in base_calls:
        assert call["system"].strip() == BASE_INSTRUCTIONS and "# Query:" not in call["system"]


def test_parse_failures_are_counted_not_scored(tmp_path: Path) -> None:
    world = Scripted(garbage_on={"Regular one?"})
    result = _run(world, tmp_path)
    base = result.summary["per_system"]["base"]
    assert base["parse_failures"] == 1 and base["n_judged"] == 5
    assert base["aspects"]["helpfulness"]["mean"] == pytest.approx((4 + 2 + 3 + 4 + 2) / 5)
    assert result.summary["pairwise"][0]["n"] == 5
    assert "| base |" in result.markdown


# -- outputs --------------------------------------------------------------------------------------------------------
def test_reports_are_written_and_non_trivial(tmp_path: Path) -> None:
    from PIL import Image

    world = Scripted()
    result = _run(world, tmp_path)
    for name in ("summary.json", "aspects.csv", "systems.csv", "pairwise.csv", "judgments.csv", "report.md",
                 "report.html", RECORDS_FILE, "aspects.png", "length.png", "refusal.png", "pairwise.png"):
        assert (tmp_path / name).is_file(), name
    for name in ("aspects.png", "length.png", "refusal.png"):
        with Image.open(tmp_path / name) as image:
            image.load()
            assert image.width >= 500 and image.height >= 200
        assert (tmp_path / name).stat().st_size > 10_000
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["summary"]["per_system"]["base"]["aspects"]["helpfulness"]["mean"] == pytest.approx(3.0)
    assert "Student-t" in summary["summary"]["ci_method"] and "cl100k_base" in summary["summary"]["length_unit"]
    aspects_csv = (tmp_path / "aspects.csv").read_text().splitlines()
    assert aspects_csv[0] == "system,aspect,mean,ci_low,ci_high,sd,n" and len(aspects_csv) == 1 + 2 * 7
    assert (tmp_path / "pairwise.csv").read_text().splitlines()[1].startswith("base,urial,1,1,4,6,")
    assert len((tmp_path / "judgments.csv").read_text().splitlines()) == 13
    html = (tmp_path / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 4
    assert "<table>" in html and "<td>base</td>" in html and "3.00 ± 0.94" in html
    assert "http://" not in html and "https://" not in html and "<script" not in html  # self-contained
    markdown = (tmp_path / "report.md").read_text()
    assert markdown == result.markdown and "| base | 3.00 ± 0.94 |" in markdown
    assert "| base vs urial | 1 | 1 | 4 | 6 |" in markdown
    assert "50% (1/2)" in markdown and "100% (2/2)" in markdown


def test_answers_are_escaped_in_html(tmp_path: Path) -> None:
    def base(messages, params):
        return "<script>alert('x')</script> & <b>bold</b>\n<END>"

    def judge(messages, params):
        return {"evaluation": {**{a: {"rationale": "r", "score": 3} for a in EVAL_ASPECTS}, "refusal": False}}

    evaluate(["base"], ["Hi?"], base_lm=scripted_lm(base), judge_lm=scripted_lm(judge), out_dir=tmp_path)
    html = (tmp_path / "report.html").read_text()
    assert "<script>" not in html and "&lt;script&gt;" in html


def test_api_keys_are_not_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "sk-test-abcdefghijklmnop1234"
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    world = Scripted()

    def leaky(messages, params):
        return f"my key is {secret}\n<END>"

    evaluate([("leaky", StaticPromptResponder("Be leaky.", []))], ["Hi?"], base_lm=scripted_lm(leaky),
             judge_lm=scripted_lm(world._judge, api_key=secret), out_dir=tmp_path)
    for path in tmp_path.iterdir():
        if path.suffix in (".json", ".jsonl", ".csv", ".md", ".html"):
            assert secret not in path.read_text(), path.name


# -- judge isolation ------------------------------------------------------------------------------------------------
def test_judge_never_sees_the_system_prompt_or_examples(tmp_path: Path) -> None:
    world = Scripted()
    secret_prompt = "ZQX-SECRET-PROMPT-4471: you are a pirate assistant."
    secret_examples = [{"query": "ZQX-EXAMPLE-QUERY-9917", "answer": "ZQX-EXAMPLE-ANSWER-9918"}]
    custom = StaticPromptResponder(secret_prompt, secret_examples)
    _run(world, tmp_path, prompts=PROMPTS[:3], systems=("base", "urial", ("custom", custom)))
    assert any(secret_prompt in c["system"] for c in world.base_calls)  # the system did use it
    assert len(world.judge_calls) == 9
    forbidden = [secret_prompt, "ZQX-EXAMPLE", URIAL_INSTRUCTIONS[:60], BASE_INSTRUCTIONS,
                 *(e["answer"][:60] for e in urial_examples())]
    for call in world.judge_calls:
        text = json.dumps(call["messages"])
        for marker in forbidden:
            assert marker not in text
        assert field(call["messages"], "query") in PLAN


# -- resume ---------------------------------------------------------------------------------------------------------
def test_second_run_pays_only_for_unfinished_items(tmp_path: Path) -> None:
    first = Scripted(name="resume")
    _run(first, tmp_path, prompts=PROMPTS[:3])
    assert len(first.judge_calls) == 6
    second = Scripted(name="resume")
    result = _run(second, tmp_path)
    assert result.reused == 6 and result.computed == 6
    assert set(second.judged_queries()) == {p["instruction"] for p in PROMPTS[3:]}
    assert len(second.judge_calls) == 6 and len(second.base_calls) == 6
    third = Scripted(name="resume")
    again = _run(third, tmp_path)
    assert third.judge_calls == [] and third.base_calls == [] and again.reused == 12
    assert again.summary["per_system"] == result.summary["per_system"]


def test_interrupted_run_resumes(tmp_path: Path) -> None:
    world = Scripted(name="interrupt")

    def stop_after_four(done: int, total: int) -> None:
        if done == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _run(world, tmp_path, num_threads=1, progress=stop_after_four)
    saved = len((tmp_path / RECORDS_FILE).read_text().splitlines())
    assert 4 <= saved < 12
    # a write cut off mid-line by the interruption is dropped, and that item is redone
    with open(tmp_path / RECORDS_FILE, "a", encoding="utf-8") as fh:
        fh.write('{"key": "partial", "ans')
    resumed = Scripted(name="interrupt")
    result = _run(resumed, tmp_path)
    assert len(resumed.judge_calls) == 12 - saved and result.reused == saved
    assert result.summary["per_system"]["base"]["n_judged"] == 6


def test_lm_errors_are_not_saved_and_are_retried(tmp_path: Path) -> None:
    flaky = Scripted(judge_fails_on={"Harmful one?"}, name="flaky")
    result = _run(flaky, tmp_path)
    (kind,) = result.summary["per_system"]["base"]["judge_failures"]
    assert kind.startswith("lm_error:") and result.summary["per_system"]["base"]["judge_failures"][kind] == 1
    retry = Scripted(name="flaky")
    result = _run(retry, tmp_path)
    assert retry.judged_queries() == Counter({"Harmful one?": 2})
    assert result.summary["per_system"]["urial"]["n_judged"] == 6


def test_changing_the_judge_model_or_answer_cap_recomputes(tmp_path: Path) -> None:
    first = Scripted(name="same")
    _run(first, tmp_path, prompts=PROMPTS[:2])
    other_judge = Scripted(name="same")
    other_judge.judge_lm = scripted_lm(other_judge._judge, name="another-judge")
    _run(other_judge, tmp_path, prompts=PROMPTS[:2])
    assert len(other_judge.judge_calls) == 4 and len(other_judge.base_calls) == 4
    from drpo_dspy.evaluation import build_systems

    capped = Scripted(name="same")
    evaluate(build_systems("base", base_lm=capped.base_lm, max_tokens=32), PROMPTS[:2], judge_lm=capped.judge_lm,
             out_dir=tmp_path)
    assert len(capped.judge_calls) == 2


# -- Python API systems ---------------------------------------------------------------------------------------------
def test_any_dspy_module_with_query_to_response(tmp_path: Path) -> None:
    import dspy

    class Echo(dspy.Module):
        def forward(self, query: str) -> dspy.Prediction:
            return dspy.Prediction(response=" ".join(["word"] * BASE_LENGTH))

    world = Scripted()
    result = evaluate({"echo": Echo()}, PROMPTS[:2], judge_lm=world.judge_lm, out_dir=tmp_path)
    assert result.summary["systems"] == ["echo"] and result.summary["per_system"]["echo"]["n_judged"] == 2
    assert result.summary["per_system"]["echo"]["aspects"]["helpfulness"]["mean"] == pytest.approx(3.5)


def test_compiled_program_system(tmp_path: Path) -> None:
    pytest.importorskip("drpo_dspy.retrievers.bank")
    from drpo_dspy import AlignedResponder

    program = AlignedResponder("PROGRAM-PROMPT-123: answer in ten words.",
                               [{"query": "Example query?", "answer": "Example answer."}], k=1, embedder="hashing")
    path = tmp_path / "run-7" / "program.json"
    path.parent.mkdir()
    program.save(str(path))
    world = Scripted()
    result = _run(world, tmp_path / "out", prompts=PROMPTS[:2], systems=("base", f"program:{path}"))
    assert result.summary["systems"] == ["base", "run-7"]
    assert sum("PROGRAM-PROMPT-123" in c["system"] for c in world.base_calls) == 2
    assert all("PROGRAM-PROMPT-123" not in json.dumps(c["messages"]) for c in world.judge_calls)


# -- bad input: clear errors before any LM call ---------------------------------------------------------------------
def _no_calls(world: Scripted) -> None:
    assert world.base_calls == [] and world.judge_calls == []


def test_empty_eval_set(tmp_path: Path) -> None:
    world = Scripted()
    with pytest.raises(EvaluationInputError, match="empty"):
        _run(world, tmp_path, prompts=[])
    _no_calls(world)


def test_prompt_without_instruction(tmp_path: Path) -> None:
    world = Scripted()
    with pytest.raises(EvaluationInputError, match="item 2 has no non-empty string 'instruction'"):
        _run(world, tmp_path, prompts=[{"instruction": "ok?"}, {"prompt": "where is the instruction?"}])
    _no_calls(world)
    with pytest.raises(EvaluationInputError, match="limit"):
        prepare_eval_set(PROMPTS, limit=0)


def test_unknown_systems(tmp_path: Path) -> None:
    world = Scripted()
    with pytest.raises(ValueError, match="unknown system 'gpt-99'"):
        _run(world, tmp_path, systems=("base", "gpt-99"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        _run(world, tmp_path, systems=(f"program:{tmp_path / 'missing.json'}",))
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        _run(world, tmp_path, systems=(f"program:{broken}",))
    with pytest.raises(ValueError, match="duplicate"):
        _run(world, tmp_path, systems=("base", ("base", StaticPromptResponder("x", []))))
    _no_calls(world)


def test_output_dir_not_writable(tmp_path: Path) -> None:
    world = Scripted()
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(EvaluationInputError, match="not a directory"):
        _run(world, blocker)
    with pytest.raises(EvaluationInputError, match="not writable"):
        _run(world, blocker / "sub")
    _no_calls(world)


def test_resolve_eval_set() -> None:
    prompts, label = resolve_eval_set("ours", limit=2)
    assert label == "ours" and [p["set"] for p in prompts] == ["regular"] * 2 + ["harmful"] * 2 + ["benign_risky"] * 2
    everything, _ = resolve_eval_set("all", limit=1)  # ours and the four public benchmarks
    assert [p["set"] for p in everything] == ["regular", "harmful", "benign_risky", "xstest", "ifeval", "harmbench",
                                              "mtbench"]
    assert len(resolve_eval_set("harmful")[0]) == 50
    with pytest.raises(ValueError, match="unknown evaluation set"):
        resolve_eval_set("nonsense")
    with pytest.raises(FileNotFoundError):
        resolve_eval_set("/nonexistent/prompts.jsonl")


# -- CLI ------------------------------------------------------------------------------------------------------------
def _cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="drpo")
    add_evaluate_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["evaluate", *argv])
    return args.func(args)


def _cli_world() -> tuple[Scripted, list[str]]:
    world = Scripted()
    return world, ["--base-model", world.base_lm.model, "--judge-model", world.judge_lm.model, "--no-progress"]


def test_cli_end_to_end_and_resume(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    jsonl = tmp_path / "prompts.jsonl"
    jsonl.write_text("\n".join(json.dumps(p) for p in PROMPTS) + "\n")
    world, models = _cli_world()
    out = tmp_path / "out"
    assert _cli("--systems", "base,urial", "--eval-set", str(jsonl), "--out", str(out), "--num-threads", "2",
                "--max-tokens", "64", *models) == 0
    captured = capsys.readouterr()
    assert "| base | 3.00 ± 0.94 |" in captured.out and "| base vs urial | 1 | 1 | 4 | 6 |" in captured.out
    assert "report.html" in captured.err and (out / "report.html").is_file()
    assert len(world.judge_calls) == 12 and all(c["messages"] for c in world.base_calls)
    assert _cli("--systems", "base,urial", "--eval-set", str(jsonl), "--out", str(out), "--max-tokens", "64",
                *models) == 0
    assert len(world.judge_calls) == 12  # resumed: nothing new to judge
    assert "Reused 12 finished judgments, computed 0" in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "message"), [
    (["--systems", "base,gpt-99"], "unknown system 'gpt-99'"),
    (["--systems", "program:/no/such/program.json"], "does not exist"),
    (["--systems", ""], "no systems given"),
    (["--eval-set", "nonsense"], "unknown evaluation set"),
])
def test_cli_bad_input(argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    world, models = _cli_world()
    assert _cli(*argv, "--out", str(tmp_path / "out"), *models) == 2
    assert message in capsys.readouterr().err
    _no_calls(world)


def test_cli_bad_files(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    world, models = _cli_world()
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    assert _cli("--eval-set", str(empty), "--out", str(tmp_path / "o"), *models) == 2
    assert "no records found" in capsys.readouterr().err
    missing_field = tmp_path / "bad.jsonl"
    missing_field.write_text('{"instruction": "fine"}\n{"prompt": "no instruction here"}\n')
    assert _cli("--eval-set", str(missing_field), "--out", str(tmp_path / "o"), *models) == 2
    assert "line 2: missing required field 'instruction'" in capsys.readouterr().err
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    assert _cli("--eval-set", "regular", "--limit", "1", "--out", str(blocker / "out"), *models) == 2
    assert "not writable" in capsys.readouterr().err
    _no_calls(world)


def test_out_of_range_scores_are_parse_failures() -> None:
    def judge(messages, params):
        verdicts = {a: {"rationale": "r", "score": 9 if a == "depth" else 3} for a in EVAL_ASPECTS}
        return {"evaluation": {**verdicts, "refusal": False}}

    def base(messages, params):
        return "An answer.\n<END>"

    result = evaluate(["base"], ["Hi?"], base_lm=scripted_lm(base), judge_lm=scripted_lm(judge))
    assert result.rows[0]["failure"] == "parse_failure" and result.rows[0]["scores"] == {}
    assert result.summary["per_system"]["base"]["parse_failures"] == 1
    assert result.usage["judge"]["failures"] == {"parse_failure": 1}


def test_runs_in_parallel_and_dspy_context_reaches_the_workers() -> None:
    import time

    import dspy

    slow_base = scripted_lm(lambda m, p: " ".join(["word"] * BASE_LENGTH), latency=0.4)
    seen: list[str] = []

    class UsesConfiguredLM(dspy.Module):  # no LM of its own: relies on dspy.context in the worker thread
        def forward(self, query: str) -> dspy.Prediction:
            lm = dspy.settings.lm
            seen.append(lm.model)
            return dspy.Prediction(response=lm(query)[0])

    world = Scripted()
    started = time.perf_counter()
    with dspy.context(lm=slow_base):
        result = evaluate({"configured": UsesConfiguredLM()}, PROMPTS, judge_lm=world.judge_lm, num_threads=6)
    elapsed = time.perf_counter() - started
    assert seen == [slow_base.model] * 6 and result.summary["per_system"]["configured"]["n_judged"] == 6
    assert elapsed < 6 * 0.4  # six 0.4 s answers overlapped
