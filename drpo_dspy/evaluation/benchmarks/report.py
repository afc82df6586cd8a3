"""Benchmark tables (Markdown and HTML share them) and one PNG per benchmark: the headline scores and the
per-category breakdown (IFEval instruction groups, XSTest types, HarmBench and MT-Bench categories)."""

from __future__ import annotations

from typing import Any

from drpo_dspy.evaluation.benchmarks.loaders import HARMBENCH, IFEVAL, MTBENCH, XSTEST

TITLES = {IFEVAL: "IFEval (verifiable instruction following)", XSTEST: "XSTest (exaggerated safety)",
          HARMBENCH: "HarmBench (refusal of harmful behaviours)", MTBENCH: "MT-Bench (two-turn chat, judged 1-10)"}
NOTES = {
    IFEVAL: "Accuracy in %, with 95% Wilson intervals, by the official IFEval checkers (no judge). Prompt level: every "
            "instruction of the prompt followed; instruction level: each instruction. Loose also accepts the answer "
            "without its first/last line or markdown asterisks. Higher is better. An empty answer counts as "
            "following no instruction (it stays in every denominator).",
    XSTEST: "String match: XSTest's own refusal detector (answer starts with a refusal phrase). Judged: the judge's "
            "refusal verdict. Over-refusal on the safe prompts and compliance on the unsafe (contrast) prompts: "
            "lower is better for both. 95% Wilson intervals. Empty answers neither refuse nor comply: they are left "
            "out of these rates and counted in the Empty column.",
    HARMBENCH: "Refusal rate on HarmBench's standard behaviours (higher is safer): judged, and HarmBench's lexical "
               "pre-check (refusal phrases anywhere in the answer; it over-detects). 95% Wilson intervals. Empty "
               "answers are left out of the rates and counted in the Empty column.",
    MTBENCH: "Ratings 1-10 by the judge, mean with 95% Student-t interval. Turn 2 was answered with turn 1 (question "
             "and the system's own answer) in its query text, as the responders take no chat history. An empty turn is "
             "not rated (Empty turns).",
}


def pct(stat: dict[str, Any] | None) -> str:
    """``61.2% [55.0, 67.0]``, or ``n/a``."""
    if not stat or stat.get("rate") is None:
        return "n/a"
    if stat.get("ci_low") is None:
        return f"{100 * stat['rate']:.1f}%"
    return f"{100 * stat['rate']:.1f}% [{100 * stat['ci_low']:.1f}, {100 * stat['ci_high']:.1f}]"


def short_pct(stat: dict[str, Any] | None) -> str:
    return "n/a" if not stat or stat.get("rate") is None else f"{100 * stat['rate']:.0f}% ({stat['count']}/{stat['n']})"


MTBENCH_SCALE = (1.0, 10.0)


def rating(stat: dict[str, Any] | None) -> str:
    """``7.50 ± 0.40``; an interval reaching past the 1-10 scale is shown cut to it: ``7.50 [4.10, 10.00]``."""
    from drpo_dspy.evaluation.formatting import fmt_mean

    return fmt_mean(stat or {}, scale=MTBENCH_SCALE)


Table = tuple[str, list[str], list[list[str]]]


def ifeval_tables(data: dict[str, Any]) -> list[Table]:
    systems = list(data)
    main = ["System", "Prompt strict", "Prompt loose", "Instruction strict", "Instruction loose", "Prompts",
            "Instructions", "Empty answers"]
    rows = [[s, pct(d["prompt_strict"]), pct(d["prompt_loose"]), pct(d["instruction_strict"]),
             pct(d["instruction_loose"]), str(d["n_prompts"]), str(d["n_instructions"]), str(d.get("n_empty", 0))]
            for s, d in data.items()]
    ids = sorted({i for d in data.values() for i in d["by_instruction"]})
    per = [[i, *(short_pct(data[s]["by_instruction"].get(i, {}).get("strict")) + " / "
                 + short_pct(data[s]["by_instruction"].get(i, {}).get("loose")) for s in systems)] for i in ids]
    return [("Scores", main, rows),
            ("By instruction type (strict / loose)", ["Instruction", *systems], per)]


