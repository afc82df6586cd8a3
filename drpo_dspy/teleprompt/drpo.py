"""The DRPO teleprompter: compile an AlignedResponder whose system prompt was found by DRPO's beam search."""

from __future__ import annotations

import dataclasses
import inspect
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import dspy
from dspy.teleprompt import Teleprompter
from dspy.utils.callback import BaseCallback

from drpo_dspy.clients.budget import Budget
from drpo_dspy.clients.failures import DEFAULT_MAX_ERRORS, FailurePolicy
from drpo_dspy.clients.metering import Meter
from drpo_dspy.clients.pool_inputs import role_lm
from drpo_dspy.clients.replica_pool import derived_num_threads
from drpo_dspy.modules.aligned_responder import AlignedResponder, _check_decoding
from drpo_dspy.primitives.conversation_query import ConversationQuery
from drpo_dspy.primitives.events import EventBus
from drpo_dspy.primitives.fidelity import fidelity
from drpo_dspy.rewards.aspects import AspectCatalogue
from drpo_dspy.runs.run_dir import RunDirectory
from drpo_dspy.runs.secrets import Redactor
from drpo_dspy.runs.validation import coerce_queries, resolve_lm
from drpo_dspy.teleprompt.compilation import Compilation
from drpo_dspy.teleprompt.guards import split_holdout
from drpo_dspy.teleprompt.result import DRPOResult
from drpo_dspy.teleprompt.settings import (
    SETTING_NAMES,
    BudgetSettings,
    DecodingSettings,
    DRPOConfig,
    GuardSettings,
    ICLSettings,
    SearchSettings,
)

logger = logging.getLogger(__name__)

_UNSET: Any = object()
BUDGET_LIMITS = ("max_calls", "max_total_tokens", "max_cost_usd")

__all__ = ["DRPO", "DRPOResult"]


