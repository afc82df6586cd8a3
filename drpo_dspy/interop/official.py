"""Interoperability with the original DRPO release: import its results, export ours in its shapes.

The original release keeps, per target model, a folder with ``output.json`` (the best search path, one entry per
level: ``{"level 1": {"Prompt": ..., "Evaluation of the prompt": {aspect: {"rationale", "score"}}}, ...}``),
``output.txt`` (the final prompt) and sometimes ``output.pkl`` (the pickled search result), next to a shared
``ICL_examples.json`` (``{query: "<START>\\n...\\n<END>"}``). :func:`import_official` turns any of these into an
:class:`~drpo_dspy.modules.aligned_responder.AlignedResponder`; :func:`export_levels` and
:func:`export_official_icl` write our results back in the same shapes (byte-compatible formatting);
:func:`generate` mirrors the original ``AutoModel.generate`` parameters for people porting code.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from drpo_dspy.modules.aligned_responder import DEFAULT_INSTRUCTIONS, DEFAULT_MAX_TOKENS, AlignedResponder
from drpo_dspy.primitives.checks import is_whole

logger = logging.getLogger(__name__)

__all__ = ["ICL_FILE", "LEVEL_FILES", "export_levels", "export_official_icl", "generate", "import_official",
           "levels_of", "read_levels"]

ICL_FILE = "ICL_examples.json"
LEVEL_FILES = ("output.json", "output.txt", "output.pkl")  # preference order inside a model folder
PROMPT, EVALUATION = "Prompt", "Evaluation of the prompt"
_LEVEL_KEY = re.compile(r"level (\d+)")

PathLike = str | os.PathLike


# -- reading the original release -------------------------------------------------------------------------------
def _check_levels(data: Any, source: str) -> dict[str, dict[str, Any]]:
    """Validate the published per-level shape; returns it unchanged (key order and texts kept)."""
    if not isinstance(data, Mapping) or not data:
        raise ValueError(f"{source}: expected a non-empty object {{\"level 1\": {{\"{PROMPT}\", \"{EVALUATION}\"}}, "
                         f"...}}, got {type(data).__name__ if not isinstance(data, Mapping) else 'an empty object'}")
    for position, (key, level) in enumerate(data.items(), start=1):
        match = _LEVEL_KEY.fullmatch(str(key))
        if match is None or int(match.group(1)) != position:
            raise ValueError(f"{source}: entry #{position} is named {key!r}, expected 'level {position}'")
        if not isinstance(level, Mapping) or not isinstance(level.get(PROMPT), str) or not level[PROMPT].strip():
            raise ValueError(f"{source}: {key} needs a non-empty string {PROMPT!r}")
        evaluation = level.get(EVALUATION, {})
        if not isinstance(evaluation, Mapping):
            raise ValueError(f"{source}: {key}: {EVALUATION!r} must be an object, got {type(evaluation).__name__}")
    return dict(data)


def read_levels(path: PathLike) -> dict[str, dict[str, Any]]:
    """Read and validate a per-level JSON file (the original ``output.json`` or our ``levels.json``)."""
    source = Path(path)
    if not source.is_file():
        raise FileNotFoundError(f"per-level results file not found: {source}")
    try:
        data = json.loads(source.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{source} is not valid JSON: {exc.msg} (line {exc.lineno})") from exc
    return _check_levels(data, str(source))


def _read_prompt_text(path: Path) -> str:
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path} is not UTF-8 text (byte {exc.start})") from exc
    if not text.strip():
        raise ValueError(f"{path} holds no prompt (the file is empty)")
    return text


def _levels_from_pickle(path: Path) -> dict[str, dict[str, Any]]:
    """The best path of a pickled search result, read without running the pickle's code (``safe_pickle``)."""
    try:
        from drpo_dspy.interop.safe_pickle import best_path, extract_prompts, load_untrusted_pickle
    except ImportError as exc:
        raise ImportError(f"{path}: pickle import needs drpo_dspy.interop.safe_pickle (a loader that never runs the "
                          "pickle's code); import the folder's output.json or output.txt instead") from exc
    obj = load_untrusted_pickle(path)
    steps = best_path(obj)
    if steps:
        levels = {f"level {i}": {PROMPT: step.get(PROMPT), EVALUATION: step.get(EVALUATION) or {}}
                  for i, step in enumerate(steps, start=1)}
        return _check_levels(levels, str(path))
    prompts = [obj] if isinstance(obj, str) else extract_prompts(obj)  # a prompt pickled on its own
    if len(prompts) != 1:
        raise ValueError(f"{path}: not a DRPO search result with a best path, and {len(prompts)} prompts were found "
                         "in it (cannot tell which one is final)")
    return _check_levels({"level 1": {PROMPT: prompts[0], EVALUATION: {}}}, str(path))


