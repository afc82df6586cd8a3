"""The ``drpo`` command line: optimize a prompt, answer with a compiled program."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

EMBEDDED = "embedded/smollm2-135m"
ROLES = ("base", "metrics", "judge", "optimizer")

# Small settings that finish in a few minutes on 2 CPU cores with the embedded model.
QUICK = {"beam_size": 2, "n_actions": 2, "depth": 3, "max_depth_increase": 1, "k": 1, "max_tokens": 160,
         "num_queries": 6}


def _add_role_flags(parser: argparse.ArgumentParser) -> None:
    for role in ROLES:
        parser.add_argument(f"--{role}-model", help=f"litellm model string for the {role} role (default: {EMBEDDED})")
        parser.add_argument(f"--{role}-api-base", help=f"API base URL for the {role} model (vLLM, Ollama, proxies)")
    parser.add_argument("--base-model-type", choices=["chat", "text"], default=None,
                        help="'text' for base (non-chat) models served by text completion")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="drpo", description="DRPO: tuning-free alignment by prompt optimization.")
    sub = parser.add_subparsers(dest="command", required=True)

    opt = sub.add_parser("optimize", help="search for an alignment system prompt (DRPO beam search)")
    opt.add_argument("--config", type=Path, help="JSON file with any of these options (flags override it)")
    _add_role_flags(opt)
    opt.add_argument("--trainset", type=Path, help="queries: .json list (strings or {query}), .jsonl or .txt")
    opt.add_argument("--num-queries", type=int, help="use only the first N training queries")
    opt.add_argument("--valset", type=Path, help="held-out queries: re-score the final beam on them and pick by that")
    opt.add_argument("--examples", type=Path, help="in-context example bank (.json/.jsonl, or the published "
                                                   "{query: answer} JSON); default: the built-in seed examples")
    for name, kind, helptext in (
        ("beam-size", int, "beams kept per level (2)"), ("n-actions", int, "rewrites per beam (3)"),
        ("depth", int, "initial search depth (20)"), ("max-depth-increase", int, "extra levels allowed (10)"),
        ("temperature", float, "optimizer temperature (0.2)"), ("skip-threshold", float, "skip above this mean (4.5)"),
        ("k", int, "in-context examples per query (2)"), ("num-threads", int, "concurrent LM calls (8)"),
        ("seed", int, "seed for sampled local calls (0)"), ("max-tokens", int, "cap on base-model answers"),
    ):
        opt.add_argument(f"--{name}", type=kind, help=helptext)
    opt.add_argument("--initial-instructions", help="starting system prompt")
    opt.add_argument("--log-dir", type=Path, help="run directory (default: runs/<timestamp>)")
    opt.add_argument("--quick", action="store_true", help="tiny settings for a demo run of a few minutes")
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

    from drpo_dspy.cli.evaluate import add_evaluate_parser
    from drpo_dspy.cli.import_official import add_import_official_parser
    from drpo_dspy.cli.optimize_icl import add_optimize_icl_parser
    from drpo_dspy.cli.show import add_show_parser

    add_evaluate_parser(sub)
    add_optimize_icl_parser(sub)
    add_import_official_parser(sub)
    add_show_parser(sub)

    resp = sub.add_parser("respond", help="answer a query with a compiled program")
    resp.add_argument("query")
    resp.add_argument("--program", type=Path, required=True, help="program.json written by drpo optimize")
    resp.add_argument("--model", default=None, help=f"model answering (default: {EMBEDDED})")
    resp.add_argument("--api-base")
    resp.add_argument("--model-type", choices=["chat", "text"], default="chat")
    resp.add_argument("--max-tokens", type=int)
    return parser


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
                    if v is not None and v is not False and k not in ("command", "config", "quick")})
    return options


# Output caps for the embedded model per role: enough for its typed outputs, short enough to stay fast on a CPU.
EMBEDDED_MAX_TOKENS = {"metrics": 256, "judge": 400, "optimizer": 400, "rewriter": 600}


def _make_lm(model: str | None, api_base: str | None = None, model_type: str | None = None, role: str = "base",
             **kwargs: Any):
    import dspy

    model = model or EMBEDDED
    if model.startswith("embedded/"):
        from drpo_dspy.clients.embedded import register_embedded_provider

        register_embedded_provider()
        kwargs.setdefault("engine", "litellm")
        kwargs.setdefault("temperature", 0.0)
        if role in EMBEDDED_MAX_TOKENS:
            kwargs.setdefault("max_tokens", EMBEDDED_MAX_TOKENS[role])
    if api_base:
        kwargs["api_base"] = api_base
    return dspy.LM(model, model_type=model_type or "chat", **kwargs)


def _load_queries(path: Path | None, limit: int | None) -> list[str]:
    from drpo_dspy.datasets import load_train_queries

    if path is None:
        queries = load_train_queries()
    else:
        from drpo_dspy.runs.query_files import read_queries

        queries = read_queries(path)
    return queries[:limit] if limit else queries


def _quiet_truncation_warnings() -> None:
    """Answers cut at their token cap are expected during a search; DSPy warns about each one."""
    import logging

    logging.getLogger("dspy.clients.lm").setLevel(logging.ERROR)


def cmd_optimize(args: argparse.Namespace) -> int:
    import dspy

    _quiet_truncation_warnings()
    from drpo_dspy import DRPO, AlignedResponder

    o = _options(args)
    known = {"trainset", "num_queries", "examples", "log_dir", "max_tokens", "demo_query", "no_progress",
             "base_model_type", "beam_size", "n_actions", "depth", "max_depth_increase", "temperature",
             "skip_threshold", "k", "num_threads", "seed", "initial_instructions", "paper_faithful_failures",
             "proposal_sampling", "max_calls", "max_total_tokens", "max_cost_usd", "dry_run", "resume",
             "resume_queries", "valset"}
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
    lms = {r: _make_lm(o.get(f"{r}_model"), o.get(f"{r}_api_base"),
                       o.get("base_model_type") if r == "base" else None, role=r) for r in ROLES}
    if o.get("examples"):
        from drpo_dspy.retrievers.bank import AlignmentBank

        path = Path(o["examples"])
        examples = AlignmentBank.load(path) if path.suffix == ".jsonl" else _load_bank_json(path)
    else:
        examples = None
    k = o.get("k", 2)
    student = AlignedResponder(examples=examples, k=k, max_tokens=o.get("max_tokens"))
    log_dir = Path(resume or o.get("log_dir") or Path("runs") / time.strftime("%Y%m%d-%H%M%S"))
    search = {key: o[key] for key in ("beam_size", "n_actions", "depth", "max_depth_increase", "temperature",
                                      "skip_threshold", "num_threads", "seed", "initial_instructions",
                                      "paper_faithful_failures", "proposal_sampling", "max_calls",
                                      "max_cost_usd") if key in o}
    if "max_total_tokens" in o:
        search["max_tokens"] = o["max_total_tokens"]
    drpo = DRPO(base_lm=lms["base"], metrics_lm=lms["metrics"], judge_lm=lms["judge"], optimizer_lm=lms["optimizer"],
                k=k, log_dir=log_dir, progress=not o.get("no_progress"), **search)
    if o.get("dry_run"):
        from drpo_dspy.teleprompt.estimate import render

        print(render(drpo.estimate(queries, student)))
        return 0
    demo = o.get("demo_query") or "I have a job interview tomorrow and I'm nervous. How should I prepare tonight?"
    print(f"DRPO: {len(queries)} training queries, base model {lms['base'].model}, run directory {log_dir}")
    with dspy.context(lm=lms["base"]):
        valset = _load_queries(Path(o["valset"]), None) if o.get("valset") else None
        aligned = drpo.compile(student, trainset=queries, valset=valset, resume=resume is not None)
        before = student(query=demo).response  # after compile(), which validates everything before any call
        after = aligned(query=demo).response
    result = aligned.drpo_result
    rule = "-" * 72
    print(f"\n{rule}\nPrompt before:\n{student.instructions}\n{rule}\nPrompt after "
          f"(mean reward along its path: {_fmt(result.best_path_mean)}, {result.levels} levels):\n"
          f"{aligned.instructions}\n{rule}\nDemo query: {demo}\n{rule}\nAnswer before:\n{before}\n{rule}\n"
          f"Answer after:\n{after}\n{rule}")
    print("LM calls per role: " + ", ".join(f"{r}={u['lm_calls']}" for r, u in result.usage.items()))
    print(f"Run directory: {log_dir}  (program: {Path(log_dir) / 'program.json'}, wall time {result.wall_time_s:.0f}s)")
    if result.stopped:
        print(f"Stopped early: {result.stopped}")
    return 0


def _saved_options(run_dir: Path) -> dict[str, Any]:
    """The search settings recorded in a run directory, so ``--resume RUN_DIR`` needs no other flag."""
    path = run_dir / "config.json"
    if not path.is_file():
        raise ValueError(f"--resume {run_dir}: no config.json there (not a drpo run directory)")
    config = json.loads(path.read_text(encoding="utf-8"))
    options = {k: v for k, v in config.get("search", {}).items() if k != "history_window"}
    options["k"] = config.get("k", 2)
    options["resume_queries"] = config.get("queries")
    options["max_tokens"] = config.get("max_answer_tokens")
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


def cmd_respond(args: argparse.Namespace) -> int:
    from drpo_dspy import AlignedResponder

    if not args.program.is_file():
        raise SystemExit(f"drpo: program file {args.program} does not exist")
    program = AlignedResponder(examples=[], k=0, max_tokens=args.max_tokens)
    program.load(str(args.program))
    lm = _make_lm(args.model, args.api_base, args.model_type)
    print(program(query=args.query, lm=lm).response)
    return 0


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def main(argv: list[str] | None = None) -> int:
    from drpo_dspy.cli.evaluate import run_evaluate
    from drpo_dspy.cli.import_official import run_import_official
    from drpo_dspy.cli.optimize_icl import run_optimize_icl
    from drpo_dspy.cli.show import run_show
    from drpo_dspy.runs.secrets import redacted_message

    args = build_parser().parse_args(argv)
    commands = {"optimize": cmd_optimize, "respond": cmd_respond, "evaluate": run_evaluate,
                "optimize-icl": run_optimize_icl, "import-official": run_import_official, "show": run_show}
    try:
        return commands[args.command](args)
    except (ValueError, FileNotFoundError, ImportError) as exc:
        print(f"drpo: error: {redacted_message(exc).split(': ', 1)[-1]}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("drpo: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # an LM or provider failure: never print a credential it may echo
        print(f"drpo: error: {redacted_message(exc)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
