"""Small file helpers shared by the library, for local paths and URLs.

A path with a scheme (``gs://``, ``s3://``, ``hdfs://``, ...) goes through
``tf.io.gfile`` (whichever file systems this TensorFlow knows); a local
path through ``os``, with ``fsync`` before the rename that makes a write
visible.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import uuid
from collections.abc import Iterator
from typing import Any, Optional

TEMPORARY_PREFIX = ".tmp-"


def is_url(path: str) -> bool:
    """Whether ``path`` names a file system by scheme (``gs://...``)."""
    return "://" in str(path)


def _gfile():
    import tensorflow as tf  # noqa: PLC0415 (only for URLs)

    return tf.io.gfile


def absolute(path: str) -> str:
    """``os.path.abspath`` for local paths; URLs as they are."""
    return path if is_url(path) else os.path.abspath(path)


def join(folder: str, name: str) -> str:
    """``name`` inside ``folder``; ``name`` itself when it is absolute or a URL."""
    if is_url(name) or os.path.isabs(name):
        return name
    if is_url(folder):
        return f"{folder.rstrip('/')}/{name}"
    return os.path.join(folder, name)


def parent(path: str) -> str:
    """The folder that holds ``path``."""
    return path.rstrip("/").rsplit("/", 1)[0] if is_url(path) else os.path.dirname(path)


def exists(path: str) -> bool:
    """Whether ``path`` exists (file or folder)."""
    return _gfile().exists(path) if is_url(path) else os.path.exists(path)


def isdir(path: str) -> bool:
    """Whether ``path`` is a folder."""
    return _gfile().isdir(path) if is_url(path) else os.path.isdir(path)


def makedirs(path: str) -> None:
    """Creates ``path`` and its parents (no error if it exists)."""
    if is_url(path):
        _gfile().makedirs(path)
    else:
        os.makedirs(path, exist_ok=True)


def listdir(path: str) -> list[str]:
    """The names in folder ``path``."""
    return list(_gfile().listdir(path)) if is_url(path) else os.listdir(path)


def remove(path: str) -> None:
    """Deletes file ``path``."""
    if is_url(path):
        _gfile().remove(path)
    else:
        os.remove(path)


def rmtree(path: str) -> None:
    """Deletes folder ``path`` and everything in it (nothing if it is absent)."""
    if is_url(path):
        if _gfile().exists(path):
            _gfile().rmtree(path)
    else:
        import shutil  # noqa: PLC0415

        shutil.rmtree(path, ignore_errors=True)


def getmtime(path: str) -> float:
    """Last modification time of ``path``, in ``time.time()`` seconds."""
    if is_url(path):
        return _gfile().stat(path).mtime_nsec / 1e9
    return os.path.getmtime(path)


def read_bytes(path: str) -> bytes:
    """The whole content of file ``path``."""
    if is_url(path):
        with _gfile().GFile(path, "rb") as f:
            return f.read()
    with open(path, "rb") as f:
        return f.read()


@contextlib.contextmanager
def atomic_path(path: str, suffix: str = "") -> Iterator[str]:
    """A temporary path to write ``path``'s new content to, then made ``path``.

    The one "write beside, fsync, rename" of the library: for writers that
    must create a file themselves (Keras ``save_weights``, h5py,
    ``np.save``); `atomic_write_bytes` and friends use it too. A crash or
    an exception leaves either the previous file or the new one under
    ``path``, never a part, and no temporary file after an exception.

    Locally the temporary file ``.tmp-<random hex><suffix>`` is created
    beside ``path`` (same file system, so the rename is atomic), empty, with
    ``O_EXCL`` and mode ``0o666`` so that the kernel applies the current
    umask exactly as to a plain ``open(path, "w")`` (no process-wide umask
    juggling, safe with threads). The writer may truncate or rewrite it.
    On leaving the block the file is given that mode again if the writer
    changed it, fsynced, renamed onto ``path`` (``os.replace``), and the
    folder is fsynced where the platform allows (POSIX), so the rename
    itself survives a power loss. Two concurrent writers of one ``path``
    never share a temporary file; the last rename wins whole.

    On a URL the path is a fresh name in the target's folder (not created);
    it is renamed with ``tf.io.gfile.rename(..., overwrite=True)``, atomic
    where the file system's rename is (object stores copy, and a reader
    still never sees a partial file under ``path``).

    Args:
        path: Destination file; its folder must exist.
        suffix: End of the temporary file's name, for writers that check
            it (``".weights.h5"`` for Keras).

    Yields:
        The temporary path to write.
    """
    if is_url(path):
        folder = path.rstrip("/").rsplit("/", 1)[0]
        tmp = f"{folder}/{TEMPORARY_PREFIX}{uuid.uuid4().hex}{suffix}"
        gfile = _gfile()
        try:
            yield tmp
            gfile.rename(tmp, path, overwrite=True)
        except BaseException:
            if gfile.exists(tmp):
                gfile.remove(tmp)
            raise
        return
    folder = os.path.dirname(os.path.abspath(path))
    tmp, mode = _create_temporary(folder, suffix)
    try:
        yield tmp
        _fsync_file(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise
    _fsync_folder(folder)


def _create_temporary(folder: str, suffix: str) -> tuple[str, int]:
    """A new empty file in ``folder`` and its umask-given permission bits."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        tmp = os.path.join(folder, f"{TEMPORARY_PREFIX}{uuid.uuid4().hex}{suffix}")
        try:
            fd = os.open(tmp, flags, 0o666)
        except FileExistsError:  # pragma: no cover (128 random bits)
            continue
        try:
            # The kernel applied the umask of this very moment: 0o666 & ~umask.
            mode = stat.S_IMODE(os.fstat(fd).st_mode)
        finally:
            os.close(fd)
        return tmp, mode


def _fsync_file(tmp: str, mode: int) -> None:
    """Gives ``tmp`` permission bits ``mode`` and flushes it to the disk."""
    if stat.S_IMODE(os.stat(tmp).st_mode) != mode:
        os.chmod(tmp, mode)
    try:
        fd = os.open(tmp, os.O_RDWR | getattr(os, "O_BINARY", 0))
    except PermissionError:  # a read-only mode: fsync works on POSIX anyway
        fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_folder(folder: str) -> None:
    """Flushes ``folder``'s entries (a rename), where a folder can be opened."""
    if os.name != "posix":
        return
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot fsync a folder; the rename stands
    finally:
        os.close(fd)


def atomic_write_bytes(path: str, data: bytes, suffix: str = "") -> None:
    """Writes ``data`` to ``path`` all or nothing (`atomic_path`).

    Args:
        path: Destination file (local path or URL).
        data: Its whole content.
        suffix: Suffix of the hidden temporary file (``.tmp-XXXX<suffix>``
            beside ``path``).
    """
    with atomic_path(path, suffix) as tmp:
        if is_url(tmp):
            with _gfile().GFile(tmp, "wb") as f:
                f.write(data)
        else:
            with open(tmp, "wb") as f:
                f.write(data)


def atomic_write_text(path: str, text: str, encoding: str = "utf-8") -> None:
    """Writes ``text`` to ``path`` all or nothing, newlines as they are.

    The bytes are ``text.encode(encoding)``: no newline translation (like
    ``open(path, "w", newline="")``; on POSIX the same as plain ``"w"``).
    """
    atomic_write_bytes(path, text.encode(encoding))


def atomic_write_json(path: str, value: Any, indent: Optional[int] = 2) -> None:
    """Writes ``json.dumps(value, indent=indent)`` to ``path`` all or nothing.

    Exactly what ``json.dump(value, f, indent=indent)`` writes: keys in the
    value's order, ASCII only, no trailing newline.
    """
    atomic_write_text(path, json.dumps(value, indent=indent))


def default_cache_dir() -> str:
    """``$VSE_TF_CACHE``, else ``~/.cache/vse_tf``."""
    return os.environ.get(
        "VSE_TF_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "vse_tf")
    )


def file_sha256(path: str) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
