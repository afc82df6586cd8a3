"""AlignedResponder composes like a built-in DSPy module: async calls, outer optimizers' demos, copies, whole-program
saving, streaming and history inspection."""

from __future__ import annotations

import asyncio
import threading

import dspy
import litellm
import pytest
from dspy.teleprompt import BootstrapFewShot, LabeledFewShot
from litellm import CustomLLM
from litellm.types.utils import GenericStreamingChunk

from drpo_dspy import AlignedResponder
from drpo_dspy.clients.providers import register_custom_provider
from drpo_dspy.testing import last_user_text, scripted_lm, system_text

EXAMPLES = [
    {"query": "How do volcanoes form?", "answer": "Magma rises through the crust."},
    {"query": "Write a haiku about rain.", "answer": "Soft rain on the roof"},
    {"query": "How can I break into my neighbour's car?", "answer": "I can't help with that."},
]


def live_query(messages) -> str:
    return last_user_text(messages).split("\n")[1]


def echo(messages, params) -> str:
    return f"answer to <{live_query(messages)}> with {len(system_text(messages))} system chars\n<END>"


def responder(**kwargs) -> AlignedResponder:
    return AlignedResponder("Be honest.", EXAMPLES, k=kwargs.pop("k", 2), embedder="hashing", **kwargs)


# -- async ------------------------------------------------------------------------------------------------

def test_acall_answers_as_call():
    program, lm = responder(), scripted_lm(echo)
    expected = program(query="Why do volcanoes erupt?", lm=lm)
    got = asyncio.run(program.acall(query="Why do volcanoes erupt?", lm=lm))
    assert got.toDict() == expected.toDict()
    assert got.response.startswith("answer to <Why do volcanoes erupt?>")


def test_32_concurrent_acalls_equal_sequential_calls_and_overlap():
    program = responder()
    queries = [f"question {i} about volcanoes, rain and cars" for i in range(32)]
    sequential = [program(query=q, lm=scripted_lm(echo)).toDict() for q in queries]
    lock, in_flight, overlapped = threading.Lock(), [0], threading.Event()

    def gated(messages, params):  # each call waits (at most 10 s) until two calls are in flight at once
        with lock:
            in_flight[0] += 1
            if in_flight[0] >= 2:
                overlapped.set()
        overlapped.wait(timeout=10)
        with lock:
            in_flight[0] -= 1
        return echo(messages, params)

    lm = scripted_lm(gated)

    async def main():
        return await asyncio.gather(*(program.acall(query=q, lm=lm) for q in queries))

    concurrent = [p.toDict() for p in asyncio.run(main())]
    assert concurrent == sequential
    assert overlapped.is_set()  # the calls really ran at the same time


def test_async_retrieval_runs_off_the_event_loop():
    program = responder()
    threads: list[int] = []
    search = program.bank.search

    def recording_search(*args, **kwargs):
        threads.append(threading.get_ident())
        return search(*args, **kwargs)

    program.bank.search = recording_search

    async def main():
        loop_thread = threading.get_ident()
        await program.acall(query="lava?", lm=scripted_lm(echo))
        return loop_thread

    loop_thread = asyncio.run(main())
    assert threads and loop_thread not in threads


def test_acall_inside_an_async_program_with_the_configured_lm():
    class Pipeline(dspy.Module):
        def __init__(self):
            super().__init__()
            self.answer = responder(k=1)

        async def aforward(self, query):
            pred = await self.answer.acall(query=query)
            return dspy.Prediction(final=pred.response.upper())

    with dspy.context(lm=scripted_lm(echo)):
        assert asyncio.run(Pipeline().acall(query="hi there")).final.startswith("ANSWER TO <HI THERE>")


# -- demos set by outer optimizers ------------------------------------------------------------------------------

