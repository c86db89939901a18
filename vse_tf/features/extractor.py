"""Running the frozen CNN over image shards: batches, precision and the bf16 check."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Optional

import keras
import numpy as np
import tensorflow as tf

from vse_tf import images as images_lib
from vse_tf.models import backbone as backbone_lib

BF16_MIN_COSINE = 0.999
FLOAT16_MIN_COSINE = 0.9999
"""Activations are stored as float16 only if every row of the first batch
keeps this cosine to its float32 values (else float32: e.g. values below
float16's range)."""


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    na = np.linalg.norm(a, axis=1)
    nb = np.linalg.norm(b, axis=1)
    return (a * b).sum(1) / np.maximum(na * nb, 1e-12)


def inference_fn(model: keras.Model):
    """``model`` in inference mode as one traced function (shapes relaxed)."""
    return tf.function(lambda x: model(x, training=False), reduce_retracing=True)


def shard_dataset(
    paths: Sequence[str],
    shards: Sequence[tuple[int, int, int]],
    image_size: int,
    batch_size: int,
    flip: bool = False,
) -> tf.data.Dataset:
    """``(shard, indices [B], images [B, S, S, 3])`` batches of the given shards.

    Images are decoded in parallel (and mirrored left-right with ``flip``);
    those that fail to read or decode are dropped (their indices are
    missing). Batches never cross a shard, so a shard's batches are the same
    whichever shards are computed together.
    """
    all_paths = tf.constant(list(paths), tf.string)

    def load(i):
        image = images_lib.load_image(tf.gather(all_paths, i), image_size)
        return i, tf.image.flip_left_right(image) if flip else image

    def one_shard(shard, start, stop):
        images = tf.data.Dataset.range(start, stop).map(
            load,
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
        images = images.ignore_errors(log_warning=False).batch(batch_size)
        return images.map(lambda i, x: (shard, i, x))

    table = np.asarray(shards, np.int64).reshape([-1, 3])
    ds = tf.data.Dataset.from_tensor_slices((table[:, 0], table[:, 1], table[:, 2]))
    return ds.flat_map(one_shard).prefetch(tf.data.AUTOTUNE)


class Extractor:
    """Runs the backbone in the agreed precision; checks bf16 on its first batch.

    With ``cut`` (a ``fine_tune_from`` point) it runs only the part of the
    backbone before that layer (`backbone.split_backbone`) and returns its
    activations flattened, ``[B, h*w*c]`` in ``storage`` (decided on the
    first batch unless given: float16 if it keeps every row within
    `FLOAT16_MIN_COSINE`, else float32); else ``float32 [B, F]`` features.
    """

    def __init__(
        self,
        backbone,
        image_feature,
        image_size,
        weights,
        dtype,
        used_dtype,
        cache_dir,
        cut: str = "",
        storage: Optional[str] = None,
    ):
        self._args = (backbone, image_feature, image_size, weights)
        self._cache_dir = cache_dir
        self._cut = cut
        self.used_dtype = used_dtype or dtype
        self.checked = used_dtype is not None or dtype == "float32"
        self.min_cosine: Optional[float] = None
        self.storage = storage or (None if cut else "float32")
        self.storage_min_cosine: Optional[float] = None
        self._run = self._build(self.used_dtype)

    def _build(self, dtype: str):
        model = backbone_lib.build_backbone(
            *self._args, dtype=dtype, cache_dir=self._cache_dir
        )
        if self._cut:
            model, _ = backbone_lib.split_backbone(model, self._cut, self._args[1])
        return inference_fn(model)

    def _stored(self, out: np.ndarray) -> np.ndarray:
        out = np.asarray(out, np.float32)
        if not self._cut:
            return out
        out = out.reshape([len(out), -1])
        if self.storage is None:
            halves = out.astype(np.float16).astype(np.float32)
            cosine = _cosine(halves, out)
            cosine[np.linalg.norm(out, axis=1) == 0] = 1.0  # zero rows stay zero
            self.storage_min_cosine = float(cosine.min())
            self.storage = "float16"
            if self.storage_min_cosine < FLOAT16_MIN_COSINE:
                logging.warning(
                    "float16 would change the activations (min cosine %.6f < "
                    "%.4f); storing float32",
                    self.storage_min_cosine,
                    FLOAT16_MIN_COSINE,
                )
                self.storage = "float32"
        return out.astype(self.storage)

    def __call__(self, images: tf.Tensor) -> np.ndarray:
        out = self._run(images).numpy()
        if self.checked:
            return self._stored(out)
        self.checked = True
        reference = self._build("float32")
        ref_out = reference(images).numpy()
        out = out.reshape([len(out), -1]).astype(np.float32)
        ref_out = ref_out.reshape([len(ref_out), -1]).astype(np.float32)
        self.min_cosine = float(_cosine(out, ref_out).min())
        logging.info("bf16 vs float32 features: min cosine %.6f", self.min_cosine)
        if self.min_cosine < BF16_MIN_COSINE:
            logging.warning(
                "bf16 features disagree with float32 (min cosine %.5f < %.3f); "
                "extracting in float32",
                self.min_cosine,
                BF16_MIN_COSINE,
            )
            self._run, self.used_dtype, out = reference, "float32", ref_out
        return self._stored(out)
