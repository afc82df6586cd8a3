"""A DRPO compile in MLflow: its settings as parameters, its search events as metrics per level, its result as
artifacts.

``mlflow.dspy.autolog(log_compiles=True)`` records ``DRPO.compile`` as it records DSPy's own optimizers (a run,
the compile's scalar arguments, the LM settings, ``best_model.json``, the trainset); while it is on, every DRPO
compile adds an :class:`MLflowLogger` to its callbacks, which logs what only DRPO knows into that run:

* parameters ``drpo.*``: the search shape, guards, budgets and role models (never a key: see
  :mod:`drpo_dspy.runs.secrets`);
* metrics ``drpo/*`` with ``step`` = level: ``best_path_mean``, ``level_best_reward``, ``level_mean_reward``,
  ``candidates``, ``dropped``, ``max_depth`` (from ``LevelFinished``) and ``lm_calls``, ``tokens``, ``cost_usd``
  (from ``BudgetUpdated``); a tag ``drpo.stopped`` when the search stopped early;
* artifacts under ``drpo/``: ``best_prompt.txt``, ``levels.json``, ``summary.json`` and ``program.json``.

Without autologging, ``DRPO(callbacks=[MLflowLogger()])`` logs the same into the active run, or into a run of its
own. MLflow is imported only when one of them is used (``pip install drpo-dspy[tracking]``), and an error of the
tracker is logged, never raised: it does not cost a paid run.
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import asdict
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from drpo_dspy.primitives.events import BudgetUpdated, LevelFinished, SearchStopped
from drpo_dspy.runs.secrets import Redactor, describe_lm

logger = logging.getLogger(__name__)

FLAVOR = "dspy"  # mlflow.dspy's autologging integration name
_PARAM_CHARS = 500


def autologging_enabled(*, log_compiles: bool = False) -> bool:
    """True when ``mlflow.dspy.autolog()`` is on (and, with ``log_compiles=True``, records compiles); False at no
    cost when MLflow was never imported (autologging imports it)."""
    if "mlflow" not in sys.modules:
        return False
    try:
        from mlflow.utils.autologging_utils import autologging_is_disabled, get_autologging_config

        return not autologging_is_disabled(FLAVOR) and (
            not log_compiles or bool(get_autologging_config(FLAVOR, "log_compiles", False)))
    except Exception:
        logger.debug("MLflow autologging state unreadable", exc_info=True)
        return False


def autologging_active() -> bool:
    """True when ``mlflow.dspy.autolog(log_compiles=True)`` is on."""
    return autologging_enabled(log_compiles=True)


def patch_late(cls: type, original: Any) -> bool:
    """Patch ``cls.compile`` as ``mlflow.dspy.autolog()`` patches DSPy's optimizers (a run per compile, no traces
    from the compile unless asked for), when autologging was turned on before ``cls`` was imported: autolog patches
    only the ``Teleprompter`` subclasses that exist when it is called. ``original`` is the unpatched ``compile``.
    True when it patched now: the caller then calls ``compile`` again, through the patch."""
    if cls.__dict__.get("compile") is not original or not autologging_enabled():
        return False  # already patched (or reverted and patched again by autolog), or autologging is off
    try:
        from mlflow.dspy.autolog import _patched_compile
        from mlflow.utils.autologging_utils import get_autologging_config, safe_patch

        safe_patch(FLAVOR, cls, "compile", _patched_compile,
                   manage_run=bool(get_autologging_config(FLAVOR, "log_compiles", False)))
    except Exception:
        logger.warning("MLflow autologging could not patch %s.compile; compiling without it", cls.__name__,
                       exc_info=True)
        return False
    return cls.__dict__.get("compile") is not original


def _flat(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _flat(f"{prefix}.{key}", item, out)
    elif isinstance(value, list | tuple):
        out[prefix] = json.dumps(value, default=str)
    else:
        out[prefix] = value


def drpo_params(drpo: Any, redactor: Redactor) -> dict[str, str]:
    """DRPO's settings as flat ``drpo.*`` parameters: no LM object, no secret, short values."""
    settings = asdict(drpo.settings)
    settings["guards"] = drpo.settings.guards.describe()
    raw: dict[str, Any] = {}
    _flat("drpo", {**settings, "k": drpo.k, "paper_mode": drpo.fidelity.is_paper, "optimize_icl": drpo.optimize_icl,
                   "icl_rounds": drpo.icl_rounds, "answer_temperature": drpo.answer_temperature,
                   "answer_max_tokens": drpo.answer_max_tokens, "initial_instructions": drpo.initial_instructions,
                   "aspects": drpo.catalogue.names, "max_errors": drpo.max_errors, **drpo.budgets}, raw)
    for role in ("base", "metrics", "judge", "optimizer"):
        lm = getattr(drpo, f"{role}_lm", None)
        if lm is None:
            import dspy

            lm = dspy.settings.lm
        raw[f"drpo.{role}_lm"] = describe_lm(lm).get("model")
    return {key: redactor.text(str(value))[:_PARAM_CHARS] for key, value in raw.items()}


