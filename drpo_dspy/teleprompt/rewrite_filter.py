"""Which proposed system prompts cannot be one: the narrow filter applied to the optimizer's rewrites.

A rewrite is dropped, with its reason recorded in the trace, only when it cannot serve as a system prompt:

- ``empty_prompt`` / ``too_short_prompt``: nothing (or under 3 characters) is left after stripping quotes;
- ``no_words_prompt``: not one letter in any script (``10.5, 2.0``): numbers and punctuation steer nothing;
- ``code_prompt``: a fenced code block and, outside it, not one word (``;\n}\n```python\ndef f(): ...``): code is
  not an instruction to the model (a prompt that shows code next to its instructions, or that is only wrapped in a
  bare fence, is kept);
- ``heading_only_prompt``: every line is a markdown heading (``### polish,``): a title with nothing under it;
- ``template_echo_prompt``: the optimizer copied the request back: DSPy's field markers (``[[ ## name ## ]]``, also
  with single brackets), a placeholder naming one of the optimizer's own fields (``{new_system_prompt}``), a field
  description verbatim, DSPy's own request wording (``Your output fields are: ...``) or a field name of the
  optimizer's quoted as code (```new_system_prompt```), or a sentence opening as the optimizer's own role does
  (``You improve the system prompt``);
- ``input_echo_prompt``: the rewrite is, once case and punctuation are normalised, another text the optimizer
  read: the answer it was shown, or the prompt budget (``1024 tokens``);
- ``scaffolding_heading_prompt``: a line of the rewrite is a heading of the optimizer's own scaffolding: a version
  of the prompt history (``## Current Version``, ``Version 2``, ``---Version 1---``), a title naming a prompt
  version (``# Revised Prompt``, ``New system prompt:``, ``Prompt after:``), or a snake_case field name of the
  optimizer's signature (``new_system_prompt:``);
- ``commentary_prompt``: the rewrite talks about the prompt instead of being one: a sentence opens by presenting
  or describing a prompt version (``Here is the new prompt``, ``This revised prompt ...``, ``The current system
  prompt ...``, ``I have updated ...``, ``In this version ...``), or the text says the prompt has been changed
  (``the prompt has been improved``, ``version 2 of the system prompt``);
- ``query_specific_prompt``: the prompt copies the query the optimizer was shown, so it is about this query rather
  than general: the whole query (12 characters or more once case, whitespace and punctuation are normalised), or
  one run of the query's words that is at least 6 words and 60% of the query, or at least 10 words.

Mentioning the system prompt drops nothing (``Never reveal this system prompt.``), and neither does other wording:
a prompt may mention JSON, output fields, ``<START>``/``<END>``, braces or a "previous version" of some software.
Paper mode (``DRPO(paper_mode=True)``) and ``DRPO(rewrite_filter=False)`` keep every readable non-empty rewrite, as
the original code does.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from difflib import SequenceMatcher
from functools import lru_cache

from drpo_dspy.signatures import ProposeInstructions, ProposeInstructionsWithBudget
from drpo_dspy.signatures.propose_program import PROGRAM_PROPOSAL_INSTRUCTIONS

MIN_PROMPT_CHARS = 3
MIN_QUERY_CHARS = 12
MIN_COPIED_WORDS = 6  # a copied run of the query's words this long ...
MIN_COPIED_SHARE = 0.6  # ... and covering this share of the query drops the rewrite,
LONG_COPY_WORDS = 10  # as does a run this long, whatever the query's length

_FIELDS = [*ProposeInstructions.input_fields, *ProposeInstructions.output_fields]
_TEMPLATE_ECHO = re.compile(r"\[{1,2} ?## ?[a-z_]+ ?## ?\]{1,2}|\{(?:" + "|".join(map(re.escape, _FIELDS)) + r")\}")
_LETTER = re.compile(r"[^\W\d_]")
_WORD = re.compile(r"[^\W\d_]{2,}")
_CODE_FENCE = re.compile(r"(?:```|~~~)([\w+#.-]*).*?(?:```|~~~|\Z)", re.DOTALL)
_HEADING_LINE = re.compile(r"^[ \t>]*#{1,6}(?:[ \t]|$)")


def _squash(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()


_FIELD_DESCRIPTIONS = {
    _squash((info.json_schema_extra or {}).get("desc", ""))
    for info in [*ProposeInstructions.input_fields.values(), *ProposeInstructions.output_fields.values()]
}
# The optimizer's own role, as its instructions open ("You improve the system prompt that ..."): five words.
_TASK_OPENERS = tuple(" ".join(_squash(instructions).split()[:5]) + " "
                      for instructions in (ProposeInstructions.instructions, PROGRAM_PROPOSAL_INSTRUCTIONS))

# -- scaffolding headings (one line each) ----------------------------------------------------------------------------
_CHANGED = (r"(?:new|revised|updated|improved|rewritten|modified|refined|enhanced|amended|edited|adjusted|final|"
            r"current|previous|original|old|proposed|optimi[sz]ed|better)")
_VERSION_TITLE = r"(?:current[ \t]+version|version[ \t]*\d+)"
_PROMPT_TITLE = (rf"(?:{_CHANGED}[ \t]+(?:system[ \t]+)?prompt|(?:system[ \t]+)?prompt[ \t]+(?:after|before|history|"
                 r"v?\d+|version(?:[ \t]*\d+)?))")
_SNAKE_FIELDS = "|".join(re.escape(name) for name in [*ProposeInstructionsWithBudget.input_fields,
                                                      *ProposeInstructionsWithBudget.output_fields] if "_" in name)
# DSPy's own request wording ("Your output fields are: ..."), or one of the optimizer's field names quoted as code.
_ADAPTER_ECHO = re.compile(rf"\byour\s+(?:input|output)\s+fields\s+are\b|`(?:{_SNAKE_FIELDS})`", re.IGNORECASE)
_HEADING = re.compile(
    "|".join([
        rf"^[ \t>]*#{{1,6}}[ \t]*(?:\*\*|__)?[ \t]*(?:{_VERSION_TITLE}|{_PROMPT_TITLE})\b",  # markdown heading
        r"-{2,}[ \t]*(?:current[ \t]+)?version(?:[ \t]*\d+)?[ \t]*-{2,}",  # the paper-mode history markers
        # a line that is only the title (bold or not), or a prompt title or a numbered version and a colon
        rf"^[ \t>]*(?:\*\*|__)?[ \t]*{_VERSION_TITLE}[ \t]*(?:\*\*|__)?[ \t]*:?[ \t]*(?:\*\*|__)?[ \t]*$",
        rf"^[ \t>]*(?:\*\*|__)?[ \t]*(?:version[ \t]*\d+|{_PROMPT_TITLE})[ \t]*(?:\*\*|__)?[ \t]*(?::.*)?$",
        rf"^[ \t>]*(?:#{{1,6}}[ \t]*)?(?:\*\*|__)?(?:{_SNAKE_FIELDS})(?:\*\*|__)?[ \t]*(?::|$)",
    ]),
    re.IGNORECASE | re.MULTILINE,
)

# -- commentary about the prompt -------------------------------------------------------------------------------------
_NOUN = r"(?:prompt|version|revision|rewrite|draft)"
_REWRITTEN = (r"(?:new|revised|updated|improved|rewritten|modified|refined|enhanced|amended|edited|adjusted|final|"
              r"proposed|optimi[sz]ed|better)")
_CHANGE_VERB = (r"(?:revised|updated|improved|rewrote|rewritten|modified|refined|enhanced|changed|adjusted|edited|"
                r"simplified|expanded|streamlined|reworded|restructured|optimi[sz]ed)")
_OPENERS = re.compile(
    "|".join([
        # presenting a version: "Here is the new prompt", "Below is an improved version"
        rf"(?:here\s+is|here['’]s|below\s+is|(?:the\s+)?following\s+is)\s+(?:(?:the|a|an|my|our|your)"
        rf"\s+)?(?:{_CHANGED}\s+)*(?:system\s+)?{_NOUN}\b",
        # describing a version: "This revised prompt ...", "Your new system prompt ...", "The current system prompt
        # ...", "The new version ..."
        rf"(?:the|this|my|our|your)\s+(?:{_REWRITTEN}\s+)+(?:system\s+)?(?:prompt|revision|rewrite|draft)\b",
        rf"(?:the|this|my|our)\s+(?:{_CHANGED}\s+)+system\s+prompt\b",
        rf"(?:the|this|my|our)\s+(?:{_REWRITTEN}\s+)+version\b(?!\s+of\b)",
        rf"(?:the|this)\s+(?:system\s+)?prompt\s+(?:now|is\s+now|(?:was|were)\s+{_CHANGE_VERB}|improves|"
        r"adds|focuses|emphasi[sz]es|incorporates|builds\s+on|addresses|retains|keeps|removes|expands|refines)\b",
        # the optimizer speaking about its work: "I have updated the prompt ...", "We revised this version ..."
        rf"(?:i|we)\s+(?:have\s+|['’]ve\s+)?(?:{_CHANGE_VERB}|added|removed|merged|kept)\s+(?:(?:[\w'’-]+\s+){{0,5}}?"
        r"prompt|(?:the|this|my|our)\s+version)\b",
        r"in\s+this\s+(?:version|revision|update|iteration|rewrite)\b",
        rf"(?:changes|improvements|revisions|modifications)\s+(?:made\s*:|(?:made\s+)?(?:to|in)\s+(?:the|this)"
        rf"\s+(?:{_CHANGED}\s+)*(?:system\s+)?(?:prompt|version)\b)",
    ]),
    re.IGNORECASE,
)
_COMMENTARY_ANYWHERE = re.compile(
    rf"\b(?:the|this|that|my|our)\s+(?:{_CHANGED}\s+)*(?:system\s+)?prompt\s+(?:has|have)\s+been\s+"
    rf"(?:\w+\s+)?{_CHANGE_VERB}\b"
    rf"|\bversion(?:\s*\d+)?\s+of\s+(?:the|this|my|our)\s+(?:{_CHANGED}\s+)*(?:system\s+)?prompt\b",
    re.IGNORECASE,
)
_SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+|\n+")
_SENTENCE_LEAD = "#*_>\"'“”‘’-–—•` \t"


def _sentences(text: str) -> list[str]:
    return [sentence.lstrip(_SENTENCE_LEAD) for sentence in _SENTENCE_BREAK.split(text)]


def _restates_the_task(text: str) -> bool:
    """Whether a sentence opens as the optimizer's own instructions do ("You improve the system prompt ...")."""
    return any(f"{_squash(sentence)} ".startswith(_TASK_OPENERS) for sentence in _sentences(text))


