"""PNG charts of an evaluation summary, drawn with matplotlib's Agg canvas (no display, no pyplot global state)."""

from __future__ import annotations

from typing import Any

from drpo_dspy.evaluation.plotting import DPI, PALETTE, _color, _figure, _png, clipped_err  # noqa: F401
from drpo_dspy.evaluation.stats import JUDGE_SCALE
from drpo_dspy.signatures.evaluation import EVAL_ASPECTS


def _sym_err(stat: dict[str, Any]) -> float:
    return stat["half_width"] if stat.get("half_width") is not None else 0.0


def _rate_err(stat: dict[str, Any]) -> tuple[float, float]:
    if stat.get("rate") is None or stat.get("ci_low") is None:
        return 0.0, 0.0
    return 100 * (stat["rate"] - stat["ci_low"]), 100 * (stat["ci_high"] - stat["rate"])


def _bar_width(n_systems: int) -> float:
    return min(0.8 / max(n_systems, 1), 0.3)


def aspects_chart(summary: dict[str, Any]) -> bytes:
    """Grouped bars: one group per aspect (and the mean), one bar per system, 95% CI error bars."""
    systems = summary["systems"]
    labels = [a.capitalize() for a in EVAL_ASPECTS] + ["Mean"]
    fig = _figure(max(8.0, 1.1 * len(labels) + 0.4 * len(systems)), 4.6)
    ax = fig.add_subplot(1, 1, 1)
    width = _bar_width(len(systems))
    for i, name in enumerate(systems):
        s = summary["per_system"][name]
        stats = [s["aspects"][a] for a in EVAL_ASPECTS] + [s["overall"]]
        xs = [j + (i - (len(systems) - 1) / 2) * width for j in range(len(labels))]
        heights = [st["mean"] or 0.0 for st in stats]
        bars = ax.bar(xs, heights, width * 0.92, yerr=clipped_err(stats, JUDGE_SCALE), capsize=3,
                      color=_color(i), label=name, error_kw={"elinewidth": 1, "ecolor": "#333333"})
        for bar, st in zip(bars, stats, strict=True):
            if st["mean"] is not None and len(systems) <= 4:
                ax.annotate(f"{st['mean']:.2f}", (bar.get_x() + bar.get_width() / 2, 0.08), ha="center",
                            va="bottom", fontsize=7, color="white", rotation=90)
    ax.set_xticks(range(len(labels)), labels)
    ax.set_ylim(0, 5.4)
    ax.set_yticks([0, 1, 2, 3, 4, 5])
    ax.set_ylabel("Score (1-5)")
    ax.set_title("Aspect scores: mean with 95% confidence interval")
    ax.axvline(len(labels) - 1.5, color="#bbbbbb", linewidth=0.8, linestyle="--")
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=min(len(systems), 5), frameon=False)
    return _png(fig)


def length_chart(summary: dict[str, Any]) -> bytes:
    """Horizontal bars: mean answer length in tokens per system, 95% CI error bars, median marked."""
    systems = summary["systems"]
    fig = _figure(7.5, max(2.2, 0.6 * len(systems) + 1.2))
    ax = fig.add_subplot(1, 1, 1)
    ys = list(range(len(systems)))[::-1]
    for y, (i, name) in zip(ys, enumerate(systems), strict=True):
        stat = summary["per_system"][name]["length"]
        mean = stat["mean"] or 0.0
        ax.barh(y, mean, 0.6, xerr=clipped_err([stat], (0.0, None)), capsize=4, color=_color(i),
                error_kw={"elinewidth": 1})
        if stat.get("median") is not None:
            ax.plot([stat["median"]], [y], marker="D", color="black", markersize=5,
                    label="median" if i == 0 else None)
        ax.annotate(f" {mean:.0f}", (mean + _sym_err(stat), y), va="center", fontsize=9)
    ax.set_yticks(ys, systems)
    ax.set_xlabel(f"Answer length ({summary.get('length_unit', 'tokens').split(',')[0]})")
    ax.set_title("Answer length: mean with 95% confidence interval")
    ax.grid(axis="x", alpha=0.3)
    ax.set_axisbelow(True)
    right = max((summary["per_system"][n]["length"]["mean"] or 0) + _sym_err(
        summary["per_system"][n]["length"]) for n in systems)
    ax.set_xlim(0, max(right * 1.15, 1))
    if ax.get_legend_handles_labels()[0]:  # the median markers, when any system has a median
        ax.legend(loc="lower right", fontsize=8)
    return _png(fig)


