"""The registry of embedded models: known names, any local GGUF, unknown names refused before any call, the hash."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import dspy
import pytest

from drpo_dspy.engine import models as embedded_models
from drpo_dspy.engine.models import (
    GEMMA3_270M,
    SMOLLM2,
    EmbeddedModel,
    UnknownEmbeddedModel,
    default_model_type,
    model_file,
    resolve_embedded,
)


def test_known_names_resolve_with_their_route() -> None:
    assert resolve_embedded("embedded/smollm2-135m") is SMOLLM2
    assert resolve_embedded("drpo_text/embedded/gemma-3-270m") is GEMMA3_270M
    assert (SMOLLM2.route, GEMMA3_270M.route) == ("chat", "text")
    assert default_model_type("embedded/gemma-3-270m") == "text"
    assert default_model_type("openai/gpt-4o-mini") == "chat"
    assert "Gemma Terms of Use" in GEMMA3_270M.licence and GEMMA3_270M.sha256.startswith("a5fd3b62")


@pytest.mark.parametrize("name", ["embedded/typo", "embedded/smollm2-1.7b", "embedded/", "embedded/Gemma-3-270M"])
def test_unknown_names_are_refused_naming_the_known_ones(name: str) -> None:
    with pytest.raises(UnknownEmbeddedModel, match="embedded/smollm2-135m, embedded/gemma-3-270m"):
        resolve_embedded(name)


def test_a_gguf_path_is_a_model_and_a_missing_one_is_refused(tmp_path: Path) -> None:
    gguf = tmp_path / "mine.gguf"
    gguf.write_bytes(b"GGUF")
    spec = resolve_embedded(f"embedded/{gguf}")
    assert spec.path == gguf.resolve() and spec.model == f"embedded/{gguf}" and model_file(spec) == gguf.resolve()
    with pytest.raises(UnknownEmbeddedModel, match="does not exist"):
        resolve_embedded(f"embedded/{tmp_path / 'missing.gguf'}")


def _chunked_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sha256: str) -> EmbeddedModel:
    """A model shipped in two parts by a package on sys.path, assembled into a private cache folder."""
    package = tmp_path / "site" / "fake_gguf_parts"
    (package / "data").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "data" / "m.gguf.part00").write_bytes(b"GGUF-first-half|")
    (package / "data" / "m.gguf.part01").write_bytes(b"second-half")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv(embedded_models.CACHE_ENV_VAR, str(tmp_path / "cache"))
    return EmbeddedModel(name="fake", title="fake", route="text", package="fake-gguf", module="fake_gguf_parts",
                         chunks=(("fake_gguf_parts", "data/m.gguf.part00"), ("fake_gguf_parts", "data/m.gguf.part01")),
                         sha256=sha256, install="pip install fake-gguf")


def test_parts_are_assembled_once_and_the_hash_is_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import hashlib

    good = hashlib.sha256(b"GGUF-first-half|second-half").hexdigest()
    path = model_file(_chunked_model(tmp_path, monkeypatch, good))
    assert path.read_bytes() == b"GGUF-first-half|second-half" and path.parent == tmp_path / "cache" / "models"
    with pytest.raises(ValueError, match=r"expected sha256.*pip install fake-gguf"):
        model_file(_chunked_model(tmp_path / "other", monkeypatch, "0" * 64))
    assert not (tmp_path / "other" / "cache" / "models" / "m.gguf").exists()  # the bad copy is not kept


def test_a_missing_package_names_its_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("llama_cpp")
    missing = EmbeddedModel(name="absent", title="absent", route="text", package="absent-gguf",
                            module="no_such_module_here", chunks=(("no_such_module_here", "x.gguf"),),
                            install='pip install "drpo-dspy[local,gemma]"')
    with pytest.raises(ImportError, match=r'absent-gguf\) is missing\. Install it with: pip install "drpo-dspy\['):
        embedded_models.check_installed(missing)


def test_unknown_embedded_names_fail_before_any_call_in_drpo_and_the_cli() -> None:
    from drpo_dspy import DRPO, AlignedResponder
    from drpo_dspy.cli.common import make_lm

    with pytest.raises(ValueError, match=r"unknown embedded model 'embedded/smollm2-1\.7b'"):
        make_lm("embedded/smollm2-1.7b", role="judge")
    judge = dspy.LM("embedded/smollm2-1.7b", engine="litellm")
    base = dspy.LM("embedded/smollm2-135m", engine="litellm")
    with pytest.raises(ValueError, match="judge_lm: unknown embedded model"):
        DRPO(base_lm=base, metrics_lm=base, judge_lm=judge, optimizer_lm=base, depth=1).compile(
            AlignedResponder(examples=[], k=0), trainset=["q"])
    assert judge.history == [] and base.history == []


def test_a_text_model_cannot_take_a_helper_role() -> None:
    from drpo_dspy import DRPO, AlignedResponder

    chat = dspy.LM("embedded/smollm2-135m", engine="litellm")
    text = dspy.LM("embedded/gemma-3-270m", engine="litellm", model_type="text")
    with pytest.raises(ValueError, match=r"judge_lm .*only the base role can be a text model"):
        DRPO(base_lm=text, metrics_lm=chat, judge_lm=text, optimizer_lm=chat, depth=1).compile(
            AlignedResponder(examples=[], k=0), trainset=["q"])


@pytest.mark.parametrize("command", [
    ["optimize", "--quick", "--judge-model", "embedded/typo", "--dry-run"],
    ["evaluate", "--base-model", "embedded/typo", "--eval-set", "regular", "--limit", "1", "--no-judge"],
    ["respond", "--program", "program.json", "--model", "embedded/typo", "hello"],
    ["serve", "--base-model", "embedded/typo", "--port", "9"],
])
def test_every_command_refuses_an_unknown_embedded_name_with_status_2(command: list[str], tmp_path: Path) -> None:
    from drpo_dspy import AlignedResponder

    AlignedResponder(examples=[], k=0).save(tmp_path / "program.json")
    main = "import sys; from drpo_dspy.cli import main; sys.exit(main())"
    proc = subprocess.run([sys.executable, "-c", main, *command], capture_output=True, text=True, cwd=tmp_path,
                          timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "unknown embedded model 'embedded/typo'" in proc.stderr
