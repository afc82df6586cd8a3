"""Conversations in DRPO's trainset, in the CLI's JSONL and in the example bank.

The base model answers a conversation's last user turn with the earlier turns as chat turns (DRPO layout); the
aspect selector, the judge and the optimizer read the whole conversation as the query; run files keep the
conversation's structure so that a run can be resumed.
"""

from __future__ import annotations

import json
import pickle

import dspy
import pytest
from world import World, field

from drpo_dspy import DRPO, AlignedResponder
from drpo_dspy.cli.main import main
from drpo_dspy.primitives.conversation_query import (
    EARLIER_HEADER,
    LAST_HEADER,
    ConversationQuery,
    query_record,
    transcript,
)
from drpo_dspy.retrievers.bank import AlignmentBank
from drpo_dspy.retrievers.examples import ICLExample
from drpo_dspy.runs.query_files import read_queries
from drpo_dspy.runs.validation import coerce_queries
from drpo_dspy.testing import last_user_text, scripted_lm

EXAMPLES = [("What is a leap year?", "A year with 366 days."), ("Hack my ex's email.", "I can't help with that.")]
RAIN = [{"role": "user", "content": "Write a haiku about rain."},
        {"role": "assistant", "content": "Soft rain on the roof."},
        {"role": "user", "content": "Now one about snow."}]
TRIP = {"query": "And for three days?", "history": [{"query": "Plan a day in Rome.", "response": "See the Forum."}]}


class RecordingWorld(World):
    """The scripted world, also keeping the messages the base model and the judge received."""

    def __init__(self, *args, **kwargs):
        self.base_messages: list[list[dict]] = []
        self.judge_queries: list[str] = []
        self.metrics_queries: list[str] = []
        self.optimizer_queries: list[str] = []
        super().__init__(*args, **kwargs)

    def _base(self, messages, params):
        with self.lock:
            self.base_messages.append(messages)
        return super()._base(messages, params)

    def _metrics(self, messages, params):
        with self.lock:
            self.metrics_queries.append(field(messages, "query"))
        return super()._metrics(messages, params)

    def _judge(self, messages, params):
        with self.lock:
            self.judge_queries.append(field(messages, "query"))
        return super()._judge(messages, params)

    def _optimizer(self, messages, params):
        with self.lock:
            self.optimizer_queries.append(field(messages, "query"))
        return super()._optimizer(messages, params)


def scores(prompt: str, query: str) -> list[int]:
    return [3, 4] if prompt.endswith("/1") else [3, 3]


def drpo_for(world: World, tmp_path=None, **options) -> DRPO:
    settings = {"depth": 2, "n_actions": 2, "k": 1, "progress": False, "holdout": 0, **options}
    return DRPO(**world.roles(), log_dir=tmp_path, **settings)


def student() -> AlignedResponder:
    return AlignedResponder("Start here.", EXAMPLES, k=1, embedder="hashing")


# -- the value type --------------------------------------------------------------------------------------------
def test_a_conversation_is_a_str_holding_its_transcript_and_its_turns():
    conversation = coerce_queries([{"messages": RAIN}])[0]
    assert isinstance(conversation, ConversationQuery)
    assert conversation.query == "Now one about snow."
    assert conversation.turns == (("Write a haiku about rain.", "Soft rain on the roof."),)
    assert str(conversation) == (f"{EARLIER_HEADER}\nUser: Write a haiku about rain.\nAssistant: Soft rain on the "
                                 f"roof.\n\n{LAST_HEADER}\nNow one about snow.")
    assert conversation.messages() == RAIN
    assert query_record(conversation) == {"messages": RAIN}
    assert coerce_queries([query_record(conversation)]) == [conversation]
    assert pickle.loads(pickle.dumps(conversation)).turns == conversation.turns
    with pytest.raises(AttributeError, match="immutable"):
        conversation.query = "other"
    # the same conversation in every accepted form
    as_example = dspy.Example(query="Now one about snow.",
                              history=dspy.History(messages=[{"query": RAIN[0]["content"],
                                                              "response": RAIN[1]["content"]}]))
    forms = coerce_queries([RAIN, {"messages": RAIN}, as_example, {"query": RAIN[2]["content"], "history": RAIN[:2]}])
    assert all(f == conversation and f.turns == conversation.turns for f in forms)


def test_a_conversation_without_earlier_turns_is_a_plain_query():
    queries = coerce_queries(["plain", {"messages": [{"role": "user", "content": "solo"}]},
                              {"query": "q", "history": []}])
    assert queries == ["plain", "solo", "q"] and all(type(q) is str for q in queries)
    assert query_record("plain") == "plain" and transcript((), "plain") == "plain"


