"""DRPO's prompt layout, as a DSPy adapter.

System part: the alignment instructions, then each retrieved example as
``# Query:`` / ``# Answer:`` with the answer between ``<START>`` and ``<END>``. User part: the live
query followed by ``# Answer:\\n<START>``. Generation stops at ``<END>``. Text-completion (base) models
receive the two parts concatenated into one prompt (see :func:`drpo_dspy.clients.raw_text.raw_completion_lm`).

Conversations: the earlier turns follow the system part as chat turns, each user turn laid out like the live
query (``# Query:`` ... ``<START>``) and each assistant turn as the answer closed by ``<END>``, so a text model
reading the concatenation sees one continuous DRPO document. Without history the layout is unchanged.

Layouts (``layout=``): the live query's user turn ends differently.

- ``"plain"`` (the default): ``# Answer:\n`` and nothing after it, and no ``<START>``/``<END>`` markers around the
  examples' answers either. Ending the turn at ``<START>`` invites models to "close" the marker at once (the first
  tokens ``<``, ``END``, ``>``: an empty answer), and a base model shown markered examples writes ``<START>`` and then
  stops or loops on it. Generation stops at a ``# Query:`` or ``# Answer:`` heading on a new line, where a model
  would go on writing the next example. Measured in ``bench/bench_layout.py`` (BENCHMARKS.md): the fewest empty and
  leaked answers on both embedded models.
- ``"open"``: the user turn ends at ``# Answer:\n``, the examples keep their markers.
- ``"marked"``: the user turn ends ``# Answer:\n<START>\n`` (the layout before ``"plain"``, kept to compare).

``paper=True`` gives the original code's search-time layout byte for byte: a ``# instructions`` header, the
examples joined with its ``#Query:``/``#Answer:`` spellings, and the user part ending at ``<START>``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import dspy

START, END = "<START>", "<END>"
LAYOUTS = ("plain", "open", "marked")
DEFAULT_LAYOUT = "plain"
# At most four: OpenAI-compatible servers accept no more. "<END" also stops "<END>" and "<END …".
STOP_SEQUENCES = ("<END", "\n# Query:", "\n# Answer:", "<|eot_id|>")
PAPER_STOP_SEQUENCES = (END, "<END", "<|eot_id|>")
# Layout text that never belongs in an answer: an end marker in any case or spelling, a query or answer heading.
_ANSWER_END = re.compile(r"<\s*/?\s*end\s*>?|<\|(?:eot_id|im_end|endoftext)\|>|<end_of_turn>"
                         r"|(?:^|\n)[ \t]*#+[ \t]*(?:query|answer)[ \t]*:", re.IGNORECASE)
_START_MARKER = re.compile(r"<\s*start\s*>", re.IGNORECASE)
_ANSWER_HEADING = re.compile(r"^[ \t]*#+[ \t]*answer[ \t]*:[ \t]*", re.IGNORECASE)
# A completion that opens by restating the query ("# Query:\n<the query>\n\n"): up to a blank line or an answer
# heading (or the end, while the query is still being written).
_QUERY_ECHO = re.compile(r"#+[ \t]*query[ \t]*:.*?(?:\n[ \t]*\n|(?=\n[ \t]*#+[ \t]*answer[ \t]*:)|\Z)",
                         re.IGNORECASE | re.DOTALL)


def check_layout(layout: Any) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(map(repr, LAYOUTS))}, got {layout!r}")


def stop_sequences(paper: bool = False) -> list[str]:
    """The stop sequences sent with every answer call (the paper layout's: the original's end markers)."""
    return list(PAPER_STOP_SEQUENCES if paper else STOP_SEQUENCES)


def format_example(query: str, answer: str, layout: str = DEFAULT_LAYOUT) -> str:
    """One in-context example in the DRPO layout."""
    if layout == "plain":
        return f"# Query:\n{query}\n\n# Answer:\n{answer.strip()}\n\n"
    return f"# Query:\n{query}\n\n# Answer:\n{START}\n{answer.strip()}\n{END}\n\n"


def system_part(instructions: str, examples: Iterable[tuple[str, str]], layout: str = DEFAULT_LAYOUT) -> str:
    """The system message: instructions followed by the examples."""
    return f"{instructions.strip()}\n\n" + "".join(format_example(q, a, layout) for q, a in examples)


def user_part(query: str, layout: str = DEFAULT_LAYOUT) -> str:
    """The user message: the live query, opening the answer."""
    return f"# Query:\n{query}\n\n# Answer:\n{START}\n" if layout == "marked" else f"# Query:\n{query}\n\n# Answer:\n"


def assistant_part(answer: str, layout: str = DEFAULT_LAYOUT) -> str:
    """An earlier assistant turn of a conversation: the answer, closed like an example's."""
    if layout == "plain":
        return f"{answer.strip()}\n\n"
    return f"{START}\n{answer.strip()}\n{END}\n\n" if layout == "open" else f"{answer.strip()}\n{END}\n\n"


