"""The towers' int8 recipes: int8 weight storage, bias correction, selective int8.

What ``quantize="dynamic"`` produces (and why it is not the converter's
``Optimize.DEFAULT``): the converter's dynamic-range models use hybrid
kernels that also quantise activations on the fly, and quantise ``W_emb``
too (and the word embedding table, per tensor). On the trained demo model that
cost a min cosine of 0.948 (image) and 0.997 (text): ``W_emb`` maps
all-positive, L2-normalised pool5 features whose common component cancels,
which amplifies any error in its weights or input (int8 ``W_emb`` alone:
min 0.983), and the errors of the 13 hybrid convs add up (min 0.998).
`quantize_weights_int8` instead stores the weights of the conv layers (image)
and of the LSTM kernels (text) as int8, symmetric per output channel, and
dequantises them to float32 inside the model (``DEQUANTIZE`` ops on
constants, run once); every activation and op stays float32, and ``W_emb``,
the embedding table and the norms keep float32 weights. For the image tower
each conv bias also absorbs the mean output error its int8 weights cause on
the calibration images (bias correction, Nagel et al. 2019), which halves
the error: min cosine 0.9993 on the demo test split. Files are ~1/4 of
float32; latency and run-time memory are float32's.

What ``quantize="int8"`` makes of the image tower (and why it is not the
converter's plain full-integer model, which had a mean cosine of 0.899, min
0.32, on the demo test split). ``tf.lite.experimental.QuantizationDebugger``
showed two causes:

* A converter bug: the int8 ``REVERSE_V2`` of the RGB -> BGR flip got an
  output scale and zero point (1.45, -48) other than its input's (1.0,
  -128), but its int8 kernel copies bytes without requantising, so every
  pixel reached the first conv wrong (debugger RMSE: 45 quantisation steps
  at ``REVERSE_V2``, 35 at the mean subtraction, < 1 at every conv).
  `int8_requantization_mismatches` finds such ops; an ``int8`` export with
  one left raises.
* One activation range: ``block5_conv3``'s output (per-tensor int8, as
  TFLite activations are) spans 0..930 on the calibration images while its
  RMS is 12, so one int8 step is a third of a typical value. Its global
  average over a few pixels and ``W_emb`` (which cancels the common
  component of the all-positive features) amplify that error ~30-fold in
  ``1 - cosine``. Every other conv output quantised to int8 costs < 0.001
  of mean cosine together.

So `vse_tf.serving.tflite.convert.convert_image_tower(quantize="int8")`
converts through the debugger's selective quantisation (`selective_int8`;
`int8_float_nodes` lists the nodes kept float32): the preprocessing (flip,
mean subtraction: 3 channels) runs in float32; the first 12 convs and 4
max-pools run in int8 (int8 weights per output channel, int8 activations per
tensor, calibrated on real training images); the last conv
(``block5_conv3``, ~3% of the multiply-adds at 96x96) computes in float32
from int8-stored, bias-corrected weights (`quantize_weights_int8`); the head
(pool5 max-pool and global average, feature L2, ``W_emb``, embedding L2) runs
in float32. All 13 convs thus store int8 weights; only ``W_emb`` stores
float32 ones.

EfficientNet-Lite image towers (``backbone=efficientnet_lite*``) go through
the same two paths. Its activations are ReLU6-bounded, made for int8: the
same selective ``int8`` (float32 preprocessing, last conv and head) gave a
mean cosine of 0.991 on the 1,000 Flickr8k dev photos. For ``dynamic`` the 8
convs of the stem and stages 1-3 keep float32 weights (0.05 MB; with them
int8 the min cosine fell to 0.989, with them float it was 0.9992), and the
depthwise kernels stay float32 (``DEPTHWISE_CONV_2D`` is not among the
weight-quantised ops).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Optional

import numpy as np
import tensorflow as tf

from vse_tf.serving.tflite import flatbuffer, runner
from vse_tf.serving.tflite.schema import (
    read_model_object,
    schema,
    write_model_object,
)

# Ops whose constant weights (`flatbuffer.WEIGHT_INPUT`, output channels
# first) `dynamic` may store as int8.
WEIGHT_OPS = ("CONV_2D", "FULLY_CONNECTED")
# Ops whose TFLite int8 kernels move bytes without requantising: their int8
# output must have the scale and zero point of their data input (index).
_SAME_SCALE_OPS = {
    "EXPAND_DIMS": 0,
    "GATHER": 0,
    "MAX_POOL_2D": 0,
    "RESHAPE": 0,
    "REVERSE_V2": 0,
    "SLICE": 0,
    "SPLIT": 1,
    "SPLIT_V": 0,
    "SQUEEZE": 0,
    "STRIDED_SLICE": 0,
    "TILE": 0,
    "TRANSPOSE": 0,
    "UNPACK": 0,
}


# ---------------------------------------------------------------------------
# Selective full-integer quantisation.


def selective_int8(
    converter: tf.lite.TFLiteConverter,
    representative: Callable[[], Iterator[list[np.ndarray]]],
    float_nodes: Callable[[bytes], list[str]],
) -> bytes:
    """Full-integer conversion that keeps some nodes float32.

    Uses the selective quantisation of ``tf.lite.experimental.
    QuantizationDebugger``: it calibrates once, then quantises the
    calibrated model with the ``float_nodes(calibrated model)`` denylisted
    (they run in float32, with (DE)QUANTIZE ops at their boundaries).

    Args:
        converter: A converter set up for ``int8`` (optimizations and
            representative dataset).
        representative: Its representative dataset.
        float_nodes: Calibrated ``.tflite`` bytes -> node (output tensor)
            names to keep float32.

    Returns:
        The ``.tflite`` bytes.
    """
    debug = tf.lite.experimental
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tf.lite.Interpreter is deprecated
        debugger = debug.QuantizationDebugger(
            converter=converter, debug_dataset=representative
        )
        nodes = float_nodes(debugger.calibrated_model)
        debugger.options = debug.QuantizationDebugOptions(denylisted_nodes=nodes)
        return debugger.get_nondebug_quantized_model()


def int8_float_nodes(calibrated: flatbuffer.ModelSource) -> list[str]:
    """The image tower's nodes that ``int8`` keeps float32 (see module doc).

    The ops before the first ``CONV_2D`` (the preprocessing), the last
    ``CONV_2D`` and every op after it (VGG16: pool5; the global pooling,
    the L2 norms and ``W_emb``).

    Args:
        calibrated: The converter's calibrated float image tower (``.tflite``
            bytes or path); any image tower ``.tflite`` with the same ops.

    Returns:
        Node names (each op's output tensor name), in graph order.
    """
    ops = flatbuffer.ops_and_outputs(flatbuffer.read_model(calibrated))
    convs = [i for i, (name, _) in enumerate(ops) if name == "CONV_2D"]
    if not convs:
        raise ValueError("no CONV_2D in the model: not an image tower")
    return [
        output for i, (_, output) in enumerate(ops) if i < convs[0] or i >= convs[-1]
    ]


def _quant_params(tensor) -> tuple[tuple[float, ...], tuple[int, ...]]:
    quantization = tensor.Quantization()
    if quantization is None:
        return (), ()
    return (
        tuple(float(x) for x in quantization.ScaleAsNumpy())
        if quantization.ScaleLength()
        else (),
        tuple(int(x) for x in quantization.ZeroPointAsNumpy())
        if quantization.ZeroPointLength()
        else (),
    )


def _op_mismatches(flat, subgraph, op) -> list[str]:
    """`int8_requantization_mismatches` of one op (empty for other ops)."""
    name = flatbuffer.op_name(flat, op)
    if name not in _SAME_SCALE_OPS:
        return []
    int8 = schema().TensorType.INT8
    source = subgraph.Tensors(op.Inputs(_SAME_SCALE_OPS[name]))
    found = []
    for j in range(op.OutputsLength()):
        target = subgraph.Tensors(op.Outputs(j))
        if source.Type() != int8 or target.Type() != int8:
            continue
        params = [_quant_params(t) for t in (source, target)]
        if params[0] != params[1]:
            found.append(f"{name} {target.Name().decode()}: {params[0]} -> {params[1]}")
    return found


def int8_requantization_mismatches(model: flatbuffer.ModelSource) -> list[str]:
    """Int8 data-movement ops whose output and input quantisation differ.

    TFLite's int8 kernels of ``REVERSE_V2``, ``RESHAPE``, ``GATHER``,
    ``MAX_POOL_2D``... copy bytes without requantising, so their output must
    share the scale and zero point of their data input; the converter does
    not always ensure it (it did not for the image tower's ``REVERSE_V2``).

    Args:
        model: ``.tflite`` bytes or path.

    Returns:
        ``"OP tensor: (scale, zero point) -> (scale, zero point)"`` for each
        offending op output; empty when there is none.
    """
    flat = schema().Model.GetRootAsModel(flatbuffer.read_model(model), 0)
    found = []
    for s in range(flat.SubgraphsLength()):
        subgraph = flat.Subgraphs(s)
        for i in range(subgraph.OperatorsLength()):
            found += _op_mismatches(flat, subgraph, subgraph.Operators(i))
    return found


# ---------------------------------------------------------------------------
# Weight-only int8 storage.


def quantize_weights_int8(
    model: flatbuffer.ModelSource,
    op_types: Sequence[str] = WEIGHT_OPS,
    bias_correction: Optional[np.ndarray] = None,
    skip_first: int = 0,
) -> bytes:
    """Stores the constant weights of some ops as int8; computes in float32.

    Each selected weight tensor (the `flatbuffer.WEIGHT_INPUT` of a
    ``CONV_2D`` or ``FULLY_CONNECTED`` op, output channels first) becomes
    int8, symmetric per output channel (scale = max |w| / 127, zero point 0),
    followed by a ``DEQUANTIZE`` op that the interpreter runs once on the
    constant; the op itself, its inputs and its activations stay float32. A
    tensor shared by several ops (the unrolled LSTM's kernels) is stored once.

    With ``bias_correction``, the float model runs on those inputs and each
    selected op's bias absorbs the mean (per output channel, over the inputs
    and positions) of ``op(x, w - dequantised w)``: the error the int8
    weights cause on average is then zero (bias correction, Nagel et al.,
    "Data-Free Quantization", 2019). Ops without a bias are left as is.

    Args:
        model: A float32 ``.tflite`` model (bytes or path).
        op_types: Op types whose weights to quantise (of ``CONV_2D``,
            ``FULLY_CONNECTED``).
        bias_correction: ``[K, ...]`` real inputs of the model, or None.
        skip_first: Keep the weights of the first N selected ops float32
            (the layers nearest the pixels, where a small weight error
            reaches every later layer), for every op that shares them.

    Returns:
        The new ``.tflite`` bytes.
    """
    content = flatbuffer.read_model(model)
    unknown = set(op_types) - set(WEIGHT_OPS)
    if unknown:
        raise ValueError(f"cannot quantise the weights of {sorted(unknown)}")
    flat = read_model_object(content)
    chosen = _float_weight_ops(flat, op_types)
    kept = {_weight_index(op, name) for op, name in chosen[:skip_first]}
    chosen = [(op, name) for op, name in chosen if _weight_index(op, name) not in kept]
    _check_weights_not_shared(flat, chosen)
    errors = _store_weights_int8(flat, chosen)
    if bias_correction is not None and len(bias_correction):
        _correct_biases(content, flat, chosen, errors, np.asarray(bias_correction))
    _dequantize_weights(flat, chosen)
    return write_model_object(flat)


def _float_weight_ops(flat, op_types: Sequence[str]) -> list[tuple[object, str]]:
    """``(op, op name)`` of the ``op_types`` ops with constant float32 weights."""
    float32 = schema().TensorType.FLOAT32
    subgraph = flat.subgraphs[0]
    chosen = []
    for op in subgraph.operators:
        name = flatbuffer.op_name_t(flat, op)
        if name not in op_types or len(op.inputs) <= flatbuffer.WEIGHT_INPUT[name]:
            continue
        weights = subgraph.tensors[_weight_index(op, name)]
        data = flat.buffers[weights.buffer].data
        if weights.type == float32 and data is not None and len(data):
            chosen.append((op, name))
    return chosen


def _weight_index(op, name: str) -> int:
    """The tensor index of the constant weights of ``op`` (an ``OperatorT``)."""
    return op.inputs[flatbuffer.WEIGHT_INPUT[name]]


def _check_weights_not_shared(flat, chosen) -> None:
    """Raises unless every op reading a chosen weight tensor is chosen too."""
    chosen_ids = {id(op) for op, _ in chosen}
    weight_ids = {_weight_index(op, name) for op, name in chosen}
    for op in flat.subgraphs[0].operators:
        if id(op) not in chosen_ids and weight_ids & set(op.inputs):
            raise ValueError(
                f"a weight tensor is shared with a {flatbuffer.op_name_t(flat, op)}"
            )


def _per_channel_int8(w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Symmetric int8 of ``w [O, ...]`` per output channel (row).

    Returns:
        ``(q int8 [O, ...], scale float [O], w - dequantised w [O, ...])``.
    """
    scale = np.abs(w.reshape(len(w), -1)).max(1) / 127.0
    scale[scale == 0] = 1.0
    per_row = scale.reshape((-1,) + (1,) * (w.ndim - 1))
    q = np.clip(np.round(w / per_row), -127, 127).astype(np.int8)
    return q, scale, w - q.astype(np.float32) * per_row


def _store_weights_int8(flat, chosen) -> dict[int, np.ndarray]:
    """Rewrites each chosen weight tensor as int8, in place.

    Returns:
        Weight tensor index -> float weights minus dequantised weights.
    """
    fb = schema()
    subgraph = flat.subgraphs[0]
    errors = {}
    for op, name in chosen:
        index = _weight_index(op, name)
        if index in errors:
            continue
        tensor = subgraph.tensors[index]
        buffer = flat.buffers[tensor.buffer]
        w = np.frombuffer(bytes(buffer.data), np.float32).reshape(tensor.shape)
        q, scale, errors[index] = _per_channel_int8(w)
        buffer.data = np.frombuffer(q.tobytes(), np.uint8)
        tensor.type = fb.TensorType.INT8
        params = fb.QuantizationParametersT()
        params.scale = scale.astype(np.float32).tolist()
        params.zeroPoint = [0] * len(scale)
        params.quantizedDimension = 0
        tensor.quantization = params
    return errors


def _dequantize_weights(flat, chosen) -> None:
    """DEQUANTIZEs each int8 weight tensor once, ahead of every other op."""
    fb = schema()
    subgraph = flat.subgraphs[0]
    code = fb.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = fb.BuiltinOperator.DEQUANTIZE
    code.version = 5  # int8, per channel
    flat.operatorCodes.append(code)
    dequantized, new_ops = {}, []
    for op, name in chosen:
        index = _weight_index(op, name)
        if index not in dequantized:
            source = subgraph.tensors[index]
            target = fb.TensorT()
            target.name = source.name + b"/dequantized"
            target.shape = list(source.shape)
            target.type = fb.TensorType.FLOAT32
            target.buffer = 0  # the empty buffer: computed at run time
            subgraph.tensors.append(target)
            dequantized[index] = len(subgraph.tensors) - 1
            dequantize = fb.OperatorT()
            dequantize.opcodeIndex = len(flat.operatorCodes) - 1
            dequantize.inputs = [index]
            dequantize.outputs = [dequantized[index]]
            new_ops.append(dequantize)
        op.inputs = list(op.inputs)
        op.inputs[flatbuffer.WEIGHT_INPUT[name]] = dequantized[index]
    subgraph.operators = new_ops + list(subgraph.operators)


# ---------------------------------------------------------------------------
# Bias correction.


def _correct_biases(content, flat, chosen, errors, inputs) -> None:
    """Adds to each chosen op's bias the mean output error of its int8 weights."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # preserve_all_tensors: "debugging only"
        interpreter = runner.litert().Interpreter(
            model_content=content, experimental_preserve_all_tensors=True
        )
    input_index = interpreter.get_input_details()[0]["index"]
    interpreter.resize_tensor_input(input_index, [1, *inputs.shape[1:]])
    interpreter.allocate_tensors()
    sums: dict[int, np.ndarray] = {}
    for example in inputs:
        interpreter.set_tensor(input_index, example[None].astype(np.float32))
        interpreter.invoke()
        for op, name in chosen:
            if len(op.inputs) < 3 or op.inputs[2] < 0:
                continue
            x = interpreter.get_tensor(op.inputs[0])
            error = errors[_weight_index(op, name)]
            y = _weight_error_output(op, name, x, error)
            mean = y.reshape(-1, y.shape[-1]).mean(0)
            sums[id(op)] = sums.get(id(op), 0.0) + mean
    _add_to_biases(flat, chosen, sums, len(inputs))


def _weight_error_output(op, name: str, x: np.ndarray, error: np.ndarray) -> np.ndarray:
    """``op(x, error)``: the output error the int8 weights cause on input ``x``.

    Args:
        op: The ``CONV_2D`` or ``FULLY_CONNECTED`` ``OperatorT``.
        name: Its op name.
        x: Its float input (``[1, H, W, C]`` or ``[..., I]``).
        error: Float minus dequantised weights (``[O, KH, KW, C]`` or ``[O, I]``).

    Returns:
        ``[..., O]``.
    """
    if name != "CONV_2D":
        return x.reshape(-1, error.shape[1]) @ error.T
    options = op.builtinOptions
    same = options.padding == schema().Padding.SAME
    return tf.nn.conv2d(
        x,
        error.transpose(1, 2, 3, 0),  # OHWI -> HWIO
        [1, options.strideH, options.strideW, 1],
        "SAME" if same else "VALID",
        dilations=[1, options.dilationHFactor, options.dilationWFactor, 1],
    ).numpy()


def _add_to_biases(flat, chosen, sums: dict[int, np.ndarray], count: int) -> None:
    """Adds ``sums[id(op)] / count`` to the bias of each op in ``sums``.

    A bias shared by several ops cannot fit them all and is left as is.
    """
    subgraph = flat.subgraphs[0]
    biases = [
        subgraph.tensors[op.inputs[2]].buffer for op, _ in chosen if id(op) in sums
    ]
    for op, _ in chosen:
        if id(op) not in sums:
            continue
        if biases.count(subgraph.tensors[op.inputs[2]].buffer) > 1:
            continue  # a bias shared by several ops: cannot fit them all
        buffer = flat.buffers[subgraph.tensors[op.inputs[2]].buffer]
        bias = np.frombuffer(bytes(buffer.data), np.float32)
        bias = (bias + sums[id(op)] / count).astype(np.float32)
        buffer.data = np.frombuffer(bias.tobytes(), np.uint8)
