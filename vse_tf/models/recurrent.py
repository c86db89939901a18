"""Fast LSTM and GRU for training: one input projection, hand-written gradient.

`keras.layers.LSTM` / `keras.layers.GRU` on CPU run a generic ``while`` loop
whose body projects the inputs and the state separately at every step, and
autodiff of that loop adds a ``[H, G*H]`` weight-gradient matmul and
accumulation at every step. For training we compute the same functions with
the matmuls laid out the way cuDNN does:

* the input projection of every time step is one ``[T*B, E] x [E, G*H]``
  matmul before the loop (G = 4 gates for the LSTM, 3 for the GRU);
* the forward loop body is one ``[B, H] x [H, G*H]`` matmul plus the gates;
* the backward loop (a `tf.custom_gradient`, not autodiff) only carries the
  state gradient: one ``[B, G*H] x [G*H, H]`` matmul per step; the recurrent
  weight gradient is one ``[H, T*B] x [T*B, G*H]`` matmul after the loop,
  and the input side's gradient is left to autodiff of the big projection;
* the matmuls can run in bfloat16 (state, gates and gradients stay float32),
  the format this CPU's AVX512-BF16 units (and every TPU/GPU) multiply
  fastest.

The weights are those of the Keras layers (LSTM: kernel ``[E, 4H]``,
recurrent kernel ``[H, 4H]``, bias ``[4H]``, gate order i, f, c, o; GRU with
``reset_after=True``: kernel ``[E, 3H]``, recurrent kernel ``[H, 3H]``, bias
``[2, 3H]`` (input, recurrent), gate order z, r, h), so inference and export
keep using the Keras layers and both paths compute the same embedding (tested
to 1e-5 in float32, gradients included).

Masked steps leave the state unchanged (as the Keras layers do with a mask),
so right-padded sequences end on their last real token. By default the
sequences are *packed* (PyTorch's ``pack_padded_sequence``, cuDNN's
variable-length mode): rows are sorted by length and step ``t`` runs only
the rows still going, so padding costs no FLOPs. Packing needs dynamic
shapes; ``packed=False`` runs every row at every step behind a mask, the
form XLA (``jit_compile``) accepts.
"""

from __future__ import annotations

import functools

import keras
import tensorflow as tf

COMPUTE_DTYPES = ("float32", "bfloat16")
CELLS = ("lstm", "gru")


def _compute_dtype(compute_dtype: str) -> tf.DType:
    if compute_dtype not in COMPUTE_DTYPES:
        raise ValueError(f"compute_dtype must be one of {COMPUTE_DTYPES}")
    return tf.as_dtype(compute_dtype)


def _project_inputs(inputs, kernel, bias, dtype):
    """``[B, T, E]`` -> time-major ``float32 [T, B, G*H]`` (one matmul)."""
    inputs = tf.convert_to_tensor(inputs, tf.float32)
    batch = tf.shape(inputs)[0]
    steps = inputs.shape[1] if inputs.shape[1] is not None else tf.shape(inputs)[1]
    time_major = tf.transpose(inputs, [1, 0, 2])
    flat = tf.reshape(time_major, [-1, inputs.shape[-1]])
    projected = tf.matmul(tf.cast(flat, dtype), tf.cast(kernel, dtype))
    projected = tf.cast(projected, tf.float32) + bias
    return tf.reshape(projected, [steps, batch, kernel.shape[-1]])


def _matmul(a, b, dtype):
    """``a @ b`` with ``dtype`` inputs, float32 result (``b`` already cast)."""
    return tf.cast(tf.matmul(tf.cast(a, dtype), b), tf.float32)


