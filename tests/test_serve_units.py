"""The server's pure parts: streamed answer extraction, conversation folding, error mapping, settings."""

from __future__ import annotations

import random

import httpx
import litellm
import pytest

from drpo_dspy.adapters.drpo_layout import build_messages, extract_answer
from drpo_dspy.serve.answer_stream import AnswerStream
from drpo_dspy.serve.conversation import Conversation, layout_messages, parse_messages, parse_prompt
from drpo_dspy.serve.errors import APIError, upstream_error
from drpo_dspy.serve.programs import content_version
from drpo_dspy.serve.settings import ServeSettings, api_keys_from_env

COMPLETIONS = [
    "Plain answer.", "  <START>\n Seven is prime.\n<END>\nafter", "<START><END>", "<STAR", "a <ST b", "x <EN y",
    "ends with <EN", "text\n\n  \n", "<|eot_id|> first", "two\n<END\nthree", "  \n<START>\n\n", "<", "",
    "mid <START> stays <END> gone", "spaces   inside  \t kept<END>", "<START>\n<START> twice<END>",
    "Yes.<End>no", "Yes.</END>no", "yes <end> no", "Paris.\n\n# Query:\nNext?", "# Answer:\nParis.\n# Answer:\nx",
    "# Query:\nHow?\n\nLike this.\n# Query:\nmore", "a < b, and c > d", "Title\n# Heading\nbody",
]


def streamed(text: str, cuts: list[int]) -> str:
    stream, out, start = AnswerStream(), [], 0
    for cut in [*sorted(cuts), len(text)]:
        out.append(stream.feed(text[start:cut]))
        start = cut
    out.append(stream.finish())
    return "".join(out)


@pytest.mark.parametrize("text", COMPLETIONS)
def test_streamed_answer_equals_extract_answer_for_any_split(text: str) -> None:
    rng = random.Random(text)
    expected = extract_answer(text)
    assert streamed(text, []) == expected
    assert streamed(text, list(range(1, len(text)))) == expected  # one character at a time
    for _ in range(30):
        assert streamed(text, rng.sample(range(len(text) + 1), k=min(len(text), rng.randint(0, 6)))) == expected


def test_nothing_that_could_become_a_marker_is_sent_early() -> None:
    stream = AnswerStream()
    assert stream.feed("  <STA") == ""
    assert stream.feed("RT>\nHello ") == "Hello"
    assert stream.feed("world <E") == " world"
    assert stream.feed("ND> tail") == "" and stream.stopped
    assert stream.feed("more") == "" and stream.finish() == ""


def test_single_turn_layout_is_the_responders_layout() -> None:
    examples = [("q1", "a1"), ("q2", "a2")]
    assert layout_messages("Be kind.", examples, Conversation("Hi?")) == build_messages("Be kind.", examples, "Hi?")


def test_text_model_sees_one_continuous_drpo_document() -> None:
    conversation = Conversation("Second?", (("First?", "One."),))
    joined = "".join(m["content"] for m in layout_messages("Be kind.", [("Ex?", "Ex.")], conversation))
    assert joined == ("Be kind.\n\n# Query:\nEx?\n\n# Answer:\nEx.\n\n"
                      "# Query:\nFirst?\n\n# Answer:\nOne.\n\n"
                      "# Query:\nSecond?\n\n# Answer:\n")


def test_parse_messages_folds_roles() -> None:
    conversation = parse_messages([
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Hello"}, {"type": "text", "text": " there"}]},
        {"role": "user", "content": "again"},
        {"role": "assistant", "content": "Hi."},
        {"role": "user", "content": "Bye?"},
    ], max_messages=10)
    assert conversation == Conversation("Bye?", (("Hello there\n\nagain", "Hi."),), "Be brief.")
    assert parse_prompt(["Just one"]) == Conversation("Just one")


@pytest.mark.parametrize("messages", [None, "hi", [], [{"role": "user", "content": "  "}], ["text"],
                                      [{"role": "user", "content": 5}], [{"role": "user", "content": "x"}] * 11,
                                      [{"role": "assistant", "content": "x", "tool_calls": [{}]},
                                       {"role": "user", "content": "y"}]])
