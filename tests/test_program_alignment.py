"""DRPO aligns any DSPy program: the joint instructions of its chosen predictors, judged on its user-facing output."""

from __future__ import annotations

import textwrap

import dspy
import pytest
from world import World, field

from drpo_dspy import DRPO, AlignedResponder
from drpo_dspy.modules.aligned_program import ProgramView
from drpo_dspy.teleprompt.program_alignment import align_program
from drpo_dspy.testing import last_user_text, scripted_lm

QUESTIONS = ["What is the capital of France?", "Name a prime number, please.", "How do I boil an egg well?"]
EXAMPLES = [{"query": "How do volcanoes form?", "answer": "Magma rises through the crust."},
            {"query": "Write a haiku about rain.", "answer": "Soft rain on the roof"}]


def instructions_of(messages) -> str:
    """The instructions in a DSPy chat-adapter system message."""
    return textwrap.dedent(messages[0]["content"].split("your objective is:", 1)[1]).strip()


def program_lm(calls: list | None = None):
    """The program's model: each step names its instructions, so the judge can score by them."""
    def script(messages, params):
        instructions, question = instructions_of(messages), field(messages, "question")
        if calls is not None:
            calls.append(instructions)
        return {"reasoning": "step by step", "draft": f"DRAFT[{instructions}]",
                "answer": f"ANSWER prompt=<{instructions}> query=<{question}>"}

    return scripted_lm(script)


def rewarding(marker: str):
    """The judge likes instructions that carry ``marker`` (the optimizer's second rewrite appends ``/1``)."""
    return World(scores=lambda prompt, query: [5, 4] if marker in prompt else [3, 3])


def drpo_for(world: World, base, **kwargs) -> DRPO:
    roles = {**world.roles(), "base_lm": base}
    settings = {"beam_size": 1, "n_actions": 2, "depth": 2, "progress": False, "num_threads": 2, **kwargs}
    return DRPO(**roles, **settings)


class DraftThenPolish(dspy.Module):
    def __init__(self):
        super().__init__()
        self.draft = dspy.Predict("question -> draft")
        self.polish = dspy.Predict("question, draft -> answer")

    def forward(self, question):
        draft = self.draft(question=question).draft
        return self.polish(question=question, draft=draft)


def test_predict_is_aligned_and_round_trips_as_dspy_json(tmp_path):
    world, program = rewarding("/1"), dspy.Predict("question -> answer")
    start = program.signature.instructions
    compiled = align_program(drpo_for(world, program_lm()), program, QUESTIONS[:2])
    assert program.signature.instructions == start  # the student is untouched
    assert compiled.signature.instructions == f"{start}/1"
    assert compiled.drpo_result.best_prompt == f"### self\n{start}/1"
    assert compiled.drpo_result.best_path_mean == 4.5
    path = tmp_path / "program.json"
    compiled.save(str(path))
    fresh = dspy.Predict("question -> answer")
    fresh.load(str(path))
    assert fresh.signature.instructions == compiled.signature.instructions
    lm = program_lm()
    assert fresh(question="Hi?", lm=lm).answer == compiled(question="Hi?", lm=lm).answer


def test_chain_of_thought_optimizer_sees_each_steps_inputs_and_outputs():
    world, program = rewarding("/1"), dspy.ChainOfThought("question -> answer")
    compiled = align_program(drpo_for(world, program_lm()), program,
                             [dspy.Example(question=q).with_inputs("question") for q in QUESTIONS[:2]])
    assert [name for name, _ in compiled.named_predictors()] == ["predict"]
    assert compiled.predict.signature.instructions.endswith("/1")
    assert "reasoning" in compiled.predict.signature.output_fields  # the structure is kept
    sent = [entry["messages"] for entry in world.optimizer_lm.history]
    request = last_user_text(sent[0])
    assert "### predict\n" in request  # the sectioned instructions
    assert 'Keep every "### <step name>" header' in sent[0][0]["content"]  # the program wording of the proposal
    assert "### step predict\ninput question: What is the capital of France?" in request
    assert "output reasoning: step by step" in request


