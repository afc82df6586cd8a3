"""Public benchmarks as evaluation prompts: the bundled copies, a user's file in the same format, or a Hugging Face id.

Every prompt is a dict with ``instruction`` (what the system is asked), ``set`` (the benchmark's name, which picks
its scorer), ``category`` (XSTest type, first IFEval instruction id, HarmBench semantic category, MT-Bench category,
just-eval source dataset) and ``meta`` (the benchmark's own fields that its scorer needs). just-eval prompts also
carry ``aspects``, the fixed aspects their judge scores. just-eval-instruct is not bundled (some of its prompts are
under non-commercial licences): it is read from a user's file or the hub (:mod:`.just_eval`).
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Any

from drpo_dspy.evaluation.benchmarks import just_eval
from drpo_dspy.evaluation.benchmarks.just_eval import JUST_EVAL

XSTEST, IFEVAL, HARMBENCH, MTBENCH = "xstest", "ifeval", "harmbench", "mtbench"
BENCHMARKS = (XSTEST, IFEVAL, HARMBENCH, MTBENCH)
DATA_FILES = {
    XSTEST: "xstest/xstest_prompts.csv",
    IFEVAL: "ifeval/input_data.jsonl",
    HARMBENCH: "harmbench/harmbench_behaviors_text_standard_copyright.csv",
    MTBENCH: "mtbench/question.jsonl",
}
LICENSE_FILES = (*(f"{name}/LICENSE" for name in BENCHMARKS), "NOTICE")
# HarmBench's copyright rows are scored upstream by hashing against the copyrighted texts, which are not public;
# a refusal judge does not measure them, so the bundled set is the standard behaviours unless asked otherwise.
HARMBENCH_DEFAULT_CATEGORIES = ("standard",)
HF_PREFIX = "hf:"
LABEL_FIELDS = {XSTEST: "label", JUST_EVAL: just_eval.LABEL_FIELD}
"""The ``meta`` field of each benchmark whose values a stratified sample keeps in proportion before its categories
(XSTest's safe/unsafe: over-refusal is measured on the safe prompts only; just-eval's regular/safety)."""


def stratification_label(item: dict[str, Any]) -> str | None:
    """The first-level stratum of a prompt: its benchmark's label field (None when its benchmark declares none)."""
    field = LABEL_FIELDS.get(item.get("set"))  # type: ignore[arg-type]
    meta = item.get("meta")
    if field is None or not isinstance(meta, dict):
        return None
    return str(meta.get(field, ""))


class BenchmarkFormatError(ValueError):
    """A file or dataset whose rows do not match any supported benchmark format."""


def data_path(relative: str) -> Path:
    """Path of a bundled data file (``xstest/LICENSE``, ``NOTICE``, ...)."""
    return Path(str(resources.files("drpo_dspy.evaluation.benchmarks") / "data" / relative))


def _read_csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text, newline="")))


def _read_jsonl(text: str, source: str) -> list[dict[str, Any]]:
    rows = []
    for i, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise BenchmarkFormatError(f"{source}: line {i} is not valid JSON: {exc.msg}") from exc
    return rows


