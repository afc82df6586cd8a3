"""Running an evaluation: every system answers every prompt, the judge scores every answer, in parallel.

Every finished (system, prompt) pair is appended to ``records.jsonl`` in the output directory as soon as it is
judged (:mod:`drpo_dspy.evaluation.records`); a later run with the same output directory skips the finished pairs,
re-judges the answers whose judgment failed with an LM error, and retries the answers a system failed to give.

An empty (whitespace-only) answer is a failure, ``empty_answer``: not sent to the judge, saved, counted in its own
column and, as a judge parse failure, never a score (left out of means, pairwise and refusal rates; IFEval counts
it as following nothing). Answers are checked for 40+ characters copied verbatim from the examples they were shown
(:mod:`drpo_dspy.adapters.answer_checks`). Failing roles follow the compile's policy (``clients.failures``): a
systemic error stops the run with ``SystemicFailure``, transient ones past ``max_errors``, and a role that failed
every call it made stops it at the end instead of yielding a report of n/a; finished records stay for a resume.
"""

from __future__ import annotations

import contextvars
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from drpo_dspy.adapters.answer_checks import ShownExamples, copy_check, is_empty
from drpo_dspy.clients.budget import Budget, BudgetExhausted, StopSignal
from drpo_dspy.clients.failures import DEFAULT_MAX_ERRORS, FailurePolicy, SystemicFailure
from drpo_dspy.clients.metering import Meter
from drpo_dspy.evaluation.benchmarks.loaders import MTBENCH
from drpo_dspy.evaluation.benchmarks.mtbench import MTBenchJudge
from drpo_dspy.evaluation.benchmarks.scoring import (
    JUDGE_OPTIONAL,
    answer_turns,
    check_scorers,
    is_benchmark_item,
    judge_free_scores,
    judge_scope,
    rate_turns,
    sets_needing_judge,
)
from drpo_dspy.evaluation.judging import AnswerJudge, EvalJudgment, aspects_scope, judge_version
from drpo_dspy.evaluation.records import (
    EMPTY_ANSWER,
    FINISHED_FAILURES,
    RECORDS_FILE,
    RecordStore,
    answer_check_fields,
    answer_checks_summary,
    record_key,
    redact_values,
)
from drpo_dspy.evaluation.result import EvaluationResult
from drpo_dspy.evaluation.stats import count_tokens, summarize
from drpo_dspy.evaluation.systems import System, as_systems
from drpo_dspy.primitives.checks import is_whole
from drpo_dspy.runs.secrets import Redactor, describe_lm

logger = logging.getLogger(__name__)



class EvaluationInputError(ValueError):
    """Bad evaluation input, detected before any LM call."""


def prepare_eval_set(records: Any, *, limit: int | None = None, source: str = "evaluation set") -> list[dict]:
    """Validate prompts (each a dict with a non-empty ``instruction``, or a plain string) and apply ``limit``.

    Exact duplicates (same instruction in the same set) are dropped. Items keep ``set`` and ``category``;
    prompts without a ``set`` are labelled ``custom``.
    """
    if limit is not None and (not is_whole(limit) or limit < 1):
        raise EvaluationInputError(f"limit must be a positive integer, got {limit!r}")
    if not isinstance(records, list | tuple) or not records:
        raise EvaluationInputError(f"the {source} is empty: nothing to evaluate")
    items: list[dict] = []
    seen: set[tuple[str, str]] = set()
    for i, record in enumerate(records, start=1):
        if isinstance(record, str):
            record = {"instruction": record}
        if not isinstance(record, dict):
            raise EvaluationInputError(f"{source}: item {i} is {type(record).__name__}, expected an object")
        instruction = record.get("instruction")
        if not isinstance(instruction, str) or not instruction.strip():
            raise EvaluationInputError(f"{source}: item {i} has no non-empty string 'instruction' field")
        item = {**record, "set": str(record.get("set") or "custom"), "category": str(record.get("category") or "")}
        if (item["set"], instruction) in seen:
            continue
        seen.add((item["set"], instruction))
        items.append(item)
    return items[:limit] if limit else items