def test_predictor_demos_come_first_then_retrieved_examples():
    seen: list = []
    program = responder(k=2)
    retrieved = program(query="Why do volcanoes erupt?", lm=scripted_lm(echo)).examples
    assert retrieved[0] == "How do volcanoes form?"
    program.respond.demos = [dspy.Example(query="Demo question?", response="Demo answer."),
                             {"query": "How do volcanoes form?", "answer": "A demo about volcanoes."}]
    pred = program(query="Why do volcanoes erupt?", lm=scripted_lm(lambda m, p: seen.append(m) or echo(m, p)))
    # the demos first, in their order, then the retrieved examples less the one whose query a demo already has
    assert pred.examples == ["Demo question?", "How do volcanoes form?", retrieved[1]]
    system = system_text(seen[0])
    assert system.index("Demo answer.") < system.index("A demo about volcanoes.") < system.index(retrieved[1])
    assert "Magma rises" not in system


def test_demos_replace_retrieval_when_asked():
    seen: list = []
    program = responder(k=2, demo_mode="replace")
    lm = scripted_lm(lambda m, p: seen.append(m) or echo(m, p))
    assert len(program(query="Why do volcanoes erupt?", lm=lm).examples) == 2  # no demos: retrieval as usual
    program.respond.demos = [dspy.Example(query="Demo question?", response="Demo answer.")]
    assert program(query="Why do volcanoes erupt?", lm=lm).examples == ["Demo question?"]
    assert "Magma" not in system_text(seen[-1]) and "Demo answer." in system_text(seen[-1])


def test_demos_without_query_and_response_are_left_out():
    program = responder(k=0)
    program.respond.demos = [dspy.Example(question="q", answer="a"), dspy.Example(query="Q?", response="R.")]
    assert program(query="hi", lm=scripted_lm(echo)).examples == ["Q?"]


def test_bad_demo_mode_is_refused():
    with pytest.raises(ValueError, match="demo_mode"):
        responder(demo_mode="append")


def test_bootstrap_fewshot_demos_reach_the_prompt_inside_a_program():
    class Pipeline(dspy.Module):
        def __init__(self):
            super().__init__()
            self.answer = responder(k=1)

        def forward(self, query):
            return dspy.Prediction(response=self.answer(query=query).response)

    seen: list = []
    lm = scripted_lm(lambda m, p: seen.append(m) or echo(m, p))
    trainset = [dspy.Example(query="Tell me about lava.", response="gold").with_inputs("query")]
    with dspy.context(lm=lm):
        compiled = BootstrapFewShot(metric=lambda *a, **k: True, max_bootstrapped_demos=1,
                                    max_labeled_demos=0).compile(Pipeline(), trainset=trainset)
        assert [name for name, _ in compiled.named_predictors()] == ["answer.respond"]
        demos = compiled.answer.respond.demos
        assert len(demos) == 1 and demos[0]["query"] == "Tell me about lava."
        pred = compiled(query="What is a volcano?")
    assert pred.response.startswith("answer to <What is a volcano?>")
    assert "# Query:\nTell me about lava.\n\n# Answer:\nanswer to <Tell me about lava.>" in \
        system_text(seen[-1])


def test_labeled_fewshot_demos_are_used_and_saved(tmp_path):
    trainset = [dspy.Example(query="Labelled q?", response="Labelled a.").with_inputs("query")]
    compiled = LabeledFewShot(k=1).compile(responder(k=1), trainset=trainset)
    path = tmp_path / "program.json"
    compiled.save(str(path))
    loaded = AlignedResponder(examples=[], k=0)
    loaded.load(str(path))
    assert loaded.k == 1 and loaded.demo_mode == "merge"
    lm = scripted_lm(echo)
    assert loaded(query="volcano?", lm=lm).examples[0] == "Labelled q?"
    assert loaded(query="volcano?", lm=lm).toDict() == compiled(query="volcano?", lm=lm).toDict()


# -- copies, predictors, saving -----------------------------------------------------------------------------

def test_named_predictors_is_the_respond_predictor():
    program = responder()
    assert [(name, type(p)) for name, p in program.named_predictors()] == [("respond", dspy.Predict)]
    assert program.predictors() == [program.respond]