@pytest.mark.parametrize(("item", "message"), [
    ({"messages": []}, r"trainset\[1\]: a conversation needs a non-empty list"),
    ({"messages": RAIN[:2]}, r"trainset\[1\]: the last message must be a user turn .* got 'assistant'"),
    ({"messages": [{"role": "bot", "content": "hi"}]}, r"unknown role 'bot'"),
    ({"messages": [{"role": "user", "content": ["a", "b"]}]}, r"message 0 content must be a string, got list"),
    ({"messages": [{"role": "system", "content": "Be nice."}, RAIN[2]]}, r"message 0 is a system message"),
    ([RAIN[0], RAIN[0]], r"message 1 is a user turn where a assistant turn was expected"),
    ({"messages": RAIN, "query": "x"}, r"either 'messages' or 'query'"),
    ({"query": "q", "history": [{"query": "a"}]}, r"history message 0 needs 'query' and 'response'"),
    ({"query": "q", "history": [{"query": "a", "response": " "}]}, r"empty assistant message"),
    ({"messages": [RAIN[0], RAIN[1], {"role": "user", "content": "  "}]}, r"trainset\[1\] is an empty query"),
])
def test_bad_conversations_fail_before_any_call(item, message):
    world = RecordingWorld(scores)
    with pytest.raises(ValueError, match=message):
        drpo_for(world).compile(student(), trainset=["fine", item])
    assert world.requests == 0


def test_paper_mode_refuses_conversations_before_any_call():
    world = RecordingWorld(scores)
    with pytest.raises(ValueError, match="paper_mode is single-turn"):
        DRPO(**world.roles(), depth=2, n_actions=1, paper_mode=True, progress=False).compile(
            student(), trainset=[{"messages": RAIN}])
    assert world.requests == 0


# -- the search ------------------------------------------------------------------------------------------------
def test_compile_over_conversations_answers_the_last_turn_and_judges_the_conversation(tmp_path):
    world = RecordingWorld(scores)
    program = drpo_for(world, tmp_path / "run").compile(student(), trainset=[{"messages": RAIN}, TRIP])
    assert program.instructions == "Start here./1"
    first = world.base_messages[0]
    assert [m["role"] for m in first] == ["system", "user", "assistant", "user"]
    assert first[1]["content"] == "# Query:\nWrite a haiku about rain.\n\n# Answer:\n"
    assert first[2]["content"] == "Soft rain on the roof.\n\n"
    assert last_user_text(first) == "# Query:\nNow one about snow.\n\n# Answer:\n"
    assert all(len(m) == 4 for m in world.base_messages)  # every answer had the earlier turns as chat turns
    rain = transcript([(RAIN[0]["content"], RAIN[1]["content"])], RAIN[2]["content"])
    trip = transcript([("Plan a day in Rome.", "See the Forum.")], "And for three days?")
    assert world.judge_queries == [rain, trip, trip]  # the judge reads the whole conversation
    assert world.metrics_queries == [rain, trip]
    assert set(world.optimizer_queries) == {rain}  # the optimizer sees the conversation as the query
    # the judged answers are the answers to the last user turns
    assert [c["query"] for c in world.calls["judge"]] == ["Now one about snow.", "And for three days?",
                                                          "And for three days?"]
    run = tmp_path / "run"
    config = json.loads((run / "config.json").read_text())
    assert config["queries"] == [{"messages": RAIN}, {"messages": [
        {"role": "user", "content": "Plan a day in Rome."}, {"role": "assistant", "content": "See the Forum."},
        {"role": "user", "content": "And for three days?"}]}]
    levels = json.loads((run / "levels.json").read_text())
    assert list(levels) == ["level 1", "level 2"]
    assert set(json.loads((run / "metrics_cache.json").read_text())) == {
        f"{world.metrics_lm.model}\x1f{rain}", f"{world.metrics_lm.model}\x1f{trip}"}


def test_a_mixed_trainset_keeps_single_turn_queries_single_turn(tmp_path):
    world = RecordingWorld(scores)
    drpo_for(world, depth=3).compile(student(), trainset=["plain question", {"messages": RAIN}, "another one"])
    turns = [len(m) for m in world.base_messages]
    assert turns == [2, 4, 4, 2, 2, 2, 2]  # level 3: two beam nodes, two rewrites each
    assert world.judge_queries[0] == "plain question" and world.judge_queries[-1] == "another one"
    single = RecordingWorld(scores)
    drpo_for(single, depth=1).compile(student(), trainset=["plain question"])
    assert single.base_messages[0] == world.base_messages[0]  # single-turn calls are unchanged


