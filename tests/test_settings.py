"""Every DRPO setting is defined once (teleprompt/settings.py): DRPO's keyword arguments, `drpo optimize`'s flags and
the --config file are checked against those fields here, so a new setting cannot be half added."""

from __future__ import annotations

import dataclasses
import inspect
import json

import pytest
from world import World

from drpo_dspy import DRPO
from drpo_dspy.cli.main import build_parser
from drpo_dspy.cli.optimize_options import CLI_SETTINGS, SETTING_OF_DEST, read_config
from drpo_dspy.teleprompt.settings import SETTING_NAMES, DRPOConfig, SearchSettings, setting_fields

# Flags of `drpo optimize` that are not DRPO settings: models, inputs and outputs, the run's own switches.
NOT_SETTINGS = {"help", "verbose", "config", "trainset", "num_queries", "valset", "examples", "log_dir", "quick",
                "no_check", "no_progress", "probe_queries", "dry_run", "resume", "demo_query", "base_model_type",
                *(f"{role}_{kind}" for role in ("base", "metrics", "judge", "optimizer")
                  for kind in ("model", "api_base", "router"))}


def _optimize_parser():
    parser = build_parser()
    return next(a for a in parser._actions if a.dest == "command").choices["optimize"]


def test_every_flag_is_a_setting_or_named_as_none_and_every_setting_with_a_flag_has_it():
    actions = {a.dest: a for a in _optimize_parser()._actions}
    settings = {dest for _, _, _, dest in CLI_SETTINGS}
    assert set(actions) - settings == NOT_SETTINGS
    for _, f, flag, dest in CLI_SETTINGS:
        action = actions[dest]
        assert flag in action.option_strings, (f.name, flag)
        assert f.metadata["help"] in action.help, f.name
        if f.metadata.get("choices"):
            assert tuple(action.choices) == f.metadata["choices"], f.name
    python_only = {f.name for _, f in setting_fields() if f.metadata.get("flag", "auto") is None}
    assert python_only == {"history_window", "minibatch_size", "probe_queries", "optimize_icl", "icl_rounds"}
    assert set(SETTING_OF_DEST.values()) | python_only == set(SETTING_NAMES)


def test_drpo_takes_every_setting_with_the_same_default():
    parameters = inspect.signature(DRPO.__init__).parameters
    defaults = {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
                for _, f in setting_fields()}
    assert set(SETTING_NAMES) <= set(parameters)
    derived = {"num_threads"}  # DRPO's None: 8, or 4 per replica of the largest pool
    assert {n: parameters[n].default for n in SETTING_NAMES if n not in derived} == \
        {n: defaults[n] for n in SETTING_NAMES if n not in derived}
    assert parameters["num_threads"].default is None and defaults["num_threads"] == 8


def test_a_config_object_and_keyword_arguments_give_the_same_run():
    world = World(lambda p, q: [4, 4])
    flat = {"beam_size": 3, "depth": 4, "judge_samples": 2, "answer_max_tokens": 64, "max_calls": 50, "k": 1,
            "initial_instructions": "Be kind.", "holdout": 0}
    by_kwargs = DRPO(**world.roles(), progress=False, **flat)
    by_config = DRPO(**world.roles(), progress=False, config=DRPOConfig.from_flat(flat))
    assert by_kwargs.config == by_config.config
    assert by_config.settings.beam_size == 3 and by_config.settings.guards.judge_samples == 2
    assert by_config.answer_max_tokens == 64 and by_config.budgets["max_calls"] == 50 and by_config.k == 1
    assert by_config.config.flat()["initial_instructions"] == "Be kind."
    with pytest.raises(ValueError, match="not both: beam_size"):
        DRPO(**world.roles(), config=DRPOConfig(), beam_size=4)
    with pytest.raises(ValueError, match="unknown DRPO setting"):
        DRPOConfig.from_flat({"beam_sise": 4})
    with pytest.raises(ValueError, match="beam_size must be an integer >= 1"):
        DRPOConfig.from_flat({"beam_size": 0})
    with pytest.raises(ValueError, match="config must be a DRPOConfig"):
        DRPO(**world.roles(), config={"beam_size": 2})


def test_paper_mode_settles_what_it_implies_in_the_config():
    world = World(lambda p, q: [4, 4])
    config = DRPO(**world.roles(), paper_mode=True, progress=False).config
    assert config.search.paper_mode and config.search.paper_faithful_failures and not config.search.rewrite_filter
    assert config.decoding.answer_max_tokens == 2048 and config.decoding.answer_temperature == 0.0
    assert config.search.guards.max_prompt_tokens is None and not config.search.guards.merge_duplicate_bullets
    assert isinstance(config.search, SearchSettings)


def test_a_config_file_uses_the_flag_names_and_their_checks(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"beam-size": 3, "no_progress": True, "max_tokens": 64, "rewrite_filter": False}))
    assert read_config(path) == {"beam_size": 3, "no_progress": True, "max_tokens": 64, "rewrite_filter": False}
    from drpo_dspy.cli.common import UsageError

    path.write_text(json.dumps({"beam_size": 0}))
    with pytest.raises(UsageError, match="beam_size must be an integer >= 1"):
        read_config(path)
    path.write_text(json.dumps({"history_window": 3}))
    with pytest.raises(UsageError, match="unknown option"):
        read_config(path)


def test_switching_a_default_off_on_the_command_line_reaches_drpo(tmp_path, monkeypatch):
    """--no-rewrite-filter and --no-merge-bullets were dropped with the other False values before this test."""
    import drpo_dspy
    from drpo_dspy.cli.main import main

    seen = {}
    real = drpo_dspy.DRPO.__init__

    def spy(self, **kwargs):
        seen.update(kwargs)
        real(self, **kwargs)

    monkeypatch.setattr(drpo_dspy.DRPO, "__init__", spy)
    assert main(["optimize", "--dry-run", "--no-rewrite-filter", "--no-merge-bullets", "--max-tokens", "64",
                 "--max-prompt-tokens", "0", "--log-dir", str(tmp_path / "run")]) == 0
    assert seen["rewrite_filter"] is False and seen["merge_duplicate_bullets"] is False
    assert seen["answer_max_tokens"] == 64
    assert "max_prompt_tokens" in seen and seen["max_prompt_tokens"] is None  # 0 on the command line: off
