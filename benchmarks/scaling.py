"""Train-step scaling over replicas, and the cost of the embedding all-gather.

Runs the cached-feature train step (`VSEModel.train_step`, fused LSTM,
length-bucketed batches) under ``one_device`` and under ``mirrored`` with
the CPU split into 2 logical devices, each in its own process (logical
devices must be set before TensorFlow starts), with the same global batch.
Also times, under ``mirrored``, the all-gather of one step's embeddings and
image ids on its own (``strategy.run`` of the gathers alone), as the
per-step overhead all-gathering adds.

On a 2-core CPU the two "replicas" share the same cores, so this shows the
overhead of the machinery, not a speed-up; on N GPUs or workers each
replica has its own device.

Prints a table and ends with one line of JSON (``pairs_per_s_1``,
``pairs_per_s_2``, ``all_gather_ms``, ``step_ms_2``, ...).

Usage:
    python -m benchmarks.scaling [--steps=8] [--dim=1024] [--word_dim=300]
"""

from __future__ import annotations

import json
import subprocess
import sys

from absl import app, flags

_STEPS = flags.DEFINE_integer("steps", 8, "Timed steps per run.")
_DIM = flags.DEFINE_integer("dim", 1024, "D and LSTM size.")
_WORD_DIM = flags.DEFINE_integer("word_dim", 300, "Word vector size.")
_BATCH = flags.DEFINE_integer("batch", 128, "Global batch.")

_CHILD = """
import json, sys, time
replicas, steps, dim, word_dim, batch = map(int, sys.argv[1:6])
from vse_tf import distribute
if replicas > 1:
    distribute.split_cpu(replicas)
import keras, numpy as np, tensorflow as tf
from vse_tf import text as text_lib
from vse_tf.data import pipeline
from vse_tf.models.image_tower import ImageTower
from vse_tf.models.text_tower import LSTMTextTower
from vse_tf.models.vse_model import VSEModel

strategy = distribute.get_strategy("mirrored" if replicas > 1 else "one_device")
rng = np.random.default_rng(0)
count = batch * 64
vocabulary = text_lib.Vocabulary([f"w{i}" for i in range(2000)]).tokens
lengths = np.clip(np.round(rng.gamma(6.0, 2.0, count)), 3, 30).astype(int)
ids = np.zeros([count, 30], np.int32)
for row, n in enumerate(lengths):
    ids[row, :n] = rng.integers(2, len(vocabulary), n)
owners = np.arange(count) // 5
feats = rng.random((owners.max() + 1, 512), dtype=np.float32)
with strategy.scope():
    keras.utils.set_random_seed(0)
    model = VSEModel(
        ImageTower(embed_dim=dim, include_backbone=False),
        LSTMTextTower(vocabulary, embed_dim=dim, word_dim=word_dim, max_length=30),
        grad_clip_norm=2.0,
        text_compute_dtype="bfloat16",
    )
    model.compile(optimizer=keras.optimizers.Adam(2e-4))
    model.optimizer.build(model.trainable_variables)
data, _ = pipeline.train_dataset(
    ids, owners, batch, 0, 0, 100, image_features=feats, bucket_by_length=True
)


class Timer(keras.callbacks.Callback):
    def on_train_batch_end(self, index, logs=None):
        if index == 2:
            self.start = time.perf_counter()

    def on_train_end(self, logs=None):
        self.end = time.perf_counter()


model.fit(data, steps_per_epoch=4, epochs=1, verbose=0)  # trace, warm up
timer = Timer()
model.fit(data, steps_per_epoch=steps + 3, epochs=1, verbose=0, callbacks=[timer])
step_s = (timer.end - timer.start) / steps
gather_ms = 0.0
if replicas > 1:
    local = batch // replicas
    emb = tf.random.normal([local, dim])
    image_ids = tf.range(local)

    @tf.function
    def gathers():
        def fn():
            ctx = tf.distribute.get_replica_context()
            return (
                ctx.all_gather(tf.identity(emb), 0),
                ctx.all_gather(tf.identity(emb), 0),
                ctx.all_gather(tf.identity(image_ids), 0),
            )
        return strategy.run(fn)

    gathers()
    start = time.perf_counter()
    for _ in range(50):
        out = gathers()
    strategy.experimental_local_results(out[0])[0].numpy()
    gather_ms = (time.perf_counter() - start) / 50 * 1000
print(json.dumps({"step_s": step_s, "gather_ms": gather_ms}))
"""


def _measure(replicas: int) -> dict:
    args = [str(v) for v in (replicas, _STEPS.value, _DIM.value, _WORD_DIM.value)]
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, *args, str(_BATCH.value)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv):
    del argv
    one = _measure(1)
    two = _measure(2)
    batch = _BATCH.value
    rows = [
        ("one_device", 1, one["step_s"], 0.0),
        ("mirrored", 2, two["step_s"], two["gather_ms"]),
    ]
    print(
        f"global batch {batch}, D={_DIM.value}, word dim {_WORD_DIM.value}, bf16 LSTM"
    )
    print(
        f"{'strategy':12s} {'replicas':>8s} {'ms/step':>8s} {'pairs/s':>8s} "
        f"{'all-gather ms':>14s}"
    )
    for name, replicas, step_s, gather_ms in rows:
        print(
            f"{name:12s} {replicas:8d} {1000 * step_s:8.0f} {batch / step_s:8.1f} "
            f"{gather_ms:14.2f}"
        )
    share = two["gather_ms"] / (1000 * two["step_s"])
    print(f"all-gather: {100 * share:.1f}% of a 2-replica step")
    print(
        json.dumps(
            {
                "pairs_per_s_1": round(batch / one["step_s"], 1),
                "pairs_per_s_2": round(batch / two["step_s"], 1),
                "step_ms_1": round(1000 * one["step_s"], 1),
                "step_ms_2": round(1000 * two["step_s"], 1),
                "all_gather_ms": round(two["gather_ms"], 2),
                "all_gather_share": round(share, 4),
                "batch": batch,
                "dim": _DIM.value,
            }
        )
    )


if __name__ == "__main__":
    app.run(main)
