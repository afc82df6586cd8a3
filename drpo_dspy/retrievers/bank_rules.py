"""The alignment bank's rules, as pure functions: what a repeated query does, which duplicates ``dedupe`` drops,
what a search accepts, and the progress bar of a long embedding run."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np

from drpo_dspy.primitives.checks import is_whole
from drpo_dspy.retrievers.examples import ICLExample

__all__ = ["ON_DUPLICATE", "admit", "check_policy", "check_search_args", "dedupe_drops", "progress_bar"]

ON_DUPLICATE = ("error", "keep_last", "keep_first", "allow")


def check_policy(policy: str) -> str:
    """``policy`` if it is one of ``ON_DUPLICATE``, else a ValueError."""
    if policy not in ON_DUPLICATE:
        raise ValueError(f"on_duplicate must be one of {ON_DUPLICATE}, got {policy!r}")
    return policy


def admit(items: list[ICLExample], keys: list[str], existing: Mapping[str, int],
          policy: str) -> tuple[list[ICLExample], list[str], set[str]]:
    """The new examples (and their keys) to append under ``policy``, and the existing keys they replace.

    "error" raises on any repeat, "keep_first" ignores repeats, "keep_last" keeps the last of each key (replacing a
    stored one), "allow" keeps everything."""
    if policy == "error":
        seen: set[str] = set()
        for ex, key in zip(items, keys, strict=True):
            if key in existing or key in seen:
                raise ValueError(f"duplicate query {ex.query!r}: the bank already has it (pass "
                                 "on_duplicate='keep_last'/'keep_first'/'allow', or remove it first)")
            seen.add(key)
    elif policy == "keep_first":
        kept, seen = [], set(existing)
        for ex, key in zip(items, keys, strict=True):
            if key not in seen:
                kept.append((ex, key))
                seen.add(key)
        return [ex for ex, _ in kept], [key for _, key in kept], set()
    elif policy == "keep_last":
        last = {key: i for i, key in enumerate(keys)}
        items = [ex for i, ex in enumerate(items) if last[keys[i]] == i]
        keys = [key for i, key in enumerate(keys) if last[key] == i]
        return items, keys, set(keys) & set(existing)
    return items, keys, set()


def dedupe_drops(keys: list[str], keep: str) -> list[int]:
    """Positions to drop so that each key appears once, keeping its "first" or "last" occurrence."""
    if keep not in ("first", "last"):
        raise ValueError(f"keep must be 'first' or 'last', got {keep!r}")
    winner: dict[str, int] = {}
    for i, key in enumerate(keys):
        if keep == "last" or key not in winner:
            winner[key] = i
    return [i for i, key in enumerate(keys) if winner[key] != i]


def check_search_args(queries: Any, k: Any, mmr_lambda: Any) -> list[str]:
    """The queries as a list, after checking them, ``k`` and ``mmr_lambda`` (TypeError/ValueError otherwise)."""
    if isinstance(queries, str):
        raise TypeError("search_batch takes a list of queries; use search() for one")
    queries = list(queries)
    for query in queries:
        if not isinstance(query, str):
            raise TypeError(f"query must be a str, got {type(query).__name__}")
        if not query.strip():
            raise ValueError("query must not be empty")
    if not (is_whole(k) or isinstance(k, np.integer)):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    if mmr_lambda is not None and not (isinstance(mmr_lambda, (int, float)) and 0.0 <= mmr_lambda <= 1.0):
        raise ValueError(f"mmr_lambda must be a number in [0, 1] or None, got {mmr_lambda!r}")
    return queries


@contextmanager
def progress_bar(total: int, show: bool) -> Iterator[Any]:
    """A tqdm bar over ``total`` embedded queries when ``show``, else None."""
    bar = None
    if show:
        try:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, desc="embedding queries", unit="ex")
        except ImportError:  # pragma: no cover - tqdm comes with dspy
            bar = None
    try:
        yield bar
    finally:
        if bar is not None:
            bar.close()