class _Schedule:
    """Which rows run at step ``t``: a packed prefix, or all rows behind a mask.

    Packed: rows are sorted by length (longest first), so the rows still
    running at step ``t`` are the first ``active[t]``; ``rows(x, t)`` slices
    them and ``merge(new, old, t)`` writes them back. Masked: every row runs
    and ``merge`` keeps the old value where the mask is False.
    """

    def __init__(self, mask: tf.Tensor, packed: bool):
        mask = tf.convert_to_tensor(mask, tf.bool)
        self.packed = packed
        self.steps = mask.shape[1] if mask.shape[1] is not None else tf.shape(mask)[1]
        self.batch = tf.shape(mask)[0]
        if packed:
            lengths = tf.reduce_sum(tf.cast(mask, tf.int32), axis=1)
            self.order = tf.argsort(lengths, direction="DESCENDING", stable=True)
            sorted_lengths = tf.gather(lengths, self.order)
            # [T]: rows with a real token at step t (a prefix once sorted).
            self.active = tf.reduce_sum(
                tf.cast(
                    sorted_lengths[None, :] > tf.range(self.steps)[:, None], tf.int32
                ),
                axis=1,
            )
            self.loop_steps = tf.reduce_max(tf.concat([lengths, [0]], 0))
        else:
            self.step_mask = tf.transpose(mask)[:, :, None]  # [T, B, 1]
            self.loop_steps = self.steps

    def sort(self, batch_major):
        """``[B, ...]`` -> rows in run order."""
        return tf.gather(batch_major, self.order) if self.packed else batch_major

    def unsort(self, rows):
        """``[B, ...]`` in run order -> input order."""
        if not self.packed:
            return rows
        return tf.gather(rows, tf.math.invert_permutation(self.order))

    def rows(self, x, t):
        """The rows of ``[B, ...]`` that run at step ``t``."""
        return x[: self.active[t]] if self.packed else x

    def grad_rows(self, x, t):
        """Like `rows`, for gradients: masked rows get zeros."""
        if self.packed:
            return x[: self.active[t]]
        return tf.where(self.step_mask[t], x, tf.zeros_like(x))

    def ran(self, t):
        """``float32 [B, 1]``: 1 for the rows (run order) that ran at step ``t``."""
        if self.packed:
            rows = tf.range(self.batch) < self.active[t]
            return tf.cast(rows, tf.float32)[:, None]
        return tf.cast(self.step_mask[t], tf.float32)

    def merge(self, new, old, t):
        """State after step t: ``new`` for rows that ran, ``old`` for the rest."""
        if self.packed:
            merged = tf.concat([new, old[self.active[t] :]], axis=0)
            merged.set_shape(old.shape)
            return merged
        return tf.where(self.step_mask[t], new, old)

    def array(self, dtype):
        """A per-step TensorArray (rows per step vary when packed)."""
        return tf.TensorArray(
            dtype,
            size=self.loop_steps,
            infer_shape=not self.packed,
            clear_after_read=False,  # eager arrays are read, then gathered
        )

    def gather_steps(self, array):
        """Per-step arrays -> ``[R, ...]`` rows (R = real steps when packed)."""
        if self.packed:
            return array.concat()
        stacked = array.stack()
        return tf.reshape(stacked, tf.concat([[-1], tf.shape(stacked)[2:]], 0))

    def forward_from_zeros(self, step, units, num_states, array_dtypes, summed=False):
        """`forward` from ``num_states`` zero ``[B, units]`` states, empty arrays.

        Returns the final carried values; with ``summed`` the first (the
        last ``h``) is replaced by the sum of ``h`` over the steps each row
        ran (`_summing`).
        """
        zeros = tf.zeros([self.batch, units], tf.float32)
        arrays = [self.array(dtype) for dtype in array_dtypes]
        if not summed:
            return self.forward(step, (*[zeros] * num_states, *arrays))
        *final, total = self.forward(
            _summing(step, self), (*[zeros] * num_states, *arrays, zeros)
        )
        return (total, *final[1:])

    def backward_from(self, back_step, d_output, num_states, arrays, summed=False):
        """`backward` from the output's gradient (and zero other states).

        With ``summed`` the output is the sum of the states, so the loop
        starts from a zero ``dh`` and adds ``d_output`` at each step a row
        ran (`_adding`).
        """
        others = [tf.zeros_like(d_output)] * (num_states - 1)
        if not summed:
            return self.backward(back_step, (d_output, *others, *arrays))
        return self.backward(
            _adding(back_step, d_output, self),
            (tf.zeros_like(d_output), *others, *arrays),
        )

    def forward(self, step, carried):
        """Runs ``step(t, *carried)`` for ``t = 0 .. loop_steps - 1``."""
        return self._loop(lambda t, *_: t < self.loop_steps, step, 0, carried)

    def backward(self, step, carried):
        """Runs ``step(t, *carried)`` for ``t = loop_steps - 1 .. 0``."""
        return self._loop(lambda t, *_: t >= 0, step, self.loop_steps - 1, carried)

    def _loop(self, condition, step, first, carried):
        return tf.while_loop(
            condition,
            step,
            (tf.convert_to_tensor(first), *carried),
            maximum_iterations=self.steps,
            # Steps depend on each other anyway; parallel iterations only let
            # two iterations' gradient temporaries collide (TF 2.21).
            parallel_iterations=1,
        )[1:]

    def to_time_major(self, rows, width):
        """`gather_steps` rows -> ``[T, B, width]`` (zeros for padding)."""
        if not self.packed:
            return tf.reshape(rows, [self.steps, self.batch, width])
        starts = tf.range(self.steps) * self.batch
        positions = tf.ragged.range(starts, starts + self.active).flat_values
        flat = tf.scatter_nd(
            positions[:, None], rows, tf.stack([self.steps * self.batch, width])
        )
        return tf.reshape(flat, [self.steps, self.batch, width])


