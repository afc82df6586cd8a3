"""DRPO's prompt layout, as a DSPy adapter.

System part: the alignment instructions, then each retrieved example as
``# Query:`` / ``# Answer:`` with the answer between ``<START>`` and ``<END>``. User part: the live
query followed by ``# Answer:\\n<START>``. Generation stops at ``<END>``. Text-completion (base) models
receive the two parts concatenated into one prompt (see :func:`drpo_dspy.clients.raw_text.raw_completion_lm`).

Conversations: the earlier turns follow the system part as chat turns, each user turn laid out like the live
query (``# Query:`` ... ``<START>``) and each assistant turn as the answer closed by ``<END>``, so a text model
reading the concatenation sees one continuous DRPO document. Without history the layout is unchanged.

``paper=True`` gives the original code's search-time layout byte for byte: a ``# instructions`` header, the
examples joined with its ``#Query:``/``#Answer:`` spellings, and the user part ending at ``<START>``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import dspy

START, END = "<START>", "<END>"
STOP_SEQUENCES = (END, "<END", "<|eot_id|>")


def format_example(query: str, answer: str) -> str:
    """One in-context example in the DRPO layout."""
    return f"# Query:\n{query}\n\n# Answer:\n{START}\n{answer.strip()}\n{END}\n\n"


def system_part(instructions: str, examples: Iterable[tuple[str, str]]) -> str:
    """The system message: instructions followed by the examples."""
    return f"{instructions.strip()}\n\n" + "".join(format_example(q, a) for q, a in examples)


def user_part(query: str) -> str:
    """The user message: the live query, opening the answer."""
    return f"# Query:\n{query}\n\n# Answer:\n{START}\n"


def assistant_part(answer: str) -> str:
    """An earlier assistant turn of a conversation: the answer, closed like an example's."""
    return f"{answer.strip()}\n{END}\n\n"


def history_messages(turns: Iterable[tuple[str, str]]) -> list[dict[str, str]]:
    """Earlier ``(user, assistant)`` turns as chat messages in the DRPO layout."""
    messages = []
    for query, answer in turns:
        messages.append({"role": "user", "content": user_part(query)})
        messages.append({"role": "assistant", "content": assistant_part(answer)})
    return messages


def paper_system_part(instructions: str, examples: Iterable[tuple[str, str]]) -> str:
    """The original code's system part during the search (its spacing and header spellings kept)."""
    shown = [f"{q}\n\n#Answer:\n{START}\n{a.strip()}\n{END}" for q, a in examples]
    body = "# Query:\n" + "\n\n#Query:\n".join(shown) if shown else ""
    return f"# instructions\n\n{instructions}\n\n{body}\n\n" if shown else f"# instructions\n\n{instructions}\n\n"


def paper_user_part(query: str) -> str:
    """The original code's user part: the query, opening the answer at ``<START>``."""
    return f"# Query:\n{query}\n\n# Answer:\n{START}"


def build_messages(instructions: str, examples: Iterable[tuple[str, str]], query: str, *,
                   history: Sequence[tuple[str, str]] = (), paper: bool = False) -> list[dict[str, str]]:
    """Chat messages in the DRPO layout: system part, earlier ``(user, assistant)`` turns of a conversation
    (``history``), the live query (``paper=True``: the original code's search-time layout, single-turn only)."""
    examples = list(examples)
    if paper:
        if history:
            raise ValueError("the paper layout is single-turn: it has no place for a conversation's earlier turns")
        return [{"role": "system", "content": paper_system_part(instructions, examples)},
                {"role": "user", "content": paper_user_part(query)}]
    return [
        {"role": "system", "content": system_part(instructions, examples)},
        *history_messages(history),
        {"role": "user", "content": user_part(query)},
    ]


def extract_answer(completion: str) -> str:
    """The answer is the text before the first end marker, stripped (and without a leading start marker)."""
    text = completion or ""
    for stop in STOP_SEQUENCES:
        cut = text.find(stop)
        if cut != -1:
            text = text[:cut]
    text = text.strip()
    if text.startswith(START):
        text = text[len(START):].strip()
    return text


class DRPOLayoutAdapter(dspy.Adapter):
    """Formats a ``query -> response`` call in the DRPO layout; demos are ``{query, response}`` examples.

    The signature's instructions are the alignment system prompt. Parsing never fails on content: whatever
    the model writes up to ``<END>`` is the response. ``paper=True`` uses the original search-time layout.
    ``history`` holds the earlier ``(user, assistant)`` turns of the conversation being answered.
    """

    def __init__(self, *, paper: bool = False, history: Sequence[tuple[str, str]] = (), **kwargs: Any):
        super().__init__(**kwargs)
        self.paper = paper
        self.history = tuple(history)

    def format(self, signature: type[dspy.Signature], demos: list[Mapping[str, Any]], inputs: Mapping[str, Any]):
        examples = [(str(d["query"]), str(d.get("response", d.get("answer", "")))) for d in demos]
        return build_messages(signature.instructions, examples, str(inputs["query"]), history=self.history,
                              paper=self.paper)

    def parse(self, signature: type[dspy.Signature], completion: str) -> dict[str, Any]:
        return {"response": extract_answer(completion)}
