"""A resumable store of numbered array shards listed in a JSON manifest.

The one mechanism behind the feature cache (`vse_tf.features`) and the
index build (`vse_tf.retrieval.index_lib`): long jobs write their output a
shard at a time, so a killed run loses at most the shard it was computing.

A store is a folder of shard files and a manifest (by default
``<folder>/manifest.json``; it may live elsewhere). Each shard is::

    shard-00000.npy     the shard's array (any dtype but object, any shape)
    shard-00000.json    optional: a JSON record that belongs to the array
                        (e.g. the items its rows stand for)

and the manifest lists one entry per finished shard::

    {"shard": 0, "file": "shard-00000.npy", "rows": 1024,
     "sha256": "...", "record_file": "shard-00000.json",
     "record_sha256": "...", ...the caller's own fields}

The rules that make it safe to kill at any moment:

- every file is written to a temporary name and renamed into place
  (`io_utils.atomic_write_bytes`), a shard's files before the manifest
  entry that names them, so an entry only ever names complete files;
- a shard is read back only when its bytes match the entry's sha256 and its
  array has the entry's rows (and the caller's dtype and row shape); a
  truncated, overwritten or flipped file is recomputed, never used.

The store writes no manifest by itself: `write_shard` returns the entry and
the caller records it (`write_manifest`). A caller that computes shards in
parallel (several processes or machines, `vse_tf.pipelines`) has each
worker also leave the entry beside its shard (`write_entry`:
``shard-00000.entry.json``, after the shard's files), and gathers them
(`read_entries`) to write the manifest once; a rerun after a kill finds
the shards finished before it the same way.

Paths may be local or URLs (``gs://``, ``s3://``, ``hdfs://``): all file
access goes through `vse_tf.io_utils`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
from collections.abc import Iterable
from typing import Any, Optional

import numpy as np

from vse_tf import io_utils

MANIFEST_FILE = "manifest.json"
TEMPORARY_PREFIX = io_utils.TEMPORARY_PREFIX
ENTRY_SUFFIX = ".entry.json"


def shard_file(shard: int) -> str:
    """The array file name of shard ``shard``: ``shard-00012.npy``."""
    return f"shard-{shard:05d}.npy"


def record_file(shard: int) -> str:
    """The record file name of shard ``shard``: ``shard-00012.json``."""
    return f"shard-{shard:05d}.json"


def entry_file(shard: int) -> str:
    """The entry file name of shard ``shard``: ``shard-00012.entry.json``."""
    return f"shard-{shard:05d}{ENTRY_SUFFIX}"


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def npy_bytes(array: np.ndarray) -> bytes:
    """``array`` as the bytes of an ``.npy`` file (no pickles)."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def json_bytes(value: Any) -> bytes:
    """``value`` as indented JSON text with a final newline."""
    return (json.dumps(value, indent=2) + "\n").encode()


@dataclasses.dataclass
class Shard:
    """A shard read back and verified.

    Attributes:
        entry: Its manifest entry.
        array: Its array, ``[rows, ...]``.
        record: Its JSON record, or None when it has none.
    """

    entry: dict
    array: np.ndarray
    record: Optional[Any] = None


