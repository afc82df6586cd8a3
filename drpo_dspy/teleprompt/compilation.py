"""One DRPO compile: wires the roles, meter, budget, failure policy, rewarder, search and run directory together.

The search announces every step as an event; the run log, the checkpoints, the progress bar and the user's
callbacks are listeners on the same bus. A systemic failure (see :mod:`drpo_dspy.clients.failures`) stops the
compile at once: the finished levels stay in the run directory, ``summary.json`` says what failed, and the
exception reaches the caller; no prompt is returned that no reward was read for.
"""

from __future__ import annotations

import functools
import logging
import time
from contextlib import nullcontext
from dataclasses import asdict
from typing import Any

import dspy

from drpo_dspy.adapters.answer_checks import find_copy
from drpo_dspy.clients.budget import Budget, BudgetExhausted, StopSignal
from drpo_dspy.clients.failures import FailurePolicy, SystemicFailure, systemic_reason
from drpo_dspy.clients.metering import Meter
from drpo_dspy.clients.run_cache import run_lm_cache
from drpo_dspy.modules.aligned_responder import AlignedResponder
from drpo_dspy.primitives.conversation_query import ConversationQuery, live_query, query_record
from drpo_dspy.primitives.events import EventBus
from drpo_dspy.rewards.reward_judge import RewardJudge
from drpo_dspy.runs.run_dir import RunDirectory
from drpo_dspy.runs.secrets import Redactor, describe_lm
from drpo_dspy.teleprompt.beam_search import BeamSearch
from drpo_dspy.teleprompt.checkpoints import Checkpointer, load_checkpoint
from drpo_dspy.teleprompt.progress import ProgressReporter
from drpo_dspy.teleprompt.result import DRPOResult
from drpo_dspy.teleprompt.run_log import RunLogWriter
from drpo_dspy.teleprompt.search_state import Node, SearchState

logger = logging.getLogger("drpo_dspy.teleprompt.drpo")


def _ensure_embedded(model: str) -> None:
    from drpo_dspy.clients.embedded import ensure_embedded_runtime

    ensure_embedded_runtime(model)


