"""Untrusted artifacts: pickles are read without running their code; JSON imports are checked for shape."""

from __future__ import annotations

import collections
import datetime
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from drpo_dspy.interop.safe_pickle import (
    PickledObject,
    UnsafePickleError,
    best_path,
    extract_prompts,
    load_untrusted_pickle,
    loads_untrusted_pickle,
    pickled_class,
    walk,
)
from drpo_dspy.retrievers.bank import AlignmentBank

OFFICIAL = Path(__file__).resolve().parents[2] / "shared" / "reference" / "drpo-official" / "mistral-7b-v0.1"


# -- the original release's pickled search result --------------------------------------------------------------------
@pytest.fixture(scope="module")
def official():
    path = OFFICIAL / "output.pkl"
    if not path.is_file():
        pytest.skip("the original release's output.pkl is not available")
    return load_untrusted_pickle(path)


def test_official_pickle_loads_as_inert_stand_ins(official):
    assert pickled_class(official) == "reasoner.search_algo.beam_search.BeamSearchResult"
    terminal, cum_reward, tree, trace = official.pickle_args
    assert pickled_class(terminal) == pickled_class(tree) == "reasoner.search_algo.beam_search.BeamSearchNode"
    assert cum_reward == pytest.approx(4.2897, abs=1e-3) and len(trace) == 30
    assert tree.id == 0 and tree.parent is None and terminal.reward == 4.8
    step = terminal.state[1]
    assert pickled_class(step) == "prompt_align.world_model.SubResult"
    _prompt, examples, query, answer, evaluation = step.pickle_args
    assert examples.startswith("# Query:") and query.endswith("?") and isinstance(answer, str)
    assert evaluation["Helpfulness"]["score"] == "5"
    assert not any(name.split(".")[0] in ("reasoner", "prompt_align") for name in sys.modules)  # nothing imported


def test_prompts_of_the_official_pickle(official):
    prompts = extract_prompts(official)
    path = best_path(official)
    assert prompts[0] == "You are a helpful assistant." and len(path) == 30
    assert len(prompts) == len(set(prompts)) > 30  # every prompt the search evaluated, best path first
    assert [s["Prompt"] for s in path] == [s.pickle_args[0] for s in official.pickle_args[0].state]
    assert path[-1]["Prompt"] == official.pickle_args[0].action  # the final prompt
    published = OFFICIAL / "output.json"
    if published.is_file():  # the release's JSON of the same run holds the same best path
        levels = json.loads(published.read_text())
        assert [v["Prompt"] for v in levels.values()] == [s["Prompt"] for s in path]
        assert [v["Evaluation of the prompt"] for v in levels.values()] == [s["Evaluation of the prompt"]
                                                                           for s in path]


# -- crafted pickles -------------------------------------------------------------------------------------------------
class _Reduce:
    def __init__(self, target, args):
        self.target, self.args = target, args

    def __reduce__(self):
        return self.target, self.args


def _malicious(marker: Path) -> dict[str, bytes]:
    command = f"touch {marker}"
    return {
        "os.system": pickle.dumps(_Reduce(os.system, (command,))),
        "builtins.eval": pickle.dumps(_Reduce(eval, (f"__import__('os').system({command!r})",))),
        "builtins.exec": pickle.dumps(_Reduce(exec, (f"open({str(marker)!r}, 'w')",))),
        "subprocess.Popen": pickle.dumps(_Reduce(subprocess.Popen, (["touch", str(marker)],))),
        "protocol 0 eval": f"c__builtin__\neval\n(V__import__('os').system({command!r})\ntR.".encode(),
        "builtins.getattr": pickle.dumps(_Reduce(getattr, ("text", "upper"))),
        "importlib": pickle.dumps(_Reduce(__import__("importlib").import_module, ("os",))),
        "nested pickle": pickle.dumps(_Reduce(pickle.loads, (pickle.dumps(_Reduce(os.system, (command,))),))),
        "inside a container": pickle.dumps({"result": [1, 2, _Reduce(os.system, (command,))]}),
    }


@pytest.mark.parametrize("name", list(_malicious(Path("/x"))))
def test_malicious_pickles_are_refused_and_run_nothing(tmp_path, name):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(_malicious(marker)[name])
    with pytest.raises(UnsafePickleError, match=r"refusing to load .*: this pickle asks to import a function that "
                                                r"could run code .*nothing from it was executed"):
        load_untrusted_pickle(path)
    assert not marker.exists()


@pytest.mark.parametrize("payload", [b"c__builtin__\nlist\n(c__builtin__\nxrange\n(I1000000000000\ntRtR.",
                                     b"c__builtin__\nbytearray\n(I1000000000000\ntR.",
                                     b"ccollections\ndeque\n(c__builtin__\nxrange\n(I1000000000000\ntRtR."])
