"""``drpo optimize``: search for an alignment system prompt (DRPO beam search) and save the program."""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

from drpo_dspy.cli.common import ROLES, fmt, make_lm, quiet_truncation_warnings

# Small settings that finish in a few minutes on 2 CPU cores with the embedded model.
QUICK = {"beam_size": 2, "n_actions": 2, "depth": 3, "max_depth_increase": 1, "k": 1, "max_tokens": 160,
         "num_queries": 6}
_PAPER_SET = ("paper_faithful_failures", "rewrite_filter")  # implied by paper mode, not passed again on resume
GUARD_OPTIONS = ("length_control", "judge_samples", "tie_tolerance", "holdout", "max_prompt_tokens",
                 "merge_duplicate_bullets", "refusal_probes", "refusal_penalty", "max_refusal_rate")


def _add_role_flags(parser: argparse.ArgumentParser) -> None:
    for role in ROLES:
        parser.add_argument(f"--{role}-model", help=f"litellm model string for the {role} role (default: embedded)")
        parser.add_argument(f"--{role}-api-base", help=f"API base URL for the {role} model (vLLM, Ollama, proxies)")
    parser.add_argument("--base-model-type", choices=["chat", "text"], default=None,
                        help="'text' for base (non-chat) models served by text completion")


def add_optimize_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``optimize`` sub-command."""
    opt = subparsers.add_parser("optimize", help="search for an alignment system prompt (DRPO beam search)")
    opt.add_argument("--config", type=Path, help="JSON file with any of these options (flags override it)")
    _add_role_flags(opt)
    opt.add_argument("--trainset", type=Path, help="queries: .json list or .jsonl (strings, {query}, or conversations "
                     "{messages: [...]} / {query, history}), or .txt")
    opt.add_argument("--num-queries", type=int, help="use only the first N training queries")
    opt.add_argument("--valset", type=Path, help="held-out queries: re-score the final beam on them and pick by that")
    opt.add_argument("--examples", type=Path, help="in-context example bank (.json/.jsonl, or the published "
                                                   "{query: answer} JSON); default: the built-in seed examples")
    for name, kind, helptext in (
        ("beam-size", int, "beams kept per level (2)"), ("n-actions", int, "rewrites per beam (3)"),
        ("depth", int, "initial search depth (20)"), ("max-depth-increase", int, "extra levels allowed (10)"),
        ("temperature", float, "optimizer temperature (0.2)"), ("skip-threshold", float, "skip above this mean (4.5)"),
        ("k", int, "in-context examples per query (2)"), ("num-threads", int, "concurrent LM calls (8)"),
        ("seed", int, "seed for sampled local calls (0)"),
        ("max-tokens", int, "cap on base-model answers (1024; --quick: 160; --paper-mode: 2048)"),
        ("answer-temperature", float, "base-model decoding temperature (0: greedy)"),
        ("max-errors", int, "errors a role may have before the run stops (10)"),
    ):
        opt.add_argument(f"--{name}", type=kind, help=helptext)
    opt.add_argument("--initial-instructions", help="starting system prompt")
    opt.add_argument("--log-dir", type=Path, help="run directory (default: runs/<timestamp>)")
    opt.add_argument("--quick", action="store_true",
                     help="tiny settings for a demo run of a few minutes: aligns Gemma-3-270M base (when installed: "
                          "the [gemma] extra) with the embedded SmolLM2 as helpers, then checks before vs after on "
                          "20 IFEval prompts, judge-free")
    opt.add_argument("--no-check", action="store_true", help="skip --quick's judge-free before/after check")
    opt.add_argument("--paper-mode", action="store_true",
                     help="behave as the original code in everything observable through the LMs (docs/fidelity.md)")
    opt.add_argument("--no-rewrite-filter", dest="rewrite_filter", action="store_false", default=None,
                     help="keep every readable rewrite, even template copies and query-specific ones")
    guards = opt.add_argument_group("guards against judge gaming (all off with --paper-mode)")
    guards.add_argument("--length-control", action="store_true",
                        help="remove the judge's length preference from each level's rewards")
    guards.add_argument("--judge-samples", type=int, help="judge every answer N times and average (1)")
    guards.add_argument("--tie-tolerance", type=float, help="path means this close count as tied (0)")
    guards.add_argument("--holdout", type=int,
                        help="queries held out to re-score the final beam (default: 8 when there is room; 0: off)")
    guards.add_argument("--max-prompt-tokens", type=int, help="prompt budget told to the optimizer (1024; 0: off)")
    guards.add_argument("--no-merge-bullets", dest="merge_duplicate_bullets", action="store_false", default=None,
                        help="keep duplicate bullets in rewrites")
    guards.add_argument("--refusal-probes", type=int, help="benign-but-risky probes answered per candidate (0)")
    guards.add_argument("--probe-queries", type=Path, help="your own probes (.json, .jsonl or .txt)")
    guards.add_argument("--refusal-penalty", type=float, help="reward lost per unit of refusal rate (1.0)")
    guards.add_argument("--max-refusal-rate", type=float, help="reject candidates refusing more probes than this")
    opt.add_argument("--paper-faithful-failures", action="store_true",
                     help="score unreadable judgments 0 and skip, as the original code did")
    opt.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    opt.add_argument("--proposal-sampling", choices=["batched", "independent"],
                     help="one request for all rewrites of a node (batched, default) or one request each")
    opt.add_argument("--max-calls", type=int, help="hard budget: LM calls across all roles")
    opt.add_argument("--max-total-tokens", type=int, dest="max_total_tokens",
                     help="hard budget: tokens across all roles")
    opt.add_argument("--max-cost-usd", type=float, help="hard budget: dollars across all roles (litellm prices)")
    opt.add_argument("--dry-run", action="store_true", help="estimate calls, tokens and dollars per role; call nothing")
    opt.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue the run recorded in RUN_DIR")
    opt.add_argument("--demo-query", help="query answered before and after optimization (default: a built-in one)")

    opt.set_defaults(handler=cmd_optimize)
    return opt


def _options(args: argparse.Namespace) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if args.quick:
        options.update(QUICK)
    if args.config:
        try:
            loaded = json.loads(args.config.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise SystemExit(f"drpo: cannot read --config {args.config}: {exc}") from exc
        if not isinstance(loaded, dict):
            raise SystemExit(f"drpo: --config {args.config} must hold a JSON object")
        options.update({k.replace("-", "_"): v for k, v in loaded.items()})
    options.update({k: v for k, v in vars(args).items()
                    if v is not None and v is not False and k not in ("command", "config", "quick", "handler", "func")})
    return options


def _load_queries(path: Path | None, limit: int | None) -> list[str]:
    from drpo_dspy.datasets import load_train_queries

    if path is None:
        queries = load_train_queries()
    else:
        from drpo_dspy.runs.query_files import read_queries

        queries = read_queries(path)
    return queries[:limit] if limit else queries


def cmd_optimize(args: argparse.Namespace) -> int:
    import dspy

    quiet_truncation_warnings()
    from drpo_dspy import DRPO, AlignedResponder

    o = _options(args)
    known = {"trainset", "num_queries", "examples", "log_dir", "max_tokens", "demo_query", "no_progress", "no_check",
             "base_model_type", "beam_size", "n_actions", "depth", "max_depth_increase", "temperature",
             "skip_threshold", "k", "num_threads", "seed", "initial_instructions", "paper_faithful_failures",
             "proposal_sampling", "max_calls", "max_total_tokens", "max_cost_usd", "dry_run", "resume",
             "resume_queries", "valset", "paper_mode", "rewrite_filter", "answer_temperature", "max_errors",
             *GUARD_OPTIONS, "probe_queries", "resume_probe_queries"}
    known |= {f"{r}_model" for r in ROLES} | {f"{r}_api_base" for r in ROLES}
    unknown = sorted(set(o) - known)
    if unknown:
        raise SystemExit(f"drpo: unknown option(s) in --config: {', '.join(unknown)}")
    resume = o.get("resume")
    if resume is not None:
        if not Path(resume).is_dir():
            raise ValueError(f"--resume {resume}: no such run directory")
        o = {**_saved_options(Path(resume)), **o}
    if o.get("resume_queries"):
        queries = list(o["resume_queries"])
    else:
        queries = _load_queries(Path(o["trainset"]) if o.get("trainset") else None, o.get("num_queries"))
    if args.quick and not o.get("base_model") and resume is None:
        o["base_model"] = quick_base_model()
    lms = {r: make_lm(o.get(f"{r}_model"), o.get(f"{r}_api_base"),
                       o.get("base_model_type") if r == "base" else None, role=r) for r in ROLES}
    if o.get("examples"):
        from drpo_dspy.retrievers.bank import AlignmentBank

        path = Path(o["examples"])
        examples = AlignmentBank.load(path) if path.suffix == ".jsonl" else _load_bank_json(path)
    else:
        examples = None
    k = o.get("k", 2)
    decoding = {key: o[key] for key in ("max_tokens",) if key in o}
    if "answer_temperature" in o:
        decoding["temperature"] = o["answer_temperature"]
    student = AlignedResponder(examples=examples, k=k, **decoding)
    log_dir = Path(resume or o.get("log_dir") or Path("runs") / time.strftime("%Y%m%d-%H%M%S"))
    search = {key: o[key] for key in ("beam_size", "n_actions", "depth", "max_depth_increase", "temperature",
                                      "skip_threshold", "num_threads", "seed", "initial_instructions",
                                      "paper_faithful_failures", "proposal_sampling", "max_calls",
                                      "max_total_tokens", "max_cost_usd", "paper_mode", "rewrite_filter",
                                      "max_errors", *GUARD_OPTIONS) if key in o}
    if search.get("max_prompt_tokens") == 0:
        search["max_prompt_tokens"] = None
    if o.get("probe_queries"):
        search["probe_queries"] = _load_queries(Path(o["probe_queries"]), None)
    elif o.get("resume_probe_queries"):
        search["probe_queries"] = list(o["resume_probe_queries"])
    if o.get("paper_mode") and "max_tokens" not in o:
        search["answer_max_tokens"] = 2048
    drpo = DRPO(base_lm=lms["base"], metrics_lm=lms["metrics"], judge_lm=lms["judge"], optimizer_lm=lms["optimizer"],
                k=k, log_dir=log_dir, progress=not o.get("no_progress"), **search)
    if o.get("dry_run"):  # an estimate calls nothing: no key, no server address needed; unknown prices named
        from drpo_dspy.teleprompt.estimate import render

        print(render(drpo.estimate(queries, student)))
        return 0
    demo = o.get("demo_query") or "I have a job interview tomorrow and I'm nervous. How should I prepare tonight?"
    print(f"DRPO: {len(queries)} training queries, base model {lms['base'].model}, run directory {log_dir}")
    with dspy.context(lm=lms["base"]):
        valset = _load_queries(Path(o["valset"]), None) if o.get("valset") else None
        aligned = drpo.compile(student, trainset=queries, valset=valset, resume=resume is not None)
        seed = drpo.initial_instructions or student.instructions  # the root of the search
        seeded = student if seed == student.instructions else student.with_state(instructions=seed)
        before = seeded(query=demo).response  # after compile(), which validates everything before any call
        after = aligned(query=demo).response
    result = aligned.drpo_result
    judged, dropped = rewrite_counts(result.levels)
    final = aligned.instructions
    unchanged = "unchanged, the seed prompt; " if final == seed else ""
    rule = "-" * 72
    print(f"\n{rule}\nPrompt before:\n{seed}\n{rule}\nPrompt after ({unchanged}"
          f"mean reward along its path: {fmt(result.best_path_mean)}, {result.num_levels} levels):\n"
          f"{final}\n{rule}\nDemo query: {demo}\n{rule}\nAnswer before:\n{before}\n{rule}\n"
          f"Answer after:\n{after}\n{rule}")
    print("LM calls per role: " + ", ".join(f"{r}={u['lm_calls']}" for r, u in result.usage.items()))
    print(f"Run directory: {log_dir}  (program: {Path(log_dir) / 'program.json'}, wall time {result.wall_time_s:.0f}s)")
    if result.stopped:
        print(f"Stopped early: {result.stopped}")
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
    from drpo_dspy.clients.embedded_models import GEMMA3_270M, check_installed

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


def _saved_options(run_dir: Path) -> dict[str, Any]:
    """The search settings recorded in a run directory, so ``--resume RUN_DIR`` needs no other flag."""
    path = run_dir / "config.json"
    if not path.is_file():
        raise ValueError(f"--resume {run_dir}: no config.json there (not a drpo run directory)")
    config = json.loads(path.read_text(encoding="utf-8"))
    search = config.get("search", {})
    options = {k: v for k, v in search.items()
               if k not in ("history_window", "paper_mode", "guards") and not (config.get("paper_mode")
                                                                                and k in _PAPER_SET)}
    if not config.get("paper_mode"):
        guards = search.get("guards") or {}
        options.update({k: guards[k] for k in GUARD_OPTIONS if k in guards})
        if guards.get("probe_queries"):
            options["resume_probe_queries"] = guards["probe_queries"]
    options["k"] = config.get("k", 2)
    options["resume_queries"] = config.get("queries")
    options["max_tokens"] = config.get("max_answer_tokens")
    options["answer_temperature"] = config.get("answer_temperature")
    options["paper_mode"] = config.get("paper_mode") or None
    options["max_errors"] = config.get("max_errors")
    options["initial_instructions"] = config.get("initial_instructions")
    for role, lm in config.get("roles", {}).items():
        options[f"{role}_model"] = lm.get("model")
        if lm.get("kwargs", {}).get("api_base"):
            options[f"{role}_api_base"] = lm["kwargs"]["api_base"]
        if role == "base":
            options["base_model_type"] = lm.get("model_type", "chat")
    return {k: v for k, v in options.items() if v is not None}


def _load_bank_json(path: Path):
    from drpo_dspy.retrievers.bank import AlignmentBank

    data = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(data, dict) and "examples" not in data and all(isinstance(v, str) for v in data.values()):
        return AlignmentBank.from_published_json(data)
    return AlignmentBank.load(path)


def _load_bank_json(path: Path):
    from drpo_dspy.retrievers.bank import AlignmentBank

    data = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(data, dict) and "examples" not in data and all(isinstance(v, str) for v in data.values()):
        return AlignmentBank.from_published_json(data)
    return AlignmentBank.load(path)
