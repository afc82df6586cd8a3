"""Seeing the search: a self-contained HTML view of a run's beam tree, and a reward-per-level chart.

``render_run(run_dir)`` reads ``trace.jsonl`` (one evaluated candidate per line) and writes one HTML page that
loads nothing from outside itself: every node's prompt with a word-level diff against its parent's prompt, the
per-aspect scores and rationales, the reward and path mean, whether the prompt was carried over by the skip rule,
and the chosen best path highlighted; plus ``reward_per_level.png`` (also embedded in the page).
"""

from __future__ import annotations

import base64
import difflib
import io
import json
import os
import re
from html import escape
from pathlib import Path
from typing import Any

from drpo_dspy.runs.jsonl_lines import jsonl_values
from drpo_dspy.teleprompt.run_log import is_node_line
from drpo_dspy.teleprompt.search_state import path_mean

__all__ = ["best_path", "final_beam", "load_trace", "render_run", "reward_chart", "word_diff"]

CHART_FILE = "reward_per_level.png"
DEFAULT_HTML = "search.html"
_REQUIRED = ("id", "level", "prompt", "rewards", "parent_id")

_CSS = """
body { font-family: -apple-system, "Segoe UI", Roboto, "DejaVu Sans", Arial, sans-serif; margin: 1.5rem auto;
       max-width: 1180px; padding: 0 1.2rem; color: #1f2328; line-height: 1.45; }
h1 { font-size: 1.55rem; margin-bottom: .2rem; }
h2 { font-size: 1.15rem; margin-top: 1.6rem; border-bottom: 1px solid #d0d7de; padding-bottom: .25rem; }
.meta, .note { color: #57606a; font-size: .9rem; }
figure { margin: .6rem 0; border: 1px solid #d0d7de; border-radius: 6px; padding: .5rem; max-width: 820px; }
figure img { max-width: 100%; height: auto; display: block; }
figcaption { font-size: .85rem; color: #57606a; }
table { border-collapse: collapse; font-size: .86rem; margin: .3rem 0; }
th, td { border: 1px solid #d0d7de; padding: .25rem .5rem; vertical-align: top; text-align: left; }
th { background: #f6f8fa; }
.node { border: 1px solid #d0d7de; border-radius: 6px; margin: .45rem 0; padding: .4rem .7rem; background: #fff; }
.node.best { border: 2px solid #1a7f37; background: #f3fbf5; }
.node.pruned { opacity: .8; }
.badge { display: inline-block; font-size: .75rem; border-radius: 10px; padding: 0 .5rem; margin-left: .3rem;
         background: #eaeef2; color: #24292f; }
.badge.best { background: #1a7f37; color: #fff; } .badge.carried { background: #ddf4ff; color: #0550ae; }
.badge.fail { background: #ffebe9; color: #b42318; } .warn { color: #b42318; }
summary { cursor: pointer; } .head { font-weight: 600; }
pre { white-space: pre-wrap; word-wrap: break-word; background: #f6f8fa; border-radius: 4px; padding: .45rem;
      font-size: .82rem; margin: .3rem 0; max-height: 26rem; overflow: auto; }
del { background: #ffebe9; color: #82071e; text-decoration: line-through; }
ins { background: #dafbe1; color: #116329; text-decoration: none; }
.path a { text-decoration: none; } .level-nodes { margin-left: .3rem; }
"""


# -- reading a run ---------------------------------------------------------------------------------------------
def _check_run_dir(run_dir: str | os.PathLike) -> Path:
    path = Path(run_dir)
    if not path.exists():
        raise FileNotFoundError(f"run directory {path} does not exist")
    if not path.is_dir():
        raise ValueError(f"{path} is not a directory: pass the run directory (the log_dir of a DRPO compile)")
    if not (path / "trace.jsonl").is_file():
        raise ValueError(f"{path} is not a drpo run directory: it has no trace.jsonl (a run writes one line per "
                         "evaluated prompt there)")
    return path


