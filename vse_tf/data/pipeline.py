"""tf.data pipelines that feed the train step.

Every epoch visits each train caption once, paired with its image, in an
order drawn from ``(seed, epoch)`` by a stateless shuffle, so a run that
resumes at epoch ``e`` sees exactly the batches an uninterrupted run sees.
Batches are gathered from in-memory arrays with vectorised ops (no Python
per example) and trimmed to their longest caption.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import numpy as np
import tensorflow as tf

from vse_tf import features as features_lib


def _epoch_indices(num_examples: int, seed: int, epoch: tf.Tensor) -> tf.data.Dataset:
    positions = tf.data.Dataset.range(num_examples)
    return positions.map(
        lambda i: tf.random.experimental.index_shuffle(
            i,
            seed=tf.stack([tf.constant(seed, tf.int64), tf.cast(epoch, tf.int64)]),
            max_index=num_examples - 1,
        ),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )


def train_dataset(
    token_ids: np.ndarray,
    caption_image_index: np.ndarray,
    batch_size: int,
    seed: int,
    first_epoch: int,
    last_epoch: int,
    image_features: Optional[np.ndarray] = None,
    image_paths: Optional[Sequence[str]] = None,
    image_size: int = 224,
) -> tuple[tf.data.Dataset, int]:
    """Batches of caption-image pairs for epochs ``first_epoch..last_epoch-1``.

    Args:
        token_ids: ``int32 [M, L]`` padded caption ids.
        caption_image_index: ``[M]`` image of each caption.
        batch_size: Pairs per batch (the last partial batch of an epoch is
            dropped, as every negative set should be full-size).
        seed: Shuffle seed.
        first_epoch: Epoch to start at (resuming).
        last_epoch: One past the last epoch.
        image_features: ``[N, F]`` cached features (frozen CNN), or
        image_paths: ``[N]`` image files (fine-tuning; decoded per batch).
        image_size: Decode size for ``image_paths``.

    Returns:
        ``(dataset, steps_per_epoch)``. Elements are dicts with
        ``token_ids [B, L_b]``, ``image_ids [B]`` and ``image_features
        [B, F]`` or ``images [B, S, S, 3]``.
    """
    if (image_features is None) == (image_paths is None):
        raise ValueError("give exactly one of image_features and image_paths")
    num_examples = len(token_ids)
    steps = num_examples // batch_size
    if steps == 0:
        raise ValueError(
            f"{num_examples} training captions do not fill one batch of {batch_size}"
        )
    ids = tf.constant(token_ids, tf.int32)
    lengths = tf.constant(np.count_nonzero(token_ids, axis=1), tf.int32)
    owners = tf.constant(caption_image_index, tf.int32)
    feats = None if image_features is None else tf.constant(image_features, tf.float32)
    paths = None if image_paths is None else tf.constant(list(image_paths), tf.string)

    def gather(indices):
        image_ids = tf.gather(owners, indices)
        longest = tf.maximum(tf.reduce_max(tf.gather(lengths, indices)), 1)
        batch = {
            "token_ids": tf.gather(ids, indices)[:, :longest],
            "image_ids": image_ids,
        }
        if feats is not None:
            batch["image_features"] = tf.gather(feats, image_ids)
        else:
            batch["images"] = tf.map_fn(
                lambda p: features_lib.load_image(p, image_size),
                tf.gather(paths, image_ids),
                fn_output_signature=tf.TensorSpec([image_size, image_size, 3]),
            )
        return batch

    def one_epoch(epoch):
        return (
            _epoch_indices(num_examples, seed, epoch)
            .batch(batch_size, drop_remainder=True)
            .map(gather, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        )

    epochs = tf.data.Dataset.range(first_epoch, last_epoch)
    return epochs.flat_map(one_epoch).prefetch(tf.data.AUTOTUNE), steps
