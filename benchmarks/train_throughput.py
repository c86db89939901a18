"""Caption-image pairs per second of the cached-feature train step.

Paper settings (VSE++ sizes): D = LSTM (or GRU) = 1024, word dim 300
(frozen word vectors; ``--train_word_embeddings`` trains them, as VSE++
does), batch 128, 512-d image features (VGG16 pool5), captions up to 30
tokens. Caption lengths follow Flickr8k's train captions when
``../shared/data/flickr8k`` is there (tokenised as vse_tf does), else a
fixed synthetic distribution with the same mean.

Measured in one run, interleaved (A B C ... A B C ...) so machine noise
hits every variant alike:

* ``baseline``: the naive way: a plain Python loop of eager steps with
  `keras.layers.LSTM`, fed by a per-example ``tf.py_function`` input that
  pads each caption to 30 tokens.
* ``float32``: vse_tf's train step (`VSEModel.train_step` through
  ``model.fit``): length-bucketed batches from `vse_tf.data.pipeline`,
  the fused LSTM (`vse_tf.models.recurrent`).
* ``bf16``: the same with ``text_compute_dtype="bfloat16"``.
* ``gru_bf16``: ``bf16`` with a GRU text tower (``rnn="gru"``, VSE++'s
  recurrent layer: 3 gate blocks instead of 4).
* ``xla``: the same with ``jit_compile_text=True``.
* ``no_buckets``: float32 without length bucketing (batches padded to their
  longest caption, as VSE++ does).

FLOPs per step are counted from the shapes (recurrent forward, and backward
with the input gradient only when word vectors are trained; the image head;
the score matrix) over the steps actually run (each caption's own length
for the packed recurrence, the batch's padded length for XLA's masked
one and the baseline), and divided by the step time; ``fraction_of_peak``
compares that with a large matmul of the same precision timed in the same
run.

Prints a table and ends with one line of JSON holding every figure
(``pairs_per_s_f32``, ``pairs_per_s_bf16``, ``pairs_per_s_xla``,
``pairs_per_s_baseline``, ``speedup_vs_baseline``, ``fraction_of_peak``...).

Usage:
    python -m benchmarks.train_throughput [--steps=12] [--rounds=2]
        [--variants=bf16,gru_bf16] [--train_word_embeddings]
"""

from __future__ import annotations

import functools
import json
import os
import time

import keras
import numpy as np
import tensorflow as tf
from absl import app, flags

from vse_tf import text as text_lib
from vse_tf.data import pipeline, readers
from vse_tf.models.image_tower import ImageTower
from vse_tf.models.text_tower import LSTMTextTower
from vse_tf.models.vse_model import VSEModel

_STEPS = flags.DEFINE_integer("steps", 12, "Timed steps per variant per round.")
_ROUNDS = flags.DEFINE_integer("rounds", 2, "Interleaved rounds (best is kept).")
_BASELINE_STEPS = flags.DEFINE_integer("baseline_steps", 3, "Timed baseline steps.")
_VARIANTS = flags.DEFINE_list(
    "variants",
    ["float32", "bf16", "gru_bf16", "xla", "no_buckets"],
    "vse_tf variants to time.",
)
_TRAIN_WORDS = flags.DEFINE_bool(
    "train_word_embeddings", False, "Train the word vectors (VSE++ does)."
)

BATCH, DIM, WORD_DIM, FEATURE_DIM, MAX_LENGTH, VOCAB = 128, 1024, 300, 512, 30, 3000
FLICKR8K = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    "..",
    "shared",
    "data",
    "flickr8k",
)


