"""Runs a SavedModel the way TF Serving does: C++ loader, signatures by tensor name.

This module imports **no TensorFlow Python**. It loads ``libtensorflow_cc``
from the installed tensorflow wheel with ctypes, registers the
tensorflow-text op libraries with ``TF_LoadLibrary`` (TF Serving links them
into its binary), loads the SavedModel with ``TF_LoadSessionFromSavedModel``
(the C++ ``LoadSavedModel``: restores the variables and runs the
``__saved_model_init_op``), reads the SignatureDefs from ``saved_model.pb``
with a small protobuf wire-format reader, and runs each signature with
``TF_SessionRun`` on its tensor names.

Run as a child process (see `vse_tf.serving.serving_check`)::

    python -m vse_tf.serving.c_api MODEL_VERSION_DIR REQUESTS_DIR OUT_DIR

``REQUESTS_DIR/requests.json`` names, per signature, its inputs: numeric
arrays as ``.npy`` files beside it, strings base64-encoded inline. The
outputs go to ``OUT_DIR`` (``.npy`` files and ``outputs.json``); anything
that failed is reported there as text, never as a crash.
"""

from __future__ import annotations

import base64
import ctypes
import glob
import importlib.util
import json
import os
import sys
from typing import Any, Optional

import numpy as np

