"""A real embedded compile (``drpo optimize --quick`` settings, all four roles on ``embedded/smollm2-135m``) with the
embedded model's speed-ups off and on: wall time, LM calls, prompt tokens evaluated per call, requests decoded per
step, and whether the compiled prompts (and every level's rewards) are identical.

Run: nice python bench/bench_embedded.py [--depths 3,6] [--modes off,on] [--out bench/results/embedded.json]

Each run is a fresh process (libgomp reads its thread-wait settings once per process), one after the other in one
invocation. Modes:
- ``off``: the runtime before the speed-ups: llama.cpp reuses only the previous prompt's prefix, the JSON-schema
  grammar filters the whole vocabulary at every step, requests run one at a time on all cores, and llama.cpp's
  threads wait passively (``OMP_WAIT_POLICY=PASSIVE``, no spinning);
- ``on``: the defaults: prefix snapshots (``prefix_cache.py``), the grammar checked on the best token first
  (``sampling.py``), concurrent requests on parallel single-core decoders (``workers.py``) and
  a short spin before a thread sleeps (``embedded.set_thread_wait_policy``);
- ``serial``: ``on`` with one request at a time; ``passive``: ``on`` with no spinning (to attribute the gain).
All decode greedily with the same chunked evaluation, so the runs must be identical; the JSON is rewritten after
every run, so an interrupted benchmark keeps what finished.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
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
_SWITCHES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "DRPO_EMBEDDED_PREFIX_CACHE", "DRPO_EMBEDDED_FAST_GRAMMAR",
             "DRPO_EMBEDDED_PARALLEL", "DRPO_EMBEDDED_WORKERS")
_PASSIVE = {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "0"}
MODES = {
    "off": {**_PASSIVE, "DRPO_EMBEDDED_PREFIX_CACHE": "0", "DRPO_EMBEDDED_FAST_GRAMMAR": "0",
            "DRPO_EMBEDDED_PARALLEL": "0"},
    "on": {},
    "serial": {"DRPO_EMBEDDED_PARALLEL": "0"},
    "passive": dict(_PASSIVE),
}


def compile_once(depth: int, mode: str) -> dict[str, Any]:
    """One quick compile at ``depth`` in this process (its environment sets the mode); timings, counters, outcome."""
    import dspy

    runtime = get_runtime()
    runtime.reset()
    runtime.reset_stats()
    runtime.decoder.peak_busy = 0
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
        "mode": mode,
        "environment": MODES[mode],
        "wall_s": round(wall, 1),
        "lm_calls": {role: result.usage[role]["lm_calls"] for role in ROLES},
        "lm_calls_total": sum(result.usage[role]["lm_calls"] for role in ROLES),
        "levels": result.num_levels,
        "tokens": stats,
        "wall_s_per_model_call": round(wall / max(stats["calls"], 1), 2),
        "parallel_decoders": {"workers": runtime.decoder.n_workers if runtime.parallel else 0,
                              "peak_busy": runtime.decoder.peak_busy},
        "prompt": program.instructions,
        "reward_per_level": result.reward_per_level,
        "best_path_mean": result.best_path_mean,
    }


def run_in_process(depth: int, mode: str) -> dict[str, Any]:
    """``compile_once`` in a fresh Python process with the mode's environment."""
    env = {k: v for k, v in os.environ.items() if k not in _SWITCHES} | MODES[mode]
    out = subprocess.run([sys.executable, __file__, "--one", str(depth), mode], env=env, capture_output=True,
                         text=True, check=False)
    if out.returncode != 0:
        sys.exit(f"the {mode} run at depth {depth} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def compare(off: dict[str, Any], on: dict[str, Any]) -> dict[str, Any]:
    """Speed-up and token ratios of ``on`` against ``off`` (same run), and whether the outcome is identical."""
    return {
        "depth": off["depth"],
        "modes": [off["mode"], on["mode"]],
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
    parser.add_argument("--modes", default="off,on",
                        help=f"comma-separated, the first is the baseline ({', '.join(MODES)})")
    parser.add_argument("--out", type=Path, default=Path("bench/results/embedded.json"))
    parser.add_argument("--one", nargs=2, metavar=("DEPTH", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    quiet_truncation_warnings()
    if args.one:
        print(json.dumps(compile_once(int(args.one[0]), args.one[1])), flush=True)
        return
    modes = args.modes.split(",")
    unknown = [m for m in modes if m not in MODES]
    if unknown or len(modes) < 2:
        parser.error(f"--modes needs at least two of {', '.join(MODES)}; got {args.modes!r}")
    report: dict[str, Any] = {
        "command": f"nice python bench/bench_embedded.py --depths {args.depths} --modes {args.modes}",
        "settings": {key: value for key, value in QUICK.items() if key != "depth"},
        "model": "embedded/smollm2-135m (SmolLM2-135M-Instruct Q4_1, llama.cpp, in-process)",
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_average_at_start": os.getloadavg(),
        "runs": [],
        "comparisons": [],
    }
    for depth in (int(d) for d in args.depths.split(",")):
        runs = []
        for mode in modes:
            run = run_in_process(depth, mode)
            run["load_average_after"] = os.getloadavg()
            runs.append(run)
            report["runs"].append(run)
            print(json.dumps({k: v for k, v in run.items() if k != "prompt"}), flush=True)
            if len(runs) > 1:
                report["comparisons"].append(compare(runs[0], run))
                print(json.dumps(report["comparisons"][-1]), flush=True)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    if not all(c["same_prompt"] and c["same_rewards"] for c in report["comparisons"]):
        sys.exit("the modes compiled different prompts")


if __name__ == "__main__":
    main()
