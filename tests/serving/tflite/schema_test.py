"""The TFLite schema access: TensorFlow's private module, isolated in one place.

No LiteRT needed: these run wherever TensorFlow does, so a TensorFlow
release that moves ``schema_py_generated`` fails here, by name.
"""

import pathlib
import sys
import types
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import vse_tf
from vse_tf.serving.tflite import flatbuffer, quantize, schema


@pytest.fixture
def fresh_schema():
    """`schema.schema` without its cached module, before and after the test."""
    schema.schema.cache_clear()
    yield schema.schema
    schema.schema.cache_clear()


@pytest.fixture(scope="module")
def dense_model():
    """``(.tflite bytes of one Dense(3) layer on [N, 4], a float input)``."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    x = np.random.default_rng(0).normal(size=(2, 4)).astype(np.float32)
    return converter.convert(), x


def _run(content: bytes, x: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tf.lite.Interpreter is deprecated
        interpreter = tf.lite.Interpreter(model_content=content)
    index = interpreter.get_input_details()[0]["index"]
    interpreter.resize_tensor_input(index, x.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(index, x)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


def test_schema_has_what_vse_tf_uses(fresh_schema):
    fb = fresh_schema()
    assert fb.__name__ == schema.SCHEMA_MODULE
    for name in schema.REQUIRED_NAMES:
        assert hasattr(fb, name), name
    for op in ("CONV_2D", "FULLY_CONNECTED", "DEPTHWISE_CONV_2D", "GATHER"):
        assert isinstance(getattr(fb.BuiltinOperator, op), int), op
    assert {"float32", "int8", "int32"} <= set(flatbuffer.tensor_types().values())
    assert set(flatbuffer.WEIGHT_INPUT) <= set(flatbuffer.builtin_names().values())


def test_a_moved_schema_module_raises_one_clear_sentence(fresh_schema, monkeypatch):
    monkeypatch.setitem(sys.modules, schema.SCHEMA_MODULE, None)  # "not found"
    with pytest.raises(ImportError) as raised:
        fresh_schema()
    message = str(raised.value)
    assert schema.SCHEMA_MODULE in message
    assert f"TensorFlow {tf.__version__} does not have" in message
    assert "\n" not in message and message.endswith(".")
    assert ". " not in message  # one sentence


def test_a_schema_module_without_a_class_names_it(fresh_schema, monkeypatch):
    stripped = types.ModuleType(schema.SCHEMA_MODULE)
    stripped.Model = object
    monkeypatch.setitem(sys.modules, schema.SCHEMA_MODULE, stripped)
    with pytest.raises(ImportError, match=r"ships without BuiltinOperator, ModelT"):
        fresh_schema()


def test_only_schema_py_imports_tensorflow_lite_internals():
    root = pathlib.Path(vse_tf.__file__).parent
    private = (
        "schema_py_generated",
        "flatbuffer_utils",
        "tensorflow.lite.python",
        "tensorflow.lite.tools",
    )
    offenders = [
        str(path.relative_to(root))
        for path in root.rglob("*.py")
        if path.name != "schema.py" or path.parent.name != "tflite"
        if any(name in path.read_text() for name in private)
    ]
    assert offenders == []


def test_round_trip_keeps_the_model(dense_model):
    content, x = dense_model
    model = schema.read_model_object(content)
    assert model.subgraphs and model.buffers
    written = schema.write_model_object(model)
    assert written[4:8] == schema.FILE_IDENTIFIER
    assert flatbuffer.describe_model(written) == flatbuffer.describe_model(content)
    np.testing.assert_array_equal(_run(written, x), _run(content, x))


def test_int8_weights_need_no_litert(dense_model):
    # The export's weight rewrite goes through the object API only.
    content, x = dense_model
    quantized = quantize.quantize_weights_int8(content, ("FULLY_CONNECTED",))
    described = flatbuffer.describe_quantization(quantized)
    assert described["weights"] == {"int8": {"FULLY_CONNECTED": 1}}
    assert described["dequantize_weights"] == 1
    np.testing.assert_allclose(_run(quantized, x), _run(content, x), atol=0.02)
