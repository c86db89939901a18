"""Image files -> pixels: the one decode and resize of training, features and serving.

Decoding is by content (`tf.io.decode_image` reads JPEG, PNG, GIF and BMP
whatever the file is named); the resize is bilinear with antialiasing to a
square (VGG sees the whole image).

`unreadable_reason` says in one sentence why a file is no readable image
(missing, a folder, no permission, empty, not a JPEG/PNG/GIF/BMP by its
content, truncated at byte N, data that does not decode), for every place
that names a skipped or refused image: indexing, querying, feature caches.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Optional

import tensorflow as tf

from vse_tf import io_utils

KINDS = ("JPEG", "PNG", "GIF", "BMP")


def sniff_kind(data: bytes) -> Optional[str]:
    """The image format of ``data`` by its first bytes (magic), else None."""
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if data.startswith(b"BM") and len(data) >= 26:
        return "BMP"
    return None


def image_shape(data: bytes) -> Optional[tuple[int, int]]:
    """``(height, width)`` from a JPEG/PNG/GIF/BMP header, without decoding.

    Lets a server refuse a huge image (a 50-megapixel upload) before it
    spends the memory to decode it.

    Returns:
        The size the header states, or None where the header is missing,
        cut short or of no known format.
    """
    kind = sniff_kind(data)
    try:
        if kind == "PNG" and data[12:16] == b"IHDR":
            width, height = struct.unpack(">II", data[16:24])
            return height, width
        if kind == "GIF":
            width, height = struct.unpack("<HH", data[6:10])
            return height, width
        if kind == "BMP":
            (header_size,) = struct.unpack("<I", data[14:18])
            if header_size == 12:  # OS/2 BITMAPCOREHEADER
                width, height = struct.unpack("<HH", data[18:22])
            else:
                width, height = struct.unpack("<ii", data[18:26])
            return abs(height), abs(width)
        if kind == "JPEG":
            return _jpeg_shape(data)
    except struct.error:
        return None
    return None


_JPEG_FRAME_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
"""Start-of-frame markers (SOF0-SOF15 but DHT, JPG and DAC), which state the size."""


def _jpeg_shape(data: bytes) -> Optional[tuple[int, int]]:
    """The size in a JPEG's start-of-frame segment: walks the segments to it."""
    position = 2
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            return None
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # standalone markers
            position += 2
            continue
        (length,) = struct.unpack(">H", data[position + 2 : position + 4])
        if marker in _JPEG_FRAME_MARKERS:
            height, width = struct.unpack(">HH", data[position + 5 : position + 9])
            return height, width
        if marker == 0xDA:  # start of scan before any frame header
            return None
        position += 2 + length
    return None


def _truncation(kind: str, data: bytes) -> Optional[str]:
    """``"truncated at byte N ..."`` where the format's end is missing."""
    size = len(data)
    if kind == "JPEG" and b"\xff\xd9" not in data[2:]:
        return f"truncated at byte {size} (no JPEG end-of-image marker)"
    if kind == "PNG" and b"IEND" not in data[8:]:
        return f"truncated at byte {size} (no PNG IEND chunk)"
    if kind == "GIF" and not data.rstrip(b"\0").endswith(b"\x3b"):
        return f"truncated at byte {size} (no GIF trailer)"
    if kind == "BMP":
        (expected,) = struct.unpack("<I", data[2:6])
        if size < expected:
            return f"truncated at byte {size} of {expected}"
    return None


def content_problem(data: bytes) -> Optional[str]:
    """Why these bytes are no whole JPEG/PNG/GIF/BMP (cheap checks), else None.

    Checks the magic and the format's end marker only; data that passes can
    still fail to decode (`decode_problem` says why).
    """
    if not data:
        return "empty (0 bytes)"
    kind = sniff_kind(data)
    if kind is None:
        return (
            "not a JPEG, PNG, GIF or BMP image (it starts with bytes "
            f"{data[:4].hex(' ')})"
        )
    return _truncation(kind, data)


