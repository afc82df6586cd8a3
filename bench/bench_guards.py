"""The guards against judge gaming on the embedded model: what each one costs in one real compile.

Runs ``drpo optimize --quick`` settings (all four roles on ``embedded/smollm2-135m``) once per configuration, in one
process: the defaults, each costly guard alone, and every guard together. Per run: LM calls per role, prompt and
completion tokens, wall time, and the dry run's expected calls for the same settings (``DRPO.estimate``), so the
estimate ``--dry-run`` shows is checked against what the compile really made. Each run starts cold: DSPy's LM cache
is off and the embedded model's prefix snapshots are cleared.

    nice python bench/bench_guards.py [--out bench/results/guards.json]
"""

from __future__ import annotations

import argparse
import json
import os
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
NUM_QUERIES = 8  # the quick run's 6, plus 2 for the held-out choice
CONFIGS: dict[str, dict[str, Any]] = {
    "defaults (prompt budget, merging, exact ties)": {"holdout": 0},
    "length control": {"holdout": 0, "length_control": True},
    "judge 3 times": {"holdout": 0, "judge_samples": 3},
    "3 refusal probes": {"holdout": 0, "refusal_probes": 3},
    "held-out choice (2 queries)": {"holdout": 2},
    "all guards": {"holdout": 2, "length_control": True, "judge_samples": 3, "refusal_probes": 3},
}


def compile_once(name: str, guards: dict[str, Any]) -> dict[str, Any]:
    import dspy

    lms = {role: make_lm(None, role=role) for role in ROLES}
    for lm in lms.values():
        lm.cache = False  # every configuration pays for its own calls: DSPy's cache would replay earlier runs
    queries = load_train_queries(limit=NUM_QUERIES)
    student = AlignedResponder(k=QUICK["k"], max_tokens=QUICK["max_tokens"])
    with tempfile.TemporaryDirectory() as tmp:
        drpo = DRPO(base_lm=lms["base"], metrics_lm=lms["metrics"], judge_lm=lms["judge"],
                    optimizer_lm=lms["optimizer"], beam_size=QUICK["beam_size"], n_actions=QUICK["n_actions"],
                    depth=QUICK["depth"], max_depth_increase=0, k=QUICK["k"], log_dir=Path(tmp) / "run",
                    progress=False, **guards)
        estimate = drpo.estimate(queries, student)
        student.retrieve("warm-up")  # the embedder loads outside the timed compile
        runtime = get_runtime()
        runtime.configure(prefix_cache=True, fast_grammar=True)  # clears the prefix snapshots of earlier runs
        runtime.reset()
        started = time.perf_counter()
        with dspy.context(lm=lms["base"]):
            program = drpo.compile(student, trainset=queries)
        wall = time.perf_counter() - started
    usage = program.drpo_result.usage
    return {
        "config": name, "guards": guards, "wall_s": round(wall, 1), "levels": program.drpo_result.num_levels,
        "lm_calls": {role: usage[role]["lm_calls"] for role in ROLES},
        "lm_calls_total": sum(usage[role]["lm_calls"] for role in ROLES),
        "tokens": sum(usage[role]["prompt_tokens"] + usage[role]["completion_tokens"] for role in ROLES),
        "estimated_calls": {role: row["expected"]["lm_calls"] for role, row in estimate["roles"].items()},
        "estimated_guard_calls": estimate.get("guards", {}).get("expected", {}),
        "best_path_mean": program.drpo_result.best_path_mean, "stopped": program.drpo_result.stopped,
        "prompt": program.instructions,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results/guards.json"))
    args = parser.parse_args()
    quiet_truncation_warnings()
    report: dict[str, Any] = {"command": "nice python bench/bench_guards.py",
                              "settings": {**QUICK, "num_queries": NUM_QUERIES, "max_depth_increase": 0},
                              "model": "embedded/smollm2-135m", "load_average_at_start": os.getloadavg(),
                              "runs": []}
    for name, guards in CONFIGS.items():
        run = compile_once(name, guards)
        report["runs"].append(run)
        print(json.dumps({k: v for k, v in run.items() if k != "prompt"}), flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    base = report["runs"][0]
    print("\n| configuration | LM calls (base/metrics/judge/optimizer) | extra calls vs defaults | tokens | wall s |")
    print("|---|---|---:|---:|---:|")
    for run in report["runs"]:
        calls = "/".join(str(run["lm_calls"][r]) for r in ROLES)
        extra = run["lm_calls_total"] - base["lm_calls_total"]
        print(f"| {run['config']} | {calls} | {extra:+d} | {run['tokens']:,} | {run['wall_s']} |")


if __name__ == "__main__":
    main()
