"""Budgets stop before the call that would exceed them; stop files; kill-and-resume gives the same result."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from world import World

from drpo_dspy import DRPO, AlignedResponder

QUERIES = [f"q{i}" for i in range(10)]


def scores(p, q):
    return [1 + (len(p) + len(q)) % 5, 1 + (len(p) * 3) % 5]


def make(world, **options):
    options = {"depth": 5, "n_actions": 2, "beam_size": 2, "k": 0, "progress": False, "num_threads": 4, **options}
    return DRPO(**world.roles(), **options)


def total_calls(world):
    return world.requests


@pytest.mark.parametrize("max_calls", [1, 3, 9, 20])
def test_call_budget_is_never_exceeded(max_calls):
    world = World(scores)
    program = make(world, max_calls=max_calls).compile(AlignedResponder(examples=[], k=0), trainset=QUERIES)
    made = total_calls(world)
    assert made <= max_calls
    result = program.drpo_result
    assert result.stopped and "max_calls" in result.stopped
    assert sum(u["lm_calls"] for u in result.usage.values()) == made


def test_budget_keeps_the_best_of_the_last_finished_level():
    world = World(scores)
    full = make(World(scores), depth=2).compile(AlignedResponder(examples=[], k=0), trainset=QUERIES)
    # Level 1 makes 3 calls and level 2 another 7, but each chat-adapter call reserves 2 (a possible JSON retry),
    # so level 2 needs up to 13 at its peak; level 3 cannot finish within 13.
    stopped = make(world, depth=5, max_calls=13).compile(AlignedResponder(examples=[], k=0), trainset=QUERIES)
    assert stopped.drpo_result.num_levels == 2
    assert stopped.instructions == full.instructions


def test_token_budget_is_checked_before_calls():
    world = World(scores)
    lms = world.roles()
    for key in lms:
        lms[key] = lms[key].copy(max_tokens=100)
    program = DRPO(**lms, depth=5, n_actions=2, k=0, progress=False, max_total_tokens=3000).compile(
        AlignedResponder(examples=[], k=0), trainset=QUERIES)
    usage = program.drpo_result.usage
    spent = sum(u["prompt_tokens"] + u["completion_tokens"] for u in usage.values())
    assert spent <= 3000 and "max_total_tokens" in program.drpo_result.stopped


def test_the_old_max_tokens_name_still_sets_the_total_budget_with_a_warning():
    with pytest.warns(DeprecationWarning, match="max_total_tokens"):
        drpo = DRPO(max_tokens=512)
    assert drpo.budgets["max_total_tokens"] == 512
    with pytest.raises(ValueError, match="only"):
        DRPO(max_tokens=512, max_total_tokens=512)


def test_stop_file_stops_gracefully(tmp_path):
    world = World(scores)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "STOP").write_text("")
    drpo = make(world, log_dir=tmp_path / "run")
    with pytest.raises(ValueError, match="already holds files"):
        drpo.compile(AlignedResponder(examples=[], k=0), trainset=QUERIES)
    program = drpo.compile(AlignedResponder(examples=[], k=0), trainset=QUERIES, resume=True)
    assert "stop file" in program.drpo_result.stopped and total_calls(world) == 0


def test_resume_in_process_matches_an_uninterrupted_run(tmp_path):
    reference = make(World(scores), depth=5).compile(AlignedResponder(examples=[], k=0), trainset=QUERIES)
    first = World(scores, cache=True, name="resume-a")
    stopped = make(first, log_dir=tmp_path / "run", max_calls=14).compile(
        AlignedResponder(examples=[], k=0), trainset=QUERIES)
    assert stopped.drpo_result.stopped
    second = World(scores, cache=True, name="resume-a")
    resumed = make(second, log_dir=tmp_path / "run").compile(
        AlignedResponder(examples=[], k=0), trainset=QUERIES, resume=True)
    assert resumed.instructions == reference.instructions
    assert resumed.drpo_result.levels == reference.drpo_result.levels
    # Calls finished before the stop are answered from the run's LM cache, never made again.
    before = {json.dumps([role, c], sort_keys=True) for role in first.calls for c in first.calls[role]}
    again = [json.dumps([role, c], sort_keys=True) for role in second.calls for c in second.calls[role]]
    assert not before & set(again)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["levels"] == reference.drpo_result.num_levels


def test_foreign_or_corrupt_checkpoint_is_refused(tmp_path):
    make(World(scores), log_dir=tmp_path / "run", depth=2).compile(AlignedResponder(examples=[], k=0),
                                                                   trainset=QUERIES)
    with pytest.raises(ValueError, match=r"different run .*search"):
        make(World(scores), log_dir=tmp_path / "run", depth=3).compile(
            AlignedResponder(examples=[], k=0), trainset=QUERIES, resume=True)
    (tmp_path / "run" / "checkpoint.json").write_text("{not json")
    with pytest.raises(ValueError, match="corrupt"):
        make(World(scores), log_dir=tmp_path / "run", depth=2).compile(
            AlignedResponder(examples=[], k=0), trainset=QUERIES, resume=True)
    (tmp_path / "run" / "checkpoint.json").write_text('{"format": "something-else"}')
    with pytest.raises(ValueError, match="not a drpo-dspy checkpoint"):
        make(World(scores), log_dir=tmp_path / "run", depth=2).compile(
            AlignedResponder(examples=[], k=0), trainset=QUERIES, resume=True)


CHILD = Path(__file__).with_name("resume_child.py")


def _child(log_dir: Path, events: Path, mode: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    return subprocess.Popen([sys.executable, str(CHILD), str(log_dir), str(events), mode],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _finish(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-2000:]
    return json.loads(out.strip().splitlines()[-1])


def test_sigkill_at_several_points_then_resume(tmp_path):
    reference = _finish(_child(tmp_path / "ref", tmp_path / "ref.jsonl", "fresh"))
    log_dir, events = tmp_path / "run", tmp_path / "events.jsonl"
    proc = _child(log_dir, events, "fresh")
    kills = 0
    for threshold in (5, 25, 50):  # kill after this many finished calls in total
        while proc.poll() is None and (not events.exists() or len(events.read_text().splitlines()) < threshold):
            time.sleep(0.01)
        if proc.poll() is not None:
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        proc = _child(log_dir, events, "resume")
    final = _finish(proc)
    assert kills >= 2
    assert final == reference
    calls = events.read_text().splitlines()
    reference_calls = (tmp_path / "ref.jsonl").read_text().splitlines()
    # Only calls in flight at a kill may be made twice.
    assert len(calls) - len(reference_calls) <= kills * 4


@pytest.mark.parametrize(("depth", "beam", "actions", "increase"), [(3, 2, 2, 0), (5, 2, 3, 2), (4, 1, 1, 3)])
def test_dry_run_bounds_a_scripted_run(depth, beam, actions, increase):
    from drpo_dspy.teleprompt.estimate import render

    world = World(lambda p, q: [5, 5] if q == "q2" else [3, 2])
    drpo = make(world, depth=depth, beam_size=beam, n_actions=actions, max_depth_increase=increase)
    report = drpo.estimate(QUERIES)
    assert total_calls(world) == 0  # a dry run calls nothing
    program = drpo.compile(AlignedResponder(examples=[], k=0), trainset=QUERIES)
    usage = program.drpo_result.usage
    for role, row in report["roles"].items():
        assert usage[role]["lm_calls"] <= row["upper"]["lm_calls"], role
    assert report["expected"]["lm_calls"] <= report["upper"]["lm_calls"]
    assert "| total |" in render(report)


@pytest.mark.parametrize(("sampling", "optimizer_calls"), [("independent", 3 + 6 + 6), ("batched", 1 + 2 + 2)])
def test_dry_run_exact_when_nothing_skips(sampling, optimizer_calls):
    from drpo_dspy.teleprompt.estimate import role_calls

    world = World(lambda p, q: [2, 2])
    program = make(world, depth=4, beam_size=2, n_actions=3, proposal_sampling=sampling).compile(
        AlignedResponder(examples=[], k=0), trainset=QUERIES)
    expected = role_calls(4, 4, 2, 3, batched=sampling == "batched")
    assert {r: u["lm_calls"] for r, u in program.drpo_result.usage.items()} == expected
    assert expected == {"base": 1 + 3 + 6 + 6, "metrics": 4, "judge": 16, "optimizer": optimizer_calls}
    assert world.requests == sum(expected.values())
