"""Bad input fails fast with a clear message, before any LM call."""

from __future__ import annotations

import dspy
import pytest

from drpo_dspy import DRPO, AlignedResponder
from drpo_dspy.testing import scripted_lm


@pytest.fixture
def counting_lm():
    calls = []
    lm = scripted_lm(lambda m, p: calls.append(1) or "x")
    return lm, calls


@pytest.mark.parametrize("trainset", [[], None, "a string", [""], [1, 2], [{"text": "no query field"}]])
def test_bad_trainsets(counting_lm, trainset):
    lm, calls = counting_lm
    drpo = DRPO(base_lm=lm, metrics_lm=lm, judge_lm=lm, optimizer_lm=lm, k=0, progress=False)
    with pytest.raises(ValueError, match="trainset"):
        drpo.compile(AlignedResponder(examples=[], k=0), trainset=trainset)
    assert calls == []


@pytest.mark.parametrize("option", ["beam_size", "n_actions", "depth"])
@pytest.mark.parametrize("value", [0, -1, 1.5, True])
def test_search_shape_must_be_positive_integers(option, value):
    with pytest.raises(ValueError, match=option):
        DRPO(**{option: value})


def test_k_larger_than_bank(counting_lm):
    lm, calls = counting_lm
    drpo = DRPO(base_lm=lm, metrics_lm=lm, judge_lm=lm, optimizer_lm=lm, k=3, progress=False)
    student = AlignedResponder(examples=[("q1", "a1"), ("q2", "a2")], k=1, embedder="hashing")
    with pytest.raises(ValueError, match="k=3 is larger than the example bank"):
        drpo.compile(student, trainset=["q"])
    assert calls == []


def test_unknown_model_string():
    lm = dspy.LM("nosuchprovider/some-model")
    with pytest.raises(ValueError, match="unknown model string"):
        DRPO(base_lm=lm, progress=False).compile(AlignedResponder(examples=[], k=0), trainset=["q"])


def test_missing_api_key(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    ok = scripted_lm(lambda m, p: "x")
    drpo = DRPO(base_lm=ok, metrics_lm=ok, optimizer_lm=ok, judge_lm=dspy.LM("openai/gpt-4o-mini"), progress=False)
    with pytest.raises(ValueError, match=r"judge_lm .*OPENAI_API_KEY"):
        drpo.compile(AlignedResponder(examples=[], k=0), trainset=["q"])


def test_no_lm_configured():
    with pytest.raises(ValueError, match="no LM for the base role"):
        DRPO(progress=False).compile(AlignedResponder(examples=[], k=0), trainset=["q"])


def test_student_must_be_a_dspy_module(counting_lm):
    lm, calls = counting_lm
    with pytest.raises(ValueError, match=r"dspy\.Module"):
        DRPO(base_lm=lm, progress=False).compile("You are a helpful assistant.", trainset=["q"])
    assert calls == []


def test_non_empty_log_dir_is_refused(tmp_path, counting_lm):
    lm, calls = counting_lm
    (tmp_path / "something.txt").write_text("x")
    drpo = DRPO(base_lm=lm, metrics_lm=lm, judge_lm=lm, optimizer_lm=lm, k=0, log_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="already holds files"):
        drpo.compile(AlignedResponder(examples=[], k=0), trainset=["q"])
    assert calls == []


def test_jsonl_queries_may_hold_a_line_separator_inside_a_string(tmp_path):
    """JSON allows U+2028 inside a string: it must not split the JSONL line (str.splitlines would)."""
    import json

    from drpo_dspy.runs.query_files import read_queries

    path = tmp_path / "queries.jsonl"
    path.write_text(json.dumps({"query": "first part\u2028second part"}, ensure_ascii=False) + "\n"
                    + json.dumps("plain query") + "\n", encoding="utf-8")
    assert read_queries(path) == ["first part\u2028second part", "plain query"]
    path.write_text('{"query": "ok"}\n{not json\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"queries\.jsonl line 2 is not valid JSON"):
        read_queries(path)


def test_a_missing_server_address_points_at_api_base(monkeypatch):
    monkeypatch.delenv("OLLAMA_API_BASE", raising=False)
    ok = scripted_lm(lambda m, p: "x")
    drpo = DRPO(base_lm=ok, metrics_lm=ok, optimizer_lm=ok, judge_lm=dspy.LM("ollama_chat/llama3.2"), progress=False)
    with pytest.raises(ValueError, match=r"judge_lm 'ollama_chat/llama3.2'.*pass --judge-api-base URL "
                                         r"\(api_base=\.\.\. in dspy\.LM\)") as info:
        drpo.compile(AlignedResponder(examples=[], k=0), trainset=["q"])
    assert "api_key" not in str(info.value)  # Ollama needs an address, not a key


def test_keys_are_not_needed_for_a_dry_run_only(monkeypatch):
    from drpo_dspy.runs.validation import keys_not_needed, resolve_lm

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    lm = dspy.LM("openai/gpt-4o-mini")
    assert resolve_lm("judge", lm, need_key=False) is lm
    with keys_not_needed():
        assert resolve_lm("judge", lm) is lm
        with pytest.raises(ValueError, match="unknown model string"):  # the model string is still checked
            resolve_lm("judge", dspy.LM("no-such-provider-xyz/model"))
    with pytest.raises(ValueError, match="OPENAI_API_KEY"):
        resolve_lm("judge", lm)
