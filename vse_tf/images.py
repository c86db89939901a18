"""Image files -> pixels: the one decode and resize of training, features and serving.

Decoding is by content (`tf.io.decode_image` reads JPEG, PNG, GIF and BMP
whatever the file is named); the resize is bilinear with antialiasing to a
square (VGG sees the whole image).
"""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf


def resize_pixels(pixels: tf.Tensor, image_size: int) -> tf.Tensor:
    """``[..., H, W, 3]`` pixels -> ``float32 [..., S, S, 3]`` in 0..255.

    The one resize used everywhere (training, evaluation, serving): bilinear
    with antialiasing, aspect ratio not kept (VGG sees the whole image).
    """
    image = tf.image.resize(
        tf.cast(pixels, tf.float32), [image_size, image_size], antialias=True
    )
    return tf.clip_by_value(image, 0.0, 255.0)


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