def test_two_predictor_program_with_only_one_aligned(tmp_path):
    calls: list = []
    world, program = rewarding("/1"), DraftThenPolish()
    draft_start = program.draft.signature.instructions
    compiled = align_program(drpo_for(world, program_lm(calls)), program, QUESTIONS[:2], predictors=["polish"])
    assert compiled.draft.signature.instructions == draft_start
    assert compiled.polish.signature.instructions.endswith("/1")
    assert compiled.drpo_result.best_prompt.startswith("### polish\n")
    assert draft_start in calls and not any(c.startswith(draft_start + "/") for c in calls)
    path = tmp_path / "program.json"
    compiled.save(str(path))
    fresh = DraftThenPolish()
    fresh.load(str(path))
    assert fresh.polish.signature.instructions == compiled.polish.signature.instructions
    assert fresh.draft.signature.instructions == draft_start


def test_both_predictors_are_aligned_by_default():
    world, program = rewarding("/1"), DraftThenPolish()
    view = ProgramView(program)
    assert view.names == ["draft", "polish"] and view.output_field == "answer"
    compiled = align_program(drpo_for(world, program_lm()), program, QUESTIONS[:2])
    text = compiled.drpo_result.best_prompt
    assert text.index("### draft\n") < text.index("### polish\n")
    assert compiled.polish.signature.instructions.endswith("/1")


def test_an_aligned_responder_inside_a_program_keeps_retrieving():
    class Assistant(dspy.Module):
        def __init__(self):
            super().__init__()
            self.reply = AlignedResponder("Be kind.", EXAMPLES, k=1, embedder="hashing")

        def forward(self, query):
            return dspy.Prediction(response=self.reply(query=query).response)

    world = rewarding("/1")
    compiled = align_program(drpo_for(world, world.base_lm), Assistant(), ["How do volcanoes erupt, exactly?",
                                                                           "Write a poem about the rain."])
    assert compiled.reply.instructions == "Be kind./1"
    assert isinstance(compiled.reply, AlignedResponder) and compiled.reply.k == 1
    seen = [entry["messages"][0]["content"] for entry in world.base_lm.history]
    assert all("# Query:\nHow do volcanoes form?" in s or "# Query:\nWrite a haiku" in s for s in seen)


def test_drpo_after_bootstrap_fewshot_keeps_the_demos():
    world, lm = rewarding("/1"), program_lm()
    trainset = [dspy.Example(question=q, answer="x").with_inputs("question") for q in QUESTIONS[:2]]
    with dspy.context(lm=lm):
        bootstrapped = dspy.BootstrapFewShot(metric=lambda *a, **k: True, max_bootstrapped_demos=1,
                                             max_labeled_demos=0).compile(dspy.Predict("question -> answer"),
                                                                          trainset=trainset)
    compiled = align_program(drpo_for(world, lm), bootstrapped, trainset)
    assert len(compiled.demos) == 1 and compiled.demos == bootstrapped.demos
    assert compiled.signature.instructions.endswith("/1")


def test_run_directory_holds_the_program(tmp_path):
    world, program = rewarding("/1"), dspy.Predict("question -> answer")
    compiled = align_program(drpo_for(world, program_lm(), log_dir=tmp_path / "run"), program, QUESTIONS[:2])
    for name in ("config.json", "run.log", "trace.jsonl", "program.json", "summary.json"):
        assert (tmp_path / "run" / name).exists(), name
    fresh = dspy.Predict("question -> answer")
    fresh.load(str(tmp_path / "run" / "program.json"))
    assert fresh.signature.instructions == compiled.signature.instructions


# -- sections ---------------------------------------------------------------------------------------------

def test_sections_round_trip_and_tolerate_missing_or_extra_text():
    view = ProgramView(DraftThenPolish())
    start = dict(view.initial)
    text = view.render({"draft": "Draft well.", "polish": "Polish kindly.\n### Not a step\nstill polish"})
    assert view.parse(text) == {"draft": "Draft well.", "polish": "Polish kindly.\n### Not a step\nstill polish"}
    assert view.parse("### polish\nOnly polish.") == {"draft": start["draft"], "polish": "Only polish."}
    assert view.parse("no headers at all") == start
    single = ProgramView(DraftThenPolish(), predictors=["polish"])
    assert single.parse("no headers at all") == {"polish": "no headers at all"}


