"""TFLite / LiteRT export of the two towers, and a small runner to check it.

Three models come out of a trained workdir:

* ``image_tower.tflite``: ``float32 [N, S, S, 3]`` RGB pixels in 0..255 ->
  ``float32 [N, D]`` unit embeddings. VGG preprocessing (RGB -> BGR, Caffe
  mean subtraction) is inside; decoding and resizing to ``S x S`` are not.
* ``text_tower.tflite``: ``int32 [N, L]`` token ids (0-padded, from
  ``vocab.txt`` by the rules of `vse_tf.text`) -> ``float32 [N, D]``. TFLite
  builtin ops only, so stock LiteRT runs it.
* ``text_tower_strings.tflite``: ``string [N]`` raw sentences ->
  ``float32 [N, D]``, tokenised inside by the tensorflow-text TFLite custom
  ops ``FastBertNormalize`` and ``FastWordpieceTokenizeWithOffsets``; the
  runtime must register them (`TFLiteTower` / `run_tflite` do, with
  ``tensorflow_text.core.pybinds.tflite_registrar.SELECT_TFTEXT_OPS``).

Traps this module works around:

* Converting a concrete function, or a SavedModel of a plain ``tf.Module``,
  leaves the Keras variables unfrozen and the model silently returns NaN.
  Every model here is converted from a ``keras.export.ExportArchive``
  SavedModel.
* The Keras 3 LSTM lowers to a ``While`` loop with TensorList ops unless it
  is unrolled; it is unrolled (fixed ``L``) only while tracing.
* A full-integer text tower can fail inside the default XNNPACK delegate
  at its first invoke ("failed to prepare"; seen with D=256, not with
  D=16); `TFLiteTower` then rebuilds the interpreter without default
  delegates and retries.
* Both text models' ``int8`` is the ``dynamic`` recipe (int8 LSTM weights,
  float32 activations). The converter cannot calibrate a model with a
  string input (its calibrator has no tensorflow-text kernels: "Failed to
  initialize op resolver for calibration"); and the full-integer token-id
  model missed the parity bar (mean cosine 0.9945 on the demo model, 0.980
  on a short-trained Flickr8k one, against >= 0.99), while the dynamic one
  keeps min >= 0.999. The text tower is a small share of a phone's work
  (one LSTM over ~12 words), so its integer speed-up is not worth the
  error.

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

So `convert_image_tower(quantize="int8")` converts through the debugger's
selective quantisation (`int8_float_nodes` lists the nodes kept float32):
the preprocessing (flip, mean subtraction: 3 channels) runs in float32; the
first 12 convs and 4 max-pools run in int8 (int8 weights per output
channel, int8 activations per tensor, calibrated on real training images);
the last conv (``block5_conv3``, ~3% of the multiply-adds at 96x96) computes
in float32 from int8-stored, bias-corrected weights (`quantize_weights_int8`);
the head (pool5 max-pool and global average, feature L2, ``W_emb``,
embedding L2) runs in float32. All 13 convs thus store int8 weights; only
``W_emb`` stores float32 ones.

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

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Optional, Union

import keras
import numpy as np
import tensorflow as tf

from vse_tf import text as text_lib
from vse_tf.models import backbone as backbone_lib
from vse_tf.models.image_tower import ImageTower
from vse_tf.models.text_tower import LSTMTextTower

QUANTIZE_MODES = ("none", "float16", "dynamic", "int8")
MANIFEST_VERSION = 2

# Ops whose constant weights (input 1, output channels first) `dynamic`
# may store as int8.
_WEIGHT_OPS = ("CONV_2D", "FULLY_CONNECTED")
# Ops the image and text towers keep float32 under ``dynamic``: W_emb is the
# image tower's FULLY_CONNECTED; the text tower's FULLY_CONNECTEDs are the
# LSTM kernels (its embedding table is a GATHER, never touched).
_DYNAMIC_IMAGE_OPS = ("CONV_2D",)
_DYNAMIC_TEXT_OPS = ("FULLY_CONNECTED",)
# Calibration images for the image tower's bias correction.
NUM_BIAS_CORRECTION_IMAGES = 64
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

IMAGE_FILE = "image_tower.tflite"
TEXT_FILE = "text_tower.tflite"
STRINGS_FILE = "text_tower_strings.tflite"
VOCAB_FILE = "vocab.txt"
MANIFEST_FILE = "manifest.json"

IMAGE_SIGNATURE = "encode_image"
TOKENS_SIGNATURE = "encode_tokens"
STRINGS_SIGNATURE = "encode_text"
OUTPUT_NAME = "embedding"
TFTEXT_CUSTOM_OPS = ("FastBertNormalize", "FastWordpieceTokenizeWithOffsets")
TFTEXT_REGISTRAR = "tensorflow_text.core.pybinds.tflite_registrar.SELECT_TFTEXT_OPS"

ModelSource = Union[bytes, str, os.PathLike]


# ---------------------------------------------------------------------------
# Conversion.


def _check_quantize(quantize: str) -> None:
    if quantize not in QUANTIZE_MODES:
        raise ValueError(f"quantize must be one of {QUANTIZE_MODES}, got {quantize!r}")


@contextlib.contextmanager
def _unrolled(text_tower: LSTMTextTower) -> Iterator[None]:
    """Unrolls the tower's LSTM while tracing (builtins only), then restores."""
    previous = text_tower.recurrent_layer.unroll
    text_tower.recurrent_layer.unroll = True
    try:
        yield
    finally:
        text_tower.recurrent_layer.unroll = previous


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
            `quantize_weights_int8` stores as int8.
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
    with tempfile.TemporaryDirectory(prefix="vse_tflite_") as tmp:
        path = os.path.join(tmp, "saved_model")
        archive.write_out(path, verbose=False)
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
        if quantize == "int8" and int8_float_nodes is not None:
            content = _selective_int8(converter, representative, int8_float_nodes)
        else:
            content = converter.convert()
    if quantize == "dynamic" or (quantize == "int8" and int8_float_nodes is not None):
        content = quantize_weights_int8(
            content,
            int8_weight_ops,
            bias_correction,
            skip_first=dynamic_float_first if quantize == "dynamic" else 0,
        )
    if quantize == "int8":
        mismatches = int8_requantization_mismatches(content)
        if mismatches:
            raise ValueError(
                "the converter gave these int8 ops an output scale/zero point "
                "other than their input's, which their kernels do not "
                f"requantise (wrong outputs): {mismatches}"
            )
    return content


