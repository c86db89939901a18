"""Features of a run's config and splits: the cache entries training reads."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Optional

import numpy as np

from vse_tf import hardware
from vse_tf.config import Config
from vse_tf.data import datasets
from vse_tf.data.split import CaptionedSplit
from vse_tf.features import cache as cache_lib
from vse_tf.features import extraction
from vse_tf.features import report as report_lib


def extract_for_config(
    config: Config,
    paths: Sequence[str],
    verbose: int = 1,
    shard_size: int = cache_lib.DEFAULT_SHARD_SIZE,
    on_shard: Optional[Callable[[int, int], None]] = None,
    flip: bool = False,
) -> report_lib.FeatureReport:
    """The features training uses for these images under ``config``.

    Same settings and so the same cache entry as training: backbone weights
    and feature from ``config.model``, image size, extraction batch size,
    dtype and cache folder from ``config.data``.

    Args:
        config: The run's config.
        paths: ``[N]`` image files (a split's ``image_paths``).
        verbose: 1 shows a progress bar.
        shard_size: Images per cache shard.
        on_shard: See `extract_features_with_report`.
        flip: Features of the mirrored images (``config.data.augment_flip``).

    Returns:
        The `FeatureReport`.
    """
    return extraction.extract_features_with_report(
        paths,
        verbose=verbose,
        shard_size=shard_size,
        on_shard=on_shard,
        flip=flip,
        **extraction_settings(config),
    )


def extraction_settings(config: Config) -> dict[str, Any]:
    """The extraction arguments of ``config``: what keys its cache entries.

    Returns:
        ``image_feature``, ``image_size``, ``weights``, ``batch_size``,
        ``dtype`` (``auto`` resolved for this machine), ``cache_dir``,
        ``backbone`` and ``cut`` (``fine_tune_from`` on the cheap
        fine-tuning path, `trains_on_activations`; else ``""``), as
        `extract_features_with_report` takes them.
    """
    data = config.data
    return dict(
        image_feature=config.model.image_feature,
        image_size=data.image_size,
        weights=config.model.backbone_weights,
        batch_size=data.extract_batch_size,
        dtype=hardware.extract_dtype(data.extract_dtype),
        cache_dir=data.cache_dir or None,
        backbone=config.model.backbone,
        cut=config.model.fine_tune_from if trains_on_activations(config) else "",
    )


def trains_on_activations(config: Config) -> bool:
    """Fine-tuning the cheap way: on cached activations of the frozen part."""
    return bool(config.model.fine_tune_from) and config.model.fine_tune_cached


def trains_on_images(config: Config) -> bool:
    """Fine-tuning on decoded images, the whole CNN run every step."""
    return bool(config.model.fine_tune_from) and not config.model.fine_tune_cached


def split_features(
    config: Config, split: CaptionedSplit, verbose: int = 1, flip: bool = False
) -> tuple[CaptionedSplit, Optional[np.ndarray], int]:
    """A split's cached backbone features, without its unreadable images.

    Images that cannot be read or decoded (missing, truncated, not an image)
    are skipped: they and their captions leave the split, and the count is
    logged (the feature cache's manifest lists each with its reason). When
    fine-tuning on images (``fine_tune_cached`` off: no feature cache) the
    image files are only checked; fine-tuning the cheap way reads the
    activations where fine-tuning starts (`trains_on_activations`).

    Args:
        config: The run's config.
        split: The split.
        verbose: 1 shows extraction progress.
        flip: Also the mirrored images' features (training augmentation,
            ``config.data.augment_flip``).

    Returns:
        ``(split, features, skipped)``: the split without the skipped
        images; their features (or activations), ``[N', F]``, ``[2, N', F]``
        (image, mirror image) with ``flip``, or None when fine-tuning on
        images; and how many images were skipped.

    Raises:
        ValueError: ``flip`` with precomputed features or fine-tuning on
            images.
    """
    if flip and (split.features is not None or trains_on_images(config)):
        raise ValueError(
            "augment_flip mirrors images before the frozen CNN, so it needs "
            "image files and cached features: "
            + (
                f"the {config.data.dataset} data set has precomputed features"
                if split.features is not None
                else f"fine_tune_from={config.model.fine_tune_from!r} with "
                "fine_tune_cached off trains on images"
            )
        )
    if split.features is not None:
        return split, split.features, 0
    if trains_on_images(config):
        features = None
        skipped = report_lib.unreadable_images(
            split.image_paths, config.data.image_size
        )
    else:
        report = extract_for_config(config, split.image_paths, verbose)
        features, skipped = report.features, report.skipped
        if flip:
            mirrored = extract_for_config(config, split.image_paths, verbose, flip=True)
            features = np.stack([features, mirrored.features])
            known = {image.index for image in skipped}
            skipped = skipped + [i for i in mirrored.skipped if i.index not in known]
    if not skipped:
        return split, features, 0
    print(f"{split.name}: skipped {len(skipped)} unreadable images")
    for image in skipped[:20]:
        logging.warning("skipped image %s: %s", image.path, image.reason)
    keep = sorted(set(range(split.num_images)) - {image.index for image in skipped})
    kept_features = None if features is None else features[..., keep, :]
    return datasets.select_images(split, keep), kept_features, len(skipped)
