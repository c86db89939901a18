"""Tests of the restricted legacy-pickle reader; compared with torch where present."""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct

import numpy as np
import pytest

from vse_tf.models import efficientnet_lite, torch_weights

# ---- a legacy torch.save file written by hand, opcode by opcode -----------


class _Global:
    """Pickles as a GLOBAL reference to ``module.name``."""

    def __init__(self, module, name):
        self.module, self.name = module, name


class _Call:
    """Pickles as ``func(*args)`` (REDUCE)."""

    def __init__(self, func, args):
        self.func, self.args = func, args


class _OrderedItems:
    """Pickles as torch does a state dict: ``OrderedDict()`` then SETITEMS."""

    def __init__(self, items):
        self.items = items


class _Storage:
    """Pickles as the persistent id torch writes for a storage."""

    def __init__(self, type_name, key, numel):
        self.pid = ("storage", _Global("torch", type_name), key, "cpu", numel, None)


class _Pickler(pickle._Pickler):  # the pure-Python pickler lets us emit opcodes
    def persistent_id(self, obj):
        return obj.pid if isinstance(obj, _Storage) else None

    def save(self, obj, save_persistent_id=True):
        if isinstance(obj, _Global):
            self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
        elif isinstance(obj, _Call):
            self.save(obj.func)
            self.save(tuple(obj.args))
            self.write(pickle.REDUCE)
        elif isinstance(obj, _OrderedItems):
            self.save(_Call(_Global("collections", "OrderedDict"), []))
            self.write(pickle.MARK)
            for key, value in obj.items:
                self.save(key)
                self.save(value)
            self.write(pickle.SETITEMS)
        else:
            super().save(obj, save_persistent_id)


def _pickle(obj) -> bytes:
    out = io.BytesIO()
    _Pickler(out, protocol=2).dump(obj)
    return out.getvalue()


