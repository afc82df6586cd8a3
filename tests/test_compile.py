"""compile(): the returned program, the run directory, and no secrets anywhere."""

from __future__ import annotations

import json

import pytest
from world import World

from drpo_dspy import DRPO, AlignedResponder
from drpo_dspy.runs.run_dir import RUN_FILES
from drpo_dspy.testing import scripted_lm

PLANTED_ENV_KEY = "sk-planted-env-0123456789abcdef"
PLANTED_LM_KEY = "sk-planted-lm-fedcba9876543210"
EXAMPLES = [("What is a leap year?", "A year with 366 days."), ("Hack my ex's email.", "I can't help with that.")]


def run(tmp_path, monkeypatch, **options):
    monkeypatch.setenv("OPENAI_API_KEY", PLANTED_ENV_KEY)
    world = World(lambda p, q: [3, 4] if p.endswith("/1") else [3, 3])
    roles = world.roles()
    roles["judge_lm"] = roles["judge_lm"].copy(api_key=PLANTED_LM_KEY)
    drpo = DRPO(**roles, depth=3, n_actions=2, k=1, log_dir=tmp_path / "run", progress=False, **options)
    student = AlignedResponder("Start here.", EXAMPLES, k=1, embedder="hashing")
    return student, drpo.compile(student, trainset=["q one", "q two", "q three"]), world


def test_compile_returns_a_new_program_and_leaves_the_student_alone(tmp_path, monkeypatch):
    student, program, _ = run(tmp_path, monkeypatch)
    assert program is not student
    assert student.instructions == "Start here."
    assert program.instructions == "Start here./1/1"
    assert program.k == 1 and len(program.bank) == 2


def test_run_directory_contents(tmp_path, monkeypatch):
    _, program, world = run(tmp_path, monkeypatch)
    run_dir = tmp_path / "run"
    for name in RUN_FILES:
        assert (run_dir / name).is_file(), name
    levels = json.loads((run_dir / "levels.json").read_text())
    assert list(levels) == ["level 1", "level 2", "level 3"]
    assert levels["level 3"]["Prompt"] == program.instructions
    assert levels["level 1"]["Evaluation of the prompt"]["Helpfulness"] == {"rationale": "r-Helpfulness", "score": "3"}
    trace = [json.loads(line) for line in (run_dir / "trace.jsonl").read_text().splitlines()]
    assert len(trace) == 1 + 2 + 4 == len(world.calls["judge"])
    log = (run_dir / "run.log").read_text()
    assert "--- prompt" in log and "--- answer" in log and "--- judgment" in log
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["usage"]["judge"]["lm_calls"] == 7
    assert summary["usage"]["optimizer"]["lm_calls"] == 1 + 2  # one 2-sample request per expanded node
    assert summary["usage"]["metrics"]["lm_calls"] == 3
    assert summary["best_prompt"] == program.instructions and summary["wall_time_s"] >= 0
    config = json.loads((run_dir / "config.json").read_text())
    assert config["search"]["depth"] == 3 and config["roles"]["judge"]["model"].startswith("scripted/")
    cache = json.loads((run_dir / "metrics_cache.json").read_text())
    assert len(cache) == 3
    reloaded = AlignedResponder(examples=[], k=0)
    reloaded.load(str(run_dir / "program.json"))
    assert reloaded.instructions == program.instructions and reloaded.k == 1


def test_no_api_key_reaches_any_written_file(tmp_path, monkeypatch):
    _, program, _ = run(tmp_path, monkeypatch)
    program.save(str(tmp_path / "saved.json"))
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) >= len(RUN_FILES) + 1
    for path in files:
        data = path.read_bytes()  # includes the binary LM cache
        assert PLANTED_ENV_KEY.encode() not in data and PLANTED_LM_KEY.encode() not in data, path


def test_progress_bar_and_default_lm(tmp_path):
    import dspy

    world = World(lambda p, q: [2, 2])
    with dspy.context(lm=world.base_lm):
        drpo = DRPO(metrics_lm=world.metrics_lm, judge_lm=world.judge_lm, optimizer_lm=world.optimizer_lm,
                    depth=2, n_actions=1, beam_size=1, k=0, progress=True)
        program = drpo.compile(AlignedResponder(examples=[], k=0), trainset=["a", "b"])
    assert program.instructions == "You are a helpful assistant./0"


def test_teacher_is_rejected():
    lm = scripted_lm(lambda m, p: "x")
    with pytest.raises(ValueError, match="teacher"):
        DRPO(base_lm=lm).compile(AlignedResponder(examples=[], k=0), trainset=["q"], teacher=object())


def test_optimize_icl_stage_runs_before_the_search(tmp_path):
    world = World(lambda p, q: [3, 3, 3], aspects=("Helpfulness", "Clarity", "Depth"))
    drpo = DRPO(**world.roles(), depth=2, n_actions=1, k=1, optimize_icl=True, icl_rounds=3,
                log_dir=tmp_path / "run", progress=False)
    student = AlignedResponder("Start.", EXAMPLES, k=1, embedder="hashing")
    program = drpo.compile(student, trainset=["q one", "q two"])
    answers = [e.answer for e in program.bank.examples]
    assert answers == [f"{a} (improved) (improved)" for _, a in EXAMPLES]  # 3 -> 4 -> 5: stops at all 5s
    assert [e.answer for e in student.bank.examples] == [a for _, a in EXAMPLES]
    rounds = [p for p in program.bank.examples[0].provenance if p.get("stage") == "icl_optimization"]
    assert [r["total"] for r in rounds] == [9, 12, 15]
    assert len(world.calls["rewriter"]) == 4
    assert (tmp_path / "run" / "icl_bank.json").is_file()
