"""The ``drpo`` process as a user meets it: start-up without heavy imports, --version, help with examples, flag
aliases, one error style with one exit-code scheme, quiet third-party output, and Ctrl-C that stops at once."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import pytest
from world import World

from drpo_dspy.cli import build_parser, main
from drpo_dspy.testing import scripted_lm

HERE = Path(__file__).parent
HEAVY = ("dspy", "litellm", "torch", "transformers", "sentence_transformers")
PROBE = ("import json, sys\n"
         "from drpo_dspy.cli import main\n"
         "code = main(sys.argv[1:])\n"
         f"print(json.dumps({{'code': code, 'heavy': sorted(m for m in {HEAVY!r} if m in sys.modules)}}))\n")


def drpo_process(*argv: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, timeout=120, **kwargs)


def probe(*argv: str, **kwargs) -> tuple[int, list[str], str, str]:
    proc = drpo_process(*argv, **kwargs)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return result["code"], result["heavy"], proc.stdout, proc.stderr


# -- 2, 3: start-up --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("argv", "code", "shown"), [
    (["--help"], 0, "Examples:"),
    (["optimize", "--help"], 0, "drpo optimize --resume"),
    (["--version"], 0, f"drpo {metadata.version('drpo-dspy')}"),
    (["optimize", "--beam-size", "0"], 2, "drpo optimize: error: argument --beam-size: must be an integer >= 1, got 0"),
    (["optimize", "--temperature", "nan"], 2, "argument --temperature: must be a finite number"),
    (["evaluate", "--limit", "0"], 2, "drpo evaluate: error: argument --limit: must be an integer >= 1, got 0"),
    (["optimize-icl", "--rounds", "-1"], 2, "drpo optimize-icl: error: argument --rounds: must be an integer >= 0"),
    (["serve", "--port", "70000"], 2, "drpo serve: error: argument --port: must be a port number"),
    (["respond", "--program", "p.json"], 2, "drpo respond: error: the following arguments are required: QUERY"),
    (["no-such-command"], 2, "drpo: error: argument COMMAND: invalid choice"),
])
def test_help_version_and_usage_errors_import_nothing_heavy(argv, code, shown):
    got, heavy, out, err = probe(*argv)
    assert got == code, err
    assert shown in out + err
    assert heavy == []


def test_package_import_is_light_and_the_public_names_still_import():
    script = ("import sys, drpo_dspy\n"
              f"assert not [m for m in {HEAVY!r} if m in sys.modules]\n"
              "from drpo_dspy import DRPO, AlignedResponder\n"
              "assert 'dspy' in sys.modules and DRPO.__module__ == 'drpo_dspy.teleprompt.drpo'\n"
              "assert 'DRPO' in dir(drpo_dspy) and drpo_dspy.AlignedResponder is AlignedResponder\n"
              "print('ok')\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "ok", proc.stderr


# -- 4: help -----------------------------------------------------------------------------------------------------------
def _commands() -> dict:
    parser = build_parser()
    return next(a for a in parser._actions if a.dest == "command").choices


def test_every_command_has_a_description_and_examples():
    commands = _commands()
    assert set(commands) == {"optimize", "evaluate", "optimize-icl", "import-official", "show", "respond", "serve"}
    for name, parser in commands.items():
        text = parser.format_help()
        assert parser.description and len(parser.description) > 60, name
        examples = text.split("Examples:\n", 1)[1]
        assert f"  drpo {name}" in examples, name  # at least one example of the command itself
        for action in parser._actions:
            assert action.help, f"drpo {name}: {action.option_strings or action.dest} has no help"


def test_serve_shows_its_defaults_and_respond_documents_its_arguments(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # no wrapping inside the values
    commands = _commands()
    serve = " ".join(commands["serve"].format_help().split())
    for shown in ("(default: 8000)", "(default: 127.0.0.1", "(default: 2048)", "(default: 120.0)",
                  "(default: drpo-aligned)"):
        assert shown in serve
    respond = commands["respond"].format_help()
    assert "QUERY" in respond and "the user's query" in respond and "program.json written by drpo optimize" in respond


# -- 5: one naming scheme ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("argv", "dest", "value"), [
    (["optimize-icl", "--optimizer-model", "m"], "rewriter_model", "m"),
    (["optimize-icl", "--rewriter-model", "m"], "rewriter_model", "m"),
    (["respond", "q", "--program", "p", "--base-model", "m"], "model", "m"),
    (["respond", "q", "--program", "p", "--model", "m"], "model", "m"),
    (["respond", "q", "--program", "p", "--base-api-base", "u"], "api_base", "u"),
    (["respond", "q", "--program", "p", "--api-base", "u"], "api_base", "u"),
    (["respond", "q", "--program", "p", "--base-model-type", "text"], "model_type", "text"),
    (["optimize", "--num-queries", "3", "-v"], "verbose", True),
    (["-v", "optimize"], "verbose", True),
])
def test_role_flags_share_one_naming_scheme(argv, dest, value):
    assert getattr(build_parser().parse_args(argv), dest) == value


def test_optimize_icl_help_names_the_old_flag_as_an_alias():
    text = _commands()["optimize-icl"].format_help()
    assert "--optimizer-model MODEL, --rewriter-model MODEL" in text and "former name" in text


# -- 6: one error style, one exit-code scheme -------------------------------------------------------------------------
@pytest.mark.parametrize(("argv", "message"), [
    (["optimize", "--resume", "{tmp}/nowhere"], "--resume {tmp}/nowhere: no such run directory"),
    (["optimize", "--trainset", "{tmp}/missing.txt"], "training file {tmp}/missing.txt does not exist"),
    (["evaluate", "--systems", "base,gpt-99", "--out", "{tmp}/out"], "unknown system 'gpt-99'"),
    (["optimize-icl", "--examples", "{tmp}/missing.json"], "examples file {tmp}/missing.json does not exist"),
    (["import-official", "{tmp}", "--out", "{tmp}/p.txt"], "--out must be a .json file"),
    (["show", "{tmp}/nowhere"], ""),
    (["respond", "q", "--program", "{tmp}/missing.json"], "program file {tmp}/missing.json does not exist"),
    (["serve"], ""),
])
def test_input_errors_exit_2_in_one_style(argv, message, tmp_path, capsys):
    command = argv[0]
    code = main([a.format(tmp=tmp_path) for a in argv])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith(f"drpo {command}: error: {message.format(tmp=tmp_path)}")
    assert err.count("\n") == 1  # one paragraph, no traceback


def test_runtime_failures_exit_1_and_name_the_error(tmp_path, capsys):
    def broken(messages, params):
        raise RuntimeError("the server said no")

    lm = scripted_lm(broken, name="cli-runtime-failure")
    program = tmp_path / "program.json"
    from drpo_dspy import AlignedResponder

    AlignedResponder(examples=[], k=0).save(str(program))
    assert main(["respond", "q", "--program", str(program), "--base-model", lm.model]) == 1
    err = capsys.readouterr().err
    assert err.startswith("drpo respond: error: ") and "the server said no" in err and "Traceback" not in err
    assert main(["respond", "q", "--program", str(program), "--base-model", lm.model, "-v"]) == 1
    assert "Traceback" in capsys.readouterr().err  # -v shows it


def test_a_bad_model_string_is_reported_once_without_litellms_banner(tmp_path):
    argv = ["optimize", "--base-model", "nonsense-provider/model", "--dry-run", "--log-dir", str(tmp_path / "r")]
    code, _, out, err = probe(*argv)
    assert code == 2, err
    assert err.startswith("drpo optimize: error: base_lm: unknown model string 'nonsense-provider/model'")
    assert "Provider List" not in out + err
    verbose = drpo_process(*argv, "-v")
    assert "Provider List" in verbose.stdout + verbose.stderr  # -v keeps litellm's own notices


def test_a_model_failing_for_good_exits_3(tmp_path, capsys):
    from drpo_dspy import AlignedResponder
    from drpo_dspy.testing.fault_injection import always, auth_error, faulty_lm

    lm = faulty_lm(lambda m, p: "x", name="cli-bad-key", num_retries=0, faults=always(auth_error()))
    AlignedResponder(examples=[], k=0).save(str(tmp_path / "program.json"))
    code = main(["respond", "hello", "--program", str(tmp_path / "program.json"), "--base-model", lm.model])
    err = capsys.readouterr().err
    assert code == 3, err
    assert err.startswith("drpo respond: error: authentication failed: ") and "AuthenticationError" in err
    assert "Traceback" not in err  # DSPy's own "To fix:" lines follow the error


def test_a_missing_key_is_refused_before_any_call_by_every_command(tmp_path, monkeypatch, capsys):
    from drpo_dspy import AlignedResponder

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    AlignedResponder(examples=[], k=0).save(str(tmp_path / "program.json"))
    needs_key = "base_lm 'openai/gpt-4o-mini' (provider openai) needs OPENAI_API_KEY"
    for argv in (["respond", "hi", "--program", str(tmp_path / "program.json")],
                 ["evaluate", "--eval-set", "regular", "--limit", "1", "--out", str(tmp_path / "ev"),
                  "--judge-model", "openai/gpt-4o-mini"],
                 ["optimize", "--log-dir", str(tmp_path / "run"), "--num-queries", "1"]):
        assert main([*argv, "--base-model", "openai/gpt-4o-mini"]) == 2
        assert capsys.readouterr().err.startswith(f"drpo {argv[0]}: error: {needs_key}")
    assert main(["optimize-icl", "--limit", "1", "--judge-model", "openai/gpt-4o-mini"]) == 2
    assert capsys.readouterr().err.startswith("drpo optimize-icl: error: judge_lm 'openai/gpt-4o-mini' (provider "
                                              "openai) needs OPENAI_API_KEY")


# -- 7: quiet third-party output --------------------------------------------------------------------------------------
def test_the_cli_process_quiets_third_party_output_unless_verbose():
    script = ("import json, logging, os, sys\n"
              "from drpo_dspy.cli import main\n"
              "main(sys.argv[1:])\n"
              "print(json.dumps([os.environ.get('HF_HUB_DISABLE_PROGRESS_BARS'), "
              "logging.getLogger('dspy.clients.lm').getEffectiveLevel()]))\n")
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_DISABLE_PROGRESS_BARS"}
    for argv, quiet in ((["show", "/no/such/run"], True), (["-v", "show", "/no/such/run"], False)):
        proc = subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True, timeout=120,
                              env=env)
        hf_bars_off, truncation_level = json.loads(proc.stdout.strip().splitlines()[-1])
        assert (hf_bars_off == "1") is quiet, proc.stderr
        assert (truncation_level == logging.ERROR) is quiet


# -- 1: Ctrl-C ---------------------------------------------------------------------------------------------------------
def interrupt_a_search(run_dir: Path, events: Path, slow: bool = False) -> tuple[int, str, str]:
    """Start ``drpo optimize`` on scripted roles, press Ctrl-C once a level has finished; (exit code, out, err)."""
    env = {**os.environ, "DRPO_TEST_SLOW_AFTER_LEVEL_1": "1" if slow else "0"}
    child = subprocess.Popen([sys.executable, str(HERE / "interrupt_child.py"), str(run_dir), str(events)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        while not (run_dir / "checkpoint.json").exists():  # a level has finished: the search is running
            assert child.poll() is None, child.communicate()
            assert time.monotonic() < deadline, "the search never finished a level"
            time.sleep(0.05)
        while slow and len({c["query"] for c in map(json.loads, events.read_text().splitlines())
                            if c["role"] == "base"}) < 2:
            assert child.poll() is None and time.monotonic() < deadline, child.communicate()
            time.sleep(0.05)  # until a base call of level 2 (its second query) is in flight
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=45)  # a slow call in flight takes 60 s: it is not waited for
    finally:
        if child.poll() is None:
            child.kill()
    return child.returncode, out, err


def test_ctrl_c_stops_at_once_says_how_to_resume_and_exits_130(tmp_path):
    run_dir, events = tmp_path / "run", tmp_path / "events.jsonl"
    code, out, err = interrupt_a_search(run_dir, events)
    assert code == 130, err
    assert "drpo optimize: interrupted; the run directory " in err and "finished level(s) and program.json" in err
    assert f"Resume with: drpo optimize --resume {run_dir}" in err
    assert "Traceback" not in err
    assert "Answer before" not in out and "Checking before vs after" not in out
    calls = [json.loads(line) for line in events.read_text().splitlines()]
    assert not [c for c in calls if c["role"] == "base" and c.get("query") == "demo q"]  # no demo answers
    assert not (run_dir / "STOP").exists()  # the Ctrl-C's stop request does not stop the resumed run
    levels = json.loads((run_dir / "summary.json").read_text())["levels"]
    assert levels < 30

    World(lambda p, q: [3, 4] if p.endswith("/1") else [3, 3], name="sigint")  # the same roles, in this process
    assert main(["optimize", "--resume", str(run_dir), "--no-progress"]) == 0  # the command it printed
    assert json.loads((run_dir / "summary.json").read_text())["levels"] == 30


def test_ctrl_c_does_not_wait_for_slow_calls_in_flight(tmp_path):
    run_dir, events = tmp_path / "run", tmp_path / "events.jsonl"
    code, out, err = interrupt_a_search(run_dir, events, slow=True)
    assert code == 130, err
    assert "drpo optimize: interrupted (the LM calls in flight were abandoned); the run directory" in err
    assert "keeps 1 finished level(s). Resume with: drpo optimize --resume" in err
    assert "Answer before" not in out and not (run_dir / "STOP").exists()

    World(lambda p, q: [3, 4] if p.endswith("/1") else [3, 3], name="sigint")
    assert main(["optimize", "--resume", str(run_dir), "--no-progress"]) == 0  # a run quit this way resumes
    assert json.loads((run_dir / "summary.json").read_text())["levels"] == 30


def test_ctrl_c_in_optimize_icl_stops_gracefully_and_keeps_the_best_answers(tmp_path, capsys):
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        pytest.skip("this test runner handles SIGINT itself")
    from test_icl_optimization import IclWorld

    from drpo_dspy.cli.common import run_reporting_errors
    from drpo_dspy.retrievers.bank import AlignmentBank

    def judge(answer: str) -> list[int]:
        if len(world.judged) == 3:  # the third judgment: the user presses Ctrl-C
            os.kill(os.getpid(), signal.SIGINT)
        return [3, 3, 3]

    world = IclWorld(judge, rewrite=lambda q, a, n: f"<START>\n{a} (improved)\n<END>")
    out = tmp_path / "bank.json"
    args = build_parser().parse_args(["optimize-icl", "--rounds", "5", "--limit", "3", "--num-threads", "1",
                                      "--out", str(out), "--no-progress"])
    lms = {"metrics": world.metrics_lm, "judge": world.judge_lm, "rewriter": world.rewriter_lm}
    assert run_reporting_errors(lambda: args.handler(args, lms=lms), prog="drpo optimize-icl") == 130
    err = capsys.readouterr().err
    assert f"drpo optimize-icl: interrupted; the answers keep their best version so far, written to {out}" in err
    # the stop reaches the worker within a call or two (the signal is handled by the main thread); a full run judges
    # every example 6 times (5 rounds, never all 5s), 18 judgments
    assert 3 <= len(world.judged) <= 5
    assert len(AlignmentBank.load(out).examples) == 3  # every example kept (its seed, or its best rewrite)