def xstest_tables(data: dict[str, Any]) -> list[Table]:
    systems = list(data)
    main = ["System", "Over-refusal, safe (string match)", "Compliance, unsafe (string match)",
            "Over-refusal, safe (judged)", "Compliance, unsafe (judged)", "Safe", "Unsafe", "Empty (excluded)"]
    rows = [[s, pct(d["strmatch"]["over_refusal_safe"]), pct(d["strmatch"]["compliance_unsafe"]),
             pct(d["judged"]["over_refusal_safe"]), pct(d["judged"]["compliance_unsafe"]), str(d["n_safe"]),
             str(d["n_unsafe"]), str(d.get("n_empty", 0))] for s, d in data.items()]
    types = sorted({t for d in data.values() for t in d["by_type"]}, key=lambda t: (t.startswith("contrast_"), t))
    judged = any(d["by_type"][t]["judged_refusal"]["n"] for d in data.values() for t in d["by_type"])
    per = []
    for t in types:
        label = next(d["by_type"][t]["label"] for d in data.values() if t in d["by_type"])
        cells = []
        for s in systems:
            entry = data[s]["by_type"].get(t)
            cell = short_pct(entry["strmatch_refusal"]) if entry else "n/a"
            if entry and judged:
                cell += " / " + short_pct(entry["judged_refusal"])
            cells.append(cell)
        per.append([t, label, *cells])
    how = "string match / judged" if judged else "string match"
    return [("Scores", main, rows), (f"Refusal rate by prompt type ({how})", ["Type", "Label", *systems], per)]


def harmbench_tables(data: dict[str, Any]) -> list[Table]:
    systems = list(data)
    main = ["System", "Refusal (judged)", "Refusal (lexical pre-check)", "Lexical agrees with judge", "Prompts",
            "Empty (excluded)"]
    rows = [[s, pct(d["judged_refusal"]), pct(d["lexical_refusal"]), pct(d["agreement"]), str(d["n_prompts"]),
             str(d.get("n_empty", 0))] for s, d in data.items()]
    categories = sorted({c for d in data.values() for c in d["by_category"]})
    per = [[c, *(short_pct(data[s]["by_category"].get(c, {}).get("judged_refusal")) + " / "
                 + short_pct(data[s]["by_category"].get(c, {}).get("lexical_refusal")) for s in systems)]
           for c in categories]
    return [("Scores", main, rows), ("Refusal by semantic category (judged / lexical)", ["Category", *systems], per)]


def mtbench_tables(data: dict[str, Any]) -> list[Table]:
    systems = list(data)
    n_turns = max((len(d["per_turn"]) for d in data.values()), default=0)
    main = ["System", *(f"Turn {i + 1}" for i in range(n_turns)), "Overall", "Judge failures", "Empty turns",
            "Questions"]
    rows = [[s, *(rating(t) for t in d["per_turn"]), rating(d["overall"]), str(d["judge_failures"]),
             str(d.get("empty_turns", 0)), str(d["n_prompts"])] for s, d in data.items()]
    categories = sorted({c for d in data.values() for c in d["by_category"]})
    per = [[c, *(rating(data[s]["by_category"].get(c)) for s in systems)] for c in categories]
    return [("Scores", main, rows), ("By category (both turns)", ["Category", *systems], per)]


TABLES = {IFEVAL: ifeval_tables, XSTEST: xstest_tables, HARMBENCH: harmbench_tables, MTBENCH: mtbench_tables}


def benchmark_tables(benchmarks: dict[str, Any]) -> list[tuple[str, str, list[Table]]]:
    """``[(benchmark, title, [(caption, header, rows), ...]), ...]`` in report order."""
    return [(name, TITLES[name], TABLES[name](data)) for name, data in benchmarks.items() if name in TABLES]


def benchmark_markdown(benchmarks: dict[str, Any]) -> str:
    from drpo_dspy.evaluation.formatting import markdown_table

    parts = ["## Public benchmarks"]
    for name, title, tables in benchmark_tables(benchmarks):
        parts += [f"### {title}", NOTES[name]]
        for caption, header, rows in tables:
            parts += [f"**{caption}**", markdown_table(header, rows)]
    return "\n\n".join(parts)


# -- charts ---------------------------------------------------------------------------------------------------------
def _bars(ax: Any, groups: list[str], series: dict[str, list[dict[str, Any] | None]], *, title: str,
          ylabel: str = "%") -> None:
    """Grouped bars of rates (in %) with Wilson error bars: one group per label, one bar per system."""
    from drpo_dspy.evaluation.plotting import _color

    systems = list(series)
    width = min(0.8 / max(len(systems), 1), 0.3)
    for i, name in enumerate(systems):
        xs = [j + (i - (len(systems) - 1) / 2) * width for j in range(len(groups))]
        stats = series[name]
        heights = [100 * s["rate"] if s and s.get("rate") is not None else 0.0 for s in stats]
        low = [100 * (s["rate"] - s["ci_low"]) if s and s.get("ci_low") is not None else 0.0 for s in stats]
        high = [100 * (s["ci_high"] - s["rate"]) if s and s.get("ci_high") is not None else 0.0 for s in stats]
        ax.bar(xs, heights, width * 0.92, yerr=[low, high], capsize=2, color=_color(i), label=name,
               error_kw={"elinewidth": 0.8, "ecolor": "#333333"})
    ax.set_xticks(range(len(groups)), groups, fontsize=7, rotation=30, ha="right")
    ax.set_ylim(0, 105)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)


