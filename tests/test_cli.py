"""The drpo command line, driven in-process with scripted role models."""

from __future__ import annotations

import json

import pytest
from world import World

from drpo_dspy.cli.main import main


def role_flags(prefix: str) -> list[str]:
    return [arg for role in ("base", "metrics", "judge", "optimizer")
            for arg in (f"--{role}-model", f"scripted/{prefix}-{role}")]


@pytest.fixture
def world():
    return World(lambda p, q: [3, 4] if p.endswith("/1") else [3, 3], name="cli")


def test_optimize_prints_before_after_and_writes_the_run(tmp_path, world, capsys):
    queries = tmp_path / "queries.txt"
    queries.write_text("first question\nsecond question\nthird question\n")
    code = main(["optimize", *role_flags("cli"), "--trainset", str(queries), "--depth", "3", "--n-actions", "2",
                 "--k", "1", "--log-dir", str(tmp_path / "run"), "--no-progress", "--demo-query", "demo q"])
    out = capsys.readouterr().out
    assert code == 0
    assert "Prompt before:\nYou are a helpful assistant." in out
    assert "You are a helpful assistant./1/1" in out
    assert "Answer before:\nANSWER prompt=<You are a helpful assistant.> query=<demo q>" in out
    assert "Answer after:\nANSWER prompt=<You are a helpful assistant./1/1> query=<demo q>" in out
    assert (tmp_path / "run" / "program.json").is_file()

    assert main(["respond", "another q", "--program", str(tmp_path / "run" / "program.json"),
                 "--model", "scripted/cli-base"]) == 0
    assert capsys.readouterr().out.strip() == "ANSWER prompt=<You are a helpful assistant./1/1> query=<another q>"


def test_dry_run_calls_nothing(world, capsys, tmp_path):
    code = main(["optimize", *role_flags("cli"), "--dry-run", "--depth", "4", "--log-dir", str(tmp_path / "r")])
    assert code == 0 and world.requests == 0
    out = capsys.readouterr().out
    assert "| total |" in out and "| optimizer | scripted/cli-optimizer |" in out


def test_resume_continues_a_stopped_run(tmp_path, world, capsys):
    run = tmp_path / "run"
    args = [*role_flags("cli"), "--num-queries", "6", "--depth", "4", "--n-actions", "2", "--k", "0",
            "--no-progress"]
    assert main(["optimize", *args, "--log-dir", str(run), "--max-calls", "9"]) == 0
    out = capsys.readouterr().out
    assert "Stopped early: the call budget" in out and f"To continue: drpo optimize --resume {run}" in out
    (run / "STOP").touch()  # a STOP file left by an earlier stop does not stop the resumed run at once
    assert main(["optimize", "--resume", str(run), "--no-progress"]) == 0
    captured = capsys.readouterr()
    out = captured.out
    assert "Stopped early" not in out and f"Removed {run / 'STOP'}" in captured.err
    assert json.loads((run / "summary.json").read_text())["levels"] == 4


def test_config_file_and_bad_input(tmp_path, world, capsys):
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"depth": 2, "n_actions": 1, "k": 0, "no_progress": True}))
    assert main(["optimize", *role_flags("cli"), "--config", str(config), "--num-queries", "2",
                 "--log-dir", str(tmp_path / "r")]) == 0
    config.write_text(json.dumps({"beam_size": 0}))
    assert main(["optimize", *role_flags("cli"), "--config", str(config), "--log-dir", str(tmp_path / "r2")]) == 2
    assert "beam_size must be an integer >= 1" in capsys.readouterr().err
    config.write_text(json.dumps({"nonsense": 1}))
    assert main(["optimize", "--config", str(config)]) == 2
    assert "drpo optimize: error: unknown option(s) in --config" in capsys.readouterr().err
    assert main(["optimize", *role_flags("cli"), "--trainset", str(tmp_path / "missing.json")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["respond", "q", "--program", str(tmp_path / "nope.json")]) == 2
    assert capsys.readouterr().err.startswith(f"drpo respond: error: program file {tmp_path / 'nope.json'} does not")


def test_dry_run_needs_no_key_and_names_unpriced_models(monkeypatch, capsys, tmp_path):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    code = main(["optimize", "--dry-run", "--base-model", "openai/gpt-4o-mini", "--metrics-model", "openai/gpt-4o",
                 "--judge-model", "openai/gpt-4o", "--optimizer-model", "openai/gpt-4o-typo", "--depth", "4",
                 "--log-dir", str(tmp_path / "r")])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "| total |" in captured.out
    assert "no price known for openai/gpt-4o-typo: cost not estimated" in captured.out
    assert "no price known for openai/gpt-4o " not in captured.out  # priced models are not flagged
    assert "no price known for openai/gpt-4o-mini" not in captured.out
    assert not (tmp_path / "r").exists()  # a dry run writes nothing


def test_only_hosted_models_missing_from_the_price_table_are_flagged():
    import dspy

    from drpo_dspy.clients.metering import price_notes, unpriced_models

    free = [dspy.LM("ollama_chat/llama3.2"), dspy.LM("hosted_vllm/mistral", api_base="http://localhost:8000/v1"),
            dspy.LM("openai/my-finetune", api_base="http://localhost:8000/v1"), dspy.LM("scripted/x"),
            dspy.LM("embedded/smollm2-135m"), dspy.LM("openai/gpt-4o-mini"), "openai/gpt-4o"]
    assert unpriced_models(free) == []
    typos = [dspy.LM("openai/gpt-4o-typo"), "openai/gpt-4o-typo", "anthropic/claude-nope"]
    assert price_notes(typos) == [
        "no price known for openai/gpt-4o-typo: cost not estimated (counted as $0.00 above; check the model name)",
        "no price known for anthropic/claude-nope: cost not estimated (counted as $0.00 above; check the model name)"]
