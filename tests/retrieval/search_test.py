"""Tests for vse_tf.retrieval.search."""

from __future__ import annotations

import numpy as np
import pytest

from vse_tf.retrieval.search import ExactIndex, top_k


def _reference(queries, database, k):
    """Brute force: full scores, stable sort (ties by lower id)."""
    scores = np.asarray(queries, np.float32) @ np.asarray(database, np.float32).T
    ids = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, ids, axis=1), ids


def test_hand_checked_example():
    database = np.array([[1, 0], [0, 1], [0.6, 0.8], [-1, 0]], np.float32)
    queries = np.array([[1, 0], [0, 1]], np.float32)
    scores, ids = top_k(queries, database, k=2)
    np.testing.assert_array_equal(ids, [[0, 2], [1, 2]])
    np.testing.assert_allclose(scores, [[1.0, 0.6], [1.0, 0.8]])
    assert scores.dtype == np.float32
    assert ids.dtype == np.int64


@pytest.mark.parametrize("batch_size", [1, 7, 64, 10_000])
@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_matches_brute_force(batch_size, dtype):
    rng = np.random.default_rng(0)
    database = rng.standard_normal((300, 16)).astype(dtype)
    queries = rng.standard_normal((13, 16)).astype(np.float32)
    scores, ids = top_k(queries, database, k=10, batch_size=batch_size)
    ref_scores, ref_ids = _reference(queries, database, 10)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-5, atol=1e-6)


def test_ties_are_broken_by_lower_id():
    rng = np.random.default_rng(1)
    # Small integer vectors: many exactly equal scores, across chunk borders.
    for trial in range(20):
        database = rng.integers(-2, 3, (int(rng.integers(5, 200)), 3))
        queries = rng.integers(-2, 3, (4, 3)).astype(np.float32)
        k = int(rng.integers(1, 30))
        batch = int(rng.integers(1, 40))
        scores, ids = top_k(
            queries,
            database.astype(np.float32),
            k=k,
            batch_size=batch,
            query_batch_size=3,
        )
        ref_scores, ref_ids = _reference(queries, database, k)
        np.testing.assert_array_equal(ids, ref_ids, err_msg=f"trial {trial}")
        np.testing.assert_array_equal(scores, ref_scores)


def test_all_equal_scores_give_first_ids():
    database = np.ones((50, 4), np.float32)
    _, ids = top_k(np.ones((2, 4), np.float32), database, k=5, batch_size=8)
    np.testing.assert_array_equal(ids, [[0, 1, 2, 3, 4]] * 2)


def test_k_larger_than_database_returns_all_rows():
    database = np.eye(3, dtype=np.float32)
    scores, ids = top_k(np.array([[0.1, 0.3, 0.2]], np.float32), database, k=10)
    assert ids.shape == (1, 3)
    np.testing.assert_array_equal(ids, [[1, 2, 0]])
    np.testing.assert_allclose(scores, [[0.3, 0.2, 0.1]])


def test_no_queries():
    scores, ids = top_k(np.zeros((0, 4), np.float32), np.eye(4, dtype=np.float32))
    assert scores.shape == ids.shape == (0, 4)


@pytest.mark.parametrize(
    "queries, database, kwargs, error",
    [
        (np.zeros(4), np.zeros((3, 4)), {}, ValueError),  # 1-D queries.
        (np.zeros((1, 4)), np.zeros(4), {}, ValueError),  # 1-D database.
        (np.zeros((1, 3)), np.zeros((3, 4)), {}, ValueError),  # Dim mismatch.
        (np.zeros((1, 4)), np.zeros((0, 4)), {}, ValueError),  # Empty database.
        (np.zeros((1, 4)), np.zeros((3, 4)), {"k": 0}, ValueError),
        (np.zeros((1, 4)), np.zeros((3, 4)), {"batch_size": 0}, ValueError),
        (np.full((1, 4), np.nan), np.zeros((3, 4)), {}, ValueError),
        (np.zeros((1, 4), np.int32), np.zeros((3, 4)), {}, TypeError),
        (np.zeros((1, 4)), np.zeros((3, 4), np.int8), {}, TypeError),
    ],
)
def test_validation(queries, database, kwargs, error):
    with pytest.raises(error):
        top_k(queries, database, **kwargs)


def test_exact_index_float16_kept_or_converted():
    rng = np.random.default_rng(2)
    database = rng.standard_normal((500, 8)).astype(np.float16)
    queries = rng.standard_normal((5, 8)).astype(np.float32)
    converted = ExactIndex(database, batch_size=64)
    kept = ExactIndex(database, keep_float16=True, batch_size=64)
    assert converted.database.dtype == np.float32
    assert kept.database.dtype == np.float16
    assert len(converted) == converted.size == 500 and converted.dim == 8
    ref_scores, ref_ids = _reference(queries, database, 7)
    for index in (converted, kept):
        scores, ids = index.search(queries, k=7)
        np.testing.assert_array_equal(ids, ref_ids)
        np.testing.assert_allclose(scores, ref_scores, rtol=1e-5, atol=1e-6)


def test_exact_index_float32_is_not_copied():
    database = np.eye(4, dtype=np.float32)
    assert ExactIndex(database).database is database
