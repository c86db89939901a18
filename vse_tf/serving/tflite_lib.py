"""Compatibility names for `vse_tf.serving.tflite` (the TFLite export's old module).

The code lives in the package `vse_tf.serving.tflite`, one module a job:
`convert` (towers -> ``.tflite``), `quantize` (int8 recipes), `flatbuffer`
(inspection), `runner` (`TFLiteTower`), `manifest` (file names,
``manifest.json``) and `export` (a workdir -> all of it). Its docstrings
hold what this module's did.
"""

from __future__ import annotations

from vse_tf.serving.tflite.convert import (
    IMAGE_SIGNATURE,
    NUM_BIAS_CORRECTION_IMAGES,
    OUTPUT_NAME,
    QUANTIZE_MODES,
    STRINGS_SIGNATURE,
    TOKENS_SIGNATURE,
    convert_image_tower,
    convert_text_tower,
    convert_text_tower_strings,
)
from vse_tf.serving.tflite.export import export_tflite, representative_data
from vse_tf.serving.tflite.flatbuffer import (
    ModelSource,
    custom_ops,
    describe_model,
    describe_quantization,
    model_ops,
)
from vse_tf.serving.tflite.flatbuffer import op_name_t as _op_name  # noqa: F401
from vse_tf.serving.tflite.flatbuffer import (  # noqa: F401
    ops_and_outputs as _ops_and_outputs,
)
from vse_tf.serving.tflite.manifest import (
    IMAGE_FILE,
    MANIFEST_FILE,
    MANIFEST_VERSION,
    STRINGS_FILE,
    TEXT_FILE,
    VOCAB_FILE,
    build_manifest,
    quantization_note,
    sha256,
)
from vse_tf.serving.tflite.quantize import (
    int8_float_nodes,
    int8_requantization_mismatches,
    quantize_weights_int8,
)
from vse_tf.serving.tflite.runner import (
    TFTEXT_CUSTOM_OPS,
    TFTEXT_REGISTRAR,
    TFLiteTower,
    run_tflite,
)

__all__ = [
    "IMAGE_FILE",
    "IMAGE_SIGNATURE",
    "MANIFEST_FILE",
    "MANIFEST_VERSION",
    "NUM_BIAS_CORRECTION_IMAGES",
    "OUTPUT_NAME",
    "QUANTIZE_MODES",
    "STRINGS_FILE",
    "STRINGS_SIGNATURE",
    "TEXT_FILE",
    "TFTEXT_CUSTOM_OPS",
    "TFTEXT_REGISTRAR",
    "TOKENS_SIGNATURE",
    "VOCAB_FILE",
    "ModelSource",
    "TFLiteTower",
    "build_manifest",
    "convert_image_tower",
    "convert_text_tower",
    "convert_text_tower_strings",
    "custom_ops",
    "describe_model",
    "describe_quantization",
    "export_tflite",
    "int8_float_nodes",
    "int8_requantization_mismatches",
    "model_ops",
    "quantization_note",
    "quantize_weights_int8",
    "representative_data",
    "run_tflite",
    "sha256",
]
