"""DRPO for any DSPy program: align the instructions of its predictors with dynamic rewards.

The unchanged beam search runs over one text, the joint instructions of the aligned predictors with a
``### <predictor name>`` section each (:class:`~drpo_dspy.modules.aligned_program.ProgramView`). Every candidate
text is set on a copy of the program, the program answers the level's input, and the judge scores the
user-facing output field on aspects chosen for that input. The optimizer reads the sections, the final answer and
what each aligned predictor received and produced, and rewrites the sections (``signatures/propose_program.py``).
The compiled program keeps its structure (demos, LMs, sub-modules) and saves and loads as ordinary DSPy JSON; an
``AlignedResponder`` inside it keeps retrieving its examples. No labels and no hand-written metric are needed.

It is the same compile as an ``AlignedResponder``'s (:class:`~drpo_dspy.teleprompt.compilation.Compilation`:
budgets, failure policy, events, checkpoints, ``levels.json``, ``resume=True``), without the ICL stage. The run
directory also holds ``program_traces.json``, the step-by-step traces the optimizer was shown, so that a resumed
search shows it the same text.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import dspy

from drpo_dspy.adapters.field_markers import neutralize_field_markers
from drpo_dspy.modules.aligned_program import ProgramView
from drpo_dspy.primitives.events import LevelFinished
from drpo_dspy.runs.run_dir import RunDirectory
from drpo_dspy.runs.secrets import Redactor, describe_lm
from drpo_dspy.signatures.propose_program import program_proposal_signature
from drpo_dspy.teleprompt.beam_search import BeamSearch
from drpo_dspy.teleprompt.compilation import Compilation
from drpo_dspy.teleprompt.search_state import SearchState

TRACES_FILE = "program_traces.json"

class ProgramBeamSearch(BeamSearch):
    """The beam search, with each answer's step-by-step trace shown to the optimizer after the answer."""

    def __init__(self, *, traces: dict[tuple[str, str], str], **kwargs: Any):
        super().__init__(propose_signature=program_proposal_signature, **kwargs)  # same fields, program wording
        self.traces = traces

    def _propose_inputs(self, node: Any, *args: Any, **kwargs: Any) -> dict[str, str]:
        inputs = super()._propose_inputs(node, *args, **kwargs)
        trace = self.traces.get((node.prompt, node.query))
        if trace and "response" in inputs:
            inputs["response"] = f"{inputs['response']}\n\n{neutralize_field_markers(trace)}"
        return inputs




def _decoded(lm: Any, drpo: Any) -> Any:
    """The base LM with DRPO's answer decoding (answer_temperature, answer_max_tokens) where they are set."""
    settings = {k: v for k, v in (("temperature", drpo.answer_temperature), ("max_tokens", drpo.answer_max_tokens))
                if v is not None}
    if not settings or not isinstance(lm, dspy.BaseLM):
        return lm
    decoded = lm.copy(**settings)
    decoded.history = lm.history
    return decoded


