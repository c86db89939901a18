"""Tests for vse_tf.metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vse_tf import metrics


def _reference_ranks(images, captions, k):
    """Brute force, one query and one candidate at a time, in float64."""
    images = np.asarray(images, np.float64)
    captions = np.asarray(captions, np.float64)
    n = images.shape[0]
    i2t = []
    for i in range(n):
        scores = [float(images[i] @ captions[j]) for j in range(n * k)]
        best = max(scores[k * i : k * i + k])
        wrong = sum(1 for j in range(n * k) if j // k != i and scores[j] >= best)
        i2t.append(1 + wrong)
    t2i = []
    for j in range(n * k):
        scores = [float(captions[j] @ images[i]) for i in range(n)]
        true = scores[j // k]
        wrong = sum(1 for i in range(n) if i != j // k and scores[i] >= true)
        t2i.append(1 + wrong)
    return i2t, t2i


def _reference_metrics(images, captions, k):
    out = {}
    for name, ranks in zip(
        ("i2t", "t2i"), _reference_ranks(images, captions, k), strict=True
    ):
        for top in (1, 5, 10):
            out[f"{name}_r{top}"] = 100.0 * sum(r <= top for r in ranks) / len(ranks)
        ordered = sorted(ranks)
        mid = len(ordered) // 2
        median = (
            ordered[mid]
            if len(ordered) % 2
            else (ordered[mid - 1] + ordered[mid]) / 2.0
        )
        out[f"{name}_medr"] = float(math.floor(median))
        out[f"{name}_meanr"] = sum(ranks) / len(ranks)
    out["rsum"] = sum(out[f"{d}_r{t}"] for d in ("i2t", "t2i") for t in (1, 5, 10))
    return out


def _assert_metrics_close(got, expected):
    assert list(got) == list(metrics.METRIC_KEYS)
    for key in metrics.METRIC_KEYS:
        assert isinstance(got[key], float), key
        assert got[key] == pytest.approx(expected[key], abs=1e-9), key


def _gaussian(seed, n, k, d):
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(n, d)).astype(np.float32)
    # Captions near their image so the recalls are neither 0 nor 100.
    captions = np.repeat(images, k, axis=0) + 1.5 * rng.normal(size=(n * k, d))
    return images, captions.astype(np.float32)


def _integer_with_ties(seed, n, k, d):
    """Small-integer embeddings: exact dot products with many ties, plus duplicates."""
    rng = np.random.default_rng(seed)
    images = rng.integers(-1, 2, size=(n, d)).astype(np.float32)
    captions = rng.integers(-1, 2, size=(n * k, d)).astype(np.float32)
    images[3] = images[0]  # duplicate images: t2i ties for the captions of 0 and 3
    captions[7] = captions[2]  # duplicate captions across images 0 and 1
    captions[k * 5 : k * 6] = captions[k * 4 : k * 5]  # all of image 5's captions
    return images, captions


def test_hand_checked_tiny_case():
    # Two images, two captions each (k=2); captions 0, 1 -> image 0; 2, 3 -> image 1.
    images = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    captions = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.6, 0.8]], np.float32)
    # Scores S[image, caption]:
    #   image 0: [1.0, 0.0, 1.0, 0.6]
    #   image 1: [0.0, 1.0, 0.0, 0.8]
    # i2t:
    #   image 0: best true = 1.0 (caption 0); wrong caption 2 ties at 1.0 -> rank 2
    #   image 1: best true = 0.8 (caption 3); wrong caption 1 scores 1.0 -> rank 2
    # t2i:
    #   caption 0 (true image 0): 1.0 vs 0.0 -> rank 1
    #   caption 1 (true image 0): 0.0 vs 1.0 -> rank 2
    #   caption 2 (true image 1): 0.0 vs 1.0 -> rank 2
    #   caption 3 (true image 1): 0.8 vs 0.6 -> rank 1
    np.testing.assert_array_equal(metrics.i2t_ranks(images, captions, 2), [2, 2])
    np.testing.assert_array_equal(metrics.t2i_ranks(images, captions, 2), [1, 2, 2, 1])
    got = metrics.retrieval_metrics(images, captions, captions_per_image=2)
    expected = {
        "i2t_r1": 0.0,
        "i2t_r5": 100.0,
        "i2t_r10": 100.0,
        "i2t_medr": 2.0,
        "i2t_meanr": 2.0,
        "t2i_r1": 50.0,
        "t2i_r5": 100.0,
        "t2i_r10": 100.0,
        "t2i_medr": 1.0,  # floor(median([1, 2, 2, 1]) = 1.5)
        "t2i_meanr": 1.5,
        "rsum": 450.0,
    }
    _assert_metrics_close(got, expected)


@pytest.mark.parametrize(
    "make, seed", [(_gaussian, 0), (_gaussian, 1), (_integer_with_ties, 2)]
)
def test_matches_brute_force_reference(make, seed):
    k = 5
    images, captions = make(seed, 40, k, 6)
    ref_i2t, ref_t2i = _reference_ranks(images, captions, k)
    np.testing.assert_array_equal(metrics.i2t_ranks(images, captions, k), ref_i2t)
    np.testing.assert_array_equal(metrics.t2i_ranks(images, captions, k), ref_t2i)
    got = metrics.retrieval_metrics(images, captions, captions_per_image=k)
    _assert_metrics_close(got, _reference_metrics(images, captions, k))


def test_constructed_ties_count_against_the_model():
    images, captions = _integer_with_ties(2, 40, 5, 6)
    t2i = metrics.t2i_ranks(images, captions, 5)
    # Images 0 and 3 are identical, so each of their captions sees the other
    # image tie with its own: rank >= 2.
    assert np.all(t2i[0:5] >= 2) and np.all(t2i[15:20] >= 2)
    # Images 4 and 5 have identical caption sets, so each of them sees the
    # other's copy of its best caption tie: rank >= 2.
    i2t = metrics.i2t_ranks(images, captions, 5)
    assert i2t[4] >= 2 and i2t[5] >= 2


def test_other_captions_per_image():
    images, captions = _gaussian(4, 15, 3, 4)
    got = metrics.retrieval_metrics(images, captions, captions_per_image=3)
    _assert_metrics_close(got, _reference_metrics(images, captions, 3))


def test_perfect_embeddings():
    n, k = 12, 5
    images = np.eye(n, 16, dtype=np.float32)
    captions = np.repeat(images, k, axis=0)
    got = metrics.retrieval_metrics(images, captions, captions_per_image=k)
    for d in ("i2t", "t2i"):
        assert got[f"{d}_r1"] == 100.0
        assert got[f"{d}_r10"] == 100.0
        assert got[f"{d}_medr"] == 1.0
        assert got[f"{d}_meanr"] == 1.0
    assert got["rsum"] == 600.0


def test_identical_embeddings_score_worst():
    n, k = 20, 5
    images = np.ones((n, 8), np.float32)
    captions = np.ones((n * k, 8), np.float32)
    got = metrics.retrieval_metrics(images, captions, captions_per_image=k)
    # i2t: every one of the n*k - k wrong captions ties -> rank n*k - k + 1 = 96.
    np.testing.assert_array_equal(metrics.i2t_ranks(images, captions, k), 96)
    assert got["i2t_medr"] == 96.0 and got["i2t_meanr"] == 96.0
    # t2i: all n - 1 wrong images tie -> rank n = 20.
    assert got["t2i_medr"] == 20.0 and got["t2i_meanr"] == 20.0
    assert got["rsum"] == 0.0


@pytest.mark.parametrize("make", [_gaussian, _integer_with_ties])
def test_chunking_invariance(make):
    images, captions = make(9, 40, 5, 6)
    reference = metrics.retrieval_metrics(images, captions, batch_size=1000)
    for batch_size in (1, 7, 40, 199):
        assert (
            metrics.retrieval_metrics(images, captions, batch_size=batch_size)
            == reference
        )


def test_float16_and_float64_inputs_are_accepted():
    images, captions = _integer_with_ties(5, 20, 5, 4)
    reference = metrics.retrieval_metrics(images, captions)
    for dtype in (np.float16, np.float64):
        got = metrics.retrieval_metrics(images.astype(dtype), captions.astype(dtype))
        assert got == reference


def _coco_data():
    rng = np.random.default_rng(2024)
    images = rng.normal(size=(5000, 8)).astype(np.float32)
    captions = np.repeat(images, 5, axis=0) + 0.8 * rng.normal(size=(25000, 8))
    return images, captions.astype(np.float32)


def test_coco_protocols():
    images, captions = _coco_data()
    folds = [
        metrics.retrieval_metrics(
            images[1000 * f : 1000 * (f + 1)], captions[5000 * f : 5000 * (f + 1)]
        )
        for f in range(5)
    ]
    got_1k = metrics.coco_metrics(images, captions, protocol="1k")
    assert list(got_1k) == list(metrics.METRIC_KEYS)
    for key in metrics.METRIC_KEYS:
        manual = sum(fold[key] for fold in folds) / 5.0
        assert got_1k[key] == pytest.approx(manual, rel=1e-12), key
    got_5k = metrics.coco_metrics(images, captions, protocol="5k")
    assert got_5k == metrics.retrieval_metrics(images, captions)
    # Harder with 5x the distractors.
    assert got_5k["rsum"] < got_1k["rsum"]


def test_coco_validation():
    images, captions = _gaussian(0, 10, 5, 4)
    with pytest.raises(ValueError, match=r"5000 images.*\(10, 4\)"):
        metrics.coco_metrics(images, captions, protocol="1k")
    with pytest.raises(ValueError, match="5000"):
        metrics.coco_metrics(images, captions, protocol="5k")
    with pytest.raises(ValueError, match="protocol"):
        metrics.coco_metrics(images, captions, protocol="10k")


def test_bad_inputs_raise():
    images, captions = _gaussian(0, 10, 5, 4)
    with pytest.raises(ValueError, match="image_emb"):
        metrics.retrieval_metrics(images[0], captions)
    with pytest.raises(ValueError, match="caption_emb"):
        metrics.retrieval_metrics(images, captions[:, :, None])
    with pytest.raises(ValueError, match="5 rows per image"):
        metrics.retrieval_metrics(images, captions[:-1])
    with pytest.raises(ValueError, match="embedding sizes"):
        metrics.retrieval_metrics(images, captions[:, :3])
    with pytest.raises(ValueError, match="captions_per_image"):
        metrics.retrieval_metrics(images, captions, captions_per_image=0)
    with pytest.raises(ValueError, match="batch_size"):
        metrics.retrieval_metrics(images, captions, batch_size=0)
    with pytest.raises(ValueError, match="empty"):
        metrics.retrieval_metrics(images[:0], captions[:0])
    bad = images.copy()
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        metrics.retrieval_metrics(bad, captions)


def test_format_table():
    images, captions = _gaussian(0, 30, 5, 6)
    result = metrics.retrieval_metrics(images, captions)
    table = metrics.format_table(result, "COCO 1k")
    lines = table.splitlines()
    assert lines[0] == "COCO 1k"
    assert lines[1].split() == ["direction", "R@1", "R@5", "R@10", "medr", "meanr"]
    assert lines[2].split()[0] == "i2t" and lines[3].split()[0] == "t2i"
    assert lines[2].split()[1] == f"{result['i2t_r1']:.1f}"
    assert lines[3].split()[5] == f"{result['t2i_meanr']:.1f}"
    assert lines[4].split() == ["rsum", f"{result['rsum']:.1f}"]
    # Fixed width: the data rows line up with the header.
    assert len({len(line) for line in lines[1:4]}) == 1
