"""A persistent LM response cache inside the run directory, so a resumed run never pays twice for a call."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dspy
from dspy.clients.cache import Cache


@contextmanager
def run_lm_cache(directory: Path) -> Iterator[None]:
    """Route DSPy's response cache to ``directory`` while the block runs, then restore the previous cache."""
    previous = dspy.cache
    with dspy._cache_lock:
        dspy.cache = Cache(enable_disk_cache=True, enable_memory_cache=True, disk_cache_dir=str(directory),
                           disk_size_limit_bytes=4 * 1024**3)
    try:
        yield
    finally:
        with dspy._cache_lock:
            dspy.cache = previous
