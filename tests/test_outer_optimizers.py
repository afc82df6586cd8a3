"""DRPO as one step of an outer DSPy optimizer: ``dspy.BetterTogether(fewshot=BootstrapFewShot, drpo=DRPO)``, in
both orders, on a Predict and on a program holding an AlignedResponder; the result keeps the few-shot step's demos
and the DRPO step's instructions, and round-trips as DSPy JSON."""

from __future__ import annotations

import dspy
import pytest
from test_program_alignment import EXAMPLES, QUESTIONS, instructions_of, rewarding
from world import field

from drpo_dspy import DRPO, AlignedResponder
from drpo_dspy.testing import scripted_lm

MORE = [*QUESTIONS, "Why is the sky blue?", "What is a good name for a cat?", "How far is the moon?"]
SHAPE = {"beam_size": 1, "n_actions": 2, "depth": 2, "max_depth_increase": 0, "progress": False, "num_threads": 2,
         "holdout": 0}


def demos_seen(messages) -> int:
    """Few-shot demos arrive as user/assistant pairs between the system message and the question."""
    return (len(messages) - 2) // 2


def program_lm():
    """Answers name the instructions and the number of demos, so the judge and the metric can score both."""
    def script(messages, params):
        instructions, question = instructions_of(messages), field(messages, "question")
        return {"answer": f"ANSWER prompt=<{instructions}> query=<{question}#demos={demos_seen(messages)}>"}

    return scripted_lm(script)


def metric(example, prediction, trace=None):
    """1 for the DRPO step's instructions (``/1``), 1 for demos: the full strategy scores best on the valset."""
    answer = prediction.answer
    return float("/1>" in answer.split(" query=<")[0]) + float("#demos=0>" not in answer)


def labelled(questions):
    return [dspy.Example(question=q, answer="a label DRPO ignores").with_inputs("question") for q in questions]


def better_together(world, lm):
    fewshot = dspy.BootstrapFewShot(metric=lambda *a, **k: True, max_bootstrapped_demos=2, max_labeled_demos=0)
    drpo = DRPO(**{**world.roles(), "base_lm": lm}, **SHAPE)
    return dspy.BetterTogether(metric=metric, fewshot=fewshot, drpo=drpo)


@pytest.mark.parametrize("strategy", ["fewshot -> drpo", "drpo -> fewshot"])
def test_predict_keeps_the_demos_and_the_instructions_in_both_orders(strategy, tmp_path):
    world, lm = rewarding("/1"), program_lm()
    program = dspy.Predict("question -> answer")
    start = program.signature.instructions
    program.set_lm(lm)
    compiled = better_together(world, lm).compile(program, trainset=labelled(MORE[:4]), valset=labelled(MORE[4:]),
                                                  strategy=strategy, seed=0)
    assert not compiled.flag_compilation_error_occurred
    assert compiled.candidate_programs[0]["strategy"] == strategy
    assert compiled.candidate_programs[0]["score"] == 200.0  # Evaluate reports percent
    assert compiled.signature.instructions == f"{start}/1"
    assert len(compiled.demos) == 2
    assert all(set(demo.keys()) >= {"question", "answer"} for demo in compiled.demos)
    assert program.signature.instructions == start and not program.demos  # the student is untouched
    path = tmp_path / "program.json"
    compiled.save(str(path))
    fresh = dspy.Predict("question -> answer")
    fresh.load(str(path))
    assert fresh.signature.instructions == compiled.signature.instructions
    assert [dict(d) for d in fresh.demos] == [dict(d) for d in compiled.demos]
    assert fresh(question="Hi?", lm=lm).answer == compiled(question="Hi?", lm=lm).answer


class Assistant(dspy.Module):
    """A program holding an AlignedResponder, and a step that turns its response into the answer."""

    def __init__(self):
        super().__init__()
        self.reply = AlignedResponder("Be kind.", EXAMPLES, k=1, embedder="hashing")
        self.polish = dspy.Predict("question, draft -> answer")

    def forward(self, question):
        return self.polish(question=question, draft=self.reply(query=question).response)


