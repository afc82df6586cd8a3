"""DRPO for any DSPy program: align the instructions of its predictors with dynamic rewards.

The unchanged beam search runs over one text, the joint instructions of the aligned predictors with a
``### <predictor name>`` section each (:class:`~drpo_dspy.modules.aligned_program.ProgramView`). Every candidate
text is set on a copy of the program, the program answers the level's input, and the judge scores the
user-facing output field on aspects chosen for that input. The optimizer reads the sections, the final answer and
what each aligned predictor received and produced, and rewrites the sections (``signatures/propose_program.py``).
The compiled program keeps its structure (demos, LMs, sub-modules) and saves and loads as ordinary DSPy JSON; an
``AlignedResponder`` inside it keeps retrieving its examples. No labels and no hand-written metric are needed.

Compared with compiling an ``AlignedResponder``: no ICL stage, no resume, and the run directory (when ``log_dir`` is
set) holds ``config.json``, ``run.log``, ``trace.jsonl``, ``program.json`` and ``summary.json``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any

import dspy

from drpo_dspy.adapters.field_markers import neutralize_field_markers
from drpo_dspy.clients.budget import Budget, BudgetExhausted, StopSignal
from drpo_dspy.clients.failures import FailurePolicy, SystemicFailure
from drpo_dspy.clients.metering import Meter
from drpo_dspy.clients.run_cache import run_lm_cache
from drpo_dspy.modules.aligned_program import ProgramView
from drpo_dspy.rewards.reward_judge import RewardJudge
from drpo_dspy.runs.run_dir import RunDirectory
from drpo_dspy.runs.run_log import RunLogWriter
from drpo_dspy.runs.secrets import Redactor, describe_lm
from drpo_dspy.signatures.propose_program import program_proposal_signature
from drpo_dspy.teleprompt.beam_search import BeamSearch
from drpo_dspy.teleprompt.events import EventBus
from drpo_dspy.teleprompt.progress import ProgressReporter
from drpo_dspy.teleprompt.result import DRPOResult
from drpo_dspy.teleprompt.search_state import SearchState

logger = logging.getLogger("drpo_dspy.teleprompt.drpo")


class ProgramBeamSearch(BeamSearch):
    """The beam search, with each answer's step-by-step trace shown to the optimizer after the answer."""

    def __init__(self, *, traces: dict[tuple[str, str], str], **kwargs: Any):
        super().__init__(**kwargs)
        self.traces = traces
        propose = getattr(self, "_propose", None)  # the search's proposal predictor: same fields, program wording
        if isinstance(propose, dspy.Predict):
            propose.signature = program_proposal_signature(propose.signature)

    def _propose_inputs(self, node: Any, *args: Any, **kwargs: Any) -> dict[str, str]:
        inputs = super()._propose_inputs(node, *args, **kwargs)
        trace = self.traces.get((node.prompt, node.query))
        if trace and "response" in inputs:
            inputs["response"] = f"{inputs['response']}\n\n{neutralize_field_markers(trace)}"
        return inputs


def _check_options(drpo: Any, resume: bool) -> None:
    if resume:
        raise ValueError("resume=True is for AlignedResponder compiles; a program's alignment reruns from its run "
                         "directory's LM cache instead (same log_dir: finished calls are not paid again)")
    if drpo.optimize_icl:
        raise ValueError("optimize_icl improves an AlignedResponder's example bank; a program has none: drop it")


def _decoded(lm: Any, drpo: Any) -> Any:
    """The base LM with DRPO's answer decoding (answer_temperature, answer_max_tokens) where they are set."""
    settings = {k: v for k, v in (("temperature", drpo.answer_temperature), ("max_tokens", drpo.answer_max_tokens))
                if v is not None}
    if not settings or not isinstance(lm, dspy.BaseLM):
        return lm
    decoded = lm.copy(**settings)
    decoded.history = lm.history
    return decoded