class ShardStore:
    """Writes and verifies the shards of one folder.

    Args:
        folder: Where the shard files are (created on the first write).
        manifest_path: The manifest file (default ``<folder>/manifest.json``).

    Example:
        >>> store = ShardStore("/tmp/features")
        >>> entry = store.write_shard(0, np.zeros([4, 2], np.float32), start=0)
        >>> store.write_manifest({"shards": [entry]})
        >>> store.read_shard(store.read_manifest()["shards"][0]).array.shape
        (4, 2)
    """

    def __init__(self, folder: str, manifest_path: Optional[str] = None):
        self.folder = folder
        self.manifest_path = manifest_path or os.path.join(folder, MANIFEST_FILE)

    # The manifest.

    def read_manifest(self) -> Optional[dict]:
        """The manifest, or None when there is none or it cannot be used.

        An unreadable or malformed manifest (not a JSON object with a
        ``shards`` list) is logged and treated as absent: its shards are
        computed again.
        """
        path = self.manifest_path
        if not io_utils.exists(path):
            return None
        try:
            manifest = json.loads(io_utils.read_bytes(path))
        except Exception as error:  # unreadable (any file system) or not JSON
            logging.warning("Unreadable %s (%s); starting again", path, error)
            return None
        if not (
            isinstance(manifest, dict) and isinstance(manifest.get("shards"), list)
        ):
            logging.warning("Malformed %s; starting again", path)
            return None
        return manifest

    def write_manifest(self, manifest: dict) -> None:
        """Writes the manifest atomically (after the shards it names)."""
        io_utils.atomic_write_bytes(self.manifest_path, json_bytes(manifest))

    # Shards.

    def write_shard(
        self, shard: int, array: np.ndarray, record: Any = None, **fields: Any
    ) -> dict:
        """Writes one shard's files atomically and returns its manifest entry.

        Args:
            shard: Its number (names the files).
            array: ``[rows, ...]``, saved as ``.npy``.
            record: JSON-serialisable data of the shard, saved beside it.
            **fields: The caller's fields, copied into the entry.

        Returns:
            ``{"shard", **fields, "rows", "file", "sha256"}`` plus
            ``record_file`` and ``record_sha256`` with a record.
        """
        io_utils.makedirs(self.folder)
        data = npy_bytes(array)
        name = shard_file(shard)
        io_utils.atomic_write_bytes(os.path.join(self.folder, name), data)
        entry = {"shard": shard, **fields}
        entry.update(rows=int(array.shape[0]), file=name, sha256=sha256_bytes(data))
        if record is not None:
            record_data = json_bytes(record)
            name = record_file(shard)
            io_utils.atomic_write_bytes(os.path.join(self.folder, name), record_data)
            entry.update(record_file=name, record_sha256=sha256_bytes(record_data))
        return entry

    def read_shard(
        self,
        entry: dict,
        dtype: Optional[Any] = None,
        row_shape: Optional[tuple[int, ...]] = None,
    ) -> Optional[Shard]:
        """A shard if its files match ``entry``, else None (logged).

        Args:
            entry: Its manifest entry (from `write_shard`).
            dtype: The array dtype it must have (None: any).
            row_shape: The shape of one row it must have (None: any).

        Returns:
            The verified `Shard`, or None when a file is missing, unreadable,
            fails its sha256, or the array has another dtype or shape.
        """
        try:
            data = self._verified_bytes(entry["file"], entry["sha256"])
            record_name = entry.get("record_file")
            if record_name is not None:
                record_data = self._verified_bytes(record_name, entry["record_sha256"])
            rows = int(entry["rows"])
        except (KeyError, TypeError, ValueError) as error:
            logging.warning("Shard %r of %s unusable (%s)", entry, self.folder, error)
            return None
        except _Unverified as error:
            logging.warning("%s; recomputing", error)
            return None
        try:
            array = np.load(io.BytesIO(data), allow_pickle=False)
            record = None if record_name is None else json.loads(record_data)
        except Exception as error:  # the sha256 matched: only a writer's bug
            logging.warning("Shard %s unparsable (%s); recomputing", entry, error)
            return None
        expected = (rows, *row_shape) if row_shape is not None else None
        if (
            (dtype is not None and array.dtype != np.dtype(dtype))
            or (expected is not None and array.shape != expected)
            or (array.ndim == 0 or array.shape[0] != rows)
        ):
            logging.warning(
                "Shard %s is %s %s, expected %s %s; recomputing",
                os.path.join(self.folder, entry["file"]),
                array.dtype,
                array.shape,
                np.dtype(dtype) if dtype is not None else "any dtype",
                expected or f"{rows} rows",
            )
            return None
        return Shard(entry=entry, array=array, record=record)

    def read_complete(
        self,
        entries: Iterable[Any],
        is_valid: Optional[Any] = None,
        dtype: Optional[Any] = None,
        row_shape: Optional[tuple[int, ...]] = None,
    ) -> dict[int, Shard]:
        """The shards of ``entries`` that are complete and verified, by number.

        Args:
            entries: Manifest entries.
            is_valid: ``is_valid(entry) -> bool``: the caller's check that an
                entry is well formed and belongs where it says (None: any
                entry with an int ``shard``).
            dtype: See `read_shard`.
            row_shape: See `read_shard`.

        Returns:
            ``{shard number: Shard}``; malformed, repeated or damaged
            entries are left out (and logged), so their shards get computed
            again.
        """
        complete: dict[int, Shard] = {}
        for entry in entries:
            number = entry.get("shard") if isinstance(entry, dict) else None
            if number in complete and complete[number].entry == entry:
                continue  # the same entry twice (manifest and entry file)
            well_formed = isinstance(number, int) and number not in complete
            if not well_formed or (is_valid is not None and not is_valid(entry)):
                logging.warning("Malformed shard entry in %s: %r", self.folder, entry)
                continue
            shard = self.read_shard(entry, dtype=dtype, row_shape=row_shape)
            if shard is not None:
                complete[number] = shard
        return complete

    def write_entry(self, entry: dict) -> dict:
        """Leaves ``entry`` beside its shard (after `write_shard` returned it).

        The checksums are those of the files on disk now: when two attempts
        at one shard overlap (a retried or speculative worker), the entry
        names whichever files won, so it never disagrees with them.

        Returns:
            The entry as written.
        """
        entry = dict(entry)
        for name_key, sha_key in (("file", "sha256"), ("record_file", "record_sha256")):
            if name_key in entry:
                data = io_utils.read_bytes(self._path(entry[name_key]))
                entry[sha_key] = sha256_bytes(data)
        path = os.path.join(self.folder, entry_file(entry["shard"]))
        io_utils.atomic_write_bytes(path, json_bytes(entry))
        return entry

    def read_entries(self) -> list[dict]:
        """The entries left by `write_entry` (unverified; unreadable ones skipped)."""
        if not io_utils.isdir(self.folder):
            return []
        entries = []
        for name in sorted(io_utils.listdir(self.folder)):
            if not (name.startswith("shard-") and name.endswith(ENTRY_SUFFIX)):
                continue
            try:
                entries.append(json.loads(io_utils.read_bytes(self._path(name))))
            except Exception as error:  # a damaged entry: that shard is redone
                logging.warning("Ignoring entry file %s (%s)", name, error)
        return entries

    def remove_entries(self) -> None:
        """Deletes the entry files (once the manifest lists their shards)."""
        if not io_utils.isdir(self.folder):
            return
        for name in io_utils.listdir(self.folder):
            if name.startswith("shard-") and name.endswith(ENTRY_SUFFIX):
                io_utils.remove(self._path(name))

    def _path(self, name: str) -> str:
        return os.path.join(self.folder, name)

    def remove_stale_temporaries(self, older_than: float) -> None:
        """Deletes temporary files that runs killed while writing left behind.

        Args:
            older_than: Only files last modified before this time
                (``time.time()`` seconds) are removed, so a run writing now
                in the same folder keeps its own.
        """
        if not io_utils.isdir(self.folder):
            return
        for name in io_utils.listdir(self.folder):
            path = self._path(name)
            try:
                if (
                    name.startswith(TEMPORARY_PREFIX)
                    and io_utils.getmtime(path) < older_than
                ):
                    io_utils.remove(path)
            except Exception:  # removed meanwhile by another run
                pass

    def _verified_bytes(self, name: str, sha256: str) -> bytes:
        path = self._path(name)
        try:
            data = io_utils.read_bytes(path)
        except Exception as error:  # OSError, or tf.errors on a URL
            raise _Unverified(f"Shard file {path} unreadable ({error})") from None
        if sha256_bytes(data) != sha256:
            raise _Unverified(f"Shard file {path} fails its sha256")
        return data


class _Unverified(Exception):
    """A shard file is missing, unreadable or fails its checksum."""
