"""A fixed, stratified, seeded sample of a prompt set (proportional allocation, largest remainder)."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any


def allocate(sizes: dict[str, int], n: int) -> dict[str, int]:
    """How many to draw from each stratum: proportional to its size, rounded by largest remainder, at least one per
    stratum when ``n`` allows, never more than the stratum holds."""
    total = sum(sizes.values())
    if n >= total:
        return dict(sizes)
    floor_one = n >= len(sizes)
    quotas = {k: n * v / total for k, v in sizes.items()}
    counts = {k: min(sizes[k], max(int(q), 1 if floor_one else 0)) for k, q in quotas.items()}
    order = sorted(sizes, key=lambda k: (-(quotas[k] - int(quotas[k])), k))
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


def stratified_sample(items: list[dict[str, Any]], n: int, *, seed: int = 0,
                      stratum: Callable[[dict[str, Any]], str] = lambda item: item.get("category", "")
                      ) -> list[dict[str, Any]]:
    """``n`` items drawn per stratum with a seeded RNG, returned in their original order (all when ``n`` >= size).

    The same items, ``n`` and ``seed`` always give the same sample, so runs are comparable and resumable.
    """
    if n < 1:
        raise ValueError(f"sample size must be positive, got {n}")
    if n >= len(items):
        return list(items)
    groups: dict[str, list[int]] = {}
    for i, item in enumerate(items):
        groups.setdefault(stratum(item), []).append(i)
    counts = allocate({k: len(v) for k, v in groups.items()}, n)
    chosen: set[int] = set()
    for key in sorted(groups):
        rng = random.Random(f"{seed}:{key}")
        chosen.update(rng.sample(groups[key], counts[key]))
    return [items[i] for i in sorted(chosen)]
