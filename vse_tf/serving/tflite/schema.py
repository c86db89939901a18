"""The TFLite flatbuffer schema: the one place that imports TensorFlow's copy.

The ``.tflite`` format is a flatbuffer whose Python classes (the read-only
``Model`` accessors and the mutable ``ModelT`` object API) TensorFlow ships
as ``tensorflow.lite.python.schema_py_generated``, a module outside its
public API. No public package does the job: the PyPI ``tflite`` package
(2.18.0) has the accessors but no object API (no ``ModelT``, no ``Pack``),
so it cannot rewrite a model; LiteRT's ``ai_edge_litert.schema_py_generated``
is just as undocumented, and LiteRT is an optional extra while the int8
rewrite runs at every export. So this module imports TensorFlow's schema
(a core dependency, pinned to one minor version) and nothing else private:
`read_model_object` and `write_model_object` replace
``tensorflow.lite.tools.flatbuffer_utils``. If TensorFlow moves the module,
`schema` raises one ImportError that says so (``tests/serving/tflite/
schema_test.py`` checks it is importable and has what we use).
"""

from __future__ import annotations

import functools
import importlib
import sys
from types import ModuleType

import flatbuffers  # a TensorFlow dependency; the schema module's own

SCHEMA_MODULE = "tensorflow.lite.python.schema_py_generated"
# What vse_tf uses of the schema module.
REQUIRED_NAMES = (
    "BuiltinOperator",
    "Model",
    "ModelT",
    "OperatorCodeT",
    "OperatorT",
    "Padding",
    "QuantizationParametersT",
    "TensorT",
    "TensorType",
)
# The file identifier of a ``.tflite`` flatbuffer (bytes 4..8).
FILE_IDENTIFIER = b"TFL3"


def _moved(detail: str) -> ImportError:
    """The error raised when TensorFlow's schema module is not what we use."""
    try:
        import tensorflow as tf

        version = tf.__version__
    except ImportError:  # pragma: no cover - TensorFlow is a core dependency
        version = "(not importable)"
    return ImportError(
        f"vse_tf reads .tflite files with TensorFlow's private module "
        f"{SCHEMA_MODULE}, which TensorFlow {version} {detail}; install the "
        f"TensorFlow version pyproject.toml pins or update "
        f"vse_tf/serving/tflite/schema.py."
    )


@functools.cache
def schema() -> ModuleType:
    """The TFLite flatbuffer schema module (from TensorFlow; no LiteRT needed).

    Raises:
        ImportError: TensorFlow no longer has the module, or it lacks a class
            vse_tf uses; the message names the module and TensorFlow version.
    """
    try:
        module = importlib.import_module(SCHEMA_MODULE)
    except ImportError as error:
        raise _moved("does not have") from error
    missing = [name for name in REQUIRED_NAMES if not hasattr(module, name)]
    if missing:
        raise _moved(f"ships without {', '.join(missing)}")
    return module


def _check_little_endian() -> None:
    if sys.byteorder != "little":  # pragma: no cover - no big-endian CI
        raise NotImplementedError(
            "rewriting a .tflite model needs a little-endian host "
            "(its buffers are stored little-endian)"
        )


def read_model_object(content: bytes):
    """A ``.tflite`` model as the schema's mutable object tree (a ``ModelT``).

    Buffers stored after the flatbuffer (models over 2 GB) are read into
    their ``data``, as TensorFlow's ``flatbuffer_utils`` does, so that
    `write_model_object` writes them inline.

    Args:
        content: The ``.tflite`` bytes.

    Returns:
        The ``ModelT``; edit it in place and write it with `write_model_object`.
    """
    _check_little_endian()
    fb = schema()
    content = bytearray(content)
    model = fb.ModelT.InitFromObj(fb.Model.GetRootAsModel(content, 0))
    for buffer in model.buffers or ():
        if buffer.offset:
            buffer.data = content[buffer.offset : buffer.offset + buffer.size]
            buffer.offset = buffer.size = 0
    for subgraph in model.subgraphs or ():
        for op in subgraph.operators or ():
            if op.largeCustomOptionsOffset:
                start = op.largeCustomOptionsOffset
                op.customOptions = content[start : start + op.largeCustomOptionsSize]
                op.largeCustomOptionsOffset = op.largeCustomOptionsSize = 0
    return model


def write_model_object(model) -> bytes:
    """The ``.tflite`` bytes of a ``ModelT`` (from `read_model_object`)."""
    _check_little_endian()
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=FILE_IDENTIFIER)
    return bytes(builder.Output())