def _selective_int8(
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
    import warnings

    debug = tf.lite.experimental
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tf.lite.Interpreter is deprecated
        debugger = debug.QuantizationDebugger(
            converter=converter, debug_dataset=representative
        )
        nodes = float_nodes(debugger.calibrated_model)
        debugger.options = debug.QuantizationDebugOptions(denylisted_nodes=nodes)
        return debugger.get_nondebug_quantized_model()


def _ops_and_outputs(content: bytes) -> list[tuple[str, str]]:
    """``(op name, first output tensor name)`` of each op, in order."""
    schema = _schema()
    flat = schema.Model.GetRootAsModel(content, 0)
    subgraph = flat.Subgraphs(0)
    names = _builtin_names()
    result = []
    for i in range(subgraph.OperatorsLength()):
        op = subgraph.Operators(i)
        code = flat.OperatorCodes(op.OpcodeIndex())
        name = names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "?")
        output = subgraph.Tensors(op.Outputs(0)).Name().decode()
        result.append((name, output))
    return result


def int8_float_nodes(calibrated: ModelSource) -> list[str]:
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
    ops = _ops_and_outputs(_read(calibrated))
    convs = [i for i, (name, _) in enumerate(ops) if name == "CONV_2D"]
    if not convs:
        raise ValueError("no CONV_2D in the model: not an image tower")
    return [
        output for i, (_, output) in enumerate(ops) if i < convs[0] or i >= convs[-1]
    ]


def int8_requantization_mismatches(model: ModelSource) -> list[str]:
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
    schema = _schema()
    flat = schema.Model.GetRootAsModel(_read(model), 0)
    names = _builtin_names()
    found = []
    for s in range(flat.SubgraphsLength()):
        subgraph = flat.Subgraphs(s)
        for i in range(subgraph.OperatorsLength()):
            op = subgraph.Operators(i)
            code = flat.OperatorCodes(op.OpcodeIndex())
            name = names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()))
            if name not in _SAME_SCALE_OPS:
                continue
            source = subgraph.Tensors(op.Inputs(_SAME_SCALE_OPS[name]))
            for j in range(op.OutputsLength()):
                target = subgraph.Tensors(op.Outputs(j))
                if source.Type() != schema.TensorType.INT8 or target.Type() != (
                    schema.TensorType.INT8
                ):
                    continue
                params = [_quant_params(t) for t in (source, target)]
                if params[0] != params[1]:
                    found.append(
                        f"{name} {target.Name().decode()}: {params[0]} -> {params[1]}"
                    )
    return found


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


def _builtin_names() -> dict[int, str]:
    return {
        value: name
        for name, value in vars(_schema().BuiltinOperator).items()
        if not name.startswith("_")
    }


def _op_name(flat_model, op) -> str:
    """The builtin name (``CONV_2D``...) of an operator of a ``ModelT``."""
    code = flat_model.operatorCodes[op.opcodeIndex]
    builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
    for name, value in vars(_schema().BuiltinOperator).items():
        if value == builtin and not name.startswith("_"):
            return name
    return str(builtin)