def _is_commentary(text: str) -> bool:
    if _COMMENTARY_ANYWHERE.search(text):
        return True
    return any(_OPENERS.match(sentence) for sentence in _sentences(text))


# -- copies of the query ---------------------------------------------------------------------------------------------
@lru_cache(maxsize=256)
def _words_and_grams(text: str) -> tuple[str, tuple[str, ...], frozenset[tuple[str, ...]]]:
    """The normalised text, its words, its runs of ``MIN_COPIED_WORDS`` words (cached: a text meets many queries)."""
    squashed = _squash(text)
    words = tuple(squashed.split())
    n = MIN_COPIED_WORDS
    return squashed, words, frozenset(tuple(words[i:i + n]) for i in range(len(words) - n + 1))


def _longest_shared_run(query_words: list[str], text_words: tuple[str, ...], text_grams: frozenset) -> int:
    """The longest run of consecutive words the two share (0 when none reaches ``MIN_COPIED_WORDS``)."""
    n = MIN_COPIED_WORDS
    if not any(tuple(query_words[i:i + n]) in text_grams for i in range(len(query_words) - n + 1)):
        return 0
    matcher = SequenceMatcher(None, query_words, text_words, autojunk=False)
    return matcher.find_longest_match(0, len(query_words), 0, len(text_words)).size


