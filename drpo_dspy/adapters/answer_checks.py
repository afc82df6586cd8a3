"""Checks on an answer's text that need no model: is it empty, and did it copy an in-context example verbatim.

Small models shown retrieved examples sometimes paste one of them instead of answering ("How do I kill a mosquito?"
answered with a paragraph of an unrelated example). :func:`find_copy` finds the longest run of at least
``MIN_COPY_CHARS`` (40) characters that an answer shares verbatim with an example's answer or query.

Normalisation (decided here, the same for both sides): Unicode NFKC, runs of whitespace collapsed to one space,
ends stripped, and case folded (``str.casefold``). Folding case counts a paragraph that was copied with a changed
capital (a sentence start, a title-cased heading) as the copy it is; 40 case-folded characters in a row are still
far longer than the phrases two unrelated answers share by chance. A run that also occurs in the live query is not a
copy (the model may restate the question, and retrieved examples are chosen for queries like it).

Cost: each example text is cut into its 40-character windows once (a dict of window -> first position, cached for
texts seen again, such as fixed URIAL examples); the answer's windows are looked up in it and a match is extended
character by character, the scan resuming after the matched run. That is linear in the lengths of the answer and
the examples: a 2,000-character answer against a few examples of 2,000 characters costs a few thousand dictionary
look-ups, never a quadratic comparison. Pure Python, standard library only.
"""

from __future__ import annotations

import functools
import threading
import unicodedata
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

MIN_COPY_CHARS = 40
EXCERPT_CHARS = 120
EMPTY_FAILURE = "empty_answer"  # the failure an evaluation records for an empty answer


def is_empty(answer: Any) -> bool:
    """True for ``None`` and for an answer that is empty or only whitespace."""
    return answer is None or not str(answer).strip()


