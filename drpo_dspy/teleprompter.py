"""The DRPO teleprompter: compile an AlignedResponder whose system prompt was found by DRPO's beam search."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import dspy
from dspy.teleprompt import Teleprompter

from drpo_dspy.aspects import AspectCatalogue
from drpo_dspy.metering import Meter
from drpo_dspy.responder import AlignedResponder
from drpo_dspy.reward import DynamicRewarder
from drpo_dspy.run_dir import RunDirectory, published_levels
from drpo_dspy.search import BeamSearch, Node, SearchSettings, SearchState
from drpo_dspy.secrets import Redactor, describe_lm
from drpo_dspy.validation import check_number, check_positive_int, coerce_queries, resolve_lm

logger = logging.getLogger(__name__)


@dataclass
class DRPOResult:
    """What a compile found, attached to the returned program as ``.drpo_result`` (not saved with it)."""

    best_prompt: str
    best_path_mean: float | None
    levels: int
    best_path: list[dict[str, Any]]
    final_beam: list[dict[str, Any]]
    usage: dict[str, Any]
    wall_time_s: float
    stopped: str | None = None
    log_dir: str | None = None
    reward_per_level: list[float | None] = field(default_factory=list)


class DRPO(Teleprompter):
    """Dynamic Rewarding with Prompt Optimization.

    Args:
        base_lm: The model being aligned (chat or ``model_type="text"``). Defaults to ``dspy.settings.lm``.
        metrics_lm: Picks the reward aspects per query. Defaults to ``dspy.settings.lm``.
        judge_lm: Scores answers 1-5 per aspect. Defaults to ``dspy.settings.lm``.
        optimizer_lm: Rewrites the system prompt. Defaults to ``dspy.settings.lm``.
        beam_size, n_actions, depth, max_depth_increase: Beam search shape (published: 2, 3, 20, 10).
        temperature: Optimizer sampling temperature (0.2).
        skip_threshold: A mean score above this (or all 5s) carries the prompt over without a rewrite (4.5).
        k: In-context examples retrieved per query, during the search and in the compiled program (2).
        initial_instructions: The starting system prompt; default: the student's instructions (which are
            "You are a helpful assistant." unless set otherwise).
        num_threads: Concurrent LM calls within a level.
        seed: Seed for sampled calls on local models.
        log_dir: Run directory (configuration, log, trace, per-level results, caches, program, summary).
        catalogue: Reward aspects (default: the 14 built-in ones).
        paper_faithful_failures: Treat an unreadable judgment as reward 0 plus a skip, as the original code did.
        progress: Show a progress bar while compiling.
    """

    def __init__(
        self,
        *,
        base_lm: dspy.BaseLM | None = None,
        metrics_lm: dspy.BaseLM | None = None,
        judge_lm: dspy.BaseLM | None = None,
        optimizer_lm: dspy.BaseLM | None = None,
        beam_size: int = 2,
        n_actions: int = 3,
        depth: int = 20,
        max_depth_increase: int = 10,
        temperature: float = 0.2,
        skip_threshold: float = 4.5,
        k: int = 2,
        initial_instructions: str | None = None,
        num_threads: int = 8,
        seed: int = 0,
        log_dir: str | Path | None = None,
        catalogue: AspectCatalogue | None = None,
        paper_faithful_failures: bool = False,
        progress: bool = True,
    ):
        super().__init__()
        check_positive_int("beam_size", beam_size)
        check_positive_int("n_actions", n_actions)
        check_positive_int("depth", depth)
        check_positive_int("max_depth_increase", max_depth_increase, minimum=0)
        check_positive_int("k", k, minimum=0)
        check_positive_int("num_threads", num_threads)
        check_positive_int("seed", seed, minimum=0)
        check_number("temperature", temperature, 0.0, 2.0)
        check_number("skip_threshold", skip_threshold, 1.0, 5.0)
        if initial_instructions is not None and (
                not isinstance(initial_instructions, str) or not initial_instructions.strip()):
            raise ValueError("initial_instructions must be a non-empty string")
        if catalogue is not None and not isinstance(catalogue, AspectCatalogue):
            raise ValueError("catalogue must be an AspectCatalogue")
        self.base_lm, self.metrics_lm, self.judge_lm, self.optimizer_lm = base_lm, metrics_lm, judge_lm, optimizer_lm
        self.settings = SearchSettings(beam_size=beam_size, n_actions=n_actions, depth=depth,
                                       max_depth_increase=max_depth_increase, skip_threshold=skip_threshold,
                                       temperature=temperature, num_threads=num_threads, seed=seed,
                                       paper_faithful_failures=paper_faithful_failures)
        self.k = k
        self.initial_instructions = initial_instructions
        self.log_dir = log_dir
        self.catalogue = catalogue or AspectCatalogue()
        self.progress = progress

    def compile(self, student: AlignedResponder, *, trainset: Any, valset: Any = None, teacher: Any = None,
                **kwargs: Any) -> AlignedResponder:
        """Search for the alignment prompt; return a new AlignedResponder (the student is not modified)."""
        if teacher is not None:
            raise ValueError("DRPO does not use a teacher program")
        if kwargs:
            raise TypeError(f"unexpected compile() arguments: {', '.join(sorted(kwargs))}")
        if not isinstance(student, AlignedResponder):
            raise ValueError(f"DRPO compiles an AlignedResponder, got {type(student).__name__}")
        queries = coerce_queries(trainset)
        if valset is not None:
            coerce_queries(valset, "valset")
        roles = {role: resolve_lm(role, lm) for role, lm in (
            ("base", self.base_lm), ("metrics", self.metrics_lm), ("judge", self.judge_lm),
            ("optimizer", self.optimizer_lm))}
        program = student.deepcopy()
        program.k = self.k  # raises a clear error when the bank is smaller than k
        run_dir = RunDirectory(self.log_dir, redactor=Redactor(roles.values())) if self.log_dir else None
        return _Compilation(self, program, queries, roles, run_dir).run()


class _Compilation:
    """One compile: wires roles, meter, rewarder, search and run directory together."""

    def __init__(self, drpo: DRPO, program: AlignedResponder, queries: list[str], roles: dict[str, Any],
                 run_dir: RunDirectory | None):
        self.drpo, self.program, self.queries, self.run_dir = drpo, program, queries, run_dir
        self.initial = drpo.initial_instructions or program.instructions
        self.meter = Meter()
        self.lms = {role: self.meter.watch(lm, role) if isinstance(lm, dspy.LM) else lm for role, lm in roles.items()}
        self.rewarder = DynamicRewarder(metrics_lm=self.lms["metrics"], judge_lm=self.lms["judge"],
                                        catalogue=drpo.catalogue, meter=self.meter)
        self.started = time.monotonic()
        self._bar: Any = None

    # -- callbacks from the search --------------------------------------------------------------------
    def _on_node(self, node: Node) -> None:
        if self.run_dir is None:
            return
        self.run_dir.append_jsonl("trace.jsonl", node.to_dict())
        verdict = node.judgment.render()
        self.run_dir.append_text("run.log", (
            f"\n=== level {node.level} | node {node.id} (parent {node.parent_id}){' | carried' if node.carried else ''}"
            f" | reward {_fmt(node.reward)} | path mean {_fmt(node.path_mean)}\n"
            f"--- prompt\n{node.prompt}\n--- query\n{node.query}\n--- answer\n{node.response}\n"
            f"--- judgment ({', '.join(node.judgment.aspects)})\n{verdict}\n"))

    def _on_level(self, state: SearchState) -> None:
        best = state.best
        if self._bar is not None:
            self._bar.update(state.level - self._bar.n)
            self._bar.total = max(state.max_depth, state.level)
            self._bar.set_postfix(best=_fmt(best.path_mean if best else None))
        if self.run_dir is not None:
            self.run_dir.write_json("checkpoint.json", {"format": "drpo-dspy/checkpoint", "version": 1,
                                                         "state": state.to_dict()})
            self.run_dir.write_json("levels.json", published_levels(state.best_path))
            self.run_dir.write_json("metrics_cache.json", self.rewarder.cache)
            self.run_dir.write_json("summary.json", self._summary(state))

    # -- the compile ----------------------------------------------------------------------------------
    def run(self) -> AlignedResponder:
        drpo = self.drpo
        if self.run_dir is not None:
            self.run_dir.write_json("config.json", self._config())
        search = BeamSearch(
            settings=drpo.settings,
            answer=lambda prompt, query: self.program.respond_with(prompt, query, lm=self.lms["base"]),
            rewarder=self.rewarder, optimizer_lm=self.lms["optimizer"], meter=self.meter,
            on_node=self._on_node, on_level=self._on_level,
        )
        if drpo.progress:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=min(drpo.settings.depth, len(self.queries)), desc="DRPO levels", unit="level")
        try:
            state = search.run(self.queries, self.initial)
        finally:
            if self._bar is not None:
                self._bar.close()
        best = state.best
        compiled = self.program.with_state(instructions=best.prompt) if best else self.program.deepcopy()
        compiled.drpo_result = self._result(state)
        if self.run_dir is not None:
            compiled.save(str(self.run_dir.file("program.json")))
            self.run_dir.redact_file("program.json")
            self.run_dir.write_json("summary.json", self._summary(state))
            logger.info("DRPO run directory: %s", self.run_dir.path)
        return compiled

    def _config(self) -> dict[str, Any]:
        drpo = self.drpo
        return {
            "format": "drpo-dspy/config", "version": 1,
            "search": asdict(drpo.settings), "k": drpo.k, "initial_instructions": self.initial,
            "roles": {role: describe_lm(lm) for role, lm in self.lms.items()},
            "aspects": drpo.catalogue.names, "num_queries": len(self.queries), "queries": self.queries,
            "embedder": getattr(self.program.bank, "embedder_name", None), "bank_size": len(self.program.bank),
        }

    def _summary(self, state: SearchState) -> dict[str, Any]:
        best = state.best
        return {
            "levels": state.level, "max_depth": state.max_depth, "depth_increases": state.depth_increases,
            "best_prompt": best.prompt if best else None, "best_path_mean": best.path_mean if best else None,
            "reward_per_level": [n.reward for n in state.best_path],
            "usage": self.meter.summary(), "wall_time_s": round(time.monotonic() - self.started, 3),
            "stopped": state.stopped,
        }

    def _result(self, state: SearchState) -> DRPOResult:
        best = state.best
        return DRPOResult(
            best_prompt=best.prompt if best else self.initial,
            best_path_mean=best.path_mean if best else None, levels=state.level,
            best_path=[n.to_dict() for n in state.best_path], final_beam=[n.to_dict() for n in state.beam],
            usage=self.meter.summary(), wall_time_s=round(time.monotonic() - self.started, 3),
            stopped=state.stopped, log_dir=str(self.run_dir.path) if self.run_dir else None,
            reward_per_level=[n.reward for n in state.best_path],
        )


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"