def _weight_gradient(prev_states, gate_grads, dtype):
    """``sum_t h_{t-1}^T @ g_t`` as one matmul: ``[H, R] x [R, G*H]``."""
    grad = tf.matmul(
        tf.cast(prev_states, dtype), tf.cast(gate_grads, dtype), transpose_a=True
    )
    return tf.cast(grad, tf.float32)


def lstm_last_state(
    inputs: tf.Tensor,
    mask: tf.Tensor,
    kernel: tf.Tensor,
    recurrent_kernel: tf.Tensor,
    bias: tf.Tensor,
    compute_dtype: str = "float32",
    packed: bool = True,
    pooling: str = "last",
) -> tf.Tensor:
    """The LSTM's hidden state after each sequence's last unmasked step.

    With ``pooling="mean"``: the mean of its states after each real step.

    Args:
        inputs: ``float32 [B, T, E]`` input vectors.
        mask: ``bool [B, T]``; True for real steps. With ``packed`` the
            sequences must be right-padded (each row's mask a prefix).
        kernel: ``[E, 4H]`` input weights (gates i, f, c, o).
        recurrent_kernel: ``[H, 4H]`` recurrent weights.
        bias: ``[4H]``.
        compute_dtype: ``float32`` or ``bfloat16``: the matmul input dtype
            (state, gates and gradients stay float32).
        packed: Skip padding steps (dynamic shapes); False for XLA.
        pooling: ``last`` or ``mean`` (see `POOLINGS`).

    Returns:
        ``float32 [B, H]``.
    """
    dtype = _compute_dtype(compute_dtype)
    schedule = _Schedule(mask, packed)
    projected = _project_inputs(schedule.sort(inputs), kernel, bias, dtype)
    cell = _LstmCell(recurrent_kernel.shape[0], schedule, dtype)
    state = _recurrence(
        cell,
        projected,
        tf.convert_to_tensor(recurrent_kernel),
        summed=_sums_states(pooling),
    )
    return _pooled(schedule.unsort(state), mask, pooling)


