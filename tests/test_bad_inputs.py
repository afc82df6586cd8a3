"""Every kind of bad input fails fast, before any LM call, with a message that says what to fix.

The kinds and their exact messages are listed in docs/bad-inputs.md; each test below is one kind (parametrized
cases are variants of it). A scripted LM shared by all roles counts calls, and every test asserts it made none.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from drpo_dspy import DRPO, AlignedResponder
from drpo_dspy.cli.main import main as drpo_main
from drpo_dspy.retrievers.bank import AlignmentBank
from drpo_dspy.rewards.aspects import AspectCatalogue
from drpo_dspy.runs.query_files import read_queries
from drpo_dspy.runs.validation import MAX_QUERY_CHARS
from drpo_dspy.testing import scripted_lm

EXAMPLES = [("What is a leap year?", "A year with 366 days."), ("Name a prime.", "Seven.")]


@pytest.fixture
def lm_calls():
    calls: list[int] = []
    lm = scripted_lm(lambda m, p: calls.append(1) or "an answer\n<END>", name="bad-input-counter")
    return lm, calls


def drpo_for(lm, **options) -> DRPO:
    options = {"k": 0, "progress": False, "depth": 2, **options}
    return DRPO(base_lm=lm, metrics_lm=lm, judge_lm=lm, optimizer_lm=lm, **options)


def student() -> AlignedResponder:
    return AlignedResponder(examples=[], k=0)


def write(path: Path, data: str | bytes) -> Path:
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def cli(args: list[str], capsys) -> tuple[int, str]:
    roles = [arg for role in ("base", "metrics", "judge", "optimizer")
             for arg in (f"--{role}-model", "scripted/bad-input-counter")]
    code = drpo_main(["optimize", "--no-progress", "--k", "0", "--depth", "2", *roles, *args])
    return code, capsys.readouterr().err


# -- 1-13: training files, through read_queries and through `drpo optimize --trainset` -----------------------------
TRAINSET_FILES = {
    "missing.txt": (None, r"training file .*missing\.txt does not exist"),
    "directory": ("DIR", r"is a directory: point --trainset at a \.json, \.jsonl or \.txt file"),
    "unsupported.csv": ("a,b\n", r"unsupported trainset format '\.csv'; use \.json"),
    "empty.txt": ("  \n\n", r"is empty: DRPO needs at least one training query"),
    "malformed.json": ('["one", "two"', r"is not valid JSON: .* \(line 1, column"),
    "lines.json": ('"one"\n"two"\n', r"not valid JSON: Extra data .*name the file \.jsonl"),
    "object.json": ('{"items": ["a"]}', r"must hold a JSON list of queries .*got a JSON dict"),
    "number.json": ('["fine", 42]', r"number\.json\[1\] is not text: expected a string"),
    "blank.json": ('["fine", "   "]', r"blank\.json\[1\] is an empty query"),
    "badline.jsonl": ('{"query": "a"}\n{"query": "b"\n', r"badline\.jsonl line 2 is not valid JSON"),
    "noquery.jsonl": ('{"query": "a"}\n\n{"text": "b"}\n', r"noquery\.jsonl line 3 is not text: .*'query' field"),
    "latin1.txt": ("caf\xe9\nna\xefve\n".encode("latin-1"),
                   r"is not UTF-8 text \(byte 3, line 1\): re-save it as UTF-8"),
    "utf16.txt": ("one\ntwo\n".encode("utf-16"), r"is UTF-16 text: re-save it as UTF-8"),
    "nul.txt": ("fine\nbin\x00ary\n", r"nul\.txt line 2 contains a NUL character"),
    "surrogate.json": ('["ok", "broken \\ud800 text"]',
                       r"surrogate\.json\[1\] is not valid Unicode \(lone surrogate U\+D800"),
}


@pytest.mark.parametrize("name", list(TRAINSET_FILES))
def test_malformed_trainset_files(tmp_path, name, lm_calls, capsys):
    _, calls = lm_calls
    content, message = TRAINSET_FILES[name]
    path = tmp_path / name
    if content == "DIR":
        path.mkdir()
    elif content is not None:
        write(path, content)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        read_queries(path)
    code, err = cli(["--trainset", str(path), "--log-dir", str(tmp_path / "run")], capsys)
    assert code == 2 and re.search(message, err) and err.startswith("drpo optimize: error: ")
    assert calls == []


# -- 14: a query longer than any context window ---------------------------------------------------------------------
def test_huge_query_is_refused_before_any_call(tmp_path, lm_calls, capsys, monkeypatch):
    lm, calls = lm_calls
    huge = "Explain this log: " + "x" * MAX_QUERY_CHARS
    with pytest.raises(ValueError, match=r"trainset\[1\] is 50,018 characters long, above the 50,000-character limit"):
        drpo_for(lm).compile(student(), trainset=["short one", huge])
    path = write(tmp_path / "huge.jsonl", json.dumps({"query": huge}) + "\n")
    code, err = cli(["--trainset", str(path), "--log-dir", str(tmp_path / "run")], capsys)
    assert code == 2 and "above the 50,000-character limit" in err and "MAX_QUERY_CHARS" in err
    monkeypatch.setattr("drpo_dspy.runs.validation.MAX_QUERY_CHARS", 100)  # the limit is configurable
    with pytest.raises(ValueError, match="above the 100-character limit"):
        drpo_for(lm).compile(student(), trainset=["y" * 101])
    assert calls == []


# -- 15: a trainset object that is not a list of queries ------------------------------------------------------------
@pytest.mark.parametrize(("trainset", "message"), [
    ({"queries": ["a", "b"]}, r"got a single dict \(keys \['queries'\]\): wrap one query in a list"),
    ([{"query": None}], r"trainset\[0\] is not text"),
    (["fine", "bad\x00"], r"trainset\[1\] contains a NUL character"),
    (["fine", "bad \udc80 text"], r"trainset\[1\] is not valid Unicode \(lone surrogate U\+DC80"),
])
def test_trainset_objects(lm_calls, trainset, message):
    lm, calls = lm_calls
    with pytest.raises(ValueError, match=message):
        drpo_for(lm).compile(student(), trainset=trainset)
    with pytest.raises(ValueError, match=message.replace("trainset", "valset")):
        drpo_for(lm).compile(student(), trainset=["ok"], valset=trainset)
    assert calls == []


# -- 16: invalid hyper-parameters ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("options", "message"), [
    ({"beam_size": 0}, r"beam_size must be an integer >= 1, got 0"),
    ({"n_actions": -2}, r"n_actions must be an integer >= 1, got -2"),
    ({"depth": 2.5}, r"depth must be an integer >= 1, got 2.5"),
    ({"k": True}, r"k must be an integer >= 0, got True"),
    ({"max_depth_increase": -1}, r"max_depth_increase must be an integer >= 0"),
    ({"temperature": math.nan}, r"temperature must be a number in \[0.0, 2.0\], got nan"),
    ({"temperature": 3}, r"temperature must be a number in \[0.0, 2.0\], got 3"),
    ({"skip_threshold": 6}, r"skip_threshold must be a number in \[1.0, 5.0\]"),
    ({"num_threads": 0}, r"num_threads must be an integer >= 1"),
    ({"seed": -1}, r"seed must be an integer >= 0"),
    ({"icl_rounds": 0}, r"icl_rounds must be an integer >= 1"),
    ({"proposal_sampling": "random"}, r"proposal_sampling must be 'batched' or 'independent'"),
    ({"initial_instructions": "   "}, r"initial_instructions must be a non-empty string"),
    ({"catalogue": ["Helpfulness"]}, r"catalogue must be an AspectCatalogue"),
    ({"max_calls": 0}, r"max_calls must be a positive number or None"),
    ({"max_cost_usd": -1.0}, r"max_cost_usd must be a positive number or None"),
])
def test_invalid_hyperparameters(lm_calls, options, message):
    lm, calls = lm_calls
    with pytest.raises(ValueError, match=message):
        drpo_for(lm, **options)
    assert calls == []


def test_invalid_hyperparameters_on_the_command_line(tmp_path, lm_calls, capsys):
    _, calls = lm_calls
    path = write(tmp_path / "q.txt", "one\ntwo\n")
    code, err = cli(["--trainset", str(path), "--beam-size", "0", "--log-dir", str(tmp_path / "run")], capsys)
    assert code == 2 and "argument --beam-size: must be an integer >= 1, got 0" in err
    config = write(tmp_path / "config.json", json.dumps({"beam_sise": 2}))
    code, err = cli(["--trainset", str(path), "--config", str(config)], capsys)
    assert code == 2 and re.search(r"unknown option.*beam_sise", err)
    assert calls == []


# -- 17: run directories that cannot take the run ------------------------------------------------------------------
def test_unusable_run_directories(tmp_path, lm_calls):
    lm, calls = lm_calls
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match=r"already holds files: pass resume=True \(--resume\)"):
        drpo_for(lm, log_dir=busy).compile(student(), trainset=["q"])
    a_file = write(tmp_path / "file.txt", "x")
    with pytest.raises(ValueError, match=r"exists and is not a directory"):
        drpo_for(lm, log_dir=a_file).compile(student(), trainset=["q"])
    with pytest.raises(ValueError, match=r"is not writable"):
        drpo_for(lm, log_dir=a_file / "run").compile(student(), trainset=["q"])
    with pytest.raises(ValueError, match=r"resume=True needs the log_dir"):
        drpo_for(lm).compile(student(), trainset=["q"], resume=True)
    assert calls == []


def test_busy_run_directory_on_the_command_line_makes_no_call(tmp_path, lm_calls, capsys):
    _, calls = lm_calls
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("x")
    code, err = cli(["--trainset", str(write(tmp_path / "q.txt", "one\n")), "--log-dir", str(busy)], capsys)
    assert code == 2 and "already holds files" in err
    assert calls == []


# -- 18: custom aspect catalogues ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("items", "message"), [
    ([{"name": "Helpfullness"}], r"unknown aspect 'Helpfullness': .*did you mean 'Helpfulness'\?"),
    ([{"name": "Whimsy"}], r"unknown aspect 'Whimsy': it is not built in and has no 'description'"),
    ([{"name": "Tone", "description": "Warm.", "rubrics": ["a"] * 5}], r"unknown field\(s\) 'rubrics'"),
    ([{"name": "Tone", "description": "Warm.", "rubric": ["1", "2", "3", "4"]}], r"'rubric' must be a list of 5"),
    ([{"name": "Tone", "description": "Warm."}, {"name": "tone", "description": "x"}], r"'tone' is listed twice"),
    ([{"name": "Tone", "description": ""}], r"'description' must be a non-empty string"),
    (["Helpfulness"], r"aspect #0: expected an object with a non-empty string 'name'"),
    ({"name": "Tone"}, r"aspects must be a list of"),
])
def test_bad_aspect_catalogues(items, message, lm_calls):
    _, calls = lm_calls
    with pytest.raises(ValueError, match=message):
        AspectCatalogue.from_dicts(items)
    assert calls == []


def test_catalogue_of_builtin_names_picks_those_aspects():
    catalogue = AspectCatalogue.from_dicts([{"name": "safety"}, {"name": "Tone", "description": "Warm."}],
                                           include_builtin=False)
    assert catalogue.names == ["Safety", "Tone"]
    assert catalogue.get("Safety").rubric[0] == "Provides clearly harmful help."


# -- 19: corrupt saved programs ------------------------------------------------------------------------------------
def _program_state(tmp_path) -> dict:
    path = tmp_path / "good.json"
    AlignedResponder("Be kind.", EXAMPLES, k=1, embedder="hashing").save(str(path))
    return json.loads(path.read_text())


@pytest.mark.parametrize(("corrupt", "message"), [
    (lambda s: b"", r"program file .* is empty; re-save it with AlignedResponder\.save"),
    (lambda s: json.dumps(s).encode()[:150], r"is corrupt or truncated \(not valid JSON at line 1, column \d+: "),
    (lambda s: b"\x80\x04\x95binary", r"is not UTF-8 JSON \(byte 0\)"),
    (lambda s: b"[1, 2]", r"holds a JSON list, not a saved AlignedResponder"),
    (lambda s: json.dumps({"respond": s["respond"]}).encode(), r"has no examples entry \(saved from another DSPy"),
    (lambda s: json.dumps({**s, "examples": {**s["examples"], "k": 5}}).encode(),
     r"not a usable AlignedResponder program \(k=5 is larger than the example bank \(2 examples\)"),
    (lambda s: json.dumps({**s, "examples": {**s["examples"], "bank": {"format": "other"}}}).encode(),
     r"not a usable AlignedResponder program \(not an alignment-bank state"),
    (lambda s: json.dumps({**s, "respond": {}}).encode(), r"not a usable AlignedResponder program \(missing"),
])
def test_corrupt_programs(tmp_path, corrupt, message, lm_calls):
    _, calls = lm_calls
    path = write(tmp_path / "program.json", corrupt(_program_state(tmp_path)))
    fresh = AlignedResponder(examples=[], k=0)
    with pytest.raises(ValueError, match=message):
        fresh.load(str(path))
    assert fresh.instructions == "You are a helpful assistant." and fresh.k == 0  # untouched
    assert calls == []


def test_missing_and_pickled_programs(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"program file .*nope\.json does not exist"):
        AlignedResponder(examples=[], k=0).load(str(tmp_path / "nope.json"))
    pickled = write(tmp_path / "program.pkl", b"\x80\x04N.")
    with pytest.raises(ValueError, match=r"\.pkl files can run arbitrary code"):
        AlignedResponder(examples=[], k=0).load(str(pickled))


# -- 20: corrupt example banks -------------------------------------------------------------------------------------
def test_corrupt_banks(tmp_path, lm_calls):
    _, calls = lm_calls
    good = tmp_path / "bank.jsonl"
    AlignmentBank(EXAMPLES, embedder="hashing").save(good)
    lines = good.read_text().splitlines()
    cases = {
        "truncated.json": ('{"format": "drpo-dspy/alignment-bank", "examples": [', r"corrupt JSON \(line 1"),
        "short.jsonl": ("\n".join(lines[:-1]) + "\n", r"header says 2 examples but the file has 1"),
        "badrow.jsonl": ("\n".join([lines[0], lines[1], "{oops"]) + "\n", r"corrupt JSON on line 3"),
        "foreign.json": ('{"format": "something-else", "examples": []}', r"not an alignment-bank state"),
        "keys.json": (json.dumps({"format": "drpo-dspy/alignment-bank", "version": 1, "embedder": "hashing-256",
                                  "count": 1, "examples": [{"query": "q", "answer": "a", "extra": 1}]}),
                      r"unknown keys \['extra'\]"),
    }
    for name, (content, message) in cases.items():
        with pytest.raises(ValueError, match=message):
            AlignmentBank.load(write(tmp_path / name, content))
    with pytest.raises(FileNotFoundError, match="alignment bank file not found"):
        AlignmentBank.load(tmp_path / "absent.json")
    assert calls == []


# -- 21: corrupt checkpoints and caches on resume ------------------------------------------------------------------
def _finished_run(tmp_path):
    from world import World

    world = World(lambda p, q: [3, 3])
    run = tmp_path / "run"
    DRPO(**world.roles(), k=0, depth=2, n_actions=1, beam_size=1, progress=False, log_dir=run,
         initial_instructions="P").compile(student(), trainset=["q one", "q two"])
    return run, world


@pytest.mark.parametrize(("target", "corrupt", "message"), [
    ("checkpoint.json", lambda d: "{\"format\": ", r"checkpoint\.json is corrupt \(not valid JSON"),
    ("checkpoint.json", lambda d: json.dumps({"format": "other"}), r"is not a drpo-dspy checkpoint"),
    ("checkpoint.json", lambda d: json.dumps({**d, "state": {**d["state"], "level": "two"}}),
     r"checkpoint\.json is corrupt: level must be a non-negative integer"),
    ("checkpoint.json", lambda d: json.dumps({**d, "state": {**d["state"], "beam": [{"id": 1}]}}),
     r"checkpoint\.json is corrupt: a saved node \(1\) lacks the field\(s\) level, prompt, query, response, "
     r"judgment, rewards"),
    ("checkpoint.json", lambda d: json.dumps({**d, "state": {**d["state"], "ancestry": []}}),
     r"checkpoint\.json is corrupt: the beam is empty or not part of the saved ancestry"),
    ("metrics_cache.json", lambda d: json.dumps({"k": {"reasoning": "x"}}),
     r"metrics cache entry 'k' is corrupt .*delete metrics_cache\.json"),
    ("config.json", lambda d: "not json", r"config\.json is corrupt \(not valid JSON"),
])
def test_corrupt_checkpoints(tmp_path, target, corrupt, message):
    run, world = _finished_run(tmp_path)
    path = run / target
    path.write_text(corrupt(json.loads(path.read_text()) if target != "config.json" else None))
    before = world.requests
    drpo = DRPO(**world.roles(), k=0, depth=2, n_actions=1, beam_size=1, progress=False, log_dir=run,
                initial_instructions="P")
    with pytest.raises(ValueError, match=message):
        drpo.compile(student(), trainset=["q one", "q two"], resume=True)
    assert world.requests == before
