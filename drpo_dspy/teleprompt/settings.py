"""Every setting of a DRPO run, defined once: its group, type, default, bounds and help.

``DRPOConfig`` groups them (``search`` with its ``guards`` and the fidelity switch, ``decoding``, ``budgets``,
``icl``, and the run's ``k`` and ``initial_instructions``). From these dataclasses come ``DRPO(...)``'s validation
(``DRPO(config=...)`` or the same names as keyword arguments), ``drpo optimize``'s flags and their help, the names a
``--config`` file may use, and the ``search`` block of a run's ``config.json``. Adding a setting is adding a field
here (and the keyword argument of ``DRPO``, which ``tests/test_settings.py`` checks against these fields).

This module imports nothing heavy: the command line reads it before DSPy is loaded.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from drpo_dspy.clients.failures import DEFAULT_MAX_ERRORS
from drpo_dspy.primitives.checks import is_real, is_whole
from drpo_dspy.primitives.fidelity import Fidelity, fidelity

AUTO = "auto"  # a flag spelled from the field's name


def setting(default: Any = None, help: str = "", *, minimum: float | None = None, maximum: float | None = None,
            above: float | None = None, choices: tuple[str, ...] | None = None, flag: str | None = AUTO,
            shown: str | None = None, zero_means_none: bool = False, default_factory: Any = None) -> Any:
    """A dataclass field with what the command line and the checks need: bounds (``minimum``/``maximum``, or
    ``above`` for an open lower bound), ``choices``, the CLI ``flag`` (``None``: Python only), the default as the
    help shows it (``shown``), and whether a 0 on the command line means None (``zero_means_none``)."""
    meta = {"help": help, "minimum": minimum, "maximum": maximum, "above": above, "choices": choices, "flag": flag,
            "shown": shown, "zero_means_none": zero_means_none}
    if default_factory is not None:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


def check_setting(name: str, value: Any, meta: Mapping[str, Any], *, optional: bool) -> None:
    """ValueError unless ``value`` fits the setting (None only where the setting allows it)."""
    if value is None and optional:
        return
    minimum, maximum, above, choices = meta["minimum"], meta["maximum"], meta["above"], meta["choices"]
    if choices is not None:
        if value not in choices:
            raise ValueError(f"{name} must be {' or '.join(map(repr, choices))}, got {value!r}")
    elif maximum is not None:
        if not is_real(value) or math.isnan(value) or not minimum <= value <= maximum:
            raise ValueError(f"{name} must be a number in [{minimum}, {maximum}], got {value!r}")
    elif above is not None:
        if not is_real(value) or not math.isfinite(value) or value <= above:
            raise ValueError(f"{name} must be a number above {above}, got {value!r}")
    elif minimum is not None and (not is_whole(value) or value < minimum):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_fields(obj: Any) -> None:
    """Check every field with bounds or choices against its setting."""
    for f in dataclasses.fields(obj):
        meta = f.metadata
        if meta and any(meta.get(key) is not None for key in ("minimum", "maximum", "above", "choices")):
            check_setting(f.name, getattr(obj, f.name), meta, optional=f.default is None)


@dataclass
class GuardSettings:
    """Which guards against judge gaming are on. Defaults: the cheap ones on, the ones that multiply LM calls off; all
    off in paper mode (``teleprompt/guards.py`` applies them)."""

    length_control: bool = setting(False, "remove the judge's length preference from each level's rewards")
    judge_samples: int = setting(1, "judge every answer N times and average", minimum=1)
    tie_tolerance: float = setting(0.0, "path means this close count as tied", minimum=0.0, maximum=4.0)
    holdout: int | None = setting(None, "queries held out to re-score the final beam", minimum=0,
                                  shown="8 when there is room; 0: off")
    max_prompt_tokens: int | None = setting(1024, "prompt budget told to the optimizer", minimum=0,
                                            shown="1024; 0: off", zero_means_none=True)
    merge_duplicate_bullets: bool = setting(True, "keep duplicate bullets in rewrites", flag="--no-merge-bullets")
    refusal_probes: int = setting(0, "benign-but-risky probes answered per candidate", minimum=0)
    probe_queries: list[str] | None = setting(None, "your own probes (.json, .jsonl or .txt)", flag=None)
    refusal_penalty: float = setting(1.0, "reward lost per unit of refusal rate", minimum=0.0, maximum=4.0)
    max_refusal_rate: float | None = setting(None, "reject candidates refusing more probes than this, 0 to 1",
                                             minimum=0.0, maximum=1.0, shown="")

    def __post_init__(self) -> None:
        if not is_whole(self.judge_samples) or self.judge_samples < 1:
            raise ValueError(f"judge_samples must be an integer >= 1, got {self.judge_samples!r}")
        if not is_real(self.tie_tolerance) or not 0 <= self.tie_tolerance <= 4 or math.isnan(self.tie_tolerance):
            raise ValueError(f"tie_tolerance must be a number from 0 to 4, got {self.tie_tolerance!r}")
        for name in ("holdout", "max_prompt_tokens"):
            value = getattr(self, name)
            if value is not None and (not is_whole(value) or value < 0):
                raise ValueError(f"{name} must be a non-negative integer or None, got {value!r}")
        if not is_whole(self.refusal_probes) or self.refusal_probes < 0:
            raise ValueError(f"refusal_probes must be a non-negative integer, got {self.refusal_probes!r}")
        if self.probe_queries is not None:
            if isinstance(self.probe_queries, str) or not all(isinstance(q, str) and q.strip()
                                                              for q in self.probe_queries):
                raise ValueError("probe_queries must be a list of non-empty strings")
            self.probe_queries = list(self.probe_queries)
            if self.probe_queries and not self.refusal_probes:
                self.refusal_probes = len(self.probe_queries)
        if not isinstance(self.refusal_penalty, int | float) or not 0 <= self.refusal_penalty <= 4:
            raise ValueError(f"refusal_penalty must be a number from 0 to 4, got {self.refusal_penalty!r}")
        if self.max_refusal_rate is not None and not 0 <= self.max_refusal_rate <= 1:
            raise ValueError(f"max_refusal_rate must be from 0 to 1 or None, got {self.max_refusal_rate!r}")

    @classmethod
    def off(cls) -> GuardSettings:
        """Every guard off (paper mode)."""
        return cls(length_control=False, judge_samples=1, tie_tolerance=0.0, holdout=0, max_prompt_tokens=None,
                   merge_duplicate_bullets=False, refusal_probes=0)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def describe(self) -> dict[str, Any]:
        """What each guard does in this run, for summary.json and ``drpo show``."""
        return {
            "length_control": self.length_control,
            "judge_samples": self.judge_samples,
            "tie_tolerance": self.tie_tolerance,
            "holdout": self.holdout,
            "max_prompt_tokens": self.max_prompt_tokens,
            "merge_duplicate_bullets": self.merge_duplicate_bullets,
            "refusal_probes": self.refusal_probes,
            "refusal_penalty": self.refusal_penalty if self.refusal_probes else None,
            "max_refusal_rate": self.max_refusal_rate if self.refusal_probes else None,
        }


@dataclass
class SearchSettings:
    """The beam search (published defaults), its guards and whether it behaves as the original code."""

    beam_size: int = setting(2, "beams kept per level", minimum=1)
    n_actions: int = setting(3, "rewrites per beam", minimum=1)
    depth: int = setting(20, "initial search depth", minimum=1)
    max_depth_increase: int = setting(10, "extra levels allowed", minimum=0)
    skip_threshold: float = setting(4.5, "skip the rewrite above this mean score, 1 to 5", minimum=1.0, maximum=5.0)
    temperature: float = setting(0.2, "optimizer temperature, 0 to 2", minimum=0.0, maximum=2.0)
    history_window: int = setting(5, "prompts of the path the optimizer sees", minimum=1, flag=None)
    num_threads: int = setting(8, "concurrent LM calls", minimum=1, shown="8, or 4 per replica of a pool")
    seed: int = setting(0, "seed for sampled local calls", minimum=0)
    paper_faithful_failures: bool = setting(False, "score unreadable judgments 0 and skip, as the original code did")
    proposal_sampling: str = setting("batched", "how a node's rewrites are asked for: batched (one request for all) "
                                     "or independent (one request each)", choices=("batched", "independent"))
    minibatch_size: int = setting(1, "queries each candidate is judged on per level", minimum=1, flag=None)
    paper_mode: bool = setting(False, "behave as the original code in everything observable through the LMs "
                               "(docs/fidelity.md)")
    rewrite_filter: bool = setting(True, "keep every readable rewrite, even template copies and query-specific ones",
                                   flag="--no-rewrite-filter")
    guards: GuardSettings = field(default_factory=GuardSettings)  # against judge gaming; all off in paper mode

    def __post_init__(self) -> None:
        _check_fields(self)

    @property
    def fidelity(self) -> Fidelity:
        """The run's fidelity policy (``paper_mode`` is kept as the saved settings' field)."""
        return fidelity(self.paper_mode)

    @property
    def batched(self) -> bool:
        # DSPy raises the temperature of multi-sample calls at or below 0.15, so those are made one by one.
        return self.proposal_sampling == "batched" and self.n_actions > 1 and self.temperature > 0.15


@dataclass
class DecodingSettings:
    """How the base model is decoded during the search and in the compiled program (None: the student's own)."""

    answer_temperature: float | None = setting(None, "base-model decoding temperature, 0 to 2", minimum=0.0,
                                               maximum=2.0, shown="0: greedy")
    answer_max_tokens: int | None = setting(None, "cap on base-model answers", minimum=1, flag="--max-tokens",
                                            shown="1024; --quick: 160; --paper-mode: 2048")

    def __post_init__(self) -> None:
        _check_fields(self)


@dataclass
class BudgetSettings:
    """Hard limits across all roles and stages, and when errors stop the run."""

    max_calls: int | None = setting(None, "hard budget: LM calls across all roles", minimum=1, shown="")
    max_total_tokens: int | None = setting(None, "hard budget: tokens across all roles", minimum=1, shown="")
    max_cost_usd: float | None = setting(None, "hard budget: dollars across all roles (litellm prices)", above=0.0,
                                         shown="")
    stop_file: str | None = setting(None, "stop as a budget does (after the calls in flight, exit 0) once PATH "
                                    "exists; RUN_DIR/STOP always works too", shown="")
    max_errors: int | None = setting(DEFAULT_MAX_ERRORS, "errors a role may have before the run stops", minimum=0)

    def __post_init__(self) -> None:
        if self.stop_file is not None:
            self.stop_file = str(self.stop_file)


@dataclass
class ICLSettings:
    """The paper's offline stage: improve the example answers before the search (``drpo optimize-icl`` alone)."""

    optimize_icl: bool = setting(False, "improve the example bank's answers first", flag=None)
    icl_rounds: int = setting(5, "critic and rewriter rounds per example", minimum=1, flag=None)

    def __post_init__(self) -> None:
        _check_fields(self)


@dataclass
class DRPOConfig:
    """A whole run's settings, grouped; ``flat()`` / ``from_flat()`` map them to and from their unique names."""

    search: SearchSettings = field(default_factory=SearchSettings)
    decoding: DecodingSettings = field(default_factory=DecodingSettings)
    budgets: BudgetSettings = field(default_factory=BudgetSettings)
    icl: ICLSettings = field(default_factory=ICLSettings)
    k: int | None = setting(2, "in-context examples per query", minimum=0)
    initial_instructions: str | None = setting(None, "starting system prompt", shown="")

    def __post_init__(self) -> None:
        _check_fields(self)
        if self.initial_instructions is not None and (
                not isinstance(self.initial_instructions, str) or not self.initial_instructions.strip()):
            raise ValueError("initial_instructions must be a non-empty string")

    def flat(self) -> dict[str, Any]:
        """Every setting by its name (guards included)."""
        return {f.name: getattr(owner, f.name) for owner, f in _leaves(self)}

    @classmethod
    def from_flat(cls, values: Mapping[str, Any]) -> DRPOConfig:
        """The config with ``values`` (names as ``flat()`` gives them) over the defaults; unknown names refused."""
        unknown = sorted(set(values) - set(SETTING_NAMES))
        if unknown:
            raise ValueError(f"unknown DRPO setting(s): {', '.join(unknown)} (known: {', '.join(SETTING_NAMES)})")
        given: dict[str, dict[str, Any]] = {}
        for group, f in setting_fields():
            if f.name in values:
                given.setdefault(group, {})[f.name] = values[f.name]
        return cls(search=SearchSettings(**given.get("search", {}), guards=GuardSettings(**given.get("guards", {}))),
                   decoding=DecodingSettings(**given.get("decoding", {})),
                   budgets=BudgetSettings(**given.get("budgets", {})), icl=ICLSettings(**given.get("icl", {})),
                   **given.get("run", {}))


def _leaves(obj: Any) -> Iterator[tuple[Any, dataclasses.Field]]:
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            yield from _leaves(value)
        else:
            yield obj, f


def setting_fields() -> list[tuple[str, dataclasses.Field]]:
    """(group, field) of every setting, in the order the groups and fields are defined (``run``: DRPOConfig's own)."""
    found: list[tuple[str, dataclasses.Field]] = []

    def walk(kind: Any, group: str) -> None:
        for f in dataclasses.fields(kind):
            if dataclasses.is_dataclass(f.default_factory):  # a group: search, guards, decoding, budgets, icl
                walk(f.default_factory, f.name)
            else:
                found.append((group, f))

    walk(DRPOConfig, "run")
    return found


SETTING_NAMES = tuple(f.name for _, f in setting_fields())