def caption_lengths(count: int, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """``[count]`` caption lengths (tokens, capped at 30) and where they came from."""
    try:
        split = readers.read_split("flickr8k", FLICKR8K, "train")
        lengths = np.array(
            [min(len(text_lib.split_words(c)), MAX_LENGTH) for c in split.captions]
        )
        source = f"Flickr8k train captions (mean {lengths.mean():.1f} tokens)"
    except (FileNotFoundError, readers.DataError, OSError):
        lengths = np.clip(np.round(rng.gamma(6.0, 2.0, 30000)), 3, MAX_LENGTH)
        source = f"synthetic (gamma, mean {lengths.mean():.1f} tokens)"
    return rng.choice(lengths, count).astype(np.int64), source


def step_flops(
    run_lengths: np.ndarray, gate_blocks: int = 4, input_gradient: bool = False
) -> float:
    """FLOPs of one train step whose rows run ``run_lengths`` [B] steps.

    Args:
        run_lengths: ``[B]`` recurrent steps run per caption (its length
            when packed, the batch's padded length when masked).
        gate_blocks: 4 (LSTM) or 3 (GRU).
        input_gradient: Whether the word vectors get a gradient.
    """
    tokens = float(np.sum(run_lengths))
    gates = gate_blocks * DIM
    forward = 2 * tokens * (WORD_DIM + DIM) * gates
    # Backward: kernel and recurrent-kernel gradients, the state gradient
    # and, with trained word vectors, the input gradient.
    backward = 2 * tokens * gates * (WORD_DIM + DIM + DIM)
    if input_gradient:
        backward += 2 * tokens * gates * WORD_DIM
    head = 3 * 2 * BATCH * FEATURE_DIM * DIM
    scores = 3 * 2 * BATCH * BATCH * DIM
    return forward + backward + head + scores


def matmul_peak(dtype: tf.DType, size: int = 2048, repeats: int = 5) -> float:
    """Best GFLOP/s of a ``[size, size]^2`` matmul in ``dtype``."""
    a = tf.cast(tf.random.normal([size, size]), dtype)
    b = tf.cast(tf.random.normal([size, size]), dtype)
    run = tf.function(lambda x, y: tf.matmul(x, y))
    run(a, b).numpy()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run(a, b).numpy()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


@functools.cache
def _vocabulary() -> list[str]:
    return text_lib.Vocabulary([f"w{i}" for i in range(VOCAB - 4)]).tokens


def _model(rnn: str = "lstm", **options) -> VSEModel:
    keras.utils.set_random_seed(0)
    image_tower = ImageTower(
        embed_dim=DIM, include_backbone=False, image_feature="pool5"
    )
    vocabulary = _vocabulary()
    text_tower = LSTMTextTower(
        vocabulary,
        embed_dim=DIM,
        word_dim=WORD_DIM,
        max_length=MAX_LENGTH,
        train_word_embeddings=_TRAIN_WORDS.value,
        rnn=rnn,
    )
    model = VSEModel(image_tower, text_tower, grad_clip_norm=2.0, **options)
    model.compile(optimizer=keras.optimizers.Adam(2e-4))
    return model


class _StepTimer(keras.callbacks.Callback):
    def __init__(self, warmup: int):
        super().__init__()
        self.warmup = warmup
        self.start = None

    def on_train_batch_end(self, batch, logs=None):
        if batch + 1 == self.warmup:
            self.start = time.perf_counter()

    def on_train_end(self, logs=None):
        self.end = time.perf_counter()


class Variant:
    """One vse_tf configuration, its data stream and its timer."""

    def __init__(self, name, token_ids, owners, features, bucket, **options):
        self.name = name
        self.gate_blocks = 3 if options.get("rnn") == "gru" else 4
        # XLA runs the masked recurrence: every row runs every padded step.
        self.packed = not options.get("jit_compile_text", False)
        self.model = _model(**options)
        self.dataset, _ = pipeline.train_dataset(
            token_ids,
            owners,
            BATCH,
            seed=0,
            first_epoch=0,
            last_epoch=1000,
            image_features=features,
            bucket_by_length=bucket,
        )
        self.iterator = iter(self.dataset)
        self.lengths = []
        self.best = 0.0
        self.flops = 0.0

    def run(self, steps: int, warmup: int) -> float:
        batches = [next(self.iterator) for _ in range(steps + warmup)]
        lengths = []
        for batch in batches[warmup:]:
            ids = batch["token_ids"].numpy()
            lengths.append(
                np.count_nonzero(ids, axis=1)
                if self.packed
                else np.full(len(ids), ids.shape[1])
            )
        data = tf.data.Dataset.from_tensor_slices([0]).flat_map(
            lambda _: tf.data.Dataset.from_generator(
                lambda: iter(batches),
                output_signature=self.dataset.element_spec,
            )
        )
        timer = _StepTimer(warmup)
        self.model.fit(
            data, steps_per_epoch=steps + warmup, epochs=1, verbose=0, callbacks=[timer]
        )
        seconds = timer.end - timer.start
        pairs_per_s = steps * BATCH / seconds
        if pairs_per_s > self.best:
            self.best = pairs_per_s
            self.flops = (
                sum(
                    step_flops(n, self.gate_blocks, _TRAIN_WORDS.value) for n in lengths
                )
                / seconds
            )
        self.lengths.extend(float(np.mean(n)) for n in lengths)
        return pairs_per_s


def baseline_pairs_per_s(token_ids, owners, features, steps: int) -> float:
    """The naive loop: eager steps, Keras LSTM, per-example py_function input."""
    keras.utils.set_random_seed(0)
    embedding = tf.Variable(
        np.random.default_rng(0).normal(0, 0.1, (len(_vocabulary()), WORD_DIM)),
        dtype=tf.float32,
        trainable=_TRAIN_WORDS.value,
    )
    lstm = keras.layers.LSTM(DIM)
    lstm.build((None, MAX_LENGTH, WORD_DIM))
    head = keras.layers.Dense(DIM)
    head.build((None, FEATURE_DIM))
    variables = lstm.trainable_variables + head.trainable_variables
    if _TRAIN_WORDS.value:
        variables.append(embedding)
    optimizer = keras.optimizers.Adam(2e-4)
    optimizer.build(variables)

    def example(index):
        i = int(index.numpy())
        ids = np.zeros(MAX_LENGTH, np.int32)
        ids[: np.count_nonzero(token_ids[i])] = token_ids[i][token_ids[i] > 0]
        return ids, features[owners[i]].astype(np.float32)

    data = (
        tf.data.Dataset.range(len(token_ids))
        .map(lambda i: tf.py_function(example, [i], [tf.int32, tf.float32]))
        .batch(BATCH)
    )
    times = []
    for step, (ids, feats) in enumerate(data.take(steps + 1)):
        start = time.perf_counter()
        with tf.GradientTape() as tape:
            words = tf.gather(embedding, ids)
            text = tf.math.l2_normalize(lstm(words, mask=ids > 0), 1)
            image = tf.math.l2_normalize(head(feats), 1)
            scores = tf.matmul(image, text, transpose_b=True)
            positives = tf.linalg.diag_part(scores)
            off = 1.0 - tf.eye(BATCH)
            loss = tf.reduce_sum(tf.nn.relu(0.2 - positives[:, None] + scores) * off)
            loss += tf.reduce_sum(tf.nn.relu(0.2 - positives[None, :] + scores) * off)
        grads = tape.gradient(loss, variables)
        grads, _ = tf.clip_by_global_norm(grads, 2.0)
        optimizer.apply_gradients(zip(grads, variables))
        if step:  # the first step builds and warms up
            times.append(time.perf_counter() - start)
    # Input time counts too: the loop waits for each batch.
    return BATCH / float(np.mean(times))


def main(argv):
    del argv
    rng = np.random.default_rng(0)
    count = BATCH * 200
    lengths, source = caption_lengths(count, rng)
    token_ids = np.zeros([count, MAX_LENGTH], np.int32)
    for row, n in enumerate(lengths):
        token_ids[row, :n] = rng.integers(2, len(_vocabulary()), n)
    owners = np.arange(count) // 5
    features = rng.random((owners.max() + 1, FEATURE_DIM), dtype=np.float32)
    print(f"TensorFlow {tf.__version__}, {os.cpu_count()} CPUs; captions: {source}")

    options = {
        "float32": dict(bucket=True),
        "bf16": dict(bucket=True, text_compute_dtype="bfloat16"),
        "gru_bf16": dict(bucket=True, text_compute_dtype="bfloat16", rnn="gru"),
        "xla": dict(bucket=True, jit_compile_text=True),
        "no_buckets": dict(bucket=False),
    }
    variants = [
        Variant(name, token_ids, owners, features, **options[name])
        for name in _VARIANTS.value
    ]
    for variant in variants:  # trace and warm every variant first
        variant.run(steps=4, warmup=2)
    peaks = {}
    for round_index in range(_ROUNDS.value):
        for variant in variants:
            rate = variant.run(_STEPS.value, warmup=1)
            print(f"round {round_index + 1}: {variant.name:10s} {rate:7.1f} pairs/s")
        peaks.setdefault("float32", []).append(matmul_peak(tf.float32))
        peaks.setdefault("bfloat16", []).append(matmul_peak(tf.bfloat16))
    baseline = baseline_pairs_per_s(token_ids, owners, features, _BASELINE_STEPS.value)
    peak = {dtype: max(values) for dtype, values in peaks.items()}

    print()
    header = ("variant", "pairs/s", "GFLOP/s", "of peak", "steps/row")
    print("{:12s} {:>8s} {:>8s} {:>8s} {:>7s}".format(*header))
    results = {}
    for variant in variants:
        dtype = "bfloat16" if "bf16" in variant.name else "float32"
        fraction = variant.flops / 1e9 / peak[dtype]
        results[variant.name] = (variant.best, variant.flops / 1e9, fraction)
        print(
            f"{variant.name:12s} {variant.best:8.1f} {variant.flops / 1e9:8.1f} "
            f"{100 * fraction:7.1f}% {np.mean(variant.lengths):7.1f}"
        )
    print(f"{'baseline':12s} {baseline:8.1f}   (eager loop, py_function input, T=30)")
    print(
        f"matmul peak (2048^3, best of {_ROUNDS.value} samples): float32 "
        f"{peak['float32']:.0f} GFLOP/s, bfloat16 {peak['bfloat16']:.0f} GFLOP/s"
    )
    best_name = max(results, key=lambda name: results[name][0])
    summary = {
        "pairs_per_s_f32": round(results["float32"][0], 1)
        if "float32" in results
        else None,
        "pairs_per_s_bf16": round(results["bf16"][0], 1) if "bf16" in results else None,
        "pairs_per_s_gru_bf16": round(results["gru_bf16"][0], 1)
        if "gru_bf16" in results
        else None,
        "pairs_per_s_xla": round(results["xla"][0], 1) if "xla" in results else None,
        "pairs_per_s_no_buckets": round(results["no_buckets"][0], 1)
        if "no_buckets" in results
        else None,
        "pairs_per_s_baseline": round(baseline, 1),
        "best_variant": best_name,
        "speedup_vs_baseline": round(results[best_name][0] / baseline, 2),
        "fraction_of_peak": round(results[best_name][2], 3),
        "gflops": {name: round(r[1], 1) for name, r in results.items()},
        "peak_gflops_f32": round(peak["float32"], 1),
        "peak_gflops_bf16": round(peak["bfloat16"], 1),
        "batch": BATCH,
        "dim": DIM,
        "word_dim": WORD_DIM,
        "train_word_embeddings": _TRAIN_WORDS.value,
        "caption_lengths": source,
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    print(
        f"best: {best_name}, {summary['speedup_vs_baseline']}x the baseline, "
        f"{100 * summary['fraction_of_peak']:.0f}% of its matmul peak"
    )
    print(json.dumps(summary))


if __name__ == "__main__":
    app.run(main)
