"""Every role on a pool of replicas: calls spread over the replicas, a dying replica is routed around, only a pool
whose every replica fails stops the run, and bad pool input is refused before any call. Scripted replicas only."""

from __future__ import annotations

import json

import pytest
from fault_world import QUERIES, FaultWorld, scores_by_depth

from drpo_dspy import DRPO, AlignedResponder
from drpo_dspy.cli.main import main
from drpo_dspy.cli.optimize_options import saved_options
from drpo_dspy.clients.failures import SystemicFailure
from drpo_dspy.clients.pool_inputs import pool_from_lms, pool_from_router_file, split_api_bases
from drpo_dspy.clients.replica_pool import pool_of
from drpo_dspy.testing import scripted_lm
from drpo_dspy.testing.scripted_replicas import ScriptedReplicas

SEARCH = {"beam_size": 2, "n_actions": 2, "depth": 3, "max_depth_increase": 0, "progress": False, "k": 0,
          "num_threads": 4, "initial_instructions": "P"}


def compile_with(world: FaultWorld, base_lm, tmp_path=None, **options):
    drpo = DRPO(base_lm=base_lm, metrics_lm=world.metrics_lm, judge_lm=world.judge_lm,
                optimizer_lm=world.optimizer_lm, log_dir=tmp_path, **{**SEARCH, **options})
    return drpo.compile(AlignedResponder(examples=[], k=0), trainset=QUERIES)


@pytest.fixture
def world():
    return FaultWorld(scores_by_depth)


@pytest.fixture(scope="module")
def reference():
    """The compile with one healthy base model, for comparison."""
    world = FaultWorld(scores_by_depth)
    return compile_with(world, scripted_lm(world._base)).drpo_result


def test_both_replicas_answer_and_summary_json_counts_each(world, tmp_path, reference):
    replicas = ScriptedReplicas(world._base, n=2)
    result = compile_with(world, replicas.lms, tmp_path).drpo_result
    assert all(replicas.answered[i] > 0 for i in (0, 1)), replicas.answered
    assert (result.best_prompt, result.reward_per_level) == (reference.best_prompt, reference.reward_per_level)
    usage = json.loads((tmp_path / "summary.json").read_text())["usage"]
    rows = usage["base"]["replicas"]
    assert {name: row["calls"] for name, row in rows.items()} == {replicas.urls[i]: replicas.answered[i]
                                                                  for i in (0, 1)}
    assert sum(row["calls"] for row in rows.values()) == usage["base"]["lm_calls"]
    assert "replicas" not in usage["judge"]  # a plain role has no per-replica rows
    assert all(row["cost_usd"] == 0.0 for row in rows.values())  # a scripted model is free
    log = (tmp_path / "run.log").read_text()
    assert f"--- after level 3: Calls per replica (base): {replicas.urls[0]} " in log
    pool = json.loads((tmp_path / "config.json").read_text())["roles"]["base"]["pool"]
    assert [r["api_base"] for r in pool["replicas"]] == replicas.urls


def test_a_replica_dying_mid_compile_is_routed_around_and_changes_nothing(world, tmp_path, reference):
    replicas = ScriptedReplicas(world._base, n=2)
    replicas.kill(0, after=2)
    result = compile_with(world, replicas.lms, tmp_path).drpo_result  # no SystemicFailure
    assert (result.best_prompt, result.reward_per_level) == (reference.best_prompt, reference.reward_per_level)
    # refused by the calls that had already picked it when it died (at most the threads), then out of rotation
    assert replicas.answered[0] == 2 and 1 <= replicas.refused[0] <= SEARCH["num_threads"]
    base = json.loads((tmp_path / "summary.json").read_text())["usage"]["base"]
    assert base["failures"] == {}  # the Router's failover never reached the failure policy
    assert base["replicas"][replicas.urls[0]]["failures"] == {"unreachable": replicas.refused[0]}
    assert base["lm_calls"] == reference.usage["base"]["lm_calls"]


@pytest.mark.parametrize(("how", "kind"), [("reset", "unreachable"), ("timeout", "timeout")])
def test_a_reset_or_timed_out_replica_is_taken_out_of_rotation(how, kind):
    replicas = ScriptedReplicas(lambda messages, params: "fine", n=2)
    replicas.kill(0, how=how)
    lm = pool_from_lms(replicas.lms, "judge")
    assert [lm(f"q{i}")[0] for i in range(4)] == ["fine"] * 4
    assert replicas.refused[0] == 1 and replicas.answered[1] == 4
    assert pool_of(lm).stats()[replicas.urls[0]]["failures"] == {kind: 1}
    assert pool_of(lm).healthy() == [replicas.urls[1]]


