"""A fast LSTM for training: one input projection, a lean recurrent loop.

`keras.layers.LSTM` on CPU runs a generic ``while`` loop whose body projects
the inputs and the state separately at every step. For training we compute
the same function faster:

* the input projection of every time step is one ``[B*T, E] x [E, 4H]``
  matmul before the loop (large, so near matmul peak);
* the loop body is one ``[B, H] x [H, 4H]`` matmul plus the gates;
* the matmuls can run in bfloat16 (float32 accumulation and state), the
  format this CPU's AVX512-BF16 units (and every TPU/GPU) multiply fastest;
* the whole function can be compiled with XLA (a static trip count).

The weights are those of a `keras.layers.LSTM` (kernel ``[E, 4H]``,
recurrent kernel ``[H, 4H]``, bias ``[4H]``, gate order i, f, c, o, sigmoid
gates and tanh cell), so inference and export keep using the Keras layer and
both paths compute the same embedding (tested to 1e-5 in float32).
"""

from __future__ import annotations

import tensorflow as tf

COMPUTE_DTYPES = ("float32", "bfloat16")


def lstm_last_state(
    inputs: tf.Tensor,
    mask: tf.Tensor,
    kernel: tf.Tensor,
    recurrent_kernel: tf.Tensor,
    bias: tf.Tensor,
    compute_dtype: str = "float32",
) -> tf.Tensor:
    """The LSTM's hidden state after each sequence's last unmasked step.

    Masked steps leave the state unchanged (as `keras.layers.LSTM` does with
    a mask), so right-padded sequences end on their last real token.

    Args:
        inputs: ``float32 [B, T, E]`` input vectors.
        mask: ``bool [B, T]``; True for real steps.
        kernel: ``[E, 4H]`` input weights (gates i, f, c, o).
        recurrent_kernel: ``[H, 4H]`` recurrent weights.
        bias: ``[4H]``.
        compute_dtype: ``float32`` or ``bfloat16``: the matmul input dtype
            (products accumulate in float32; state and gates stay float32).

    Returns:
        ``float32 [B, H]``.
    """
    if compute_dtype not in COMPUTE_DTYPES:
        raise ValueError(f"compute_dtype must be one of {COMPUTE_DTYPES}")
    dtype = tf.as_dtype(compute_dtype)
    inputs = tf.convert_to_tensor(inputs, tf.float32)
    kernel = tf.convert_to_tensor(kernel)
    recurrent_kernel = tf.cast(tf.convert_to_tensor(recurrent_kernel), dtype)
    units = recurrent_kernel.shape[0]
    batch = tf.shape(inputs)[0]
    steps = inputs.shape[1] if inputs.shape[1] is not None else tf.shape(inputs)[1]

    # [T, B, 4H]: every step's input projection, in one matmul.
    time_major = tf.transpose(inputs, [1, 0, 2])
    flat = tf.reshape(time_major, [-1, inputs.shape[-1]])
    projected = tf.matmul(tf.cast(flat, dtype), tf.cast(kernel, dtype))
    projected = tf.cast(projected, tf.float32) + bias
    projected = tf.reshape(projected, [steps, batch, 4 * units])
    step_mask = tf.transpose(tf.convert_to_tensor(mask, tf.bool))[:, :, None]

    def body(t, h, c):
        z = projected[t] + tf.cast(
            tf.matmul(tf.cast(h, dtype), recurrent_kernel), tf.float32
        )
        i, f, g, o = tf.split(z, 4, axis=1)
        new_c = tf.sigmoid(f) * c + tf.sigmoid(i) * tf.tanh(g)
        new_h = tf.sigmoid(o) * tf.tanh(new_c)
        keep = step_mask[t]  # [B, 1]
        return t + 1, tf.where(keep, new_h, h), tf.where(keep, new_c, c)

    zeros = tf.zeros([batch, units], tf.float32)
    _, last_h, _ = tf.while_loop(
        lambda t, h, c: t < steps,
        body,
        (tf.constant(0), zeros, zeros),
        # A static trip count when T is known: XLA needs it, and the
        # gradient's accumulators are then fixed-size.
        maximum_iterations=steps,
        # Steps depend on each other anyway; running iterations in parallel
        # only lets the gradient loop's AddN temporaries of two iterations
        # collide (AlreadyExistsError, TF 2.21).
        parallel_iterations=1,
    )
    return last_h