def test_pickles_that_expand_into_unbounded_memory_are_refused(payload):
    with pytest.raises(UnsafePickleError, match="unbounded memory"):
        loads_untrusted_pickle(payload)


def test_unknown_callables_become_inert_records(tmp_path):
    marker = tmp_path / "pwned"
    data = b"\x80\x04\x8c\x0bsome_plugin\x8c\x06run_it\x93" + pickle.dumps(str(marker))[2:-1] + b"\x85R."
    obj = loads_untrusted_pickle(data)
    assert pickled_class(obj) == "some_plugin.run_it" and obj.pickle_args == (str(marker),)
    assert "some_plugin" not in sys.modules and not marker.exists()
    with pytest.raises(AttributeError, match="read-only"):
        obj.anything = 1


def test_harmless_builtins_are_rebuilt():
    value = {"s": {1, 2}, "f": frozenset({3}), "c": 1 + 2j, "b": bytearray(b"ab"), "r": range(3),
             "o": collections.OrderedDict(a=1), "d": datetime.datetime(2024, 5, 1, 12, 30),
             "t": datetime.timedelta(days=2), "q": collections.deque([1, 2])}
    for protocol in (0, 2, pickle.HIGHEST_PROTOCOL):
        assert loads_untrusted_pickle(pickle.dumps(value, protocol=protocol)) == value


def test_old_protocol_objects_become_stand_ins(monkeypatch):
    import types

    class Node:  # pickled by reference to a module that exists only while pickling
        def __init__(self):
            self.prompt, self.children = "You are kind.", []

    module = types.ModuleType("reasoner_old")
    Node.__qualname__, Node.__module__, module.Node = "Node", "reasoner_old", Node
    with monkeypatch.context() as patch:
        patch.setitem(sys.modules, "reasoner_old", module)
        pickles = [pickle.dumps(Node(), protocol=protocol) for protocol in (0, 1, 2)]
    assert "reasoner_old" not in sys.modules
    for data in pickles:
        obj = loads_untrusted_pickle(data)
        assert isinstance(obj, PickledObject) and pickled_class(obj) == "reasoner_old.Node"
        assert obj.prompt == "You are kind." and extract_prompts({"n": obj}) == ["You are kind."]

    class Prompts(list):  # a list subclass: protocols 0 and 1 rebuild it from its base type
        pass

    Prompts.__qualname__, Prompts.__module__, module.Prompts = "Prompts", "reasoner_old", Prompts
    with monkeypatch.context() as patch:
        patch.setitem(sys.modules, "reasoner_old", module)
        pickles = [pickle.dumps(Prompts(["Be brief.", "Be kind."]), protocol=protocol) for protocol in (0, 1, 2)]
    for data in pickles:
        obj = loads_untrusted_pickle(data)
        assert pickled_class(obj) == "reasoner_old.Prompts"
        assert {"Be brief.", "Be kind."} <= {v for v in walk(obj) if isinstance(v, str)}


@pytest.mark.parametrize(("data", "message"), [(b"not a pickle", r"not a readable pickle"),
                                               (pickle.dumps({"a": "b" * 50})[:20], r"not a readable pickle"),
                                               (b"", r"not a readable pickle")])
def test_broken_pickles_fail_clearly(tmp_path, data, message):
    path = tmp_path / "broken.pkl"
    path.write_bytes(data)
    with pytest.raises(ValueError, match=message):
        load_untrusted_pickle(path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_untrusted_pickle(tmp_path / "absent.pkl")


def test_persistent_ids_are_refused():
    data = b"\x80\x02Vsome-id\nQ."  # BINPERSID
    with pytest.raises(UnsafePickleError, match="persistent references"):
        loads_untrusted_pickle(data)


# -- JSON imports ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("data", "message"), [
    (["<START>\na\n<END>"], r"expected a path or a \{query: answer\} mapping, got list"),
    ({"q": 42}, r"query 'q': answer must be a str, got int"),
    ({"q": "<START>\nno end"}, r"query 'q': answer has <START> but no <END>"),
    ({"q": "<START>\na <END> b\n<END>"}, r"query 'q': .*in the middle of the text"),
    ({"": "<START>\na\n<END>"}, r"must not be empty"),
])
def test_published_icl_json_is_checked(data, message):
    with pytest.raises((TypeError, ValueError), match=message):
        AlignmentBank.from_published_json(data, embedder="hashing")


def test_official_icl_examples_import():
    path = OFFICIAL.parent / "ICL_examples.json"
    if not path.is_file():
        pytest.skip("the original release's ICL_examples.json is not available")
    bank = AlignmentBank.from_published_json(path, embedder="hashing")
    assert len(bank) >= 3 and all("<START>" not in e.answer and "<END>" not in e.answer for e in bank.examples)
