"""``drpo optimize``: search for an alignment system prompt (DRPO beam search) and save the program.

The flags, the ``--config`` file and ``--resume``'s saved settings are read in :mod:`drpo_dspy.cli.optimize_options`;
nothing heavy (DSPy, litellm, the models) is imported before they are checked. Ctrl-C stops the run at once: no
demo answers, no check, a line naming the run directory and the ``--resume`` command, exit code 130.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from drpo_dspy.cli.common import ROLES, Interrupted, InterruptWatch, UsageError, fmt, make_lm, replica_lines
from drpo_dspy.cli.optimize_options import (  # noqa: F401  (QUICK: imported from here by benches)
    QUICK,
    SETTING_OF_DEST,
    ZERO_MEANS_NONE,
    add_optimize_arguments,
    gather_options,
    saved_options,
)


def add_optimize_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``optimize`` sub-command."""
    opt = add_optimize_arguments(subparsers)
    opt.set_defaults(handler=cmd_optimize)
    return opt


def _load_queries(path: Path | None, limit: int | None) -> list[str]:
    from drpo_dspy.datasets import load_train_queries

    if path is None:
        queries = load_train_queries()
    else:
        from drpo_dspy.runs.query_files import read_queries

        queries = read_queries(path)
    return queries[:limit] if limit else queries


QUIT_AFTER_S = 2.0  # after a Ctrl-C, how long the LM calls in flight may take before they are abandoned


def resume_hint(log_dir: Path, levels: int | None = None, program: bool = True) -> str:
    """Where a stopped run is and the command that continues it."""
    kept = "the finished levels" if levels is None else f"{levels} finished level(s)"
    if program:
        kept += " and program.json, the best program so far"
    return f"the run directory {log_dir} keeps {kept}. Resume with: drpo optimize --resume {shlex.quote(str(log_dir))}"


def _quit_message(log_dir: Path) -> str:
    """What a Ctrl-C that did not wait for the calls in flight says: the levels the checkpoint holds."""
    try:
        levels = json.loads((log_dir / "checkpoint.json").read_text(encoding="utf-8"))["state"]["level"]
    except (OSError, ValueError, KeyError, TypeError):
        levels = 0
    return (f"drpo optimize: interrupted (the LM calls in flight were abandoned); "
            f"{resume_hint(log_dir, levels, program=False)}")


def _check_paths(o: dict[str, Any]) -> None:
    """Files named by the options exist: refused before anything heavy is imported."""
    for name in ("trainset", "valset", "examples", "probe_queries", *(f"{r}_router" for r in ROLES)):
        if o.get(name) and not Path(o[name]).exists():
            flag = "--" + name.replace("_", "-")
            what = "training file" if name == "trainset" else f"{flag} file"
            raise FileNotFoundError(f"{what} {o[name]} does not exist")


def _clear_stop_file(run_dir: Path) -> None:
    stop = run_dir / "STOP"
    if stop.exists():
        stop.unlink()
        print(f"Removed {stop} (left by the stop before) so the run can continue.", file=sys.stderr)


