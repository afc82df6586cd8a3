"""Re-scoring the final beam on held-out queries (beyond the paper): a ``valset``, or the automatic held-out split.

The search ranks prompts by rewards earned on one training query per level, which is noisy. With a ``valset``
every distinct prompt of the final beam answers every validation query, the judge scores each answer, and the
prompt with the best mean validation reward is returned (ties keep the search's order).
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from drpo_dspy.rewards.reward_judge import Judgment
from drpo_dspy.teleprompt.search_state import Node


def rescore(beam: Sequence[Node], valset: Sequence[str], evaluate: Callable[[str, str], tuple[str, Judgment]],
            num_threads: int) -> list[dict[str, Any]]:
    """Mean validation reward of each distinct prompt in ``beam``, best first (stable for ties)."""
    prompts = list(dict.fromkeys(node.prompt for node in beam))
    jobs = [(p, q) for p in prompts for q in valset]
    with ThreadPoolExecutor(max_workers=max(1, num_threads)) as pool:
        futures = [pool.submit(contextvars.copy_context().run, evaluate, p, q) for p, q in jobs]
        judgments = [f.result()[1] for f in futures]
    rows = []
    for rank, prompt in enumerate(prompts):
        rewards = [j.reward for (p, _), j in zip(jobs, judgments) if p == prompt]
        known = [r for r in rewards if r is not None]
        train = next(node.path_mean for node in beam if node.prompt == prompt)
        rows.append({"prompt": prompt, "search_rank": rank, "train_path_mean": train,
                     "val_mean": sum(known) / len(known) if known else None,
                     "judged": len(known), "unreadable": len(rewards) - len(known)})
    return sorted(rows, key=lambda r: (-(r["val_mean"] if r["val_mean"] is not None else float("-inf")),
                                       r["search_rank"]))
