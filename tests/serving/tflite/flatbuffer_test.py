"""Reading a ``.tflite`` flatbuffer: ops, interface and storage types."""

import keras
import pytest

from vse_tf import text as text_lib
from vse_tf.models.text_tower import LSTMTextTower
from vse_tf.serving.tflite import convert, flatbuffer
from vse_tf.serving.tflite import quantize as quantize_lib

pytest.importorskip(
    "ai_edge_litert", reason='needs the LiteRT interpreter: pip install "vse_tf[lite]"'
)


@pytest.fixture(scope="module")
def text_model():
    """An untrained LSTM text tower (D=8, L=6), converted to float32 TFLite."""
    keras.utils.set_random_seed(0)
    vocabulary = text_lib.Vocabulary(["a", "dog", "runs", "on", "grass"]).tokens
    tower = LSTMTextTower(vocabulary, embed_dim=8, word_dim=4, max_length=6)
    return convert.convert_text_tower(tower)


def test_describe_model_reads_the_interface(text_model, tmp_path):
    path = tmp_path / "text.tflite"
    path.write_bytes(text_model)
    described = flatbuffer.describe_model(str(path))
    assert described == flatbuffer.describe_model(text_model)
    assert described["signature"] == convert.TOKENS_SIGNATURE
    token_ids = described["inputs"]["token_ids"]
    assert (token_ids["shape"], token_ids["dtype"]) == ([-1, 6], "int32")
    embedding = described["outputs"][convert.OUTPUT_NAME]
    assert (embedding["shape"], embedding["dtype"]) == ([-1, 8], "float32")
    assert described["ops"] == flatbuffer.model_ops(text_model)
    assert described["custom_ops"] == flatbuffer.custom_ops(text_model) == []
    ops = flatbuffer.ops_and_outputs(text_model)
    assert {name for name, _ in ops} == set(described["ops"])


def test_describe_quantization_follows_dequantized_weights(text_model):
    # Float32: the LSTM's 2 kernels (shared by the unrolled steps, counted
    # once) and the embedding table; int32 token ids are no activation.
    described = flatbuffer.describe_quantization(text_model)
    assert described["weights"] == {"float32": {"GATHER": 1, "FULLY_CONNECTED": 2}}
    assert described["activations"] == ["float32"]
    assert described["dequantize_weights"] == 0
    # int8-stored kernels are found behind their DEQUANTIZE, which is not
    # counted as an op; the ops compute into the same types as before.
    quantized = quantize_lib.quantize_weights_int8(text_model, ("FULLY_CONNECTED",))
    assert "DEQUANTIZE" in flatbuffer.model_ops(quantized)
    int8_described = flatbuffer.describe_quantization(quantized)
    assert int8_described["weights"] == {
        "int8": {"FULLY_CONNECTED": 2},
        "float32": {"GATHER": 1},
    }
    assert int8_described["activations"] == ["float32"]
    assert int8_described["dequantize_weights"] == 2
    assert int8_described["ops_by_output_type"] == described["ops_by_output_type"]
