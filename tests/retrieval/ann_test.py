"""Tests for vse_tf.retrieval.ann (skipped without FAISS)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from vse_tf.retrieval import ann
from vse_tf.retrieval.search import top_k

HAS_FAISS = importlib.util.find_spec("faiss") is not None
needs_faiss = pytest.mark.skipif(
    not HAS_FAISS, reason='FAISS not installed: pip install "vse_tf[ann]"'
)


def _clustered(num, dim, centres, spread, rng):
    """Unit vectors around the given centres (spread: noise per dimension)."""
    x = centres[rng.integers(0, len(centres), num)]
    x = x + spread * rng.standard_normal((num, dim)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((300, 64)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    # Cosine to the centre ~0.8, as for real (clustered) embeddings.
    database = _clustered(20_000, 64, centres, 0.1, rng).astype(np.float16)
    queries = _clustered(200, 64, centres, 0.1, rng)
    return database, queries


def test_recall_at_k_by_hand():
    exact = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    approx = np.array([[4, 3, 9, -1], [5, 6, 7, 8]])
    assert ann.recall_at_k(approx, exact) == pytest.approx((2 + 4) / 8)
    assert ann.recall_at_k(exact, exact) == 1.0
    with pytest.raises(ValueError):
        ann.recall_at_k(approx[:1], exact)


def test_default_nlist():
    assert ann.default_nlist(1_000_000) == 1024
    assert ann.default_nlist(20_000) == 128
    assert ann.default_nlist(10) == 1


def test_missing_faiss_names_the_extra(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "faiss":
            raise ImportError("No module named 'faiss'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ImportError, match=r'pip install "vse_tf\[ann\]"'):
        ann.ApproximateIndex(np.eye(4, dtype=np.float32))


@needs_faiss
@pytest.mark.parametrize("encoding", ann.ENCODINGS)
def test_recall_against_exact(data, encoding):
    database, queries = data
    _, exact_ids = top_k(queries, database, k=10)
    index = ann.ApproximateIndex(database, encoding=encoding)
    assert index.size == 20_000 and index.dim == 64 and index.nlist == 128
    scores, ids = index.search(queries, k=10)
    assert scores.shape == ids.shape == (200, 10)
    assert ids.dtype == np.int64 and scores.dtype == np.float32
    assert np.all(np.diff(scores, axis=1) <= 1e-6)  # Best first.
    assert ann.recall_at_k(ids, exact_ids) >= 0.95


@pytest.mark.slow(reason="trains FAISS IVF-PQ codebooks on 20,000 vectors (10-30 s)")
@needs_faiss
def test_more_probes_more_recall_and_deterministic(data):
    database, queries = data
    _, exact_ids = top_k(queries, database, k=10)
    index = ann.ApproximateIndex(database, nlist=128, nprobe=1, seed=3)
    assert index.encoding == "pq"
    recall_1 = ann.recall_at_k(index.search(queries)[1], exact_ids)
    index.nprobe = 128  # Every list: exact up to float16 rounding.
    recall_all = ann.recall_at_k(index.search(queries)[1], exact_ids)
    assert recall_1 < recall_all
    assert recall_all >= 0.99
    again = ann.ApproximateIndex(database, nlist=128, nprobe=1, seed=3)
    index.nprobe = 1
    np.testing.assert_array_equal(again.search(queries)[1], index.search(queries)[1])


@needs_faiss
def test_small_collection_and_validation():
    vectors = np.eye(5, dtype=np.float32)
    index = ann.ApproximateIndex(vectors, nlist=1)
    scores, ids = index.search(vectors[:2], k=10)  # k > N: N columns.
    assert ids.shape == (2, 5)
    np.testing.assert_array_equal(ids[:, 0], [0, 1])
    with pytest.raises(ValueError):
        index.search(np.zeros((1, 3), np.float32))
    with pytest.raises(ValueError):
        index.search(vectors, k=0)
    assert index.encoding == "fp16"  # Too few vectors for "pq" codebooks.
    with pytest.raises(ValueError):
        ann.ApproximateIndex(vectors, encoding="pq8")
    with pytest.raises(ValueError):
        ann.ApproximateIndex(vectors, nlist=6)
    with pytest.raises(ValueError):
        ann.ApproximateIndex(vectors, nlist=1, rerank=-1)
    with pytest.raises(ValueError):
        index.rerank = 1.5


@needs_faiss
def test_rerank_returns_exact_scores(data):
    database, queries = data
    index = ann.ApproximateIndex(database, nlist=64, nprobe=64)  # Every list.
    assert index.encoding == "pq" and index.rerank == ann.DEFAULT_RERANK
    scores, ids = index.search(queries[:20], k=10)
    exact_scores, exact_ids = top_k(queries[:20], database, k=10)
    np.testing.assert_array_equal(ids, exact_ids)
    np.testing.assert_allclose(scores, exact_scores, atol=1e-5)
    expected = np.einsum("qkd,qd->qk", database[ids].astype(np.float32), queries[:20])
    np.testing.assert_allclose(scores, expected, atol=1e-5)
    # Without re-ranking the scores are the PQ approximations.
    index.rerank = 0
    pq_scores, pq_ids = index.search(queries[:20], k=10)
    assert pq_ids.shape == (20, 10)
    assert not np.allclose(pq_scores, exact_scores, atol=1e-5)
    assert ann.recall_at_k(pq_ids, exact_ids) < 1.0


@pytest.mark.slow(reason="trains FAISS IVF-PQ codebooks on 20,000 vectors (10-30 s)")
@needs_faiss
def test_defaults_and_memory_map(data, tmp_path):
    database, queries = data
    path = tmp_path / "vectors.npy"
    np.save(path, database)
    mapped = np.load(path, mmap_mode="r")
    index = ann.ApproximateIndex(mapped, nlist=64, train_size=4096)
    assert index.nprobe == ann.default_nprobe(64) == 8
    in_memory = ann.ApproximateIndex(database, nlist=64, train_size=4096)
    for got, want in zip(index.search(queries), in_memory.search(queries)):
        np.testing.assert_array_equal(got, want)
    small = database[:2000]
    assert ann.ApproximateIndex(small, nlist=8, encoding="fp16").rerank == 0
    assert ann.ApproximateIndex(small, nlist=8, encoding="sq8").rerank == 10
