"""Which proposed system prompts cannot be one: the narrow filter applied to the optimizer's rewrites.

A rewrite is dropped, with its reason recorded in the trace, only when it cannot serve as a system prompt:

- ``empty_prompt`` / ``too_short_prompt``: nothing (or under 3 characters) is left after stripping quotes;
- ``template_echo_prompt``: the optimizer copied the request back: DSPy's field markers (``[[ ## name ## ]]``), a
  placeholder naming one of the optimizer's own fields (``{new_system_prompt}``), or a field description verbatim;
- ``query_specific_prompt``: the prompt quotes the level's query (12 characters or more), so it is about this query
  rather than general.

Wording alone drops nothing: a prompt may mention JSON, output fields, ``<START>``/``<END>`` or braces. Paper mode
(``DRPO(paper_mode=True)``) and ``DRPO(rewrite_filter=False)`` keep every readable non-empty rewrite, as the
original code does.
"""

from __future__ import annotations

import re

from drpo_dspy.signatures import ProposeInstructions

MIN_PROMPT_CHARS = 3
MIN_QUERY_CHARS = 12

_FIELDS = [*ProposeInstructions.input_fields, *ProposeInstructions.output_fields]
_TEMPLATE_ECHO = re.compile(r"\[\[ ## [a-z_]+ ## \]\]|\{(?:" + "|".join(map(re.escape, _FIELDS)) + r")\}")


def _squash(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()


_FIELD_DESCRIPTIONS = {
    _squash((info.json_schema_extra or {}).get("desc", ""))
    for info in [*ProposeInstructions.input_fields.values(), *ProposeInstructions.output_fields.values()]
}


def clean_rewrite(text: str | None) -> str:
    """The proposed prompt with surrounding whitespace and quotes removed."""
    return (text or "").strip().strip('"').strip()


def prompt_problem(text: str, query: str = "") -> str | None:
    """Why a proposed system prompt cannot be one (see the module docstring), or None."""
    if not text:
        return "empty_prompt"
    if len(text) < MIN_PROMPT_CHARS:
        return "too_short_prompt"
    if _TEMPLATE_ECHO.search(text) or _squash(text) in _FIELD_DESCRIPTIONS:
        return "template_echo_prompt"
    if len(query.strip()) >= MIN_QUERY_CHARS and query.strip().lower() in text.lower():
        return "query_specific_prompt"
    return None
