"""tf.data pipelines that feed the train step.

Every epoch visits each train caption once, paired with its image, in an
order drawn from ``(seed, epoch)`` by a stateless shuffle, so a run that
resumes at epoch ``e`` sees exactly the batches an uninterrupted run sees.
Batches are gathered from in-memory arrays with vectorised ops (no Python
per example) and trimmed to their longest caption. With length bucketing,
the shuffled epoch is cut into windows of `BUCKET_WINDOW` batches, each
window is sorted by caption length (stably, so ties keep the shuffled
order), cut into batches, and the batch order of the epoch is shuffled
again: batches hold captions of similar length, so the LSTM runs few
padding steps, while every batch still draws from a random window.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Optional

import numpy as np
import tensorflow as tf

from vse_tf import images as images_lib

BUCKET_WINDOW = 32
"""Batches per length-sorted window when bucketing."""


def _epoch_batches(
    lengths: tf.Tensor,
    batch_size: int,
    steps: int,
    seed: int,
    epoch: tf.Tensor,
    bucket_by_length: bool,
) -> tf.Tensor:
    """``int64 [steps, batch_size]`` example indices of one epoch's batches."""
    num_examples = int(lengths.shape[0])
    epoch_seed = tf.stack([tf.constant(seed, tf.int64), tf.cast(epoch, tf.int64)])
    order = tf.random.experimental.index_shuffle(
        tf.range(num_examples, dtype=tf.int64),
        seed=epoch_seed,
        max_index=num_examples - 1,
    )[: steps * batch_size]
    if not bucket_by_length:
        return tf.reshape(order, [steps, batch_size])
    window = tf.range(steps * batch_size, dtype=tf.int64) // (
        BUCKET_WINDOW * batch_size
    )
    longest = tf.cast(tf.reduce_max(lengths) + 1, tf.int64)
    key = window * longest + tf.cast(tf.gather(lengths, order), tf.int64)
    order = tf.gather(order, tf.argsort(key, stable=True))
    batches = tf.reshape(order, [steps, batch_size])
    batch_order = tf.random.experimental.index_shuffle(
        tf.range(steps, dtype=tf.int64),
        seed=epoch_seed + tf.constant([0, 1 << 32], tf.int64),
        max_index=steps - 1,
    )
    return tf.gather(batches, batch_order)