def _legacy_file(tensors: dict, payload=None, truncate: int = 0) -> bytes:
    """A legacy torch.save of float32/int64 tensors, each in its own storage.

    ``payload`` replaces the state dict record (e.g. a malicious object).
    """
    names = {np.dtype("float32"): "FloatStorage", np.dtype("int64"): "LongStorage"}
    items, keys, blobs = [], [], []
    for i, (name, array) in enumerate(tensors.items()):
        key = str(1000 + i)
        strides = tuple(s // array.itemsize for s in array.strides)
        rebuild = _Call(
            _Global("torch._utils", "_rebuild_tensor_v2"),
            [
                _Storage(names[array.dtype], key, array.size),
                0,
                array.shape,
                strides,
                False,
                _Call(_Global("collections", "OrderedDict"), []),
            ],
        )
        items.append((name, rebuild))
        keys.append(key)
        # The storage bytes in memory order (strides index into them).
        blobs.append(struct.pack("<q", array.size) + array.tobytes(order="A"))
    content = (
        _pickle(torch_weights.MAGIC_NUMBER)
        + _pickle(torch_weights.PROTOCOL_VERSION)
        + _pickle({"protocol_version": 1001, "little_endian": True})
        + _pickle(payload if payload is not None else _OrderedItems(items))
        + _pickle(keys)
        + b"".join(blobs)
    )
    return content[: len(content) - truncate] if truncate else content


TENSORS = {
    "conv.weight": np.arange(2 * 3 * 3 * 3, dtype=np.float32).reshape(2, 3, 3, 3),
    "bn.running_var": np.array([0.5, 2.0], np.float32),
    "bn.num_batches_tracked": np.array(7, np.int64),
}


def _write(tmp_path, content: bytes, name="weights.pth") -> str:
    path = str(tmp_path / name)
    with open(path, "wb") as f:
        f.write(content)
    return path


def test_reads_a_good_file(tmp_path):
    path = _write(tmp_path, _legacy_file(TENSORS))
    state = torch_weights.read_legacy_state_dict(path)
    assert list(state) == list(TENSORS)
    for name, array in TENSORS.items():
        np.testing.assert_array_equal(state[name], array)
        assert state[name].dtype == array.dtype and state[name].shape == array.shape


def test_transposed_view_is_read_through_its_strides(tmp_path):
    matrix = np.arange(6, dtype=np.float32).reshape(2, 3)
    path = _write(tmp_path, _legacy_file({"w": np.asfortranarray(matrix.T).T}))
    np.testing.assert_array_equal(
        torch_weights.read_legacy_state_dict(path)["w"], matrix
    )


def test_truncated_file_is_refused(tmp_path):
    path = _write(tmp_path, _legacy_file(TENSORS, truncate=5))
    with pytest.raises(torch_weights.TorchFileError, match="truncated"):
        torch_weights.read_legacy_state_dict(path)


def test_truncated_inside_the_pickle_is_refused(tmp_path):
    content = _legacy_file(TENSORS)
    path = _write(tmp_path, content[:200])
    with pytest.raises(torch_weights.TorchFileError, match=path):
        torch_weights.read_legacy_state_dict(path)


@pytest.mark.parametrize(
    "module,name", [("os", "system"), ("builtins", "eval"), ("subprocess", "Popen")]
)
def test_pickle_importing_anything_else_is_refused(tmp_path, module, name):
    marker = tmp_path / "pwned"
    payload = _Call(_Global(module, name), [f"touch {marker}"])
    path = _write(tmp_path, _legacy_file({}, payload=payload))
    with pytest.raises(torch_weights.UnsafePickleError, match=f"{module}.{name}"):
        torch_weights.read_legacy_state_dict(path)
    assert not marker.exists()


def test_unexpected_globals_inside_a_state_dict_are_refused(tmp_path):
    items = _OrderedItems([("w", _Call(_Global("numpy", "frombuffer"), [b"\0" * 4]))])
    path = _write(tmp_path, _legacy_file({}, payload=items))
    with pytest.raises(torch_weights.UnsafePickleError, match="numpy.frombuffer"):
        torch_weights.read_legacy_state_dict(path)


def test_foreign_files_are_refused(tmp_path):
    with pytest.raises(torch_weights.TorchFileError, match="magic"):
        torch_weights.read_legacy_state_dict(_write(tmp_path, _pickle(12345)))
    with pytest.raises(torch_weights.TorchFileError, match="zip"):
        torch_weights.read_legacy_state_dict(_write(tmp_path, b"PK\x03\x04rest"))
    with pytest.raises(torch_weights.TorchFileError):
        torch_weights.read_legacy_state_dict(_write(tmp_path, b"not a pickle at all"))
    with pytest.raises(FileNotFoundError):
        torch_weights.read_legacy_state_dict(str(tmp_path / "missing.pth"))


def _package_file(variant="efficientnet_lite0"):
    try:
        return efficientnet_lite.package_weights_path(variant)
    except ImportError as error:
        pytest.skip(f"{error}")


def test_package_file_matches_torch_load():
    """Where torch is installed: our arrays equal torch.load(weights_only=True)'s."""
    torch = pytest.importorskip("torch", reason="torch is not installed here")
    path = _package_file()
    ours = torch_weights.read_legacy_state_dict(path)
    theirs = torch.load(path, map_location="cpu", weights_only=True)
    assert list(ours) == list(theirs)
    for name, tensor in theirs.items():
        np.testing.assert_array_equal(ours[name], tensor.numpy(), err_msg=name)


def test_torch_saved_legacy_file_matches():
    """Where torch is installed: a file torch itself writes in the legacy format."""
    torch = pytest.importorskip("torch", reason="torch is not installed here")
    import tempfile

    state = collections.OrderedDict(
        a=torch.arange(12, dtype=torch.float32).reshape(3, 4).t(),  # non-contiguous
        b=torch.tensor(5, dtype=torch.int64),
        c=torch.ones(2, 2, dtype=torch.float64),
    )
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "legacy.pth")
        torch.save(state, path, _use_new_zipfile_serialization=False)
        ours = torch_weights.read_legacy_state_dict(path)
    for name, tensor in state.items():
        np.testing.assert_array_equal(ours[name], tensor.numpy(), err_msg=name)
