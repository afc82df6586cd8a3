"""Incremental answer extraction: stream exactly the text ``extract_answer`` returns for the whole completion.

The answer is the completion up to the first end marker, stripped, without a leading ``<START>``. While text
arrives, anything that could still turn out to be the start of a marker, leading ``<START>`` or trailing
whitespace is held back, so the concatenated deltas always equal the non-streamed answer.
"""

from __future__ import annotations

from drpo_dspy.adapters.drpo_layout import START, STOP_SEQUENCES


def _held_suffix(text: str, markers: tuple[str, ...]) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of some marker."""
    longest = 0
    for marker in markers:
        for size in range(min(len(marker) - 1, len(text)), longest, -1):
            if text.endswith(marker[:size]):
                longest = size
                break
    return longest


class AnswerStream:
    """Feed raw completion deltas with :meth:`feed`; each call returns the answer text that is now certain."""

    def __init__(self, stops: tuple[str, ...] = STOP_SEQUENCES):
        self.stops = tuple(stops)
        self.raw = ""
        self.sent = ""
        self.stopped = False  # an end marker was seen: the answer is complete

    def _answer_so_far(self, final: bool) -> str | None:
        text = self.raw.lstrip()
        if not final and START.startswith(text) and len(text) < len(START):
            return None  # still could be "<START>"
        cuts = [i for i in (text.find(stop) for stop in self.stops) if i != -1]
        if cuts:
            self.stopped = True
            body = text[: min(cuts)].strip()
            return body[len(START):].strip() if body.startswith(START) else body
        if text.startswith(START):
            text = text[len(START):].lstrip()
        if final:
            return text.rstrip()
        text = text[: len(text) - _held_suffix(text, self.stops)]
        return text.rstrip()

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