def cmd_optimize(args: argparse.Namespace) -> int:
    o = gather_options(args)
    resume = o.get("resume")
    if resume is not None:
        if not Path(resume).is_dir():
            raise UsageError(f"--resume {resume}: no such run directory")
        o = {**saved_options(Path(resume)), **o}
    _check_paths(o)

    import dspy

    from drpo_dspy import DRPO, AlignedResponder

    if o.get("resume_queries"):
        queries = list(o["resume_queries"])
    else:
        queries = _load_queries(Path(o["trainset"]) if o.get("trainset") else None, o.get("num_queries"))
    if args.quick and not o.get("base_model") and resume is None:
        o["base_model"] = quick_base_model()
    lms = {r: make_lm(o.get(f"{r}_model"), o.get(f"{r}_api_base"),
                       o.get("base_model_type") if r == "base" else None, role=r, router=o.get(f"{r}_router"))
           for r in ROLES}
    if o.get("examples"):
        from drpo_dspy.retrievers.bank_loading import load_bank

        examples = load_bank(Path(o["examples"]))
    else:
        examples = None
    k = o.get("k", 2)
    if o.get("paper_mode") and "max_tokens" not in o:  # before and after answers alike: the original's cap
        from drpo_dspy.primitives.fidelity import PAPER

        o["max_tokens"] = PAPER.answer_max_tokens
    decoding = {key: o[key] for key in ("max_tokens",) if key in o}
    if "answer_temperature" in o:
        decoding["temperature"] = o["answer_temperature"]
    student = AlignedResponder(examples=examples, k=k, **decoding)
    log_dir = Path(resume or o.get("log_dir") or Path("runs") / time.strftime("%Y%m%d-%H%M%S"))
    search = {SETTING_OF_DEST[dest]: value for dest, value in o.items() if dest in SETTING_OF_DEST and dest != "k"}
    search.update({name: None for name in ZERO_MEANS_NONE if search.get(name) == 0})  # --max-prompt-tokens 0: off
    if o.get("probe_queries"):
        search["probe_queries"] = _load_queries(Path(o["probe_queries"]), None)
    elif o.get("resume_probe_queries"):
        search["probe_queries"] = list(o["resume_probe_queries"])
    drpo = DRPO(base_lm=lms["base"], metrics_lm=lms["metrics"], judge_lm=lms["judge"], optimizer_lm=lms["optimizer"],
                k=k, log_dir=log_dir, progress=not o.get("no_progress"), **search)
    if o.get("dry_run"):  # an estimate calls nothing: no key, no server address needed; unknown prices named
        from drpo_dspy.teleprompt.estimate import render

        print(render(drpo.estimate(queries, student)))
        return 0
    demo = o.get("demo_query") or "I have a job interview tomorrow and I'm nervous. How should I prepare tonight?"
    print(f"DRPO: {len(queries)} training queries, base model {lms['base'].model}, run directory {log_dir}")
    if resume is not None:
        _clear_stop_file(log_dir)
    args.resume_hint = resume_hint(log_dir)  # shown on Ctrl-C or a failure from here on
    with InterruptWatch(log_dir / "STOP", quit_after=QUIT_AFTER_S, quit_message=lambda: _quit_message(log_dir)) \
            as watch, dspy.context(lm=lms["base"]):
        valset = _load_queries(Path(o["valset"]), None) if o.get("valset") else None
        aligned = drpo.compile(student, trainset=queries, valset=valset, resume=resume is not None)
    result = aligned.drpo_result
    if watch.pressed or str(result.stopped or "").startswith("interrupted"):  # the search caught the Ctrl-C
        raise Interrupted(resume_hint(log_dir, result.num_levels))
    with dspy.context(lm=lms["base"]):
        seed = drpo.initial_instructions or student.instructions  # the root of the search
        seeded = student if seed == student.instructions else student.with_state(instructions=seed)
        before = seeded(query=demo).response  # after compile(), which validates everything before any call
        after = aligned(query=demo).response
    judged, dropped = rewrite_counts(result.levels)
    final = aligned.instructions
    unchanged = "unchanged, the seed prompt; " if final == seed else ""
    rule = "-" * 72
    print(f"\n{rule}\nPrompt before:\n{seed}\n{rule}\nPrompt after ({unchanged}"
          f"mean reward along its path: {fmt(result.best_path_mean)}, {result.num_levels} levels):\n"
          f"{final}\n{rule}\nDemo query: {demo}\n{rule}\nAnswer before:\n{before}\n{rule}\n"
          f"Answer after:\n{after}\n{rule}")
    print("LM calls per role: " + ", ".join(f"{r}={u['lm_calls']}" for r, u in result.usage.items()))
    for line in replica_lines(result.usage):
        print(line)
    print(f"Run directory: {log_dir}  (program: {Path(log_dir) / 'program.json'}, wall time {result.wall_time_s:.0f}s)")
    if result.stopped:
        print(f"Stopped early: {result.stopped}. To continue: drpo optimize --resume {shlex.quote(str(log_dir))} "
              "(the calls already made count against a budget given again: give a larger one, or none)")
    print(render_rewrite_counts(judged, dropped))
    if dropped and not judged:
        what = "the seed prompt" if final == seed else "this prompt"
        print(f"No rewrite survived: all {sum(dropped.values())} were dropped, so the result is {what}:\n{final}")
    if args.quick and not o.get("no_check") and not result.stopped:
        if final == seed:
            print("Before/after check skipped: the compiled program's prompt is the seed prompt.")
        else:
            print_quick_check(seeded, aligned, lms["base"])
    return 0


def quick_base_model() -> str:
    """The model ``--quick`` aligns: Gemma-3-270M base when its package is installed, else the embedded SmolLM2."""
    from drpo_dspy.engine.models import GEMMA3_270M, check_installed

    try:
        check_installed(GEMMA3_270M)
    except ImportError:
        print(f"Gemma-3-270M base is not installed ({GEMMA3_270M.install}): aligning the embedded "
              "SmolLM2-135M-Instruct instead")
        return "embedded/smollm2-135m"
    return GEMMA3_270M.model


def print_quick_check(before: Any, after: Any, base_lm: Any) -> None:
    """``--quick``'s judge-free before/after check (IFEval's checkers), or why it was skipped."""
    from drpo_dspy.evaluation.quick_check import before_after_check

    print("Checking before vs after on 20 IFEval prompts (judge-free; --no-check skips this)...", flush=True)
    try:
        check = before_after_check(before, after, base_lm)
    except ImportError as exc:
        print(f"Check skipped: {exc}")
        return
    print(check.render())

def rewrite_counts(levels: list[dict[str, Any]]) -> tuple[int, Counter[str]]:
    """(rewrites judged, rewrites dropped per reason) over a search's level records (``DRPOResult.levels``)."""
    judged = sum(1 for level in levels for c in level.get("candidates", [])
                 if c.get("parent_id") is not None and not c.get("carried"))
    return judged, Counter(d.get("reason") or "unknown" for level in levels for d in level.get("dropped", []))


def render_rewrite_counts(judged: int, dropped: Counter[str]) -> str:
    """One line: the optimizer's rewrites, how many were judged, and how many were dropped for each reason."""
    total = judged + sum(dropped.values())
    if not total:
        return "Rewrites: none proposed"
    reasons = ", ".join(f"{reason}: {n}" for reason, n in sorted(dropped.items(), key=lambda kv: (-kv[1], kv[0])))
    return (f"Rewrites: {total} proposed, {judged} judged, {sum(dropped.values())} dropped"
            + (f" ({reasons})" if reasons else ""))