def resolve_eval_set(spec: str | os.PathLike[str], *, limit: int | None = None, sample: int | None = None,
                     seed: int = 0) -> tuple[list[dict], str]:
    """Load prompts by name, from a file, or from a Hugging Face dataset.

    Names (comma-separated lists allowed): our sets ``regular``, ``harmful``, ``benign_risky`` and ``ours`` (the
    three); the bundled public benchmarks ``xstest``, ``ifeval``, ``harmbench``, ``mtbench`` and ``benchmarks`` (the
    four); ``all`` (everything). ``limit`` (the first N) and ``sample`` (a stratified sample of N, by category,
    seeded with ``seed``) apply to each named set, so every set of a group is measured. A path is read in a
    benchmark's own format when its columns match one (XSTest or HarmBench CSV, IFEval or MT-Bench JSONL), else as
    JSONL with an ``instruction`` per line (just-eval-instruct shape); ``hf:OWNER/NAME[:SPLIT]`` loads a Hugging Face
    dataset in a benchmark's format (needs network). Returns ``(prompts, label)``.
    """
    from drpo_dspy.datasets import load_instruction_jsonl
    from drpo_dspy.evaluation.benchmarks.eval_sets import cut, resolve_names, set_names
    from drpo_dspy.evaluation.benchmarks.loaders import BenchmarkFormatError

    for name, value in (("limit", limit), ("sample", sample)):
        if value is not None and (not is_whole(value) or value < 1):
            raise EvaluationInputError(f"{name} must be a positive integer, got {value!r}")
    text = os.fspath(spec)
    try:
        resolved = resolve_names(text, limit=limit, sample=sample, seed=seed)
    except BenchmarkFormatError as exc:
        raise EvaluationInputError(str(exc)) from exc
    if resolved is not None:
        return resolved
    path = Path(text).expanduser()
    if path.suffix.lower() in (".jsonl", ".json", ".csv") or path.exists():
        if not path.is_file():
            raise FileNotFoundError(f"evaluation file not found: {path}")
        return cut(load_instruction_jsonl(path), limit=limit, sample=sample, seed=seed), path.name
    raise EvaluationInputError(f"unknown evaluation set {text!r}: use one of {', '.join(set_names())} (or a "
                               "comma-separated list), a path to a benchmark file or a .jsonl file with an "
                               "'instruction' field per line, or hf:OWNER/NAME")


