"""The joint space in TensorBoard's Embedding Projector: images and captions together.

`projector_files` turns image and caption embeddings into the projector's
files; `write_projector` writes them (atomically, one file at a time) into a
folder that ``tensorboard --logdir DIR`` shows:

    projector_config.pbtxt  the plugin's config (TensorBoard's own proto)
    tensors.tsv             [N + M, D] rows: the N images, then the M captions
    metadata.tsv            a header, then per row: kind, file, caption
    sprite.png              one thumbnail per row (a caption shows its image)

A row's thumbnail is its image's, so a caption point carries the picture it
describes; the sprite is a square grid of ``thumbnail`` pixel cells in row
order, as the projector reads it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Optional

import numpy as np
import tensorflow as tf

from vse_tf import images as images_lib
from vse_tf import io_utils

CONFIG_FILE = "projector_config.pbtxt"
TENSORS_FILE = "tensors.tsv"
METADATA_FILE = "metadata.tsv"
SPRITE_FILE = "sprite.png"
TENSOR_NAME = "vse_joint_space"
MAX_SPRITE_SIDE = 8192
"""The largest sprite the projector loads (pixels per side)."""


def _clean(text: str) -> str:
    """One TSV field: no tabs or line breaks."""
    return " ".join(str(text).split())


def _thumbnail(path: str, size: int) -> np.ndarray:
    """``uint8 [size, size, 3]``: the image, or grey where it cannot be read."""
    data, problem = images_lib.read_checked(path)
    if problem is not None:
        return np.full([size, size, 3], 128, np.uint8)
    try:
        decoded = tf.io.decode_image(data, channels=3, expand_animations=False)
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError):
        return np.full([size, size, 3], 128, np.uint8)
    pixels = images_lib.resize_pixels(decoded, size)
    return tf.cast(tf.round(pixels), tf.uint8).numpy()


def sprite(thumbnails: Sequence[np.ndarray], size: int) -> np.ndarray:
    """``uint8 [S, S, 3]``: the thumbnails in a square grid, row by row.

    Args:
        thumbnails: ``[T]`` ``uint8 [size, size, 3]`` cells, in row order.
        size: Cell side in pixels.

    Returns:
        The grid, ``S = ceil(sqrt(T)) * size``; empty cells are black.
    """
    per_side = max(1, math.ceil(math.sqrt(len(thumbnails))))
    grid = np.zeros([per_side * size, per_side * size, 3], np.uint8)
    for position, cell in enumerate(thumbnails):
        row, column = divmod(position, per_side)
        grid[row * size : (row + 1) * size, column * size : (column + 1) * size] = cell
    return grid


def projector_files(
    image_embeddings: np.ndarray,
    image_paths: Sequence[str],
    caption_embeddings: Optional[np.ndarray] = None,
    captions: Sequence[str] = (),
    caption_image_index: Optional[Sequence[int]] = None,
    thumbnail: int = 32,
) -> dict[str, bytes]:
    """The projector's files of images and captions in one space.

    Args:
        image_embeddings: ``[N, D]``.
        image_paths: ``[N]`` their files (thumbnails and metadata).
        caption_embeddings: ``[M, D]`` (optional).
        captions: ``[M]`` their text.
        caption_image_index: ``[M]`` the image each caption describes (its
            thumbnail), as `CaptionedSplit.caption_image_index`.
        thumbnail: Sprite cell side in pixels.

    Returns:
        ``{file name: bytes}`` (see the module docstring).

    Raises:
        ValueError: for shapes that do not match, or a sprite larger than
            the projector loads (fewer points or a smaller ``thumbnail``).
    """
    from google.protobuf import text_format
    from tensorboard.plugins import projector

    image_embeddings = np.asarray(image_embeddings, np.float32)
    if caption_embeddings is None:
        caption_embeddings = np.zeros([0, image_embeddings.shape[1]], np.float32)
    caption_embeddings = np.asarray(caption_embeddings, np.float32)
    owners = np.asarray(
        caption_image_index if caption_image_index is not None else [], np.int64
    )
    if len(image_embeddings) != len(image_paths):
        raise ValueError(
            f"{len(image_embeddings)} image embeddings for {len(image_paths)} paths"
        )
    if not len(caption_embeddings) == len(captions) == len(owners):
        raise ValueError(
            f"{len(caption_embeddings)} caption embeddings, {len(captions)} captions "
            f"and {len(owners)} caption images must be as many"
        )
    if caption_embeddings.shape[1] != image_embeddings.shape[1]:
        raise ValueError("images and captions must share the embedding size")
    count = len(image_paths) + len(captions)
    side = math.ceil(math.sqrt(max(count, 1))) * thumbnail
    if side > MAX_SPRITE_SIDE:
        raise ValueError(
            f"a sprite of {count} points at {thumbnail}px is {side}px wide; the "
            f"projector loads at most {MAX_SPRITE_SIDE}px: use fewer images or a "
            "smaller thumbnail"
        )
    vectors = np.concatenate([image_embeddings, caption_embeddings])
    tensors = "".join(
        "\t".join(f"{value:.6g}" for value in row) + "\n" for row in vectors
    )
    metadata = ["kind\tfile\tcaption"]
    metadata += [f"image\t{_clean(p)}\t" for p in image_paths]
    metadata += [
        f"caption\t{_clean(image_paths[i])}\t{_clean(c)}"
        for c, i in zip(captions, owners)
    ]
    cells = [_thumbnail(p, thumbnail) for p in image_paths]
    cells += [cells[i] for i in owners]
    config = projector.ProjectorConfig()
    embedding = config.embeddings.add()
    embedding.tensor_name = TENSOR_NAME
    embedding.tensor_path = TENSORS_FILE
    embedding.metadata_path = METADATA_FILE
    embedding.sprite.image_path = SPRITE_FILE
    embedding.sprite.single_image_dim.extend([thumbnail, thumbnail])
    return {
        CONFIG_FILE: text_format.MessageToString(config).encode(),
        TENSORS_FILE: tensors.encode(),
        METADATA_FILE: ("\n".join(metadata) + "\n").encode(),
        SPRITE_FILE: tf.io.encode_png(sprite(cells, thumbnail)).numpy(),
    }


def write_projector(output_dir: str, files: dict[str, bytes]) -> list[str]:
    """Writes `projector_files` into ``output_dir`` (each file atomically).

    The config is written last, so a folder TensorBoard finds is complete.

    Returns:
        The paths written.
    """
    io_utils.makedirs(output_dir)
    order = sorted(files, key=lambda name: name == CONFIG_FILE)
    written = []
    for name in order:
        path = os.path.join(output_dir, name)
        io_utils.atomic_write_bytes(path, files[name])
        written.append(path)
    return written
