"""`vse_tf.io_utils`: the one atomic writer (temp beside, fsync, rename)."""

from __future__ import annotations

import json
import multiprocessing
import os
import stat

import numpy as np
import pytest

from vse_tf import io_utils

SIZE = 1 << 20  # 1 MiB per payload
WRITES = 50


def _payload(byte: bytes) -> bytes:
    return byte * SIZE


def _write_many(path: str, byte: bytes, start) -> None:
    """A writer process: waits for the others, then rewrites ``path`` often."""
    data = _payload(byte)
    start.wait()
    for _ in range(WRITES):
        io_utils.atomic_write_bytes(path, data)


def _is_whole_payload(data: bytes, bytes_: tuple[bytes, ...]) -> bool:
    return len(data) == SIZE and any(data == _payload(b) for b in bytes_)


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def test_concurrent_writers_leave_one_whole_payload_and_no_temporary(tmp_path):
    path = str(tmp_path / "target.bin")
    io_utils.atomic_write_bytes(path, _payload(b"0"))
    # spawn: the same on every platform, and no fork of a threaded process.
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(3)
    writers = [
        context.Process(target=_write_many, args=(path, byte, start))
        for byte in (b"a", b"b")
    ]
    for writer in writers:
        writer.start()
    start.wait(timeout=60)
    # Meanwhile a reader only ever sees whole files.
    reads = 0
    while any(w.is_alive() for w in writers):
        with open(path, "rb") as f:
            assert _is_whole_payload(f.read(), (b"0", b"a", b"b"))
        reads += 1
    for writer in writers:
        writer.join(timeout=60)
        assert writer.exitcode == 0
    assert reads > 0
    with open(path, "rb") as f:
        assert _is_whole_payload(f.read(), (b"a", b"b"))
    assert os.listdir(tmp_path) == ["target.bin"]


def test_concurrent_threads_use_distinct_temporaries(tmp_path):
    import threading  # noqa: PLC0415

    path = str(tmp_path / "target.txt")
    barrier = threading.Barrier(4)

    def write(text):
        barrier.wait()
        for _ in range(20):
            io_utils.atomic_write_text(path, text * 1000)

    threads = [threading.Thread(target=write, args=(c,)) for c in "wxyz"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with open(path, encoding="utf-8") as f:
        content = f.read()
    assert content in {c * 1000 for c in "wxyz"}
    assert os.listdir(tmp_path) == ["target.txt"]


def test_an_exception_in_atomic_path_keeps_the_old_file(tmp_path):
    path = str(tmp_path / "kept.bin")
    io_utils.atomic_write_bytes(path, b"old content")
    with pytest.raises(RuntimeError, match="writer failed"):
        with io_utils.atomic_path(path) as tmp:
            assert os.path.dirname(tmp) == str(tmp_path)
            assert os.path.basename(tmp).startswith(io_utils.TEMPORARY_PREFIX)
            with open(tmp, "wb") as f:
                f.write(b"half of the new")
            raise RuntimeError("writer failed")
    with open(path, "rb") as f:
        assert f.read() == b"old content"
    assert os.listdir(tmp_path) == ["kept.bin"]


def test_an_exception_before_any_write_leaves_nothing(tmp_path):
    path = str(tmp_path / "never.bin")
    with pytest.raises(KeyError):
        with io_utils.atomic_path(path):
            raise KeyError("early")
    assert os.listdir(tmp_path) == []


def test_atomic_path_gives_a_writer_a_fresh_path_with_the_suffix(tmp_path):
    path = str(tmp_path / "array.npy")
    array = np.arange(12, dtype=np.int32).reshape(3, 4)
    with io_utils.atomic_path(path, suffix=".npy") as tmp:
        assert tmp.endswith(".npy") and tmp != path
        assert not os.path.exists(path)
        np.save(tmp, array)  # no ".npy" appended: the name ends in it
    np.testing.assert_array_equal(np.load(path), array)
    assert os.listdir(tmp_path) == ["array.npy"]
    with io_utils.atomic_path(path, suffix=".npy") as tmp2:
        assert tmp2 != tmp
        np.save(tmp2, array + 1)
    np.testing.assert_array_equal(np.load(path), array + 1)


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_the_file_gets_the_mode_of_a_plain_open(tmp_path, umask_022):
    plain = tmp_path / "plain.txt"
    with open(plain, "w") as f:
        f.write("x")
    assert stat.S_IMODE(os.stat(plain).st_mode) == 0o666 & ~0o022 == 0o644
    for name in ("bytes.bin", "text.txt", "value.json", "path.bin"):
        path = str(tmp_path / name)
        if name == "bytes.bin":
            io_utils.atomic_write_bytes(path, b"x")
        elif name == "text.txt":
            io_utils.atomic_write_text(path, "x")
        elif name == "value.json":
            io_utils.atomic_write_json(path, {"x": 1})
        else:
            with io_utils.atomic_path(path) as tmp:
                # A writer that replaces the file with one of its own mode.
                os.remove(tmp)
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                os.close(fd)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o644, name


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_the_mode_follows_the_umask_of_each_call(tmp_path, umask_022):
    path = str(tmp_path / "file.bin")
    os.umask(0o077)
    io_utils.atomic_write_bytes(path, b"private")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    os.umask(0o002)
    io_utils.atomic_write_bytes(path, b"group")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o664


@pytest.mark.skipif(os.name != "posix", reason="folders open only on POSIX")
def test_the_file_and_then_its_folder_are_fsynced(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        real_fsync(fd)

    monkeypatch.setattr(io_utils.os, "fsync", fsync)
    io_utils.atomic_write_bytes(str(tmp_path / "f.bin"), b"data")
    assert synced == [False, True]


def test_atomic_write_json_round_trip_and_format(tmp_path):
    path = str(tmp_path / "metrics.json")
    value = {"rsum": 412.5, "i2t_r1": 40.1, "notes": ["caf\u00e9", None], "n": 5}
    io_utils.atomic_write_json(path, value)
    with open(path, encoding="utf-8") as f:
        text = f.read()
    # What json.dump(value, f, indent=2) writes: key order kept, no newline.
    assert text == json.dumps(value, indent=2)
    assert list(json.loads(text)) == ["rsum", "i2t_r1", "notes", "n"]
    assert json.loads(text) == value
    io_utils.atomic_write_json(path, [1, 2], indent=None)
    with open(path, encoding="utf-8") as f:
        assert f.read() == "[1, 2]"


def test_atomic_write_text_round_trip_keeps_newlines(tmp_path):
    path = str(tmp_path / "vocab.txt")
    text = "<pad>\n<unk>\ncaf\u00e9\r\n\u732b\n"
    io_utils.atomic_write_text(path, text)
    with open(path, "rb") as f:
        assert f.read() == text.encode("utf-8")
    with open(path, encoding="utf-8", newline="") as f:
        assert f.read() == text
    io_utils.atomic_write_text(path, "caf\u00e9", encoding="latin-1")
    with open(path, "rb") as f:
        assert f.read() == b"caf\xe9"
    assert os.listdir(tmp_path) == ["vocab.txt"]
