"""Interop with the original DRPO release: import its results, export ours in its shapes, AutoModel-style generate."""

from __future__ import annotations

import argparse
import json
import pickle
import sys
from pathlib import Path

import pytest
from world import World

from drpo_dspy import DEFAULT_INSTRUCTIONS, DRPO, AlignedResponder
from drpo_dspy.cli.import_official import add_import_official_parser, run_import_official
from drpo_dspy.interop.official import (
    _resolve_program,
    export_levels,
    export_official_icl,
    generate,
    import_official,
    levels_of,
    read_levels,
)
from drpo_dspy.retrievers.bank import AlignmentBank
from drpo_dspy.testing import last_user_text, scripted_lm, system_text

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "drpo-official"
MODEL_FOLDERS = sorted(p.name for p in REFERENCE.iterdir() if (p / "output.json").is_file()) \
    if REFERENCE.is_dir() else []
needs_reference = pytest.mark.skipif(not REFERENCE.is_dir(), reason="published DRPO reference data not present")

ICL = {f"Question number {i}?": f"<START>\nAnswer number {i}.\n<END>" for i in range(1, 5)}


def _levels(*prompts: str) -> dict:
    return {f"level {i}": {"Prompt": p, "Evaluation of the prompt": {"Helpfulness": {"rationale": "ok", "score": "4"}}}
            for i, p in enumerate(prompts, start=1)}


@pytest.fixture
def release(tmp_path) -> Path:
    """A miniature release: ICL_examples.json next to a model folder with output.json and output.txt."""
    (tmp_path / "ICL_examples.json").write_text(json.dumps(ICL, indent=4), encoding="utf-8")
    folder = tmp_path / "tiny-model"
    folder.mkdir()
    levels = _levels("You are a helpful assistant.", "Be helpful.\n- Refuse harm.")
    (folder / "output.json").write_text(json.dumps(levels), encoding="utf-8")
    (folder / "output.txt").write_text("Be helpful.\n- Refuse harm.", encoding="utf-8")
    return folder


# -- the original release, every model folder -------------------------------------------------------------------
@needs_reference
@pytest.mark.parametrize("model", MODEL_FOLDERS or ["(none)"])
def test_every_released_model_round_trips(model, tmp_path):
    folder = REFERENCE / model
    original_text = (folder / "output.txt").read_text(encoding="utf-8")
    original_levels = json.loads((folder / "output.json").read_text(encoding="utf-8"))
    program = import_official(folder, embedder="hashing")
    assert program.instructions == original_text == original_levels[f"level {len(original_levels)}"]["Prompt"]
    assert program.published_levels == original_levels and len(program.bank) == 16 and program.k == 2
    out = export_levels(program, tmp_path / "output.json")
    assert out.read_bytes() == (folder / "output.json").read_bytes()  # same data, same formatting
    assert import_official(folder / "output.txt", embedder="hashing").instructions == original_text
    assert import_official(folder / "output.json", embedder="hashing").instructions == original_text
    program.save(str(tmp_path / "program.json"))
    reloaded = AlignedResponder(examples=[], k=0)
    reloaded.load(str(tmp_path / "program.json"))
    assert reloaded.instructions == original_text and reloaded.k == 2


@needs_reference
def test_every_model_folder_is_covered():
    assert len(MODEL_FOLDERS) == 9


@needs_reference
def test_published_icl_round_trips_byte_for_byte(tmp_path):
    source = REFERENCE / "ICL_examples.json"
    bank = AlignmentBank.from_published_json(source, embedder="hashing")
    assert export_official_icl(bank, tmp_path / "icl.json").read_bytes() == source.read_bytes()
    program = import_official(REFERENCE / "gpt-3.5-turbo", icl_examples=source, embedder="hashing")
    assert export_official_icl(program, tmp_path / "again.json").read_bytes() == source.read_bytes()
    assert json.loads((tmp_path / "again.json").read_text()) == json.loads(source.read_text())


@needs_reference
def test_pickled_result_imports_safely_and_round_trips(tmp_path):
    folder = REFERENCE / "mistral-7b-v0.1"
    program = import_official(folder / "output.pkl", embedder="hashing")
    assert program.instructions == (folder / "output.txt").read_text(encoding="utf-8")
    assert export_levels(program, tmp_path / "o.json").read_bytes() == (folder / "output.json").read_bytes()


@needs_reference
def test_pickle_import_without_safe_pickle_says_what_it_needs(monkeypatch):
    monkeypatch.setitem(sys.modules, "drpo_dspy.interop.safe_pickle", None)  # as if the module were absent
    with pytest.raises(ImportError, match=r"pickle import needs drpo_dspy\.interop\.safe_pickle"):
        import_official(REFERENCE / "mistral-7b-v0.1" / "output.pkl", embedder="hashing")