def test_a_conversation_run_resumes(tmp_path):
    trainset = [{"messages": RAIN}, TRIP, "plain third"]
    run = tmp_path / "run"
    world = RecordingWorld(scores)
    stopped = drpo_for(world, run, depth=3, max_calls=9).compile(student(), trainset=trainset)
    assert stopped.drpo_result.stopped
    levels_before = len(stopped.drpo_result.levels)
    resumed = drpo_for(world, run, depth=3).compile(student(), trainset=trainset, resume=True)
    assert resumed.drpo_result.stopped is None and len(resumed.drpo_result.levels) == 3 > levels_before
    fresh_world = RecordingWorld(scores)
    fresh = drpo_for(fresh_world, tmp_path / "fresh", depth=3).compile(student(), trainset=trainset)
    assert resumed.instructions == fresh.instructions
    assert [len(m) for m in world.base_messages][-2:] == [2, 2]  # the third level: a single-turn query
    other = [{"messages": [RAIN[0], {"role": "assistant", "content": "Other answer."}, RAIN[2]]}, TRIP, "plain third"]
    with pytest.raises(ValueError, match=r"differs in: queries"):
        drpo_for(world, run, depth=3).compile(student(), trainset=other, resume=True)


def test_a_valset_of_conversations_re_scores_the_final_beam(tmp_path):
    world = RecordingWorld(scores)
    program = drpo_for(world, tmp_path / "run").compile(student(), trainset=["one", "two"], valset=[{"messages": RAIN}])
    assert program.drpo_result.validation and len(world.base_messages[-1]) == 4
    assert json.loads((tmp_path / "run" / "config.json").read_text())["holdout_queries"] == [{"messages": RAIN}]


# -- the command line ------------------------------------------------------------------------------------------
def role_flags(prefix: str) -> list[str]:
    return [arg for role in ("base", "metrics", "judge", "optimizer")
            for arg in (f"--{role}-model", f"scripted/{prefix}-{role}")]


def test_cli_reads_conversations_from_jsonl_and_resumes_them(tmp_path, capsys):
    world = RecordingWorld(scores, name="conv-cli")
    trainset = tmp_path / "train.jsonl"
    trainset.write_text("\n".join([json.dumps({"messages": RAIN}), json.dumps(TRIP), json.dumps("plain third"),
                                   json.dumps({"query": "plain fourth"})]) + "\n")
    queries = read_queries(trainset)
    assert [type(q).__name__ for q in queries] == ["ConversationQuery", "ConversationQuery", "str", "str"]
    run = tmp_path / "run"
    args = [*role_flags("conv-cli"), "--trainset", str(trainset), "--depth", "3", "--n-actions", "2", "--k", "0",
            "--no-progress", "--holdout", "0"]
    assert main(["optimize", *args, "--log-dir", str(run), "--max-calls", "9"]) == 0
    assert "Stopped early" in capsys.readouterr().out
    assert len(world.base_messages[0]) == 4  # system, earlier user, earlier assistant, last user
    assert main(["optimize", "--resume", str(run), "--no-progress"]) == 0
    assert "Stopped early" not in capsys.readouterr().out
    assert json.loads((run / "summary.json").read_text())["levels"] == 3
    assert json.loads((run / "config.json").read_text())["queries"][0] == {"messages": RAIN}


def test_cli_names_the_file_and_line_of_a_bad_conversation(tmp_path, capsys):
    RecordingWorld(scores, name="conv-bad")
    trainset = tmp_path / "train.jsonl"
    trainset.write_text(json.dumps({"messages": RAIN}) + "\n\n" + json.dumps({"messages": RAIN[:2]}) + "\n")
    with pytest.raises(ValueError, match=rf"{trainset} line 3: the last message must be a user turn"):
        read_queries(trainset)
    assert main(["optimize", *role_flags("conv-bad"), "--trainset", str(trainset), "--no-progress",
                 "--log-dir", str(tmp_path / "r")]) == 2
    assert f"{trainset} line 3: the last message must be a user turn" in capsys.readouterr().err


# -- the example bank ------------------------------------------------------------------------------------------
BANK = [{"query": "What is a leap year?", "answer": "A year with 366 days."},
        {"query": "And the next one?", "answer": "2028.",
         "history": [{"query": "When was the last leap year?", "response": "2024."}]}]


