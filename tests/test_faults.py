"""Fault injection: every provider failure and every malformed output is retried or counted, and survived.

The catalogue of faults and what happens to each is docs/faults.md. Each role runs on ``faulty_lm`` (see
``drpo_dspy.testing.fault_injection``); DSPy's retry delays are recorded by ``fast_backoff`` instead of slept.
"""

from __future__ import annotations

import json

import pytest
from fault_world import QUERIES, ROLES, compile_faulty
from world import field

import drpo_dspy.testing.fault_injection as fi
from drpo_dspy import AlignedResponder
from drpo_dspy.clients.failures import SystemicFailure
from drpo_dspy.testing.fault_injection import always, fast_backoff, on_first_attempts, when

TRANSIENT = {
    "timeout": fi.timeout(),
    "rate_limit_retry_after": fi.rate_limit(retry_after=0.01),
    "rate_limit_no_hint": fi.rate_limit(),
    "internal_server_error_500": fi.server_error(500),
    "bad_gateway_502": fi.server_error(502),
    "service_unavailable_503": fi.server_error(503, retry_after=0.02),
    "connection_reset": fi.connection_reset(),
}
DSPY_ERROR = {"timeout": "LMTimeoutError", "rate_limit": "LMRateLimitError", "server_error": "LMServerError",
              "connection_reset": "LMTransportError"}


@pytest.fixture(scope="module")
def clean_result():
    program, _, injectors = compile_faulty()
    return program.drpo_result, {role: inj.requests for role, inj in injectors.items()}


def failures(result) -> dict[str, dict[str, int]]:
    return {role: row["failures"] for role, row in result.usage.items() if row["failures"]}


# -- transient provider errors: retried with backoff, invisible in the result ---------------------------------------
@pytest.mark.parametrize("name", list(TRANSIENT))
def test_transient_errors_are_retried_and_the_run_is_unchanged(name, clean_result):
    fault = TRANSIENT[name]
    clean, clean_requests = clean_result
    with fast_backoff() as delays:
        program, _, injectors = compile_faulty({role: on_first_attempts(fault, 2) for role in ROLES})
    result = program.drpo_result
    assert result.best_path == clean.best_path and result.final_beam == clean.final_beam
    assert failures(result) == {}
    for role, injector in injectors.items():  # every request failed twice, then succeeded on the third try
        assert injector.counts() == {fault.label: 2 * clean_requests[role], "ok": clean_requests[role]}
    assert len(delays) == 2 * sum(clean_requests.values())
    if fault.retry_after is not None:  # the server's Retry-After is honoured
        assert set(delays) == {fault.retry_after}
    else:  # exponential backoff: 1 s, then 2 s
        assert sorted(set(delays)) == [1, 2] and delays.count(1) == delays.count(2)


@pytest.mark.parametrize("name", ["timeout", "rate_limit_no_hint", "bad_gateway_502", "connection_reset"])
def test_persistent_transient_errors_are_counted_per_role_and_survived(name, tmp_path):
    fault = TRANSIENT[name]
    with fast_backoff() as delays:
        program, _, injectors = compile_faulty({"judge": when(lambda t: "haiku" in t, fault),
                                                "optimizer": when(lambda t: "P/0" in t, fault)},
                                               log_dir=tmp_path / "run", num_retries=2)
    result = program.drpo_result
    kind = f"lm_error:{DSPY_ERROR[fault.kind]}"
    # level 2 (the haiku query) judged nothing: 2 candidates, each tried 3 times; P/0's rewrites failed too
    assert failures(result) == {"judge": {kind: 2}, "optimizer": {kind: 1}}
    assert injectors["judge"].counts()[fault.label] == 2 * 3 and len(delays) == 3 * 2
    level2 = [n for n in result.best_path if n["level"] == 2]
    assert level2 and level2[0]["rewards"][-1] is None and level2[0]["judgment"]["failure"] == kind
    assert result.num_levels == 3 and program.instructions.startswith("P")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["usage"]["judge"]["failures"] == {kind: 2}
    assert summary["usage"]["optimizer"]["failures"] == {kind: 1}


def test_a_systemic_error_is_not_retried_and_stops_the_run_at_once(tmp_path):
    with fast_backoff() as delays, pytest.raises(SystemicFailure, match=r"base role .* authentication failed"):
        compile_faulty({"base": always(fi.auth_error("invalid key"))}, log_dir=tmp_path / "run")
    assert delays == []  # nothing to wait for: retrying cannot help


