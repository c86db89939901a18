"""Small file helpers shared by the library."""

from __future__ import annotations

import hashlib
import os
import tempfile


def atomic_write_bytes(path: str, data: bytes, suffix: str = "") -> None:
    """Writes ``data`` to ``path`` all or nothing (temp file, fsync, rename).

    A crash leaves either the previous file or the new one, never a part.

    Args:
        path: Destination file.
        data: Its whole content.
        suffix: Suffix of the hidden temporary file (``.tmp-XXXX<suffix>``
            beside ``path``).
    """
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=folder)
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