def align_program(drpo: Any, program: dspy.Module, trainset: Any, *, valset: Any = None,
                  predictors: Sequence[Any] | None = None, output_field: str | None = None,
                  resume: bool = False) -> dspy.Module:
    """Align the instructions of ``program``'s predictors with DRPO's search; return a new program.

    Args:
        drpo: The configured ``DRPO`` teleprompter (roles, search shape, budgets, callbacks, ``log_dir``).
        program: Any ``dspy.Module``; it is not modified.
        trainset: The program's inputs: ``dspy.Example``s with input keys, dicts, or strings for a program with one
            input. No labels are needed.
        valset: Inputs that re-score the final beam (optional).
        predictors: The predictors to align, by name (``program.named_predictors()``) or object; default: all.
        output_field: The prediction field a person reads and the judge scores (default: the last output field of
            the program's last predictor).

    Returns:
        A copy of ``program`` with the best instructions found, and ``.drpo_result`` (not saved with it), whose
        ``best_prompt`` is the joint sectioned text.
    """
    _check_options(drpo, resume)
    view = ProgramView(program, predictors, output_field, drpo.initial_instructions)
    queries = view.queries(trainset)
    held = view.queries(valset, "valset") if valset is not None else None
    if held is not None and drpo.paper_mode:
        raise ValueError("paper_mode has no valset re-scoring (the original returns the search's best prompt)")
    split = getattr(drpo, "_split", None)
    if split is not None:
        queries, held = split(queries, held)
    roles = drpo._roles()
    redactor = Redactor(roles.values())
    run_dir = RunDirectory(drpo.log_dir, redactor=redactor) if drpo.log_dir else None
    meter = Meter(FailurePolicy(drpo.max_errors, redact=redactor.text))
    lms = {role: meter.watch(lm, role) if isinstance(lm, dspy.LM) else lm for role, lm in roles.items()}
    base = _decoded(lms["base"], drpo)
    stop = StopSignal(run_dir.file("STOP") if run_dir else None)
    budget = Budget(meter, stop=stop, **drpo.budgets)
    rewarder = RewardJudge(metrics_lm=lms["metrics"], judge_lm=lms["judge"], catalogue=drpo.catalogue, meter=meter,
                           budget=budget, paper_mode=drpo.paper_mode)
    traces: dict[tuple[str, str], str] = {}
    lock = threading.Lock()

    def answer(prompt: str, query: str) -> str:
        response, trace = view.answer(prompt, query, base)
        with lock:
            traces[(prompt, query)] = trace
        return response

    bus = EventBus(drpo.callbacks)
    search = ProgramBeamSearch(traces=traces, settings=drpo.settings, answer=answer, rewarder=rewarder,
                               optimizer_lm=lms["optimizer"], meter=meter, emit=bus.emit, should_stop=stop,
                               budget=budget, base_lm=lms["base"])
    started, initial = time.monotonic(), view.render()
    if run_dir is not None:
        run_dir.write_json("config.json", {
            "format": "drpo-dspy/program-config", "version": 1, "program": type(program).__name__,
            "predictors": view.names, "output_field": view.output_field, "paper_mode": drpo.paper_mode,
            "initial_instructions": initial, "roles": {role: describe_lm(lm) for role, lm in lms.items()},
            "num_queries": len(queries), "queries": queries, "held_out_queries": held or [],
            "budgets": drpo.budgets, "max_errors": drpo.max_errors})
        bus.add_listener(RunLogWriter(run_dir))
    progress = ProgressReporter(bar=drpo.progress, total=min(drpo.settings.depth, len(queries)),
                                max_levels=len(queries))
    bus.add_listener(progress)
    cache = run_lm_cache(run_dir.file("lm_cache")) if run_dir is not None else nullcontext()

    def summary(state: SearchState, validation: Any = None, **extra: Any) -> dict[str, Any]:
        best = state.best
        return {"levels": state.level, "best_prompt": best.prompt if best else None,
                "best_path_mean": best.path_mean if best else None,
                "reward_per_level": [n.reward for n in state.best_path], "usage": meter.summary(),
                "wall_time_s": round(time.monotonic() - started, 3), "stopped": state.stopped,
                "validation": validation, **extra}

    try:
        with cache:
            state = search.run(queries, initial)
    except SystemicFailure as exc:
        if run_dir is not None:
            run_dir.write_json("summary.json", summary(search.state or SearchState(), failed=str(exc)))
        raise
    finally:
        progress.close()
    if state.level and not any(n.judgment.reward is not None for n in state.ancestry):
        raise meter.policy.no_reward_failure()
    best_text = state.best.prompt if state.best else initial
    validation = None
    if held and state.beam and not state.stopped:
        from drpo_dspy.teleprompt.rescoring import rescore

        try:
            with cache:
                validation = rescore(state.beam, held, search.evaluate, drpo.settings.num_threads)
            best_text = validation[0]["prompt"]
        except BudgetExhausted as exc:
            state.stopped = f"validation re-scoring skipped: {exc}"
    compiled = view.apply(best_text)
    best = state.best
    compiled.drpo_result = DRPOResult(
        best_prompt=view.render(view.parse(best_text)), best_path_mean=best.path_mean if best else None,
        levels=state.levels, best_path=[n.to_dict() for n in state.best_path],
        final_beam=[n.to_dict() for n in state.beam], usage=meter.summary(),
        wall_time_s=round(time.monotonic() - started, 3), stopped=state.stopped,
        log_dir=str(run_dir.path) if run_dir else None, reward_per_level=[n.reward for n in state.best_path],
        validation=validation)
    if run_dir is not None:
        compiled.save(str(run_dir.file("program.json")))
        run_dir.redact_file("program.json")
        run_dir.write_json("summary.json", summary(state, validation))
        logger.info("DRPO run directory: %s", run_dir.path)
    return compiled
