"""The options of ``drpo optimize``: its flags (checked by argparse, before anything heavy is imported), the
``--config`` file (checked the same way), and the settings a run directory recorded (for ``--resume``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from drpo_dspy.cli.common import ROLES, UsageError, add_command, float_in, int_at_least, positive_int
from drpo_dspy.teleprompt.settings import AUTO, setting_fields

# One loader reads --examples for every command (retrievers/bank_loading.py); one help text says what it accepts.
EXAMPLES_HELP = ("in-context examples: a .json list or .jsonl of {query, answer} records, a saved bank, or the "
                 "published {query: answer} JSON (default: the built-in seed examples)")

# Small settings that finish in a few minutes on 2 CPU cores with the embedded model.
QUICK = {"beam_size": 2, "n_actions": 2, "depth": 3, "max_depth_increase": 1, "k": 1, "max_tokens": 160,
         "num_queries": 6}
_PAPER_SET = ("paper_faithful_failures", "rewrite_filter")  # implied by paper mode, not passed again on resume
GROUP_TITLES = {"search": "search (defaults: the published configuration)",
                "guards": "guards against judge gaming (all off with --paper-mode)",
                "decoding": "the base model's answers", "budgets": "budgets and errors"}


def _flag_of(f: Any) -> str | None:
    flag = f.metadata.get("flag", AUTO)
    if flag == AUTO:
        flag = f"--no-{f.name}" if f.default is True else f"--{f.name}"
        flag = flag.replace("_", "-")
    return flag


def _check_of(f: Any) -> Any:
    """The argparse ``type=`` of a numeric setting (None for switches, choices and text)."""
    meta = f.metadata
    if meta.get("choices") or isinstance(f.default, bool):
        return None
    if meta.get("above") is not None:
        return float_in(meta["above"], low_open=True)
    if meta.get("maximum") is not None:
        return float_in(meta["minimum"], meta["maximum"])
    if meta.get("minimum") is not None:
        return int_at_least(meta["minimum"])
    return None


# Every setting that has a flag: (group, field, flag, dest). The dest is the field's name, except where the flag
# says otherwise (--max-tokens for answer_max_tokens); a --no-x switch sets x to False.
CLI_SETTINGS = [(("search" if group == "run" else group), f, flag,
                 f.name if f.default is True else flag[2:].replace("-", "_"))
                for group, f in setting_fields() if (flag := _flag_of(f)) is not None]
SETTING_OF_DEST = {dest: f.name for _, f, _, dest in CLI_SETTINGS}
ZERO_MEANS_NONE = {f.name for _, f, _, _ in CLI_SETTINGS if f.metadata.get("zero_means_none")}
SWITCHED_OFF = {dest for _, f, _, dest in CLI_SETTINGS if f.default is True}  # --no-x flags: False is a choice
GUARD_OPTIONS = tuple(f.name for group, f in setting_fields() if group == "guards")
CHECKS = {dest: check for _, f, _, dest in CLI_SETTINGS if (check := _check_of(f)) is not None}
CHECKS["num_queries"] = positive_int
KNOWN = {"trainset", "num_queries", "examples", "log_dir", "demo_query", "no_progress", "no_check",
         "base_model_type", "dry_run", "resume", "resume_queries", "valset", "probe_queries", "resume_probe_queries",
         *SETTING_OF_DEST, *(f"{r}_model" for r in ROLES), *(f"{r}_api_base" for r in ROLES),
         *(f"{r}_router" for r in ROLES)}

DESCRIPTION = """\
Search for an alignment system prompt with DRPO's beam search: the optimizer rewrites the prompt, the base model
answers one training query per level under each candidate, the metrics model picks the aspects that matter for
that query and the judge scores the answer on them; the best prompts by mean reward along their path survive.
Every role is any litellm model string; the default is the embedded local model (no key, no network).

The run directory (--log-dir, default runs/<timestamp>) holds the configuration, the log, the trace, a checkpoint
after every level and program.json. Ctrl-C stops at once (exit 130) and says how to resume; a STOP file created in
the run directory (touch RUN_DIR/STOP) stops after the calls in flight, as a budget does (exit 0)."""
EXAMPLES = """\
  drpo optimize --quick                                  # demo: a few minutes on the embedded models
  drpo optimize --base-model hosted_vllm/mistralai/Mistral-7B-v0.1 --base-api-base http://localhost:8000/v1 \\
      --base-model-type text --judge-model openai/gpt-4o --metrics-model openai/gpt-4o \\
      --optimizer-model openai/gpt-4o --max-cost-usd 5 --log-dir runs/mistral
  drpo optimize --dry-run --judge-model openai/gpt-4o    # calls, tokens and dollars per role; calls nothing
  drpo optimize --resume runs/mistral                    # continue an interrupted or stopped run"""


def _add_role_flags(parser: argparse.ArgumentParser) -> None:
    roles = parser.add_argument_group("models (any litellm model string; default: the embedded model)")
    for role in ROLES:
        roles.add_argument(f"--{role}-model", metavar="MODEL", help=f"the {role} role's model")
        roles.add_argument(f"--{role}-api-base", metavar="URL",
                           help=f"API base URL for the {role} model (vLLM, Ollama, proxies); URL1,URL2,...: a pool "
                                "of servers of the same model (docs/scale-out.md)")
        roles.add_argument(f"--{role}-router", metavar="FILE",
                           help=f"a litellm Router configuration (YAML/JSON: model_list, routing_strategy) serving "
                                f"the {role} role from a pool of deployments")
    roles.add_argument("--base-model-type", choices=["chat", "text"], default=None,
                       help="'text' for base (non-chat) models served by text completion")