def refusal_chart(summary: dict[str, Any]) -> bytes:
    """Refusal rate on harmful prompts and over-refusal rate on benign-risky prompts, Wilson 95% intervals."""
    systems = summary["systems"]
    groups = [("refusal_harmful", "Refusal on harmful prompts\n(higher is safer)", "harmful"),
              ("over_refusal_benign", "Over-refusal on benign-risky prompts\n(lower is better)", "benign_risky")]
    fig = _figure(8.0, 4.2)
    ax = fig.add_subplot(1, 1, 1)
    width = _bar_width(len(systems))
    for j, (key, _label, set_name) in enumerate(groups):
        measured = False
        for i, name in enumerate(systems):
            stat = summary["per_system"][name][key]
            if stat["rate"] is None:
                continue
            measured = True
            x = j + (i - (len(systems) - 1) / 2) * width
            low, high = _rate_err(stat)
            ax.bar(x, 100 * stat["rate"], width * 0.92, yerr=[[low], [high]], capsize=3, color=_color(i),
                   error_kw={"elinewidth": 1, "ecolor": "#333333"})
            ax.annotate(f"{100 * stat['rate']:.0f}%", (x, 100 * stat["rate"] + high + 1), ha="center",
                        va="bottom", fontsize=8)
        if not measured:
            ax.text(j, 50, f"not measured\n(no {set_name} prompts)", ha="center", va="center", fontsize=9,
                    color="#777777")
    from matplotlib.patches import Patch

    handles = [Patch(color=_color(i), label=name) for i, name in enumerate(systems)]
    ax.set_xticks(range(len(groups)), [g[1] for g in groups])
    ax.set_xlim(-0.6, len(groups) - 0.4)
    ax.set_ylim(0, 112)
    ax.set_ylabel("% of prompts judged refused")
    ax.set_title("Refusals (judged), with 95% Wilson intervals")
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=min(len(systems), 5),
              frameon=False)
    return _png(fig)


def pairwise_chart(summary: dict[str, Any]) -> bytes | None:
    """Stacked horizontal bars of win / tie / loss per pair of systems (None with fewer than two systems)."""
    pairs = [p for p in summary["pairwise"] if p["n"]]
    if not pairs:
        return None
    fig = _figure(7.5, max(2.0, 0.55 * len(pairs) + 1.2))
    ax = fig.add_subplot(1, 1, 1)
    ys = list(range(len(pairs)))[::-1]
    colors = {"wins": "#55A868", "ties": "#BBBBBB", "losses": "#C44E52"}
    for y, p in zip(ys, pairs, strict=True):
        left = 0.0
        for part, color in colors.items():
            share = 100 * p[part] / p["n"]
            ax.barh(y, share, 0.6, left=left, color=color, label=part if y == ys[0] else None)
            if share >= 8:
                ax.annotate(f"{p[part]}", (left + share / 2, y), ha="center", va="center", fontsize=8,
                            color="white" if part != "ties" else "black")
            left += share
    ax.set_yticks(ys, [f"{p['a']} vs {p['b']}" for p in pairs])
    ax.set_xlim(0, 100)
    ax.set_xlabel("% of prompts (first system's wins / ties / losses)")
    ax.set_title("Pairwise comparison per prompt (mean of the six aspects)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=3, frameon=False)
    return _png(fig)


def render_charts(summary: dict[str, Any]) -> dict[str, bytes]:
    """``{name: png bytes}`` for every chart that applies (``aspects``, ``length``, ``refusal``, ``pairwise``, and
    ``bench_<name>`` per public benchmark); a judge-free benchmark run gets only length and benchmark charts."""
    from drpo_dspy.evaluation.formatting import judged_anything

    judged = judged_anything(summary)
    charts = {"aspects": aspects_chart(summary)} if judged else {}
    charts["length"] = length_chart(summary)
    if judged:
        charts["refusal"] = refusal_chart(summary)
        pair = pairwise_chart(summary)
        if pair is not None:
            charts["pairwise"] = pair
    if summary.get("benchmarks"):
        from drpo_dspy.evaluation.benchmarks.report import benchmark_charts

        charts.update(benchmark_charts(summary["benchmarks"]))
    return charts
