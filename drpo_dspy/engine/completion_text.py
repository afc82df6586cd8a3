"""The text of an embedded-model completion, assembled token by token as ``llama_cpp.Llama.create_completion`` does.

The parallel decoders (``workers.py``) sample tokens itself, so they must turn them into the same text and
finish reason as llama-cpp-python's non-streaming completion: an end-of-generation token stops without being
counted; a token that ends inside a multi-byte UTF-8 character defers the stop-string and length checks; the first
stop string found cuts the text; ``max_tokens`` ends it with ``"length"``; a stopping criterion (the chat template's
stop tokens) is asked about the tokens evaluated so far before each token is taken, and once more at the end.

For streaming, ``certain()`` is the part of the text the finished completion is sure to start with: the text so far
less a tail that could still begin a stop string (the stop would cut there), as of the last token whose checks ran.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class Sample:
    """One generated completion."""

    text: str
    finish_reason: str
    completion_tokens: int


_NO_LOGITS = np.zeros(0, dtype=np.float32)


def _vocab_is_eog(llm: Any) -> Callable[[int], bool]:
    import llama_cpp

    vocab = llm._model.vocab
    return lambda token: bool(llama_cpp.llama_vocab_is_eog(vocab, token))


def _open_stop(text: bytes, stops: list[bytes]) -> int:
    """Length of the longest tail of ``text`` that is the beginning of a stop string (none is in ``text``)."""
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:size]):
                longest = size
                break
    return longest


class CompletionText:
    """Feed sampled tokens with ``add``; it says when the completion is over, and ``sample()`` gives the result."""

    def __init__(self, llm: Any, prompt: list[int], *, stop: list[str], stopping: Any, max_tokens: int,
                 is_eog: Callable[[int], bool] | None = None) -> None:
        self._llm = llm
        self._is_eog = is_eog or _vocab_is_eog(llm)
        self.prompt = prompt
        self.stop = [s.encode("utf-8") for s in stop]
        self.stopping = stopping
        self.max_tokens = max_tokens
        self.tokens: list[int] = []  # the completion's tokens (an end-of-generation token is not one)
        self._evaluated = 0  # completion tokens evaluated by the model (all but the last one taken)
        self._text = b""
        self._finish = "length"
        self._multibyte_fix = 0
        self._checked = b""  # the text as of the last stop-string check
        self._certain = 0  # bytes of it the finished text will start with
        self.done = False

    def _criteria(self) -> bool:
        if self.stopping is None:
            return False
        ids = np.asarray(self.prompt + self.tokens[: self._evaluated], dtype=np.intc)
        return bool(self.stopping(ids, _NO_LOGITS))

    def add(self, token: int) -> bool:
        """Take one sampled token; True when the completion is finished (then ``token`` is not to be evaluated)."""
        if self.done:
            raise RuntimeError("the completion is already finished")
        self._evaluated = len(self.tokens)
        if self._criteria():  # llama-cpp-python's generator returns before yielding this token
            return self._end()
        if self._is_eog(token):
            self._text = self._detokenize()
            self._finish = "stop"
            return self._end()
        self.tokens.append(token)
        text = self._detokenize()
        for k, char in enumerate(text[-3:]):
            k = 3 - k
            for num, pattern in ((2, 192), (3, 224), (4, 240)):
                if num > k and pattern & char == pattern:
                    self._multibyte_fix = num - k
        if self._multibyte_fix > 0:
            self._multibyte_fix -= 1
            return False
        found = [s for s in self.stop if s in text]
        if found:
            self._text = text[: text.index(found[0])]
            self._finish = "stop"
            return self._end()
        self._checked, self._certain = text, len(text) - _open_stop(text, self.stop)
        if len(self.tokens) >= self.max_tokens:
            self._text = text
            self._finish = "length"
            return self._end()
        return False

    def certain(self) -> bytes:
        """The text's bytes that are final whatever comes next (all of them once the completion is finished)."""
        return self._text if self.done else self._checked[: self._certain]

    def _detokenize(self) -> bytes:
        return self._llm.detokenize(self.tokens, prev_tokens=self.prompt)

    def _end(self) -> bool:
        if self._criteria():
            self._text = self._detokenize()
            self._finish = "stop"
        self.done = True
        return True

    def sample(self) -> Sample:
        """The finished completion: text, finish reason, completion tokens."""
        if not self.done:
            raise RuntimeError("the completion is not finished")
        return Sample(self._text.decode("utf-8", errors="ignore"), self._finish, len(self.tokens))
