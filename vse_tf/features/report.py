"""What an extraction returns: the features, and each image it had to skip and why."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from vse_tf import images as images_lib
from vse_tf.features import cache as cache_lib


@dataclasses.dataclass(frozen=True)
class SkippedImage:
    """An image left out of extraction.

    Attributes:
        index: Its position in the requested ``paths``.
        path: Its absolute path.
        reason: Why, e.g. ``No such file or directory``, ``Input is empty``.
    """

    index: int
    path: str
    reason: str


@dataclasses.dataclass
class FeatureReport:
    """Features of an image list and what happened to each image.

    Attributes:
        features: ``float32 [N, F]`` in ``paths`` order; rows of skipped
            images are zero.
        valid: ``bool [N]``: False for skipped images.
        skipped: The skipped images, by index.
        cache_folder: The cache folder (holds ``manifest.json``).
        used_dtype: ``float32`` or ``mixed_bfloat16`` (what computed them).
        shards_reused: Shards read from the cache (checksum verified).
        shards_computed: Shards computed by this call.
    """

    features: np.ndarray
    valid: np.ndarray
    skipped: list[SkippedImage]
    cache_folder: str
    used_dtype: str
    shards_reused: int
    shards_computed: int

    @property
    def num_skipped(self) -> int:
        return len(self.skipped)

    @property
    def manifest_path(self) -> str:
        return os.path.join(self.cache_folder, cache_lib.MANIFEST_FILE)

    def valid_indices(self) -> np.ndarray:
        """``int64 [N_ok]``: indices of the images that have features."""
        return np.flatnonzero(self.valid)


def failure_reason(path: str, image_size: int) -> str:
    """Why the pipeline dropped an image: by content first, else by decoding it."""
    reason = images_lib.unreadable_reason(path)
    if reason is not None:
        return reason
    try:
        images_lib.load_image(tf.constant(path), image_size)
    except Exception as error:  # any error of one image must not stop the run
        return images_lib.error_message(error)
    return "dropped by the input pipeline (decodes on retry)"


def unreadable_images(paths: Sequence[str], image_size: int) -> list[SkippedImage]:
    """The images of ``paths`` that cannot be read and decoded, with reasons.

    What fine-tuning (which decodes images every epoch, no feature cache)
    checks before training, so a corrupt file never stops an epoch.
    Decodes in parallel with tf.data; ``ignore_errors`` drops the failures
    and their indices are the ones missing from the output.
    """
    indexed = tf.data.Dataset.from_tensor_slices(
        (tf.range(len(paths), dtype=tf.int64), tf.constant(list(paths), tf.string))
    )
    decoded = indexed.map(
        # (a reduction, not the shape: the static shape would let the
        # optimiser drop the decode)
        lambda i, p: (i, tf.reduce_sum(images_lib.load_image(p, image_size))),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    ).ignore_errors()
    seen = np.zeros(len(paths), bool)
    for index, _ in decoded.as_numpy_iterator():
        seen[index] = True
    return [
        SkippedImage(int(i), paths[i], failure_reason(paths[i], image_size))
        for i in np.flatnonzero(~seen)
    ]