def decode_problem(data: bytes) -> Optional[str]:
    """Why ``tf.io.decode_image`` refuses these bytes, in one line, else None."""
    problem = content_problem(data)
    if problem is not None:
        return problem
    try:
        tf.io.decode_image(data, channels=3, expand_animations=False)
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as error:
        return (
            f"a {sniff_kind(data)} whose data does not decode ({error_message(error)})"
        )
    return None


def error_message(error: Exception) -> str:
    """A TensorFlow error's first line, without its op and function names."""
    message = (getattr(error, "message", "") or str(error)).strip()
    if not message:
        return type(error).__name__
    message = message.splitlines()[0]
    if message.startswith("{{function_node") and "}}" in message:
        message = message.split("}}", 1)[1].strip()
    if " [Op:" in message:
        message = message.split(" [Op:", 1)[0]
    return message[:300]


def read_checked(path: str) -> tuple[Optional[bytes], Optional[str]]:
    """``(bytes, None)`` of a file that looks like a whole image, else ``(None, why)``.

    The cheap checks (`content_problem`: magic and end marker), by content,
    never by the file's name; the data is not decoded.
    """
    try:
        data = io_utils.read_bytes(path)
    except FileNotFoundError:
        return None, "no such file"
    except IsADirectoryError:
        return None, "a folder, not an image file"
    except PermissionError:
        return None, "permission denied: the file cannot be read"
    except OSError as error:
        return None, f"cannot be read ({error.strerror or error})"
    except tf.errors.OpError as error:  # a URL (tf.io.gfile)
        return None, f"cannot be read ({error_message(error)})"
    problem = content_problem(data)
    return (None, problem) if problem else (data, None)


def unreadable_reason(path: str) -> Optional[str]:
    """One sentence (without the path) on why ``path`` is no readable image.

    None where the file reads and decodes.
    """
    data, problem = read_checked(path)
    return problem if data is None else decode_problem(data)


def resize_pixels(pixels: tf.Tensor, image_size: int) -> tf.Tensor:
    """``[..., H, W, 3]`` pixels -> ``float32 [..., S, S, 3]`` in 0..255.

    The one resize used everywhere (training, evaluation, serving): bilinear
    with antialiasing, aspect ratio not kept (VGG sees the whole image).
    """
    image = tf.image.resize(
        tf.cast(pixels, tf.float32), [image_size, image_size], antialias=True
    )
    return tf.clip_by_value(image, 0.0, 255.0)


def thumbnail_jpeg(data: bytes, size: int, quality: int = 85) -> bytes:
    """An encoded image as a JPEG at most ``size`` pixels a side, aspect kept.

    Raises:
        tf.errors.InvalidArgumentError: if the data does not decode.
    """
    image = tf.io.decode_image(data, channels=3, expand_animations=False)
    height, width = int(image.shape[0]), int(image.shape[1])
    scale = min(1.0, size / max(height, width, 1))
    target = [max(1, round(height * scale)), max(1, round(width * scale))]
    small = tf.image.resize(tf.cast(image, tf.float32), target, antialias=True)
    pixels = tf.cast(tf.clip_by_value(tf.round(small), 0, 255), tf.uint8)
    return tf.io.encode_jpeg(pixels, quality=quality).numpy()


def decode_image(data: tf.Tensor, image_size: int) -> tf.Tensor:
    """Encoded JPEG/PNG/GIF/BMP bytes -> ``float32 [S, S, 3]`` RGB in 0..255."""
    image = tf.io.decode_image(data, channels=3, expand_animations=False)
    return tf.ensure_shape(
        resize_pixels(image, image_size), [image_size, image_size, 3]
    )


def load_image(path: tf.Tensor, image_size: int) -> tf.Tensor:
    """Reads a JPEG/PNG/GIF/BMP file -> ``float32 [S, S, 3]`` RGB in 0..255."""
    return decode_image(tf.io.read_file(path), image_size)


def image_dataset(
    paths: Sequence[str], image_size: int, batch_size: int
) -> tf.data.Dataset:
    """Batches of decoded images, decoded in parallel, in ``paths`` order."""
    ds = tf.data.Dataset.from_tensor_slices(tf.constant(list(paths), tf.string))
    ds = ds.map(
        lambda p: load_image(p, image_size),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
