"""A DRPO compile in MLflow: autologging records it like DSPy's own optimizers (a run, DRPO's parameters, metrics
per level from the search events, the best prompt and program as artifacts), also when autologging was turned on
before DRPO was imported; nothing is logged without it; an explicit MLflowLogger; a broken tracker costs no run;
no key reaches MLflow; importing drpo_dspy does not import MLflow."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import dspy
import pytest
from world import World

mlflow = pytest.importorskip("mlflow")

from drpo_dspy import DRPO, AlignedResponder  # noqa: E402
from drpo_dspy.tracking import MLflowLogger  # noqa: E402
from drpo_dspy.tracking.mlflow_events import autologging_active  # noqa: E402

QUERIES = [f"query {i}" for i in range(6)]
SHAPE = {"beam_size": 2, "n_actions": 2, "depth": 3, "max_depth_increase": 0, "k": 0, "progress": False,
         "num_threads": 4}
SECRET = "sk-test-DRPOtrackingSECRET0123456789abcdef"


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A local MLflow file store in tmp_path; autologging and DSPy's settings restored afterwards."""
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    before = {"callbacks": list(dspy.settings.callbacks), "track_usage": dspy.settings.track_usage}
    old_uri = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri((tmp_path / "mlruns").as_uri())
    mlflow.set_experiment("drpo-test")
    yield tmp_path / "mlruns"
    while mlflow.active_run() is not None:
        mlflow.end_run()
    mlflow.dspy.autolog(disable=True)
    dspy.settings.configure(**before)
    mlflow.set_tracking_uri(old_uri)


def compile_drpo(world=None, **options):
    world = world or World(lambda p, q: [3, 4] if p.endswith("/1") else [3, 3])
    for lm in world.roles().values():
        lm.kwargs["api_key"] = SECRET
    student = AlignedResponder(examples=[], k=0)
    student.set_lm(world.base_lm)  # its state goes to MLflow's best_model.json: without the key
    return DRPO(**world.roles(), **{**SHAPE, **options}).compile(student, trainset=QUERIES)


def runs():
    return mlflow.search_runs(search_all_experiments=True, output_format="list")


def assert_recorded(run, program, store: Path):
    client = mlflow.MlflowClient()
    params = run.data.params
    assert params["drpo.beam_size"] == "2" and params["drpo.n_actions"] == "2" and params["drpo.depth"] == "3"
    assert params["drpo.base_lm"].startswith("scripted/")
    levels = program.drpo_result.num_levels
    history = client.get_metric_history(run.info.run_id, "drpo/best_path_mean")
    assert [m.step for m in history] == list(range(1, levels + 1))
    assert history[-1].value == program.drpo_result.best_path_mean
    calls = client.get_metric_history(run.info.run_id, "drpo/lm_calls")
    assert [m.step for m in calls] == list(range(1, levels + 1))
    assert calls[-1].value == sum(row["lm_calls"] for row in program.drpo_result.usage.values())
    for key in ("level_best_reward", "level_mean_reward", "candidates", "tokens", "cost_usd"):
        assert len(client.get_metric_history(run.info.run_id, f"drpo/{key}")) == levels
    assert run.data.metrics["drpo/final_best_path_mean"] == program.drpo_result.best_path_mean
    artifacts = Path(client.download_artifacts(run.info.run_id, "drpo", str(store.parent / "dl")))
    assert (artifacts / "best_prompt.txt").read_text() == program.instructions
    assert len(json.loads((artifacts / "levels.json").read_text())) == levels
    assert json.loads((artifacts / "program.json").read_text())
    files = [p for p in store.parent.rglob("*") if p.is_file()]
    assert not [p for p in files if SECRET in p.read_text(errors="ignore")], "a key reached MLflow"


def test_autolog_records_a_drpo_compile_like_dspy_optimizers(store):
    mlflow.dspy.autolog(log_compiles=True, log_traces_from_compile=False)
    assert autologging_active()
    program = compile_drpo()
    [run] = runs()
    assert run.info.status == "FINISHED"
    assert_recorded(run, program, store)
    names = [a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)]
    assert "best_model.json" in names  # MLflow's own record of the compiled program