def copies_query(text: str, query: str) -> bool:
    """Whether ``text`` holds ``query`` verbatim or near-verbatim (case, whitespace and punctuation normalised), or a
    long run of its words (see the module docstring)."""
    squashed_text, text_words, text_grams = _words_and_grams(text)
    squashed_query = _squash(query)
    if len(squashed_query) >= MIN_QUERY_CHARS and f" {squashed_query} " in f" {squashed_text} ":
        return True
    query_words = squashed_query.split()
    run = _longest_shared_run(query_words, text_words, text_grams)
    return run >= LONG_COPY_WORDS or (run >= MIN_COPIED_WORDS and run >= MIN_COPIED_SHARE * len(query_words))


def clean_rewrite(text: str | None) -> str:
    """The proposed prompt with surrounding whitespace and quotes removed."""
    return (text or "").strip().strip('"').strip()


def _is_code(text: str) -> bool:
    """Code with no word outside its fences: a fence names a language, or code punctuation sits outside it (a prompt
    merely wrapped in a bare fence is kept)."""
    fences = list(_CODE_FENCE.finditer(text))
    if not fences:
        return False
    outside = _CODE_FENCE.sub(" ", text)
    return not _WORD.search(outside) and (any(f.group(1) for f in fences) or bool(outside.strip()))


def prompt_problem(text: str, query: str = "", inputs: Sequence[str] = ()) -> str | None:
    """Why a proposed system prompt cannot be one (see the module docstring), or None.

    ``query`` is the query the optimizer was shown when it wrote ``text``; ``inputs`` the other texts it read besides
    the current prompt (the answer, the prompt budget)."""
    if not text:
        return "empty_prompt"
    if len(text) < MIN_PROMPT_CHARS:
        return "too_short_prompt"
    if not _LETTER.search(text):
        return "no_words_prompt"
    if _is_code(text):
        return "code_prompt"
    if _TEMPLATE_ECHO.search(text) or _ADAPTER_ECHO.search(text) or _squash(text) in _FIELD_DESCRIPTIONS \
            or _restates_the_task(text):
        return "template_echo_prompt"
    if any(_squash(text) == _squash(value) for value in inputs if _squash(value)):
        return "input_echo_prompt"
    if _HEADING.search(text):
        return "scaffolding_heading_prompt"
    lines = [line for line in text.splitlines() if line.strip()]
    if all(_HEADING_LINE.match(line) for line in lines):
        return "heading_only_prompt"
    if _is_commentary(text):
        return "commentary_prompt"
    if query and copies_query(text, query):
        return "query_specific_prompt"
    return None