def quantize_weights_int8(
    model: ModelSource,
    op_types: Sequence[str] = _WEIGHT_OPS,
    bias_correction: Optional[np.ndarray] = None,
    skip_first: int = 0,
) -> bytes:
    """Stores the constant weights of some ops as int8; computes in float32.

    Each selected weight tensor (input 1 of a ``CONV_2D`` or
    ``FULLY_CONNECTED`` op, output channels first) becomes int8, symmetric
    per output channel (scale = max |w| / 127, zero point 0), followed by a
    ``DEQUANTIZE`` op that the interpreter runs once on the constant; the op
    itself, its inputs and its activations stay float32. A tensor shared by
    several ops (the unrolled LSTM's kernels) is stored once.

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
            reaches every later layer).

    Returns:
        The new ``.tflite`` bytes.
    """
    from tensorflow.lite.tools import flatbuffer_utils

    schema = _schema()
    content = _read(model)
    unknown = set(op_types) - set(_WEIGHT_OPS)
    if unknown:
        raise ValueError(f"cannot quantise the weights of {sorted(unknown)}")
    flat = flatbuffer_utils.read_model_from_bytearray(bytearray(content))
    subgraph = flat.subgraphs[0]
    chosen = []  # (op, op name) whose weights become int8
    for op in subgraph.operators:
        name = _op_name(flat, op)
        if name not in op_types or len(op.inputs) < 2:
            continue
        weights = subgraph.tensors[op.inputs[1]]
        data = flat.buffers[weights.buffer].data
        if weights.type == schema.TensorType.FLOAT32 and data is not None and len(data):
            chosen.append((op, name))
    chosen = chosen[skip_first:]
    # A shared tensor must only feed ops that are all quantised.
    chosen_ids = {id(op) for op, _ in chosen}
    weight_ids = {op.inputs[1] for op, _ in chosen}
    for op in subgraph.operators:
        if id(op) not in chosen_ids and weight_ids & set(op.inputs):
            raise ValueError(f"a weight tensor is shared with a {_op_name(flat, op)}")

    errors = {}  # weight tensor index -> float weights - dequantised weights
    for op, _ in chosen:
        index = op.inputs[1]
        if index in errors:
            continue
        tensor = subgraph.tensors[index]
        buffer = flat.buffers[tensor.buffer]
        w = np.frombuffer(bytes(buffer.data), np.float32).reshape(tensor.shape)
        scale = np.abs(w.reshape(len(w), -1)).max(1) / 127.0
        scale[scale == 0] = 1.0
        per_row = scale.reshape((-1,) + (1,) * (w.ndim - 1))
        q = np.clip(np.round(w / per_row), -127, 127).astype(np.int8)
        errors[index] = w - q.astype(np.float32) * per_row
        buffer.data = np.frombuffer(q.tobytes(), np.uint8)
        tensor.type = schema.TensorType.INT8
        params = schema.QuantizationParametersT()
        params.scale = scale.astype(np.float32).tolist()
        params.zeroPoint = [0] * len(scale)
        params.quantizedDimension = 0
        tensor.quantization = params

    if bias_correction is not None and len(bias_correction):
        _correct_biases(content, flat, chosen, errors, np.asarray(bias_correction))

    # DEQUANTIZE each int8 tensor once, ahead of every other op.
    code = schema.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = schema.BuiltinOperator.DEQUANTIZE
    code.version = 5  # int8, per channel
    flat.operatorCodes.append(code)
    dequantized, new_ops = {}, []
    for op, _ in chosen:
        index = op.inputs[1]
        if index not in dequantized:
            source = subgraph.tensors[index]
            target = schema.TensorT()
            target.name = source.name + b"/dequantized"
            target.shape = list(source.shape)
            target.type = schema.TensorType.FLOAT32
            target.buffer = 0  # the empty buffer: computed at run time
            subgraph.tensors.append(target)
            dequantized[index] = len(subgraph.tensors) - 1
            dequantize = schema.OperatorT()
            dequantize.opcodeIndex = len(flat.operatorCodes) - 1
            dequantize.inputs = [index]
            dequantize.outputs = [dequantized[index]]
            new_ops.append(dequantize)
        op.inputs = list(op.inputs)
        op.inputs[1] = dequantized[index]
    subgraph.operators = new_ops + list(subgraph.operators)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(flat))


