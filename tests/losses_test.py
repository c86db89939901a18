"""Tests for vse_tf.losses."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from vse_tf import losses


def _normalised(rng: np.random.Generator, rows: int, dim: int) -> np.ndarray:
    x = rng.normal(size=(rows, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _reference(im, tx, margin, mode, image_ids=None):
    """Loop-by-loop VSE0 / VSE++ loss in float64."""
    im = np.asarray(im, np.float64)
    tx = np.asarray(tx, np.float64)
    b = im.shape[0]
    ids = np.arange(b) if image_ids is None else np.asarray(image_ids)
    s = im @ tx.T
    total = 0.0
    for i in range(b):
        text_hinges = [0.0]  # image i as query, contrastive captions k
        image_hinges = [0.0]  # caption i as query, contrastive images k
        for k in range(b):
            if k == i or ids[k] == ids[i]:
                continue
            text_hinges.append(max(0.0, margin - s[i, i] + s[i, k]))
            image_hinges.append(max(0.0, margin - s[i, i] + s[k, i]))
        if mode == "sum":
            total += sum(text_hinges) + sum(image_hinges)
        else:
            total += max(text_hinges) + max(image_hinges)
    return total


def test_similarity_matrix_shape_and_values():
    im = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], np.float32)
    tx = np.array([[0.8, 0.6], [0.0, 1.0]], np.float32)
    s = losses.similarity_matrix(im, tx).numpy()
    assert s.shape == (3, 2)
    np.testing.assert_allclose(s, im @ tx.T, atol=1e-6)


def test_worked_2x2_example():
    # image 0 = (1, 0), image 1 = (0, 1); caption 0 = (0.8, 0.6), caption 1 = (0, 1).
    # S[i, k] = <image i, caption k>:
    #   S = [[0.8, 0.0],
    #        [0.6, 1.0]]
    # margin = 0.5.
    # Image as query (row i, contrastive caption k):
    #   i=0, k=1: max(0, 0.5 - 0.8 + 0.0) = 0
    #   i=1, k=0: max(0, 0.5 - 1.0 + 0.6) = 0.1
    # Caption as query (column j, contrastive image k):
    #   j=0, k=1: max(0, 0.5 - 0.8 + S[1, 0]=0.6) = 0.3
    #   j=1, k=0: max(0, 0.5 - 1.0 + S[0, 1]=0.0) = 0
    # Sum = 0.4. With B=2 each positive has exactly one negative, so "max" = "sum".
    im = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    tx = np.array([[0.8, 0.6], [0.0, 1.0]], np.float32)
    for mode in losses.LOSS_MODES:
        loss = losses.ranking_loss(im, tx, margin=0.5, mode=mode)
        assert loss.dtype == tf.float32
        assert loss.shape == ()
        np.testing.assert_allclose(loss.numpy(), 0.4, atol=1e-6)
    # Both rows show the same image: nothing is a negative, the loss is 0.
    loss = losses.ranking_loss(im, tx, margin=0.5, image_ids=np.array([3, 3]))
    np.testing.assert_allclose(loss.numpy(), 0.0, atol=1e-7)


@pytest.mark.parametrize("mode", ["sum", "max"])
@pytest.mark.parametrize("with_ids", [False, True])
def test_matches_numpy_reference(mode, with_ids):
    rng = np.random.default_rng(1234)
    im = _normalised(rng, 7, 5)
    tx = _normalised(rng, 7, 5)
    image_ids = np.array([0, 1, 0, 2, 1, 3, 0], np.int64) if with_ids else None
    for margin in (0.0, 0.2, 0.7):
        expected = _reference(im, tx, margin, mode, image_ids)
        got = losses.ranking_loss(im, tx, margin=margin, mode=mode, image_ids=image_ids)
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-5)


def test_masking_changes_the_hardest_negative():
    rng = np.random.default_rng(7)
    im = _normalised(rng, 7, 5)
    tx = _normalised(rng, 7, 5)
    ids = np.array([0, 1, 0, 2, 1, 3, 0])
    for mode in losses.LOSS_MODES:
        masked = losses.ranking_loss(im, tx, margin=0.7, mode=mode, image_ids=ids)
        unmasked = losses.ranking_loss(im, tx, margin=0.7, mode=mode)
        assert masked.numpy() < unmasked.numpy()
    # Distinct ids behave exactly like no ids.
    distinct = losses.ranking_loss(im, tx, image_ids=tf.range(7))
    np.testing.assert_allclose(
        distinct.numpy(), losses.ranking_loss(im, tx).numpy(), rtol=1e-6
    )


def test_margin_zero_on_separated_embeddings_is_zero():
    emb = np.eye(4, 6, dtype=np.float32)  # S = I: positives 1, negatives 0
    for mode in losses.LOSS_MODES:
        assert losses.ranking_loss(emb, emb, margin=0.0, mode=mode).numpy() == 0.0
    # With margin 0.2 < 1 the separation still satisfies every hinge.
    assert losses.ranking_loss(emb, emb, margin=0.2).numpy() == 0.0


def test_gradient_is_finite():
    rng = np.random.default_rng(3)
    im = tf.Variable(_normalised(rng, 7, 5))
    tx = tf.Variable(_normalised(rng, 7, 5))
    for mode in losses.LOSS_MODES:
        with tf.GradientTape() as tape:
            loss = losses.ranking_loss(im, tx, margin=0.5, mode=mode)
        grads = tape.gradient(loss, [im, tx])
        for grad in grads:
            assert grad is not None
            assert np.all(np.isfinite(grad.numpy()))
            assert np.any(grad.numpy() != 0.0)


def test_runs_inside_tf_function():
    rng = np.random.default_rng(5)
    im = _normalised(rng, 7, 5)
    tx = _normalised(rng, 7, 5)
    ids = np.array([0, 1, 0, 2, 1, 3, 0], np.int32)

    @tf.function
    def step(a, b, i):
        return losses.ranking_loss(a, b, margin=0.2, mode="max", image_ids=i)

    np.testing.assert_allclose(
        step(im, tx, ids).numpy(), _reference(im, tx, 0.2, "max", ids), rtol=1e-5
    )


@pytest.mark.parametrize("dtype", [tf.bfloat16, tf.float16])
def test_low_precision_inputs(dtype):
    rng = np.random.default_rng(11)
    im = tf.cast(_normalised(rng, 7, 5), dtype)
    tx = tf.cast(_normalised(rng, 7, 5), dtype)
    for mode in losses.LOSS_MODES:
        loss = losses.ranking_loss(im, tx, mode=mode)
        assert loss.dtype == tf.float32
        # Reference on the rounded values, so only the arithmetic precision differs.
        expected = _reference(
            tf.cast(im, tf.float32).numpy(), tf.cast(tx, tf.float32).numpy(), 0.2, mode
        )
        np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-5, atol=1e-5)


def test_bad_mode_raises():
    emb = np.eye(2, dtype=np.float32)
    with pytest.raises(ValueError, match="mode"):
        losses.ranking_loss(emb, emb, mode="mean")


# ---- InfoNCE ----------------------------------------------------------------


def _infonce_reference(im, tx, temperature, image_ids=None):
    """Row-by-row symmetric InfoNCE in float64 (same-image pairs left out)."""
    s = np.asarray(im, np.float64) @ np.asarray(tx, np.float64).T
    t = min(max(temperature, losses.MIN_TEMPERATURE), losses.MAX_TEMPERATURE)
    b = s.shape[0]
    ids = np.arange(b) if image_ids is None else np.asarray(image_ids)

    def cross_entropy(row_scores, i):
        kept = [k for k in range(b) if k == i or ids[k] != ids[i]]
        logits = row_scores[kept] / t
        return -row_scores[i] / t + np.log(np.sum(np.exp(logits)))

    i2t = np.mean([cross_entropy(s[i], i) for i in range(b)])
    t2i = np.mean([cross_entropy(s[:, j], j) for j in range(b)])
    return 0.5 * (i2t + t2i)


class TestInfoNCE:
    def test_hand_worked_identity_batch(self):
        # S = I, t = 0.5: logits [[2, 0], [0, 2]]; each row and column gives
        # -2 + log(e^2 + e^0) = log(1 + e^-2).
        eye = tf.eye(2)
        loss = losses.infonce_loss(eye, eye, temperature=0.5)
        np.testing.assert_allclose(float(loss), np.log1p(np.exp(-2.0)), rtol=1e-6)

    def test_hand_worked_asymmetric_batch(self):
        # S = [[0.6, 1.0], [0.8, 0.0]], t = 1.
        im = tf.constant([[1.0, 0.0], [0.0, 1.0]])
        tx = tf.constant([[0.6, 0.8], [1.0, 0.0]])
        i2t = (-0.6 + np.log(np.exp(0.6) + np.exp(1.0))) + np.log(np.exp(0.8) + 1.0)
        t2i = (-0.6 + np.log(np.exp(0.6) + np.exp(0.8))) + np.log(np.exp(1.0) + 1.0)
        expected = 0.5 * (i2t / 2 + t2i / 2)
        loss = losses.infonce_loss(im, tx, temperature=1.0)
        np.testing.assert_allclose(float(loss), expected, rtol=1e-6)

    def test_same_image_pairs_are_not_negatives(self):
        eye = tf.eye(2)
        # Both rows share one image: each row's softmax holds only its positive.
        loss = losses.infonce_loss(eye, eye, 0.5, image_ids=tf.constant([7, 7]))
        np.testing.assert_allclose(float(loss), 0.0, atol=1e-6)

    @pytest.mark.parametrize("temperature", [0.07, 0.3, 0.001, 5.0])
    @pytest.mark.parametrize("with_ids", [False, True])
    def test_matches_numpy_reference(self, temperature, with_ids):
        rng = np.random.default_rng(4)
        im, tx = _normalised(rng, 12, 6), _normalised(rng, 12, 6)
        ids = np.repeat(np.arange(4), 3) if with_ids else None
        loss = losses.infonce_loss(
            im, tx, temperature, None if ids is None else tf.constant(ids)
        )
        expected = _infonce_reference(im, tx, temperature, ids)
        np.testing.assert_allclose(float(loss), expected, rtol=1e-5)

    def test_temperature_is_clamped(self):
        rng = np.random.default_rng(5)
        im, tx = _normalised(rng, 6, 4), _normalised(rng, 6, 4)
        low = losses.infonce_loss(im, tx, 1e-5)
        at_clamp = losses.infonce_loss(im, tx, losses.MIN_TEMPERATURE)
        np.testing.assert_allclose(float(low), float(at_clamp), rtol=1e-6)

    def test_bfloat16_inputs_compute_in_float32(self):
        rng = np.random.default_rng(6)
        im, tx = _normalised(rng, 8, 4), _normalised(rng, 8, 4)
        loss = losses.infonce_loss(tf.cast(im, tf.bfloat16), tf.cast(tx, tf.bfloat16))
        assert loss.dtype == tf.float32
        np.testing.assert_allclose(
            float(loss), _infonce_reference(im, tx, 0.07), rtol=0.05
        )