class ProgramCompilation(Compilation):
    """A DRPO compile whose candidates are joint instruction texts of a program's predictors (``view``)."""

    def __init__(self, drpo: Any, view: ProgramView, queries: list[str], roles: dict[str, Any],
                 run_dir: RunDirectory | None, valset: list[str] | None = None, redactor: Any = None):
        self.view = view
        super().__init__(drpo, view.program, queries, roles, run_dir, valset, redactor=redactor)
        self.base = _decoded(self.lms["base"], drpo)
        self.traces: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()

    def initial_prompt(self) -> str:
        return self.view.render()

    def new_search(self, **kwargs: Any) -> BeamSearch:
        return ProgramBeamSearch(traces=self.traces, **kwargs)

    def preflight_retrieval(self) -> None:
        """Nothing to try: a program has no student bank (an AlignedResponder inside it retrieves as it answers)."""

    def answer(self, prompt: str, query: str) -> str:
        response, trace = self.view.answer(prompt, query, self.base)
        with self._lock:
            self.traces[(prompt, query)] = trace
        return response

    def finish(self, best_prompt: str | None, state: SearchState) -> Any:
        text = best_prompt or self.initial
        compiled = self.view.apply(text)
        compiled.drpo_result = self.result(state)
        compiled.drpo_result.best_prompt = self.view.render(self.view.parse(text))
        return compiled

    def config(self) -> dict[str, Any]:
        drpo, view = self.drpo, self.view
        return {
            "format": "drpo-dspy/program-config", "version": 1, "program": type(view.program).__name__,
            "predictors": view.names, "output_field": view.output_field, "paper_mode": drpo.fidelity.is_paper,
            "search": asdict(drpo.settings), "initial_instructions": self.initial,
            "roles": {role: describe_lm(lm) for role, lm in self.lms.items()}, "aspects": drpo.catalogue.names,
            "num_queries": len(self.queries), "queries": self.queries, "holdout_queries": self.valset or [],
            "answer_temperature": drpo.answer_temperature, "max_answer_tokens": drpo.answer_max_tokens,
            "budgets": drpo.budgets, "max_errors": drpo.max_errors, "guards": drpo.settings.guards.describe(),
        }

    def load_checkpoint(self) -> SearchState | None:
        state = super().load_checkpoint()
        if state is not None and self.run_dir is not None and self.run_dir.file(TRACES_FILE).exists():
            self.traces.update({(r["prompt"], r["query"]): r["trace"] for r in self.run_dir.read_json(TRACES_FILE)})
        return state

    def run(self, state: SearchState | None = None) -> dspy.Module:
        if self.run_dir is not None:
            self.bus.add_listener(self._save_traces)
        return super().run(state)

    def _save_traces(self, event: Any) -> None:
        """On every finished level: the traces the optimizer may still be shown, for a resumed search."""
        if isinstance(event, LevelFinished) and self.run_dir is not None:
            with self._lock:
                rows = [{"prompt": p, "query": q, "trace": t} for (p, q), t in self.traces.items()]
            self.run_dir.write_json(TRACES_FILE, rows)


def align_program(drpo: Any, program: dspy.Module, trainset: Any, *, valset: Any = None,
                  predictors: Sequence[Any] | None = None, output_field: str | None = None,
                  resume: bool = False) -> dspy.Module:
    """Align the instructions of ``program``'s predictors with DRPO's search; return a new program.

    Args:
        drpo: The configured ``DRPO`` teleprompter (roles, search shape, budgets, guards, callbacks, ``log_dir``).
        program: Any ``dspy.Module``; it is not modified.
        trainset: The program's inputs: ``dspy.Example``s with input keys, dicts, or strings for a program with one
            input. No labels are needed (labels present are ignored).
        valset: Inputs that re-score the final beam (optional).
        predictors: The predictors to align, by name (``program.named_predictors()``) or object; default: all.
        output_field: The prediction field a person reads and the judge scores (default: the last output field of
            the program's last predictor).
        resume: Continue the run recorded in ``log_dir`` (same program, settings and inputs).

    Returns:
        A copy of ``program`` with the best instructions found, and ``.drpo_result`` (not saved with it), whose
        ``best_prompt`` is the joint sectioned text.
    """
    if drpo.optimize_icl:
        raise ValueError("optimize_icl improves an AlignedResponder's example bank; a program has none: drop it")
    if resume and not drpo.log_dir:
        raise ValueError("resume=True needs the log_dir of the run to continue")
    view = ProgramView(program, predictors, output_field, drpo.initial_instructions)
    queries = view.queries(trainset)
    held = view.queries(valset, "valset") if valset is not None else None
    if held is not None and not drpo.fidelity.valset_rescoring:
        raise ValueError("paper_mode has no valset re-scoring (the original returns the search's best prompt)")
    queries, held = drpo._split(queries, held)
    roles = drpo._roles()
    redactor = Redactor(roles.values())
    run_dir = RunDirectory(drpo.log_dir, redactor=redactor, resume=resume) if drpo.log_dir else None
    compilation = ProgramCompilation(drpo, view, queries, roles, run_dir, held or None, redactor=redactor)
    state = compilation.load_checkpoint() if resume else None
    return compilation.run(state)