# --- a protobuf wire-format reader (only what SignatureDefs need) -------------


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _fields(data: bytes):
    """Yields ``(field number, wire type, value)``; length-delimited as bytes."""
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 1:
            value, pos = data[pos : pos + 8], pos + 8
        elif wire == 2:
            size, pos = _varint(data, pos)
            value, pos = data[pos : pos + size], pos + size
        elif wire == 5:
            value, pos = data[pos : pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield number, wire, value


def _map_entry(data: bytes) -> tuple[str, bytes]:
    key, value = "", b""
    for number, _, field in _fields(data):
        if number == 1:
            key = field.decode("utf-8")
        elif number == 2:
            value = field
    return key, value


def _tensor_info(data: bytes) -> dict[str, Any]:
    info: dict[str, Any] = {"name": "", "dtype": 0, "shape": None}
    for number, _, value in _fields(data):
        if number == 1:
            info["name"] = value.decode("utf-8")
        elif number == 2:
            info["dtype"] = value
        elif number == 3:
            dims, unknown = [], False
            for dim_number, _, dim in _fields(value):
                if dim_number == 2:
                    size = next((v for n, _, v in _fields(dim) if n == 1), 0)
                    dims.append(size - (1 << 64) if size >= 1 << 63 else size)
                elif dim_number == 3:
                    unknown = bool(dim)
            info["shape"] = None if unknown else dims
    return info


def read_signatures(saved_model_pb: str, tag: str = "serve") -> dict[str, dict]:
    """``{signature: {"inputs": {key: info}, "outputs": {key: info}}}``.

    ``info`` is ``{"name": "op:index", "dtype": DataType enum, "shape":
    [dims] (-1 unknown) or None}``, read from the MetaGraphDef tagged
    ``tag`` in ``saved_model.pb``.
    """
    with open(saved_model_pb, "rb") as f:
        data = f.read()
    for number, _, meta_graph in _fields(data):
        if number != 2:  # SavedModel.meta_graphs
            continue
        tags, signatures = [], {}
        for field, _, value in _fields(meta_graph):
            if field == 1:  # MetaInfoDef
                tags += [v.decode() for n, _, v in _fields(value) if n == 4]
            elif field == 5:  # signature_def map
                name, signature = _map_entry(value)
                parts: dict[str, dict] = {"inputs": {}, "outputs": {}}
                for part, _, entry in _fields(signature):
                    if part in (1, 2):
                        key, info = _map_entry(entry)
                        parts["inputs" if part == 1 else "outputs"][key] = _tensor_info(
                            info
                        )
                signatures[name] = parts
        if tag in tags:
            return signatures
    raise ValueError(f"{saved_model_pb}: no MetaGraphDef tagged {tag!r}")


# --- the C API --------------------------------------------------------------

DT_FLOAT, DT_DOUBLE, DT_INT32, DT_UINT8, DT_STRING, DT_INT64, DT_BOOL = (
    1,
    2,
    3,
    4,
    7,
    9,
    10,
)
_NUMPY = {
    DT_FLOAT: np.float32,
    DT_DOUBLE: np.float64,
    DT_INT32: np.int32,
    DT_UINT8: np.uint8,
    DT_INT64: np.int64,
    DT_BOOL: np.bool_,
}
_TSTRING_SIZE = 24  # sizeof(TF_TString)


class _Output(ctypes.Structure):
    _fields_ = [("oper", ctypes.c_void_p), ("index", ctypes.c_int)]


def package_dir(name: str) -> Optional[str]:
    """An installed package's folder, found without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return list(spec.submodule_search_locations)[0]


def text_op_libraries() -> list[str]:
    """tensorflow-text's op libraries (``_*.so``), as TF Serving links them."""
    folder = package_dir("tensorflow_text")
    if folder is None:
        return []
    return sorted(glob.glob(os.path.join(folder, "python", "ops", "_*.so")))


def _library() -> ctypes.CDLL:
    folder = package_dir("tensorflow")
    if folder is None:
        raise RuntimeError("tensorflow is not installed")
    return ctypes.CDLL(
        os.path.join(folder, "libtensorflow_cc.so.2"), mode=ctypes.RTLD_GLOBAL
    )


def tensorflow_version() -> str:
    """``TF_Version()`` of the installed C library."""
    lib = _library()
    lib.TF_Version.restype = ctypes.c_char_p
    return lib.TF_Version().decode()


class CSession:
    """A SavedModel loaded by the C++ loader into a session.

    Args:
        export_dir: A version folder (holds ``saved_model.pb``).
        op_libraries: Shared libraries to register first (default: the
            tensorflow-text ops); ``[]`` loads none.

    Raises:
        RuntimeError: with TensorFlow's message when a library or the
            model cannot be loaded (e.g. ``Op type not registered``).
    """

    def __init__(self, export_dir: str, op_libraries: Optional[list[str]] = None):
        self.lib = _library()
        self._declare()
        lib = self.lib
        self.version = lib.TF_Version().decode()
        status = lib.TF_NewStatus()
        self._status = status
        for path in text_op_libraries() if op_libraries is None else op_libraries:
            handle = lib.TF_LoadLibrary(path.encode(), status)
            self._check(f"loading {os.path.basename(path)}")
            del handle  # kept loaded for the process's life
        self.graph = lib.TF_NewGraph()
        options = lib.TF_NewSessionOptions()
        tags = (ctypes.c_char_p * 1)(b"serve")
        self.session = lib.TF_LoadSessionFromSavedModel(
            options, None, export_dir.encode(), tags, 1, self.graph, None, status
        )
        lib.TF_DeleteSessionOptions(options)
        self._check(f"loading {export_dir}")
        self.signatures = read_signatures(os.path.join(export_dir, "saved_model.pb"))

    def _declare(self) -> None:
        lib, p = self.lib, ctypes.c_void_p
        signatures = {
            "TF_Version": ([], ctypes.c_char_p),
            "TF_NewStatus": ([], p),
            "TF_GetCode": ([p], ctypes.c_int),
            "TF_Message": ([p], ctypes.c_char_p),
            "TF_LoadLibrary": ([ctypes.c_char_p, p], p),
            "TF_NewGraph": ([], p),
            "TF_NewSessionOptions": ([], p),
            "TF_DeleteSessionOptions": ([p], None),
            "TF_LoadSessionFromSavedModel": (
                [p, p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_char_p)]
                + [ctypes.c_int, p, p, p],
                p,
            ),
            "TF_GraphOperationByName": ([p, ctypes.c_char_p], p),
            "TF_AllocateTensor": (
                [ctypes.c_int, ctypes.POINTER(ctypes.c_int64), ctypes.c_int]
                + [ctypes.c_size_t],
                p,
            ),
            "TF_TensorData": ([p], p),
            "TF_TensorByteSize": ([p], ctypes.c_size_t),
            "TF_TensorType": ([p], ctypes.c_int),
            "TF_NumDims": ([p], ctypes.c_int),
            "TF_Dim": ([p, ctypes.c_int], ctypes.c_int64),
            "TF_DeleteTensor": ([p], None),
            "TF_StringInit": ([p], None),
            "TF_StringCopy": ([p, ctypes.c_char_p, ctypes.c_size_t], None),
            "TF_StringGetDataPointer": ([p], p),
            "TF_StringGetSize": ([p], ctypes.c_size_t),
            "TF_SessionRun": (
                [p, p, ctypes.POINTER(_Output), ctypes.POINTER(p), ctypes.c_int]
                + [ctypes.POINTER(_Output), ctypes.POINTER(p), ctypes.c_int]
                + [p, ctypes.c_int, p, p],
                None,
            ),
        }
        for name, (args, result) in signatures.items():
            function = getattr(lib, name)
            function.argtypes = args
            function.restype = result

    def _check(self, what: str) -> None:
        if self.lib.TF_GetCode(self._status) != 0:
            message = self.lib.TF_Message(self._status).decode(errors="replace")
            raise RuntimeError(f"{what}: {message}")

    def _output(self, tensor_name: str) -> _Output:
        op_name, _, index = tensor_name.partition(":")
        oper = self.lib.TF_GraphOperationByName(self.graph, op_name.encode())
        if not oper:
            raise RuntimeError(f"no operation {op_name!r} in the graph")
        return _Output(oper, int(index or 0))

    def _tensor(self, value: np.ndarray, dtype: int):
        lib = self.lib
        dims = (ctypes.c_int64 * max(value.ndim, 1))(*value.shape)
        if dtype == DT_STRING:
            items = [bytes(v) for v in value.reshape(-1)]
            tensor = lib.TF_AllocateTensor(
                DT_STRING, dims, value.ndim, _TSTRING_SIZE * len(items)
            )
            base = lib.TF_TensorData(tensor)
            for i, item in enumerate(items):
                address = base + i * _TSTRING_SIZE
                lib.TF_StringInit(address)
                lib.TF_StringCopy(address, item, len(item))
            return tensor
        array = np.ascontiguousarray(value, dtype=_NUMPY[dtype])
        tensor = lib.TF_AllocateTensor(dtype, dims, array.ndim, array.nbytes)
        ctypes.memmove(lib.TF_TensorData(tensor), array.ctypes.data, array.nbytes)
        return tensor

    def _array(self, tensor) -> np.ndarray:
        lib = self.lib
        shape = [lib.TF_Dim(tensor, i) for i in range(lib.TF_NumDims(tensor))]
        dtype = lib.TF_TensorType(tensor)
        base = lib.TF_TensorData(tensor)
        if dtype == DT_STRING:
            count = int(np.prod(shape)) if shape else 1
            items = []
            for i in range(count):
                address = base + i * _TSTRING_SIZE
                size = lib.TF_StringGetSize(address)
                pointer = lib.TF_StringGetDataPointer(address)
                items.append(ctypes.string_at(pointer, size))
            return np.array(items, dtype=object).reshape(shape)
        nbytes = lib.TF_TensorByteSize(tensor)
        raw = ctypes.string_at(base, nbytes)
        return np.frombuffer(raw, dtype=_NUMPY[dtype]).reshape(shape).copy()

    def run(self, signature: str, inputs: dict[str, np.ndarray]) -> dict[str, Any]:
        """Runs one signature by its tensor names; ``{output key: array}``.

        Raises:
            RuntimeError: with TensorFlow's message (e.g. a failed check).
            KeyError: for an unknown signature or input key.
        """
        spec = self.signatures[signature]
        missing = set(spec["inputs"]) - set(inputs)
        if missing:
            raise KeyError(f"{signature}: inputs {sorted(missing)} not given")
        keys = sorted(spec["inputs"])
        feeds = (_Output * len(keys))(
            *[self._output(spec["inputs"][k]["name"]) for k in keys]
        )
        tensors = [
            self._tensor(np.asarray(inputs[k]), spec["inputs"][k]["dtype"])
            for k in keys
        ]
        values = (ctypes.c_void_p * len(keys))(*tensors)
        out_keys = sorted(spec["outputs"])
        fetches = (_Output * len(out_keys))(
            *[self._output(spec["outputs"][k]["name"]) for k in out_keys]
        )
        results = (ctypes.c_void_p * len(out_keys))()
        self.lib.TF_SessionRun(
            self.session,
            None,
            feeds,
            values,
            len(keys),
            fetches,
            results,
            len(out_keys),
            None,
            0,
            None,
            self._status,
        )
        for tensor in tensors:
            self.lib.TF_DeleteTensor(tensor)
        self._check(f"running {signature}")
        arrays = {}
        for key, tensor in zip(out_keys, results):
            arrays[key] = self._array(tensor)
            self.lib.TF_DeleteTensor(tensor)
        return arrays


