"""Reading a ``.tflite`` flatbuffer: its ops, its interface and its storage types."""

from __future__ import annotations

import functools
import os
from typing import Any, Union

from vse_tf.serving.tflite.schema import schema

ModelSource = Union[bytes, str, os.PathLike]

# The ops that read constant weights -> the input they read them from (the
# one definition: `describe_quantization` and `quantize` both use it).
WEIGHT_INPUT = {
    "CONV_2D": 1,
    "FULLY_CONNECTED": 1,
    "DEPTHWISE_CONV_2D": 1,
    "GATHER": 0,
}
# Tensor types `describe_quantization` reports as activations.
_ACTIVATION_TYPES = ("float32", "float16", "int8", "int16", "uint8")


def read_model(model: ModelSource) -> bytes:
    """The bytes of a ``.tflite`` model given as bytes or as a path."""
    if isinstance(model, (bytes, bytearray)):
        return bytes(model)
    with open(model, "rb") as f:
        return f.read()


@functools.cache
def builtin_names() -> dict[int, str]:
    """Builtin operator code -> its schema name (``CONV_2D``...)."""
    return {
        value: name
        for name, value in vars(schema().BuiltinOperator).items()
        if not name.startswith("_")
    }


@functools.cache
def tensor_types() -> dict[int, str]:
    """Tensor type code -> its lower-case name (``float32``, ``int8``...)."""
    return {v: k.lower() for k, v in vars(schema().TensorType).items() if k.isupper()}


def _builtin_code(code) -> int:
    """The builtin code of an ``OperatorCode`` (new or deprecated field)."""
    return max(code.BuiltinCode(), code.DeprecatedBuiltinCode())


def op_name(flat, op) -> str:
    """The builtin name of an operator of a read-only ``Model`` ("?" if unknown)."""
    code = flat.OperatorCodes(op.OpcodeIndex())
    return builtin_names().get(_builtin_code(code), "?")


def op_name_t(flat_model, op) -> str:
    """The builtin name (``CONV_2D``...) of an operator of a ``ModelT``."""
    code = flat_model.operatorCodes[op.opcodeIndex]
    builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
    return builtin_names().get(builtin, str(builtin))


def ops_and_outputs(content: bytes) -> list[tuple[str, str]]:
    """``(op name, first output tensor name)`` of each op, in order."""
    flat = schema().Model.GetRootAsModel(content, 0)
    subgraph = flat.Subgraphs(0)
    result = []
    for i in range(subgraph.OperatorsLength()):
        op = subgraph.Operators(i)
        output = subgraph.Tensors(op.Outputs(0)).Name().decode()
        result.append((op_name(flat, op), output))
    return result


def model_ops(model: ModelSource) -> list[str]:
    """The operators a ``.tflite`` model uses, from its flatbuffer.

    Args:
        model: ``.tflite`` bytes or path.

    Returns:
        Sorted names: builtins as in the schema (``FULLY_CONNECTED``...),
        custom ops as ``CUSTOM:<name>``.
    """
    flat = schema().Model.GetRootAsModel(read_model(model), 0)
    names = builtin_names()
    used_codes = set()
    for s in range(flat.SubgraphsLength()):
        subgraph = flat.Subgraphs(s)
        for i in range(subgraph.OperatorsLength()):
            used_codes.add(subgraph.Operators(i).OpcodeIndex())
    ops = set()
    for index in used_codes:
        code = flat.OperatorCodes(index)
        builtin = _builtin_code(code)
        if builtin == schema().BuiltinOperator.CUSTOM:
            ops.add(f"CUSTOM:{code.CustomCode().decode()}")
        else:
            ops.add(names.get(builtin, str(builtin)))
    return sorted(ops)


def custom_ops(model: ModelSource) -> list[str]:
    """Names of the custom (non-builtin) ops of a model; empty for builtins only."""
    return [op.split(":", 1)[1] for op in model_ops(model) if op.startswith("CUSTOM:")]


def _tensor_spec(subgraph, index: int) -> dict[str, Any]:
    tensor = subgraph.Tensors(index)
    if tensor.ShapeSignatureLength():
        shape = tensor.ShapeSignatureAsNumpy()
    else:
        shape = tensor.ShapeAsNumpy() if tensor.ShapeLength() else []
    return {
        "tensor_name": tensor.Name().decode(),
        "shape": [int(d) for d in shape],
        "dtype": tensor_types().get(tensor.Type(), str(tensor.Type())),
    }


