"""Resolving ``--eval-set`` names: our own sets, the bundled benchmarks, groups of them, files and Hugging Face ids.

Names (comma-separated lists allowed): ``regular``, ``harmful``, ``benign_risky``, ``ours`` (those three),
``xstest``, ``ifeval``, ``harmbench``, ``mtbench``, ``benchmarks`` (those four), ``all`` (everything bundled) and
``just-eval`` (just-eval-instruct from the Hugging Face hub: not bundled, so in no group). A path is read as a
benchmark file when its columns match one (XSTest / HarmBench CSV, IFEval / MT-Bench / just-eval JSONL), otherwise
as ``{"instruction": ...}`` JSONL; ``hf:OWNER/NAME[:SPLIT]`` loads a Hugging Face dataset in a benchmark's format.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from drpo_dspy.evaluation.benchmarks.just_eval import HUB_SPEC, JUST_EVAL
from drpo_dspy.evaluation.benchmarks.loaders import (
    BENCHMARKS,
    HF_PREFIX,
    is_benchmark_file,
    load_benchmark,
    load_hf_dataset,
    read_benchmark_file,
)
from drpo_dspy.evaluation.benchmarks.sampling import stratified_sample

OURS, ALL, ALL_BENCHMARKS = "ours", "all", "benchmarks"


def our_sets() -> tuple[str, ...]:
    from drpo_dspy.datasets import EVAL_SETS

    return tuple(EVAL_SETS)


def set_names() -> tuple[str, ...]:
    """Every name ``--eval-set`` accepts (besides paths and ``hf:`` ids)."""
    return (*our_sets(), OURS, *BENCHMARKS, ALL_BENCHMARKS, ALL, JUST_EVAL)


def expand(name: str) -> list[str] | None:
    """The concrete set names behind ``name`` (None when it is not a set name)."""
    if name == OURS:
        return list(our_sets())
    if name == ALL_BENCHMARKS:
        return list(BENCHMARKS)
    if name == ALL:
        return [*our_sets(), *BENCHMARKS]
    if name in our_sets() or name in BENCHMARKS or name == JUST_EVAL:
        return [name]
    return None


def load_just_eval_hub() -> list[dict[str, Any]]:
    """just-eval-instruct from the Hugging Face hub (``re-align/just-eval-instruct``, split ``test``).

    Raises:
        ValueError: the hub cannot be reached (offline) or the dataset cannot be loaded; the message says how to
            use a local copy instead.
    """
    try:
        return load_hf_dataset(HUB_SPEC, fmt=JUST_EVAL)[0]
    except ValueError as exc:
        raise ValueError(f"just-eval-instruct is not bundled with drpo-dspy (some of its prompts are under "
                         f"non-commercial licences) and loading it from the hub failed: {exc} With a local copy, "
                         "pass its path instead: --eval-set PATH/just_eval_instruct.jsonl") from exc


def load_named(name: str) -> list[dict[str, Any]]:
    if name == JUST_EVAL:
        return load_just_eval_hub()
    if name in BENCHMARKS:
        return load_benchmark(name)
    from drpo_dspy.datasets import load_eval_set

    return load_eval_set(name)


def cut(prompts: list[dict[str, Any]], *, limit: int | None, sample: int | None, seed: int) -> list[dict[str, Any]]:
    """A stratified seeded sample of ``sample`` prompts (by label where the benchmark declares one, then by
    category), then the first ``limit``."""
    if sample is not None:
        prompts = stratified_sample(prompts, sample, seed=seed)
    return prompts[:limit] if limit else prompts


def load_source(text: str) -> list[dict[str, Any]] | None:
    """Prompts from ``hf:ID`` or a benchmark-format file; None when ``text`` is neither (left to the caller)."""
    if text.startswith(HF_PREFIX):
        return load_hf_dataset(text)[0]
    path = Path(text).expanduser()
    if path.is_file() and (path.suffix.lower() == ".csv" or is_benchmark_file(path)):
        return read_benchmark_file(path)[0]
    return None


def resolve_names(spec: str | os.PathLike[str], *, limit: int | None = None, sample: int | None = None,
                  seed: int = 0) -> tuple[list[dict[str, Any]], str] | None:
    """Prompts for set names, ``hf:`` ids and benchmark files; None when ``spec`` is none of those.

    ``limit`` and ``sample`` apply to each named set separately, so every set in a group is still measured.
    """
    text = os.fspath(spec)
    parts = [p.strip() for p in text.split(",") if p.strip()]
    groups = [expand(p) for p in parts]
    if parts and all(g is not None for g in groups):
        names = list(dict.fromkeys(n for g in groups for n in g))  # type: ignore[union-attr]
        prompts = [p for n in names for p in cut(load_named(n), limit=limit, sample=sample, seed=seed)]
        return prompts, text
    loaded = load_source(text)
    if loaded is None:
        return None
    return cut(loaded, limit=limit, sample=sample, seed=seed), text if text.startswith(HF_PREFIX) else Path(text).name
