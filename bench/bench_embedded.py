"""A real embedded compile (``drpo optimize --quick`` settings, all four roles on ``embedded/smollm2-135m``) with the
embedded model's speed-ups off and on, in one process: wall time, LM calls, prompt tokens evaluated per call,
and whether the compiled prompts (and every level's rewards) are identical.

Run: nice python bench/bench_embedded.py [--depths 3,6] [--out bench/results/embedded.json]

"off" is the runtime as it was: llama.cpp reuses only the previous prompt's prefix and filters the whole vocabulary
through the JSON-schema grammar at every step. "on" also restores a snapshot of each stable prefix (a chat's system
message; ``embedded_cache.py``) and checks the grammar on the best token first (``embedded_sampling.py``). Both
decode greedily with the same chunked evaluation, so the runs must be identical; the JSON is rewritten after every
run, so an interrupted benchmark keeps what finished.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from drpo_dspy import DRPO, AlignedResponder
from drpo_dspy.cli.common import make_lm, quiet_truncation_warnings
from drpo_dspy.cli.optimize import QUICK
from drpo_dspy.clients.embedded import get_runtime
from drpo_dspy.datasets import load_train_queries

ROLES = ("base", "metrics", "judge", "optimizer")


def compile_once(depth: int, cache_on: bool) -> dict[str, Any]:
    """One quick compile at ``depth`` with the speed-ups on or off; its timings, counters and outcome."""
    import dspy

    runtime = get_runtime()
    runtime.configure(prefix_cache=cache_on, fast_grammar=cache_on)
    runtime.reset()
    runtime.reset_stats()
    lms = {role: make_lm(None, role=role) for role in ROLES}
    student = AlignedResponder(k=QUICK["k"], max_tokens=QUICK["max_tokens"])
    queries = load_train_queries(limit=QUICK["num_queries"])
    with tempfile.TemporaryDirectory() as tmp:
        drpo = DRPO(base_lm=lms["base"], metrics_lm=lms["metrics"], judge_lm=lms["judge"],
                    optimizer_lm=lms["optimizer"], beam_size=QUICK["beam_size"], n_actions=QUICK["n_actions"],
                    depth=depth, max_depth_increase=QUICK["max_depth_increase"], k=QUICK["k"],
                    log_dir=Path(tmp) / "run", progress=False)
        started = time.perf_counter()
        with dspy.context(lm=lms["base"]):
            program = drpo.compile(student, trainset=queries)
        wall = time.perf_counter() - started
    result = program.drpo_result
    stats = runtime.reset_stats().as_dict()
    return {
        "depth": depth,
        "prefix_cache_and_fast_grammar": "on" if cache_on else "off",
        "wall_s": round(wall, 1),
        "lm_calls": {role: result.usage[role]["lm_calls"] for role in ROLES},
        "lm_calls_total": sum(result.usage[role]["lm_calls"] for role in ROLES),
        "levels": result.num_levels,
        "tokens": stats,
        "wall_s_per_model_call": round(wall / max(stats["calls"], 1), 2),
        "prompt": program.instructions,
        "reward_per_level": result.reward_per_level,
        "best_path_mean": result.best_path_mean,
    }


def compare(off: dict[str, Any], on: dict[str, Any]) -> dict[str, Any]:
    """Speed-up and token ratios of ``on`` against ``off`` (same run), and whether the outcome is identical."""
    return {
        "depth": off["depth"],
        "speedup": round(off["wall_s"] / on["wall_s"], 2),
        "evaluated_tokens_per_call": [off["tokens"]["evaluated_tokens_per_call"],
                                      on["tokens"]["evaluated_tokens_per_call"]],
        "evaluated_tokens_ratio": round(off["tokens"]["evaluated_tokens"] / max(on["tokens"]["evaluated_tokens"], 1),
                                        2),
        "same_prompt": off["prompt"] == on["prompt"],
        "same_rewards": off["reward_per_level"] == on["reward_per_level"],
        "same_lm_calls": off["lm_calls"] == on["lm_calls"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--depths", default="3,6", help="comma-separated search depths (default 3,6)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/embedded.json"))
    args = parser.parse_args()
    quiet_truncation_warnings()
    report: dict[str, Any] = {
        "command": "nice python bench/bench_embedded.py --depths " + args.depths,
        "settings": {key: value for key, value in QUICK.items() if key != "depth"},
        "model": "embedded/smollm2-135m (SmolLM2-135M-Instruct Q4_1, llama.cpp, in-process)",
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "runs": [],
        "comparisons": [],
    }
    for depth in (int(d) for d in args.depths.split(",")):
        pair = []
        for speedups_on in (False, True):
            run = compile_once(depth, speedups_on)
            pair.append(run)
            report["runs"].append(run)
            print(json.dumps({k: v for k, v in run.items() if k != "prompt"}), flush=True)
            if len(pair) == 2:
                report["comparisons"].append(compare(*pair))
                print(json.dumps(report["comparisons"][-1]), flush=True)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    if not all(c["same_prompt"] and c["same_rewards"] for c in report["comparisons"]):
        sys.exit("speed-ups on and off compiled different prompts")


if __name__ == "__main__":
    main()
