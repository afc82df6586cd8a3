"""The DRPO teleprompter: compile an AlignedResponder whose system prompt was found by DRPO's beam search."""

from __future__ import annotations

import json
import logging
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import dspy
from dspy.teleprompt import Teleprompter

from drpo_dspy.clients.budget import Budget, StopSignal
from drpo_dspy.clients.metering import Meter
from drpo_dspy.clients.run_cache import run_lm_cache
from drpo_dspy.modules.aligned_responder import AlignedResponder
from drpo_dspy.rewards.aspects import AspectCatalogue
from drpo_dspy.rewards.reward_judge import DynamicRewarder
from drpo_dspy.runs.run_dir import RunDirectory, published_levels
from drpo_dspy.runs.secrets import Redactor, describe_lm
from drpo_dspy.runs.validation import check_number, check_positive_int, coerce_queries, resolve_lm
from drpo_dspy.teleprompt.beam_search import BeamSearch, Node, SearchSettings, SearchState

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "drpo-dspy/checkpoint"
RESUME_KEYS = ("search", "k", "initial_instructions", "roles", "aspects", "queries", "embedder", "bank_size",
               "max_answer_tokens")


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
    validation: list[dict[str, Any]] | None = None  # final-beam prompts re-scored on the valset, best first


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
        proposal_sampling: "batched" asks for the ``n_actions`` rewrites of a node in one request (as the paper's
            code does; an unreadable sample drops only itself); "independent" makes one request per rewrite.
        minibatch_size: Judge every candidate on this many queries per level instead of one (beyond the paper; a
            less noisy but costlier ranking). The level's reward is the mean; the optimizer sees the worst query.
        optimize_icl: First improve the answers of the student's example bank with a strict critic and a
            rewriter (the optimizer model), up to ``icl_rounds`` rounds each, as the paper's offline ICL stage does.
        max_calls, max_tokens, max_cost_usd: Hard budgets across all roles, checked before every call; when one
            would be exceeded the search stops and the best program of the last finished level is returned.
        progress: Show a progress bar while compiling.

    A ``STOP`` file in ``log_dir`` or Ctrl-C also stops the search gracefully. With ``log_dir`` set, a checkpoint
    is written after every level and LM responses are cached in ``log_dir/lm_cache``;
    ``compile(..., resume=True)`` continues an interrupted run without paying again for finished calls.
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
        proposal_sampling: str = "batched",
        minibatch_size: int = 1,
        optimize_icl: bool = False,
        icl_rounds: int = 5,
        max_calls: int | None = None,
        max_tokens: int | None = None,
        max_cost_usd: float | None = None,
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
        check_positive_int("icl_rounds", icl_rounds)
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
                                       paper_faithful_failures=paper_faithful_failures,
                                       proposal_sampling=proposal_sampling, minibatch_size=minibatch_size)
        self.k = k
        self.optimize_icl, self.icl_rounds = bool(optimize_icl), icl_rounds
        self.initial_instructions = initial_instructions
        self.log_dir = log_dir
        self.catalogue = catalogue or AspectCatalogue()
        self.progress = progress
        self.budgets = {"max_calls": max_calls, "max_tokens": max_tokens, "max_cost_usd": max_cost_usd}
        Budget(Meter(), **self.budgets)  # validates the limits now, before any compile

    def estimate(self, trainset: Any, student: AlignedResponder | None = None) -> dict[str, Any]:
        """Dry run: expected and maximum LM calls, tokens and dollars per role; makes no LM call."""
        from drpo_dspy.teleprompt.estimate import estimate

        queries = coerce_queries(trainset)
        roles = {role: resolve_lm(role, lm) for role, lm in (
            ("base", self.base_lm), ("metrics", self.metrics_lm), ("judge", self.judge_lm),
            ("optimizer", self.optimizer_lm))}
        bank = student.bank if student is not None else None
        example_chars = (sum(len(e.query) + len(e.answer) for e in bank.examples) // max(1, len(bank))
                         if bank is not None and len(bank) else 1500)
        s = self.settings
        return estimate(queries=queries, roles=roles, minibatch_size=s.minibatch_size, beam_size=s.beam_size,
                        n_actions=s.n_actions, depth=s.depth, max_depth_increase=s.max_depth_increase, k=self.k,
                        batched=s.batched, example_chars=example_chars)

    def compile(self, student: AlignedResponder, *, trainset: Any, valset: Any = None, teacher: Any = None,
                resume: bool = False, **kwargs: Any) -> AlignedResponder:
        """Search for the alignment prompt; return a new AlignedResponder (the student is not modified).

        ``resume=True`` continues the run recorded in ``log_dir`` (same settings and queries required).
        """
        if teacher is not None:
            raise ValueError("DRPO does not use a teacher program")
        if kwargs:
            raise TypeError(f"unexpected compile() arguments: {', '.join(sorted(kwargs))}")
        if not isinstance(student, AlignedResponder):
            raise ValueError(f"DRPO compiles an AlignedResponder, got {type(student).__name__}")
        queries = coerce_queries(trainset)
        val_queries = coerce_queries(valset, "valset") if valset is not None else None
        roles = {role: resolve_lm(role, lm) for role, lm in (
            ("base", self.base_lm), ("metrics", self.metrics_lm), ("judge", self.judge_lm),
            ("optimizer", self.optimizer_lm))}
        program = student.deepcopy()
        program.k = self.k  # raises a clear error when the bank is smaller than k
        if resume and not self.log_dir:
            raise ValueError("resume=True needs the log_dir of the run to continue")
        run_dir = RunDirectory(self.log_dir, redactor=Redactor(roles.values()), resume=resume) if self.log_dir else None
        compilation = _Compilation(self, program, queries, roles, run_dir)
        compilation.valset = val_queries
        state = compilation.load_checkpoint() if resume else None
        return compilation.run(state)