class DRPO(Teleprompter):
    """Dynamic Rewarding with Prompt Optimization.

    Args:
        base_lm: The model being aligned (chat or ``model_type="text"``). Defaults to ``dspy.settings.lm``. Any role
            also takes a list of ``dspy.LM`` replicas of one model (several servers): calls are spread over them by
            litellm's Router, a replica that fails is taken out of rotation, and the run stops only when every
            replica fails (``docs/scale-out.md``).
        metrics_lm: Picks the reward aspects per query. Defaults to ``dspy.settings.lm``.
        judge_lm: Scores answers 1-5 per aspect. Defaults to ``dspy.settings.lm``.
        optimizer_lm: Rewrites the system prompt. Defaults to ``dspy.settings.lm``.
        config: Every setting below at once, grouped (``DRPOConfig`` in ``teleprompt/settings.py``: search with its
            guards, decoding, budgets, icl, k, initial_instructions); give it or the keyword arguments, not both.
            ``drpo.config`` is the run's settled configuration either way.
        beam_size, n_actions, depth, max_depth_increase: Beam search shape (published: 2, 3, 20, 10).
        temperature: Optimizer sampling temperature (0.2).
        skip_threshold: A mean score above this (or all 5s) carries the prompt over without a rewrite (4.5).
        k: In-context examples retrieved per query, during the search and in the compiled program (2); ``None``
            keeps the student's ``k``.
        initial_instructions: The starting system prompt; default: the student's instructions (which are
            "You are a helpful assistant." unless set otherwise).
        num_threads: Concurrent LM calls within a level (and examples in the ICL stage). Default: 8, or 4 per
            replica of the largest pool among the roles given (at most 64).
        seed: Seed for sampled calls on local models.
        log_dir: Run directory (configuration, log, trace, per-level results, caches, program, summary).
        catalogue: Reward aspects (default: the 14 built-in ones).
        paper_mode: Behave as the original code in everything observable through the LMs (see
            ``docs/fidelity.md``): failures score 0 and skip, the optimizer sees the path's last five prompts with
            repeats and the verdict JSON, no rewrite filter, one request per judgment, the original judge wording,
            greedy base decoding capped at 2048 tokens, no minibatches and no valset.
        paper_faithful_failures: Only the failure rule of paper mode: an unreadable judgment is reward 0 plus a skip.
        rewrite_filter: Drop rewrites that cannot be a system prompt (template copies, query-specific); the reason
            goes to the trace. Off in paper mode.
        proposal_sampling: "batched" asks for the ``n_actions`` rewrites of a node in one request (as the paper's
            code does; an unreadable sample drops only itself); "independent" makes one request per rewrite.
        history_window: Prompts of the path the optimizer is shown (5, as the original).
        minibatch_size: Judge every candidate on this many queries per level instead of one (beyond the paper; a
            less noisy but costlier ranking). The level's reward is the mean; the optimizer sees the worst query.
        optimize_icl: First improve the answers of the student's example bank with a strict critic and a
            rewriter (the optimizer model), up to ``icl_rounds`` rounds each, as the paper's offline ICL stage does.
        answer_temperature, answer_max_tokens: How the base model is decoded during the search and in the compiled
            program; ``None`` keeps the student's (greedy, 1024 tokens by default; paper mode: greedy, 2048).
        max_calls, max_total_tokens, max_cost_usd: Hard budgets across all roles and stages (ICL stage, search,
            re-scoring), checked before every call; when one would be exceeded the search stops and the best
            program of the last finished level is returned.
        stop_file: A path whose appearance stops the search as a budget does (``log_dir/STOP`` always does too).
        max_errors: Errors a role may have before the compile stops (``SystemicFailure``); a systemic error (bad
            key, unknown model, missing package) stops it at the first. ``None``: never stop on error counts.
        callbacks: Watch the search: callables or objects with ``on_level_started``... methods, receiving the typed
            events of :mod:`drpo_dspy.primitives.events`.
        length_control: Remove the judge's length preference from each level's rewards (off).
        judge_samples: Judge every answer this many times and average (1: once); ties within the measured noise
            then go to the parent's prompt and the shorter prompt.
        tie_tolerance: Path means this close count as tied (0: exact ties only; they go to the parent's carried
            prompt, then the shorter prompt).
        holdout: Queries the search never sees that re-score the final beam (``None``: 8 when the trainset has
            room for 16 beyond the search's levels; 0: off). An explicit ``valset`` takes its place.
        max_prompt_tokens: The optimizer is told this budget and longer rewrites are dropped (1024; ``None``: off).
        merge_duplicate_bullets: Drop bullets that repeat an earlier bullet in a rewrite (on).
        refusal_probes, probe_queries, refusal_penalty, max_refusal_rate: Answer this many benign-but-risky probes
            (the built-in set, or ``probe_queries``) under each candidate; each refusal rate costs
            ``refusal_penalty`` x rate in reward, or rejects the candidate above ``max_refusal_rate`` (off).
            See ``teleprompt/guards.py``; every guard is off in paper mode.
        progress: Show a progress bar while compiling.

    A ``STOP`` file in ``log_dir`` or Ctrl-C also stops the search gracefully. With ``log_dir`` set, a checkpoint
    is written after every level and LM responses are cached in ``log_dir/lm_cache``;
    ``compile(..., resume=True)`` continues an interrupted run without paying again for finished calls.
    """

    def __init__(
        self,
        *,
        base_lm: dspy.BaseLM | Sequence[dspy.LM] | None = None,
        metrics_lm: dspy.BaseLM | Sequence[dspy.LM] | None = None,
        judge_lm: dspy.BaseLM | Sequence[dspy.LM] | None = None,
        optimizer_lm: dspy.BaseLM | Sequence[dspy.LM] | None = None,
        config: DRPOConfig | None = None,
        beam_size: int = 2,
        n_actions: int = 3,
        depth: int = 20,
        max_depth_increase: int = 10,
        temperature: float = 0.2,
        skip_threshold: float = 4.5,
        k: int | None = 2,
        initial_instructions: str | None = None,
        num_threads: int | None = None,
        seed: int = 0,
        log_dir: str | Path | None = None,
        catalogue: AspectCatalogue | None = None,
        paper_mode: bool = False,
        paper_faithful_failures: bool = False,
        rewrite_filter: bool = True,
        proposal_sampling: str = "batched",
        minibatch_size: int = 1,
        history_window: int = 5,
        optimize_icl: bool = False,
        icl_rounds: int = 5,
        answer_temperature: float | None = None,
        answer_max_tokens: int | None = None,
        max_calls: int | None = None,
        max_total_tokens: int | None = None,
        max_cost_usd: float | None = None,
        stop_file: str | Path | None = None,
        max_errors: int | None = DEFAULT_MAX_ERRORS,
        callbacks: Sequence[Any] | None = None,
        progress: bool = True,
        length_control: bool = False,
        judge_samples: int = 1,
        tie_tolerance: float = 0.0,
        holdout: int | None = None,
        max_prompt_tokens: int | None = 1024,
        merge_duplicate_bullets: bool = True,
        refusal_probes: int = 0,
        probe_queries: Sequence[str] | None = None,
        refusal_penalty: float = 1.0,
        max_refusal_rate: float | None = None,
        max_tokens: Any = _UNSET,
    ):
        super().__init__()
        given = {name: value for name, value in locals().items() if name in SETTING_NAMES}
        if max_tokens is not _UNSET:
            warnings.warn("DRPO(max_tokens=...) is the total token budget and is renamed max_total_tokens (the old "
                          "name will be removed in the next release; a per-answer cap is answer_max_tokens)",
                          DeprecationWarning, stacklevel=2)
            if max_total_tokens is not None:
                raise ValueError("pass max_total_tokens only (max_tokens is its deprecated name)")
            given["max_total_tokens"] = max_tokens
        if config is not None:
            if not isinstance(config, DRPOConfig):
                raise ValueError(f"config must be a DRPOConfig, got {type(config).__name__}")
            both = sorted(name for name, value in given.items() if value != _SETTING_DEFAULTS[name])
            if both:
                raise ValueError(f"pass settings either in config or as keyword arguments, not both: {', '.join(both)}")
            given = config.flat()
        base_lm, metrics_lm, judge_lm, optimizer_lm = (role_lm(lm, role) for lm, role in (
            (base_lm, "base"), (metrics_lm, "metrics"), (judge_lm, "judge"), (optimizer_lm, "optimizer")))
        if given["num_threads"] is None:
            given["num_threads"] = derived_num_threads([base_lm, metrics_lm, judge_lm, optimizer_lm], floor=8)
        self.base_lm, self.metrics_lm, self.judge_lm, self.optimizer_lm = base_lm, metrics_lm, judge_lm, optimizer_lm
        self.config = self._settle(given)
        self.settings = self.config.search
        self.log_dir = log_dir
        if catalogue is not None and not isinstance(catalogue, AspectCatalogue):
            raise ValueError("catalogue must be an AspectCatalogue")
        self.catalogue = catalogue or AspectCatalogue()
        self.progress = progress
        self.event_callbacks = list(callbacks or [])
        EventBus(self.event_callbacks)  # validates the callbacks now
        # DSPy calls ``on_compile_start``/``on_compile_end`` of ``self.callbacks``: only DSPy callbacks belong there.
        self.callbacks = [cb for cb in self.event_callbacks if isinstance(cb, BaseCallback)]

    def _settle(self, s: dict[str, Any]) -> DRPOConfig:
        """The run's ``DRPOConfig`` from the settings given: checked (before any LM call), with what paper mode
        implies applied (its fidelity policy; every guard off)."""
        _check_decoding(s["answer_temperature"], s["answer_max_tokens"])
        FailurePolicy(s["max_errors"])  # validates max_errors now
        Budget(Meter(), **{name: s[name] for name in BUDGET_LIMITS})  # validates the limits now
        guard_names = [f.name for f in dataclasses.fields(GuardSettings)]
        guards = GuardSettings(**{name: s[name] for name in guard_names})
        guards.length_control, guards.merge_duplicate_bullets = bool(s["length_control"]), bool(
            s["merge_duplicate_bullets"])
        self.fidelity = fidelity(bool(s["paper_mode"]))
        if self.fidelity.is_paper:
            if s["length_control"] or s["judge_samples"] != 1 or s["tie_tolerance"] or s["holdout"] \
                    or guards.refusal_probes:
                raise ValueError("paper_mode runs without the guards against judge gaming (length control, repeated "
                                 "judging, tie tolerance, held-out queries, refusal probes): drop them or the paper "
                                 "mode")
            guards = GuardSettings.off()
            if s["minibatch_size"] != 1:
                raise ValueError("paper_mode judges each candidate on one query per level: minibatch_size must be 1")
            if s["proposal_sampling"] != "batched":
                raise ValueError("paper_mode asks for a node's rewrites in one request: proposal_sampling='batched'")
            s["answer_temperature"] = 0.0 if s["answer_temperature"] is None else s["answer_temperature"]
            if s["answer_max_tokens"] is None:
                s["answer_max_tokens"] = self.fidelity.answer_max_tokens
        search_names = [f.name for f in dataclasses.fields(SearchSettings) if f.name != "guards"]
        search = SearchSettings(**{name: s[name] for name in search_names}, guards=guards)
        search.paper_faithful_failures = bool(s["paper_faithful_failures"]) or self.fidelity.failures_score_zero
        search.rewrite_filter = bool(s["rewrite_filter"]) and self.fidelity.rewrite_filter
        search.paper_mode = self.fidelity.is_paper
        return DRPOConfig(
            search=search,
            decoding=DecodingSettings(s["answer_temperature"], s["answer_max_tokens"]),
            budgets=BudgetSettings(**{name: s[name] for name in (*BUDGET_LIMITS, "stop_file", "max_errors")}),
            icl=ICLSettings(bool(s["optimize_icl"]), s["icl_rounds"]), k=s["k"],
            initial_instructions=s["initial_instructions"])

    # The run's settings, as the rest of the package reads them (``self.config`` holds them all).
    k = property(lambda self: self.config.k)
    initial_instructions = property(lambda self: self.config.initial_instructions)
    answer_temperature = property(lambda self: self.config.decoding.answer_temperature)
    answer_max_tokens = property(lambda self: self.config.decoding.answer_max_tokens)
    optimize_icl = property(lambda self: self.config.icl.optimize_icl)
    icl_rounds = property(lambda self: self.config.icl.icl_rounds)
    max_errors = property(lambda self: self.config.budgets.max_errors)
    budgets = property(lambda self: {name: getattr(self.config.budgets, name) for name in BUDGET_LIMITS})
    stop_file = property(lambda self: None if self.config.budgets.stop_file is None
                         else Path(self.config.budgets.stop_file))

    @property
    def paper_mode(self) -> bool:
        """Whether the run behaves as the original code (its fidelity policy is ``PAPER``)."""
        return self.fidelity.is_paper

    def _roles(self, need_key: bool = True) -> dict[str, Any]:
        return {role: resolve_lm(role, lm, need_key=need_key) for role, lm in (
            ("base", self.base_lm), ("metrics", self.metrics_lm), ("judge", self.judge_lm),
            ("optimizer", self.optimizer_lm))}

    def estimate(self, trainset: Any, student: Any = None, *, predictors: Sequence[Any] | None = None,
                 output_field: str | None = None) -> dict[str, Any]:
        """Dry run: expected and maximum LM calls, tokens and dollars per role; makes no LM call, so needs no API key.

        For a program other than an ``AlignedResponder``, each answer counts one base call per predictor of the
        program (a program that loops over a predictor makes more)."""
        from drpo_dspy.teleprompt.estimate import estimate

        shape: dict[str, Any] = {}
        if student is not None and not isinstance(student, AlignedResponder):
            from drpo_dspy.modules.aligned_program import ProgramView

            view = ProgramView(student, predictors, output_field, self.initial_instructions)
            queries = view.queries(trainset)
            shape = {"k": 0, "instructions_chars": len(view.render()),
                     "base_calls_per_answer": len(student.named_predictors())}
        else:
            queries = coerce_queries(trainset)
            bank = student.bank if student is not None else None
            if bank is not None and len(bank):
                shape["example_chars"] = sum(len(e.shown_query) + len(e.answer) for e in bank.examples) // len(bank)
            shape["k"] = self.k if self.k is not None else (student.k if student is not None else 2)
        s = self.settings
        queries, held = self._split(queries, None)
        return estimate(queries=queries, roles=self._roles(need_key=False), minibatch_size=s.minibatch_size,
                        beam_size=s.beam_size, n_actions=s.n_actions, depth=s.depth,
                        max_depth_increase=s.max_depth_increase, batched=s.batched,
                        judge_samples=s.guards.judge_samples, refusal_probes=s.guards.refusal_probes,
                        holdout=len(held), num_threads=s.num_threads, **shape)

    def _split(self, queries: list[str], valset: list[str] | None) -> tuple[list[str], list[str]]:
        """(search queries, held-out queries): an explicit valset, or the automatic held-out split."""
        if valset is not None:
            return queries, valset
        s = self.settings
        max_levels = (s.depth + s.max_depth_increase) * s.minibatch_size
        return split_holdout(queries, s.guards.holdout, max_levels)

    def compile(self, student: Any, *, trainset: Any, valset: Any = None, teacher: Any = None,
                resume: bool = False, predictors: Sequence[Any] | None = None, output_field: str | None = None,
                **kwargs: Any) -> Any:
        """Search for the alignment prompt; return a new AlignedResponder (the student is not modified).

        Any other ``dspy.Module`` is aligned too: the instructions of its ``predictors`` (default: all) are searched
        jointly and its ``output_field`` (default: the last predictor's last output) is judged; the same program
        comes back with the instructions found (see ``teleprompt/program_alignment.py``).

        ``resume=True`` continues the run recorded in ``log_dir`` (same settings and queries required).
        Raises ``SystemicFailure`` when a role cannot work (bad key, unknown model, missing package, too many
        errors, a judge whose output is never readable); the finished levels stay in ``log_dir``.

        Labelled ``dspy.Example``s are accepted (as an outer optimizer such as ``dspy.BetterTogether`` passes
        them): DRPO reads only their inputs and ignores the labels. While ``mlflow.dspy.autolog(log_compiles=True)``
        is on, the compile is recorded in MLflow (see ``drpo_dspy/tracking/mlflow_events.py``).
        """
        from drpo_dspy.tracking import mlflow_events

        options = {"trainset": trainset, "valset": valset, "teacher": teacher, "resume": resume,
                   "predictors": predictors, "output_field": output_field, **kwargs}
        if mlflow_events.patch_late(DRPO, _COMPILE):  # autologging was on before DRPO was imported
            return self.compile(student, **options)
        with mlflow_events.tracking(self) as done:
            program = self._compile(student, **options)
            done(program)
        return program

    def _compile(self, student: Any, *, trainset: Any, valset: Any = None, teacher: Any = None,
                 resume: bool = False, predictors: Sequence[Any] | None = None, output_field: str | None = None,
                 **kwargs: Any) -> Any:
        if teacher is not None:
            raise ValueError("DRPO does not use a teacher program (in dspy.BetterTogether(..., teacher=...), keep it "
                             "from DRPO's step: optimizer_compile_args={'<DRPO's key>': {'teacher': None}})")
        if kwargs:
            raise TypeError(f"unexpected compile() arguments: {', '.join(sorted(kwargs))}")
        if not isinstance(student, AlignedResponder):
            if not isinstance(student, dspy.Module):
                raise ValueError(f"DRPO compiles a dspy.Module (an AlignedResponder or any program), got "
                                 f"{type(student).__name__}")
            from drpo_dspy.teleprompt.program_alignment import align_program

            return align_program(self, student, trainset, valset=valset, predictors=predictors,
                                 output_field=output_field, resume=resume)
        if predictors is not None or output_field is not None:
            raise ValueError("predictors and output_field are for other DSPy programs; an AlignedResponder has one "
                             "prompt")
        queries = coerce_queries(trainset)
        val_queries = coerce_queries(valset, "valset") if valset is not None else None
        if val_queries is not None and not self.fidelity.valset_rescoring:
            raise ValueError("paper_mode has no valset re-scoring (the original returns the search's best prompt)")
        if not self.fidelity.conversations and any(isinstance(q, ConversationQuery) for q in queries):
            raise ValueError("paper_mode is single-turn, as the original: its trainset cannot hold conversations "
                             "(earlier turns); drop paper_mode or give only the last user turns")
        queries, held = self._split(queries, val_queries)
        roles = self._roles()
        program = student.deepcopy()
        if self.k is not None:
            program.k = self.k  # raises a clear error when the bank is smaller than k
        if self.answer_temperature is not None:
            program.temperature = self.answer_temperature
        if self.answer_max_tokens is not None:
            program.max_tokens = self.answer_max_tokens
        if resume and not self.log_dir:
            raise ValueError("resume=True needs the log_dir of the run to continue")
        redactor = Redactor(roles.values())
        run_dir = RunDirectory(self.log_dir, redactor=redactor, resume=resume) if self.log_dir else None
        compilation = Compilation(self, program, queries, roles, run_dir, held or None, redactor=redactor)
        state = compilation.load_checkpoint() if resume else None
        return compilation.run(state)


_COMPILE = DRPO.compile  # the unpatched compile, whatever MLflow autologging does later


_SETTING_DEFAULTS = {name: parameter.default for name, parameter in inspect.signature(DRPO.__init__).parameters.items()
                     if name in SETTING_NAMES}