def test_autolog_turned_on_before_drpo_was_imported(store):
    from mlflow.utils.autologging_utils.safety import revert_patches

    from drpo_dspy.teleprompt.drpo import _COMPILE

    mlflow.dspy.autolog(log_compiles=True)
    revert_patches("dspy")  # as if DRPO had been imported after autolog(): its compile is not patched
    assert DRPO.__dict__["compile"] is _COMPILE and autologging_active()
    program = compile_drpo()
    [run] = runs()
    assert_recorded(run, program, store)


def test_drpo_inside_better_together_logs_into_the_outer_run(store):
    from test_outer_optimizers import better_together, labelled, program_lm, rewarding

    mlflow.dspy.autolog(log_compiles=True)
    world, lm = rewarding("/1"), program_lm()
    program = dspy.Predict("question -> answer")
    program.set_lm(lm)
    questions = [f"Question {i}?" for i in range(6)]
    compiled = better_together(world, lm).compile(program, trainset=labelled(questions[:4]),
                                                  valset=labelled(questions[4:]), strategy="fewshot -> drpo", seed=0)
    [outer] = [r for r in runs() if "mlflow.parentRunId" not in r.data.tags]  # the others: DSPy's eval runs
    assert outer.data.params["drpo.beam_size"] == "1" and outer.data.params["strategy"] == "fewshot -> drpo"
    assert compiled.signature.instructions.endswith("/1") and outer.data.metrics["drpo/best_path_mean"] == 4.5
    assert [m.step for m in mlflow.MlflowClient().get_metric_history(outer.info.run_id, "drpo/lm_calls")] == [1, 2]


def test_a_compile_without_autologging_logs_nothing(store):
    from mlflow.utils.autologging_utils.safety import revert_patches

    from drpo_dspy.teleprompt.drpo import _COMPILE

    mlflow.dspy.autolog(log_compiles=False)  # traces only
    assert not autologging_active()
    revert_patches("dspy")
    compile_drpo()
    assert DRPO.__dict__["compile"] is not _COMPILE  # patched late all the same: no traces from the compile
    mlflow.dspy.autolog(disable=True)
    compile_drpo()
    assert runs() == []


def test_an_explicit_logger_starts_and_ends_its_own_run(store):
    program = compile_drpo(callbacks=[MLflowLogger(run_name="my-drpo")])
    [run] = runs()
    assert run.info.status == "FINISHED" and run.info.run_name == "my-drpo"
    assert mlflow.active_run() is None
    assert_recorded(run, program, store)


def test_an_early_stop_and_a_failed_compile_are_tagged(store):
    program = compile_drpo(max_calls=12, callbacks=[MLflowLogger()])
    [run] = runs()
    assert "max_calls" in run.data.tags["drpo.stopped"] and run.info.status == "FINISHED"
    assert program.drpo_result.stopped
    from drpo_dspy.clients.failures import SystemicFailure

    broken_judge = World(lambda p, q: [3, 3], judge_garbage=lambda p, q: True)
    with pytest.raises(SystemicFailure):
        compile_drpo(broken_judge, callbacks=[MLflowLogger(run_name="failing")])
    [failed] = [r for r in runs() if r.info.run_name == "failing"]
    assert failed.info.status == "FAILED" and "SystemicFailure" in failed.data.tags["drpo.failed"]
    assert mlflow.active_run() is None


def test_a_failing_tracker_does_not_cost_the_run(store, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("tracking server down")

    monkeypatch.setattr(mlflow, "log_metrics", broken)
    monkeypatch.setattr(mlflow, "log_params", broken)
    monkeypatch.setattr(mlflow, "log_artifacts", broken)
    program = compile_drpo(callbacks=[MLflowLogger()])
    assert program.drpo_result.num_levels == 3
    monkeypatch.setattr(mlflow, "start_run", broken)
    program = compile_drpo(callbacks=[MLflowLogger()])
    assert program.drpo_result.num_levels == 3


def test_an_explicit_logger_without_mlflow_is_refused_before_any_call(monkeypatch):
    from drpo_dspy.tracking import mlflow_events

    monkeypatch.setattr(mlflow_events, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match=r"drpo-dspy\[tracking\]"):
        MLflowLogger()


def test_importing_drpo_dspy_does_not_import_mlflow():
    code = "import sys, drpo_dspy, drpo_dspy.tracking; assert 'mlflow' not in sys.modules, 'mlflow imported'"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
