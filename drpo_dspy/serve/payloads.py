"""OpenAI response bodies: chat completions, text completions, their stream chunks, the model list."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from typing import Any

from drpo_dspy.serve.answers import Answer, Logprob
from drpo_dspy.serve.programs import LoadedProgram


def new_id(kind: str) -> str:
    return f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def _envelope(kind: str, program: LoadedProgram, request_id: str, created: int, *, chunk: bool) -> dict[str, Any]:
    obj = {"chat": "chat.completion", "text": "text_completion"}[kind] + (".chunk" if chunk and kind == "chat" else "")
    return {"id": request_id, "object": obj, "created": created, "model": program.name,
            "system_fingerprint": program.version}


EMPTY_REASONS = {
    "length": "the answer cap was reached before any answer text (raise max_tokens)",
    "stop": "the model ended its answer before writing anything",
}


def logprobs_body(kind: str, items: list[Logprob] | None) -> dict[str, Any] | None:
    """Trimmed logprobs as OpenAI writes them: chat ``{"content": [entries]}``; text completions the legacy
    ``{tokens, token_logprobs, top_logprobs, text_offset}`` (offsets from the start of the returned text)."""
    if items is None:
        return None
    if kind == "chat":
        return {"content": [entry for entry, _offset in items], "refusal": None}
    return {"tokens": [entry.get("token") for entry, _ in items],
            "token_logprobs": [entry.get("logprob") for entry, _ in items],
            "top_logprobs": [{top.get("token"): top.get("logprob") for top in entry.get("top_logprobs") or ()}
                             for entry, _ in items],
            "text_offset": [max(0, offset) for _, offset in items]}


def _message(answer: Answer) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": answer.text if answer.text or not answer.tool_calls
                               else None}
    if answer.tool_calls:
        message["tool_calls"] = answer.tool_calls
    return message


def completion_body(kind: str, program: LoadedProgram, answers: Sequence[Answer | tuple[str, str]],
                    tokens: tuple[int, int]) -> dict[str, Any]:
    """A whole response: one choice per answer (or ``(text, finish_reason)``). An empty answer without tool calls
    keeps the upstream's ``finish_reason`` (``length``: the cap was reached before any answer text; ``stop``: the
    model ended at once) and says so in an extra ``drpo_empty_answer`` field on its choice (clients ignore fields
    they do not know)."""
    answers = [a if isinstance(a, Answer) else Answer(*a) for a in answers]
    body = _envelope(kind, program, new_id(kind), int(time.time()), chunk=False)
    if kind == "chat":
        body["choices"] = [{"index": i, "message": _message(a), "logprobs": logprobs_body(kind, a.logprobs),
                            "finish_reason": a.finish_reason} for i, a in enumerate(answers)]
    else:
        body["choices"] = [{"index": i, "text": a.text, "logprobs": logprobs_body(kind, a.logprobs),
                            "finish_reason": a.finish_reason} for i, a in enumerate(answers)]
    for choice, answer in zip(body["choices"], answers):
        if not answer.text.strip() and not answer.tool_calls:
            choice["drpo_empty_answer"] = EMPTY_REASONS.get(answer.finish_reason, EMPTY_REASONS["stop"])
    body["usage"] = usage(*tokens)
    return body


class ChunkWriter:
    """Server-sent events for one streamed response (OpenAI chunk shapes, ``data: [DONE]`` at the end)."""

    def __init__(self, kind: str, program: LoadedProgram):
        self.kind, self.program = kind, program
        self.request_id, self.created = new_id(kind), int(time.time())

    def _event(self, body: dict[str, Any]) -> str:
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    def chunk(self, text: str | None, finish_reason: str | None = None, *, role: bool = False, index: int = 0,
              tool_calls: list[dict[str, Any]] | None = None, logprobs: list[Logprob] | None = None) -> str:
        body = _envelope(self.kind, self.program, self.request_id, self.created, chunk=True)
        shown = logprobs_body(self.kind, logprobs)
        if self.kind == "chat":
            delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else {}
            if text:
                delta["content"] = text
            if tool_calls:
                delta["tool_calls"] = tool_calls
            body["choices"] = [{"index": index, "delta": delta, "logprobs": shown, "finish_reason": finish_reason}]
        else:
            body["choices"] = [{"index": index, "text": text or "", "logprobs": shown,
                                "finish_reason": finish_reason}]
        return self._event(body)

    def usage_chunk(self, tokens: tuple[int, int]) -> str:
        body = _envelope(self.kind, self.program, self.request_id, self.created, chunk=True)
        body["choices"] = []
        body["usage"] = usage(*tokens)
        return self._event(body)

    def error(self, body: dict[str, Any]) -> str:
        return self._event(body)

    @staticmethod
    def done() -> str:
        return "data: [DONE]\n\n"


def model_card(program: LoadedProgram) -> dict[str, Any]:
    return {"id": program.name, "object": "model", "created": int(program.loaded_at), "owned_by": "drpo",
            "version": program.version}


def program_headers(program: LoadedProgram) -> dict[str, str]:
    """Response headers naming which program version answered."""
    return {"X-DRPO-Program": program.name, "X-DRPO-Program-Version": program.version}