def _epoch_views(
    num_examples: int, num_views: int, seed: int, epoch: tf.Tensor
) -> tf.Tensor:
    """``int32 [M]``: the feature view each caption uses in this epoch."""
    if num_views == 1:
        return tf.zeros([num_examples], tf.int32)
    epoch_seed = tf.stack([tf.constant(seed, tf.int64), tf.cast(epoch, tf.int64)])
    return tf.random.stateless_uniform(
        [num_examples],
        seed=epoch_seed + tf.constant([0, 2 << 32], tf.int64),
        minval=0,
        maxval=num_views,
        dtype=tf.int32,
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
    bucket_by_length: bool = False,
    hard_negatives_from_epoch: Optional[int] = None,
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
            ``[V, N, F]``: V views of each image (e.g. the image and its
            mirror image); each caption of each epoch draws one view,
            from ``(seed, epoch)`` (so a resumed run draws the same), or
        image_paths: ``[N]`` image files (fine-tuning; decoded per batch).
        image_size: Decode size for ``image_paths``.
        bucket_by_length: Batch captions of similar length (module doc).
        hard_negatives_from_epoch: If set, batches carry ``hard_negatives``
            (``int32 [B]``), 1 from this (0-based) epoch on, else 0.

    Returns:
        ``(dataset, steps_per_epoch)``. Elements are dicts with
        ``token_ids [B, L_b]``, ``image_ids [B]``, ``image_features
        [B, F]`` or ``images [B, S, S, 3]``, and ``hard_negatives [B]`` if
        asked for.
    """
    if (image_features is None) == (image_paths is None):
        raise ValueError("give exactly one of image_features and image_paths")
    steps = len(token_ids) // batch_size
    if steps == 0:
        raise ValueError(
            f"{len(token_ids)} training captions do not fill one batch of {batch_size}"
        )
    paths = None if image_paths is None else tf.constant(list(image_paths), tf.string)
    data = _TrainData(
        ids=tf.constant(token_ids, tf.int32),
        lengths=tf.constant(np.count_nonzero(token_ids, axis=1), tf.int32),
        owners=tf.constant(caption_image_index, tf.int32),
        feats=_feature_views(image_features),
        paths=paths,
        image_size=image_size,
        hard_negatives_from_epoch=hard_negatives_from_epoch,
    )
    epochs = tf.data.Dataset.range(first_epoch, last_epoch)
    return (
        epochs.flat_map(
            lambda epoch: _epoch_dataset(
                data, batch_size, steps, seed, epoch, bucket_by_length
            )
        ).prefetch(tf.data.AUTOTUNE),
        steps,
    )


def _feature_views(image_features: Optional[np.ndarray]) -> Optional[tf.Tensor]:
    """``[V, N, F]`` views of the cached features (``V = 1`` for ``[N, F]``).

    float16 arrays (activations for the cheap fine-tuning path) stay float16,
    half the memory; the model casts each batch. Anything else is float32.

    Raises:
        ValueError: When ``image_features`` is neither ``[N, F]`` nor
            ``[V, N, F]``.
    """
    if image_features is None:
        return None
    dtype = tf.float16 if image_features.dtype == np.float16 else tf.float32
    feats = tf.constant(image_features, dtype)
    if feats.shape.rank == 2:
        return feats[None]  # one view
    if feats.shape.rank != 3:
        raise ValueError(
            f"image_features must be [N, F] or [V, N, F], got {feats.shape}"
        )
    return feats


@dataclasses.dataclass(frozen=True, eq=False)
class _TrainData:
    """The in-graph arrays one epoch's batches are gathered from.

    Attributes:
        ids: ``int32 [M, L]`` padded caption ids.
        lengths: ``int32 [M]`` caption lengths.
        owners: ``int32 [M]`` image of each caption.
        feats: ``float32|float16 [V, N, F]`` feature views, or None (image
            files).
        paths: ``string [N]`` image files, or None (cached features).
        image_size: Decode size for ``paths``.
        hard_negatives_from_epoch: First epoch whose batches set
            ``hard_negatives``, or None for no such key.
    """

    ids: tf.Tensor
    lengths: tf.Tensor
    owners: tf.Tensor
    feats: Optional[tf.Tensor]
    paths: Optional[tf.Tensor]
    image_size: int
    hard_negatives_from_epoch: Optional[int]

    @property
    def num_views(self) -> int:
        return 1 if self.feats is None else int(self.feats.shape[0])

    def batch(
        self, indices: tf.Tensor, epoch: tf.Tensor, views: tf.Tensor
    ) -> dict[str, tf.Tensor]:
        """The batch of captions ``indices [B]``, trimmed to its longest caption.

        Args:
            indices: ``int64 [B]`` caption indices.
            epoch: The epoch (scalar).
            views: ``int32 [M]`` feature view of each caption this epoch.

        Returns:
            ``token_ids [B, L_b]``, ``image_ids [B]``, ``image_features
            [B, F]`` or ``images [B, S, S, 3]``, and ``hard_negatives [B]``
            when asked for.
        """
        image_ids = tf.gather(self.owners, indices)
        longest = tf.maximum(tf.reduce_max(tf.gather(self.lengths, indices)), 1)
        batch = {
            "token_ids": tf.gather(self.ids, indices)[:, :longest],
            "image_ids": image_ids,
        }
        if self.feats is not None:
            view_ids = tf.gather(views, indices)
            batch["image_features"] = tf.gather_nd(
                self.feats, tf.stack([view_ids, image_ids], axis=1)
            )
        else:
            batch["images"] = tf.map_fn(
                lambda p: images_lib.load_image(p, self.image_size),
                tf.gather(self.paths, image_ids),
                fn_output_signature=tf.TensorSpec(
                    [self.image_size, self.image_size, 3]
                ),
            )
        if self.hard_negatives_from_epoch is not None:
            # int32, not bool: cross-replica ops (all_gather, reduce) sum
            # tensors, which bool cannot do.
            batch["hard_negatives"] = tf.fill(
                tf.shape(indices),
                tf.cast(epoch >= self.hard_negatives_from_epoch, tf.int32),
            )
        return batch


def _epoch_dataset(
    data: _TrainData,
    batch_size: int,
    steps: int,
    seed: int,
    epoch: tf.Tensor,
    bucket_by_length: bool,
) -> tf.data.Dataset:
    """The ``steps`` batches of one epoch, in the order ``(seed, epoch)`` draws."""
    batches = _epoch_batches(
        data.lengths, batch_size, steps, seed, epoch, bucket_by_length
    )
    views = _epoch_views(int(data.ids.shape[0]), data.num_views, seed, epoch)
    return tf.data.Dataset.from_tensor_slices(batches).map(
        lambda indices: data.batch(indices, epoch, views),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