def test_parse_messages_rejects(messages: object) -> None:
    with pytest.raises(APIError) as caught:
        parse_messages(messages, max_messages=10)
    assert caught.value.status == 400 and caught.value.body()["error"]["message"]


def _http_error(cls: type, status: int, retry_after: str | None = None) -> Exception:
    request = httpx.Request("POST", "https://upstream.invalid/v1/chat/completions")
    headers = {"retry-after": retry_after} if retry_after else {}
    return cls("boom", llm_provider="openai", model="m", response=httpx.Response(status, headers=headers,
                                                                                  request=request))


def test_upstream_error_mapping() -> None:
    redactor = ServeSettings(base_api_key="upstream-secret-key-123").redactor()
    cases = [
        (_http_error(litellm.RateLimitError, 429, "2.5"), 503, "3"),
        (litellm.Timeout("slow", model="m", llm_provider="openai"), 504, "1"),
        (_http_error(litellm.ServiceUnavailableError, 503), 503, "1"),
        (_http_error(litellm.InternalServerError, 500), 502, "1"),
        (_http_error(litellm.AuthenticationError, 401), 502, None),
        (_http_error(litellm.NotFoundError, 404), 502, None),
        (RuntimeError("unexpected upstream-secret-key-123"), 502, "1"),
    ]
    for exc, status, retry_after in cases:
        error = upstream_error(exc, redactor)
        assert (error.status, error.headers.get("Retry-After")) == (status, retry_after), type(exc).__name__
        assert "upstream-secret-key-123" not in error.message
    too_long = litellm.ContextWindowExceededError("too long", model="m", llm_provider="openai")
    assert upstream_error(too_long, redactor).status == 400
    assert upstream_error(_http_error(litellm.BadRequestError, 400), redactor).status == 400


def test_settings_are_safe_by_default_and_checked() -> None:
    settings = ServeSettings()
    assert settings.host == "127.0.0.1" and settings.loopback_only and not settings.requires_key
    assert not settings.log_prompts and settings.max_tokens_limit >= settings.default_max_tokens
    for bad in ({"base_model_type": "base"}, {"max_tokens_limit": 0}, {"default_max_tokens": 10, "max_tokens_limit": 5},
                {"api_keys": frozenset({" padded "})}, {"upstream_timeout": 0}):
        with pytest.raises(ValueError):
            ServeSettings(**bad)
    assert api_keys_from_env({"DRPO_SERVE_API_KEYS": " a-key-1234, ,b-key-1234 "}) == {"a-key-1234", "b-key-1234"}
    assert content_version(b"x") == content_version(b"x") != content_version(b"y")


@pytest.mark.parametrize("module", ["uvicorn", "fastapi"])
def test_serve_without_the_web_stack_names_the_extra(module, monkeypatch, capsys, tmp_path):
    import sys

    from drpo_dspy.cli.main import main

    for name in [m for m in sys.modules if m == module or m.startswith(f"{module}.") or m == "drpo_dspy.serve.app"]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, module, None)  # import raises ImportError: "No module named ..."
    assert main(["serve", str(tmp_path / "program.json")]) == 2
    err = capsys.readouterr().err
    assert f"'{module}'" in err and 'pip install "drpo-dspy[serve]"' in err


def test_an_empty_answer_says_why_in_its_choice() -> None:
    from types import SimpleNamespace

    from drpo_dspy.serve.payloads import EMPTY_REASONS, completion_body

    program = SimpleNamespace(name="aligned", version="v1")
    body = completion_body("chat", program, [("Paris.", "stop"), ("", "stop"), ("  ", "length")], (5, 3))
    first, empty, capped = body["choices"]
    assert "drpo_empty_answer" not in first and first["finish_reason"] == "stop"
    assert empty["finish_reason"] == "stop" and empty["drpo_empty_answer"] == EMPTY_REASONS["stop"]
    assert capped["finish_reason"] == "length" and "raise max_tokens" in capped["drpo_empty_answer"]
