"""The int8 recipes: int8 weight storage, bias correction, selective int8."""

import numpy as np
import pytest

from vse_tf.serving.tflite import flatbuffer, runner, schema
from vse_tf.serving.tflite import manifest as manifest_lib
from vse_tf.serving.tflite import quantize as quantize_lib

pytest.importorskip(
    "ai_edge_litert", reason='needs the LiteRT interpreter: pip install "vse_tf[lite]"'
)


@pytest.mark.slow(
    reason="converts the trained towers with int8 weights or int8 activations "
    "(8-13 s each)"
)
def test_dynamic_stores_int8_weights_and_says_so(exported):
    none, _ = exported("none")
    files, manifest = exported("dynamic")
    image = manifest["files"][manifest_lib.IMAGE_FILE]["quantization"]
    # The 13 convs' weights are int8, W_emb stays float32, compute is float.
    assert image["weights"] == {
        "int8": {"CONV_2D": 13},
        "float32": {"FULLY_CONNECTED": 1},
    }
    assert image["activations"] == ["float32"]
    assert image["dequantize_weights"] == 13
    assert "bias-corrected" in image["summary"]
    for name in (manifest_lib.TEXT_FILE, manifest_lib.STRINGS_FILE):
        text = manifest["files"][name]["quantization"]
        # LSTM input + recurrent kernels int8; the embedding table float32.
        assert text["weights"] == {
            "int8": {"FULLY_CONNECTED": 2},
            "float32": {"GATHER": 1},
        }, name
        assert text["activations"] == ["float32"]
    # A real size cut: the conv weights dominate the image tower.
    ratio = len(files[manifest_lib.IMAGE_FILE]) / len(none[manifest_lib.IMAGE_FILE])
    assert ratio < 0.3, ratio
    float_manifest = exported("none")[1]["files"][manifest_lib.IMAGE_FILE]
    assert float_manifest["quantization"]["weights"] == {
        "float32": {"CONV_2D": 13, "FULLY_CONNECTED": 1}
    }


def test_quantize_weights_int8_bias_correction(exported, reference):
    # Corrected biases cancel the int8 weights' mean error on the
    # calibration images: the mean output error there is ~0.
    files, _ = exported("none")
    model = files[manifest_lib.IMAGE_FILE]
    images = reference["images"]
    plain = quantize_lib.quantize_weights_int8(model, ("CONV_2D",))
    corrected = quantize_lib.quantize_weights_int8(model, ("CONV_2D",), images)
    assert len(plain) == len(corrected)
    assert "DEQUANTIZE" in flatbuffer.model_ops(plain)
    expected = reference["image_emb"]
    got_plain = runner.run_tflite(plain, images)
    got_corrected = runner.run_tflite(corrected, images)
    assert (
        np.abs((got_corrected - expected).mean(0)).max()
        <= np.abs((got_plain - expected).mean(0)).max()
    )
    with pytest.raises(ValueError, match="GATHER"):
        quantize_lib.quantize_weights_int8(model, ("GATHER",))


@pytest.mark.slow(
    reason="converts the trained towers with int8 weights or int8 activations "
    "(8-13 s each)"
)
def test_int8_image_tower_keeps_only_its_ends_float(exported):
    files, manifest = exported("int8")
    image = manifest["files"][manifest_lib.IMAGE_FILE]["quantization"]
    ops = image["ops_by_output_type"]
    # The trunk's first 12 convs and 4 max-pools compute in int8 ...
    assert ops["int8"] == {"CONV_2D": 12, "MAX_POOL_2D": 4}
    # ... the preprocessing, block5_conv3, pool5 and the head in float32.
    assert ops["float32"]["CONV_2D"] == 1
    assert ops["float32"]["MAX_POOL_2D"] == 1
    for op in ("REVERSE_V2", "SUB", "MEAN", "FULLY_CONNECTED", "DIV"):
        assert op in ops["float32"], op
    # Every conv stores int8 weights (one dequantised to float); W_emb float.
    assert image["weights"] == {
        "int8": {"CONV_2D": 13},
        "float32": {"FULLY_CONNECTED": 1},
    }
    assert image["dequantize_weights"] == 1
    assert image["activations"] == ["float32", "int8"]
    assert "block5_conv3" in image["summary"] and "REVERSE_V2" in image["summary"]
    # About the dynamic variant's size: every conv weight is int8.
    dynamic = len(exported("dynamic")[0][manifest_lib.IMAGE_FILE])
    assert len(files[manifest_lib.IMAGE_FILE]) < 1.1 * dynamic