# --- the child process ----------------------------------------------------------


def _load_requests(folder: str) -> dict[str, tuple[str, dict[str, np.ndarray]]]:
    """``{label: (signature, {input key: array})}`` from ``requests.json``."""
    with open(os.path.join(folder, "requests.json")) as f:
        described = json.load(f)
    requests = {}
    for label, entry in described.items():
        inputs = {}
        for key, value in entry["inputs"].items():
            if "strings" in value:
                items = [base64.b64decode(s) for s in value["strings"]]
                array = np.array(items, dtype=object).reshape(value["shape"])
            else:
                array = np.load(os.path.join(folder, value["npy"]))
            inputs[key] = array
        requests[label] = (entry["signature"], inputs)
    return requests


def main(argv: list[str]) -> int:
    """``MODEL_DIR REQUESTS_DIR OUT_DIR [--no_text_ops]``; see the module doc."""
    export_dir, requests_dir, out_dir = argv[1:4]
    libraries = [] if "--no_text_ops" in argv else None
    os.makedirs(out_dir, exist_ok=True)
    report: dict[str, Any] = {"signatures": {}, "error": None}
    try:
        report["tensorflow"] = tensorflow_version()
        session = CSession(export_dir, libraries)
        report["tensorflow"] = session.version
        report["op_libraries"] = [
            os.path.basename(p) for p in (libraries or text_op_libraries())
        ]
        report["found"] = sorted(session.signatures)
        for number, (label, (signature, inputs)) in enumerate(
            _load_requests(requests_dir).items()
        ):
            entry: dict[str, Any] = {}
            try:
                for key, array in session.run(signature, inputs).items():
                    if array.dtype == object:
                        strings = [base64.b64encode(s).decode() for s in array.flat]
                        entry[key] = {"strings": strings, "shape": list(array.shape)}
                    else:
                        name = f"{number}.{key}.npy"
                        np.save(os.path.join(out_dir, name), array)
                        entry[key] = {"npy": name}
            except (RuntimeError, KeyError) as error:
                entry = {"error": str(error)}
            report["signatures"][label] = entry
    except RuntimeError as error:
        report["error"] = str(error)
    report["imported_tensorflow_python"] = "tensorflow.python" in sys.modules
    with open(os.path.join(out_dir, "outputs.json"), "w") as f:
        json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