def test_every_replica_failing_stops_the_run_as_systemic(world, tmp_path):
    replicas = ScriptedReplicas(world._base, n=2)
    replicas.kill(0, after=1)
    replicas.kill(1, after=1)
    with pytest.raises(SystemicFailure) as caught:
        compile_with(world, replicas.lms, tmp_path)
    assert caught.value.role == "base" and caught.value.reason == "every replica failed"
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert "every replica failed" in summary["failed"]
    assert all(summary["usage"]["base"]["replicas"][url]["failures"] for url in replicas.urls)


@pytest.mark.parametrize(("kind", "reason"), [("auth", "authentication failed"),
                                              ("model", "model or endpoint not found")])
def test_a_rejection_from_every_replica_stops_at_once(world, kind, reason):
    replicas = ScriptedReplicas(world._base, n=2)
    replicas.reject(kind)
    with pytest.raises(SystemicFailure) as caught:
        compile_with(world, replicas.lms, num_threads=1)
    assert caught.value.reason == reason
    assert not world.calls["judge"] and sum(replicas.answered.values()) == 0


def test_budgets_stay_per_role_when_a_replica_dies(world, reference):
    single = FaultWorld(scores_by_depth)
    budgeted = compile_with(single, scripted_lm(single._base), max_calls=12).drpo_result
    replicas = ScriptedReplicas(world._base, n=2)
    replicas.kill(1)  # dead from the start: its refused attempts are not calls of the role
    pooled = compile_with(world, replicas.lms, max_calls=12).drpo_result
    assert pooled.stopped and pooled.stopped == budgeted.stopped
    assert pooled.usage["base"]["lm_calls"] == budgeted.usage["base"]["lm_calls"]
    assert pooled.best_prompt == budgeted.best_prompt


def test_num_threads_follows_the_pool_and_the_dry_run_shows_the_useful_concurrency(world):
    replicas = ScriptedReplicas(world._base, n=4)
    drpo = DRPO(base_lm=replicas.lms, metrics_lm=world.metrics_lm, judge_lm=world.judge_lm,
                optimizer_lm=world.optimizer_lm, depth=4, max_depth_increase=0)
    assert drpo.settings.num_threads == 16  # 4 per replica
    assert DRPO(base_lm=world.base_lm).settings.num_threads == 8
    from drpo_dspy.teleprompt.estimate import render

    report = drpo.estimate(QUERIES * 2)
    assert report["concurrency"]["per_level"] == [1, 3, 6, 6] and report["concurrency"]["pools"] == {"base": 4}
    text = render(report)
    assert "at most 6 LM calls in flight per level" in text and "a pool of 4 replicas" in text
    assert sum(replicas.answered.values()) == 0


# -- bad input, refused before any call --------------------------------------------------------------------------
def test_a_list_of_replicas_must_share_one_model(world):
    replicas = ScriptedReplicas(world._base, n=1)
    with pytest.raises(ValueError, match="must serve the same model"):
        DRPO(base_lm=[replicas.lms[0], world.base_lm])
    with pytest.raises(ValueError, match="empty list"):
        DRPO(judge_lm=[])
    with pytest.raises(ValueError, match="may differ only in"):
        DRPO(base_lm=[replicas.lms[0], replicas.lms[0].copy(temperature=0.7)])
    assert DRPO(base_lm=[world.base_lm]).base_lm is world.base_lm  # one replica: the LM itself


def test_api_base_lists_are_checked():
    assert split_api_bases("http://a:1/v1, http://b:1/v1") == ["http://a:1/v1", "http://b:1/v1"]
    for bad, message in (("http://a:1/v1,,http://b:1/v1", "empty URL"), ("http://a:1/v1,", "empty URL"),
                         ("http://a:1/v1,b:1", "not an http"), ("http://a:1/v1,http://a:1/v1", "listed twice")):
        with pytest.raises(ValueError, match=message):
            split_api_bases(bad)


