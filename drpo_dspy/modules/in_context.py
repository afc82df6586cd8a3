"""Which examples a responder shows in context: the demos set on its predictor and the retrieved examples.

Demos are what DSPy optimizers and users put on ``responder.respond.demos`` (BootstrapFewShot, LabeledFewShot,
KNNFewShot, by hand): ``dspy.Example``s or dicts with ``query`` and ``response`` (or ``answer``). A demo without
them cannot be laid out and is left out, as DSPy's own adapters leave out a demo with no input or no output.

- ``"merge"`` (the default): the demos first, in their order, then the retrieved examples, most similar first;
  a retrieved example whose query is already a demo's is left out.
- ``"replace"``: the demos alone when there are any (no retrieval is done), else the retrieved examples.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

logger = logging.getLogger(__name__)

Pair = tuple[str, str]


def demo_pairs(demos: Sequence[Any]) -> list[Pair]:
    """``(query, response)`` of each usable demo, in order."""
    pairs = []
    for demo in demos:
        data = demo.toDict() if hasattr(demo, "toDict") else demo
        if not isinstance(data, dict):
            logger.warning("a demo of type %s cannot be laid out and is left out", type(demo).__name__)
            continue
        answer = data.get("response", data.get("answer"))
        if not isinstance(data.get("query"), str) or not isinstance(answer, str):
            logger.warning("a demo without 'query' and 'response' (keys: %s) is left out", sorted(data))
            continue
        pairs.append((data["query"], answer))
    return pairs


def in_context(demos: Sequence[Pair], retrieved: Sequence[Pair], mode: str) -> list[Pair]:
    """The examples shown in context, in prompt order (see the module docstring)."""
    if mode == "replace" and demos:
        return list(demos)
    seen = {query for query, _ in demos}
    return [*demos, *(pair for pair in retrieved if pair[0] not in seen)]