def _correct_biases(content, flat, chosen, errors, inputs) -> None:
    """Adds to each chosen op's bias the mean output error of its int8 weights."""
    import warnings

    schema = _schema()
    subgraph = flat.subgraphs[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # preserve_all_tensors: "debugging only"
        interpreter = _litert().Interpreter(
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
            error = errors[op.inputs[1]]
            if name == "CONV_2D":
                options = op.builtinOptions
                padding = "SAME" if options.padding == schema.Padding.SAME else "VALID"
                y = tf.nn.conv2d(
                    x,
                    error.transpose(1, 2, 3, 0),  # OHWI -> HWIO
                    [1, options.strideH, options.strideW, 1],
                    padding,
                    dilations=[1, options.dilationHFactor, options.dilationWFactor, 1],
                ).numpy()
            else:
                y = x.reshape(-1, error.shape[1]) @ error.T
            mean = y.reshape(-1, y.shape[-1]).mean(0)
            sums[id(op)] = sums.get(id(op), 0.0) + mean
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
        bias = (bias + sums[id(op)] / len(inputs)).astype(np.float32)
        buffer.data = np.frombuffer(bias.tobytes(), np.uint8)


def convert_image_tower(
    image_tower: ImageTower,
    quantize: str = "none",
    representative_images: Optional[np.ndarray] = None,
) -> bytes:
    """Converts the image tower (CNN + preprocessing + W_emb).

    Args:
        image_tower: A tower built with its backbone.
        quantize: ``none|float16|dynamic|int8``. ``dynamic``: int8 weights
            for the conv layers (`quantize_weights_int8`; VGG16: all 13;
            EfficientNet-Lite: all 1x1/3x3 convs but the 8 of the stem and
            stages 1-3; depthwise kernels float32), ``W_emb`` float32.
            ``int8``: int8 weights and activations for every conv but the
            last (VGG16: the first 12 convs and 4 max-pools; Lite: stem,
            every block); preprocessing, the last conv (``block5_conv3`` or
            Lite's ``head_conv``, with int8-stored weights) and the head in
            float32 (`int8_float_nodes` and the module doc say why).
        representative_images: ``float32 [K, S, S, 3]`` real RGB 0..255
            training images: ``int8`` calibration (required), and bias
            correction of the convs computed in float32 from int8 weights on
            the first `NUM_BIAS_CORRECTION_IMAGES` (``dynamic``: optional,
            but without it the error is about twice as large).

    Returns:
        ``.tflite`` bytes; signature ``encode_image``:
        ``pixels float32 [N, S, S, 3]`` -> ``embedding float32 [N, D]``.
    """
    _check_quantize(quantize)
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
        int8_float_nodes=int8_float_nodes if quantize == "int8" else None,
        dynamic_float_first=_dynamic_float_convs(image_tower.backbone_name),
    )


# EfficientNet-Lite ``dynamic``: the 8 convs of the stem and stages 1-3 keep
# float32 weights (0.05 MB). With every conv int8, a few Flickr8k dev photos
# fell to cosine 0.989; with these 8 float the min over all 1,000 was 0.9992.
_LITE_DYNAMIC_FLOAT_CONVS = 8


def _dynamic_float_convs(backbone: str) -> int:
    return 0 if backbone == backbone_lib.VGG16 else _LITE_DYNAMIC_FLOAT_CONVS


def convert_text_tower(
    text_tower: LSTMTextTower,
    quantize: str = "none",
    representative_token_ids: Optional[np.ndarray] = None,
) -> bytes:
    """Converts the text tower from token ids, with TFLite builtin ops only.

    Args:
        text_tower: The trained tower.
        quantize: ``none|float16|dynamic|int8``. ``dynamic``: int8 weights
            for the LSTM kernels (`quantize_weights_int8`); the embedding
            table stays float32.
        representative_token_ids: Unused (``int8`` is the ``dynamic``
            recipe for text, see the module docstring); accepted so all
            converters share one call shape.

    Returns:
        ``.tflite`` bytes; signature ``encode_tokens``:
        ``token_ids int32 [N, L]`` (0-padded) -> ``embedding float32 [N, D]``.
    """
    del representative_token_ids
    _check_quantize(quantize)
    length = text_tower.max_length
    with _unrolled(text_tower):
        model = _token_model(text_tower)

        def encode_tokens(token_ids):
            return {OUTPUT_NAME: model(token_ids, training=False)}

        return _convert(
            [model],
            TOKENS_SIGNATURE,
            encode_tokens,
            tf.TensorSpec([None, length], tf.int32, name="token_ids"),
            "dynamic" if quantize == "int8" else quantize,
            None,
            int8_weight_ops=_DYNAMIC_TEXT_OPS,
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
    _check_quantize(quantize)
    tokenizer = text_tower.tokenizer
    with _unrolled(text_tower):
        model = _token_model(text_tower)

        def encode_text(sentences):
            return {OUTPUT_NAME: model(tokenizer(sentences), training=False)}

        return _convert(
            [model],
            STRINGS_SIGNATURE,
            encode_text,
            tf.TensorSpec([None], tf.string, name="sentences"),
            "dynamic" if quantize == "int8" else quantize,
            allow_custom_ops=True,
            int8_weight_ops=_DYNAMIC_TEXT_OPS,
        )


# ---------------------------------------------------------------------------
# Inspection and running.


def _litert():
    try:
        from ai_edge_litert import interpreter
    except ImportError as error:  # pragma: no cover - depends on the install
        raise ImportError(
            'running .tflite models needs ai-edge-litert: pip install "vse_tf[lite]"'
        ) from error
    return interpreter


def _schema():
    """The TFLite flatbuffer schema (bundled with TensorFlow; no LiteRT needed)."""
    from tensorflow.lite.python import schema_py_generated

    return schema_py_generated


def _read(model: ModelSource) -> bytes:
    if isinstance(model, (bytes, bytearray)):
        return bytes(model)
    with open(model, "rb") as f:
        return f.read()


def model_ops(model: ModelSource) -> list[str]:
    """The operators a ``.tflite`` model uses, from its flatbuffer.

    Args:
        model: ``.tflite`` bytes or path.

    Returns:
        Sorted names: builtins as in the schema (``FULLY_CONNECTED``...),
        custom ops as ``CUSTOM:<name>``.
    """
    schema = _schema()
    flat = schema.Model.GetRootAsModel(_read(model), 0)
    names = {
        value: name
        for name, value in vars(schema.BuiltinOperator).items()
        if not name.startswith("_")
    }
    used_codes = set()
    for s in range(flat.SubgraphsLength()):
        subgraph = flat.Subgraphs(s)
        for i in range(subgraph.OperatorsLength()):
            used_codes.add(subgraph.Operators(i).OpcodeIndex())
    ops = set()
    for index in used_codes:
        code = flat.OperatorCodes(index)
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        if builtin == schema.BuiltinOperator.CUSTOM:
            ops.add(f"CUSTOM:{code.CustomCode().decode()}")
        else:
            ops.add(names.get(builtin, str(builtin)))
    return sorted(ops)


def custom_ops(model: ModelSource) -> list[str]:
    """Names of the custom (non-builtin) ops of a model; empty for builtins only."""
    return [op.split(":", 1)[1] for op in model_ops(model) if op.startswith("CUSTOM:")]


class TFLiteTower:
    """One ``.tflite`` tower under the LiteRT interpreter, reused across calls.

    Registers the tensorflow-text ops when the model has custom ops, resizes
    the input to each batch, and falls back to the plain builtin kernels
    when the default XNNPACK delegate cannot prepare the model (int8).

    Args:
        model: ``.tflite`` bytes or path.
        num_threads: Interpreter threads (None: LiteRT's default).

    Example:
        >>> tower = TFLiteTower("export/text_tower.tflite")
        >>> tower(np.array([[5, 9, 0, 0]], np.int32)).shape
        (1, 256)
    """

    def __init__(self, model: ModelSource, num_threads: Optional[int] = None):
        self.content = _read(model)
        self.custom_ops = custom_ops(self.content)
        self.num_threads = num_threads
        self._build(default_delegates=True)
        try:
            self._interpreter.allocate_tensors()
        except RuntimeError:
            self._build(default_delegates=False)
            self._interpreter.allocate_tensors()
        signatures = self._interpreter.get_signature_list()
        if len(signatures) != 1:
            raise ValueError(f"expected one signature, got {sorted(signatures)}")
        self.signature = next(iter(signatures))
        runner = self._interpreter.get_signature_runner(self.signature)
        inputs = runner.get_input_details()
        if len(inputs) != 1:
            raise ValueError(f"expected one input, got {sorted(inputs)}")
        self.input_name, self.input_details = next(iter(inputs.items()))
        self.output_name = next(iter(runner.get_output_details()))

    def _build(self, default_delegates: bool) -> None:
        """(Re)creates the interpreter, with or without XNNPACK by default."""
        litert = _litert()
        kwargs: dict[str, Any] = {"model_content": self.content}
        if self.num_threads is not None:
            kwargs["num_threads"] = self.num_threads
        if not default_delegates:
            kwargs["experimental_op_resolver_type"] = (
                litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
            )
        if self.custom_ops:
            # Imported here: tensorflow-text is heavy and only these need it.
            from tensorflow_text.core.pybinds import tflite_registrar

            self._interpreter = litert.InterpreterWithCustomOps(
                custom_op_registerers=tflite_registrar.SELECT_TFTEXT_OPS, **kwargs
            )
        else:
            self._interpreter = litert.Interpreter(**kwargs)
        self.delegate = "default" if default_delegates else "none"
        self._runner = None

    def __call__(self, inputs: Union[np.ndarray, Sequence[str]]) -> np.ndarray:
        """Runs the model on one batch.

        The XNNPACK delegate may fail to prepare an int8 model only once the
        input is resized (seen at batch 32); the call then rebuilds the
        interpreter without default delegates and retries, for good.

        Args:
            inputs: ``[N, ...]`` array of the model's input dtype (cast if
                needed), or ``N`` sentences (``str`` or ``bytes``) for the
                strings model.

        Returns:
            ``float32 [N, D]`` embeddings.
        """
        dtype = self.input_details["dtype"]
        if dtype in (np.bytes_, np.object_, np.str_):
            array = np.array(
                [s.encode("utf-8") if isinstance(s, str) else bytes(s) for s in inputs],
                dtype=object,
            )
        else:
            array = np.ascontiguousarray(np.asarray(inputs), dtype=dtype)
        try:
            outputs = self._run(array)
        except RuntimeError:
            if self.delegate == "none":
                raise
            self._build(default_delegates=False)
            outputs = self._run(array)
        return np.array(outputs[self.output_name], np.float32)

    def _run(self, array: np.ndarray) -> dict[str, np.ndarray]:
        if self._runner is None:
            self._runner = self._interpreter.get_signature_runner(self.signature)
        return self._runner(**{self.input_name: array})


def run_tflite(
    model: ModelSource, inputs: Union[np.ndarray, Sequence[str]]
) -> np.ndarray:
    """One-shot `TFLiteTower` call: ``[N, ...]`` inputs -> ``float32 [N, D]``."""
    return TFLiteTower(model)(inputs)


def _tensor_spec(subgraph, index: int) -> dict[str, Any]:
    schema = _schema()
    tensor = subgraph.Tensors(index)
    types = {v: k.lower() for k, v in vars(schema.TensorType).items() if k.isupper()}
    if tensor.ShapeSignatureLength():
        shape = tensor.ShapeSignatureAsNumpy()
    else:
        shape = tensor.ShapeAsNumpy() if tensor.ShapeLength() else []
    return {
        "tensor_name": tensor.Name().decode(),
        "shape": [int(d) for d in shape],
        "dtype": types.get(tensor.Type(), str(tensor.Type())),
    }


def describe_model(model: ModelSource) -> dict[str, Any]:
    """The interface of a ``.tflite`` tower, read from its flatbuffer.

    Args:
        model: ``.tflite`` bytes or path (one signature).

    Returns:
        ``{"signature", "inputs": {name: {tensor_name, shape, dtype}},
        "outputs": {...}, "ops", "custom_ops"}``; ``-1`` marks the batch.
    """
    content = _read(model)
    flat = _schema().Model.GetRootAsModel(content, 0)
    if flat.SignatureDefsLength() != 1:
        raise ValueError(f"expected one signature, got {flat.SignatureDefsLength()}")
    signature = flat.SignatureDefs(0)
    subgraph = flat.Subgraphs(signature.SubgraphIndex())

    def tensors(length: int, get) -> dict[str, dict[str, Any]]:
        return {
            get(i).Name().decode(): _tensor_spec(subgraph, get(i).TensorIndex())
            for i in range(length)
        }

    return {
        "signature": signature.SignatureKey().decode(),
        "inputs": tensors(signature.InputsLength(), signature.Inputs),
        "outputs": tensors(signature.OutputsLength(), signature.Outputs),
        "ops": model_ops(content),
        "custom_ops": custom_ops(content),
    }


def describe_quantization(model: ModelSource) -> dict[str, Any]:
    """What a ``.tflite`` model stores and computes in which type.

    Read from the flatbuffer: for every op with constant weights (input 1,
    possibly behind a ``DEQUANTIZE`` of a constant), the storage type of
    those weights; and the types of the float/integer activations its ops
    compute on.

    Args:
        model: ``.tflite`` bytes or path.

    Returns:
        ``{"weights": {storage dtype: {op: count}}, "activations": [dtypes],
        "dequantize_weights": n, "ops_by_output_type": {dtype: {op: count}}}``
        where ``dequantize_weights`` counts the constants dequantised to
        float at run time (weight-only storage) and ``ops_by_output_type``
        counts the ops by the type they compute into (so which ops run in
        int8 and which in float32; ``QUANTIZE``/``DEQUANTIZE`` conversions
        are not counted).
    """
    schema = _schema()
    flat = schema.Model.GetRootAsModel(_read(model), 0)
    types = {v: k.lower() for k, v in vars(schema.TensorType).items() if k.isupper()}
    names = {
        value: name
        for name, value in vars(schema.BuiltinOperator).items()
        if not name.startswith("_")
    }
    subgraph = flat.Subgraphs(0)

    def op_name(op) -> str:
        code = flat.OperatorCodes(op.OpcodeIndex())
        return names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "?")

    def is_constant(index: int) -> bool:
        buffer = flat.Buffers(subgraph.Tensors(index).Buffer())
        return buffer is not None and (buffer.DataLength() > 0 or buffer.Size() > 0)

    dequantized_from = {}  # float tensor -> its constant int8/float16 source
    for i in range(subgraph.OperatorsLength()):
        op = subgraph.Operators(i)
        if op_name(op) == "DEQUANTIZE" and is_constant(op.Inputs(0)):
            dequantized_from[op.Outputs(0)] = op.Inputs(0)
    weights: dict[str, dict[str, int]] = {}
    activations = set()
    by_output: dict[str, dict[str, int]] = {}
    seen = set()
    for i in range(subgraph.OperatorsLength()):
        op = subgraph.Operators(i)
        name = op_name(op)
        if name == "DEQUANTIZE" and op.Inputs(0) in dequantized_from.values():
            continue
        if name not in ("QUANTIZE", "DEQUANTIZE") and op.OutputsLength():
            dtype = types[subgraph.Tensors(op.Outputs(0)).Type()]
            by_output.setdefault(dtype, {}).setdefault(name, 0)
            by_output[dtype][name] += 1
        if name in ("CONV_2D", "FULLY_CONNECTED", "DEPTHWISE_CONV_2D", "GATHER"):
            index = op.Inputs(0 if name == "GATHER" else 1)
            source = dequantized_from.get(index, index)
            if (is_constant(source) or source != index) and source not in seen:
                seen.add(source)
                dtype = types[subgraph.Tensors(source).Type()]
                weights.setdefault(dtype, {}).setdefault(name, 0)
                weights[dtype][name] += 1
        for j in range(op.InputsLength()):
            index = op.Inputs(j)
            if index < 0 or is_constant(index):
                continue
            dtype = types[subgraph.Tensors(index).Type()]
            if dtype in ("float32", "float16", "int8", "int16", "uint8"):
                activations.add(dtype)
    return {
        "weights": weights,
        "activations": sorted(activations),
        "dequantize_weights": len(set(dequantized_from.values())),
        "ops_by_output_type": by_output,
    }


def quantization_note(
    name: str, quantize: str, bias_corrected: bool = False, backbone: str = "vgg16"
) -> str:
    """One sentence saying what ``quantize`` made of file ``name``."""
    if name in (STRINGS_FILE, TEXT_FILE) and quantize == "int8":
        quantize = "dynamic"  # the text towers' int8 (see the module doc)
    image = name == IMAGE_FILE
    if quantize == "none":
        return "float32 weights and activations"
    if quantize == "float16":
        return "float16 weights, dequantised to float32 at load; float32 activations"
    lite = backbone != backbone_lib.VGG16
    if quantize == "dynamic":
        if image:
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
        return (
            "int8 weights (symmetric, per output channel) for the LSTM input "
            "and recurrent kernels, dequantised to float32 inside the model "
            "(DEQUANTIZE ops on constants); word embeddings, LSTM bias, the L2 "
            "norm and every activation float32"
        )
    if image and lite:
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
    if image:
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
    return (
        "full-integer post-training quantisation (TFLite converter, "
        "Optimize.DEFAULT + representative training data): int8 weights and "
        "int8 activations where the converter supports it, float32 input and "
        "output"
    )


# ---------------------------------------------------------------------------
# Whole export.


def representative_data(
    config, text_tower: LSTMTextTower, num_images: int = 64, num_captions: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """Real calibration data: images and captions of the TRAIN split.

    Args:
        config: The run's config (data set, image size).
        text_tower: Its tokenizer encodes the captions.
        num_images: Images to take, spread evenly over the split.
        num_captions: Captions to take, spread evenly over the split.

    Returns:
        ``(float32 [K, S, S, 3] RGB 0..255, int32 [K', L] token ids)``.
    """
    from vse_tf import features as features_lib
    from vse_tf import train_lib

    split = train_lib.load_split(config, "train")
    image_at = np.unique(
        np.linspace(0, split.num_images - 1, min(num_images, split.num_images))
        .round()
        .astype(int)
    )
    images = np.stack(
        [
            features_lib.load_image(
                tf.constant(split.image_paths[i]), config.data.image_size
            ).numpy()
            for i in image_at
        ]
    ).astype(np.float32)
    caption_at = np.unique(
        np.linspace(0, split.num_captions - 1, min(num_captions, split.num_captions))
        .round()
        .astype(int)
    )
    token_ids = text_lib.encode_captions(
        text_tower.tokenizer, [split.captions[i] for i in caption_at]
    )
    return images, token_ids


def sha256(data: bytes) -> str:
    """Hex SHA-256 of some bytes."""
    return hashlib.sha256(data).hexdigest()


def _preprocessing_manifest(backbone: str) -> dict[str, Any]:
    if backbone == backbone_lib.VGG16:
        return {
            "in_model": "RGB -> BGR, then subtract the Caffe/VGG BGR means",
            "bgr_mean": list(backbone_lib._BGR_MEAN),
        }
    return {"in_model": "(rgb - 127) / 128", "mean": 127.0, "std": 128.0}


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
            were bias-corrected (`quantize_weights_int8`).

    Returns:
        A JSON-serialisable dict; each ``.tflite`` entry has a
        ``quantization`` block (`quantization_note` and
        `describe_quantization`).
    """
    size = image_tower.image_size
    entries = {}
    for name, data in sorted(files.items()):
        entry: dict[str, Any] = {"sha256": sha256(data), "size_bytes": len(data)}
        if name.endswith(".tflite"):
            entry.update(describe_model(data))
            entry["quantize"] = quantize
            if name in (STRINGS_FILE, TEXT_FILE) and quantize == "int8":
                entry["quantize"] = "dynamic"
            if name == STRINGS_FILE:
                entry["custom_op_registerers"] = TFTEXT_REGISTRAR
            entry["quantization"] = {
                "summary": quantization_note(
                    name,
                    quantize,
                    bias_corrected and name == IMAGE_FILE,
                    image_tower.backbone_name,
                ),
                **describe_quantization(data),
            }
        entries[name] = entry
    return {
        "format_version": MANIFEST_VERSION,
        "embed_dim": int(image_tower.embed_dim),
        "max_length": int(text_tower.max_length),
        "image_size": [int(size), int(size)],
        "quantize": quantize,
        "similarity": "dot product of the (unit-norm) image and text embeddings",
        "image_preprocessing": {
            "input": (
                f"float32 [N, {size}, {size}, 3] RGB in 0..255, decoded and "
                f"resized to {size}x{size} by the caller (vse_tf.features."
                "load_image: bilinear, antialias=True, clipped to 0..255)"
            ),
            **_preprocessing_manifest(image_tower.backbone_name),
            "backbone": f"{image_tower.backbone_name} {image_tower.image_feature}, "
            f"weights={image_tower.backbone_weights}, feature_norm="
            f"{image_tower.feature_norm}",
        },
        "tokenizer": {
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
        },
        "files": entries,
        "source": source or {},
    }


def export_tflite(
    workdir: str,
    quantize: str = "none",
    num_calibration_images: int = 64,
    num_calibration_captions: int = 256,
) -> tuple[dict[str, bytes], dict[str, Any]]:
    """Converts a trained workdir's best model to the three ``.tflite`` towers.

    Args:
        workdir: A training workdir (`vse_tf.train_lib.train_and_evaluate`).
        quantize: ``none|float16|dynamic|int8``; ``int8`` calibrates on real
            training images and captions of the workdir's data set, and
            ``dynamic`` bias-corrects the image tower on
            `NUM_BIAS_CORRECTION_IMAGES` training images.
        num_calibration_images: Calibration images (``int8``).
        num_calibration_captions: Calibration captions (``int8``).

    Returns:
        ``(files, manifest)``: file name -> bytes for ``image_tower.tflite``,
        ``text_tower.tflite``, ``text_tower_strings.tflite`` and
        ``vocab.txt``; and the manifest dict (not in ``files``).
    """
    from vse_tf import train_lib

    _check_quantize(quantize)
    config, model = train_lib.load_trained_model(workdir, include_backbone=True)
    images = token_ids = None
    if quantize == "dynamic":
        images, _ = representative_data(
            config, model.text_tower, NUM_BIAS_CORRECTION_IMAGES, 1
        )
    elif quantize == "int8":
        images, token_ids = representative_data(
            config,
            model.text_tower,
            num_calibration_images,
            num_calibration_captions,
        )
    with open(os.path.join(workdir, train_lib.VOCAB_FILE), "rb") as f:
        vocab = f.read()
    files = {
        IMAGE_FILE: convert_image_tower(model.image_tower, quantize, images),
        TEXT_FILE: convert_text_tower(model.text_tower, quantize, token_ids),
        STRINGS_FILE: convert_text_tower_strings(model.text_tower, quantize),
        VOCAB_FILE: vocab,
    }
    checkpoint = tf.train.latest_checkpoint(os.path.join(workdir, "best"))
    manifest = build_manifest(
        files,
        model.image_tower,
        model.text_tower,
        quantize,
        source={
            "workdir": os.path.abspath(workdir),
            "checkpoint": os.path.basename(checkpoint or ""),
            "dataset": config.data.dataset,
        },
        bias_corrected=quantize == "dynamic",
    )
    return files, manifest