def test_a_per_input_error_on_every_call_stops_past_max_errors(tmp_path):
    with fast_backoff() as delays, pytest.raises(SystemicFailure, match=r"base role .* too many errors after 3"):
        compile_faulty({"base": always(fi.context_window())}, log_dir=tmp_path / "run",
                       max_errors=2)
    assert delays == []
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["usage"]["base"]["failures"] == {"lm_error:ContextWindowExceededError": 3}
    assert summary["best_path_mean"] is None and "too many errors" in summary["failed"]


def test_every_role_failing_every_call_returns_no_program(tmp_path):
    with fast_backoff(), pytest.raises(SystemicFailure, match=r"no readable output|too many errors"):
        compile_faulty({role: always(fi.server_error(503)) for role in ROLES}, num_retries=1,
                       log_dir=tmp_path / "run")
    assert not (tmp_path / "run" / "program.json").exists()  # no prompt that no reward was read for
    assert "failed" in json.loads((tmp_path / "run" / "summary.json").read_text())


# -- malformed judge outputs: counted, never a zero or a five ------------------------------------------------------
@pytest.mark.parametrize(("fault", "kind"), [
    (fi.empty(), "parse_failure"),
    (fi.truncated_json(), "parse_failure"),
    (fi.prose(), "parse_failure"),
    (fi.refusal(), "refusal"),
    (fi.bad_score("6"), "score_out_of_range"),
    (fi.bad_score(0), "score_out_of_range"),
    (fi.bad_score(-1), "score_out_of_range"),
    (fi.bad_score("4/5"), "score_not_an_integer"),
    (fi.bad_score("five"), "score_not_an_integer"),
    (fi.bad_score(4.5), "score_not_an_integer"),
])
def test_unreadable_judgments_are_missing_rewards(fault, kind):
    program, _, injectors = compile_faulty({"judge": when(lambda t: "haiku" in t, fault)})
    result = program.drpo_result
    assert failures(result) == {"judge": {kind: 2}}
    level2 = [n for n in result.final_beam[0:1] + result.best_path if n["level"] == 2]
    for node in level2:
        assert node["rewards"][1] is None and node["judgment"]["scores"] == {}
        assert node["judgment"]["failure"] == kind
    known = [r for r in result.best_path[-1]["rewards"][1:] if r is not None]  # the root's reward left out
    assert result.best_path_mean == pytest.approx(sum(known) / len(known))  # ranked on what is known
    assert injectors["judge"].counts()[fault.label] == 2 * 2  # chat adapter, then its JSON fallback


def test_a_boolean_score_is_not_read_as_one():
    program, _, _ = compile_faulty({"judge": when(lambda t: "haiku" in t, fi.bad_score(True))})
    assert failures(program.drpo_result) == {"judge": {"score_not_an_integer": 2}}


@pytest.mark.parametrize("score", ["4", " 4 ", 4.0])
def test_integral_scores_in_range_are_read(score):
    program, _, _ = compile_faulty({"judge": always(fi.bad_score(score))})
    result = program.drpo_result
    assert failures(result) == {}
    assert {s for n in result.final_beam for s in n["judgment"]["scores"].values()} == {4}


def test_paper_faithful_mode_turns_unreadable_judgments_into_explicit_zeros():
    program, _, _ = compile_faulty({"judge": when(lambda t: "haiku" in t, fi.refusal())}, paper_faithful_failures=True,
                                   beam_size=1, n_actions=1)
    node = program.drpo_result.best_path[1]
    assert node["rewards"][1] == 0.0 and node["judgment"]["failure"] == "refusal"


# -- the aspect selector ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("fault", "kind"), [(fi.prose(), "parse_failure"), (fi.empty(), "parse_failure"),
                                             (fi.refusal("I'm sorry, I cannot analyse this query."), "refusal")])
def test_failed_aspect_selection_falls_back_to_default_aspects(fault, kind):
    program, _, _ = compile_faulty({"metrics": always(fault)})
    result = program.drpo_result
    assert failures(result) == {"metrics": {kind: 3}}
    assert result.best_path[0]["judgment"]["aspects"] == ["Helpfulness", "Clarity", "Factuality"]
    assert result.best_path_mean is not None  # the judge still scored on the fallback aspects