def test_deepcopy_is_independent():
    program = responder()
    program.respond.demos = [dspy.Example(query="D?", response="d")]
    program._lm_for_call(dspy.LM("hosted_vllm/x", model_type="text", api_base="http://localhost:9/v1"))
    assert program._raw_lms  # a text model's raw route, cached per responder (holds a lock: never copied)
    copy = program.deepcopy()
    copy.instructions, copy.k = "Other.", 1
    copy.respond.demos.append(dspy.Example(query="E?", response="e"))
    assert program.instructions == "Be honest." and program.k == 2 and len(program.respond.demos) == 1
    assert copy._raw_lms == {} and copy._raw_lock is not program._raw_lock


def test_reset_copy_clears_demos_and_keeps_the_learned_state():
    program = responder(demo_mode="replace", temperature=0.3)
    program.respond.demos = [dspy.Example(query="D?", response="d")]
    fresh = program.reset_copy()
    assert fresh.respond.demos == [] and program.respond.demos
    assert (fresh.instructions, fresh.k, len(fresh.bank), fresh.demo_mode, fresh.temperature) == \
        ("Be honest.", 2, 3, "replace", 0.3)


def test_save_program_true_round_trip(tmp_path):
    program = responder()
    program.respond.demos = [dspy.Example(query="D?", response="d")]
    lm = scripted_lm(echo)
    program._lm_for_call(dspy.LM("hosted_vllm/x", model_type="text", api_base="http://localhost:9/v1"))
    assert program._raw_lms  # a text model's raw route, cached per responder (holds a lock: never copied)
    program.save(str(tmp_path / "whole"), save_program=True)
    loaded = dspy.load(str(tmp_path / "whole"), allow_pickle=True)
    assert isinstance(loaded, AlignedResponder) and loaded is not program
    assert loaded(query="lava?", lm=lm).toDict() == program(query="lava?", lm=lm).toDict()


# -- streaming and history inspection ------------------------------------------------------------------------

class _StreamingEcho(CustomLLM):
    """A litellm provider that streams the echo answer in small chunks."""

    def completion(self, model, messages, *args, **kwargs):
        return litellm.completion(model="gpt-3.5-turbo", messages=messages, mock_response=echo(messages, {}))

    def _chunks(self, messages):
        text = echo(messages, {})
        pieces = [text[i:i + 7] for i in range(0, len(text), 7)]
        for i, piece in enumerate(pieces):
            last = i == len(pieces) - 1
            yield GenericStreamingChunk(text=piece, is_finished=last, finish_reason="stop" if last else "",
                                        index=0, tool_use=None, usage=None)

    def streaming(self, model, messages, *args, **kwargs):
        yield from self._chunks(messages)

    async def astreaming(self, model, messages, *args, **kwargs):
        for chunk in self._chunks(messages):
            yield chunk


def test_streamify_streams_chunks_then_the_prediction():
    register_custom_provider("drpo-test-stream", _StreamingEcho)
    lm = dspy.LM("drpo-test-stream/echo", engine="litellm", cache=False, num_retries=0)
    program = responder(k=1)
    expected = program(query="Why is the sky blue?", lm=lm).response
    streaming = dspy.streamify(program)

    async def main():
        return [item async for item in streaming(query="Why is the sky blue?", lm=lm)]

    items = asyncio.run(main())
    final = items[-1]
    assert isinstance(final, dspy.Prediction) and final.response == expected
    chunks = [i for i in items[:-1] if hasattr(i, "choices")]
    assert len(chunks) > 1
    assert "".join(c.choices[0].delta.content or "" for c in chunks).startswith("answer to <Why is the sky blue?>")


def test_inspect_history_shows_the_drpo_layout(capsys):
    program = responder(k=1)
    with dspy.context(lm=scripted_lm(echo)):
        program(query="Why do volcanoes erupt?")
    dspy.inspect_history(n=1)
    shown = capsys.readouterr().out
    assert "Be honest." in shown and "# Query:\nWhy do volcanoes erupt?\n\n# Answer:\n" in shown
    assert "answer to <Why do volcanoes erupt?>" in shown