def test_a_prompt_pickled_on_its_own_imports(tmp_path):
    pytest.importorskip("drpo_dspy.interop.safe_pickle")
    (tmp_path / "output.pkl").write_bytes(pickle.dumps("Be brief.\n- Be kind."))
    program = import_official(tmp_path, embedder="hashing")
    assert program.instructions == "Be brief.\n- Be kind." and list(program.published_levels) == ["level 1"]


# -- import and export without the release ---------------------------------------------------------------------
def test_import_finds_the_icl_file_in_the_parent_folder(release, tmp_path):
    program = import_official(release, k=1, embedder="hashing")
    assert program.instructions == "Be helpful.\n- Refuse harm." and program.k == 1
    # An explicit cap: without one, a /v1/completions server answers with its default of 16 tokens.
    assert program.max_tokens == 1024 and program.dump_state()["decoding"]["max_tokens"] == 1024
    assert program.bank.to_published_json() == ICL
    assert export_levels(program, tmp_path / "o.json").read_bytes() == (release / "output.json").read_bytes()
    assert levels_of(release / "output.json") == read_levels(release / "output.json")
    assert levels_of(program.with_state(k=2)) == read_levels(release / "output.json")  # copies keep them


def test_text_prompt_without_icl_file_uses_the_seed_examples(tmp_path):
    (tmp_path / "prompt.txt").write_text("Be kind.\n- Say what you cannot do.", encoding="utf-8")
    program = import_official(tmp_path / "prompt.txt", embedder="hashing")
    assert program.instructions == "Be kind.\n- Say what you cannot do." and len(program.bank) == 16
    assert list(program.published_levels) == ["level 1"]
    explicit = import_official(tmp_path / "prompt.txt", icl_examples=ICL, k=3, embedder="hashing")
    assert len(explicit.bank) == 4 and explicit.k == 3


@pytest.mark.parametrize(("content", "message"), [
    ({}, "non-empty object"),
    ({"level 2": {"Prompt": "x"}}, "expected 'level 1'"),
    ({"level 1": {"Prompt": ""}}, "non-empty string 'Prompt'"),
    ({"level 1": {"Prompt": "x", "Evaluation of the prompt": []}}, "must be an object"),
    ([1, 2], "non-empty object"),
])
def test_malformed_levels_are_clear_errors(tmp_path, content, message):
    (tmp_path / "output.json").write_text(json.dumps(content), encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        import_official(tmp_path, embedder="hashing")


def test_missing_and_foreign_paths(tmp_path):
    with pytest.raises(FileNotFoundError):
        import_official(tmp_path / "missing")
    with pytest.raises(ValueError, match="not a model folder"):
        import_official(tmp_path)
    (tmp_path / "notes.md").write_text("x")
    with pytest.raises(ValueError, match="unsupported file type"):
        import_official(tmp_path / "notes.md")
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(ValueError, match="empty"):
        import_official(tmp_path / "empty.txt")


def test_export_levels_from_a_compiled_program_and_its_run_directory(tmp_path):
    world = World(lambda p, q: [3, 4] if p.endswith("/1") else [3, 3])
    drpo = DRPO(**world.roles(), depth=3, n_actions=2, k=0, log_dir=tmp_path / "run", progress=False)
    program = drpo.compile(AlignedResponder("Start.", examples=[], k=0), trainset=["q one", "q two", "q three"])
    published = json.loads((tmp_path / "run" / "levels.json").read_text())
    assert levels_of(program) == published == levels_of(tmp_path / "run")
    edited = program.with_state(instructions="Edited by hand.")  # the search results no longer describe it
    assert levels_of(edited) == {"level 1": {"Prompt": "Edited by hand.", "Evaluation of the prompt": {}}}
    assert published["level 3"]["Prompt"] == program.instructions
    (tmp_path / "run" / "levels.json").unlink()  # rebuilt from the trace: the same best path
    assert json.loads(export_levels(tmp_path / "run", tmp_path / "o.json").read_text()) == published
    assert levels_of(tmp_path / "run" / "program.json") == {
        "level 1": {"Prompt": program.instructions, "Evaluation of the prompt": {}}}
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not a drpo run directory"):
        levels_of(tmp_path / "empty")
    with pytest.raises(FileNotFoundError):
        levels_of(tmp_path / "missing")


def test_cli_writes_a_loadable_program(release, tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="drpo")
    add_import_official_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["import-official", str(release), "--k", "3", "--embedder", "hashing",
                              "--out", str(tmp_path / "p" / "program.json"), "--levels-out", str(tmp_path / "l.json")])
    assert args.handler is run_import_official and run_import_official(args) == 0
    program = AlignedResponder(examples=[], k=0)
    program.load(str(tmp_path / "p" / "program.json"))
    assert program.instructions == "Be helpful.\n- Refuse harm." and program.k == 3 and len(program.bank) == 4
    assert (tmp_path / "l.json").read_bytes() == (release / "output.json").read_bytes()
    assert "2 level(s)" in capsys.readouterr().out
    with pytest.raises(ValueError, match="--out"):
        run_import_official(parser.parse_args(["import-official", str(release), "--out", str(tmp_path / "p.txt")]))
    with pytest.raises(SystemExit):
        parser.parse_args(["import-official", str(release)])  # --out is required