# -- the optimizer -----------------------------------------------------------------------------------------------------
def _optimizer_says(new_prompt: str):
    return fi.text("[[ ## analysis ## ]]\na\n\n[[ ## thought ## ]]\nt\n\n[[ ## new_system_prompt ## ]]\n"
                   f"{new_prompt}\n\n[[ ## completed ## ]]")


@pytest.mark.parametrize(("fault", "kind"), [
    (fi.empty(), "parse_failure"),
    (fi.prose(), "parse_failure"),
    (fi.truncated_json(), "parse_failure"),
    (fi.refusal(), "refusal"),
    (_optimizer_says('""'), "empty_prompt"),
    (lambda attempt: _optimizer_says(f"Answer exactly this: {field(attempt.messages, 'query')} Be kind."),
     "query_specific_prompt"),
    (_optimizer_says("Use {query} and [[ ## answer ## ]]."), "template_echo_prompt"),
])
def test_unusable_rewrites_are_dropped_and_counted(fault, kind):
    plan = fault if callable(fault) else always(fault)
    program, _, _ = compile_faulty({"optimizer": plan}, beam_size=1, n_actions=1, proposal_sampling="independent")
    result = program.drpo_result
    counted = failures(result)["optimizer"]
    assert counted.get(kind, 0) >= 2 and set(counted) <= {kind, "parse_failure"}
    assert program.instructions == "P"  # no usable rewrite: the prompt carried over, the run completed
    assert result.num_levels == 3 and all(n["carried"] for n in result.best_path[1:])
    assert all(d["reason"] in (kind, "parse_failure") for lv in result.levels for d in lv["dropped"])


# -- the base model ----------------------------------------------------------------------------------------------------
def test_empty_answers_are_counted_and_never_judged():
    program, _, _ = compile_faulty({"base": when(lambda t: "haiku" in t, fi.empty())})
    result = program.drpo_result
    assert failures(result) == {"base": {"empty_answer": 2}}
    level2 = next(n for n in result.best_path if n["level"] == 2)
    # No answer, no reward: an empty answer is not sent to the judge and cannot win on a judge's score.
    assert level2["response"] == "" and level2["rewards"][1] is None
    assert level2["judgment"]["failure"] == "empty_answer" and level2["judgment"]["scores"] == {}


def test_role_lms_keep_their_retries():
    """DRPO wraps each role's LM (metering, raw text route); the copies must keep ``num_retries``."""
    import dspy

    from drpo_dspy.clients.metering import Meter
    from drpo_dspy.clients.raw_text import raw_completion_lm

    lm = dspy.LM("openai/gpt-4o-mini", num_retries=5)
    assert Meter().watch(lm, "judge").num_retries == 5
    assert raw_completion_lm(lm.copy(model_type="text")).num_retries == 5
    assert dspy.LM("openai/gpt-4o-mini").num_retries == 3  # the CLI's role LMs use DSPy's default


def test_queries_drive_the_fault_world():
    assert len(QUERIES) >= 3  # the tests above rely on "haiku" being the level-2 query
    assert "haiku" in QUERIES[1]


def test_an_answer_copying_a_shown_example_is_noted_in_the_trace_and_counted():
    copied = "Magma rises through cracks in the crust and erupts as lava when the pressure is high enough."
    student = AlignedResponder(examples=[{"query": "How do volcanoes form?", "answer": copied}], k=1,
                               embedder="hashing")
    program, _, _ = compile_faulty({"base": when(lambda t: "haiku" in t, fi.text(f"ANSWER prompt=<P> {copied}"))},
                                   student=student, k=1)
    result = program.drpo_result
    assert failures(result)["base"]["copied_example"] == 2
    level2 = next(n for n in result.best_path if n["level"] == 2)
    assert level2["judgment"]["copied"]["example_query"] == "How do volcanoes form?"
    assert level2["judgment"]["copied"]["length"] >= 40 and level2["judgment"]["failure"] != "empty_answer"
    level1 = next(n for n in result.best_path if n["level"] == 1)
    assert "copied" not in level1["judgment"]


def test_a_stop_file_of_ones_own_stops_the_search_like_a_budget(tmp_path):
    stop = tmp_path / "please-stop"
    first, _, _ = compile_faulty(log_dir=tmp_path / "a", stop_file=stop)
    assert first.drpo_result.stopped is None and first.drpo_result.num_levels == 3
    stop.touch()
    stopped, _, _ = compile_faulty(log_dir=tmp_path / "b", stop_file=stop)
    assert f"stop file {stop} found" in stopped.drpo_result.stopped
