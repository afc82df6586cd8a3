"""AlignedResponder answers the last turn of a conversation in the DRPO layout; ``messages_for`` is what it sends."""

from __future__ import annotations

import asyncio

import dspy
import litellm
import pytest

from drpo_dspy import AlignedResponder
from drpo_dspy.adapters.drpo_layout import build_messages
from drpo_dspy.primitives.fidelity import PAPER
from drpo_dspy.serve.conversation import Conversation, conversation_messages, example_pairs, layout_messages
from drpo_dspy.testing import last_user_text, scripted_lm

EXAMPLES = [
    {"query": "How do volcanoes form?", "answer": "Magma rises through the crust."},
    {"query": "Write a haiku about rain.", "answer": "Soft rain on the roof"},
    {"query": "How can I break into my neighbour's car?", "answer": "I can't help with that."},
]
HISTORY = dspy.History(messages=[{"query": "Write a haiku about rain.", "response": "Soft rain falls."},
                                 {"query": "Another one?", "response": " Grey clouds drift. "}])


def recording_lm(seen: list):
    def script(messages, params):
        seen.append(messages)
        return f"turns={len(messages)} live=<{last_user_text(messages).split(chr(10))[1]}>\n<END>"

    return scripted_lm(script)


def responder(**kwargs) -> AlignedResponder:
    return AlignedResponder("Be honest.", EXAMPLES, k=kwargs.pop("k", 1), embedder="hashing", **kwargs)


def test_earlier_turns_are_chat_turns_and_the_last_turn_is_answered():
    seen: list = []
    program = responder()
    pred = program(query="Why do volcanoes erupt?", history=HISTORY, lm=recording_lm(seen))
    assert pred.response == "turns=6 live=<Why do volcanoes erupt?>"
    assert pred.examples == ["How do volcanoes form?"]  # retrieved for the last user turn
    assert seen[0] == [
        {"role": "system", "content": "Be honest.\n\n# Query:\nHow do volcanoes form?\n\n# Answer:\n"
                                      "Magma rises through the crust.\n\n"},
        {"role": "user", "content": "# Query:\nWrite a haiku about rain.\n\n# Answer:\n"},
        {"role": "assistant", "content": "Soft rain falls.\n\n"},
        {"role": "user", "content": "# Query:\nAnother one?\n\n# Answer:\n"},
        {"role": "assistant", "content": "Grey clouds drift.\n\n"},
        {"role": "user", "content": "# Query:\nWhy do volcanoes erupt?\n\n# Answer:\n"},
    ]


@pytest.mark.parametrize("history", [None, dspy.History(messages=[]), []])
def test_without_history_the_layout_is_the_single_turn_one(history):
    seen: list = []
    program = responder()
    program(query="Why do volcanoes erupt?", history=history, lm=recording_lm(seen))
    assert seen[0] == build_messages("Be honest.", [(EXAMPLES[0]["query"], EXAMPLES[0]["answer"])],
                                     "Why do volcanoes erupt?")


@pytest.mark.parametrize("history", [None, HISTORY])
def test_messages_for_is_exactly_what_a_call_sends(history):
    seen: list = []
    program = responder(k=2)
    program.respond.demos = [dspy.Example(query="Demo?", response="Demo.")]
    lm = recording_lm(seen)
    program(query="Why do volcanoes erupt?", history=history, lm=lm)
    asyncio.run(program.acall(query="Why do volcanoes erupt?", history=history, lm=lm))
    expected = program.messages_for("Why do volcanoes erupt?", history)
    assert seen == [expected, expected]
    other = program.messages_for("Why do volcanoes erupt?", history, instructions="Be brief.")
    assert program.respond_with("Be brief.", "Why do volcanoes erupt?", lm=lm, history=history)
    assert seen[-1] == other and other[0]["content"].startswith("Be brief.\n\n# Query:\nDemo?")


