"""The TFLite export's file names and its ``manifest.json`` (hashes, interfaces)."""

from __future__ import annotations

import hashlib
from typing import Any, Optional

from vse_tf import text as text_lib
from vse_tf.models import backbone as backbone_lib
from vse_tf.models import catalog as backbone_catalog
from vse_tf.models.image_tower import ImageTower
from vse_tf.models.text_tower import LSTMTextTower
from vse_tf.serving.tflite import convert, flatbuffer, runner

MANIFEST_VERSION = 2

IMAGE_FILE = "image_tower.tflite"
TEXT_FILE = "text_tower.tflite"
STRINGS_FILE = "text_tower_strings.tflite"
VOCAB_FILE = "vocab.txt"
MANIFEST_FILE = "manifest.json"


def sha256(data: bytes) -> str:
    """Hex SHA-256 of some bytes."""
    return hashlib.sha256(data).hexdigest()


def file_quantize(name: str, quantize: str) -> str:
    """The recipe file ``name`` got for ``quantize`` (text towers: int8 is dynamic)."""
    if name in (STRINGS_FILE, TEXT_FILE):
        return convert.text_quantize(quantize)
    return quantize


def quantization_note(
    name: str, quantize: str, bias_corrected: bool = False, backbone: str = "vgg16"
) -> str:
    """One sentence saying what ``quantize`` made of file ``name``."""
    quantize = file_quantize(name, quantize)
    image = name == IMAGE_FILE
    if quantize == "none":
        return "float32 weights and activations"
    if quantize == "float16":
        return "float16 weights, dequantised to float32 at load; float32 activations"
    lite = backbone != backbone_catalog.VGG16
    if quantize == "dynamic":
        if image:
            return _dynamic_image_note(backbone, lite, bias_corrected)
        return (
            "int8 weights (symmetric, per output channel) for the LSTM input "
            "and recurrent kernels, dequantised to float32 inside the model "
            "(DEQUANTIZE ops on constants); word embeddings, LSTM bias, the L2 "
            "norm and every activation float32"
        )
    if image:
        return _int8_image_note(backbone, lite)
    return (
        "full-integer post-training quantisation (TFLite converter, "
        "Optimize.DEFAULT + representative training data): int8 weights and "
        "int8 activations where the converter supports it, float32 input and "
        "output"
    )


def _dynamic_image_note(backbone: str, lite: bool, bias_corrected: bool) -> str:
    """`quantization_note` of a ``dynamic`` image tower."""
    convs = (
        f"the {backbone} 1x1/3x3 convs after stage 3 (the stem, stages "
        "1-3 and the depthwise kernels keep float32 weights)"
        if lite
        else "the 13 VGG16 conv layers"
    )
    return (
        f"int8 weights (symmetric, per output channel) for {convs}, "
        "dequantised to float32 inside the model "
        "(DEQUANTIZE ops on constants); W_emb, the L2 norms and every "
        "activation float32"
        + (
            "; conv biases bias-corrected for the int8 weights' mean "
            "error on training images"
            if bias_corrected
            else ""
        )
    )


def _int8_image_note(backbone: str, lite: bool) -> str:
    """`quantization_note` of an ``int8`` (selective full-integer) image tower."""
    if lite:
        return (
            "selective full-integer post-training quantisation (TFLite "
            "converter, Optimize.DEFAULT + representative training images, "
            f"QuantizationDebugger denylisted nodes): the {backbone} stem and "
            "every block in int8 (int8 weights per output channel, int8 "
            "activations per tensor; ReLU6 bounds them); float32: the "
            "preprocessing ((rgb - 127) / 128), head_conv (computed in float32 "
            "from int8 weights, DEQUANTIZE on constants) and the head (global "
            "pooling, feature L2, W_emb, embedding L2); float32 input and output"
        )
    return (
        "selective full-integer post-training quantisation (TFLite "
        "converter, Optimize.DEFAULT + representative training images, "
        "QuantizationDebugger denylisted nodes): the first 12 VGG16 convs "
        "and 4 max-pools in int8 (int8 weights per output channel, int8 "
        "activations per tensor); float32: the preprocessing (RGB->BGR "
        "flip, mean subtraction: the converter mis-scales an int8 "
        "REVERSE_V2), block5_conv3 (computed in float32 from int8 weights, "
        "DEQUANTIZE on constants, bias-corrected: its int8 output range "
        "cost most of the error) and the head (pool5, global average, "
        "feature L2, W_emb, embedding L2); float32 input and output"
    )


