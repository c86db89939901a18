"""Small file helpers shared by the library, for local paths and URLs.

A path with a scheme (``gs://``, ``s3://``, ``hdfs://``, ...) goes through
``tf.io.gfile`` (whichever file systems this TensorFlow knows); a local
path through ``os``, with ``fsync`` before the rename that makes a write
visible.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import uuid

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


def atomic_write_bytes(path: str, data: bytes, suffix: str = "") -> None:
    """Writes ``data`` to ``path`` all or nothing (temp file, fsync, rename).

    A crash leaves either the previous file or the new one, never a part.
    On a URL the temporary file is renamed with ``tf.io.gfile.rename``
    (atomic where the file system's rename is; object stores copy, and a
    reader still never sees a partial file under ``path``).

    Args:
        path: Destination file.
        data: Its whole content.
        suffix: Suffix of the hidden temporary file (``.tmp-XXXX<suffix>``
            beside ``path``).
    """
    if is_url(path):
        folder = path.rsplit("/", 1)[0]
        tmp = f"{folder}/{TEMPORARY_PREFIX}{uuid.uuid4().hex}{suffix}"
        gfile = _gfile()
        try:
            with gfile.GFile(tmp, "wb") as f:
                f.write(data)
            gfile.rename(tmp, path, overwrite=True)
        except BaseException:
            if gfile.exists(tmp):
                gfile.remove(tmp)
            raise
        return
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=TEMPORARY_PREFIX, suffix=suffix, dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


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
