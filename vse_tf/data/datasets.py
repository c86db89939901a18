"""The configured data set's splits, read as training and evaluation use them.

`load_split` reads one split of ``config.data`` (the demo, Flickr8k,
Karpathy JSON, COCO, CSV or precomputed features; `vse_tf.data.readers`);
`evaluation_view` and `protocol_view` turn a split into what the retrieval
protocol scores (5 captions per image).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence
from typing import Optional

import numpy as np

from vse_tf import errors, io_utils
from vse_tf.config import Config
from vse_tf.data import readers, validation
from vse_tf.data.split import CaptionedSplit

CAPTIONS_PER_IMAGE = 5


def demo_data_dir(config: Config) -> str:
    """Generates (once) the embedded demo data set and returns its folder."""
    from vse_tf.data import demo

    cache = config.data.cache_dir or io_utils.default_cache_dir()
    folder = os.path.join(
        cache,
        "demo",
        f"v{demo.DEMO_VERSION}-s{config.data.image_size}-seed{config.train.seed}",
    )
    return demo.generate_demo_dataset(
        folder, image_size=config.data.image_size, seed=config.train.seed
    )


def load_split(config: Config, split: str) -> CaptionedSplit:
    """Reads one split of the configured data set.

    Args:
        config: The run's config (``data.dataset``, ``data.data_dir``).
        split: ``train``, ``dev`` or ``test``.

    Returns:
        The split, cut to ``max_train_images`` / ``max_eval_images``.

    Raises:
        readers.DataError: listing every problem found in the annotations
            (unless ``skip_bad_examples``, which leaves the bad examples out
            and records them on ``split.skipped``).
    """
    dataset = config.data.dataset
    options = dict(check_files=True, skip_bad_examples=config.data.skip_bad_examples)
    if dataset == "demo":
        result = readers.read_split("csv", demo_data_dir(config), split, **options)
    elif dataset == "tfds":
        from vse_tf.data.readers import tfds_reader  # (the tfds extra)

        result = tfds_reader.read_tfds(
            config.data.tfds_name,
            split,
            image_root=tfds_reader.default_image_root(config.data.cache_dir),
            data_dir=config.data.data_dir or None,
            skip_bad_examples=config.data.skip_bad_examples,
        )
    else:
        if not config.data.data_dir:
            raise errors.ConfigError(f"--dataset={dataset} needs --data_dir")
        try:
            result = readers.read_split(dataset, config.data.data_dir, split, **options)
        except readers.DataError as error:
            if set(error.kinds) - {validation.MISSING_FILE}:
                error.hint = (
                    "Fix the file, or rerun with --skip_bad_examples to train "
                    "on the good examples only."
                )
            raise
    for warning in result.warnings:
        logging.warning("%s", warning)
    if result.skipped:
        print(
            f"{split}: skipped {sum(result.skipped.values())} bad examples "
            f"({_counts(result.skipped)}); see the log for each"
        )
        for problem in result.skipped_problems:
            logging.warning("skipped: %s", problem)
    limit = (
        config.data.max_train_images
        if split == "train"
        else config.data.max_eval_images
    )
    return result.take_images(limit) if limit else result


def _counts(kinds: dict[str, int]) -> str:
    return ", ".join(f"{count} {kind}" for kind, count in sorted(kinds.items()))


def load_optional_split(config: Config, name: str) -> Optional[CaptionedSplit]:
    """`load_split`, or None when the data set has no ``test`` split.

    Only ``test`` is optional (a data set without one trains and selects
    on dev); a missing train or dev split is an error.

    Raises:
        readers.DataError: as `load_split`, also for a missing train or dev.
    """
    try:
        return load_split(config, name)
    except readers.MissingSplitError as error:
        if name != "test":
            raise
        logging.warning("No %s split (%s); skipping it", name, error)
        return None


def select_images(split: CaptionedSplit, keep: Sequence[int]) -> CaptionedSplit:
    """The split restricted to images ``keep`` (sorted indices) and their captions."""
    new_index = np.full(split.num_images, -1, np.int64)
    new_index[np.asarray(keep, np.int64)] = np.arange(len(keep))
    owners = new_index[split.caption_image_index]
    kept = owners >= 0
    return dataclasses.replace(
        split,
        image_paths=[split.image_paths[i] for i in keep],
        captions=[c for c, k in zip(split.captions, kept) if k],
        caption_image_index=owners[kept],
        features=None if split.features is None else split.features[keep],
    )


def evaluation_view(split: CaptionedSplit) -> CaptionedSplit:
    """The split as the retrieval protocol scores it: 5 captions per image.

    Raises:
        readers.DataError: naming the images with fewer than 5 captions
            (more are allowed: the first 5 are used).
    """
    validation.check_captions_per_image(
        split, CAPTIONS_PER_IMAGE, "evaluation", allow_more=True
    )
    return protocol_view(split)


def protocol_view(split: CaptionedSplit, k: int = CAPTIONS_PER_IMAGE) -> CaptionedSplit:
    """The first ``k`` captions of every image that has at least ``k``.

    The retrieval protocol needs exactly ``k`` captions per image (COCO has
    5-7); images with fewer are dropped with a warning.
    """
    if split.captions_per_image() == k:
        return split
    keep_captions, keep_images = [], []
    counts = np.bincount(split.caption_image_index, minlength=split.num_images)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    for image, (start, count) in enumerate(zip(starts, counts)):
        if count >= k:
            keep_images.append(image)
            keep_captions.extend(range(start, start + k))
    dropped = split.num_images - len(keep_images)
    if dropped:
        logging.warning(
            "%s: %d images have fewer than %d captions and are left out of evaluation",
            split.name,
            dropped,
            k,
        )
    remap = {old: new for new, old in enumerate(keep_images)}
    return dataclasses.replace(
        split,
        image_paths=[split.image_paths[i] for i in keep_images],
        captions=[split.captions[i] for i in keep_captions],
        caption_image_index=np.asarray(
            [remap[split.caption_image_index[i]] for i in keep_captions]
        ),
        features=None if split.features is None else split.features[keep_images],
    )