def test_openai_style_history_is_accepted():
    program = responder()
    as_roles = [{"role": "user", "content": "Write a haiku about rain."},
                {"role": "assistant", "content": "Soft rain falls."},
                {"role": "user", "content": "Another one?"},
                {"role": "assistant", "content": " Grey clouds drift. "}]
    assert program.messages_for("Why?", as_roles) == program.messages_for("Why?", HISTORY)
    answers = dspy.History(messages=[{"query": m["query"], "answer": m["response"]} for m in HISTORY.messages])
    assert program.messages_for("Why?", answers) == program.messages_for("Why?", HISTORY)


@pytest.mark.parametrize(("history", "message"), [
    ("hello", "dspy.History or a list"),
    (dspy.History(messages=[{"question": "q", "answer": "a"}]), "needs 'query' and 'response'"),
    (dspy.History(messages=[{"query": "q", "response": 3}]), "must be a string"),
    ([{"role": "user", "content": "q"}], "alternate user and assistant"),
    ([{"role": "assistant", "content": "a"}, {"role": "user", "content": "q"}], "a user then an assistant"),
])
def test_bad_history_fails_before_any_lm_call(history, message):
    seen: list = []
    with pytest.raises(ValueError, match=message):
        responder()(query="Why?", history=history, lm=recording_lm(seen))
    assert seen == []


def test_paper_layout_has_no_conversations():
    seen: list = []
    with pytest.raises(ValueError, match="single-turn"):
        responder().respond_with("P", "Why?", lm=recording_lm(seen), fidelity=PAPER, history=HISTORY)
    assert seen == []
    # without history the paper layout is unchanged
    assert responder(k=0).messages_for("Why?", fidelity=PAPER) == build_messages("Be honest.", [], "Why?",
                                                                                 paper=True)


def test_text_models_read_one_continuous_document(monkeypatch):
    captured = {}

    def fake_text_completion(**kwargs):
        captured.update(kwargs)
        return litellm.TextCompletionResponse(
            choices=[{"text": "base answer", "index": 0, "finish_reason": "stop"}],
            usage={"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5})

    monkeypatch.setattr(litellm, "text_completion", fake_text_completion)
    base = dspy.LM("hosted_vllm/my-base-model", model_type="text", api_base="http://localhost:9/v1", cache=False)
    program = responder()
    history = dspy.History(messages=[{"query": "First?", "response": "One."}])
    assert program(query="How do volcanoes erupt?", history=history, lm=base).response == "base answer"
    assert captured["prompt"] == (
        "Be honest.\n\n# Query:\nHow do volcanoes form?\n\n# Answer:\nMagma rises through the crust."
        "\n\n# Query:\nFirst?\n\n# Answer:\nOne.\n\n"
        "# Query:\nHow do volcanoes erupt?\n\n# Answer:\n"
    )
    assert captured["prompt"] == "".join(m["content"] for m in program.messages_for("How do volcanoes erupt?", history))


def test_the_server_layout_is_the_responders():
    program = responder(k=2)
    conversation = Conversation("Why do volcanoes erupt?", (("Write a haiku about rain.", "Soft rain falls."),),
                                "Answer in one sentence.")
    examples = example_pairs(program.retrieve(conversation.query))
    served = conversation_messages(program, conversation)
    assert served == layout_messages(program.instructions, examples, conversation)
    assert served[0]["content"].startswith("Be honest.\n\n" "Answer in one sentence.\n\n# Query:\n")
    single = Conversation("Why do volcanoes erupt?")
    assert conversation_messages(program, single) == program.messages_for(single.query)


@pytest.mark.embedded
def test_a_multi_turn_responder_on_the_embedded_model(tmp_path):
    pytest.importorskip("llama_cpp")
    from drpo_dspy.clients.embedded import embedded_lm

    base = embedded_lm(max_tokens=48)
    program = responder()
    history = dspy.History(messages=[{"query": "What is the capital of France?", "response": "Paris."}])
    first = program(query="And what should I see there in one day?", history=history, lm=base).response
    assert isinstance(first, str) and first.strip()
    program.save(str(tmp_path / "aligned.json"))
    loaded = AlignedResponder(examples=[], k=0)
    loaded.load(str(tmp_path / "aligned.json"))
    again = asyncio.run(loaded.acall(query="And what should I see there in one day?", history=history, lm=base))
    assert again.response == first  # greedy decoding, the same prompt: the same answer