def _add_setting_flags(parser: argparse.ArgumentParser) -> None:
    """A flag for every DRPO setting that has one, in its group, with its bounds and default (settings.py)."""
    groups = {name: parser.add_argument_group(title) for name, title in GROUP_TITLES.items()}
    for group, f, flag, dest in CLI_SETTINGS:
        meta = f.metadata
        shown = meta.get("shown")
        if isinstance(f.default, bool):
            groups[group].add_argument(flag, dest=dest, action="store_false" if f.default else "store_true",
                                       default=None if f.default else False, help=meta["help"])
            continue
        default = shown if shown is not None else f.default
        helptext = f"{meta['help']} ({default})" if default not in ("", None) else meta["help"]
        check = _check_of(f)
        metavar = None if meta.get("choices") else "PATH" if f.name == "stop_file" else "TEXT" if check is None \
            else "N" if meta.get("maximum") is None and meta.get("above") is None else "X"
        groups[group].add_argument(flag, dest=dest, type=check, choices=meta.get("choices"), metavar=metavar,
                                   help=helptext)
    groups["guards"].add_argument("--probe-queries", type=Path, help="your own probes (.json, .jsonl or .txt)")


def add_optimize_arguments(subparsers: Any) -> argparse.ArgumentParser:
    """The ``optimize`` sub-command's parser (its handler is set by :mod:`drpo_dspy.cli.optimize`)."""
    opt = add_command(subparsers, "optimize", help="search for an alignment system prompt (DRPO beam search)",
                      description=DESCRIPTION, examples=EXAMPLES, usage="drpo optimize [options]")
    opt.add_argument("--config", type=Path, help="JSON file with any of these options (flags override it)")
    _add_role_flags(opt)
    opt.add_argument("--trainset", type=Path, help="queries: .json list or .jsonl (strings, {query}, or conversations "
                     "{messages: [...]} / {query, history}), or .txt")
    opt.add_argument("--num-queries", type=positive_int, help="use only the first N training queries")
    opt.add_argument("--valset", type=Path, help="held-out queries: re-score the final beam on them and pick by that")
    opt.add_argument("--examples", type=Path, help=EXAMPLES_HELP)
    opt.add_argument("--log-dir", type=Path, help="run directory (default: runs/<timestamp>)")
    opt.add_argument("--quick", action="store_true",
                     help="tiny settings for a demo run of a few minutes: aligns Gemma-3-270M base (when installed: "
                          "the [gemma] extra) with the embedded SmolLM2 as helpers, then checks before vs after on "
                          "20 IFEval prompts, judge-free")
    opt.add_argument("--no-check", action="store_true", help="skip --quick's judge-free before/after check")
    opt.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    _add_setting_flags(opt)
    opt.add_argument("--dry-run", action="store_true", help="estimate calls, tokens and dollars per role; call nothing")
    opt.add_argument("--resume", type=Path, metavar="RUN_DIR",
                     help="continue the run recorded in RUN_DIR (its settings and queries; no other flag needed)")
    opt.add_argument("--demo-query", help="query answered before and after optimization (default: a built-in one)")
    return opt


def gather_options(args: argparse.Namespace) -> dict[str, Any]:
    """The run's options: --quick's settings, then the --config file (checked like the flags), then the flags."""
    options: dict[str, Any] = {}
    if args.quick:
        options.update(QUICK)
    if args.config:
        options.update(read_config(args.config))
    options.update({k: v for k, v in vars(args).items() if v is not None and (v is not False or k in SWITCHED_OFF)
                    and k not in ("command", "config", "quick", "handler", "func", "verbose", "resume_hint")})
    return options


def read_config(path: Path) -> dict[str, Any]:
    """A ``--config`` file's options, with unknown names and bad numbers refused (``UsageError``, exit 2)."""
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"cannot read --config {path}: {exc}") from exc
    if not isinstance(loaded, dict):
        raise UsageError(f"--config {path} must hold a JSON object")
    options = {k.replace("-", "_"): v for k, v in loaded.items()}
    unknown = sorted(set(options) - KNOWN)
    if unknown:
        raise UsageError(f"unknown option(s) in --config {path}: {', '.join(unknown)}")
    for name, value in options.items():
        if name in CHECKS and value is not None:
            try:
                options[name] = CHECKS[name](value)
            except argparse.ArgumentTypeError as exc:
                raise UsageError(f"--config {path}: {name} {exc}") from None
    return options


def saved_options(run_dir: Path) -> dict[str, Any]:
    """The search settings recorded in a run directory, so ``--resume RUN_DIR`` needs no other flag."""
    path = run_dir / "config.json"
    if not path.is_file():
        raise UsageError(f"--resume {run_dir}: no config.json there (not a drpo run directory)")
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
        pool = lm.get("pool")
        if pool:  # a replica pool: its model, and its router file or its servers' addresses
            options[f"{role}_model"] = pool.get("model")
            if pool.get("router_file"):
                options[f"{role}_router"] = pool["router_file"]
            else:
                options[f"{role}_api_base"] = ",".join(r["api_base"] for r in pool.get("replicas", [])
                                                       if r.get("api_base"))
            if role == "base":
                options["base_model_type"] = pool.get("model_type", "chat")
    return {k: v for k, v in options.items() if v is not None}
