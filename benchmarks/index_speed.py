"""Indexing speed: ``vse-index`` versus a plain Keras VGG16 predict loop.

Target: images/s of :func:`vse_tf.retrieval.index_lib.build_image_index`
(what ``vse-index`` runs) >= images/s of a plain
``keras.applications.VGG16(...).predict`` loop on the same images, at the same
precision (float32) and batch size.

* **index**: ``build_image_index(model, images, tmpdir, dtype="float32")``,
  i.e. files read by tf.data, bytes sent to the SavedModel's ``encode_image``
  signature (decode + resize + VGG16 + embedding head in-graph), shards
  written, embeddings consolidated.
* **keras predict**: the same files read, decoded and resized to the model's
  input size S by a plain Python loop (``tf.io.read_file`` +
  ``tf.io.decode_image`` + ``tf.image.resize``, batch by batch), then
  ``keras.applications.VGG16(include_top=False, weights=None,
  input_shape=(S, S, 3), pooling="avg").predict`` in batches of the same
  size. It has no embedding head, writes nothing and skips nothing, so it
  does strictly less work than the indexer.

Both are run ``--repeats`` times, alternating (the machine may be shared), and
the best time of each is kept. Prints a table, then ONE line of JSON (last
line) with ``index_images_per_s``, ``keras_predict_images_per_s`` and
``index_vs_keras_predict`` (target >= 1).

Usage:
    python -m benchmarks.index_speed --model=/work/runs/models_demo/1 \\
        --images=/tmp/test_images.txt
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf
from absl import app, flags

from vse_tf.retrieval import encoders as index_encoders
from vse_tf.retrieval import index_build
from vse_tf.retrieval import inputs as index_inputs

_MODEL = flags.DEFINE_string("model", None, "Exported SavedModel version folder.")
_IMAGES = flags.DEFINE_string("images", None, "Image folder or list file.")
_LIMIT = flags.DEFINE_integer("limit", None, "Use only the first N images.")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Images per batch (both methods).")
_REPEATS = flags.DEFINE_integer("repeats", 2, "Alternating runs of each method.")
_SIZE = flags.DEFINE_integer(
    "image_size", None, "Input size S (default: read from the SavedModel)."
)


def model_image_size(encoder: index_encoders.SavedModelEncoder) -> int:
    """The input size S of the SavedModel's image tower (from a signature)."""
    signatures = encoder._model.signatures  # noqa: SLF001 (benchmark only)
    # encode_image decodes to [S, S, 3] before the backbone: find S from a
    # probe through encode_image_pixels' resize, or from the graph constants.
    fn = signatures["encode_image"]
    for op in fn.graph.get_operations():
        if op.type == "EnsureShape":
            shape = op.get_attr("shape")
            dims = [d.size for d in shape.dim]
            if len(dims) == 3 and dims[0] == dims[1] and dims[2] == 3:
                return int(dims[0])
    for fn_def in fn.graph.as_graph_def().library.function:
        for node in fn_def.node_def:
            if node.op == "EnsureShape":
                dims = [d.size for d in node.attr["shape"].shape.dim]
                if len(dims) == 3 and dims[0] == dims[1] and dims[2] == 3:
                    return int(dims[0])
    raise ValueError("cannot find the image size; pass --image_size")


def keras_predict_loop(model: keras.Model, paths: list[str], size: int, batch: int):
    """The baseline: decode + resize in Python, then ``model.predict``."""
    outputs = []
    for start in range(0, len(paths), batch):
        images = []
        for path in paths[start : start + batch]:
            image = tf.io.decode_image(
                tf.io.read_file(path), channels=3, expand_animations=False
            )
            image = tf.cast(image, tf.float32)
            images.append(tf.image.resize(image, [size, size], antialias=True))
        pixels = tf.stack(images)
        outputs.append(model.predict(pixels, batch_size=batch, verbose=0))
    return np.concatenate(outputs)


def main(argv):
    del argv
    if not _MODEL.value or not _IMAGES.value:
        raise app.UsageError("--model and --images are required")
    paths = index_inputs.list_images(_IMAGES.value)
    if _LIMIT.value:
        paths = paths[: _LIMIT.value]
    batch = _BATCH.value
    encoder = index_encoders.SavedModelEncoder(_MODEL.value)
    size = _SIZE.value or model_image_size(encoder)
    print(
        f"{len(paths)} images, input {size}x{size}, batch {batch}, float32, "
        f"{_REPEATS.value} alternating runs (best kept); "
        f"tf threads intra={tf.config.threading.get_intra_op_parallelism_threads()} "
        f"inter={tf.config.threading.get_inter_op_parallelism_threads()}, "
        f"{os.cpu_count()} CPUs"
    )
    vgg = keras.applications.VGG16(
        include_top=False, weights=None, input_shape=(size, size, 3), pooling="avg"
    )
    # Warm-up of both (tracing, first-call allocations) on one batch.
    keras_predict_loop(vgg, paths[:batch], size, batch)
    tmp = tempfile.mkdtemp(prefix="index-speed-")
    try:
        index_build.build_image_index(
            None, paths[:batch], os.path.join(tmp, "warm"), dtype="float32",
            batch_size=batch, encoder=encoder, verbose=0,
        )  # fmt: skip
        index_times, keras_times = [], []
        for run in range(_REPEATS.value):
            out = os.path.join(tmp, f"run{run}")
            t0 = time.perf_counter()
            index = index_build.build_image_index(
                None, paths, out, dtype="float32", batch_size=batch,
                encoder=encoder, verbose=0,
            )  # fmt: skip
            index_times.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            features = keras_predict_loop(vgg, paths, size, batch)
            keras_times.append(time.perf_counter() - t0)
            print(
                f"  run {run}: index {index_times[-1]:.2f}s "
                f"({len(index)} indexed, {index.manifest['num_skipped']} skipped), "
                f"keras predict {keras_times[-1]:.2f}s ({len(features)} images)"
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    index_ips = len(paths) / min(index_times)
    keras_ips = len(paths) / min(keras_times)
    print(f"\n{'method':<44}{'best s':>10}{'images/s':>12}")
    print(f"{'vse-index (build_image_index, float32)':<44}"
          f"{min(index_times):>10.2f}{index_ips:>12.2f}")  # fmt: skip
    print(f"{'keras VGG16.predict loop (float32)':<44}"
          f"{min(keras_times):>10.2f}{keras_ips:>12.2f}")  # fmt: skip
    print(f"index / keras predict: {index_ips / keras_ips:.3f}x (target >= 1)")
    result = {
        "num_images": len(paths),
        "image_size": size,
        "batch_size": batch,
        "index_images_per_s": round(index_ips, 3),
        "keras_predict_images_per_s": round(keras_ips, 3),
        "index_vs_keras_predict": round(index_ips / keras_ips, 3),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    app.run(main)