def history_messages(turns: Iterable[tuple[str, str]], layout: str = DEFAULT_LAYOUT) -> list[dict[str, str]]:
    """Earlier ``(user, assistant)`` turns as chat messages in the DRPO layout."""
    messages = []
    for query, answer in turns:
        messages.append({"role": "user", "content": user_part(query, layout)})
        messages.append({"role": "assistant", "content": assistant_part(answer, layout)})
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
                   history: Sequence[tuple[str, str]] = (), paper: bool = False,
                   layout: str = DEFAULT_LAYOUT) -> list[dict[str, str]]:
    """Chat messages in the DRPO layout: system part, earlier ``(user, assistant)`` turns of a conversation
    (``history``), the live query (``paper=True``: the original code's search-time layout, single-turn only)."""
    examples = list(examples)
    if paper:
        if history:
            raise ValueError("the paper layout is single-turn: it has no place for a conversation's earlier turns")
        return [{"role": "system", "content": paper_system_part(instructions, examples)},
                {"role": "user", "content": paper_user_part(query)}]
    check_layout(layout)
    return [
        {"role": "system", "content": system_part(instructions, examples, layout)},
        *history_messages(history, layout),
        {"role": "user", "content": user_part(query, layout)},
    ]


def extract_answer(completion: str, paper: bool = False) -> str:
    """The answer: the text before the first end marker (any case or spelling: ``<END>``, ``<End>``, ``</END>``)
    or next ``# Query:`` heading, without start markers or a leading ``# Answer:`` heading, stripped.

    ``paper=True`` reads as the original code does: the text before the first ``<END>``, without a leading
    ``<START>``."""
    text = completion or ""
    if paper:
        for stop in PAPER_STOP_SEQUENCES:
            cut = text.find(stop)
            if cut != -1:
                text = text[:cut]
        text = text.strip()
        return text[len(START):].strip() if text.startswith(START) else text
    return answer_parts(text)[0]


def answer_parts(completion: str) -> tuple[str, bool]:
    """``(answer, ended)``: the answer as :func:`extract_answer` reads it, and whether the completion has reached
    the answer's end (a marker or a heading), so that nothing after it can change the answer."""
    text = _ANSWER_HEADING.sub("", _START_MARKER.sub("", completion or "").lstrip(), count=1)
    echo = _QUERY_ECHO.match(text)
    if echo:  # the model restated the query in the layout before answering: the answer follows it
        text = _ANSWER_HEADING.sub("", text[echo.end():].lstrip(), count=1)
    end = _ANSWER_END.search(text)
    return (text if end is None else text[: end.start()]).strip(), end is not None


def leaked_layout(answer: str) -> bool:
    """True when an answer still holds layout text (a marker or a query/answer heading)."""
    return bool(re.search(r"<\s*/?\s*(?:start|end)\s*>|(?:^|\n)[ \t]*#+[ \t]*(?:query|answer)[ \t]*:",
                          answer or "", re.IGNORECASE))


class DRPOLayoutAdapter(dspy.Adapter):
    """Formats a ``query -> response`` call in the DRPO layout; demos are ``{query, response}`` examples.

    The signature's instructions are the alignment system prompt. Parsing never fails on content: whatever
    the model writes up to ``<END>`` is the response. ``paper=True`` uses the original search-time layout.
    ``history`` holds the earlier ``(user, assistant)`` turns of the conversation being answered.
    """

    def __init__(self, *, paper: bool = False, history: Sequence[tuple[str, str]] = (),
                 layout: str = DEFAULT_LAYOUT, **kwargs: Any):
        super().__init__(**kwargs)
        check_layout(layout)
        self.paper = paper
        self.history = tuple(history)
        self.layout = layout

    def format(self, signature: type[dspy.Signature], demos: list[Mapping[str, Any]], inputs: Mapping[str, Any]):
        examples = [(str(d["query"]), str(d.get("response", d.get("answer", "")))) for d in demos]
        return build_messages(signature.instructions, examples, str(inputs["query"]), history=self.history,
                              paper=self.paper, layout=self.layout)

    def parse(self, signature: type[dspy.Signature], completion: str) -> dict[str, Any]:
        return {"response": extract_answer(completion, paper=self.paper)}