@pytest.mark.parametrize(("call", "message"), [
    (lambda d: align_program(d, "not a module", QUESTIONS), "dspy.Module"),
    (lambda d: align_program(d, DraftThenPolish(), QUESTIONS, predictors=["nope"]), "draft, polish"),
    (lambda d: align_program(d, DraftThenPolish(), []), "empty"),
    (lambda d: align_program(d, dspy.Predict("question, context -> answer"), QUESTIONS), "question, context"),
    (lambda d: align_program(d, DraftThenPolish(), [{"query": "q"}]), "lacks the program's input question"),
    (lambda d: align_program(d, DraftThenPolish(), QUESTIONS, resume=True), "resume"),
    (lambda d: align_program(d, DraftThenPolish(), [""]), "non-empty"),
])
def test_bad_inputs_fail_before_any_lm_call(call, message):
    world = rewarding("/1")
    with pytest.raises(ValueError, match=message):
        call(drpo_for(world, world.base_lm))
    assert world.requests == 0


@pytest.mark.embedded
def test_a_chat_program_is_aligned_on_the_embedded_model(tmp_path):
    pytest.importorskip("llama_cpp")
    from drpo_dspy.clients.embedded import embedded_lm

    base, helper = embedded_lm(max_tokens=48), embedded_lm(max_tokens=320)
    drpo = DRPO(base_lm=base, metrics_lm=helper, judge_lm=helper, optimizer_lm=helper, beam_size=1, n_actions=1,
                depth=2, max_depth_increase=0, progress=False, num_threads=2)
    program = dspy.Predict("question -> answer")
    with dspy.context(adapter=dspy.JSONAdapter()):  # the embedded model enforces the schema: typed answers parse
        compiled = align_program(drpo, program, ["How do I make a cup of green tea?",
                                                 "Write a limerick about a cat."])
    assert compiled.drpo_result.num_levels == 2
    assert compiled.drpo_result.reward_per_level[0] is not None
    compiled.save(str(tmp_path / "program.json"))
    fresh = dspy.Predict("question -> answer")
    fresh.load(str(tmp_path / "program.json"))
    assert fresh.signature.instructions == compiled.signature.instructions
    with dspy.context(adapter=dspy.JSONAdapter()):
        assert isinstance(fresh(question="Give me one tip for better sleep.", lm=base).answer, str)


@pytest.mark.embedded
def test_a_two_step_program_with_a_responder_inside_is_aligned_on_the_embedded_model(tmp_path):
    """Chain of thought, then an AlignedResponder; only the responder is aligned; saved and loaded as DSPy JSON."""
    pytest.importorskip("llama_cpp")
    from drpo_dspy.clients.embedded import embedded_lm

    class NotesThenReply(dspy.Module):
        def __init__(self):
            super().__init__()
            self.notes = dspy.ChainOfThought("question -> notes")
            self.reply = AlignedResponder("Answer helpfully and briefly.", EXAMPLES, k=1, embedder="hashing")

        def forward(self, question):
            notes = self.notes(question=question).notes
            return dspy.Prediction(response=self.reply(query=f"{question}\n\nNotes: {notes}").response)

    base, helper = embedded_lm(max_tokens=40), embedded_lm(max_tokens=320)
    drpo = DRPO(base_lm=base, metrics_lm=helper, judge_lm=helper, optimizer_lm=helper, beam_size=1, n_actions=1,
                depth=2, max_depth_increase=0, progress=False, num_threads=2, log_dir=tmp_path / "run")
    program = NotesThenReply()
    with dspy.context(adapter=dspy.JSONAdapter()):
        compiled = drpo.compile(program, trainset=["How do I keep basil alive indoors?", "Suggest a name for a cat."],
                                predictors=["reply.respond"])
    assert compiled.drpo_result.num_levels == 2 and compiled.drpo_result.reward_per_level[0] is not None
    assert compiled.notes.predict.signature.instructions == program.notes.predict.signature.instructions
    assert (tmp_path / "run" / "levels.json").exists()
    compiled.save(str(tmp_path / "program.json"))
    fresh = NotesThenReply()
    fresh.load(str(tmp_path / "program.json"))
    assert fresh.reply.instructions == compiled.reply.instructions and len(fresh.reply.bank) == 2
    with dspy.context(adapter=dspy.JSONAdapter(), lm=base):
        assert isinstance(fresh(question="Give me one tip for better sleep.").response, str)
