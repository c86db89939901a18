"""The fused training LSTM/GRU compute what keras.layers.LSTM/GRU compute."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from vse_tf.models import recurrent

BATCH, STEPS, INPUT, UNITS = 6, 5, 7, 8
LAYERS = {"lstm": keras.layers.LSTM, "gru": keras.layers.GRU}


def _case(cell="lstm", seed=0):
    keras.utils.set_random_seed(seed)
    layer = LAYERS[cell](UNITS)
    layer.build((None, STEPS, INPUT))
    # Non-zero biases, so every bias path is exercised.
    for weight in layer.cell.weights:
        if "bias" in weight.path:
            weight.assign(np.random.default_rng(seed).normal(size=weight.shape) * 0.3)
    rng = np.random.default_rng(seed)
    inputs = rng.normal(size=(BATCH, STEPS, INPUT)).astype(np.float32)
    lengths = np.array([1, 5, 3, 2, 5, 4])  # right-padded, one full row
    mask = np.arange(STEPS)[None, :] < lengths[:, None]
    inputs[~mask] = 0.0
    return layer, tf.constant(inputs), tf.constant(mask)


def _fused(
    cell, layer, inputs, mask, compute_dtype="float32", packed=True, pooling="last"
):
    return recurrent.rnn_last_state(
        cell,
        inputs,
        mask,
        layer.cell.kernel,
        layer.cell.recurrent_kernel,
        layer.cell.bias,
        compute_dtype=compute_dtype,
        packed=packed,
        pooling=pooling,
    )


def _grads(fn, layer, inputs):
    """Gradients of a fixed non-linear function of the state: weights + inputs."""
    with tf.GradientTape() as tape:
        tape.watch(inputs)
        loss = tf.reduce_sum(tf.sin(3.0 * fn(inputs)))
    grads = tape.gradient(loss, [inputs, *layer.trainable_variables])
    return [tf.convert_to_tensor(g).numpy() for g in grads]


@pytest.mark.parametrize("packed", [True, False])
@pytest.mark.parametrize("cell", recurrent.CELLS)
def test_matches_keras_layer_with_mask(cell, packed):
    layer, inputs, mask = _case(cell)
    want = layer(inputs, mask=mask).numpy()
    got = _fused(cell, layer, inputs, mask, packed=packed).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)
    # A one-step row is one cell update from the zero state.
    assert np.abs(got[0]).max() > 0


@pytest.mark.parametrize("packed", [True, False])
@pytest.mark.parametrize("cell", recurrent.CELLS)
def test_gradients_match_keras_layer(cell, packed):
    layer, inputs, mask = _case(cell, 1)
    want = _grads(lambda x: layer(x, mask=mask), layer, inputs)
    got = _grads(lambda x: _fused(cell, layer, x, mask, packed=packed), layer, inputs)
    assert len(got) == len(want) == 4  # inputs, kernel, recurrent kernel, bias
    for g, w in zip(got, want):
        assert np.abs(w).max() > 0
        np.testing.assert_allclose(g, w, atol=1e-5)
    # Padded steps get no gradient: they do not touch the state.
    np.testing.assert_array_equal(got[0][~mask.numpy()], 0.0)


@pytest.mark.parametrize("cell", recurrent.CELLS)
def test_xla_and_dynamic_length_traces_agree(cell):
    layer, inputs, mask = _case(cell, 2)
    want = _grads(lambda x: _fused(cell, layer, x, mask), layer, inputs)

    def grads(x, m, packed):
        with tf.GradientTape() as tape:
            tape.watch(x)
            state = _fused(cell, layer, x, m, packed=packed)
            loss = tf.reduce_sum(tf.sin(3.0 * state))
        return tape.gradient(loss, [x, *layer.trainable_variables])

    # XLA needs static shapes: the masked form.
    jitted = tf.function(lambda x, m: grads(x, m, False), jit_compile=True)
    signature = [
        tf.TensorSpec([None, None, INPUT]),
        tf.TensorSpec([None, None], tf.bool),
    ]
    for fn in (
        jitted,
        tf.function(lambda x, m: grads(x, m, True), input_signature=signature),
        tf.function(lambda x, m: grads(x, m, False), input_signature=signature),
    ):
        for g, w in zip(fn(inputs, mask), want):
            np.testing.assert_allclose(tf.convert_to_tensor(g).numpy(), w, atol=1e-5)


def test_packed_handles_all_padding_rows_and_full_rows():
    layer, inputs, mask = _case("lstm", 4)
    mask = tf.constant(np.array([[0] * STEPS, [1] * STEPS] * 3, bool))
    inputs = inputs * tf.cast(mask, tf.float32)[:, :, None]
    want = layer(inputs, mask=mask).numpy()
    got = _fused("lstm", layer, inputs, mask).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_array_equal(got[::2], 0.0)  # no step: the zero state
    nothing = tf.zeros_like(mask)
    np.testing.assert_array_equal(_fused("gru", _case("gru")[0], inputs, nothing), 0.0)


@pytest.mark.parametrize("cell", recurrent.CELLS)
def test_bfloat16_matmuls_stay_close(cell):
    layer, inputs, mask = _case(cell, 3)
    want = _fused(cell, layer, inputs, mask).numpy()
    got = _fused(cell, layer, inputs, mask, "bfloat16").numpy()
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=2e-2)
    cosine = (
        (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    )
    assert cosine.min() > 0.999
    want_grads = _grads(lambda x: _fused(cell, layer, x, mask), layer, inputs)
    got_grads = _grads(
        lambda x: _fused(cell, layer, x, mask, "bfloat16"), layer, inputs
    )
    for g, w in zip(got_grads, want_grads):
        assert g.dtype == np.float32
        # bf16 inputs carry 8 significant bits: relative error ~1e-2.
        assert np.abs(g - w).max() <= 3e-2 * np.abs(w).max()


def test_rejects_unknown_dtype_and_cell():
    layer, inputs, mask = _case()
    with pytest.raises(ValueError, match="compute_dtype"):
        _fused("lstm", layer, inputs, mask, "float16")
    with pytest.raises(ValueError, match="cell"):
        _fused("rnn", layer, inputs, mask)


def _masked_mean_of_keras_states(cell, layer, mask):
    """The reference for ``pooling="mean"``: Keras states, averaged over real steps."""
    sequences = LAYERS[cell](UNITS, return_sequences=True)
    sequences.build((None, STEPS, INPUT))
    sequences.set_weights(layer.get_weights())
    weights = tf.cast(mask, tf.float32)[:, :, None]

    def mean(x):
        states = sequences(x, mask=mask)
        return tf.reduce_sum(states * weights, 1) / tf.reduce_sum(weights, 1)

    return sequences, mean


@pytest.mark.parametrize("packed", [True, False])
@pytest.mark.parametrize("cell", recurrent.CELLS)
def test_mean_pooling_matches_keras_states_and_their_gradients(cell, packed):
    layer, inputs, mask = _case(cell, 5)
    sequences, mean = _masked_mean_of_keras_states(cell, layer, mask)

    def fused(x):
        return _fused(cell, layer, x, mask, packed=packed, pooling="mean")

    np.testing.assert_allclose(fused(inputs), mean(inputs), atol=1e-5)
    # A one-step row's mean is its only state: the last state.
    np.testing.assert_allclose(
        fused(inputs)[0], _fused(cell, layer, inputs, mask)[0], atol=1e-6
    )
    want = _grads(mean, sequences, inputs)
    got = _grads(fused, layer, inputs)
    assert len(got) == len(want) == 4
    for g, w in zip(got, want):
        assert np.abs(w).max() > 0
        np.testing.assert_allclose(g, w, atol=1e-5)
    np.testing.assert_array_equal(got[0][~mask.numpy()], 0.0)


def test_mean_pooling_of_an_empty_row_is_zero_and_unknown_pooling_fails():
    layer, inputs, mask = _case("gru", 6)
    mask = tf.constant(np.array([[0] * STEPS, [1] * STEPS] * 3, bool))
    pooled = _fused("gru", layer, inputs, mask, pooling="mean").numpy()
    np.testing.assert_array_equal(pooled[::2], 0.0)
    assert np.isfinite(pooled).all()
    with pytest.raises(ValueError, match="pooling"):
        _fused("gru", layer, inputs, mask, pooling="max")


def test_reverse_padded_reverses_each_rows_real_steps_only():
    values = tf.constant([[1, 2, 3, 0], [4, 5, 0, 0], [6, 7, 8, 9]])
    got = recurrent.reverse_padded(values, values > 0)
    np.testing.assert_array_equal(got, [[3, 2, 1, 0], [5, 4, 0, 0], [9, 8, 7, 6]])
