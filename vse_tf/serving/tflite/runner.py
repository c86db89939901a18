"""`TFLiteTower`: one ``.tflite`` tower under the LiteRT interpreter."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional, Union

import numpy as np

from vse_tf.serving.tflite import flatbuffer

TFTEXT_CUSTOM_OPS = ("FastBertNormalize", "FastWordpieceTokenizeWithOffsets")
TFTEXT_REGISTRAR = "tensorflow_text.core.pybinds.tflite_registrar.SELECT_TFTEXT_OPS"


def litert():
    """The ``ai_edge_litert.interpreter`` module (the LiteRT Python API)."""
    try:
        from ai_edge_litert import interpreter
    except ImportError as error:  # pragma: no cover - depends on the install
        raise ImportError(
            'running .tflite models needs ai-edge-litert: pip install "vse_tf[lite]"'
        ) from error
    return interpreter


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

    def __init__(
        self, model: flatbuffer.ModelSource, num_threads: Optional[int] = None
    ):
        self.content = flatbuffer.read_model(model)
        self.custom_ops = flatbuffer.custom_ops(self.content)
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
        interpreter = litert()
        kwargs: dict[str, Any] = {"model_content": self.content}
        if self.num_threads is not None:
            kwargs["num_threads"] = self.num_threads
        if not default_delegates:
            kwargs["experimental_op_resolver_type"] = (
                interpreter.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
            )
        if self.custom_ops:
            # Imported here: tensorflow-text is heavy and only these need it.
            from tensorflow_text.core.pybinds import tflite_registrar

            self._interpreter = interpreter.InterpreterWithCustomOps(
                custom_op_registerers=tflite_registrar.SELECT_TFTEXT_OPS, **kwargs
            )
        else:
            self._interpreter = interpreter.Interpreter(**kwargs)
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
    model: flatbuffer.ModelSource, inputs: Union[np.ndarray, Sequence[str]]
) -> np.ndarray:
    """One-shot `TFLiteTower` call: ``[N, ...]`` inputs -> ``float32 [N, D]``."""
    return TFLiteTower(model)(inputs)
