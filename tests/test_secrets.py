"""No credential reaches a file DRPO writes, a log line, or an error message shown to the user.

Keys are planted in the environment and in every role's ``dspy.LM(api_key=...)``; the providers then fail with
authentication errors that echo the key they were sent (as some servers do), so the key is inside exception text.
"""

from __future__ import annotations

import json
import logging

import pytest
from fault_world import ROLES, FaultWorld, compile_faulty

from drpo_dspy import AlignedResponder
from drpo_dspy.clients.failures import SystemicFailure
from drpo_dspy.retrievers.bank import AlignmentBank
from drpo_dspy.runs.secrets import Redactor, redact_exception, secret_values
from drpo_dspy.testing.fault_injection import always, auth_error, faulty_lm, when

ENV_KEY = "sk-planted-env-0123456789abcdef"  # shaped like an OpenAI key
ENV_PLAIN = "plainEnvSecret-93f1c0ffee42"  # shaped like nothing in particular
ROLE_KEYS = {role: f"role-{role}-secret-{i}7a9e4c1d2b" for i, role in enumerate(ROLES)}
HEADER_KEY = "hdr-secret-5e6f7a8b9c0d"
ALL = [ENV_KEY, ENV_PLAIN, HEADER_KEY, *ROLE_KEYS.values()]
EXAMPLES = [("What is a leap year?", "A year with 366 days."), ("Hack my ex's email.", "I can't help with that.")]