def _resolve_source(path: PathLike) -> Path:
    source = Path(path)
    if not source.exists():
        raise FileNotFoundError(f"no such file or folder: {source}")
    if source.is_dir():
        for name in LEVEL_FILES:
            if (source / name).is_file():
                return source / name
        raise ValueError(f"{source} holds none of {', '.join(LEVEL_FILES)}: not a model folder of the original "
                         "DRPO release")
    if source.suffix.lower() not in (".json", ".txt", ".pkl"):
        raise ValueError(f"{source}: unsupported file type {source.suffix!r} (expected .json, .txt or .pkl)")
    return source


def _read_official(source: Path) -> tuple[str, dict[str, dict[str, Any]] | None]:
    """The final prompt and, where the file has them, the per-level results."""
    suffix = source.suffix.lower()
    if suffix == ".txt":
        return _read_prompt_text(source), None
    levels = _levels_from_pickle(source) if suffix == ".pkl" else read_levels(source)
    final = levels[next(reversed(levels))][PROMPT]
    text_file = source.with_name("output.txt")
    if source.name != text_file.name and text_file.is_file() and _read_prompt_text(text_file) != final:
        logger.warning("%s differs from the last level of %s; using the last level", text_file, source)
    return final, levels


def _find_icl_file(source: Path) -> Path | None:
    folder = source if source.is_dir() else source.parent
    for candidate in (folder / ICL_FILE, folder.parent / ICL_FILE):
        if candidate.is_file():
            return candidate
    return None


def _coerce_bank(examples: Any, embedder: Any) -> Any:
    from drpo_dspy.retrievers.bank import AlignmentBank

    if isinstance(examples, AlignedResponder):
        return examples.bank
    if isinstance(examples, AlignmentBank):
        return examples
    if isinstance(examples, Mapping):
        return AlignmentBank.from_published_json(examples, embedder=embedder)
    if isinstance(examples, (str, os.PathLike)):
        path = Path(examples)
        if path.suffix.lower() == ".json" and _is_published_icl(path):
            return AlignmentBank.from_published_json(path, embedder=embedder)
        from drpo_dspy.retrievers.bank_loading import load_bank  # lists, .jsonl and saved banks, validated

        bank = load_bank(path)
        return bank if embedder is None else bank.reembed(embedder)
    return AlignmentBank(list(examples), embedder=embedder)


def _is_published_icl(path: Path) -> bool:
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(data, dict) and bool(data) and all(isinstance(v, str) for v in data.values())


def import_official(path: PathLike, *, icl_examples: Any = None, k: int = 2, embedder: Any = None,
                    max_tokens: int = DEFAULT_MAX_TOKENS) -> AlignedResponder:
    """An AlignedResponder from a model folder (or its ``output.json`` / ``.txt`` / ``.pkl``) of the original release.

    The program gets an explicit answer cap, ``max_tokens`` (default 1024): a program without one would be cut by
    an OpenAI-compatible server's own default (16 tokens on ``/v1/completions``).

    The prompt is the last level's ``Prompt`` (or the text file). The example bank is ``icl_examples`` (a path to
    the published ``{query: answer}`` JSON or a saved bank, a mapping, a list or an ``AlignmentBank``); when not
    given, ``ICL_examples.json`` in the model folder or its parent; else the built-in seed examples. The imported
    per-level results are kept on the returned program as ``published_levels`` (not saved with it), so
    :func:`export_levels` can write them back unchanged.
    """
    source = _resolve_source(path)
    prompt, levels = _read_official(source)
    if icl_examples is None:
        found = _find_icl_file(Path(path))
        if found is not None:
            icl_examples = found
            logger.info("using in-context examples from %s", found)
        else:
            logger.info("no %s next to %s: using the built-in seed examples", ICL_FILE, source)
    bank = None if icl_examples is None else _coerce_bank(icl_examples, embedder)
    program = AlignedResponder(prompt, bank, k=k, embedder=embedder, max_tokens=max_tokens)
    program.published_levels = levels if levels is not None else {"level 1": {PROMPT: prompt, EVALUATION: {}}}
    program.imported_from = str(source)
    return program


