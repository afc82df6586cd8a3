"""Keeping user-controlled text inside its field of a DSPy prompt.

DSPy's chat and JSON adapters send every input field as a ``[[ ## name ## ]]`` section and read the reply by the
same markers. A training query or a model's answer that contains such a marker (``[[ ## evaluations ## ]]``,
``[[ ## completed ## ]]``) could make the judge, the aspect selector or the optimizer read part of the data as
another field, or as an already written verdict. ``neutralize_field_markers`` rewrites any such marker (spacing
and the number of ``#`` varied as a model might) into ``[ ## name ## ]``, which looks alike to a reader but is
not a marker; all other text, quotes and braces included, is passed through unchanged (input fields are plain
text sections, so ``"}`` cannot close anything).
"""

from __future__ import annotations

import re

_MARKER = re.compile(r"\[\[\s*#+\s*([^\[\]\n]{0,80}?)\s*#+\s*\]\]")


def neutralize_field_markers(text: str) -> str:
    """``text`` with every adapter field marker defused (``[[ ## x ## ]]`` becomes ``[ ## x ## ]``)."""
    if not isinstance(text, str) or "[[" not in text:
        return text
    return _MARKER.sub(lambda m: f"[ ## {m.group(1).strip()} ## ]", text)
