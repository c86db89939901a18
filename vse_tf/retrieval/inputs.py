"""What goes into an index: image files (a folder, a list file, a glob) or captions."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from typing import Union

import tensorflow as tf

from vse_tf import io_utils


def list_images(images: Union[str, Sequence[str]]) -> list[str]:
    """Absolute image paths from a folder, a glob, a list file or a list of paths.

    Args:
        images: A folder (every file in it and below, hidden ones aside,
            sorted: whether a file is an image is decided by its content
            when it is indexed, never by its name, and each one that is not
            is skipped with the reason), a glob (``photos/*/*.jpg``), a text
            file with one path per line (relative paths are relative to the
            file's folder; blank lines and ``#`` comments skipped), or a
            sequence of paths.
            Folders, globs and list files may be URLs (``gs://...``).

    Returns:
        ``[N]`` absolute paths, in a deterministic order.
    """
    if not isinstance(images, str):
        return [io_utils.absolute(p) for p in images]
    if io_utils.isdir(images):
        return _images_in_folder(images)
    if not io_utils.exists(images):
        if any(char in images for char in "*?["):
            import tensorflow as tf  # noqa: PLC0415

            return sorted(io_utils.absolute(p) for p in tf.io.gfile.glob(images))
        raise FileNotFoundError(f"{images}: neither a folder nor a list file")
    base = io_utils.parent(io_utils.absolute(images))
    paths = []
    for line in _lines(images):
        line = line.strip()
        if line and not line.startswith("#"):
            paths.append(io_utils.absolute(io_utils.join(base, line)))
    return paths


def _images_in_folder(folder: str) -> list[str]:
    if io_utils.is_url(folder):
        import tensorflow as tf  # noqa: PLC0415

        walk = ((root, files) for root, _, files in tf.io.gfile.walk(folder))
    else:
        walk = ((root, files) for root, _, files in os.walk(folder))
    found = [
        io_utils.absolute(io_utils.join(root, name))
        for root, files in walk
        if not _hidden(root, folder)
        for name in files
        if not name.startswith(".")
    ]
    return sorted(found)


def _hidden(root: str, folder: str) -> bool:
    """Whether ``root`` lies in a hidden folder (``.git``...) below ``folder``."""
    relative = os.path.relpath(root, folder) if not io_utils.is_url(root) else ""
    return any(part.startswith(".") and part != "." for part in relative.split(os.sep))


def read_captions(captions_file: str) -> list[str]:
    """Captions, one per line (stripped; blank lines skipped)."""
    return [line.strip() for line in _lines(captions_file) if line.strip()]


def _lines(path: str) -> io.StringIO:
    """The lines of a UTF-8 text file, split as Python's text files split them.

    (``\\n``, ``\\r\\n`` or ``\\r``; not ``str.splitlines``, which also splits at
    form feeds and Unicode line separators inside a caption.)
    """
    return io.StringIO(io_utils.read_bytes(path).decode("utf-8"), newline=None)


def read_files(paths: Sequence[str], batch_size: int):
    """Yields ``(positions [B], bytes [B])`` of readable files, read in parallel.

    Files that cannot be read are left out; their positions are missing.
    """
    ds = tf.data.Dataset.from_tensor_slices(
        (tf.range(len(paths), dtype=tf.int64), tf.constant(list(paths), tf.string))
    )
    ds = ds.map(
        lambda i, p: (i, tf.io.read_file(p)),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    ds = ds.ignore_errors().batch(batch_size).prefetch(2)
    for positions, data in ds:
        yield positions.numpy().tolist(), data.numpy().tolist()


def image_inputs(images: Union[str, Sequence[str]]) -> tuple[list[str], str]:
    """``(paths [N], source)`` of an image collection (see `list_images`).

    Raises:
        ValueError: if it holds no image.
    """
    paths = list_images(images)
    if not paths:
        raise ValueError(f"no images in {images}")
    return paths, io_utils.absolute(images) if isinstance(images, str) else "<list>"


def caption_inputs(captions: Union[str, Sequence[str]]) -> tuple[list[str], str]:
    """``(captions [N], source)`` of a caption file or sequence.

    Raises:
        ValueError: if there is no caption.
    """
    if isinstance(captions, str):
        source, texts = io_utils.absolute(captions), read_captions(captions)
    else:
        source, texts = "<list>", [str(c) for c in captions]
    if not texts:
        raise ValueError(f"no captions in {source}")
    return texts, source