class _LstmCell:
    """The LSTM's forward and backward loop bodies (gates i, f, c, o).

    Forward saves per step the gates, ``c_{t-1}``, ``tanh(c_t)`` and
    ``h_{t-1}`` (in the matmul dtype); backward carries ``dh`` and ``dc``
    and saves the gate pre-activation gradients ``dz`` ``[rows, 4H]``, which
    are both the input projection's and the recurrent matmul's gradient.
    """

    def __init__(self, units: int, schedule: _Schedule, dtype: tf.DType):
        self.units, self.schedule, self.dtype = units, schedule, dtype
        ones = tf.ones([units])
        # tanh(x) = 2 sigmoid(2x) - 1, so one sigmoid covers all four gates.
        self.gate_scale = tf.concat([ones, ones, 2.0 * ones, ones], 0)
        # d sigmoid(s x) / dx = s sigmoid' (and tanh' = 4 sigmoid'(2x) for g).
        self.grad_scale = tf.concat([ones, ones, 4.0 * ones, ones], 0)

    def forward(self, projected, weights, summed=False):
        """`_recurrence`'s forward: ``(h [B, H] pooled, h_{t-1} array, saved)``."""
        step = functools.partial(self._step, projected, weights)
        array_dtypes = (tf.float32, tf.float32, tf.float32, self.dtype)
        output, _, gates_ta, c_prev_ta, tanh_c_ta, h_prev_ta = (
            self.schedule.forward_from_zeros(step, self.units, 2, array_dtypes, summed)
        )
        return output, h_prev_ta, (gates_ta, c_prev_ta, tanh_c_ta)

    def _step(
        self, projected, weights, t, h, c, gates_ta, c_prev_ta, tanh_c_ta, h_prev_ta
    ):
        """Step ``t`` of the forward loop: new ``h, c`` ``[B, H]``, saved values."""
        schedule, dtype = self.schedule, self.dtype
        h_rows, c_rows = schedule.rows(h, t), schedule.rows(c, t)
        z = schedule.rows(projected[t], t) + _matmul(h_rows, weights, dtype)
        gates = tf.sigmoid(z * self.gate_scale)  # i, f, (g + 1) / 2, o
        i, f, g_half, o = tf.split(gates, 4, axis=1)
        new_c = f * c_rows + i * (2.0 * g_half - 1.0)
        tanh_c = tf.tanh(new_c)
        return (
            t + 1,
            schedule.merge(o * tanh_c, h, t),
            schedule.merge(new_c, c, t),
            gates_ta.write(t, gates),
            c_prev_ta.write(t, c_rows),
            tanh_c_ta.write(t, tanh_c),
            h_prev_ta.write(t, tf.cast(h_rows, dtype)),
        )

    def backward(self, d_output, weights_t, saved, summed=False):
        """`_recurrence`'s backward: ``(None, dz array)`` (inputs' grad is dz)."""
        back = functools.partial(self._back_step, weights_t, *saved)
        _, _, dz_ta = self.schedule.backward_from(
            back, d_output, 2, [self.schedule.array(tf.float32)], summed
        )
        return None, dz_ta

    def _back_step(self, weights_t, gates_ta, c_prev_ta, tanh_c_ta, t, dh, dc, dz_ta):
        """Step ``t`` of the backward loop: ``dh, dc`` ``[B, H]`` of step t - 1."""
        schedule = self.schedule
        gates = gates_ta.read(t)
        i, f, g_half, o = tf.split(gates, 4, axis=1)
        tanh_c = tanh_c_ta.read(t)
        dh_rows = schedule.grad_rows(dh, t)
        dc_rows = schedule.grad_rows(dc, t)
        dc_rows = dc_rows + dh_rows * o * (1.0 - tanh_c * tanh_c)
        d_gates = tf.concat(
            [
                dc_rows * (2.0 * g_half - 1.0),
                dc_rows * c_prev_ta.read(t),
                dc_rows * i,
                dh_rows * tanh_c,
            ],
            1,
        )
        dz = d_gates * gates * (1.0 - gates) * self.grad_scale
        # Rows that did not run pass their gradients through.
        dh_next = schedule.merge(_matmul(dz, weights_t, self.dtype), dh, t)
        dc_next = schedule.merge(dc_rows * f, dc, t)
        return t - 1, dh_next, dc_next, dz_ta.write(t, dz)


POOLINGS = ("last", "mean")


def _sums_states(pooling: str) -> bool:
    """Whether `_recurrence` sums the states for ``pooling`` (a mean is a sum first)."""
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    return pooling == "mean"


def _pooled(state, mask, pooling):
    """The sum of states divided by each row's length for ``mean`` (1 if empty)."""
    if pooling == "last":
        return state
    lengths = tf.reduce_sum(tf.cast(mask, tf.float32), axis=1, keepdims=True)
    return state / tf.maximum(lengths, 1.0)


def _summing(step, schedule):
    """Wraps a forward ``step`` to also carry the sum of the states it writes.

    ``step(t, h, *rest)`` returns ``(t + 1, new h, *new rest)``; the wrapped
    step takes and returns one more value, the running ``[B, H]`` sum of
    the states of the rows that ran at each step.
    """

    def wrapped(t, h, *rest_and_sum):
        *rest, total = rest_and_sum
        out = step(t, h, *rest)
        return (*out, total + out[1] * schedule.ran(t))

    return wrapped


def _adding(back_step, d_total, schedule):
    """Wraps a backward step so the rows that ran at ``t`` get ``d_total``.

    The gradient of a sum of states reaches the state of step ``t`` (what
    the backward loop carries as ``dh`` when it enters step ``t``) once per
    step that row ran.
    """

    def wrapped(t, dh, *rest):
        return back_step(t, dh + d_total * schedule.ran(t), *rest)

    return wrapped