def test_int8_float_nodes_are_the_towers_ends(exported):
    files, _ = exported("none")
    model = files[manifest_lib.IMAGE_FILE]
    ops = flatbuffer.ops_and_outputs(model)  # (op, output name) in order
    convs = [i for i, (name, _) in enumerate(ops) if name == "CONV_2D"]
    assert len(convs) == 13
    chosen = quantize_lib.int8_float_nodes(model)
    # Everything before the first conv, the last conv and everything after.
    expected = ops[: convs[0]] + ops[convs[-1] :]
    assert chosen == [output for _, output in expected]
    kinds = [name for name, _ in expected]
    assert kinds[:2] == ["REVERSE_V2", "SUB"]
    assert kinds[2:4] == ["CONV_2D", "MAX_POOL_2D"] and kinds.count("CONV_2D") == 1
    assert {"MEAN", "FULLY_CONNECTED", "DIV"} <= set(kinds)
    with pytest.raises(ValueError, match="CONV_2D"):
        quantize_lib.int8_float_nodes(files[manifest_lib.TEXT_FILE])


@pytest.mark.slow(
    reason="converts the trained towers with int8 weights or int8 activations "
    "(8-13 s each)"
)
def test_int8_requantization_mismatches_finds_a_rescaled_copy(exported):
    # An int8 MAX_POOL_2D copies int8 values: give its output another scale
    # (what the converter did to the image tower's REVERSE_V2) and the check
    # must name it.
    files, _ = exported("int8")
    content = files[manifest_lib.IMAGE_FILE]
    assert quantize_lib.int8_requantization_mismatches(content) == []
    flat = schema.read_model_object(content)
    subgraph = flat.subgraphs[0]
    pools = [
        op
        for op in subgraph.operators
        if flatbuffer.op_name_t(flat, op) == "MAX_POOL_2D"
        and subgraph.tensors[op.outputs[0]].quantization.scale is not None
    ]
    output = subgraph.tensors[pools[0].outputs[0]]
    output.quantization.scale = [float(output.quantization.scale[0]) * 1.5]
    broken = schema.write_model_object(flat)
    found = quantize_lib.int8_requantization_mismatches(broken)
    assert len(found) == 1 and found[0].startswith("MAX_POOL_2D"), found


def test_skipped_weights_stay_float_for_every_op_sharing_them():
    """Two passes of the same convs (an image and its mirror) share their
    weight tensors: keeping the first conv's weights float32 keeps them so
    for both of its ops, and the second conv's become int8 for both."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    first = keras.layers.Conv2D(4, 3, padding="same")
    second = keras.layers.Conv2D(4, 1)
    pixels = keras.Input((8, 8, 3))
    mirrored = keras.ops.flip(pixels, axis=2)
    model = keras.Model(pixels, second(first(pixels)) + second(first(mirrored)))
    content = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    ops = [op for op, _ in flatbuffer.ops_and_outputs(content)]
    assert ops.count("CONV_2D") == 4  # each conv twice, on shared weights

    quantized = quantize_lib.quantize_weights_int8(content, ("CONV_2D",), skip_first=1)
    # One weight tensor per conv, each read by two ops.
    weights = flatbuffer.describe_quantization(quantized)["weights"]
    assert weights == {"float32": {"CONV_2D": 1}, "int8": {"CONV_2D": 1}}
    x = np.random.default_rng(0).uniform(-1, 1, (2, 8, 8, 3)).astype(np.float32)
    want = model(x).numpy()
    got = runner.run_tflite(quantized, x)
    assert np.abs(got - want).max() <= 0.02 * np.abs(want).max()