def _file_entry(
    name: str, data: bytes, quantize: str, bias_corrected: bool, backbone: str
) -> dict[str, Any]:
    """The manifest entry of one file: hash, size; for a model its interface."""
    entry: dict[str, Any] = {"sha256": sha256(data), "size_bytes": len(data)}
    if not name.endswith(".tflite"):
        return entry
    entry.update(flatbuffer.describe_model(data))
    entry["quantize"] = file_quantize(name, quantize)
    if name == STRINGS_FILE:
        entry["custom_op_registerers"] = runner.TFTEXT_REGISTRAR
    entry["quantization"] = {
        "summary": quantization_note(
            name, quantize, bias_corrected and name == IMAGE_FILE, backbone
        ),
        **flatbuffer.describe_quantization(data),
    }
    return entry


def _preprocessing_manifest(backbone: str) -> dict[str, Any]:
    if backbone == backbone_catalog.VGG16:
        return {
            "in_model": "RGB -> BGR, then subtract the Caffe/VGG BGR means",
            "bgr_mean": list(backbone_lib._BGR_MEAN),
        }
    return {"in_model": "(rgb - 127) / 128", "mean": 127.0, "std": 128.0}


def _image_preprocessing(image_tower: ImageTower) -> dict[str, Any]:
    """The manifest's ``image_preprocessing``: what the caller and model do."""
    size = image_tower.image_size
    return {
        "input": (
            f"float32 [N, {size}, {size}, 3] RGB in 0..255, decoded and "
            f"resized to {size}x{size} by the caller (vse_tf.images."
            "load_image: bilinear, antialias=True, clipped to 0..255)"
        ),
        **_preprocessing_manifest(image_tower.backbone_name),
        "backbone": f"{image_tower.backbone_name} {image_tower.image_feature}, "
        f"weights={image_tower.backbone_weights}, feature_norm="
        f"{image_tower.feature_norm}",
    }


def _tokenizer_manifest(text_tower: LSTMTextTower) -> dict[str, Any]:
    """The manifest's ``tokenizer``: the rules that turn a sentence into ids."""
    return {
        "vocab_file": VOCAB_FILE,
        "vocab_size": len(text_tower.vocabulary),
        "pad_id": text_lib.PAD_ID,
        "oov_id": text_lib.OOV_ID,
        "max_length": int(text_tower.max_length),
        "steps": [
            "FastBertNormalizer(lower_case_nfd_strip_accents=True): NFKC, "
            "case fold, accents stripped, control chars -> space",
            "split on whitespace and punctuation (Unicode P* and "
            f"{text_lib.ASCII_SYMBOL_PUNCTUATION}); punctuation dropped; "
            "each CJK ideograph is a word",
            "look words up in vocab.txt (line number = id); unknown -> 1",
            f"keep the first {text_tower.max_length} words, pad with 0; "
            "a sentence with no words is [1, 0, ...]",
        ],
        "reference": "vse_tf.text.Vocabulary.encode (Python), "
        "vse_tf.text.SentenceTokenizer (graph)",
        "in_strings_model": "FastWordpieceTokenize end-to-end over "
        "vocab.txt + every punctuation character (suffix '##', unknown "
        "'<unk>'), punctuation ids dropped",
    }


def build_manifest(
    files: dict[str, bytes],
    image_tower: ImageTower,
    text_tower: LSTMTextTower,
    quantize: str,
    source: Optional[dict[str, Any]] = None,
    bias_corrected: bool = False,
) -> dict[str, Any]:
    """The ``manifest.json`` of an export: sizes, hashes and interfaces.

    Args:
        files: File name -> contents (the ``.tflite`` models and vocab).
        image_tower: The exported image tower.
        text_tower: The exported text tower.
        quantize: The quantisation requested.
        source: Where the weights came from (workdir, checkpoint).
        bias_corrected: Whether the ``dynamic`` image tower's conv biases
            were bias-corrected (`quantize.quantize_weights_int8`).

    Returns:
        A JSON-serialisable dict; each ``.tflite`` entry has a
        ``quantization`` block (`quantization_note` and
        `flatbuffer.describe_quantization`).
    """
    size = image_tower.image_size
    entries = {
        name: _file_entry(
            name, data, quantize, bias_corrected, image_tower.backbone_name
        )
        for name, data in sorted(files.items())
    }
    return {
        "format_version": MANIFEST_VERSION,
        "embed_dim": int(image_tower.embed_dim),
        "max_length": int(text_tower.max_length),
        "image_size": [int(size), int(size)],
        "quantize": quantize,
        "similarity": "dot product of the (unit-norm) image and text embeddings",
        "image_preprocessing": _image_preprocessing(image_tower),
        "tokenizer": _tokenizer_manifest(text_tower),
        "files": entries,
        "source": source or {},
    }