def _recurrence(cell, projected, recurrent_kernel, *recurrent_biases, summed=False):
    """Runs ``cell``'s loops under one `tf.custom_gradient`: one ``[B, H]`` state.

    The forward loop runs from the zero state; the gradient runs ``cell``'s
    backward loop, then computes the recurrent kernel's gradient as one
    matmul (`_weight_gradient`) and each recurrent bias's (added to the
    recurrent matmul) as the sum of the matmul output's gradients.

    Args:
        cell: `_LstmCell` or `_GruCell` (holds the schedule and dtype).
        projected: ``float32 [T, B, G*H]`` projected inputs, run order.
        recurrent_kernel: ``[H, G*H]``.
        *recurrent_biases: ``[G*H]`` biases the cell adds to ``h U``.
        summed: False: the state after each row's last real step; True:
            the sum of its states after every real step (the backward loop
            then starts from zero and adds the output's gradient at each
            step the row ran).
    """
    schedule, dtype = cell.schedule, cell.dtype
    width = recurrent_kernel.shape[-1]

    @tf.custom_gradient
    def recurrence(projected, recurrent_kernel, *recurrent_biases):
        weights = tf.cast(recurrent_kernel, dtype)
        output, h_prev_ta, saved = cell.forward(
            projected, weights, *recurrent_biases, summed=summed
        )

        def grad(d_output):
            d_output = tf.convert_to_tensor(d_output)  # may be IndexedSlices
            dx_ta, drec_ta = cell.backward(
                d_output, tf.transpose(weights), saved, summed=summed
            )
            d_rec = schedule.gather_steps(drec_ta)  # [R, G*H]
            d_kernel = _weight_gradient(schedule.gather_steps(h_prev_ta), d_rec, dtype)
            d_x = d_rec if dx_ta is None else schedule.gather_steps(dx_ta)
            return (
                schedule.to_time_major(d_x, width),
                tf.cast(d_kernel, recurrent_kernel.dtype),
                *(
                    tf.cast(tf.reduce_sum(d_rec, axis=0), bias.dtype)
                    for bias in recurrent_biases
                ),
            )

        return output, grad

    return recurrence(projected, recurrent_kernel, *recurrent_biases)


def gru_last_state(
    inputs: tf.Tensor,
    mask: tf.Tensor,
    kernel: tf.Tensor,
    recurrent_kernel: tf.Tensor,
    bias: tf.Tensor,
    compute_dtype: str = "float32",
    packed: bool = True,
    pooling: str = "last",
) -> tf.Tensor:
    """The GRU's (``reset_after=True``) state after each last unmasked step.

    With ``pooling="mean"``: the mean of its states after each real step.

    ``z, r = sigmoid(x W_zr + b_zr + h U_zr + c_zr)``,
    ``n = tanh(x W_n + b_n + r * (h U_n + c_n))``, ``h' = z h + (1 - z) n``
    (`keras.layers.GRU`'s default, the cuDNN form).

    Args:
        inputs: ``float32 [B, T, E]`` input vectors.
        mask: ``bool [B, T]``; True for real steps (right-padded if packed).
        kernel: ``[E, 3H]`` input weights (gates z, r, n).
        recurrent_kernel: ``[H, 3H]`` recurrent weights.
        bias: ``[2, 3H]``: input bias, recurrent bias.
        compute_dtype: ``float32`` or ``bfloat16`` matmul inputs.
        packed: Skip padding steps (dynamic shapes); False for XLA.
        pooling: ``last`` or ``mean`` (see `POOLINGS`).

    Returns:
        ``float32 [B, H]``.
    """
    dtype = _compute_dtype(compute_dtype)
    bias = tf.convert_to_tensor(bias)
    schedule = _Schedule(mask, packed)
    projected = _project_inputs(schedule.sort(inputs), kernel, bias[0], dtype)
    cell = _GruCell(recurrent_kernel.shape[0], schedule, dtype)
    state = _recurrence(
        cell,
        projected,
        tf.convert_to_tensor(recurrent_kernel),
        bias[1],
        summed=_sums_states(pooling),
    )
    return _pooled(schedule.unsort(state), mask, pooling)