# -- writing our results in the original shapes -----------------------------------------------------------------
def _levels_from_nodes(nodes: list[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    from drpo_dspy.rewards.reward_judge import Judgment

    return {f"level {i}": {PROMPT: node["prompt"], EVALUATION: Judgment.from_dict(node["judgment"]).to_published()}
            for i, node in enumerate(nodes, start=1)}


def _levels_of_run(run_dir: Path) -> dict[str, dict[str, Any]]:
    if (run_dir / "levels.json").is_file():
        return read_levels(run_dir / "levels.json")
    if not (run_dir / "trace.jsonl").is_file():
        raise ValueError(f"{run_dir} is not a drpo run directory (no levels.json and no trace.jsonl)")
    from drpo_dspy.teleprompt.search_report import best_path, load_trace

    return _levels_from_nodes(best_path(load_trace(run_dir), run_dir))


def _load_program_file(path: Path) -> AlignedResponder:
    program = AlignedResponder(examples=[], k=0)
    try:
        program.load(str(path))
    except Exception as exc:  # DSPy raises assorted errors on foreign JSON
        raise ValueError(f"{path} is neither a saved AlignedResponder nor per-level results: {exc}") from exc
    return program


def _looks_like_levels(path: Path) -> bool:
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(data, dict) and bool(data) and all(_LEVEL_KEY.fullmatch(str(k)) for k in data)


def levels_of(program_or_run_dir: Any) -> dict[str, dict[str, Any]]:
    """Per-level results in the published shape, from a program, a run directory, or a program/levels file.

    A compiled program gives its best path (``drpo_result``), an imported one its imported levels (each only while
    it ends in the program's current prompt), any other program one level: its prompt with an empty evaluation.
    """
    target = program_or_run_dir
    if isinstance(target, (str, os.PathLike)):
        target = Path(target)
        if target.is_dir():
            return _levels_of_run(target)
        if not target.is_file():
            raise FileNotFoundError(f"no such run directory or file: {target}")
        if target.suffix.lower() == ".json" and _looks_like_levels(target):
            return read_levels(target)
        target = _load_program_file(target)
    if not isinstance(target, AlignedResponder):
        raise TypeError(f"expected an AlignedResponder, a run directory or a file, got {type(target).__name__}")
    current = target.instructions.strip()
    result = getattr(target, "drpo_result", None)  # only while they still end in the program's prompt
    if result is not None and result.best_path and result.best_path[-1]["prompt"].strip() == current:
        return _levels_from_nodes(result.best_path)
    published = getattr(target, "published_levels", None)
    if published and _check_levels(published, "program.published_levels")[next(reversed(published))][PROMPT] \
            .strip() == current:
        return dict(published)
    return {"level 1": {PROMPT: target.instructions, EVALUATION: {}}}


def export_levels(program_or_run_dir: Any, path: PathLike) -> Path:
    """Write per-level results as the original ``output.json`` (same JSON formatting); returns the path."""
    levels = levels_of(program_or_run_dir)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(levels), encoding="utf-8")
    return target


def export_official_icl(bank: Any, path: PathLike) -> Path:
    """Write an example bank (or a program's bank) as the original ``ICL_examples.json``; returns the path."""
    published = _coerce_bank(bank, None).to_published_json()
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(published, indent=4), encoding="utf-8")
    return target


