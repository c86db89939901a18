"""Image loading and cached VGG16 feature extraction.

With a frozen CNN the image features never change, so they are computed
once per (weights, feature, image size, precision, image list) and stored
under the cache directory; training epochs then never run VGG16.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from typing import Optional

import keras
import numpy as np
import tensorflow as tf

from vse_tf.models import backbone as backbone_lib

CACHE_FORMAT = 2
BF16_MIN_COSINE = 0.999


def default_cache_dir() -> str:
    """``$VSE_TF_CACHE``, else ``~/.cache/vse_tf``."""
    return os.environ.get(
        "VSE_TF_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "vse_tf")
    )


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


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    na = np.linalg.norm(a, axis=1)
    nb = np.linalg.norm(b, axis=1)
    return (a * b).sum(1) / np.maximum(na * nb, 1e-12)


def _inference_fn(model: keras.Model):
    return tf.function(lambda x: model(x, training=False), reduce_retracing=True)


def _cache_paths(cache_dir: str, key: dict, paths: Sequence[str]) -> tuple[str, str]:
    key_id = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    list_id = hashlib.sha256("\n".join(paths).encode()).hexdigest()[:16]
    folder = os.path.join(cache_dir, "features", key_id)
    return os.path.join(folder, f"{list_id}.npy"), os.path.join(
        folder, f"{list_id}.json"
    )


def extract_features(
    paths: Sequence[str],
    image_feature: str,
    image_size: int,
    vgg_weights: str,
    batch_size: int = 32,
    dtype: str = "mixed_bfloat16",
    cache_dir: Optional[str] = None,
    verbose: int = 1,
) -> np.ndarray:
    """VGG16 features of images, read from or written to the cache.

    Args:
        paths: ``[N]`` image files.
        image_feature: ``fc7`` or ``pool5``.
        image_size: Square input size.
        vgg_weights: ``imagenet|none|hed|PATH``.
        batch_size: Images per VGG16 call.
        dtype: ``mixed_bfloat16`` or ``float32``. With bf16 the first batch
            is also computed in float32; if any cosine similarity falls below
            0.999 the rest runs in float32.
        cache_dir: Cache root (default `default_cache_dir()`); ``""`` or
            None uses the default.
        verbose: 1 shows a progress bar.

    Returns:
        ``float32 [N, F]`` features.
    """
    if dtype not in ("mixed_bfloat16", "float32"):
        raise ValueError(
            f"extract dtype must be mixed_bfloat16 or float32, got {dtype}"
        )
    paths = [os.path.abspath(p) for p in paths]
    key = {
        "format": CACHE_FORMAT,
        "weights": backbone_lib.weights_fingerprint(vgg_weights),
        "feature": image_feature,
        "image_size": image_size,
        "dtype": dtype,
        "resize": "bilinear-antialias",
    }
    npy_path, manifest_path = _cache_paths(cache_dir or default_cache_dir(), key, paths)
    if os.path.exists(npy_path) and os.path.exists(manifest_path):
        features = np.load(npy_path)
        if features.shape[0] == len(paths):
            if verbose:
                logging.info("Features of %d images read from %s", len(paths), npy_path)
            return features
    start = time.time()
    model = backbone_lib.build_vgg16_backbone(
        image_feature, image_size, vgg_weights, dtype=dtype
    )
    run = _inference_fn(model)
    used_dtype = dtype
    chunks = []
    progbar = keras.utils.Progbar(len(paths), unit_name="image") if verbose else None
    for batch_index, images in enumerate(image_dataset(paths, image_size, batch_size)):
        out = run(images).numpy()
        if batch_index == 0 and dtype != "float32":
            reference = backbone_lib.build_vgg16_backbone(
                image_feature, image_size, vgg_weights
            )
            ref_out = reference(images, training=False).numpy()
            agreement = float(_cosine(out, ref_out).min())
            logging.info("bf16 vs float32 features: min cosine %.6f", agreement)
            if agreement < BF16_MIN_COSINE:
                logging.warning(
                    "bf16 features disagree with float32 (min cosine %.5f < %.3f); "
                    "extracting in float32",
                    agreement,
                    BF16_MIN_COSINE,
                )
                model, used_dtype, out = reference, "float32", ref_out
                run = _inference_fn(model)
        chunks.append(out.astype(np.float32))
        if progbar:
            progbar.add(len(out))
    features = (
        np.concatenate(chunks)
        if chunks
        else np.zeros([0, backbone_lib.FEATURE_DIMS[image_feature]], np.float32)
    )
    if not np.all(np.isfinite(features)):
        raise FloatingPointError("non-finite VGG16 features; check the weights")
    os.makedirs(os.path.dirname(npy_path), exist_ok=True)
    tmp = f"{npy_path}.tmp-{os.getpid()}.npy"
    np.save(tmp, features)
    os.replace(tmp, npy_path)
    manifest = dict(
        key,
        used_dtype=used_dtype,
        count=len(paths),
        first_image=paths[0] if paths else "",
        seconds=round(time.time() - start, 2),
    )
    tmp = f"{manifest_path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=2)
    os.replace(tmp, manifest_path)
    return features