def load_trace(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The evaluated candidates of a run, in trace order; clear errors for a missing, empty or corrupt trace."""
    path = _check_run_dir(run_dir) / "trace.jsonl"
    nodes = []
    for lineno, node in jsonl_values(path.read_text(encoding="utf-8"), str(path)):
        if isinstance(node, dict) and not is_node_line(node):
            continue  # a dropped rewrite: recorded for the reader, not a node of the tree
        missing = [key for key in _REQUIRED if not isinstance(node, dict) or key not in node]
        if missing:
            raise ValueError(f"{path} line {lineno} is not a trace node (missing {', '.join(missing)})")
        nodes.append(node)
    if not nodes:
        raise ValueError(f"{path} is empty: the run has not evaluated its first prompt yet")
    return nodes


def _path_mean(node: dict[str, Any]) -> float | None:
    if node.get("path_mean") is not None:
        return float(node["path_mean"])
    return path_mean(list(node.get("rewards") or []))


def _reward(node: dict[str, Any]) -> float | None:
    rewards = node.get("rewards") or []
    return rewards[-1] if rewards else None


def final_beam(run_dir: str | os.PathLike | None) -> list[int] | None:
    """Node ids of the final beam, best first, from ``checkpoint.json``; None when there is no readable one."""
    checkpoint = Path(run_dir) / "checkpoint.json" if run_dir is not None else None
    if checkpoint is None or not checkpoint.is_file():
        return None
    try:
        return [int(node["id"]) for node in json.loads(checkpoint.read_text(encoding="utf-8"))["state"]["beam"]]
    except (ValueError, KeyError, TypeError):
        return None


def best_path(nodes: list[dict[str, Any]], run_dir: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """The chosen path, root first: to the final beam's best node (``checkpoint.json``), else to the node of the
    last level with the highest path mean (first in trace order on ties, as the search ranks them)."""
    by_id = {node["id"]: node for node in nodes}
    beam = final_beam(run_dir)
    best_id = beam[0] if beam and beam[0] in by_id else None
    if best_id is None:
        last = max(node["level"] for node in nodes)
        final = [node for node in nodes if node["level"] == last]
        best_id = max(final, key=lambda n: (-1.0e9 if _path_mean(n) is None else _path_mean(n), -final.index(n)))["id"]
    path = [by_id[best_id]]
    while path[-1].get("parent_id") is not None and path[-1]["parent_id"] in by_id:
        path.append(by_id[path[-1]["parent_id"]])
    return path[::-1]


# -- the chart -------------------------------------------------------------------------------------------------
def reward_chart(nodes: list[dict[str, Any]], path: list[dict[str, Any]]) -> bytes:
    """PNG: every candidate's reward (grey), the best path's reward and its running path mean, per level."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.6, 3.6), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    scored = [(n["level"], _reward(n)) for n in nodes if _reward(n) is not None]
    if scored:
        ax.scatter(*zip(*scored, strict=True), s=18, color="#8c959f", alpha=.55, label="all candidates", zorder=2)
    levels = [n["level"] for n in path]
    rewards = [_reward(n) for n in path]
    means = [_path_mean(n) for n in path]
    ax.plot(levels, [float("nan") if r is None else r for r in rewards], "o-", color="#1a7f37", lw=2,
            label="best path: reward", zorder=3)
    ax.plot(levels, [float("nan") if m is None else m for m in means], "s--", color="#0969da", lw=2,
            label="best path: path mean", zorder=3)
    ax.set_xlabel("level")
    ax.set_ylabel("reward (mean judge score, 1-5)")
    ax.set_ylim(0.8, 5.2)
    ax.set_xticks(sorted({n["level"] for n in nodes}) if len(levels) <= 30 else ax.get_xticks())
    ax.grid(alpha=.3)
    ax.legend(loc="lower right", fontsize=8)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    return buffer.getvalue()


# -- the page --------------------------------------------------------------------------------------------------
def word_diff(old: str, new: str) -> str:
    """HTML of ``new`` against ``old``: removed words in ``<del>``, added words in ``<ins>`` (all text escaped)."""
    a, b = re.split(r"(\s+)", old), re.split(r"(\s+)", new)
    out = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if op == "equal":
            out.append(escape("".join(a[i1:i2])))
            continue
        if i2 > i1:
            out.append(f"<del>{escape(''.join(a[i1:i2]))}</del>")
        if j2 > j1:
            out.append(f"<ins>{escape(''.join(b[j1:j2]))}</ins>")
    return "".join(out)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _setting(value: Any) -> str:
    """A setting as a reader wants it: ``n/a`` for None, ``yes``/``no`` for booleans, numbers without noise."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


_NUMBER_ONLY = re.compile(r"^\s*[-+]?\d+(?:\.\d+)?\s*(?:/\s*\d+)?\s*\.?\s*$")


def _judgment_table(judgment: dict[str, Any]) -> str:
    scores, rationales = judgment.get("scores") or {}, judgment.get("rationales") or {}
    if not scores:
        return f"<p class='note'>No readable judgment ({escape(str(judgment.get('failure') or 'nothing scored'))}).</p>"
    rows = "".join(f"<tr><td>{escape(a)}</td><td>{escape(_setting(s))}</td>"
                   f"<td>{escape(str(rationales.get(a) if rationales.get(a) is not None else 'n/a'))}</td>"
                   "</tr>" for a, s in scores.items())
    unscored = [a for a in judgment.get("aspects") or [] if a not in scores]
    extra = f"<p class='note'>Not scored: {escape(', '.join(unscored))}</p>" if unscored else ""
    bare = [a for a in scores if not str(rationales.get(a) or "").strip() or _NUMBER_ONLY.match(str(rationales[a]))]
    if bare and len(bare) == len(scores):
        extra += ("<p class='note warn'>Every rationale is empty or only a number: the judge gave no reasons (a "
                  "judge this weak scores little of the answer; try a stronger --judge-model).</p>")
    return f"<table><thead><tr><th>aspect</th><th>score</th><th>rationale</th></tr></thead><tbody>{rows}</tbody>" \
           f"</table>{extra}"


def _node_html(node: dict[str, Any], parent: dict[str, Any] | None, on_path: bool, expanded: bool) -> str:
    judgment = node.get("judgment") or {}
    badges = []
    if on_path:
        badges.append("<span class='badge best'>&#9733; best path</span>")
    if node.get("carried"):
        badges.append("<span class='badge carried'>carried over (skip rule)</span>")
    if _reward(node) is None:
        badges.append("<span class='badge fail'>no reward</span>")
    if not expanded:
        badges.append("<span class='badge'>not kept</span>")
    parent_link = "root" if parent is None else f"parent <a href='#node-{parent['id']}'>#{parent['id']}</a>"
    head = (f"<span class='head'>node #{node['id']}</span> · level {node['level']} · {parent_link} · reward "
            f"{_fmt(_reward(node))} · path mean {_fmt(_path_mean(node))}{''.join(badges)}")
    if parent is None:
        diff = "<p class='note'>Initial prompt.</p>"
    elif parent["prompt"] == node["prompt"]:
        diff = "<p class='note'>Unchanged from the parent prompt.</p>"
    else:
        diff = f"<pre class='diff'>{word_diff(parent['prompt'], node['prompt'])}</pre>"
    classes = "node" + (" best" if on_path else "") + ("" if expanded else " pruned")
    return (f"<div class='{classes}' id='node-{node['id']}'>{head}"
            f"<details{' open' if on_path and parent is not None else ''}><summary>diff against the parent prompt"
            f"</summary>{diff}</details>"
            f"<details><summary>prompt ({len(node['prompt'])} characters)</summary>"
            f"<pre class='prompt'>{escape(node['prompt'])}</pre></details>"
            f"<details{' open' if on_path else ''}><summary>judgment</summary>{_judgment_table(judgment)}</details>"
            f"<details><summary>query and answer</summary><pre>{escape(str(node.get('query', '')))}</pre>"
            f"<pre>{escape(str(node.get('response', '')) or '(empty answer)')}</pre></details></div>")


def _read_optional(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _guards_html(config: dict[str, Any], summary: dict[str, Any]) -> list[str]:
    """The guards of the run (from summary.json or config.json) and, if re-scored, train vs held-out means."""
    guards = summary.get("guards") or config.get("guards")
    if not guards and not config.get("paper_mode"):
        return []
    if config.get("paper_mode"):
        items = ["paper mode: every guard off"]
    else:
        items = [f"{escape(str(name))}: {escape(_setting(value))}" for name, value in guards.items()]
    parts = ["<h2>Guards against judge gaming</h2>", f"<p class='meta'>{' · '.join(items)}</p>"]
    rows = summary.get("train_vs_held_out") or []
    if rows:
        parts.append("<table><tr><th>prompt</th><th>train path mean</th><th>held-out mean</th></tr>" + "".join(
            f"<tr><td>{escape(r['prompt'][:80])}</td><td>{_fmt(r.get('train_path_mean'))}</td>"
            f"<td>{_fmt(r.get('held_out_mean'))}</td></tr>" for r in rows) + "</table>")
    return parts


def render_html(nodes: list[dict[str, Any]], path: list[dict[str, Any]], chart_png: bytes, *, title: str,
                config: dict[str, Any] | None = None, summary: dict[str, Any] | None = None,
                beam: list[int] | None = None) -> str:
    """The page as one string (every text escaped, the chart embedded); ``beam``: the final beam's node ids."""
    config, summary = config or {}, summary or {}
    by_id = {n["id"]: n for n in nodes}
    on_path = {n["id"] for n in path}
    last_level = max(n["level"] for n in nodes)
    kept = {n.get("parent_id") for n in nodes} | set(beam or [])
    if beam is None:  # without a checkpoint the last level's survivors are unknown: mark none of them
        kept |= {n["id"] for n in nodes if n["level"] == last_level}
    roles = config.get("roles") or {}
    models = ", ".join(f"{r} {escape(str((lm or {}).get('model', '?')))}" for r, lm in roles.items())
    best = path[-1]
    meta = [f"{len(nodes)} candidates over {last_level} levels", f"best path mean {_fmt(_path_mean(best))}"]
    if summary.get("stopped"):
        meta.append(f"stopped early: {escape(str(summary['stopped']))}")
    chart = base64.b64encode(chart_png).decode("ascii")
    trail = " &rarr; ".join(f"<a href='#node-{n['id']}'>#{n['id']}</a>" for n in path)
    body = [f"<h1>DRPO search: {escape(title)}</h1>", f"<p class='meta'>{' · '.join(meta)}</p>"]
    if models:
        body.append(f"<p class='meta'>Models: {models}</p>")
    body += _guards_html(config, summary)
    body += ["<h2>Reward per level</h2>",
             f"<figure><img alt='reward per level chart' src='data:image/png;base64,{chart}'><figcaption>Grey: "
             "every candidate's reward on its level's query. Green: the best path's reward. Blue: its mean reward "
             "along the path (what the beam ranks by).</figcaption></figure>",
             "<h2>Best path</h2>", f"<p class='path'>{trail}</p>",
             f"<details><summary>final prompt ({len(best['prompt'])} characters)</summary>"
             f"<pre>{escape(best['prompt'])}</pre></details>",
             "<h2>Beam tree, level by level</h2>",
             "<p class='note'>Each level judges every candidate on the same query. Green nodes form the chosen path; "
             "'not kept' nodes fell out of the beam. Open a node's sections for its diff, prompt, judgment and "
             "answer.</p>"]
    for level in range(1, last_level + 1):
        members = [n for n in nodes if n["level"] == level]
        if not members:
            continue
        query = str(members[0].get("query", ""))
        short = query if len(query) <= 120 else query[:117] + "..."
        cards = "".join(_node_html(n, by_id.get(n.get("parent_id")), n["id"] in on_path,
                                   n["id"] in kept) for n in members)
        body.append(f"<details open id='level-{level}'><summary><strong>Level {level}</strong> · "
                    f"{len(members)} candidate(s) · query: {escape(short)}</summary>"
                    f"<div class='level-nodes'>{cards}</div></details>")
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>DRPO search: {escape(title)}</title><style>{_CSS}</style></head><body>"
            + "\n".join(body) + "</body></html>\n")


def render_run(run_dir: str | os.PathLike, out_html: str | os.PathLike | None = None) -> Path:
    """Write the HTML view of a run (default ``<run_dir>/search.html``) and ``reward_per_level.png`` next to it."""
    root = _check_run_dir(run_dir)
    nodes = load_trace(root)
    path = best_path(nodes, root)
    png = reward_chart(nodes, path)
    target = Path(out_html) if out_html is not None else root / DEFAULT_HTML
    target.parent.mkdir(parents=True, exist_ok=True)
    (target.parent / CHART_FILE).write_bytes(png)
    html = render_html(nodes, path, png, title=root.resolve().name, config=_read_optional(root / "config.json"),
                       summary=_read_optional(root / "summary.json"), beam=final_beam(root))
    target.write_text(html, encoding="utf-8")
    return target