# -- the original AutoModel.generate, on an AlignedResponder -----------------------------------------------------
def _resolve_program(program: Any) -> AlignedResponder:
    if program is None:
        return AlignedResponder()
    if isinstance(program, AlignedResponder):
        return program
    if not isinstance(program, (str, os.PathLike)):
        raise TypeError(f"program must be an AlignedResponder or a path, got {type(program).__name__}")
    path = Path(program)
    if path.is_dir():
        return _load_program_file(path / "program.json") if (path / "program.json").is_file() \
            else import_official(path)
    if path.is_file() and path.suffix.lower() == ".json" and not _looks_like_levels(path):
        return _load_program_file(path)
    return import_official(path)


def _resolve_lm(lm: Any, program: AlignedResponder) -> Any:
    import dspy

    if isinstance(lm, str):
        return dspy.LM(lm)
    lm = lm or program.respond.lm or dspy.settings.lm
    if lm is None:
        raise ValueError("no LM: pass lm=dspy.LM(...) (or a model string) or call dspy.configure(lm=...)")
    return lm


def generate(user_query: str, user_specified_system_prompt: str | None = None, optimized_prompt: bool = True,
             optimized_icl: bool = True, num_optimized_icl: int = 3, temperature: float = 0.0, top_p: float = 1.0,
             max_new_tokens: int = 512, *, program: Any = None, lm: Any = None, **lm_kwargs: Any) -> str:
    """Answer ``user_query`` the way the original ``AutoModel.generate`` did, with an AlignedResponder.

    Args:
        user_query: The query.
        user_specified_system_prompt: A custom system prompt; when given, the optimized prompt is not used.
        optimized_prompt: Use the program's optimized prompt; False uses the plain default prompt
            ("You are a helpful assistant."; the original substituted a generic optimized prompt here).
        optimized_icl: Put the program's most similar in-context examples in the prompt; False uses none.
        num_optimized_icl: How many examples (>= 1, at most the bank size) when ``optimized_icl``.
        temperature, top_p, max_new_tokens: Decoding settings, passed to the LM (``max_tokens``). Defaults are
            greedy (the original's were 0.7 / 0.95 / 512).
        program: An AlignedResponder, a saved ``program.json``, a run directory, or an original model folder /
            ``output.json`` / ``.txt`` / ``.pkl``; default: a fresh AlignedResponder with the seed examples. A path
            is read (and its example queries embedded) on every call: for many calls, load it once and pass that.
        lm: A ``dspy.LM`` or a litellm model string; default: the program's LM, else ``dspy.settings.lm``.
        **lm_kwargs: Further generation parameters for the LM call.

    Returns:
        The answer text (up to ``<END>``, stripped). Generation always stops at ``<END>``.
    """
    from drpo_dspy.runs.validation import check_number

    if not isinstance(user_query, str) or not user_query.strip():
        raise ValueError("user_query must be a non-empty string")
    check_number("temperature", temperature, 0.0, 2.0)
    check_number("top_p", top_p, 0.0, 1.0)
    if not is_whole(max_new_tokens) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    responder = _resolve_program(program)
    if user_specified_system_prompt is not None:
        if not isinstance(user_specified_system_prompt, str) or not user_specified_system_prompt.strip():
            raise ValueError("user_specified_system_prompt must be a non-empty string (or None)")
        instructions = user_specified_system_prompt
    else:
        instructions = responder.instructions if optimized_prompt else DEFAULT_INSTRUCTIONS
    if optimized_icl:
        if not is_whole(num_optimized_icl) or num_optimized_icl < 1:
            raise ValueError(f"num_optimized_icl must be a positive integer, got {num_optimized_icl!r}")
        if num_optimized_icl > len(responder.bank):
            raise ValueError(f"num_optimized_icl={num_optimized_icl} but the program has only "
                             f"{len(responder.bank)} in-context examples")
    k = num_optimized_icl if optimized_icl else 0
    caller = responder.with_state(instructions=instructions, k=k)
    config = {"temperature": temperature, "top_p": top_p, "max_tokens": max_new_tokens, **lm_kwargs}
    return caller(query=user_query, lm=_resolve_lm(lm, responder), config=config).response
