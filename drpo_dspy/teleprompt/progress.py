"""The progress bar and the per-level log line of a compile, built on the search's events."""

from __future__ import annotations

import logging
from typing import Any

from drpo_dspy.primitives.events import LevelFinished

logger = logging.getLogger("drpo_dspy.teleprompt.drpo")


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


class ProgressReporter:
    """Logs each finished level; with ``bar=True`` also drives a tqdm bar (levels done / depth limit)."""

    def __init__(self, *, bar: bool, total: int, initial: int = 0, max_levels: int | None = None):
        self._bar: Any = None
        self._peak: float | None = None  # the highest best path mean of any level so far
        self.max_levels = max_levels  # the number of query batches: no more levels than that
        if bar:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc="DRPO levels", unit="level", initial=initial)

    def __call__(self, event: Any) -> None:
        if isinstance(event, LevelFinished):
            logger.info("level %d/%d: best path mean %s", event.level, event.max_depth, _fmt(event.best_path_mean))
            if event.best_path_mean is not None:
                self._peak = event.best_path_mean if self._peak is None else max(self._peak, event.best_path_mean)
            if self._bar is not None:
                self._bar.update(event.level - self._bar.n)
                total = max(event.max_depth, event.level)
                self._bar.total = min(total, self.max_levels) if self.max_levels else total
                # The beam's best path mean at this level: it falls when a level's query is harder, so the highest
                # so far is shown next to it (the result is the final beam's best, not that peak).
                self._bar.set_postfix_str(f"level best={_fmt(event.best_path_mean)} (path mean; "
                                          f"highest so far {_fmt(self._peak)})")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
