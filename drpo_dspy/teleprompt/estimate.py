"""Dry run: how many calls, tokens and dollars a compile will take, per role, before anything runs.

Counts are exact bounds of the search structure. ``upper`` assumes the longest search (every allowed depth
increase, no skip saving a rewrite) and one JSON retry for every chat-adapter call; ``expected`` assumes the
initial depth, no retries. Tokens are estimated from the text that will be sent (about 4 characters a token)
and each role's ``max_tokens``; dollars come from litellm's offline price table (0 for local models).

Concurrency: a level's calls run at once (the rewrites, then every candidate's answer and judgment), but levels run
one after another, so beam x actions x minibatch bounds the calls a search can keep in flight, whatever
``num_threads`` or the number of replicas (``report["concurrency"]``).
"""

from __future__ import annotations

from typing import Any

from drpo_dspy.adapters.typed_calls import adapter_for
from drpo_dspy.clients.metering import price_notes, price_per_token

# Typical completion lengths (tokens) when no max_tokens is set, and the prompt overhead of each signature.
_TYPICAL_COMPLETION = {"base": 400, "metrics": 200, "judge": 350, "optimizer": 600}
_UPPER_COMPLETION = {"base": 2048, "metrics": 1024, "judge": 1024, "optimizer": 2048}
_PROMPT_OVERHEAD_CHARS = {"base": 200, "metrics": 2600, "judge": 2600, "optimizer": 3000}


def level_counts(n_levels: int, beam_size: int, n_actions: int) -> list[tuple[int, int]]:
    """(parents expanded, children evaluated) per level when no node skips; level 1 is the root alone."""
    counts, children = [], 1
    for level in range(1, n_levels + 1):
        if level == 1:
            counts.append((0, 1))
            continue
        parents = min(beam_size, children)
        children = parents * n_actions
        counts.append((parents, children))
    return counts


def level_concurrency(n_levels: int, beam_size: int, n_actions: int, *, minibatch_size: int = 1,
                      batched: bool = False) -> list[int]:
    """The most calls a search can have in flight at each level: its rewrites (one request per parent when batched),
    then its candidates' answers, each followed by its judgment."""
    return [max(parents * (1 if batched else n_actions), children * minibatch_size)
            for parents, children in level_counts(n_levels, beam_size, n_actions)]