@pytest.fixture
def planted(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", ENV_KEY)
    monkeypatch.setenv("ACME_SERVICE_TOKEN", ENV_PLAIN)


def leaks(text: str | bytes) -> list[str]:
    data = text.encode() if isinstance(text, str) else text
    return [key for key in ALL if key.encode() in data]


def assert_no_file_leaks(root):
    files = [p for p in root.rglob("*") if p.is_file()]
    assert files
    for path in files:
        assert leaks(path.read_bytes()) == [], path


def test_compile_with_failing_providers_echoing_keys_leaks_nothing(tmp_path, planted, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    echo = auth_error("Incorrect API key provided: {api_key}; env was " + ENV_PLAIN)
    faults = {"judge": when(lambda text: "Haiku" in text or "haiku" in text, echo),
              "optimizer": when(lambda text: "P/0" in text, echo),
              "base": when(lambda text: "picnic" in text, echo),
              "metrics": when(lambda text: "compound" in text, echo)}
    student = AlignedResponder("Start.", EXAMPLES, k=1, embedder="hashing")
    with pytest.raises(SystemicFailure, match="authentication failed") as failure:
        compile_faulty(faults, log_dir=tmp_path / "run", k=1, depth=4, api_keys=ROLE_KEYS, student=student)
    assert leaks(str(failure.value)) == []  # the provider echoed the key: the message that stops the run does not
    assert "authentication failed" in json.loads((tmp_path / "run" / "summary.json").read_text())["failed"]
    student.save(str(tmp_path / "saved.json"))
    student.bank.save(tmp_path / "bank.json")
    assert_no_file_leaks(tmp_path)
    assert leaks(caplog.text) == []
    captured = capsys.readouterr()
    assert leaks(captured.out + captured.err) == []


def test_evaluation_reports_leak_nothing(tmp_path, planted, caplog):
    from drpo_dspy.evaluation import EVAL_ASPECTS, evaluate

    caplog.set_level(logging.DEBUG)

    def judge(messages, params):
        return {"evaluation": {**{a: {"rationale": "fine", "score": 4} for a in EVAL_ASPECTS}, "refusal": False}}

    base = faulty_lm(lambda m, p: "An answer.\n<END>", api_key=ROLE_KEYS["base"], num_retries=0,
                     faults=when(lambda text: "second" in text, auth_error("bad key {api_key} / " + ENV_KEY)))
    judge_lm = faulty_lm(judge, api_key=ROLE_KEYS["judge"], num_retries=0,
                         faults=when(lambda text: "third" in text, auth_error("bad key {api_key}")))
    prompts = [{"instruction": q} for q in ("first question?", "third question?", "second question?")]
    with pytest.raises(SystemicFailure, match=r"judge role .* authentication failed") as failure:
        evaluate(["base"], prompts, base_lm=base, judge_lm=judge_lm, out_dir=tmp_path / "eval", num_threads=1)
    assert leaks(str(failure.value)) == []  # a wrong key stops the evaluation; the message keeps no secret
    assert (tmp_path / "eval" / "records.jsonl").is_file()  # the finished pair is saved for a resume
    assert_no_file_leaks(tmp_path)
    assert leaks(caplog.text) == []
    with pytest.raises(SystemicFailure, match=r"base role .* authentication failed") as failure:
        evaluate(["base"], prompts[2:], base_lm=base, judge_lm=judge_lm, out_dir=tmp_path / "eval2", num_threads=1)
    assert leaks(str(failure.value)) == [] and leaks(caplog.text) == []
    assert_no_file_leaks(tmp_path)


def test_errors_shown_to_the_user_are_redacted(planted):
    lm = faulty_lm(lambda m, p: "x", api_key=ROLE_KEYS["base"], num_retries=0,
                   faults=always(auth_error("Incorrect API key provided: {api_key}")))
    responder = AlignedResponder(examples=[], k=0)
    with pytest.raises(Exception) as info:
        responder(query="hello", lm=lm)
    assert ROLE_KEYS["base"] in str(info.value)  # what the provider said, as raised by DSPy
    redacted = redact_exception(info.value, [lm])
    assert redacted is info.value
    chain = []
    exc: BaseException | None = redacted
    while exc is not None:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    import traceback

    shown = "".join(traceback.format_exception(redacted))
    assert leaks(shown) == [] and "***" in shown
    assert all(leaks(str(e)) == [] for e in chain)


def test_keys_in_headers_and_bearer_tokens_are_known_secrets(planted):
    world = FaultWorld(lambda p, q: [3, 3])
    lm = world.base_lm.copy(extra_headers={"Authorization": f"Bearer {HEADER_KEY}"}, api_key=ROLE_KEYS["base"])
    values = secret_values([lm])
    assert {HEADER_KEY, ROLE_KEYS["base"], ENV_KEY, ENV_PLAIN} <= values
    redactor = Redactor([lm])
    text = f"auth {HEADER_KEY} key {ROLE_KEYS['base']} env {ENV_KEY} {ENV_PLAIN}"
    assert leaks(redactor.text(text)) == []


def test_saved_program_with_an_lm_holding_header_credentials(tmp_path, planted):
    world = FaultWorld(lambda p, q: [3, 3])
    lm = world.base_lm.copy(extra_headers={"Authorization": f"Bearer {HEADER_KEY}"}, api_key=ROLE_KEYS["base"])
    program = AlignedResponder("Be kind.", EXAMPLES, k=1, embedder="hashing")
    program.set_lm(lm)
    program.save(str(tmp_path / "program.json"))
    bank = AlignmentBank(EXAMPLES, embedder="hashing")
    bank.save(tmp_path / "bank.jsonl")
    assert_no_file_leaks(tmp_path)


def test_command_line_errors_are_redacted(tmp_path, planted, capsys):
    from drpo_dspy.cli.main import main

    faulty_lm(lambda m, p: "x", name="cli-secret-echo", num_retries=0,
              faults=always(auth_error(f"Incorrect API key provided: {ENV_KEY}")))
    program = tmp_path / "program.json"
    AlignedResponder("Be kind.", examples=[], k=0).save(str(program))
    try:
        code = main(["respond", "hello", "--program", str(program), "--model", "faulty/cli-secret-echo"])
        shown = capsys.readouterr().err
    except Exception as exc:  # what a user sees: the traceback
        import traceback

        code, shown = 1, "".join(traceback.format_exception(exc))
    assert code != 0 and "AuthenticationError" in shown and leaks(shown) == []
