"""The fused training LSTM computes what keras.layers.LSTM computes."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from vse_tf.models import recurrent

BATCH, STEPS, INPUT, UNITS = 6, 5, 7, 8


def _case(seed=0):
    keras.utils.set_random_seed(seed)
    layer = keras.layers.LSTM(UNITS)
    layer.build((None, STEPS, INPUT))
    rng = np.random.default_rng(seed)
    inputs = rng.normal(size=(BATCH, STEPS, INPUT)).astype(np.float32)
    lengths = np.array([1, 5, 3, 2, 5, 4])  # right-padded, one full row
    mask = np.arange(STEPS)[None, :] < lengths[:, None]
    inputs[~mask] = 0.0
    return layer, tf.constant(inputs), tf.constant(mask)


def _fused(layer, inputs, mask, compute_dtype="float32"):
    cell = layer.cell
    return recurrent.lstm_last_state(
        inputs,
        mask,
        cell.kernel,
        cell.recurrent_kernel,
        cell.bias,
        compute_dtype=compute_dtype,
    )


def test_matches_keras_lstm_with_mask():
    layer, inputs, mask = _case()
    want = layer(inputs, mask=mask).numpy()
    got = _fused(layer, inputs, mask).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)
    # A one-step row is one cell update from the zero state.
    assert np.abs(got[0]).max() > 0


def test_gradients_match_keras_lstm():
    layer, inputs, mask = _case(1)
    weights = layer.trainable_variables

    def grads(fn):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.sin(fn()))
        return [g.numpy() for g in tape.gradient(loss, weights)]

    want = grads(lambda: layer(inputs, mask=mask))
    got = grads(lambda: _fused(layer, inputs, mask))
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, atol=1e-5)


def test_xla_and_dynamic_length_traces_agree():
    layer, inputs, mask = _case(2)
    want = _fused(layer, inputs, mask).numpy()
    jitted = tf.function(lambda x, m: _fused(layer, x, m), jit_compile=True)
    np.testing.assert_allclose(jitted(inputs, mask).numpy(), want, atol=1e-5)
    dynamic = tf.function(
        lambda x, m: _fused(layer, x, m),
        input_signature=[
            tf.TensorSpec([None, None, INPUT]),
            tf.TensorSpec([None, None], tf.bool),
        ],
    )
    np.testing.assert_allclose(dynamic(inputs, mask).numpy(), want, atol=1e-5)


def test_bfloat16_matmuls_stay_close():
    layer, inputs, mask = _case(3)
    want = _fused(layer, inputs, mask).numpy()
    got = _fused(layer, inputs, mask, "bfloat16").numpy()
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=2e-2)
    cosine = (
        (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    )
    assert cosine.min() > 0.999


def test_rejects_unknown_dtype():
    layer, inputs, mask = _case()
    with pytest.raises(ValueError, match="compute_dtype"):
        _fused(layer, inputs, mask, "float16")