def ensure_writable_dir(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` if needed and check that files can be written in it."""
    out = Path(path).expanduser()
    if out.exists() and not out.is_dir():
        raise EvaluationInputError(f"output path {out} exists and is not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}-{threading.get_ident()}"
        probe.write_text("ok", encoding="utf-8")
        probe.unlink()
    except OSError as exc:
        raise EvaluationInputError(f"output directory {out} is not writable: {exc.strerror or exc}") from exc
    return out


def _row(system: System, item: dict, record: dict[str, Any]) -> dict[str, Any]:
    row = {"system": system.name, "instruction": item["instruction"], "set": item["set"],
           "category": item["category"], **{k: record.get(k) for k in (
               "key", "answer", "answer_length", "scores", "rationales", "refusal", "failure", "error", "aspects")}}
    row.update(answer_check_fields(record))  # empty answers as failures, even in old records; the copy found
    if is_benchmark_item(item):
        bench = dict(record.get("bench") or {})
        if record.get("answer") is not None:  # judge-free scores are recomputed: cheap, and a scorer fix applies
            bench.update(judge_free_scores(item, record["answer"]))
            if item["set"] in JUDGE_OPTIONAL:
                bench["judged_refusal"] = row["refusal"]
        row.update({"bench": bench, "meta": item["meta"]})
    return row


def check_roles_worked(policy: FailurePolicy) -> None:
    """Raise ``SystemicFailure`` for a role (base, judge) that failed every call it made in this run (each error
    maybe transient, all under ``max_errors``): a report on no answer or no judgment is n/a, not a result."""
    for role in ("base", "judge"):
        errors, successes = policy.errors[role], policy.successes[role]
        if errors and not successes:
            first = getattr(policy, "_first", {}).get(role, "(none recorded)")
            failure = SystemicFailure(role, policy.models.get(role, "unknown model"), "too many errors", first, errors)
            logger.error("evaluation stopped: %s", failure)
            raise failure


def evaluate(
    systems: Any,
    eval_set: Any,
    *,
    judge_lm: Any,
    base_lm: Any = None,
    out_dir: str | os.PathLike[str] | None = None,
    num_threads: int = 4,
    limit: int | None = None,
    meter: Meter | None = None,
    progress: Callable[[int, int], None] | None = None,
    write_report: bool = True,
    eval_set_name: str = "custom",
    max_calls: int | None = None,
    max_total_tokens: int | None = None,
    max_cost_usd: float | None = None,
    max_errors: int | None = DEFAULT_MAX_ERRORS,
    stop_file: str | os.PathLike[str] | None = None,
) -> EvaluationResult:
    """Answer every prompt with every system, judge every answer, summarise, and (with ``out_dir``) write reports.

    Args:
        systems: ``System`` objects, spec strings (``"base"``, ``"urial"``, ``"program:PATH"``), ``(name, module)``
            pairs, or a ``{name: module}`` dict; modules take ``query=`` and return ``.response``.
        eval_set: Prompts: dicts with an ``instruction`` (and optional ``set``, ``category``) or strings; benchmark
            prompts from :func:`resolve_eval_set` also carry ``meta`` and are scored by their benchmark's rules.
        judge_lm: The judge's ``dspy.LM`` (any litellm model); ``None`` when every prompt has a judge-free score
            (IFEval; XSTest and HarmBench then get only their string-match refusal).
        base_lm: The LM the systems answer with, unless a ``System`` brings its own.
        out_dir: Where ``records.jsonl`` (resume state) and the reports go; ``None`` keeps everything in memory.
        num_threads: Concurrent (system, prompt) pairs.
        limit: Evaluate only the first ``limit`` prompts.
        meter: Counts calls and tokens per role (``base``, ``judge``).
        progress: Called as ``progress(done, total)`` after each finished pair.
        write_report: Write JSON, CSV, Markdown, PNG charts and the HTML report into ``out_dir``.
        eval_set_name: Label of the evaluation set in the report.
        max_calls, max_total_tokens, max_cost_usd: Budgets over every answer and judgment, reserved before each
            call; when one would be exceeded no new pair starts, the finished ones are saved (resume later) and
            ``result.stopped`` says why. ``stop_file``: a path whose existence does the same.
        max_errors: LM errors a role may have before the evaluation stops with ``SystemicFailure``; a systemic
            error (bad key, unknown model) stops it at once.
    """
    # Everything that can be wrong with the input is checked here, before the first LM call.
    items = prepare_eval_set(eval_set, limit=limit)
    systems = as_systems(systems, base_lm=base_lm)
    if judge_lm is None and sets_needing_judge(items):
        raise EvaluationInputError(f"judge_lm is required for {', '.join(sets_needing_judge(items))}: only IFEval, "
                                   "XSTest and HarmBench can be scored without a judge")
    if not is_whole(num_threads) or num_threads < 1:
        raise EvaluationInputError(f"num_threads must be a positive integer, got {num_threads!r}")
    check_scorers(items)
    out = ensure_writable_dir(out_dir) if out_dir is not None else None
    meter = meter or Meter(FailurePolicy(max_errors))
    budget = Budget(meter, max_calls=max_calls, max_total_tokens=max_total_tokens, max_cost_usd=max_cost_usd,
                    stop=StopSignal(Path(stop_file)) if stop_file is not None else None)
    lms = [lm for lm in (judge_lm, *(s.lm for s in systems)) if lm is not None]
    redactor = Redactor(lms)
    meter.policy.set_redactor(redactor.text)
    store = RecordStore(out / RECORDS_FILE, redactor) if out is not None else None
    judge_id = None if judge_lm is None else f"{getattr(judge_lm, 'model', judge_lm)}|judge-{judge_version()}"
    watched_judge = meter.watch(judge_lm, "judge") if hasattr(judge_lm, "copy") else judge_lm
    judge = None if judge_lm is None else AnswerJudge(watched_judge, meter=meter)
    mt_judge = None if judge_lm is None else MTBenchJudge(watched_judge, meter=meter)

    def key_of(system: System, item: dict) -> str:
        scope = judge_scope(item, judge_id) if is_benchmark_item(item) else judge_id
        return record_key(system.identity, item["instruction"], f"{scope}{aspects_scope(item)}")
    watched = {id(s.lm): meter.watch(s.lm, "base") for s in systems if hasattr(s.lm, "copy")}
    recorders: dict[int, ShownExamples] = {}
    answer_systems = {s.name: (System(s.name, recorders.setdefault(id(s.module), ShownExamples(s.module)),
                                      watched.get(id(s.lm), s.lm), s.fingerprint, s.instructions, s.details))
                      for s in systems}

    records: dict[str, dict[str, Any]] = {}
    todo: list[tuple[System, dict, str, dict[str, Any] | None]] = []
    scheduled: set[str] = set()
    reused = 0
    for system in systems:
        for item in items:
            key = key_of(system, item)
            saved = store.get(key) if store is not None else None
            if saved is not None and saved.get("failure") in FINISHED_FAILURES:
                records[key] = saved
                reused += 1
            elif key not in scheduled:  # new, or answered earlier with its judgment still pending
                scheduled.add(key)
                todo.append((answer_systems[system.name], item, key, saved))
    total, done = len(todo), 0
    lock = threading.Lock()

    def answer(system: System, item: dict, benchmark: bool, turns: int) -> tuple[list[str], dict[str, Any]]:
        """The system's answers (one per turn) and the copy-check fields; raises what the system raised."""
        with budget.spend(system.lm, requests=turns, prompt_chars=len(item["instruction"]) + 4000), \
                meter.usage("base"):
            system.module.take()  # forget what an interrupted call of this thread left
            answers = answer_turns(system, item) if benchmark else [system.answer(item["instruction"])]
            shown = system.module.take()
        meter.record_success("base")
        if is_empty(answers[0]):
            meter.record_failure("base", EMPTY_ANSWER)
        return answers, copy_check(item["instruction"], answers, shown)

    def work(system: System, item: dict, key: str, pending: dict[str, Any] | None) -> dict[str, Any] | None:
        record: dict[str, Any] = {"key": key, "system": system.name, "system_identity": system.identity,
                                  "instruction": item["instruction"], "judge": judge_id}
        benchmark = is_benchmark_item(item)
        started = time.perf_counter()
        turns = len((item.get("meta") or {}).get("turns") or [1]) if benchmark else 1
        if pending is not None:  # answered by an earlier run whose judgment failed: only the judge is asked again
            answers = list((pending.get("bench") or {}).get("answers") or [pending.get("answer") or ""])
            checks = {k: pending[k] for k in ("examples", "copied") if k in pending}
        else:
            try:
                answers, checks = answer(system, item, benchmark, turns)
            except BudgetExhausted:
                return None  # not started: left for a later run
            except SystemicFailure:
                raise  # the run stops (refused before the call): not an error of this pair
            except Exception as exc:
                message = redactor.text(f"{type(exc).__name__}: {exc}")
                logger.warning("system %s failed on %.60r: %s", system.name, item["instruction"], message)
                meter.record_error("base", exc, f"error:{type(exc).__name__}")  # a systemic error stops the run
                return {**record, "error": message, "answer": None, "answer_length": None,
                        **EvalJudgment(failure="no_answer").to_dict()}
        answer_text = answers[0]
        answered = time.perf_counter()
        empty = is_empty(answer_text)
        judged = judge is not None and (not benchmark or item["set"] in JUDGE_OPTIONAL) and not empty
        rated = benchmark and item["set"] == MTBENCH and mt_judge is not None
        requests = 2 * (int(judged) + (turns if rated else 0))  # a chat reply may be retried in JSON mode
        record.update({"answer": answer_text, "answer_length": count_tokens(answer_text), "error": None,
                       "answer_seconds": pending.get("answer_seconds") if pending else round(answered - started, 3),
                       **checks})
        try:
            with budget.spend(judge_lm, requests=requests, prompt_chars=len(item["instruction"])
                              + 3 * len(answer_text) + 3000) if requests else nullcontext():
                # An empty answer is not an answer: it is not sent to the judge (see the module docstring).
                judgment = judge(item["instruction"], answer_text, item.get("aspects")) if judged else EvalJudgment(
                    failure=EMPTY_ANSWER if empty else None)
                ratings = rate_turns(mt_judge, item, answers) if rated else None
        except BudgetExhausted:
            if store is not None and pending is None:  # keep the answer: the next run only asks the judge
                store.add({**record, **EvalJudgment(failure="not_judged").to_dict(), "created": time.time(),
                           **({"bench": {"answers": answers}} if benchmark else {})})
            return None
        if judged and not (judgment.failure or "").startswith("lm_error:"):
            meter.record_success("judge")
        bench: dict[str, Any] = {}
        if rated:
            bench = {"answers": answers, "turns": ratings}
            if any(t["failure"] in (None, "parse_failure") for t in ratings):
                meter.record_success("judge")
            lm_failures = [t["failure"] for t in bench["turns"] if t["failure"] not in FINISHED_FAILURES]
            if lm_failures:  # an LM error on a turn: saved as pending, so the next run asks the judge again
                judgment.failure = lm_failures[0]
        record.update({**judgment.to_dict(), "judge_seconds": round(time.perf_counter() - answered, 3),
                       "created": time.time()})
        if benchmark:
            record["bench"] = bench
        if store is not None:
            record = store.add(record)
        return record

    if todo:
        pool = ThreadPoolExecutor(max_workers=min(num_threads, len(todo)), thread_name_prefix="drpo-eval")
        try:
            futures = [pool.submit(contextvars.copy_context().run, work, *task) for task in todo]
            for future in as_completed(futures):
                record = future.result()
                if record is None:  # refused by a budget or a stop request before its call
                    continue
                with lock:
                    records[record["key"]] = record
                    done += 1
                if progress is not None:
                    progress(done, total)
        except BaseException as exc:
            # Interrupted (Ctrl-C) or failed: start nothing new, let the pairs already in flight finish and be saved
            # (a second Ctrl-C stops waiting), then re-raise.
            what = "stopped" if isinstance(exc, SystemicFailure) else "interrupted"
            logger.warning("evaluation %s: waiting for the answers in flight; finished ones are saved", what)
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
    check_roles_worked(meter.policy)

    rows = [_row(s, item, records[key_of(s, item)]) for s in systems for item in items
            if key_of(s, item) in records]
    summary = summarize(rows, [s.name for s in systems])
    answer_checks_summary(rows, summary["per_system"])
    if any("bench" in r for r in rows):
        from drpo_dspy.evaluation.benchmarks.summary import summarize_benchmarks

        summary["benchmarks"] = summarize_benchmarks(rows, [s.name for s in systems])
    settings = redact_values(redactor, {
        "eval_set": eval_set_name,
        "n_prompts": len(items),
        "judge": ({"model": "none (judge-free scores only)"} if judge_lm is None
                  else {**describe_lm(judge_lm), "prompt_version": judge_version()}),
        "systems": [{"name": s.name, "identity": s.identity, "lm": describe_lm(s.lm), **s.details}
                    for s in systems],
        "num_threads": num_threads,
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "budgets": budget.limits, "stopped": budget.exhausted,
    })
    if budget.exhausted:
        logger.warning("evaluation stopped early: %s; %d of %d pairs done (run again with the same out_dir to "
                       "finish)", budget.exhausted, len(rows), len(systems) * len(items))
    result = EvaluationResult(rows, summary, settings, out, meter.summary(), reused, done, stopped=budget.exhausted)
    if out is not None and write_report:
        from drpo_dspy.evaluation.report import write_reports

        write_reports(result, out, redactor)
    return result
