"""just-eval-instruct (the DRPO and URIAL papers' evaluation set): loading from a path or the hub, refusing malformed
files, proportional sampling, and fixed per-prompt judge aspects end to end through ``drpo evaluate``."""

from __future__ import annotations

import argparse
import json
import threading
from collections import Counter
from pathlib import Path

import pytest
from drpo_dspy.signatures.evaluation import EvaluateAnswer, evaluate_answer_signature

from drpo_dspy.cli.evaluate import add_evaluate_parser
from drpo_dspy.evaluation import EVAL_ASPECTS, EvaluationInputError, evaluate, prepare_eval_set, resolve_eval_set
from drpo_dspy.evaluation.benchmarks import just_eval, loaders
from drpo_dspy.evaluation.benchmarks.eval_sets import set_names
from drpo_dspy.evaluation.judging import AnswerJudge, fixed_aspects
from drpo_dspy.testing import last_user_text, scripted_lm, system_text

SHARED_FILE = Path(__file__).resolve().parents[2] / "shared" / "benchmarks" / "just-eval" / "just_eval_instruct.jsonl"
needs_shared = pytest.mark.skipif(not SHARED_FILE.is_file(), reason="needs the shared just-eval-instruct copy")
REGULAR = just_eval.REGULAR_ASPECTS
SCORES = {"helpfulness": 4, "clarity": 3, "factuality": 5, "depth": 2, "engagement": 4, "safety": 5}


def row(i: int, category: str, dataset: str) -> dict:
    return {"id": i, "instruction": f"Made-up {category} question number {i}?", "source_id": f"{dataset}-{i}",
            "dataset": dataset, "category": category}


def write_set(path: Path, n_regular: int = 16, n_safety: int = 4) -> Path:
    """A small file in just-eval-instruct's shape (invented prompts): regular from two sources, then safety."""
    rows = [row(i, "regular", "lima" if i % 2 else "koala") for i in range(n_regular)]
    rows += [row(n_regular + i, "safety", "MaliciousInstruct") for i in range(n_safety)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# -- loading ---------------------------------------------------------------------------------------------------------
@needs_shared
def test_loads_the_shared_copy_with_its_published_composition() -> None:
    prompts, label = resolve_eval_set(SHARED_FILE)
    assert label == "just_eval_instruct.jsonl" and len(prompts) == 1000
    kinds = Counter(p["meta"]["category"] for p in prompts)
    assert kinds == {"regular": 800, "safety": 200}
    assert {p["set"] for p in prompts} == {"just-eval"}
    for p in prompts:
        expected = REGULAR if p["meta"]["category"] == "regular" else ("safety",)
        assert tuple(p["aspects"]) == expected and p["category"] == p["meta"]["dataset"]
    assert Counter(p["category"] for p in prompts if p["meta"]["category"] == "safety") == {
        "hh-rlhf/red-team-attempts": 100, "MaliciousInstruct": 100}
    # 22 instructions appear twice upstream; an evaluation judges each distinct prompt once.
    assert len(prepare_eval_set(prompts)) == 978


def test_a_small_file_in_the_same_shape_and_the_upstream_json_list(tmp_path: Path) -> None:
    prompts, _ = resolve_eval_set(write_set(tmp_path / "mine.jsonl"))
    assert [p["meta"]["category"] for p in prompts] == ["regular"] * 16 + ["safety"] * 4
    assert prompts[-1]["aspects"] == ["safety"] and prompts[0]["aspects"] == list(REGULAR)
    listed = tmp_path / "example_data.json"  # the upstream file is a JSON list with more fields per item
    listed.write_text(json.dumps([{**row(0, "safety", "hh"), "output": "x", "generator": "m"}], indent=2))
    (prompt,), _ = resolve_eval_set(listed)
    assert prompt["set"] == "just-eval" and prompt["aspects"] == ["safety"]


def test_other_instruction_files_keep_their_custom_shape(tmp_path: Path) -> None:
    mine = tmp_path / "mine.jsonl"
    mine.write_text(json.dumps({"instruction": "Hi?", "category": "coding", "dataset": "x", "source_id": "1"}) + "\n")
    (prompt,), _ = resolve_eval_set(mine)
    assert "aspects" not in prompt and prompt.get("set", "custom") != "just-eval"


@pytest.mark.parametrize(("lines", "message"), [
    ([row(0, "regular", "lima"), "this is not json"], r"bad\.jsonl: line 2: not valid JSON"),
    ([row(0, "regular", "lima"), {k: v for k, v in row(1, "regular", "lima").items() if k != "instruction"}],
     r"bad\.jsonl: line 2: missing the 'instruction' field"),
    ([row(0, "regular", "lima"), "", {**row(2, "regular", "lima"), "instruction": "  "}],
     r"bad\.jsonl: line 3: field 'instruction' must be a non-empty string"),
    ([row(0, "regular", "lima"), {**row(1, "regular", "lima"), "category": "coding"}],
     r"bad\.jsonl: line 2: field 'category' must be 'regular' or 'safety'"),
    ([row(0, "regular", "lima"), [1, 2]], r"bad\.jsonl: line 2: expected a JSON object, got list"),
])
def test_a_malformed_file_is_refused_naming_the_file_and_line(tmp_path: Path, lines: list, message: str) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines), encoding="utf-8")
    with pytest.raises(EvaluationInputError, match=message):
        resolve_eval_set(bad)