def _signature_tensors(subgraph, length: int, get) -> dict[str, dict[str, Any]]:
    """Signature input/output name -> `_tensor_spec` of its tensor."""
    return {
        get(i).Name().decode(): _tensor_spec(subgraph, get(i).TensorIndex())
        for i in range(length)
    }


def describe_model(model: ModelSource) -> dict[str, Any]:
    """The interface of a ``.tflite`` tower, read from its flatbuffer.

    Args:
        model: ``.tflite`` bytes or path (one signature).

    Returns:
        ``{"signature", "inputs": {name: {tensor_name, shape, dtype}},
        "outputs": {...}, "ops", "custom_ops"}``; ``-1`` marks the batch.
    """
    content = read_model(model)
    flat = schema().Model.GetRootAsModel(content, 0)
    if flat.SignatureDefsLength() != 1:
        raise ValueError(f"expected one signature, got {flat.SignatureDefsLength()}")
    signature = flat.SignatureDefs(0)
    subgraph = flat.Subgraphs(signature.SubgraphIndex())
    return {
        "signature": signature.SignatureKey().decode(),
        "inputs": _signature_tensors(
            subgraph, signature.InputsLength(), signature.Inputs
        ),
        "outputs": _signature_tensors(
            subgraph, signature.OutputsLength(), signature.Outputs
        ),
        "ops": model_ops(content),
        "custom_ops": custom_ops(content),
    }


def _is_constant(flat, subgraph, index: int) -> bool:
    """Whether tensor ``index`` has data in the file (a constant)."""
    buffer = flat.Buffers(subgraph.Tensors(index).Buffer())
    return buffer is not None and (buffer.DataLength() > 0 or buffer.Size() > 0)


def _dequantized_constants(flat, subgraph) -> dict[int, int]:
    """Float tensor -> the constant (int8/float16) tensor a DEQUANTIZE reads."""
    dequantized_from = {}
    for i in range(subgraph.OperatorsLength()):
        op = subgraph.Operators(i)
        source = op.Inputs(0)
        if op_name(flat, op) == "DEQUANTIZE" and _is_constant(flat, subgraph, source):
            dequantized_from[op.Outputs(0)] = source
    return dequantized_from


def _count(counts: dict[str, dict[str, int]], dtype: str, name: str) -> None:
    """Adds one ``name`` op to ``counts[dtype]``."""
    counts.setdefault(dtype, {}).setdefault(name, 0)
    counts[dtype][name] += 1


def describe_quantization(model: ModelSource) -> dict[str, Any]:
    """What a ``.tflite`` model stores and computes in which type.

    Read from the flatbuffer: for every op with constant weights (its
    `WEIGHT_INPUT`, possibly behind a ``DEQUANTIZE`` of a constant), the
    storage type of those weights; and the types of the float/integer
    activations its ops compute on.

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
    flat = schema().Model.GetRootAsModel(read_model(model), 0)
    types = tensor_types()
    subgraph = flat.Subgraphs(0)
    dequantized_from = _dequantized_constants(flat, subgraph)
    weights: dict[str, dict[str, int]] = {}
    activations = set()
    by_output: dict[str, dict[str, int]] = {}
    seen = set()
    for i in range(subgraph.OperatorsLength()):
        op = subgraph.Operators(i)
        name = op_name(flat, op)
        if name == "DEQUANTIZE" and op.Inputs(0) in dequantized_from.values():
            continue
        if name not in ("QUANTIZE", "DEQUANTIZE") and op.OutputsLength():
            _count(by_output, types[subgraph.Tensors(op.Outputs(0)).Type()], name)
        if name in WEIGHT_INPUT:
            index = op.Inputs(WEIGHT_INPUT[name])
            source = dequantized_from.get(index, index)
            constant = _is_constant(flat, subgraph, source)
            if (constant or source != index) and source not in seen:
                seen.add(source)
                _count(weights, types[subgraph.Tensors(source).Type()], name)
        for j in range(op.InputsLength()):
            index = op.Inputs(j)
            if index < 0 or _is_constant(flat, subgraph, index):
                continue
            dtype = types[subgraph.Tensors(index).Type()]
            if dtype in _ACTIVATION_TYPES:
                activations.add(dtype)
    return {
        "weights": weights,
        "activations": sorted(activations),
        "dequantize_weights": len(set(dequantized_from.values())),
        "ops_by_output_type": by_output,
    }