def test_bank_conversation_examples_render_save_and_load(tmp_path):
    bank = AlignmentBank(BANK, embedder="hashing")
    example = bank.examples[1]
    assert example.history == (("When was the last leap year?", "2024."),)
    assert example.shown_query == transcript(example.history, "And the next one?")
    assert bank.search("And the next one?", 1)[0][0].history == example.history  # retrieved by the last turn
    for suffix in ("json", "jsonl"):
        path = bank.save(tmp_path / f"bank.{suffix}")
        loaded = AlignmentBank.load(path)
        assert [e.to_dict() for e in loaded] == [e.to_dict() for e in bank]
    assert "history" not in bank.examples[0].to_dict()  # single-turn examples are stored as before
    seen: list = []
    lm = scripted_lm(lambda messages, params: seen.append(messages) or "ok")
    program = AlignedResponder("Be exact.", bank, k=2, fixed_examples=True)
    program(query="Is 2100 a leap year?", lm=lm)
    assert seen[0][0]["content"] == (
        "Be exact.\n\n# Query:\nWhat is a leap year?\n\n# Answer:\nA year with 366 days.\n\n"
        f"# Query:\n{EARLIER_HEADER}\nUser: When was the last leap year?\nAssistant: 2024.\n\n{LAST_HEADER}\n"
        "And the next one?\n\n# Answer:\n2028.\n\n")
    program.save(str(tmp_path / "program.json"))
    reloaded = AlignedResponder(examples=[], k=0)
    reloaded.load(str(tmp_path / "program.json"))
    assert [e.to_dict() for e in reloaded.bank] == [e.to_dict() for e in bank]
    assert reloaded.messages_for("Is 2100 a leap year?") == program.messages_for("Is 2100 a leap year?")


def test_conversation_examples_are_keyed_by_their_whole_conversation():
    same_last_turn = [BANK[1], {**BANK[1], "history": [{"query": "When is the next Olympics?", "response": "2028."}]}]
    assert len(AlignmentBank(same_last_turn, embedder="hashing")) == 2
    with pytest.raises(ValueError, match="duplicate query"):
        AlignmentBank([BANK[1], BANK[1]], embedder="hashing")
    with pytest.raises(ValueError, match=r"example #0: .*history message 0 needs 'query' and 'response'"):
        AlignmentBank([{**BANK[1], "history": [{"query": "x"}]}], embedder="hashing")
    assert ICLExample("q", "a").to_dict() == {"query": "q", "answer": "a", "provenance": []}


def test_the_icl_stage_judges_a_conversation_example_with_its_earlier_turns_and_keeps_them():
    world = RecordingWorld(lambda p, q: [3, 3, 3], aspects=("Helpfulness", "Clarity", "Factuality"))
    program = AlignedResponder("Start here.", BANK, k=1, embedder="hashing")
    compiled = drpo_for(world, depth=1, optimize_icl=True, icl_rounds=1).compile(program, trainset=["q"])
    conversation = compiled.bank.examples[1]
    assert conversation.history == (("When was the last leap year?", "2024."),)
    assert conversation.answer == "2028. (improved)"
    assert transcript(conversation.history, "And the next one?") in world.judge_queries


# -- the embedded model ----------------------------------------------------------------------------------------
@pytest.mark.embedded
def test_a_multi_turn_responder_compiles_on_the_embedded_model_and_round_trips(tmp_path):
    pytest.importorskip("llama_cpp")
    from drpo_dspy.clients.embedded import embedded_lm

    # The judge needs room for a whole judgment (335 tokens on one CI machine): a cut one cannot be read.
    base, helper = embedded_lm(max_tokens=24), embedded_lm(max_tokens=640)
    drpo = DRPO(base_lm=base, metrics_lm=helper, judge_lm=helper, optimizer_lm=helper, beam_size=1, n_actions=1,
                depth=1, max_depth_increase=0, k=1, progress=False, num_threads=2, holdout=0,
                log_dir=tmp_path / "run")
    student = AlignedResponder("Be brief.", BANK, k=1, embedder="hashing")
    trainset = [{"messages": RAIN}, TRIP]
    program = drpo.compile(student, trainset=trainset)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["queries"][0] == {"messages": RAIN}
    assert program.drpo_result.levels and program.drpo_result.usage["base"]["lm_calls"] >= 1
    program.save(str(tmp_path / "program.json"))
    reloaded = AlignedResponder(examples=[], k=0)
    reloaded.load(str(tmp_path / "program.json"))
    assert reloaded.instructions == program.instructions
    assert [e.to_dict() for e in reloaded.bank] == [e.to_dict() for e in program.bank]
    history = dspy.History(messages=[{"query": RAIN[0]["content"], "response": RAIN[1]["content"]}])
    assert reloaded.messages_for(RAIN[2]["content"], history) == program.messages_for(RAIN[2]["content"], history)
    answer = reloaded(query=RAIN[2]["content"], history=history, lm=base).response
    assert isinstance(answer, str)