def _role_lms(drpo: Any) -> list[Any]:
    import dspy

    return [getattr(drpo, f"{role}_lm", None) or dspy.settings.lm
            for role in ("base", "metrics", "judge", "optimizer")]


class MLflowLogger:
    """DRPO's typed search events as MLflow metrics, and the compile's settings and result: pass it in
    ``DRPO(callbacks=[MLflowLogger()])``, or turn on ``mlflow.dspy.autolog(log_compiles=True)``.

    Args:
        run_name: The name of the run it starts when no run is active.
        prefix: Metric names start with it (``"drpo/"``).
        log_program: Log the compiled program as ``drpo/program.json``.
    """

    def __init__(self, run_name: str | None = None, *, prefix: str = "drpo/", log_program: bool = True):
        if find_spec("mlflow") is None:  # refused before a paid run, not found missing after it
            raise ImportError("MLflowLogger needs MLflow: pip install 'drpo-dspy[tracking]'")
        self.run_name, self.prefix, self.log_program = run_name, prefix, log_program
        self.run_id: str | None = None
        self._owns_run = False
        self._redactor = Redactor(())

    # -- the compile -------------------------------------------------------------------------------------------
    def begin(self, drpo: Any) -> None:
        """The compile starts: find (or start) the run, log DRPO's settings."""
        import mlflow

        self._redactor = Redactor([lm for lm in _role_lms(drpo) if lm is not None])
        params = drpo_params(drpo, self._redactor)
        run = mlflow.active_run()
        if run is None:
            run = mlflow.start_run(run_name=self.run_name or "drpo")
            self._owns_run = True
        self.run_id = run.info.run_id
        try:
            mlflow.log_params(params, run_id=self.run_id)
        except Exception:  # e.g. a second compile into the same run with other settings: log what can be logged
            for key, value in params.items():
                self._safely(mlflow.log_param, key, value, run_id=self.run_id)

    def finish(self, program: Any, error: BaseException | None = None) -> None:
        """The compile ended: the result as metrics and artifacts; end the run this logger started."""
        import mlflow

        if self.run_id is None:
            return
        try:
            if error is None and program is not None:
                self._log_result(program)
            elif error is not None:
                mlflow.MlflowClient().set_tag(self.run_id, "drpo.failed",
                                              self._redactor.text(f"{type(error).__name__}: {error}")[:_PARAM_CHARS])
        finally:
            if self._owns_run:
                status = "FINISHED" if error is None else "FAILED"
                active = mlflow.active_run()
                if active is not None and active.info.run_id == self.run_id:
                    mlflow.end_run(status=status)
                else:
                    mlflow.MlflowClient().set_terminated(self.run_id, status)
                self._owns_run = False
            self.run_id = None

    def _log_result(self, program: Any) -> None:
        result = getattr(program, "drpo_result", None)
        text = self._redactor.text
        artifacts: dict[str, str] = {}
        if result is not None:
            artifacts["best_prompt.txt"] = text(str(result.best_prompt))
            artifacts["levels.json"] = text(json.dumps(result.levels, indent=1, default=str))
            summary = {"best_path_mean": result.best_path_mean, "levels": result.num_levels,
                       "reward_per_level": result.reward_per_level, "stopped": result.stopped,
                       "usage": result.usage, "wall_time_s": result.wall_time_s, "validation": result.validation}
            artifacts["summary.json"] = text(json.dumps(summary, indent=1, default=str))
            metrics = {"levels": result.num_levels, "wall_time_s": result.wall_time_s}
            if result.best_path_mean is not None:
                metrics["final_best_path_mean"] = result.best_path_mean
            if result.validation:
                metrics["validation_best_mean"] = result.validation[0].get("val_mean")
            self._metrics(metrics, None)
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp, "drpo")
            folder.mkdir()
            if self.log_program and hasattr(program, "save"):
                program.save(str(folder / "program.json"))
                (folder / "program.json").write_text(text((folder / "program.json").read_text(encoding="utf-8")),
                                                     encoding="utf-8")
            for name, content in artifacts.items():
                (folder / name).write_text(content, encoding="utf-8")
            import mlflow

            mlflow.log_artifacts(str(folder), artifact_path="drpo", run_id=self.run_id)

    # Harmless if an MLflowLogger is also given to DSPy as an optimizer callback: nothing to do there.
    def on_compile_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        pass

    def on_compile_end(self, call_id: str, outputs: Any, exception: Exception | None = None) -> None:
        pass

    # -- the search's events -----------------------------------------------------------------------------------
    def on_level_finished(self, event: LevelFinished) -> None:
        rewards = [c["reward"] for c in event.record.get("candidates", []) if c.get("reward") is not None]
        metrics = {"candidates": len(event.record.get("candidates", [])),
                   "dropped": len(event.record.get("dropped", [])), "max_depth": event.max_depth}
        if event.best_path_mean is not None:
            metrics["best_path_mean"] = event.best_path_mean
        if rewards:
            metrics["level_best_reward"] = max(rewards)
            metrics["level_mean_reward"] = sum(rewards) / len(rewards)
        self._metrics(metrics, event.level)

    def on_budget_updated(self, event: BudgetUpdated) -> None:
        self._metrics({"lm_calls": event.calls, "tokens": event.tokens, "cost_usd": event.cost_usd}, event.level)

    def on_search_stopped(self, event: SearchStopped) -> None:
        if self.run_id is not None:
            import mlflow

            self._safely(mlflow.MlflowClient().set_tag, self.run_id, "drpo.stopped",
                         self._redactor.text(event.reason)[:_PARAM_CHARS])

    def _metrics(self, metrics: dict[str, Any], step: int | None) -> None:
        if self.run_id is None:
            return
        import mlflow

        values = {f"{self.prefix}{k}": float(v) for k, v in metrics.items() if isinstance(v, int | float)}
        mlflow.log_metrics(values, step=step, run_id=self.run_id)

    @staticmethod
    def _safely(fn: Any, *args: Any, **kwargs: Any) -> None:
        try:
            fn(*args, **kwargs)
        except Exception:
            logger.warning("MLflow logging failed (%s); the compile goes on", getattr(fn, "__name__", fn),
                           exc_info=True)


