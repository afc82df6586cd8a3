"""AlignedResponder: the DRPO layout, retrieval, save/load, thread safety, text-completion models."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import dspy
import pytest

from drpo_dspy import AlignedResponder
from drpo_dspy.adapters.drpo_layout import build_messages, extract_answer
from drpo_dspy.testing import last_user_text, scripted_lm, system_text

EXAMPLES = [
    {"query": "How do volcanoes form?", "answer": "Magma rises through the crust."},
    {"query": "Write a haiku about rain.", "answer": "Soft rain on the roof"},
    {"query": "How can I break into my neighbour's car?", "answer": "I can't help with that."},
]


def echo_lm(seen: list | None = None):
    def script(messages, params):
        if seen is not None:
            seen.append((messages, params))
        return f"answer to <{last_user_text(messages).split(chr(10))[1]}>\n<END>\nignored tail"

    return scripted_lm(script)


def test_layout_matches_the_drpo_template():
    messages = build_messages("Be kind.", [("Q1", "A1"), ("Q2", " A2 ")], "Live?")
    assert messages[0] == {
        "role": "system",
        "content": "Be kind.\n\n# Query:\nQ1\n\n# Answer:\nA1\n\n"
                   "# Query:\nQ2\n\n# Answer:\nA2\n\n",
    }
    assert messages[1] == {"role": "user", "content": "# Query:\nLive?\n\n# Answer:\n"}


@pytest.mark.parametrize(("raw", "expected"), [
    ("  hello <END> more", "hello"), ("<START>\nhi\n<END", "hi"), ("plain", "plain"), ("a<|eot_id|>b", "a"),
    # Layout text never stays in an answer: end markers in any spelling, the next example's headings, an echoed query.
    ("Paris.<End> more", "Paris."), ("Paris.</END>", "Paris."), ("Paris. <end>", "Paris."),
    ("Paris.\n\n# Query:\nWhat about Spain?\n\n# Answer:\nMadrid.", "Paris."),
    ("# Answer:\nParis.\n\n# Answer:\nParis.", "Paris."), ("<start>Paris.", "Paris."),
    ("# Query:\nWhat is the capital of France?\n\nParis.\n# Query:\nNext", "Paris."),
    ("# Query:\nWhat is the capital of France?\n", ""), ("A heading\n# Title\ntext", "A heading\n# Title\ntext"),
])
def test_answer_extraction(raw, expected):
    assert extract_answer(raw) == expected


def test_responder_answers_in_layout_with_retrieved_examples():
    seen: list = []
    responder = AlignedResponder("Be honest.", EXAMPLES, k=2, embedder="hashing")
    pred = responder(query="Why do volcanoes erupt?", lm=echo_lm(seen))
    assert pred.response == "answer to <Why do volcanoes erupt?>"
    messages, params = seen[0]
    assert params["stop"] == ["<END", "\n# Query:", "\n# Answer:", "<|eot_id|>"]
    system = system_text(messages)
    assert system.startswith("Be honest.\n\n# Query:\n")
    assert pred.examples[0] == "How do volcanoes form?"  # most similar first
    assert len(pred.examples) == 2 and all(q in system for q in pred.examples)


def test_student_is_usable_inside_a_larger_program():
    class Pipeline(dspy.Module):
        def __init__(self):
            super().__init__()
            self.answer = AlignedResponder("Be brief.", EXAMPLES, k=1, embedder="hashing")

        def forward(self, query):
            return dspy.Prediction(final=self.answer(query=query).response.upper())

    with dspy.context(lm=echo_lm()):
        assert Pipeline()(query="hi there").final == "ANSWER TO <HI THERE>"


def test_save_and_load_round_trip(tmp_path):
    responder = AlignedResponder("Custom prompt.", EXAMPLES, k=2, embedder="hashing")
    path = tmp_path / "program.json"
    responder.save(str(path))
    loaded = AlignedResponder(examples=[], k=0)
    loaded.load(str(path))
    assert loaded.instructions == "Custom prompt."
    assert loaded.k == 2
    assert [e.query for e in loaded.bank.examples] == [e["query"] for e in EXAMPLES]
    lm = echo_lm()
    assert loaded(query="volcano question", lm=lm).toDict() == responder(query="volcano question", lm=lm).toDict()


def test_k_larger_than_bank_is_refused_before_any_call():
    with pytest.raises(ValueError, match="k=4 is larger than the example bank"):
        AlignedResponder(examples=EXAMPLES, k=4, embedder="hashing")
    with pytest.raises(ValueError, match="instructions"):
        AlignedResponder("  ")


def test_concurrent_calls_equal_sequential_results():
    responder = AlignedResponder("P", EXAMPLES, k=2, embedder="hashing")
    lm = echo_lm()
    queries = [f"question number {i} about volcanoes and rain" for i in range(64)]
    sequential = [responder(query=q, lm=lm).toDict() for q in queries]
    errors: list = []
    lock = threading.Lock()

    def call(q):
        try:
            return responder(query=q, lm=lm).toDict()
        except Exception as exc:  # pragma: no cover - reported below
            with lock:
                errors.append(exc)

    with ThreadPoolExecutor(16) as pool:
        parallel = list(pool.map(call, queries))
    assert not errors and parallel == sequential


def test_compile_leaves_student_untouched_and_copy_is_independent():
    responder = AlignedResponder("P", EXAMPLES, k=1, embedder="hashing")
    copy = responder.with_state(instructions="Q", k=2)
    assert responder.instructions == "P" and responder.k == 1
    assert copy.instructions == "Q" and copy.k == 2


def test_text_completion_models_get_one_concatenated_prompt(monkeypatch):
    import litellm

    captured = {}

    def fake_text_completion(**kwargs):
        captured.update(kwargs)
        return litellm.TextCompletionResponse(
            choices=[{"text": "base answer", "index": 0, "finish_reason": "stop"}],
            usage={"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
        )

    monkeypatch.setattr(litellm, "text_completion", fake_text_completion)
    base = dspy.LM("hosted_vllm/my-base-model", model_type="text", api_base="http://localhost:9/v1", cache=False)
    responder = AlignedResponder("Be helpful.", EXAMPLES[:1], k=1, embedder="hashing")
    assert responder(query="Tell me about lava.", lm=base).response == "base answer"
    assert captured["prompt"] == (
        "Be helpful.\n\n# Query:\nHow do volcanoes form?\n\n# Answer:\nMagma rises through the crust."
        "\n\n# Query:\nTell me about lava.\n\n# Answer:\n"
    )
    assert captured["model"] == "text-completion-openai/my-base-model"


def test_a_similarity_floor_hides_unrelated_examples(tmp_path):
    examples = [{"query": "How do volcanoes form?", "answer": "Magma rises."},
                {"query": "Write a limerick about cheese.", "answer": "There once was a cheddar..."}]
    open_ = AlignedResponder("Be honest.", examples, k=2, embedder="hashing")
    floored = AlignedResponder("Be honest.", examples, k=2, embedder="hashing", min_similarity=0.99)
    query = "How do volcanoes form?"
    assert len(open_.retrieve(query)) == 2
    assert [e.query for e in floored.retrieve(query)] == ["How do volcanoes form?"]  # only the near-identical one
    assert floored.retrieve("Completely unrelated words here.") == []
    floored.save(str(tmp_path / "p.json"))
    loaded = AlignedResponder(examples=[], k=0)
    loaded.load(str(tmp_path / "p.json"))
    assert loaded.examples.min_similarity == 0.99
    with pytest.raises(ValueError, match="min_similarity"):
        AlignedResponder("Be honest.", examples, k=2, embedder="hashing", min_similarity=2)
