"""A trained workdir -> its three ``.tflite`` towers, vocabulary and manifest."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import tensorflow as tf

from vse_tf import text as text_lib
from vse_tf.models.text_tower import LSTMTextTower
from vse_tf.serving.tflite import convert
from vse_tf.serving.tflite import manifest as manifest_lib


def _spread(count: int, total: int) -> np.ndarray:
    """Up to ``count`` distinct indices spread evenly over ``range(total)``."""
    return np.unique(np.linspace(0, total - 1, min(count, total)).round().astype(int))


def representative_data(
    config, text_tower: LSTMTextTower, num_images: int = 64, num_captions: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """Real calibration data: images and captions of the TRAIN split.

    Args:
        config: The run's config (data set, image size).
        text_tower: Its tokenizer encodes the captions.
        num_images: Images to take, spread evenly over the split.
        num_captions: Captions to take, spread evenly over the split.

    Returns:
        ``(float32 [K, S, S, 3] RGB 0..255, int32 [K', L] token ids)``.
    """
    # Imported here: the data stack is heavy and only a whole export needs it.
    from vse_tf import images as images_lib
    from vse_tf.data import datasets

    split = datasets.load_split(config, "train")
    images = np.stack(
        [
            images_lib.load_image(
                tf.constant(split.image_paths[i]), config.data.image_size
            ).numpy()
            for i in _spread(num_images, split.num_images)
        ]
    ).astype(np.float32)
    token_ids = text_lib.encode_captions(
        text_tower.tokenizer,
        [split.captions[i] for i in _spread(num_captions, split.num_captions)],
    )
    return images, token_ids


def export_tflite(
    workdir: str,
    quantize: str = "none",
    num_calibration_images: int = 64,
    num_calibration_captions: int = 256,
) -> tuple[dict[str, bytes], dict[str, Any]]:
    """Converts a trained workdir's best model to the three ``.tflite`` towers.

    Args:
        workdir: A training workdir (`vse_tf.workdir`).
        quantize: ``none|float16|dynamic|int8``; ``int8`` calibrates on real
            training images and captions of the workdir's data set, and
            ``dynamic`` bias-corrects the image tower on
            `convert.NUM_BIAS_CORRECTION_IMAGES` training images.
        num_calibration_images: Calibration images (``int8``).
        num_calibration_captions: Calibration captions (``int8``).

    Returns:
        ``(files, manifest)``: file name -> bytes for ``image_tower.tflite``,
        ``text_tower.tflite``, ``text_tower_strings.tflite`` and
        ``vocab.txt``; and the manifest dict (not in ``files``).
    """
    # Imported here, like representative_data's imports.
    from vse_tf import workdir as workdir_lib

    convert.check_quantize(quantize)
    workdir = workdir_lib.local_folder(workdir)  # (an hf:// preset: its snapshot)
    config, model = workdir_lib.load_trained_model(workdir, include_backbone=True)
    images = token_ids = None
    if quantize == "dynamic":
        images, _ = representative_data(
            config, model.text_tower, convert.NUM_BIAS_CORRECTION_IMAGES, 1
        )
    elif quantize == "int8":
        images, token_ids = representative_data(
            config,
            model.text_tower,
            num_calibration_images,
            num_calibration_captions,
        )
    with open(os.path.join(workdir, workdir_lib.VOCAB_FILE), "rb") as f:
        vocab = f.read()
    files = {
        manifest_lib.IMAGE_FILE: convert.convert_image_tower(
            model.image_tower, quantize, images
        ),
        manifest_lib.TEXT_FILE: convert.convert_text_tower(
            model.text_tower, quantize, token_ids
        ),
        manifest_lib.STRINGS_FILE: convert.convert_text_tower_strings(
            model.text_tower, quantize
        ),
        manifest_lib.VOCAB_FILE: vocab,
    }
    checkpoint = tf.train.latest_checkpoint(os.path.join(workdir, "best"))
    manifest = manifest_lib.build_manifest(
        files,
        model.image_tower,
        model.text_tower,
        quantize,
        source={
            "workdir": os.path.abspath(workdir),
            "checkpoint": os.path.basename(checkpoint or ""),
            "dataset": config.data.dataset,
        },
        bias_corrected=quantize == "dynamic",
    )
    return files, manifest
