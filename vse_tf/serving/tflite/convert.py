"""Conversion of the Keras image and text towers to ``.tflite`` flatbuffers.

Traps this module works around:

* Converting a concrete function, or a SavedModel of a plain ``tf.Module``,
  leaves the Keras variables unfrozen and the model silently returns NaN.
  Every model here is converted from a ``keras.export.ExportArchive``
  SavedModel.
* The Keras 3 LSTM lowers to a ``While`` loop with TensorList ops unless it
  is unrolled; it is unrolled (fixed ``L``) only while tracing.
* A full-integer text tower can fail inside the default XNNPACK delegate
  at its first invoke ("failed to prepare"; seen with D=256, not with
  D=16); `vse_tf.serving.tflite.runner.TFLiteTower` then rebuilds the
  interpreter without default delegates and retries.
* Both text models' ``int8`` is the ``dynamic`` recipe (int8 LSTM weights,
  float32 activations). The converter cannot calibrate a model with a
  string input (its calibrator has no tensorflow-text kernels: "Failed to
  initialize op resolver for calibration"); and the full-integer token-id
  model missed the parity bar (mean cosine 0.9945 on the demo model, 0.980
  on a short-trained Flickr8k one, against >= 0.99), while the dynamic one
  keeps min >= 0.999. The text tower is a small share of a phone's work
  (one LSTM over ~12 words), so its integer speed-up is not worth the
  error.

What ``dynamic`` and ``int8`` make of each tower, and why, is in the
docstring of `vse_tf.serving.tflite.quantize`.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Optional

import keras
import numpy as np
import tensorflow as tf

from vse_tf.models import catalog as backbone_catalog
from vse_tf.models.image_tower import ImageTower
from vse_tf.models.text_tower import LSTMTextTower
from vse_tf.serving.tflite import quantize as quantize_lib

QUANTIZE_MODES = ("none", "float16", "dynamic", "int8")

IMAGE_SIGNATURE = "encode_image"
TOKENS_SIGNATURE = "encode_tokens"
STRINGS_SIGNATURE = "encode_text"
OUTPUT_NAME = "embedding"

# Ops the image and text towers keep float32 under ``dynamic``: W_emb is the
# image tower's FULLY_CONNECTED; the text tower's FULLY_CONNECTEDs are the
# LSTM kernels (its embedding table is a GATHER, never touched).
_DYNAMIC_IMAGE_OPS = ("CONV_2D",)
_DYNAMIC_TEXT_OPS = ("FULLY_CONNECTED",)
# Calibration images for the image tower's bias correction.
NUM_BIAS_CORRECTION_IMAGES = 64
# EfficientNet-Lite ``dynamic``: the 8 convs of the stem and stages 1-3 keep
# float32 weights (0.05 MB). With every conv int8, a few Flickr8k dev photos
# fell to cosine 0.989; with these 8 float the min over all 1,000 was 0.9992.
_LITE_DYNAMIC_FLOAT_CONVS = 8


def check_quantize(quantize: str) -> None:
    """Raises ValueError unless ``quantize`` is one of `QUANTIZE_MODES`."""
    if quantize not in QUANTIZE_MODES:
        raise ValueError(f"quantize must be one of {QUANTIZE_MODES}, got {quantize!r}")


def text_quantize(quantize: str) -> str:
    """The recipe the text towers get for ``quantize`` (``int8`` is ``dynamic``)."""
    return "dynamic" if quantize == "int8" else quantize


@contextlib.contextmanager
def _unrolled(text_tower: LSTMTextTower) -> Iterator[None]:
    """Unrolls the tower's recurrent layers while tracing (builtins only).

    Restores their setting afterwards.
    """
    layers = text_tower.directions
    previous = [layer.unroll for layer in layers]
    for layer in layers:
        layer.unroll = True
    try:
        yield
    finally:
        for layer, unroll in zip(layers, previous):
            layer.unroll = unroll


def _token_model(text_tower: LSTMTextTower) -> keras.Model:
    """A functional ``int32 [N, L] -> [N, D]`` model around `encode_tokens`."""
    token_ids = keras.Input((text_tower.max_length,), dtype="int32", name="token_ids")
    return keras.Model(
        token_ids, text_tower.encode_tokens(token_ids), name="text_tokens"
    )


def _representative(
    name: str, examples: Optional[np.ndarray]
) -> Callable[[], Iterator[list[np.ndarray]]]:
    if examples is None or len(examples) == 0:
        raise ValueError(f"quantize='int8' needs {name} (real training examples)")
    examples = np.asarray(examples)

    def generate() -> Iterator[list[np.ndarray]]:
        for example in examples:
            yield [example[None]]

    return generate


def _dynamic_float_convs(backbone: str) -> int:
    return 0 if backbone == backbone_catalog.VGG16 else _LITE_DYNAMIC_FLOAT_CONVS


def _converter(
    path: str, signature: str, quantize: str, representative, allow_custom_ops: bool
) -> tf.lite.TFLiteConverter:
    """A converter of the SavedModel at ``path``, set up for ``quantize``."""
    converter = tf.lite.TFLiteConverter.from_saved_model(
        path, signature_keys=[signature]
    )
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    converter.allow_custom_ops = allow_custom_ops
    if quantize in ("float16", "int8"):
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]
    elif quantize == "int8":
        converter.representative_dataset = representative
    return converter


def _convert(
    trackables: Sequence[Any],
    signature: str,
    fn: Callable,
    input_spec: tf.TensorSpec,
    quantize: str,
    representative: Optional[Callable[[], Iterator[list[np.ndarray]]]] = None,
    allow_custom_ops: bool = False,
    int8_weight_ops: Sequence[str] = (),
    bias_correction: Optional[np.ndarray] = None,
    int8_float_nodes: Optional[Callable[[bytes], list[str]]] = None,
    dynamic_float_first: int = 0,
) -> bytes:
    """Writes an ExportArchive SavedModel of ``fn`` and converts it.

    Args:
        trackables: Keras layers/models whose variables ``fn`` uses.
        signature: Signature (and endpoint) name.
        fn: One-argument function returning ``{"embedding": [N, D]}``.
        input_spec: Its input.
        quantize: One of `QUANTIZE_MODES`.
        representative: Calibration data generator (``int8`` only).
        allow_custom_ops: Keep non-builtin ops as custom ops (tf_text).
        int8_weight_ops: ``dynamic``, and ``int8`` with
            ``int8_float_nodes``: the op types whose float32 weights
            `quantize.quantize_weights_int8` stores as int8.
        bias_correction: Model inputs for that bias correction (None: none).
        int8_float_nodes: ``int8`` only: maps the calibrated float model
            (``.tflite`` bytes) to the names of the nodes to keep float32
            (selective quantisation); None quantises all it can.
        dynamic_float_first: ``dynamic`` only: the first N of those ops keep
            float32 weights.

    Returns:
        The ``.tflite`` flatbuffer.
    """
    archive = keras.export.ExportArchive()
    for trackable in trackables:
        archive.track(trackable)
    archive.add_endpoint(signature, fn, input_signature=[input_spec])
    selective = quantize == "int8" and int8_float_nodes is not None
    with tempfile.TemporaryDirectory(prefix="vse_tflite_") as tmp:
        path = os.path.join(tmp, "saved_model")
        archive.write_out(path, verbose=False)
        converter = _converter(
            path, signature, quantize, representative, allow_custom_ops
        )
        if selective:
            content = quantize_lib.selective_int8(
                converter, representative, int8_float_nodes
            )
        else:
            content = converter.convert()
    if quantize == "dynamic" or selective:
        content = quantize_lib.quantize_weights_int8(
            content,
            int8_weight_ops,
            bias_correction,
            skip_first=dynamic_float_first if quantize == "dynamic" else 0,
        )
    if quantize == "int8":
        _check_requantization(content)
    return content


def _check_requantization(content: bytes) -> None:
    """Raises if an int8 data-movement op would give wrong outputs."""
    mismatches = quantize_lib.int8_requantization_mismatches(content)
    if mismatches:
        raise ValueError(
            "the converter gave these int8 ops an output scale/zero point "
            "other than their input's, which their kernels do not "
            f"requantise (wrong outputs): {mismatches}"
        )


def convert_image_tower(
    image_tower: ImageTower,
    quantize: str = "none",
    representative_images: Optional[np.ndarray] = None,
) -> bytes:
    """Converts the image tower (CNN + preprocessing + W_emb).

    Args:
        image_tower: A tower built with its backbone.
        quantize: ``none|float16|dynamic|int8``. ``dynamic``: int8 weights
            for the conv layers (`quantize.quantize_weights_int8`; VGG16:
            all 13; EfficientNet-Lite: all 1x1/3x3 convs but the 8 of the
            stem and stages 1-3; depthwise kernels float32), ``W_emb``
            float32. ``int8``: int8 weights and activations for every conv
            but the last (VGG16: the first 12 convs and 4 max-pools; Lite:
            stem, every block); preprocessing, the last conv
            (``block5_conv3`` or Lite's ``head_conv``, with int8-stored
            weights) and the head in float32 (`quantize.int8_float_nodes`
            and the `quantize` module doc say why).
        representative_images: ``float32 [K, S, S, 3]`` real RGB 0..255
            training images: ``int8`` calibration (required), and bias
            correction of the convs computed in float32 from int8 weights on
            the first `NUM_BIAS_CORRECTION_IMAGES` (``dynamic``: optional,
            but without it the error is about twice as large).

    Returns:
        ``.tflite`` bytes; signature ``encode_image``:
        ``pixels float32 [N, S, S, 3]`` -> ``embedding float32 [N, D]``.
    """
    check_quantize(quantize)
    if image_tower.backbone is None:
        raise ValueError(
            "the image tower has no CNN backbone (precomputed features?); "
            "only a tower built with include_backbone=True can be exported"
        )
    size = image_tower.image_size

    def encode_image(pixels):
        return {OUTPUT_NAME: image_tower(pixels, training=False)}

    return _convert(
        [image_tower],
        IMAGE_SIGNATURE,
        encode_image,
        tf.TensorSpec([None, size, size, 3], tf.float32, name="pixels"),
        quantize,
        _representative("representative_images", representative_images)
        if quantize == "int8"
        else None,
        int8_weight_ops=_DYNAMIC_IMAGE_OPS,
        bias_correction=None
        if representative_images is None
        else np.asarray(representative_images)[:NUM_BIAS_CORRECTION_IMAGES],
        int8_float_nodes=quantize_lib.int8_float_nodes if quantize == "int8" else None,
        dynamic_float_first=_dynamic_float_convs(image_tower.backbone_name),
    )


def _convert_text(
    text_tower: LSTMTextTower,
    quantize: str,
    signature: str,
    input_spec: tf.TensorSpec,
    tokenizer: Optional[Callable[[tf.Tensor], tf.Tensor]] = None,
) -> bytes:
    """Converts the unrolled token model, fed ``tokenizer(inputs)`` if given.

    Args:
        text_tower: The trained tower.
        quantize: One of `QUANTIZE_MODES` (``int8``: `text_quantize`).
        signature: Signature name.
        input_spec: ``int32 [N, L]`` token ids, or ``string [N]`` sentences
            with ``tokenizer`` (then kept as tensorflow-text custom ops).
        tokenizer: Sentences ``[N]`` -> token ids ``[N, L]``, inside the
            model; None when the input is token ids.

    Returns:
        The ``.tflite`` bytes.
    """
    check_quantize(quantize)
    with _unrolled(text_tower):
        model = _token_model(text_tower)

        def encode(inputs):
            token_ids = inputs if tokenizer is None else tokenizer(inputs)
            return {OUTPUT_NAME: model(token_ids, training=False)}

        return _convert(
            [model],
            signature,
            encode,
            input_spec,
            text_quantize(quantize),
            allow_custom_ops=tokenizer is not None,
            int8_weight_ops=_DYNAMIC_TEXT_OPS,
        )


def convert_text_tower(
    text_tower: LSTMTextTower,
    quantize: str = "none",
    representative_token_ids: Optional[np.ndarray] = None,
) -> bytes:
    """Converts the text tower from token ids, with TFLite builtin ops only.

    Args:
        text_tower: The trained tower.
        quantize: ``none|float16|dynamic|int8``. ``dynamic``: int8 weights
            for the LSTM kernels (`quantize.quantize_weights_int8`); the
            embedding table stays float32.
        representative_token_ids: Unused (``int8`` is the ``dynamic``
            recipe for text, see the module docstring); accepted so all
            converters share one call shape.

    Returns:
        ``.tflite`` bytes; signature ``encode_tokens``:
        ``token_ids int32 [N, L]`` (0-padded) -> ``embedding float32 [N, D]``.
    """
    del representative_token_ids
    return _convert_text(
        text_tower,
        quantize,
        TOKENS_SIGNATURE,
        tf.TensorSpec([None, text_tower.max_length], tf.int32, name="token_ids"),
    )


def convert_text_tower_strings(
    text_tower: LSTMTextTower,
    quantize: str = "none",
    representative_token_ids: Optional[np.ndarray] = None,
) -> bytes:
    """Converts the text tower from raw sentences (tf_text custom ops inside).

    The model holds the tokenizer (``FastBertNormalize`` and an end-to-end
    ``FastWordpieceTokenize`` over the vocabulary plus punctuation) and the
    builtin-only padding of `vse_tf.text.pad_word_ids`, then the same
    unrolled LSTM as `convert_text_tower`.

    Args:
        text_tower: The trained tower.
        quantize: ``none|float16|dynamic|int8``. The converter cannot
            calibrate a string-input model (its calibrator lacks the
            tensorflow-text kernels), so ``int8`` quantises the weights
            only, as ``dynamic`` does; the manifest says so.
        representative_token_ids: Unused; accepted so all converters share
            one call shape.

    Returns:
        ``.tflite`` bytes; signature ``encode_text``:
        ``sentences string [N]`` -> ``embedding float32 [N, D]``.
    """
    del representative_token_ids
    return _convert_text(
        text_tower,
        quantize,
        STRINGS_SIGNATURE,
        tf.TensorSpec([None], tf.string, name="sentences"),
        tokenizer=text_tower.tokenizer,
    )