class Compilation:
    """One compile of one program with one DRPO configuration (``drpo`` is the ``DRPO`` teleprompter)."""

    def __init__(self, drpo: Any, program: AlignedResponder, queries: list[str], roles: dict[str, Any],
                 run_dir: RunDirectory | None, valset: list[str] | None = None, redactor: Redactor | None = None):
        self.drpo, self.program, self.queries, self.run_dir, self.valset = drpo, program, queries, run_dir, valset
        self.initial = self.initial_prompt()
        self.redactor = redactor or (run_dir.redactor if run_dir is not None else Redactor(roles.values()))
        self.meter = Meter(FailurePolicy(drpo.max_errors, redact=self.redactor.text))
        self.roles = roles
        self.validation: list[dict[str, Any]] | None = None
        self.lms = {role: self.meter.watch(lm, role) if isinstance(lm, dspy.LM) else lm for role, lm in roles.items()}
        self.stop = StopSignal(run_dir.file("STOP") if run_dir else None, drpo.stop_file)
        self.budget = Budget(self.meter, stop=self.stop, **drpo.budgets)
        self.rewarder = RewardJudge(metrics_lm=self.lms["metrics"], judge_lm=self.lms["judge"],
                                    catalogue=drpo.catalogue, meter=self.meter, budget=self.budget,
                                    fidelity=drpo.fidelity)
        self.started = time.monotonic()
        self.bus = EventBus(drpo.event_callbacks)

    def initial_prompt(self) -> str:
        """The root of the search."""
        return self.drpo.initial_instructions or self.program.instructions

    def new_search(self, **kwargs: Any) -> BeamSearch:
        """The beam search this compile runs (a subclass may show the optimizer more)."""
        return BeamSearch(**kwargs)

    def finish(self, best_prompt: str | None, state: SearchState) -> Any:
        """The compiled program: a copy of the student with the best prompt, and its ``drpo_result``."""
        compiled = self.program.with_state(instructions=best_prompt) if best_prompt else self.program.deepcopy()
        layout = self.drpo.fidelity.program_layout  # paper: the original's, the user turn ends at <START>
        if layout and getattr(compiled, "layout", None) is not None:
            compiled.layout = layout
        compiled.drpo_result = self.result(state)
        compiled.drpo_result.best_prompt = compiled.instructions
        return compiled

    def _cache(self):
        return run_lm_cache(self.run_dir.file("lm_cache")) if self.run_dir is not None else nullcontext()

    def load_checkpoint(self) -> SearchState | None:
        """The state saved in the run directory (after checking it is this run's), with the caches it needs."""
        if self.run_dir is None:
            return None
        state = load_checkpoint(self.run_dir, self.config())
        if state is None:
            return None
        if self.run_dir.file("metrics_cache.json").exists():
            self.rewarder.preload(self.run_dir.read_json("metrics_cache.json"))
        if self.run_dir.file("summary.json").exists():
            self.meter.load_state(self.run_dir.read_json("summary.json").get("usage", {}))
        return state

    def _optimize_examples(self) -> None:
        """The paper's offline stage: sharpen the example answers before the prompt search uses them."""
        from drpo_dspy.teleprompt.icl_optimization import optimize_bank

        logger.info("optimizing the answers of %d in-context examples", len(self.program.bank))
        bank = optimize_bank(self.program.bank, metrics_lm=self.lms["metrics"], judge_lm=self.lms["judge"],
                             rewriter_lm=self.roles["optimizer"], rounds=self.drpo.icl_rounds,
                             num_threads=self.drpo.settings.num_threads, meter=self.meter,
                             catalogue=self.drpo.catalogue, budget=self.budget)
        self.program = self.program.with_state(bank=bank)
        if self.run_dir is not None:
            bank.save(self.run_dir.file("icl_bank.json"))

    def preflight(self) -> None:
        """Fail before the first LM call when a role's local model or the example retrieval cannot work."""
        for role, lm in self.roles.items():
            model = str(getattr(lm, "model", ""))
            if model.removeprefix("drpo_text/").startswith("embedded/"):
                self._check(role, lm, functools.partial(_ensure_embedded, model))
        self.preflight_retrieval()

    def preflight_retrieval(self) -> None:
        """The student's example retrieval, tried once on the first query."""
        if self.program.k and len(self.program.bank) and not self.program.examples.fixed:
            self._check("base", self.roles["base"], lambda: self.program.retrieve(live_query(self.queries[0])))

    def _check(self, role: str, lm: Any, probe: Any) -> None:
        try:
            probe()
        except Exception as exc:
            reason = systemic_reason(exc)
            if reason is None:
                raise
            model = str(getattr(lm, "model", type(lm).__name__))
            raise SystemicFailure(role, model, reason, self.redactor.text(f"{type(exc).__name__}: {exc}"), 0) from exc

    def answer(self, prompt: str, query: str) -> str:
        """The base model's answer under ``prompt``; a conversation's last user turn is answered after its earlier
        turns (``history``), in the DRPO layout."""
        history = query.history if isinstance(query, ConversationQuery) else None
        return self.program.respond_with(prompt, live_query(query), lm=self.lms["base"],
                                         fidelity=self.drpo.fidelity, history=history)

    def copied_example(self, query: Any, response: str) -> dict[str, Any] | None:
        """The shown example ``response`` copied a run of 40+ characters from, if any (retrieval is cached)."""
        if not getattr(self.program, "k", 0) or not len(self.program.bank):  # any DSPy program: no retrieval
            return None
        shown = [(e.shown_query, e.answer) for e in self.program.retrieve(live_query(query))]
        found = find_copy(response, shown, query=live_query(query))
        return None if found is None else found.to_dict()

    def run(self, state: SearchState | None = None) -> AlignedResponder:
        drpo = self.drpo
        if self.run_dir is not None:
            self.run_dir.write_json("config.json", self.config())
        self.preflight()
        search = self.new_search(
            settings=drpo.settings,
            answer=self.answer,
            rewarder=self.rewarder, optimizer_lm=self.lms["optimizer"], meter=self.meter, emit=self.bus.emit,
            should_stop=self.stop, budget=self.budget, base_lm=self.lms["base"], inspect_answer=self.copied_example,
        )
        if self.run_dir is not None:
            self.bus.add_listener(RunLogWriter(self.run_dir))
            self.bus.add_listener(Checkpointer(self.run_dir, lambda: search.state, lambda: self.rewarder.cache,
                                               self.summary))
        progress = ProgressReporter(bar=drpo.progress, total=min(drpo.settings.depth, len(self.queries)),
                                    initial=state.level if state else 0, max_levels=len(self.queries))
        self.bus.add_listener(progress)
        try:
            with self._cache():
                if drpo.optimize_icl and len(self.program.bank):  # on resume it replays from the run's LM cache
                    self._optimize_examples()
                state = search.run(self.queries, self.initial, state)
        except SystemicFailure as exc:
            self._record_failure(search.state, exc)
            raise
        finally:
            progress.close()
        if state.level and not any(n.judgment.reward is not None for n in state.ancestry):
            failure = self.meter.policy.no_reward_failure()
            self._record_failure(state, failure)
            raise failure
        if state.stopped:
            logger.warning("DRPO stopped early: %s; returning the best prompt of level %d", state.stopped, state.level)
        chosen = self.chosen(state)
        if chosen is not state.best and state.best is not None and chosen is not None:
            logger.warning("no reward was read for the search's best prompt (node %d: %s); returning node %d, the "
                           "best prompt a reward was read for", state.best.id, state.best.judgment.failure or "no "
                           "reward", chosen.id)
        best_prompt = chosen.prompt if chosen else None
        if self.valset and state.beam and not state.stopped:
            from drpo_dspy.teleprompt.rescoring import rescore

            try:
                with self._cache():
                    self.validation = rescore(state.beam, self.valset, search.evaluate, drpo.settings.num_threads)
                best_prompt = self.validation[0]["prompt"]
            except BudgetExhausted as exc:
                state.stopped = f"validation re-scoring skipped: {exc}"
        compiled = self.finish(best_prompt, state)
        if self.run_dir is not None:
            compiled.save(str(self.run_dir.file("program.json")))
            self.run_dir.redact_file("program.json")
            self.run_dir.write_json("summary.json", self.summary(state))
            logger.info("DRPO run directory: %s", self.run_dir.path)
        return compiled

    def _record_failure(self, state: SearchState | None, exc: SystemicFailure) -> None:
        if self.run_dir is not None:
            self.run_dir.write_json("summary.json", {**self.summary(state or SearchState()), "failed": str(exc)})
            self.run_dir.append_text("run.log", f"\n### failed: {exc}\n")

    def config(self) -> dict[str, Any]:
        drpo = self.drpo
        return {
            "format": "drpo-dspy/config", "version": 1, "paper_mode": drpo.fidelity.is_paper,
            "search": asdict(drpo.settings), "k": self.program.k, "optimize_icl": drpo.optimize_icl,
            "icl_rounds": drpo.icl_rounds, "initial_instructions": self.initial,
            "roles": {role: describe_lm(lm) for role, lm in self.lms.items()},
            "aspects": drpo.catalogue.names, "num_queries": len(self.queries),
            "queries": [query_record(q) for q in self.queries],
            "embedder": getattr(self.program.bank, "embedder_name", None), "bank_size": len(self.program.bank),
            "max_answer_tokens": self.program.max_tokens, "answer_temperature": self.program.temperature,
            "budgets": drpo.budgets, "max_errors": drpo.max_errors,
            "guards": drpo.settings.guards.describe(), "holdout_queries": [query_record(q) for q in self.valset or []],
        }

    def chosen(self, state: SearchState) -> Node | None:
        """The node whose prompt the compile returns: the search's best, or (unless the policy returns unjudged
        prompts, as the original does) the best one a reward was read for."""
        if self.drpo.fidelity.returns_unjudged:
            return state.best
        return state.best_judged() or state.best

    def summary(self, state: SearchState) -> dict[str, Any]:
        best = self.chosen(state)
        path = state.path_to(best) if best else []
        return {
            "levels": state.level, "max_depth": state.max_depth, "depth_increases": state.depth_increases,
            "best_prompt": best.prompt if best else None, "best_path_mean": best.path_mean if best else None,
            "reward_per_level": [n.reward for n in path],
            "usage": self.meter.summary(), "wall_time_s": round(time.monotonic() - self.started, 3),
            "stopped": state.stopped, "validation": self.validation,
            "guards": {**self.drpo.settings.guards.describe(), "held_out_queries": len(self.valset or [])},
            "answer_tokens_per_level": [[c.get("answer_tokens") for c in level["candidates"]]
                                        for level in state.levels],
            "train_vs_held_out": [{"prompt": row["prompt"], "train_path_mean": row.get("train_path_mean"),
                                   "held_out_mean": row["val_mean"]} for row in self.validation or []],
        }

    def result(self, state: SearchState) -> DRPOResult:
        best = self.chosen(state)
        path = state.path_to(best) if best else []
        return DRPOResult(
            best_prompt=best.prompt if best else self.initial,
            best_path_mean=best.path_mean if best else None, levels=state.levels,
            best_path=[n.to_dict() for n in path], final_beam=[n.to_dict() for n in state.beam],
            usage=self.meter.summary(), wall_time_s=round(time.monotonic() - self.started, 3),
            stopped=state.stopped, log_dir=str(self.run_dir.path) if self.run_dir else None,
            reward_per_level=[n.reward for n in path], validation=self.validation,
        )