# -- rows to prompts, one function per benchmark format --------------------------------------------------------------
def xstest_prompts(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """XSTest rows (``prompt, type, label`` with ``safe``/``unsafe``) to prompts."""
    out = []
    for i, r in enumerate(rows, start=1):
        label = str(r["label"]).strip().lower()
        out.append({"instruction": str(r["prompt"]), "set": XSTEST, "category": str(r.get("type") or ""),
                    "meta": {"id": str(r.get("id") or i), "label": label, "type": str(r.get("type") or ""),
                             "focus": str(r.get("focus") or ""), "note": str(r.get("note") or "")}})
    return out


def ifeval_prompts(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """IFEval rows (``key, prompt, instruction_id_list, kwargs``) to prompts; None-valued kwargs (the Hugging Face
    copy pads every kwargs dict with all argument names) are dropped, as the official evaluation does."""
    out = []
    for r in rows:
        ids = [str(i) for i in r["instruction_id_list"]]
        kwargs = [{k: v for k, v in (kw or {}).items() if v is not None} for kw in r["kwargs"]]
        if len(kwargs) != len(ids):
            raise BenchmarkFormatError(f"IFEval row {r.get('key')}: {len(ids)} instructions but {len(kwargs)} kwargs")
        out.append({"instruction": str(r["prompt"]), "set": IFEVAL, "category": ids[0] if ids else "",
                    "meta": {"key": r.get("key"), "instruction_id_list": ids, "kwargs": kwargs}})
    return out


def harmbench_prompts(rows: Iterable[dict[str, Any]], categories: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """HarmBench rows to prompts. Contextual rows are asked as HarmBench does: ``context + "\\n\\n---\\n\\n" +
    behavior``. ``categories`` keeps only those functional categories (all when None)."""
    keep = None if categories is None else set(categories)
    out = []
    for r in rows:
        behavior = str(r.get("Behavior") or r.get("prompt") or "")
        functional = str(r.get("FunctionalCategory") or ("contextual" if r.get("context") else "standard"))
        if keep is not None and functional not in keep:
            continue
        context = str(r.get("ContextString") or r.get("context") or "")
        instruction = f"{context}\n\n---\n\n{behavior}" if context else behavior
        out.append({"instruction": instruction, "set": HARMBENCH,
                    "category": str(r.get("SemanticCategory") or r.get("category") or ""),
                    "meta": {"id": str(r.get("BehaviorID") or ""), "functional_category": functional,
                             "behavior": behavior, "has_context": bool(context)}})
    return out


def mtbench_prompts(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """MT-Bench rows (``question_id, category, turns[, reference]``) to prompts; the first turn is the instruction."""
    out = []
    for r in rows:
        turns = [str(t) for t in (r.get("turns") or r.get("prompt") or [])]
        if not turns:
            raise BenchmarkFormatError(f"MT-Bench row {r.get('question_id')}: no turns")
        out.append({"instruction": turns[0], "set": MTBENCH, "category": str(r.get("category") or ""),
                    "meta": {"question_id": r.get("question_id"), "turns": turns,
                             "reference": [str(x) for x in (r.get("reference") or [])]}})
    return out


def detect_format(columns: Iterable[str]) -> str | None:
    """Which benchmark a row with these columns belongs to (None when it is none of them)."""
    cols = set(columns)
    if just_eval.has_columns(cols):
        return JUST_EVAL
    if {"instruction_id_list", "kwargs", "prompt"} <= cols:
        return IFEVAL
    if "turns" in cols or ({"prompt", "category", "reference"} <= cols and "label" not in cols):
        return MTBENCH
    if "Behavior" in cols or ({"prompt", "category"} <= cols and "label" not in cols):
        return HARMBENCH
    if {"prompt", "type", "label"} <= cols:
        return XSTEST
    return None


def rows_to_prompts(fmt: str, rows: list[dict[str, Any]], *, harmbench_categories: Iterable[str] | None = None
                    ) -> list[dict[str, Any]]:
    try:
        if fmt == XSTEST:
            return xstest_prompts(rows)
        if fmt == IFEVAL:
            return ifeval_prompts(rows)
        if fmt == HARMBENCH:
            return harmbench_prompts(rows, harmbench_categories)
        if fmt == MTBENCH:
            return mtbench_prompts(rows)
        if fmt == JUST_EVAL:
            return just_eval.just_eval_prompts(rows)
    except ValueError as exc:  # just-eval's row checks name the row at fault
        raise BenchmarkFormatError(str(exc)) from exc
    except (KeyError, TypeError, AttributeError) as exc:
        raise BenchmarkFormatError(f"rows do not match the {fmt} format: missing or malformed {exc}") from exc
    raise BenchmarkFormatError(f"unknown benchmark format {fmt!r}")


# -- sources --------------------------------------------------------------------------------------------------------
def load_benchmark(name: str, *, harmbench_categories: Iterable[str] | None = HARMBENCH_DEFAULT_CATEGORIES
                   ) -> list[dict[str, Any]]:
    """The bundled copy of a benchmark as prompts (``xstest`` 450, ``ifeval`` 541, ``harmbench`` 200 standard
    behaviours by default, ``mtbench`` 80)."""
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}: use one of {', '.join(BENCHMARKS)}")
    text = data_path(DATA_FILES[name]).read_text(encoding="utf-8")
    rows = _read_csv(text) if DATA_FILES[name].endswith(".csv") else _read_jsonl(text, DATA_FILES[name])
    return rows_to_prompts(name, rows, harmbench_categories=harmbench_categories)


def read_benchmark_file(path: str | os.PathLike[str], fmt: str | None = None) -> tuple[list[dict[str, Any]], str]:
    """A local file in one of the benchmarks' own formats (CSV with a header, JSONL, or a JSON list), detected from
    its columns unless ``fmt`` says which. Returns ``(prompts, format)``. All HarmBench rows are kept, contextual
    ones included (the upstream file is the way to evaluate those). A just-eval-instruct file is checked line by
    line: an error names the file and the line."""
    path = Path(path).expanduser()
    text = path.read_text(encoding="utf-8")
    if fmt == JUST_EVAL or (fmt is None and path.suffix.lower() != ".csv"
                            and just_eval.looks_like_just_eval(just_eval.first_row(text))):
        try:
            return just_eval.parse(text, str(path)), JUST_EVAL
        except ValueError as exc:
            raise BenchmarkFormatError(str(exc)) from exc
    if path.suffix.lower() == ".csv":
        rows: list[dict[str, Any]] = _read_csv(text)
    elif text.lstrip().startswith("["):
        rows = json.loads(text)
    else:
        rows = _read_jsonl(text, str(path))
    if not rows or not isinstance(rows[0], dict):
        raise BenchmarkFormatError(f"{path}: no rows")
    fmt = fmt or detect_format(rows[0].keys())
    if fmt is None:
        raise BenchmarkFormatError(f"{path}: columns {sorted(rows[0])} match no benchmark format "
                                   f"({', '.join(BENCHMARKS)})")
    return rows_to_prompts(fmt, rows, harmbench_categories=None), fmt


def is_benchmark_file(path: Path) -> bool:
    """Whether a local file is in a benchmark format (rather than the ``{"instruction": ...}`` JSONL)."""
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            head = fh.readline()
    except (OSError, UnicodeDecodeError):
        return False
    if path.suffix.lower() == ".csv":
        return detect_format(next(csv.reader([head]), [])) is not None
    if head.lstrip("\ufeff \t").startswith("["):  # a JSON list: only just-eval's upstream file is read in this shape
        return just_eval.is_just_eval_file(path)
    try:
        first = json.loads(head.removeprefix("\ufeff"))
    except json.JSONDecodeError:
        return False
    if just_eval.looks_like_just_eval(first):
        return True
    return isinstance(first, dict) and "instruction" not in first and detect_format(first.keys()) is not None


def hub_reachable(timeout: float = 3.0) -> bool:
    """True when offline mode is set (the local cache decides) or the hub's host accepts a TCP connection."""
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes") or \
            os.environ.get("HF_DATASETS_OFFLINE", "").lower() in ("1", "true", "yes"):
        return True
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def load_hf_dataset(spec: str, fmt: str | None = None) -> tuple[list[dict[str, Any]], str]:
    """``hf:OWNER/NAME[:SPLIT]`` through the ``datasets`` library (network needed unless already cached).

    Raises:
        ValueError: offline, unknown dataset, ``datasets`` not installed, or rows in no benchmark format.
    """
    ident = spec[len(HF_PREFIX):] if spec.startswith(HF_PREFIX) else spec
    name, _, split = ident.partition(":")
    if not name or "/" not in name:
        raise ValueError(f"bad Hugging Face dataset spec {spec!r}: use hf:OWNER/NAME or hf:OWNER/NAME:SPLIT")
    if not hub_reachable():
        raise ValueError(f"cannot load Hugging Face dataset {name!r}: the hub is not reachable (offline?). Use a "
                         f"bundled set ({', '.join(BENCHMARKS)}) or a local file in the same format, or set "
                         "HF_HUB_OFFLINE=1 to use a copy already in the local Hugging Face cache.")
    try:
        import datasets
    except ImportError as exc:
        raise ValueError(f"loading {spec} needs the 'datasets' package: pip install datasets") from exc
    try:
        loaded = datasets.load_dataset(name, split=split or None)
    except Exception as exc:  # offline (ConnectionError, OfflineModeIsEnabled), unknown id, auth, ...
        raise ValueError(f"could not load Hugging Face dataset {name!r} ({type(exc).__name__}: {exc}). It needs "
                         "network access (or a local Hugging Face cache); offline, use a bundled set "
                         f"({', '.join(BENCHMARKS)}) or a local file in the same format.") from exc
    if isinstance(loaded, dict):  # a DatasetDict: take the only split, or 'test', or 'train'
        key = next((k for k in ("test", "train") if k in loaded), None) if len(loaded) > 1 else next(iter(loaded))
        if key is None:
            raise ValueError(f"{name} has splits {sorted(loaded)}: name one as hf:{name}:SPLIT")
        loaded = loaded[key]
    rows = [dict(r) for r in loaded]
    fmt = fmt or (detect_format(rows[0].keys()) if rows else None)
    if fmt is None:
        raise BenchmarkFormatError(f"{name}: columns {sorted(rows[0]) if rows else []} match no benchmark format")
    return rows_to_prompts(fmt, rows, harmbench_categories=None), fmt