def concurrency_report(n_levels: int, beam_size: int, n_actions: int, *, minibatch_size: int = 1,
                       batched: bool = False, num_threads: int | None = None,
                       roles: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a compile can use at once: calls in flight per level, the useful ``num_threads``, and the pools."""
    from drpo_dspy.clients.replica_pool import pool_size

    per_level = level_concurrency(n_levels, beam_size, n_actions, minibatch_size=minibatch_size, batched=batched)
    pools = {role: pool_size(lm) for role, lm in (roles or {}).items() if pool_size(lm) > 1}
    return {"per_level": per_level, "max": max(per_level, default=0), "num_threads": num_threads, "pools": pools}


def role_calls(n_levels: int, n_queries_distinct: int, beam_size: int, n_actions: int,
               batched: bool = False) -> dict[str, int]:
    """Role calls of a search of ``n_levels`` levels (no skips, no retries)."""
    levels = level_counts(n_levels, beam_size, n_actions)
    evaluated = sum(children for _, children in levels)
    return {"base": evaluated, "metrics": n_queries_distinct, "judge": evaluated,
            "optimizer": sum(parents * (1 if batched else n_actions) for parents, _ in levels)}


def guard_calls(n_levels: int, beam_size: int, n_actions: int, *, judge_samples: int = 1, refusal_probes: int = 0,
                holdout: int = 0) -> dict[str, dict[str, int]]:
    """Extra LM calls of each guard, per role, for a search of ``n_levels`` levels (probes: every probe judged)."""
    evaluated = sum(children for _, children in level_counts(n_levels, beam_size, n_actions))
    costs: dict[str, dict[str, int]] = {}
    if judge_samples > 1:
        costs["judge_samples"] = {"judge": evaluated * (judge_samples - 1)}
    if refusal_probes:
        costs["refusal_probes"] = {"base": evaluated * refusal_probes, "judge": evaluated * refusal_probes}
    if holdout:
        costs["holdout"] = {"metrics": holdout, "base": beam_size * holdout,
                            "judge": beam_size * holdout * judge_samples}
    return costs


def estimate(*, queries: list[str], roles: dict[str, Any], beam_size: int, n_actions: int, depth: int,
             minibatch_size: int = 1,
             max_depth_increase: int, k: int, batched: bool = False, instructions_chars: int = 1500,
             example_chars: int = 1500, judge_samples: int = 1, refusal_probes: int = 0,
             holdout: int = 0, base_calls_per_answer: int = 1, num_threads: int | None = None) -> dict[str, Any]:
    """Upper bound and expected calls, tokens and dollars per role (the guards' extra calls included, and listed
    per guard under ``report["guards"]``). ``base_calls_per_answer``: the base model's calls in one answer (a
    program's predictors)."""
    avg_query = sum(len(q) for q in queries) / len(queries)
    report: dict[str, Any] = {"levels": {}, "roles": {}, "base_calls_per_answer": base_calls_per_answer}
    m = minibatch_size
    for mode, n_levels in (("expected", min(depth, len(queries) // m)),
                           ("upper", min(depth + max_depth_increase, len(queries) // m))):
        distinct = len(set(queries[:n_levels * m]))
        calls = role_calls(n_levels, distinct, beam_size, n_actions, batched)
        calls["base"] *= m
        calls["judge"] *= m
        extra = guard_calls(n_levels, beam_size, n_actions, judge_samples=judge_samples,
                            refusal_probes=refusal_probes, holdout=holdout)
        for guard in extra.values():
            for role, n in guard.items():
                calls[role] += n * (m if role != "metrics" else 1)
        calls["base"] *= base_calls_per_answer
        report.setdefault("guards", {})[mode] = extra
        report["levels"][mode] = n_levels
        for role, n in calls.items():
            lm = roles.get(role)
            # Upper: a chat-adapter call may be retried in JSON mode; a batched rewrite may need n single top-ups.
            retries = 2 if mode == "upper" and role != "base" and adapter_for(lm) is None else 1
            if mode == "upper" and role == "optimizer" and batched:
                retries = 1 + n_actions
            cap = (getattr(lm, "kwargs", {}) or {}).get("max_tokens")
            completion = cap if mode == "upper" and cap else (
                _UPPER_COMPLETION[role] if mode == "upper" else min(cap or 10**9, _TYPICAL_COMPLETION[role]))
            prompt_chars = _PROMPT_OVERHEAD_CHARS[role] + avg_query + {
                "base": instructions_chars + k * example_chars,
                "optimizer": 6 * instructions_chars + _TYPICAL_COMPLETION["base"] * 4,
                "judge": _TYPICAL_COMPLETION["base"] * 4,
            }.get(role, 0)
            requests = n * retries
            prompt_tokens = int(requests * prompt_chars / 4)
            completion_tokens = int(requests * completion * (n_actions if role == "optimizer" and batched else 1))
            price_in, price_out = price_per_token(getattr(lm, "model", ""))
            row = report["roles"].setdefault(role, {"model": getattr(lm, "model", None)})
            row[mode] = {"lm_calls": requests, "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                         "cost_usd": round(prompt_tokens * price_in + completion_tokens * price_out, 4)}
    for mode in ("expected", "upper"):
        report[mode] = {key: sum(r[mode][key] for r in report["roles"].values())
                        for key in ("lm_calls", "prompt_tokens", "completion_tokens", "cost_usd")}
    report["concurrency"] = concurrency_report(report["levels"]["upper"], beam_size, n_actions, minibatch_size=m,
                                               batched=batched, num_threads=num_threads, roles=roles)
    report["price_notes"] = price_notes(roles.values())  # models whose cost is unknown (a typo, say), not $0.00
    return report


def render(report: dict[str, Any]) -> str:
    """A Markdown table of the estimate."""
    lines = [f"Levels: expected {report['levels']['expected']}, at most {report['levels']['upper']}", "",
             "| role | model | calls (expected / max) | tokens (expected / max) | USD (expected / max) |",
             "|---|---|---|---|---|"]
    for role, row in [*report["roles"].items(), ("total", {"model": "", **report})]:
        e, u = row["expected"], row["upper"]
        lines.append(f"| {role} | {row['model'] or ''} | {e['lm_calls']} / {u['lm_calls']} | "
                     f"{e['prompt_tokens'] + e['completion_tokens']} / {u['prompt_tokens'] + u['completion_tokens']} | "
                     f"{e['cost_usd']:.2f} / {u['cost_usd']:.2f} |")
    guards = report.get("guards", {})
    if guards.get("upper"):
        lines += ["", "Guards (extra LM calls, expected / max):"]
        for name, roles in guards["upper"].items():
            expected = guards.get("expected", {}).get(name, {})
            calls = ", ".join(f"{role} {expected.get(role, 0)} / {n}" for role, n in roles.items())
            lines.append(f"- {name}: {calls}")
    if report.get("concurrency"):
        lines += ["", render_concurrency(report["concurrency"])]
    if report.get("price_notes"):
        lines += ["", *report["price_notes"]]
    return "\n".join(lines)


def render_concurrency(c: dict[str, Any]) -> str:
    """The compile's maximum useful concurrency per level, in a few lines."""
    per_level = c["per_level"]
    steps = [f"level {i}: {n}" for i, n in enumerate(per_level, start=1) if i == 1 or n != per_level[i - 2]]
    lines = [f"Concurrency: at most {c['max']} LM calls in flight per level ({', '.join(steps)}"
             f"{', and so on' if len(steps) < len(per_level) else ''}). Levels run one after another, so more "
             "threads or replicas than that sit idle during the search; the ICL stage and drpo evaluate can use more."]
    threads = c.get("num_threads")
    if threads is not None:
        verdict = "covers it" if threads >= c["max"] else f"is below it: --num-threads {c['max']} would use it all"
        lines.append(f"num_threads {threads} {verdict}.")
    for role, size in c.get("pools", {}).items():
        busy = c["max"] / size
        lines.append(f"{role}: a pool of {size} replicas, at most {busy:.1f} of this role's calls in flight per "
                     "replica during the search.")
    return "\n".join(lines)