class _Compilation:
    """One compile: wires roles, meter, rewarder, search and run directory together."""

    def __init__(self, drpo: DRPO, program: AlignedResponder, queries: list[str], roles: dict[str, Any],
                 run_dir: RunDirectory | None):
        self.drpo, self.program, self.queries, self.run_dir = drpo, program, queries, run_dir
        self.initial = drpo.initial_instructions or program.instructions
        self.meter = Meter()
        self.roles = roles
        self.valset: list[str] | None = None
        self.validation: list[dict[str, Any]] | None = None
        self.lms = {role: self.meter.watch(lm, role) if isinstance(lm, dspy.LM) else lm for role, lm in roles.items()}
        self.rewarder = DynamicRewarder(metrics_lm=self.lms["metrics"], judge_lm=self.lms["judge"],
                                        catalogue=drpo.catalogue, meter=self.meter)
        self.budget = Budget(self.meter, **drpo.budgets)
        self.rewarder.budget = self.budget
        self.stop = StopSignal(run_dir.file("STOP") if run_dir else None)
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
        logger.info("level %d/%d: best path mean %s", state.level, state.max_depth,
                    _fmt(best.path_mean if best else None))
        if self._bar is not None:
            self._bar.update(state.level - self._bar.n)
            self._bar.total = max(state.max_depth, state.level)
            self._bar.set_postfix(best=_fmt(best.path_mean if best else None))
        if self.run_dir is not None:
            self.run_dir.write_json("checkpoint.json", {"format": CHECKPOINT_FORMAT, "version": 1,
                                                         "state": state.to_dict()})
            self.run_dir.write_json("levels.json", published_levels(state.best_path))
            self.run_dir.write_json("metrics_cache.json", self.rewarder.cache)
            self.run_dir.write_json("summary.json", self._summary(state))

    # -- resume ---------------------------------------------------------------------------------------
    def load_checkpoint(self) -> SearchState | None:
        """The search state saved in the run directory, after checking it belongs to this very run."""
        run_dir = self.run_dir
        if run_dir is None or not run_dir.file("checkpoint.json").exists():
            return None
        checkpoint = run_dir.read_json("checkpoint.json")
        if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT \
                or "state" not in checkpoint:
            raise ValueError(f"{run_dir.file('checkpoint.json')} is not a drpo-dspy checkpoint")
        saved = run_dir.read_json("config.json") if run_dir.file("config.json").exists() else {}
        mine = json.loads(json.dumps(run_dir.redactor.data(self._config())))
        differing = sorted(k for k in RESUME_KEYS if _comparable(saved.get(k)) != _comparable(mine.get(k)))
        if differing:
            raise ValueError(
                f"the checkpoint in {run_dir.path} belongs to a different run (differs in: {', '.join(differing)}); "
                "resume with the same settings, queries and models, or start a new log_dir"
            )
        try:
            state = SearchState.from_dict(checkpoint["state"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{run_dir.file('checkpoint.json')} is corrupt: {exc}") from exc
        if run_dir.file("metrics_cache.json").exists():
            self.rewarder.preload(run_dir.read_json("metrics_cache.json"))
        if run_dir.file("summary.json").exists():
            self.meter.load_state(run_dir.read_json("summary.json").get("usage", {}))
        self._trim_trace(state.level)
        logger.info("resuming %s after level %d", run_dir.path, state.level)
        return state

    def _trim_trace(self, level: int) -> None:
        """Drop trace lines of the level that was interrupted (it is evaluated again, from the LM cache)."""
        path = self.run_dir.file("trace.jsonl")
        if not path.exists():
            return
        kept = []
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                if lineno == len(path.read_text(encoding="utf-8").splitlines()):
                    continue  # a line cut short by a kill: it belongs to the interrupted level
                raise ValueError(f"{path} line {lineno} is corrupt; remove that line to resume") from None
            if record.get("level", 0) <= level:
                kept.append(line)
        path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")

    # -- the compile ----------------------------------------------------------------------------------
    def _optimize_examples(self) -> None:
        """The paper's offline stage: sharpen the example answers before the prompt search uses them."""
        from drpo_dspy.teleprompt.icl_optimization import optimize_bank

        logger.info("optimizing the answers of %d in-context examples", len(self.program.bank))
        bank = optimize_bank(self.program.bank, metrics_lm=self.lms["metrics"], judge_lm=self.lms["judge"],
                             rewriter_lm=self.roles["optimizer"], rounds=self.drpo.icl_rounds,
                             num_threads=self.drpo.settings.num_threads, meter=self.meter,
                             catalogue=self.drpo.catalogue)
        self.program = self.program.with_state(bank=bank)
        if self.run_dir is not None:
            bank.save(self.run_dir.file("icl_bank.json"))

    def run(self, state: SearchState | None = None) -> AlignedResponder:
        drpo = self.drpo
        if self.run_dir is not None:
            self.run_dir.write_json("config.json", self._config())
        if drpo.optimize_icl and len(self.program.bank):
            cache = run_lm_cache(self.run_dir.file("lm_cache")) if self.run_dir is not None else nullcontext()
            with cache:
                self._optimize_examples()
        search = BeamSearch(
            settings=drpo.settings,
            answer=lambda prompt, query: self.program.respond_with(prompt, query, lm=self.lms["base"]),
            rewarder=self.rewarder, optimizer_lm=self.lms["optimizer"], meter=self.meter,
            on_node=self._on_node, on_level=self._on_level, should_stop=self.stop, budget=self.budget,
            base_lm=self.lms["base"],
        )
        if drpo.progress:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=min(drpo.settings.depth, len(self.queries)), desc="DRPO levels", unit="level",
                             initial=state.level if state else 0)
        cache = run_lm_cache(self.run_dir.file("lm_cache")) if self.run_dir is not None else nullcontext()
        try:
            with cache:
                state = search.run(self.queries, self.initial, state)
        finally:
            if self._bar is not None:
                self._bar.close()
        if state.stopped:
            logger.warning("DRPO stopped early: %s; returning the best prompt of level %d", state.stopped, state.level)
        best_prompt = state.best.prompt if state.best else None
        if self.valset and state.beam and not state.stopped:
            from drpo_dspy.clients.budget import BudgetExhausted
            from drpo_dspy.teleprompt.rescoring import rescore

            try:
                with cache:
                    self.validation = rescore(state.beam, self.valset, search._evaluate, drpo.settings.num_threads)
                best_prompt = self.validation[0]["prompt"]
            except BudgetExhausted as exc:
                state.stopped = f"validation re-scoring skipped: {exc}"
        compiled = self.program.with_state(instructions=best_prompt) if best_prompt else self.program.deepcopy()
        compiled.drpo_result = self._result(state)
        compiled.drpo_result.best_prompt = compiled.instructions
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
            "search": asdict(drpo.settings), "k": drpo.k, "optimize_icl": drpo.optimize_icl,
            "icl_rounds": drpo.icl_rounds, "initial_instructions": self.initial,
            "roles": {role: describe_lm(lm) for role, lm in self.lms.items()},
            "aspects": drpo.catalogue.names, "num_queries": len(self.queries), "queries": self.queries,
            "embedder": getattr(self.program.bank, "embedder_name", None), "bank_size": len(self.program.bank),
            "max_answer_tokens": self.program.max_tokens,
        }

    def _summary(self, state: SearchState) -> dict[str, Any]:
        best = state.best
        return {
            "levels": state.level, "max_depth": state.max_depth, "depth_increases": state.depth_increases,
            "best_prompt": best.prompt if best else None, "best_path_mean": best.path_mean if best else None,
            "reward_per_level": [n.reward for n in state.best_path],
            "usage": self.meter.summary(), "wall_time_s": round(time.monotonic() - self.started, 3),
            "stopped": state.stopped, "validation": self.validation,
        }

    def _result(self, state: SearchState) -> DRPOResult:
        best = state.best
        return DRPOResult(
            best_prompt=best.prompt if best else self.initial,
            best_path_mean=best.path_mean if best else None, levels=state.level,
            best_path=[n.to_dict() for n in state.best_path], final_beam=[n.to_dict() for n in state.beam],
            usage=self.meter.summary(), wall_time_s=round(time.monotonic() - self.started, 3),
            stopped=state.stopped, log_dir=str(self.run_dir.path) if self.run_dir else None,
            reward_per_level=[n.reward for n in state.best_path], validation=self.validation,
        )


def _comparable(value: Any) -> Any:
    """Config values as compared on resume: the thread count may change between sessions."""
    if isinstance(value, dict) and "num_threads" in value:
        return {k: v for k, v in value.items() if k != "num_threads"}
    return value


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"