def _means(ax: Any, groups: list[str], series: dict[str, list[dict[str, Any] | None]], *, title: str) -> None:
    from drpo_dspy.evaluation.plotting import _color, clipped_err

    systems = list(series)
    width = min(0.8 / max(len(systems), 1), 0.3)
    for i, name in enumerate(systems):
        xs = [j + (i - (len(systems) - 1) / 2) * width for j in range(len(groups))]
        stats = series[name]
        ax.bar(xs, [s["mean"] if s and s.get("mean") is not None else 0.0 for s in stats], width * 0.92,
               yerr=clipped_err([s or {} for s in stats], MTBENCH_SCALE), capsize=2,
               color=_color(i), label=name, error_kw={"elinewidth": 0.8, "ecolor": "#333333"})
    ax.set_xticks(range(len(groups)), groups, fontsize=7, rotation=30, ha="right")
    ax.set_ylim(0, 10.5)
    ax.set_ylabel("rating (1-10)")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)


def benchmark_chart(name: str, data: dict[str, Any]) -> bytes:
    """One PNG for a benchmark: headline scores (left) and the per-category breakdown (right)."""
    from drpo_dspy.evaluation.plotting import _figure, _png

    fig = _figure(12.0, 4.6)
    left, right = fig.add_subplot(1, 3, 1), fig.add_subplot(1, 3, (2, 3))
    systems = list(data)
    if name == IFEVAL:
        keys = ["prompt_strict", "prompt_loose", "instruction_strict", "instruction_loose"]
        _bars(left, ["prompt strict", "prompt loose", "instr. strict", "instr. loose"],
              {s: [data[s][k] for k in keys] for s in systems}, title="IFEval accuracy (%)")
        groups = sorted({g for d in data.values() for g in d["by_group"]})
        _bars(right, groups, {s: [data[s]["by_group"].get(g, {}).get("strict") for g in groups] for s in systems},
              title="Strict accuracy by instruction group (%)")
    elif name == XSTEST:
        method = "judged" if any(d["judged"]["over_refusal_safe"]["n"] for d in data.values()) else "strmatch"
        labels = ["over-refusal, safe", "compliance, unsafe"]
        _bars(left, labels, {s: [data[s][method]["over_refusal_safe"], data[s][method]["compliance_unsafe"]]
                             for s in systems},
              title=f"XSTest ({'judged' if method == 'judged' else 'string match'}; lower is better)")
        types = sorted({t for d in data.values() for t in d["by_type"]}, key=lambda t: (t.startswith("contrast_"), t))
        _bars(right, types, {s: [data[s]["by_type"].get(t, {}).get("strmatch_refusal") for t in types]
                             for s in systems}, title="Refusal rate by type, string match (%)")
    elif name == HARMBENCH:
        _bars(left, ["judged", "lexical"], {s: [data[s]["judged_refusal"], data[s]["lexical_refusal"]]
                                            for s in systems}, title="HarmBench refusal rate (higher is safer)")
        cats = sorted({c for d in data.values() for c in d["by_category"]})
        key = "judged_refusal" if any(d["judged_refusal"]["n"] for d in data.values()) else "lexical_refusal"
        _bars(right, cats, {s: [data[s]["by_category"].get(c, {}).get(key) for c in cats] for s in systems},
              title=f"Refusal by category ({key.split('_')[0]}, %)")
    else:
        n_turns = max((len(d["per_turn"]) for d in data.values()), default=0)
        _means(left, [*(f"turn {i + 1}" for i in range(n_turns)), "overall"],
               {s: [*data[s]["per_turn"], data[s]["overall"]] for s in systems}, title="MT-Bench rating")
        cats = sorted({c for d in data.values() for c in d["by_category"]})
        _means(right, cats, {s: [data[s]["by_category"].get(c) for c in cats] for s in systems},
               title="Rating by category")
    right.legend(loc="upper center", bbox_to_anchor=(0.5, -0.32), fontsize=8, ncol=min(len(systems), 5), frameon=False)
    fig.suptitle(TITLES[name], fontsize=11)
    return _png(fig)


def benchmark_charts(benchmarks: dict[str, Any]) -> dict[str, bytes]:
    """``{"bench_<name>": png}`` per benchmark in the summary."""
    return {f"bench_{name}": benchmark_chart(name, data) for name, data in benchmarks.items() if name in TABLES}
