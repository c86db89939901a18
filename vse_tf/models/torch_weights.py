"""Reads legacy-format PyTorch state dicts without torch and without trusting pickle.

A legacy (pre-1.6, non-zip) ``torch.save`` file is five records in a row:

1. a pickled magic number (``0x1950a86a20f9469cfc6c``),
2. a pickled protocol version (``1001``),
3. a pickled ``sys_info`` dict (byte order, type sizes),
4. the pickled object: here an ``OrderedDict`` of tensors, each rebuilt by
   ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)``
   from a *persistent id* ``("storage", StorageType, key, device, numel,
   view)``,
5. a pickled list of storage keys, then for each key in that order an
   int64 element count and the raw little-endian storage bytes.

`read_legacy_state_dict` parses records 1-4 with a restricted
``pickle.Unpickler`` whose ``find_class`` admits only
``collections.OrderedDict``, ``torch._utils._rebuild_tensor_v2`` and the
``torch.*Storage`` types, replaced by inert stand-ins; any other global
(``os.system``, ``builtins.eval``, ...) is refused with `UnsafePickleError`
before it is ever looked up. Record 5 is read as numbers only. Nothing here
imports torch.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
from typing import Any, BinaryIO

import numpy as np

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001

# torch storage type name -> numpy dtype (little-endian).
_STORAGE_DTYPES = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


class TorchFileError(ValueError):
    """The file is not a readable legacy PyTorch state dict (names what is wrong)."""


class UnsafePickleError(TorchFileError):
    """The pickle asks for a global outside the admitted tensor-rebuild ones."""


class _StorageType:
    """Stand-in for ``torch.FloatStorage`` etc.: only its element type."""

    def __init__(self, name: str):
        self.name = name
        self.dtype = _STORAGE_DTYPES[name]


class _StorageRef:
    """A storage named by the persistent id; filled from record 5."""

    def __init__(self, key: str, dtype: np.dtype, numel: int):
        self.key, self.dtype, self.numel = key, dtype, numel
        self.data: np.ndarray | None = None


class _TensorRef:
    """What ``_rebuild_tensor_v2`` returns here: a view into a storage."""

    def __init__(self, storage, offset, size, stride, *unused):
        if not isinstance(storage, _StorageRef):
            raise UnsafePickleError("_rebuild_tensor_v2 called without a storage")
        self.storage = storage
        self.offset = int(offset)
        self.size = tuple(int(s) for s in size)
        self.stride = tuple(int(s) for s in stride)


def _empty_ordered_dict(*args):
    if args:
        raise UnsafePickleError("OrderedDict called with arguments")
    return collections.OrderedDict()


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: BinaryIO, path: str):
        super().__init__(file)
        self._path = path
        self.storages: dict[str, _StorageRef] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return _empty_ordered_dict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _TensorRef
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise UnsafePickleError(
            f"{self._path}: the pickle asks for {module}.{name}, which a "
            "tensor state dict never needs; refusing to load it"
        )

    def persistent_load(self, pid: Any) -> Any:
        if (
            not isinstance(pid, tuple)
            or len(pid) < 5
            or pid[0] != "storage"
            or not isinstance(pid[1], _StorageType)
        ):
            raise TorchFileError(f"{self._path}: unexpected persistent id {pid!r}")
        _, storage_type, key, _device, numel = pid[:5]
        key = str(key)
        if key not in self.storages:
            self.storages[key] = _StorageRef(key, storage_type.dtype, int(numel))
        return self.storages[key]


def _load_plain(file: BinaryIO, path: str, what: str) -> Any:
    """Unpickles a record that may hold only plain values (no globals)."""
    unpickler = _RestrictedUnpickler(file, path)
    try:
        return unpickler.load()
    except UnsafePickleError:
        raise
    except Exception as error:
        raise TorchFileError(f"{path}: cannot read the {what}: {error}") from error


def _read_storages(file: BinaryIO, path: str, storages: dict, keys: list) -> None:
    for key in keys:
        key = str(key)
        if key not in storages:
            raise TorchFileError(f"{path}: storage {key} is listed but never used")
        ref = storages[key]
        header = file.read(8)
        if len(header) != 8:
            raise TorchFileError(f"{path}: truncated before storage {key}")
        (numel,) = struct.unpack("<q", header)
        if numel != ref.numel:
            raise TorchFileError(
                f"{path}: storage {key} holds {numel} values, its tensors say "
                f"{ref.numel}"
            )
        nbytes = numel * ref.dtype.itemsize
        raw = file.read(nbytes)
        if len(raw) != nbytes:
            raise TorchFileError(
                f"{path}: truncated inside storage {key} ({len(raw)} of {nbytes} bytes)"
            )
        ref.data = np.frombuffer(raw, ref.dtype)
    missing = sorted(set(storages) - {str(k) for k in keys})
    if missing:
        raise TorchFileError(f"{path}: storages {missing[:3]} have no data")


def _materialise(name: str, ref: _TensorRef, path: str) -> np.ndarray:
    data = ref.storage.data
    itemsize = data.itemsize
    extent = ref.offset + sum((s - 1) * st for s, st in zip(ref.size, ref.stride))
    if ref.size and min(ref.size) > 0 and extent >= data.size:
        raise TorchFileError(f"{path}: tensor {name} reaches past its storage")
    view = np.lib.stride_tricks.as_strided(
        data[ref.offset :],
        shape=ref.size,
        strides=tuple(st * itemsize for st in ref.stride),
        writeable=False,
    )
    return np.array(view)  # a contiguous copy, independent of the file buffer


def read_legacy_state_dict(path: str) -> dict[str, np.ndarray]:
    """Reads a legacy-format ``torch.save`` state dict as numpy arrays.

    Args:
        path: The ``.pth`` file.

    Returns:
        ``{name: array}`` in the file's order, dtypes as stored (``float32``
        weights, ``int64`` ``num_batches_tracked``).

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        UnsafePickleError: if the pickle names a global outside the admitted
            tensor-rebuild ones.
        TorchFileError: for a truncated, corrupt or foreign file (a zip-format
            ``torch.save`` included), naming what is wrong.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"PyTorch weights file not found: {path}")
    with open(path, "rb") as f:
        content = f.read()
    if content[:4] == b"PK\x03\x04":
        raise TorchFileError(
            f"{path}: a zip-format torch.save file; only the legacy format is read"
        )
    file = io.BytesIO(content)
    magic = _load_plain(file, path, "magic number")
    if magic != MAGIC_NUMBER:
        raise TorchFileError(f"{path}: not a legacy PyTorch file (bad magic number)")
    version = _load_plain(file, path, "protocol version")
    if version != PROTOCOL_VERSION:
        raise TorchFileError(f"{path}: unsupported protocol version {version!r}")
    sys_info = _load_plain(file, path, "system info")
    if not isinstance(sys_info, dict) or not sys_info.get("little_endian", False):
        raise TorchFileError(f"{path}: only little-endian files are supported")
    unpickler = _RestrictedUnpickler(file, path)
    try:
        state = unpickler.load()
    except (UnsafePickleError, TorchFileError):
        raise
    except Exception as error:
        raise TorchFileError(f"{path}: cannot read the state dict: {error}") from error
    if not isinstance(state, dict) or not all(
        isinstance(v, _TensorRef) for v in state.values()
    ):
        raise TorchFileError(f"{path}: not a state dict of tensors")
    keys = _load_plain(file, path, "storage list")
    if not isinstance(keys, list):
        raise TorchFileError(f"{path}: the storage list is not a list")
    _read_storages(file, path, unpickler.storages, keys)
    return {name: _materialise(name, ref, path) for name, ref in state.items()}
