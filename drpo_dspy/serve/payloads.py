"""OpenAI response bodies: chat completions, text completions, their stream chunks, the model list."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

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


def completion_body(kind: str, program: LoadedProgram, answers: list[tuple[str, str]], tokens: tuple[int, int]
                    ) -> dict[str, Any]:
    """A whole response: one choice per ``(answer, finish_reason)``. An empty answer keeps the upstream's
    ``finish_reason`` (``length``: the cap was reached before any answer text; ``stop``: the model ended at once) and
    says so in an extra ``drpo_empty_answer`` field on its choice (clients ignore fields they do not know)."""
    body = _envelope(kind, program, new_id(kind), int(time.time()), chunk=False)
    if kind == "chat":
        body["choices"] = [{"index": i, "message": {"role": "assistant", "content": text}, "logprobs": None,
                            "finish_reason": reason} for i, (text, reason) in enumerate(answers)]
    else:
        body["choices"] = [{"index": i, "text": text, "logprobs": None, "finish_reason": reason}
                           for i, (text, reason) in enumerate(answers)]
    for choice, (text, reason) in zip(body["choices"], answers):
        if not text.strip():
            choice["drpo_empty_answer"] = EMPTY_REASONS.get(reason, EMPTY_REASONS["stop"])
    body["usage"] = usage(*tokens)
    return body


class ChunkWriter:
    """Server-sent events for one streamed response (OpenAI chunk shapes, ``data: [DONE]`` at the end)."""

    def __init__(self, kind: str, program: LoadedProgram):
        self.kind, self.program = kind, program
        self.request_id, self.created = new_id(kind), int(time.time())

    def _event(self, body: dict[str, Any]) -> str:
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    def chunk(self, text: str | None, finish_reason: str | None = None, *, role: bool = False) -> str:
        body = _envelope(self.kind, self.program, self.request_id, self.created, chunk=True)
        if self.kind == "chat":
            delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else {}
            if text:
                delta["content"] = text
            body["choices"] = [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]
        else:
            body["choices"] = [{"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish_reason}]
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
