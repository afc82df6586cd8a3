"""A fixed, stratified, seeded sample of a prompt set (proportional allocation, largest remainder).

Sets whose benchmark declares a label field (XSTest's ``safe``/``unsafe``, just-eval's ``regular``/``safety``:
:data:`~drpo_dspy.evaluation.benchmarks.loaders.LABEL_FIELDS`) are stratified in two levels: first by label, in
proportion to the set and at least one of each label once ``n`` allows, then by category within each label. A set's
headline number is often measured on one label only (XSTest's over-refusal on its safe prompts), so a small sample
must never miss a label. Other sets are stratified by category alone.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from drpo_dspy.evaluation.benchmarks.loaders import stratification_label


def allocate(sizes: dict[str, int], n: int, *, tie_seed: str | None = None) -> dict[str, int]:
    """How many to draw from each stratum: proportional to its size, rounded by largest remainder, at least one per
    stratum when ``n`` allows, never more than the stratum holds.

    Equal remainders go alphabetically, or, with ``tie_seed``, in an order shuffled by that seed (so that a small
    sample of many equal strata does not always favour the same ones).
    """
    total = sum(sizes.values())
    if n >= total:
        return dict(sizes)
    floor_one = n >= len(sizes)
    quotas = {k: n * v / total for k, v in sizes.items()}
    counts = {k: min(sizes[k], max(int(q), 1 if floor_one else 0)) for k, q in quotas.items()}
    rank = {k: k for k in sizes}
    if tie_seed is not None:
        shuffled = sorted(sizes)
        random.Random(tie_seed).shuffle(shuffled)
        rank = {k: f"{i:09d}" for i, k in enumerate(shuffled)}
    order = sorted(sizes, key=lambda k: (-(quotas[k] - int(quotas[k])), rank[k]))
    while sum(counts.values()) < n:
        for k in order:
            if sum(counts.values()) >= n:
                break
            if counts[k] < sizes[k]:
                counts[k] += 1
    while sum(counts.values()) > n:  # the at-least-one floor overshot: take back from the largest quotas
        k = max((k for k in counts if counts[k] > 1), key=lambda k: (counts[k] - quotas[k], k))
        counts[k] -= 1
    return counts


def _category(item: dict[str, Any]) -> str:
    return str(item.get("category", ""))


def stratified_sample(items: list[dict[str, Any]], n: int, *, seed: int = 0,
                      stratum: Callable[[dict[str, Any]], str] = _category,
                      label: Callable[[dict[str, Any]], str | None] | None = stratification_label,
                      ) -> list[dict[str, Any]]:
    """``n`` items drawn per stratum with a seeded RNG, returned in their original order (all when ``n`` >= size).

    Args:
        items: The prompts.
        n: How many to keep.
        seed: Seeds every draw: the same items, ``n`` and ``seed`` always give the same sample, so runs are
            comparable and resumable.
        stratum: The second-level stratum of an item (its category).
        label: The first-level stratum of an item, ``None`` for an item without one; by default the label field
            its benchmark declares. When no item has a label, the sample is stratified by ``stratum`` alone.
    """
    if n < 1:
        raise ValueError(f"sample size must be positive, got {n}")
    if n >= len(items):
        return list(items)
    labels = [label(item) if label is not None else None for item in items]
    if all(lab is None for lab in labels):
        groups: dict[str, list[int]] = {}
        for i, item in enumerate(items):
            groups.setdefault(stratum(item), []).append(i)
        counts = allocate({k: len(v) for k, v in groups.items()}, n)
        chosen: set[int] = set()
        for key in sorted(groups):
            rng = random.Random(f"{seed}:{key}")
            chosen.update(rng.sample(groups[key], counts[key]))
        return [items[i] for i in sorted(chosen)]
    by_label: dict[str, dict[str, list[int]]] = {}
    for i, item in enumerate(items):
        by_label.setdefault(labels[i] or "", {}).setdefault(stratum(item), []).append(i)
    per_label = allocate({lab: sum(len(v) for v in strata.values()) for lab, strata in by_label.items()}, n)
    chosen = set()
    for lab in sorted(by_label):
        strata = by_label[lab]
        counts = allocate({k: len(v) for k, v in strata.items()}, per_label[lab], tie_seed=f"{seed}:{lab}")
        for key in sorted(strata):
            rng = random.Random(f"{seed}:{lab}:{key}")
            chosen.update(rng.sample(strata[key], counts[key]))
    return [items[i] for i in sorted(chosen)]
