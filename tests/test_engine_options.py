"""The embedded engine's switches: read from the environment in one place, and a value that is not one refused with
the variable's name before a model is loaded."""

from __future__ import annotations

import pytest

from drpo_dspy.cli.main import main
from drpo_dspy.engine import options as options_mod
from drpo_dspy.engine.options import EngineOptions


def test_defaults_and_switches():
    default = EngineOptions.from_env({})
    assert default == EngineOptions()
    assert default.prefix_cache and default.fast_grammar and default.parallel
    assert default.prefix_cache_bytes == 512 * 1024 * 1024
    assert default.workers == max(1, min(options_mod.usable_cores(), options_mod.MAX_DEFAULT_WORKERS))
    for value, on in (("0", False), ("off", False), ("False", False), ("no", False), ("1", True), ("ON", True),
                      ("yes", True), ("", True), ("  ", True)):
        got = EngineOptions.from_env({"DRPO_EMBEDDED_PREFIX_CACHE": value, "DRPO_EMBEDDED_FAST_GRAMMAR": value,
                                      "DRPO_EMBEDDED_PARALLEL": value})
        assert (got.prefix_cache, got.fast_grammar, got.parallel) == (on, on, on), value
    got = EngineOptions.from_env({"DRPO_EMBEDDED_PREFIX_CACHE_MB": "2", "DRPO_EMBEDDED_WORKERS": "8"})
    assert got.prefix_cache_bytes == 2 * 1024 * 1024 and got.workers == 8
    assert EngineOptions.from_env({"DRPO_EMBEDDED_PREFIX_CACHE_MB": "0"}).prefix_cache_bytes == 0


@pytest.mark.parametrize(("name", "value"), [
    ("DRPO_EMBEDDED_PARALLEL", "maybe"), ("DRPO_EMBEDDED_PREFIX_CACHE", "enabled"),
    ("DRPO_EMBEDDED_FAST_GRAMMAR", "2"), ("DRPO_EMBEDDED_WORKERS", "many"), ("DRPO_EMBEDDED_WORKERS", "0"),
    ("DRPO_EMBEDDED_WORKERS", "2.5"), ("DRPO_EMBEDDED_PREFIX_CACHE_MB", "lots"),
    ("DRPO_EMBEDDED_PREFIX_CACHE_MB", "-1"), ("DRPO_EMBEDDED_PREFIX_CACHE_MB", "inf"),
])
def test_a_value_that_is_not_one_is_refused_by_name(name, value):
    with pytest.raises(ValueError, match=name):
        EngineOptions.from_env({name: value})


def test_the_command_line_refuses_a_bad_switch_before_any_work(monkeypatch, capsys, tmp_path):
    from drpo_dspy import AlignedResponder

    AlignedResponder("Be kind.", examples=[], k=0).save(str(tmp_path / "program.json"))
    monkeypatch.setenv("DRPO_EMBEDDED_WORKERS", "many")
    code = main(["respond", "Hi", "--program", str(tmp_path / "program.json"), "--base-model",
                 "embedded/smollm2-135m"])
    assert code == 2
    assert "DRPO_EMBEDDED_WORKERS='many' must be a whole number" in capsys.readouterr().err
