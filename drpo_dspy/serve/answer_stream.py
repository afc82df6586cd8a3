"""Incremental answer extraction: stream exactly the text ``extract_answer`` returns for the whole completion.

The answer is the completion up to the first end marker (any spelling) or heading, stripped, without start markers
or a leading ``# Answer:`` (:func:`~drpo_dspy.adapters.drpo_layout.extract_answer`). While text arrives, anything
that could still turn out to be layout text or trailing whitespace is held back, so the concatenated deltas always
equal the non-streamed answer. ``parts`` chooses how the answer is read (:data:`drpo_dspy.serve.answers.PARTS`:
the DRPO layout's, the plain layout's, or structured output's); the default is the DRPO layout's.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from drpo_dspy.adapters.drpo_layout import answer_parts

_LEADS = ("<start>", "# answer:", "# query:")
# A tail that may still grow into an end marker ("<", "<En", "</e", "<|eot_id") or a heading ("\n#", "\n# Que").
_OPEN_MARKER = re.compile(r"<[^<>]{0,12}$")
_OPEN_HEADING = re.compile(r"\n[ \t]*(?:#+[ \t]*[A-Za-z]{0,6}[ \t]*)?$")


def _held_tail(text: str) -> int:
    """How many trailing characters could still turn into layout text."""
    cuts = [m.start() for m in (_OPEN_MARKER.search(text), _OPEN_HEADING.search(text)) if m]
    return len(text) - min(cuts) if cuts else 0


class AnswerStream:
    """Feed raw completion deltas with :meth:`feed`; each call returns the answer text that is now certain."""

    def __init__(self, parts: Callable[[str], tuple[str, bool]] = answer_parts) -> None:
        self.parts = parts
        self.raw = ""
        self.sent = ""
        self.stopped = False  # an end marker was seen: the answer is complete

    def _answer_so_far(self, final: bool) -> str | None:
        answer, ended = self.parts(self.raw)
        if ended:
            self.stopped = True
            return answer
        if final:
            return answer
        head = self.raw.lstrip().lower()
        if self.parts is answer_parts and any(lead.startswith(head[: len(lead)]) and len(head) < len(lead)
                                              for lead in _LEADS):
            return None  # may still be a leading "<START>" or "# Answer:"
        return self.parts(self.raw[: len(self.raw) - _held_tail(self.raw)])[0]

    def _advance(self, final: bool) -> str:
        if self.stopped:
            return ""
        answer = self._answer_so_far(final)
        if answer is None or len(answer) <= len(self.sent):
            return ""
        delta = answer[len(self.sent):]
        self.sent = answer
        return delta

    def feed(self, delta: str) -> str:
        if self.stopped or not delta:
            return ""
        self.raw += delta
        return self._advance(final=False)

    def finish(self) -> str:
        """The rest of the answer once the completion has ended."""
        return self._advance(final=True)