@pytest.mark.parametrize("strategy", ["fewshot -> drpo", "drpo -> fewshot"])
def test_a_program_with_an_aligned_responder_in_both_orders(strategy, tmp_path):
    world, lm = rewarding("/1"), program_lm()
    program = Assistant()
    program.polish.set_lm(lm)
    program.reply.set_lm(world.base_lm)
    compiled = better_together(world, lm).compile(program, trainset=labelled(MORE[:4]), valset=labelled(MORE[4:]),
                                                  strategy=strategy, seed=0)
    assert not compiled.flag_compilation_error_occurred
    assert compiled.candidate_programs[0]["strategy"] == strategy
    assert isinstance(compiled.reply, AlignedResponder) and compiled.reply.k == 1
    assert compiled.polish.signature.instructions.endswith("/1")
    assert len(compiled.polish.demos) == 2 and len(compiled.reply.respond.demos) == 2  # the responder's too
    path = tmp_path / "program.json"
    compiled.save(str(path))
    fresh = Assistant()
    fresh.load(str(path))
    assert fresh.polish.signature.instructions == compiled.polish.signature.instructions
    assert fresh.reply.instructions == compiled.reply.instructions
    assert [dict(d) for d in fresh.polish.demos] == [dict(d) for d in compiled.polish.demos]
    assert [dict(d) for d in fresh.reply.respond.demos] == [dict(d) for d in compiled.reply.respond.demos]


@pytest.mark.parametrize("strategy", ["fewshot -> drpo", "drpo -> fewshot"])
def test_an_aligned_responder_as_the_student_in_both_orders(strategy, tmp_path):
    world = rewarding("/1")
    program = AlignedResponder("Be kind.", EXAMPLES, k=1, embedder="hashing")
    program.set_lm(world.base_lm)
    trainset = [dspy.Example(query=q, response="a label DRPO ignores").with_inputs("query") for q in MORE]
    fewshot = dspy.BootstrapFewShot(metric=lambda *a, **k: True, max_bootstrapped_demos=2, max_labeled_demos=0)
    outer = dspy.BetterTogether(metric=lambda *a, **k: 1.0, fewshot=fewshot, drpo=DRPO(**world.roles(), **SHAPE))
    compiled = outer.compile(program, trainset=trainset, valset_ratio=0, strategy=strategy, seed=0)  # the last
    assert not compiled.flag_compilation_error_occurred
    assert isinstance(compiled, AlignedResponder) and compiled.instructions == "Be kind./1"
    assert len(compiled.respond.demos) == 2
    if strategy == "fewshot -> drpo":  # the search answered with the bootstrapped demos in the prompt
        assert any(compiled.respond.demos[0]["query"] in entry["messages"][0]["content"]
                   for entry in world.base_lm.history)
    path = tmp_path / "program.json"
    compiled.save(str(path))
    fresh = AlignedResponder("Be kind.", EXAMPLES, k=1, embedder="hashing")
    fresh.load(str(path))
    assert fresh.instructions == compiled.instructions
    assert [dict(d) for d in fresh.respond.demos] == [dict(d) for d in compiled.respond.demos]


def test_a_teacher_given_to_the_outer_optimizer_is_kept_from_drpo():
    world, lm = rewarding("/1"), program_lm()
    program, teacher = dspy.Predict("question -> answer"), dspy.Predict("question -> answer")
    program.set_lm(lm)
    teacher.set_lm(lm)
    outer = better_together(world, lm)
    failed = outer.compile(program, trainset=labelled(MORE), teacher=teacher, valset_ratio=0, strategy="drpo")
    assert failed.flag_compilation_error_occurred  # DRPO refuses a teacher; BetterTogether stops at that step
    compiled = outer.compile(program, trainset=labelled(MORE), teacher=teacher, valset_ratio=0, strategy="drpo",
                             optimizer_compile_args={"drpo": {"teacher": None}})  # what the error message says
    assert not compiled.flag_compilation_error_occurred
    assert compiled.signature.instructions.endswith("/1")
