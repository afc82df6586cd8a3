"""Benchmark the ``drpo`` command's start-up: time to ``drpo --help``, to a usage error, and to the first answer of
``drpo respond`` on the embedded model, each in fresh processes, for this tree and for a git revision, in one run.

Every measurement is a fresh ``python -c "from drpo_dspy.cli import main; ..."`` process with ``PYTHONPATH`` set
to the tree measured (this checkout, or the revision checked out into a temporary ``git worktree``), started from
an empty directory; the two trees' runs are interleaved, so a busy machine slows both alike. Reported: the median
of ``--runs`` wall-clock times per command and tree, and the ratio baseline / this tree (above 1: faster now).

- ``help``: ``drpo --help``;
- ``usage error``: ``drpo optimize --beam-size 0`` (exit 2);
- ``respond``: ``drpo respond "Say hi." --program p.json --max-tokens 8`` on the embedded model, the program saved
  with ``AlignedResponder(examples=[], k=0)`` (skipped without the ``[local]`` extra).

    python bench/bench_startup.py [--baseline REV] [--runs 5] [--skip-respond] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = "import sys; from drpo_dspy.cli import main; sys.exit(main())"
COMMANDS = {
    "help": (["--help"], 0),
    "usage error": (["optimize", "--beam-size", "0"], 2),
    "respond": (["respond", "Say hi.", "--program", "program.json", "--max-tokens", "8"], 0),
}


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], check=True, capture_output=True, text=True).stdout.strip()


def timed_run(tree: Path, argv: list[str], expected: int, workdir: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    env.pop("PYTHONSTARTUP", None)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", LAUNCH, *argv], cwd=workdir, env=env, capture_output=True, text=True,
                          timeout=600)
    elapsed = time.perf_counter() - start
    if proc.returncode != expected:
        raise RuntimeError(f"{tree}: drpo {' '.join(argv)} exited {proc.returncode}, expected {expected}:\n"
                           f"{proc.stderr[-2000:]}")
    return elapsed


def embedded_available() -> bool:
    try:
        from drpo_dspy.clients.embedded import ensure_embedded_runtime

        ensure_embedded_runtime("embedded/smollm2-135m")
    except (ImportError, ValueError) as exc:
        print(f"respond skipped: {exc}", file=sys.stderr)
        return False
    return True


def measure(trees: dict[str, Path], commands: list[str], runs: int, workdir: Path) -> dict[str, dict[str, list[float]]]:
    times: dict[str, dict[str, list[float]]] = {name: {c: [] for c in commands} for name in trees}
    for command in commands:
        argv, expected = COMMANDS[command]
        for tree in trees.values():  # one warm-up each: the file cache, not the process, is what is shared
            timed_run(tree, argv, expected, workdir)
        for i in range(runs):
            for name, tree in (trees.items() if i % 2 == 0 else reversed(list(trees.items()))):
                times[name][command].append(timed_run(tree, argv, expected, workdir))
            print(f"{command}: run {i + 1}/{runs}", file=sys.stderr, flush=True)
    return times


def report(times: dict[str, dict[str, list[float]]], labels: dict[str, str]) -> dict[str, Any]:
    rows = {}
    print(f"| command | {labels['baseline']} (s) | {labels['current']} (s) | ratio (baseline / now) |")
    print("|---|---|---|---|")
    for command in times["current"]:
        before = statistics.median(times["baseline"][command])
        after = statistics.median(times["current"][command])
        rows[command] = {"baseline_median_s": round(before, 3), "current_median_s": round(after, 3),
                         "ratio": round(before / after, 2), "baseline_runs_s": [round(t, 3) for t in
                                                                              times["baseline"][command]],
                         "current_runs_s": [round(t, 3) for t in times["current"][command]]}
        print(f"| {command} | {before:.2f} | {after:.2f} | {before / after:.2f}x |")
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", default="HEAD", help="git revision to compare with (default: HEAD)")
    parser.add_argument("--runs", type=int, default=5, help="runs per command and tree (median reported)")
    parser.add_argument("--skip-respond", action="store_true", help="only --help and the usage error")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT))
    commands = ["help", "usage error"]
    if not args.skip_respond and embedded_available():
        commands.append("respond")
    revision = git("rev-parse", "--short", args.baseline)
    dirty = bool(git("status", "--porcelain", "--untracked-files=no", "--", "drpo_dspy", "signatures"))
    labels = {"baseline": revision, "current": git("rev-parse", "--short", "HEAD") + ("+changes" if dirty else "")}
    with tempfile.TemporaryDirectory(prefix="drpo-startup-") as tmp:
        worktree, workdir = Path(tmp) / "baseline", Path(tmp) / "work"
        workdir.mkdir()
        git("worktree", "add", "--detach", str(worktree), args.baseline)
        try:
            if "respond" in commands:
                from drpo_dspy import AlignedResponder

                AlignedResponder(examples=[], k=0).save(str(workdir / "program.json"))
            times = measure({"baseline": worktree, "current": ROOT}, commands, args.runs, workdir)
        finally:
            git("worktree", "remove", "--force", str(worktree))
    print(f"\ndrpo start-up, median of {args.runs} fresh processes per cell; {platform.python_version()}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}\n")
    rows = report(times, labels)
    if args.json:
        args.json.write_text(json.dumps({"baseline": labels["baseline"], "current": labels["current"],
                                         "runs": args.runs, "commands": rows}, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