def test_the_command_line_refuses_bad_pools_with_exit_2(world, tmp_path, capsys):
    replicas = ScriptedReplicas(world._base, n=2)
    empty = tmp_path / "empty.yaml"
    empty.write_text("routing_strategy: least-busy\n")
    cases = [
        (["--base-model", replicas.model, "--base-api-base", f"{replicas.urls[0]},,{replicas.urls[1]}"], "empty URL"),
        (["--base-api-base", ",".join(replicas.urls)], "name the model they serve"),
        (["--base-router", str(tmp_path / "missing.yaml")], "does not exist"),
        (["--base-router", str(empty)], "has no model_list"),
    ]
    for flags, message in cases:
        code = main(["optimize", *flags, "--judge-model", "scripted/x", "--metrics-model", "scripted/x",
                     "--optimizer-model", "scripted/x", "--log-dir", str(tmp_path / "run"), "--no-progress"])
        err = capsys.readouterr().err
        assert code == 2 and message in err, (flags, err)
    assert sum(replicas.answered.values()) == 0


# -- router files, secrets, resume -------------------------------------------------------------------------------
def router_file(tmp_path, replicas: ScriptedReplicas, key: str = "sk-routerfilesecret123") -> str:
    path = tmp_path / "router.yaml"
    deployments = "".join(f"  - model_name: base\n    litellm_params: {{model: {replicas.model}, api_base: '{url}', "
                          f"api_key: {key}}}\n" for url in replicas.urls)
    path.write_text(f"model_list:\n{deployments}router_settings:\n  routing_strategy: simple-shuffle\n"
                    "  cooldown_time: 60\n")
    return str(path)


def test_a_router_file_makes_a_pool_whose_keys_are_never_written(world, tmp_path, reference):
    replicas = ScriptedReplicas(world._base, n=2)
    lm = pool_from_router_file(router_file(tmp_path, replicas), label="base")
    assert pool_of(lm).settings["routing_strategy"] == "simple-shuffle"
    replicas.kill(1, after=1)
    result = compile_with(world, lm, tmp_path / "run").drpo_result
    assert result.best_prompt == reference.best_prompt
    for name in ("config.json", "summary.json", "run.log", "trace.jsonl", "program.json"):
        path = tmp_path / "run" / name
        assert not path.exists() or "routerfilesecret" not in path.read_text(), name
    options = saved_options(tmp_path / "run")
    assert options["base_router"] == str(tmp_path / "router.yaml") and options["base_model"] == "base"


def test_a_stopped_run_on_a_url_pool_resumes_on_the_same_pool(world, tmp_path, capsys):
    replicas = ScriptedReplicas(world._base, n=2)
    run = tmp_path / "run"
    code = main(["optimize", "--base-model", replicas.model, "--base-api-base", ",".join(replicas.urls),
                 "--metrics-model", world.metrics_lm.model, "--judge-model", world.judge_lm.model,
                 "--optimizer-model", world.optimizer_lm.model, "--depth", "3", "--n-actions", "2", "--k", "0",
                 "--num-queries", "3", "--log-dir", str(run), "--no-progress", "--max-calls", "8"])
    out = capsys.readouterr().out
    assert code == 0 and "Stopped early" in out and f"Calls per replica (base): {replicas.urls[0]} " in out
    options = saved_options(run)
    assert options["base_api_base"] == ",".join(replicas.urls) and options["base_model"] == replicas.model
    first = json.loads((run / "summary.json").read_text())["usage"]["base"]["replicas"]
    assert main(["optimize", "--resume", str(run), "--no-progress"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["levels"] == 3
    rows = summary["usage"]["base"]["replicas"]
    assert sum(r["calls"] for r in rows.values()) > sum(r["calls"] for r in first.values())  # counts continue


@pytest.mark.parametrize("given", ["urls", "router"])
def test_evaluate_on_a_pool_counts_each_replica_and_derives_its_threads(tmp_path, capsys, given):
    replicas = ScriptedReplicas(lambda messages, params: "Sure, here is how.\n<END>", n=2)
    out = tmp_path / "eval"
    pool = (["--base-model", replicas.model, "--base-api-base", ",".join(replicas.urls)] if given == "urls"
            else ["--base-router", router_file(tmp_path, replicas)])
    code = main(["evaluate", "--systems", "base", "--eval-set", "xstest", "--limit", "3", "--no-judge", *pool,
                 "--out", str(out), "--no-progress"])
    assert code == 0 and "Calls per replica (base):" in capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["settings"]["num_threads"] == 8  # 4 per replica
    rows = summary["usage"]["base"]["replicas"]
    assert sum(row["calls"] for row in rows.values()) == summary["usage"]["base"]["lm_calls"] > 0
