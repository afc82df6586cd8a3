"""Plotting primitives for the evaluation charts: a headless matplotlib figure, PNG bytes, the palette."""

from __future__ import annotations

import io
from typing import Any

from drpo_dspy.evaluation.stats import clipped_interval

PALETTE = ("#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C", "#CCB974",
           "#64B5CD")
DPI = 110


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    return buffer.getvalue()


def _color(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def clipped_err(stats: list[dict[str, Any]], scale: tuple[float | None, float | None]) -> list[list[float]]:
    """Error bars (below, above the mean) of the confidence intervals, cut to the values a measure can take."""
    below, above = [], []
    for stat in stats:
        interval = clipped_interval(stat, scale)
        if interval is None or stat.get("mean") is None:
            below.append(0.0)
            above.append(0.0)
            continue
        below.append(max(0.0, stat["mean"] - interval[0]))
        above.append(max(0.0, interval[1] - stat["mean"]))
    return [below, above]