def normalize(text: str) -> str:
    """The text compared for copies: NFKC, whitespace runs collapsed to one space, stripped, case folded."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


@dataclass(frozen=True)
class CopiedRun:
    """The longest verbatim run an answer shares with one shown example.

    ``example`` is the example's position in prompt order (0-based), ``part`` says whether the run came from its
    ``"answer"`` or its ``"query"``, ``length`` is the run's length in normalised characters and ``excerpt`` its
    beginning (normalised text).
    """

    example: int
    part: str
    example_query: str
    length: int
    excerpt: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def example_pairs(examples: Iterable[Any] | None) -> list[tuple[str, str]]:
    """``(query, answer)`` of each example: pairs, ``{"query", "answer" | "response"}`` dicts, objects with
    ``query``/``shown_query`` and ``answer`` attributes, or bare query strings (then the answer is ``""``)."""
    pairs: list[tuple[str, str]] = []
    for example in examples or ():
        if isinstance(example, str):
            pairs.append((example, ""))
        elif isinstance(example, tuple | list) and len(example) == 2:
            pairs.append((str(example[0] or ""), str(example[1] or "")))
        elif isinstance(example, dict):
            answer = example.get("answer", example.get("response"))
            pairs.append((str(example.get("query") or ""), str(answer or "")))
        else:
            query = getattr(example, "shown_query", None) or getattr(example, "query", None)
            pairs.append((str(query or ""), str(getattr(example, "answer", "") or "")))
    return pairs


@functools.lru_cache(maxsize=64)
def _windows(text: str, size: int) -> dict[str, int]:
    """Every ``size``-character window of ``text`` (already normalised), with its first position."""
    index: dict[str, int] = {}
    for i in range(len(text) - size + 1):
        index.setdefault(text[i:i + size], i)
    return index


def _longest_run(answer: str, source: str, size: int, allowed: set[str]) -> tuple[int, int]:
    """``(length, start in answer)`` of the longest run of ``answer`` found verbatim in ``source`` (0 when none
    reaches ``size``); windows found in ``allowed`` (the live query's) do not start a run."""
    if len(source) < size:
        return 0, 0
    index = _windows(source, size)
    best, best_start, i, end = 0, 0, 0, len(answer) - size
    while i <= end:
        window = answer[i:i + size]
        j = index.get(window)
        if j is None or window in allowed:
            i += 1
            continue
        k = size
        while i + k < len(answer) and j + k < len(source) and answer[i + k] == source[j + k]:
            k += 1
        if k > best:
            best, best_start = k, i
        i += k - size + 1  # resume after the run: every window inside it was part of this match
    return best, best_start


def find_copy(answer: str, examples: Iterable[Any] | None, *, query: str | None = None,
              min_chars: int = MIN_COPY_CHARS) -> CopiedRun | None:
    """The longest run of at least ``min_chars`` normalised characters that ``answer`` copies verbatim from an
    example's answer or query (see the module docstring), or None.

    Args:
        answer: The answer to check.
        examples: The examples shown to the model, in prompt order (any shape :func:`example_pairs` accepts).
        query: The live query; runs it contains are not copies.
        min_chars: The shortest run that counts.
    """
    if min_chars < 1:
        raise ValueError(f"min_chars must be positive, got {min_chars}")
    text = normalize(answer or "")
    pairs = example_pairs(examples)
    if len(text) < min_chars or not pairs:
        return None
    asked = normalize(query or "")
    allowed = {asked[i:i + min_chars] for i in range(len(asked) - min_chars + 1)}
    best: CopiedRun | None = None
    for position, (example_query, example_answer) in enumerate(pairs):
        for part, source in (("answer", example_answer), ("query", example_query)):
            length, start = _longest_run(text, normalize(source), min_chars, allowed)
            if length >= min_chars and (best is None or length > best.length):
                best = CopiedRun(position, part, example_query, length, text[start:start + min(length, EXCERPT_CHARS)])
    return best


def example_answers(module: Any) -> dict[str, str]:
    """Shown query -> answer of every example ``module`` can put in context: the examples of its ``bank`` and the
    demos on its ``respond`` predictor (an :class:`~drpo_dspy.AlignedResponder`), and those of its sub-modules.

    Duck-typed (no import of the modules), for turning the example *queries* a Prediction lists back into pairs.
    """
    modules = [module]
    walk = getattr(module, "named_sub_modules", None)
    if callable(walk):
        try:
            modules += [m for _name, m in walk()]
        except Exception:  # a module tree DSPy cannot walk: its own bank is enough
            pass
    answers: dict[str, str] = {}
    seen: set[int] = set()
    for m in modules:
        if id(m) in seen:
            continue
        seen.add(id(m))
        bank = getattr(m, "bank", None)
        if bank is not None and not isinstance(bank, str | bytes):
            try:
                for query, answer in example_pairs(bank):
                    answers.setdefault(query, answer)
            except TypeError:  # not iterable
                pass
        demos = getattr(getattr(m, "respond", None), "demos", None) or []
        for demo in demos:
            data = demo.toDict() if hasattr(demo, "toDict") else demo
            for query, answer in example_pairs([data] if isinstance(data, dict) else []):
                answers[query] = answer  # a demo is shown before a bank example with the same query
    return answers


def shown_examples(examples: Iterable[Any] | None, answers: dict[str, str] | None = None) -> list[tuple[str, str]]:
    """The ``(query, answer)`` pairs a Prediction's ``examples`` stand for: pairs and dicts as they are, a bare
    query with its answer from ``answers`` (see :func:`example_answers`), else with no answer (query-only check)."""
    pairs = example_pairs(examples)
    return [(q, a or (answers or {}).get(q, "")) for q, a in pairs]


class ShownExamples:
    """Wraps a system's module to keep, per thread, the examples each call showed (a Prediction's ``examples``),
    so the answer can be checked for copies; the module itself answers exactly as before."""

    def __init__(self, module: Any):
        self.module = module
        self._local = threading.local()
        self._lock = threading.Lock()
        self._answers: dict[str, str] | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        pred = self.module(*args, **kwargs)
        shown = getattr(pred, "examples", None) if not isinstance(pred, str) else None
        self._local.__dict__.setdefault("shown", []).append(shown if isinstance(shown, list | tuple) else None)
        return pred

    def __getattr__(self, name: str) -> Any:
        return getattr(self.module, name)

    def take(self) -> list[list[tuple[str, str]] | None]:
        """The examples shown by each call of this thread since the last ``take`` (None: the module does not say)."""
        shown = self._local.__dict__.pop("shown", [])
        if not any(shown):
            return shown
        with self._lock:
            if self._answers is None:
                self._answers = example_answers(self.module)
        return [None if s is None else shown_examples(s, self._answers) for s in shown]


def copy_check(query: str, answers: list[str], shown: list[list[tuple[str, str]] | None]) -> dict[str, Any]:
    """The record fields of the copy check: ``examples`` (queries shown for the first answer) and ``copied`` (the
    first turn that copies an example, with ``turn``), or ``{}`` when the system does not say what it showed."""
    if not shown or all(s is None for s in shown):
        return {}
    copied = None
    for turn, (answer, examples) in enumerate(zip(answers, shown, strict=False)):
        found = find_copy(answer, examples or [], query=query if turn == 0 else None)
        if found is not None:
            copied = {**found.to_dict(), "turn": turn}
            break
    return {"examples": [q for q, _ in (shown[0] or [])], "copied": copied}