def test_a_file_that_is_not_jsonl_at_all_is_refused_naming_the_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text("id,instruction,category\n0,Hi?,regular\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.jsonl: line 1"):
        resolve_eval_set(bad)


def test_the_name_loads_the_hub_copy_and_fails_clearly_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    assert "just-eval" in set_names()
    asked: list[tuple[str, str | None]] = []

    def fake_hub(spec: str, fmt: str | None = None):
        asked.append((spec, fmt))
        return loaders.rows_to_prompts(fmt, [row(0, "regular", "lima"), row(1, "safety", "hh")]), fmt

    with monkeypatch.context() as m:
        m.setattr("drpo_dspy.evaluation.benchmarks.eval_sets.load_hf_dataset", fake_hub)
        prompts, label = resolve_eval_set("just-eval")
    assert asked == [("hf:re-align/just-eval-instruct:test", "just-eval")] and label == "just-eval"
    assert [p["aspects"] for p in prompts] == [list(REGULAR), ["safety"]]
    # the hub's columns (it carries more fields) are recognised on an hf: id as well
    assert loaders.detect_format(["id", "instruction", "source_id", "dataset", "category", "output"]) == "just-eval"
    monkeypatch.setattr(loaders, "hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(ValueError, match=r"not bundled.*not reachable.*--eval-set PATH/just_eval_instruct\.jsonl"):
        resolve_eval_set("just-eval")
    assert "just-eval" not in {p["set"] for p in resolve_eval_set("all", limit=1)[0]}  # not bundled: in no group


# -- sampling --------------------------------------------------------------------------------------------------------
@needs_shared
@pytest.mark.parametrize("n", [2, 3, 5, 6, 10, 17, 40])
def test_samples_keep_regular_and_safety_in_proportion(n: int) -> None:
    prompts, _ = resolve_eval_set(SHARED_FILE, sample=n, seed=3)
    kinds = Counter(p["meta"]["category"] for p in prompts)
    assert len(prompts) == n and kinds["regular"] >= 1 and kinds["safety"] >= 1
    assert abs(kinds["safety"] - n * 200 / 1000) < 1 or (n < 5 and kinds["safety"] == 1)
    assert prompts == resolve_eval_set(SHARED_FILE, sample=n, seed=3)[0]


def test_samples_of_a_small_file_keep_both_kinds(tmp_path: Path) -> None:
    path = write_set(tmp_path / "mine.jsonl")
    for n in range(2, 20):
        kinds = Counter(p["meta"]["category"] for p in resolve_eval_set(path, sample=n)[0])
        assert kinds["safety"] >= 1 and kinds["regular"] >= 1 and abs(kinds["safety"] - n / 5) < 1 + (n < 5)


# -- the judge's fixed aspects ---------------------------------------------------------------------------------------
def test_fixed_aspect_signatures() -> None:
    assert evaluate_answer_signature(tuple(EVAL_ASPECTS)) is EvaluateAnswer
    five = evaluate_answer_signature(REGULAR)
    fields = five.output_fields["evaluation"].annotation.model_fields
    assert list(fields) == [*REGULAR, "refusal"] and "- safety:" not in five.instructions
    assert "each of the five aspects below" in five.instructions
    one = evaluate_answer_signature(("safety",))
    assert list(one.output_fields["evaluation"].annotation.model_fields) == ["safety", "refusal"]
    assert "the aspect below" in one.instructions and "- helpfulness:" not in one.instructions
    assert fixed_aspects(["safety", "clarity"]) == ("clarity", "safety") and fixed_aspects(None) is None
    for bad in ("safety", [], ["creativity"]):
        with pytest.raises(ValueError, match="aspects"):
            fixed_aspects(bad)
    answered: list[str] = []
    with pytest.raises(ValueError, match="prompt 'Hi\\?': 'aspects' must be"):  # before any model is called
        evaluate([("s", lambda query: answered.append(query) or "A.")], [{"instruction": "Hi?", "aspects": ["x"]}],
                 judge_lm=AspectJudge().lm)
    assert answered == []


class AspectJudge:
    """A judge that answers exactly the aspects its request lists (rubric lines ``- name: ...``)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.asked: dict[str, tuple[str, ...]] = {}
        self.lm = scripted_lm(self, name="just-eval-judge")

    def __call__(self, messages, params):
        system = system_text(messages)
        aspects = tuple(a for a in EVAL_ASPECTS if f"- {a}: " in system)
        query = last_user_text(messages).split("[[ ## query ## ]]\n", 1)[1].split("\n\n[[ ## ", 1)[0].strip()
        with self.lock:
            self.asked[query] = aspects
        return {"evaluation": {**{a: {"rationale": f"{a} ok", "score": SCORES[a]} for a in aspects},
                               "refusal": False}}


def base_lm():
    return scripted_lm(lambda messages, params: "A short made-up answer.\n<END>", name="just-eval-base")


def test_the_judge_scores_a_prompts_fixed_aspects_only() -> None:
    judge = AspectJudge()
    aj = AnswerJudge(judge.lm)
    regular, safety = aj("Q regular?", "A.", list(REGULAR)), aj("Q safety?", "A.", ["safety"])
    assert judge.asked == {"Q regular?": REGULAR, "Q safety?": ("safety",)}
    assert regular.scores == {a: SCORES[a] for a in REGULAR} and regular.mean == pytest.approx(18 / 5)
    assert safety.scores == {"safety": 5} and safety.to_dict()["aspects"] == ["safety"]
    assert set(aj("Q six?", "A.").scores) == set(EVAL_ASPECTS)  # no fixed list: the six, as before


def _cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="drpo")
    add_evaluate_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["evaluate", *argv])
    return args.func(args)


@pytest.mark.parametrize("source", ["small", pytest.param("shared", marks=needs_shared)])
def test_drpo_evaluate_on_just_eval_end_to_end(source: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = write_set(tmp_path / "je.jsonl") if source == "small" else SHARED_FILE
    judge, base = AspectJudge(), base_lm()
    out = tmp_path / "out"
    argv = ["--systems", "base", "--eval-set", str(path), "--sample", "6", "--out", str(out), "--no-progress",
            "--base-model", base.model, "--judge-model", judge.lm.model, "--num-threads", "2"]
    assert _cli(*argv) == 0
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))["summary"]
    records = [json.loads(line) for line in (out / "records.jsonl").read_text(encoding="utf-8").splitlines()]
    prompts, _ = resolve_eval_set(path, sample=6)
    kinds = {p["instruction"]: p["meta"]["category"] for p in prompts}
    assert Counter(kinds.values()) == {"regular": 5, "safety": 1}
    # the judge was asked the five regular aspects or safety, never the six, and each record holds exactly those
    assert judge.asked == {q: (REGULAR if k == "regular" else ("safety",)) for q, k in kinds.items()}
    assert len(records) == 6
    for r in records:
        expected = REGULAR if kinds[r["instruction"]] == "regular" else ("safety",)
        assert tuple(r["scores"]) == expected and tuple(r["aspects"]) == expected
    stats = summary["per_system"]["base"]
    assert stats["n_judged"] == 6
    for aspect in REGULAR:
        assert stats["aspects"][aspect]["n"] == 5 and stats["aspects"][aspect]["mean"] == SCORES[aspect]
    assert stats["aspects"]["safety"]["n"] == 1 and stats["aspects"]["safety"]["mean"] == 5
    assert stats["overall"]["n"] == 6
    assert stats["overall"]["mean"] == pytest.approx((5 * sum(SCORES[a] for a in REGULAR) / 5 + 5) / 6)
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "engagement 4 · 6 tokens" in html and "safety ?" not in html  # each answer shows the aspects it was asked
    md = capsys.readouterr().out
    assert "| base | 4.00 ± 0.00 | 3.00 ± 0.00 | 5.00 ± 0.00 | 2.00 ± 0.00 | 4.00 ± 0.00 | 5.00 | 3.83 ± " in md
    assert _cli(*argv) == 0  # resumed: the same records, nothing judged again
    assert "Reused 6 finished judgments, computed 0" in capsys.readouterr().err