@contextmanager
def tracking(drpo: Any):
    """Around one compile: the user's :class:`MLflowLogger` callbacks, or one added while autologging is on, are
    told when it begins and ends. Yields a function to call with the compiled program."""
    loggers = [cb for cb in drpo.event_callbacks if isinstance(cb, MLflowLogger)]
    added = None
    if not loggers and autologging_active() and _has_active_run():
        added = MLflowLogger()
        loggers = [added]
    started = []
    for tracker in loggers:
        try:
            tracker.begin(drpo)
            started.append(tracker)
        except Exception:
            logger.warning("MLflow tracking could not start; compiling without it", exc_info=True)
    saved = drpo.event_callbacks
    if added is not None and added in started:
        drpo.event_callbacks = [*saved, added]
    result: dict[str, Any] = {}
    try:
        yield lambda program: result.update(program=program)
    except BaseException as exc:
        _finish(started, None, exc)
        raise
    else:
        _finish(started, result.get("program"), None)
    finally:
        drpo.event_callbacks = saved


def _has_active_run() -> bool:
    try:
        import mlflow

        return mlflow.active_run() is not None
    except Exception:
        return False


def _finish(trackers: list[MLflowLogger], program: Any, error: BaseException | None) -> None:
    for tracker in trackers:
        try:
            tracker.finish(program, error)
        except Exception:
            logger.warning("MLflow tracking could not record the compile's result", exc_info=True)