class _GruCell:
    """The GRU's (``reset_after=True``) forward and backward loop bodies.

    Forward saves per step ``z, r``, ``n``, ``h U_n + c_n`` and ``h_{t-1}``;
    backward carries ``dh`` and saves the gradients of the gates'
    pre-activations (the input projection's) and of ``h U + c`` (the
    recurrent matmul's), which differ in the ``n`` gate by the reset ``r``.
    """

    def __init__(self, units: int, schedule: _Schedule, dtype: tf.DType):
        self.units, self.schedule, self.dtype = units, schedule, dtype

    def forward(self, projected, weights, recurrent_bias, summed=False):
        """`_recurrence`'s forward: ``(h [B, H] pooled, h_{t-1} array, saved)``."""
        step = functools.partial(self._step, projected, weights, recurrent_bias)
        output, zr_ta, n_ta, hn_ta, h_prev_ta = self.schedule.forward_from_zeros(
            step, self.units, 1, (tf.float32,) * 4, summed
        )
        return output, h_prev_ta, (zr_ta, n_ta, hn_ta, h_prev_ta)

    def _step(
        self, projected, weights, recurrent_bias, t, h, zr_ta, n_ta, hn_ta, h_prev_ta
    ):
        """Step ``t`` of the forward loop: new ``h`` ``[B, H]``, saved values."""
        schedule, units = self.schedule, self.units
        h_rows = schedule.rows(h, t)
        x_zr, x_n = tf.split(schedule.rows(projected[t], t), [2 * units, units], axis=1)
        rec = _matmul(h_rows, weights, self.dtype) + recurrent_bias
        h_zr, h_n = tf.split(rec, [2 * units, units], axis=1)
        zr = tf.sigmoid(x_zr + h_zr)
        z, r = tf.split(zr, 2, axis=1)
        n = tf.tanh(x_n + r * h_n)
        return (
            t + 1,
            schedule.merge(n + z * (h_rows - n), h, t),
            zr_ta.write(t, zr),
            n_ta.write(t, n),
            hn_ta.write(t, h_n),
            h_prev_ta.write(t, h_rows),
        )

    def backward(self, d_output, weights_t, saved, summed=False):
        """`_recurrence`'s backward: ``(d inputs array, d (h U + c) array)``."""
        back = functools.partial(self._back_step, weights_t, *saved)
        arrays = [self.schedule.array(tf.float32) for _ in range(2)]
        _, dx_ta, drec_ta = self.schedule.backward_from(
            back, d_output, 1, arrays, summed
        )
        return dx_ta, drec_ta

    def _back_step(
        self, weights_t, zr_ta, n_ta, hn_ta, h_prev_ta, t, dh, dx_ta, drec_ta
    ):
        """Step ``t`` of the backward loop: ``dh`` ``[B, H]`` of step t - 1."""
        schedule = self.schedule
        zr = zr_ta.read(t)
        z, r = tf.split(zr, 2, axis=1)
        n = n_ta.read(t)
        dh_rows = schedule.grad_rows(dh, t)
        dn_pre = dh_rows * (1.0 - z) * (1.0 - n * n)
        dr = dn_pre * hn_ta.read(t)
        d_zr = tf.concat([dh_rows * (h_prev_ta.read(t) - n), dr], 1)
        d_zr = d_zr * zr * (1.0 - zr)
        d_rec = tf.concat([d_zr, dn_pre * r], 1)
        dh_prev = dh_rows * z + _matmul(d_rec, weights_t, self.dtype)
        return (
            t - 1,
            schedule.merge(dh_prev, dh, t),
            dx_ta.write(t, tf.concat([d_zr, dn_pre], 1)),
            drec_ta.write(t, d_rec),
        )


def rnn_last_state(
    cell: str,
    inputs: tf.Tensor,
    mask: tf.Tensor,
    kernel: tf.Tensor,
    recurrent_kernel: tf.Tensor,
    bias: tf.Tensor,
    compute_dtype: str = "float32",
    packed: bool = True,
    pooling: str = "last",
) -> tf.Tensor:
    """`lstm_last_state` or `gru_last_state` by ``cell`` name (see `CELLS`)."""
    if cell not in CELLS:
        raise ValueError(f"cell must be one of {CELLS}, got {cell!r}")
    run = lstm_last_state if cell == "lstm" else gru_last_state
    return run(
        inputs, mask, kernel, recurrent_kernel, bias, compute_dtype, packed, pooling
    )


def reverse_padded(inputs, mask):
    """Each row's real steps in reverse order, still right-padded.

    The input of a bidirectional recurrence's backward direction: its last
    state has read the sentence from its last word to its first. Written
    with `keras.ops`, so a functional Keras model (the TFLite export) can
    hold it.

    Args:
        inputs: ``[B, T]`` or ``[B, T, E]``.
        mask: ``bool [B, T]``, each row's a prefix.

    Returns:
        ``inputs``' shape and dtype.
    """
    ops = keras.ops
    lengths = ops.sum(ops.cast(mask, "int32"), axis=1, keepdims=True)  # [B, 1]
    steps = ops.expand_dims(ops.arange(ops.shape(mask)[1], dtype="int32"), 0)
    reversed_steps = ops.subtract(ops.subtract(lengths, 1), steps)
    source = ops.where(ops.less(steps, lengths), reversed_steps, steps)  # [B, T]
    if len(inputs.shape) == 3:
        source = ops.expand_dims(source, -1)
    return ops.take_along_axis(inputs, source, axis=1)