# -- generate(): the original AutoModel parameters --------------------------------------------------------------
def _recording_lm():
    seen: list[dict] = []

    def answer(messages, params):
        seen.append({"system": system_text(messages), "user": last_user_text(messages), "params": params})
        return "Here is my answer.\n<END>"

    return scripted_lm(answer), seen


def test_generate_layout_examples_and_decoding_parameters(release):
    lm, seen = _recording_lm()
    program = import_official(release, embedder="hashing")
    text = generate("Question number 2?", num_optimized_icl=3, temperature=0.3, top_p=0.9, max_new_tokens=77,
                    program=program, lm=lm)
    assert text == "Here is my answer."
    call = seen[-1]
    assert call["system"].startswith("Be helpful.\n- Refuse harm.\n\n# Query:\nQuestion number 2?\n\n# Answer:\n"
                                     "Answer number 2.")  # the most similar example first
    assert call["system"].count("# Query:") == 3 and call["system"].count("# Answer:") == 3
    assert call["user"] == "# Query:\nQuestion number 2?\n\n# Answer:\n"
    params = call["params"]
    assert (params["temperature"], params["top_p"], params["max_tokens"]) == (0.3, 0.9, 77)
    assert "<END" in params["stop"]
    generate("Question number 2?", program=program, lm=lm)
    assert seen[-1]["system"].count("# Query:") == 3  # num_optimized_icl defaults to 3
    assert (seen[-1]["params"]["temperature"], seen[-1]["params"]["top_p"], seen[-1]["params"]["max_tokens"]) == \
        (0.0, 1.0, 512)


def test_generate_prompt_choices(release, tmp_path):
    lm, seen = _recording_lm()
    program = import_official(release, embedder="hashing")
    generate("Anything?", user_specified_system_prompt="Custom prompt.", optimized_prompt=True, num_optimized_icl=1,
             program=program, lm=lm)
    assert seen[-1]["system"].startswith("Custom prompt.\n\n# Query:") and "Refuse harm" not in seen[-1]["system"]
    assert seen[-1]["system"].count("# Query:") == 1
    generate("Anything?", optimized_prompt=False, optimized_icl=False, program=program, lm=lm)
    assert seen[-1]["system"].strip() == DEFAULT_INSTRUCTIONS
    assert program.instructions == "Be helpful.\n- Refuse harm." and program.k == 2  # the program is untouched
    program.save(str(tmp_path / "program.json"))
    generate("Anything?", num_optimized_icl=2, program=tmp_path / "program.json", lm=lm)  # a saved program
    assert seen[-1]["system"].startswith("Be helpful.") and seen[-1]["system"].count("# Query:") == 2
    assert _resolve_program(release).instructions == program.instructions  # a model folder as the program
    import dspy

    with dspy.context(lm=lm):  # the configured LM by default
        assert generate("Anything?", program=program, num_optimized_icl=1) == "Here is my answer."
    assert generate("Other?", program=program, num_optimized_icl=1, lm=lm.model) == "Here is my answer."  # a string


def test_generate_rejects_bad_arguments(release):
    lm, _ = _recording_lm()
    program = import_official(release, embedder="hashing")
    for kwargs, message in (({"num_optimized_icl": 0}, "positive integer"), ({"num_optimized_icl": 5}, "only 4"),
                            ({"temperature": -1}, "temperature"), ({"top_p": 1.5}, "top_p"),
                            ({"max_new_tokens": 0}, "max_new_tokens"),
                            ({"user_specified_system_prompt": " "}, "user_specified_system_prompt")):
        with pytest.raises(ValueError, match=message):
            generate("q?", program=program, lm=lm, **kwargs)
    with pytest.raises(ValueError, match="user_query"):
        generate("", program=program, lm=lm)
    with pytest.raises(ValueError, match="no LM"):
        generate("q?", program=program, num_optimized_icl=1)
