"""Aligning a DSPy program is a full DRPO compile: checkpoints, levels.json, resume, budgets and failures."""

from __future__ import annotations

import json

import dspy
import pytest
from test_program_alignment import QUESTIONS, DraftThenPolish, drpo_for, program_lm, rewarding
from world import World

from drpo_dspy.clients.failures import SystemicFailure
from drpo_dspy.teleprompt.program_alignment import TRACES_FILE, align_program
from drpo_dspy.testing import last_user_text


def optimizer_requests(world: World) -> list[str]:
    return [last_user_text(entry["messages"]) for entry in world.optimizer_lm.history]


def test_the_run_directory_holds_checkpoints_levels_and_traces(tmp_path):
    world, run = rewarding("/1"), tmp_path / "run"
    compiled = align_program(drpo_for(world, program_lm(), log_dir=run), DraftThenPolish(), QUESTIONS[:2])
    for name in ("config.json", "checkpoint.json", "levels.json", "metrics_cache.json", "summary.json",
                 "program.json", TRACES_FILE):
        assert (run / name).exists(), name
    levels = json.loads((run / "levels.json").read_text())
    assert len(levels) == compiled.drpo_result.num_levels == 2
    config = json.loads((run / "config.json").read_text())
    assert config["predictors"] == ["draft", "polish"] and config["output_field"] == "answer"
    assert config["search"]["depth"] == 2 and config["queries"] == QUESTIONS[:2]
    traces = json.loads((run / TRACES_FILE).read_text())
    assert any("### step draft\ninput question:" in row["trace"] for row in traces)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["levels"] == 2 and summary["best_path_mean"] == compiled.drpo_result.best_path_mean


def test_a_stopped_program_run_resumes_to_the_uninterrupted_result(tmp_path):
    reference_world = rewarding("/1")
    reference = align_program(drpo_for(reference_world, program_lm(), depth=3), DraftThenPolish(), QUESTIONS)
    world, base, run = rewarding("/1"), program_lm(), tmp_path / "run"
    stopped = align_program(drpo_for(world, base, depth=3, log_dir=run, max_calls=12), DraftThenPolish(), QUESTIONS)
    assert stopped.drpo_result.stopped and "max_calls" in stopped.drpo_result.stopped
    finished = stopped.drpo_result.num_levels
    assert 1 <= finished < 3
    before = len(optimizer_requests(world))
    resumed = align_program(drpo_for(world, base, depth=3, log_dir=run), DraftThenPolish(), QUESTIONS, resume=True)
    assert resumed.drpo_result.stopped is None
    assert resumed.drpo_result.best_prompt == reference.drpo_result.best_prompt
    assert resumed.drpo_result.levels == reference.drpo_result.levels
    assert resumed.polish.signature.instructions == reference.polish.signature.instructions
    # After a resume the optimizer is shown the same step-by-step traces as in one uninterrupted run.
    after = optimizer_requests(world)[before:]
    assert after and set(after) <= set(optimizer_requests(reference_world))
    assert all("### step polish" in r for r in after)


def test_resume_refuses_another_program_or_other_inputs(tmp_path):
    world, base, run = rewarding("/1"), program_lm(), tmp_path / "run"
    align_program(drpo_for(world, base, log_dir=run), DraftThenPolish(), QUESTIONS[:2])
    with pytest.raises(ValueError, match=r"differs in: .*predictors"):
        align_program(drpo_for(world, base, log_dir=run), DraftThenPolish(), QUESTIONS[:2], predictors=["polish"],
                      resume=True)
    with pytest.raises(ValueError, match=r"differs in: .*queries"):
        align_program(drpo_for(world, base, log_dir=run), DraftThenPolish(), [QUESTIONS[0], "Another question?"],
                      resume=True)
    with pytest.raises(ValueError, match="needs the log_dir"):
        align_program(drpo_for(rewarding("/1"), program_lm()), DraftThenPolish(), QUESTIONS[:2], resume=True)


def test_a_judge_that_is_never_readable_stops_a_program_run_and_says_so(tmp_path):
    world, run = World(scores=lambda p, q: [4, 4], judge_garbage=lambda p, q: True), tmp_path / "run"
    drpo = drpo_for(world, program_lm(), log_dir=run, max_errors=2)
    with pytest.raises(SystemicFailure, match="judge"):
        align_program(drpo, dspy.Predict("question -> answer"), QUESTIONS)
    summary = json.loads((run / "summary.json").read_text())
    assert "failed" in summary and not (run / "program.json").exists()


def test_the_held_out_guard_chooses_among_the_final_beam(tmp_path):
    questions = [f"Question number {i}?" for i in range(30)]  # 12 levels at most + 2 x 8
    world = rewarding("/1")
    compiled = align_program(drpo_for(world, program_lm(), beam_size=2), dspy.Predict("question -> answer"),
                             questions)
    assert compiled.drpo_result.validation, "room for 16 beyond the levels: 8 are held out"
    assert compiled.signature.instructions == compiled.drpo_result.validation[0]["prompt"].split("\n", 1)[1]


def test_the_dry_run_counts_one_base_call_per_predictor_and_matches_the_run():
    world, base = rewarding("/1"), program_lm()
    drpo = drpo_for(world, base, max_depth_increase=0)
    report = drpo.estimate(QUESTIONS[:2], DraftThenPolish())
    assert report["base_calls_per_answer"] == 2
    assert world.requests == 0 and not base.history  # a dry run calls nothing
    align_program(drpo, DraftThenPolish(), QUESTIONS[:2])
    expected = {role: row["expected"]["lm_calls"] for role, row in report["roles"].items()}
    assert expected["base"] == len(base.history) == 2 * 3  # three candidates, two predictors each
    assert expected["judge"] == len(world.calls["judge"])
    assert expected["optimizer"] == sum(1 for c in world.calls["optimizer"] if c["n_index"] == 0)  # requests
    with pytest.raises(ValueError, match="not a predictor"):
        drpo.estimate(QUESTIONS[:2], DraftThenPolish(), predictors=["nope"])


def test_a_program_with_a_history_input_is_judged_on_its_earlier_turns():
    class ChatTurn(dspy.Signature):
        """Answer the question, continuing the conversation."""

        question: str = dspy.InputField()
        history: dspy.History = dspy.InputField()
        answer: str = dspy.OutputField()

    history = dspy.History(messages=[{"question": "I am planning a trip to Lisbon.", "answer": "Lovely! When?"}])
    world = rewarding("/1")
    compiled = align_program(drpo_for(world, program_lm()), dspy.Predict(ChatTurn),
                             [dspy.Example(question="In May. What should I pack?", history=history)
                              .with_inputs("question", "history")])
    judged = [last_user_text(e["messages"]) for e in world.judge_lm.history]
    assert judged and all("question: I am planning a trip to Lisbon.; answer: Lovely! When?" in t for t in judged)
    assert compiled.signature.instructions.startswith("Answer the question, continuing the conversation.")
    with pytest.raises(ValueError, match=r"non-empty string or a dspy\.History"):
        align_program(drpo_for(world, program_lm()), dspy.Predict(ChatTurn),
                      [dspy.Example(question="Hi", history=["not", "a", "history"]).with_inputs("question", "history")])
