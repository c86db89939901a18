"""Embedding indexes of image collections and caption sets, and search in them.

An index is a folder::

    manifest.json     kind (image|caption), model (path, sha256 of
                      saved_model.pb, version) or server, dim, count, dtype,
                      created, skipped items (unreadable images) with reasons
    embeddings.npy    float16 or float32 [count, D], L2-normalised rows
    items.txt         count lines: absolute image paths, or captions

While it is being built the folder holds a `vse_tf.shard_store` store:
``build.json`` (what is being built, and one entry per finished shard with
its rows and sha256s) and ``shards/shard-NNNNN.npy`` + ``shard-NNNNN.json``
(the embeddings and the items of ``shard_size`` inputs each; every file
written atomically, the entry last). An interrupted build run again with
the same inputs continues after the last complete shard, and a shard whose
files fail their checksums is encoded again; the final files are written
atomically and the shards then removed.

Embeddings come from the exported SavedModel (`saved_model_lib`,
signatures ``encode_image`` and ``encode_text``) or from a TF Serving server
(`vse_tf.serving.client`).
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import io
import json
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Optional, Protocol, Union

import numpy as np
import tensorflow as tf

from vse_tf import errors, io_utils, progress, shard_store
from vse_tf.retrieval import search as search_lib
from vse_tf.serving import client as client_lib
from vse_tf.serving import saved_model_lib

INDEX_FORMAT = 1
MANIFEST_FILE = "manifest.json"
EMBEDDINGS_FILE = "embeddings.npy"
ITEMS_FILE = "items.txt"
BUILD_FILE = "build.json"
SHARDS_DIR = "shards"
ANN_MANIFEST = "ann.json"  # the approximate index (`vse_tf.retrieval.ann_index`)
ANN_DIR = "ann"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp")
DTYPES = ("float16", "float32")
KINDS = ("image", "caption")


class Encoder(Protocol):
    """What builds and queries an index: a local SavedModel or a server client."""

    def encode_text(self, sentences: Sequence[str]) -> np.ndarray:
        """``[N]`` sentences -> ``float32 [N, D]``."""

    def encode_images(self, images: Sequence[bytes]) -> np.ndarray:
        """``[N]`` encoded image files -> ``float32 [N, D]``."""

    def describe(self) -> dict:
        """The model description stored in the manifest."""


class SavedModelEncoder:
    """Runs the exported SavedModel's ``encode_text`` / ``encode_image`` locally.

    Args:
        path: An exported version folder (holds ``saved_model.pb``).
    """

    def __init__(self, path: str):
        self.path = os.path.abspath(path)
        if not os.path.exists(os.path.join(self.path, "saved_model.pb")):
            raise FileNotFoundError(f"no saved_model.pb in {self.path}")
        self._model = saved_model_lib.load_saved_model(self.path)
        if "encode_image" not in self._model.signatures:
            self._encode_image = None
        else:
            self._encode_image = self._model.signatures["encode_image"]
        self._encode_text = self._model.signatures["encode_text"]

    def encode_text(self, sentences: Sequence[str]) -> np.ndarray:
        text = tf.constant([str(s) for s in sentences], tf.string)
        return self._encode_text(text=text)["embedding"].numpy()

    def encode_images(self, images: Sequence[bytes]) -> np.ndarray:
        if self._encode_image is None:
            raise ValueError(
                f"{self.path} has no encode_image signature (a model trained on "
                "precomputed features has no CNN); it cannot index image files"
            )
        data = tf.constant(list(images), tf.string)
        return self._encode_image(image_bytes=data)["embedding"].numpy()

    def describe(self) -> dict:
        return describe_saved_model(self.path)


def describe_saved_model(path: str) -> dict:
    """The manifest's ``model``: path, sha256 of ``saved_model.pb``, version.

    Raises:
        FileNotFoundError: if ``path`` holds no ``saved_model.pb``.
    """
    path = os.path.abspath(path)
    graph = os.path.join(path, "saved_model.pb")
    if not os.path.exists(graph):
        raise FileNotFoundError(f"no saved_model.pb in {path}")
    version = os.path.basename(path)
    return {
        "path": path,
        "sha256": io_utils.file_sha256(graph),
        "version": version if version.isdigit() else None,
    }


def get_encoder(
    model: Optional[str] = None,
    server: Optional[str] = None,
    **client_kwargs: Any,
) -> Encoder:
    """A `SavedModelEncoder` for ``model`` or a serving client for ``server``.

    Args:
        model: Exported SavedModel version folder.
        server: ``http://host:8501`` (REST) or ``[grpc://]host:8500`` (gRPC).
        **client_kwargs: For the client: ``model_name``, ``timeout``,
            ``batch_size``, ``version``.

    Raises:
        ValueError: unless exactly one of ``model`` and ``server`` is given.
    """
    if bool(model) == bool(server):
        raise ValueError("give exactly one of a SavedModel path and a server URL")
    if model:
        return SavedModelEncoder(model)
    return client_lib.connect(server, **client_kwargs)


def _is_invalid_input(error: Exception) -> bool:
    if isinstance(error, tf.errors.InvalidArgumentError):
        return True
    return isinstance(error, client_lib.ServingError) and error.is_invalid_input


def _atomic_write_json(path: str, value: Any) -> None:
    io_utils.atomic_write_bytes(path, shard_store.json_bytes(value))


def _atomic_save_npy(path: str, array: np.ndarray) -> None:
    io_utils.atomic_write_bytes(path, shard_store.npy_bytes(array), suffix=".npy")


def list_images(images: Union[str, Sequence[str]]) -> list[str]:
    """Absolute image paths from a folder, a glob, a list file or a list of paths.

    Args:
        images: A folder (searched recursively for .jpg/.jpeg/.png/.gif/.bmp,
            sorted), a glob (``photos/*/*.jpg``), a text file with one path
            per line (relative paths are relative to the file's folder;
            blank lines and ``#`` comments skipped), or a sequence of paths.
            Folders, globs and list files may be URLs (``gs://...``).

    Returns:
        ``[N]`` absolute paths, in a deterministic order.
    """
    if not isinstance(images, str):
        return [io_utils.absolute(p) for p in images]
    if io_utils.isdir(images):
        return _images_in_folder(images)
    if not io_utils.exists(images):
        if any(char in images for char in "*?["):
            import tensorflow as tf  # noqa: PLC0415

            return sorted(io_utils.absolute(p) for p in tf.io.gfile.glob(images))
        raise FileNotFoundError(f"{images}: neither a folder nor a list file")
    base = io_utils.parent(io_utils.absolute(images))
    paths = []
    for line in _lines(images):
        line = line.strip()
        if line and not line.startswith("#"):
            paths.append(io_utils.absolute(io_utils.join(base, line)))
    return paths


def _images_in_folder(folder: str) -> list[str]:
    if io_utils.is_url(folder):
        import tensorflow as tf  # noqa: PLC0415

        walk = ((root, files) for root, _, files in tf.io.gfile.walk(folder))
    else:
        walk = ((root, files) for root, _, files in os.walk(folder))
    found = [
        io_utils.absolute(io_utils.join(root, name))
        for root, files in walk
        for name in files
        if name.lower().endswith(IMAGE_EXTENSIONS)
    ]
    return sorted(found)


def read_captions(captions_file: str) -> list[str]:
    """Captions, one per line (stripped; blank lines skipped)."""
    return [line.strip() for line in _lines(captions_file) if line.strip()]


def _lines(path: str) -> io.StringIO:
    """The lines of a UTF-8 text file, split as Python's text files split them.

    (``\\n``, ``\\r\\n`` or ``\\r``; not ``str.splitlines``, which also splits at
    form feeds and Unicode line separators inside a caption.)
    """
    return io.StringIO(io_utils.read_bytes(path).decode("utf-8"), newline=None)


def _read_files(paths: Sequence[str], batch_size: int):
    """Yields ``(positions [B], bytes [B])`` of readable files, read in parallel.

    Files that cannot be read are left out; their positions are missing.
    """
    ds = tf.data.Dataset.from_tensor_slices(
        (tf.range(len(paths), dtype=tf.int64), tf.constant(list(paths), tf.string))
    )
    ds = ds.map(
        lambda i, p: (i, tf.io.read_file(p)),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    ds = ds.ignore_errors().batch(batch_size).prefetch(2)
    for positions, data in ds:
        yield positions.numpy().tolist(), data.numpy().tolist()


def _encode_checked(
    encode: Callable[[list], np.ndarray], inputs: list
) -> tuple[np.ndarray, list[int], dict[int, str]]:
    """Encodes a batch; when it is rejected, item by item to find the bad ones.

    Returns:
        ``(embeddings [M, D], kept positions [M], {position: error})``.
    """
    try:
        return encode(inputs), list(range(len(inputs))), {}
    except Exception as error:
        if not _is_invalid_input(error):
            raise
        if len(inputs) == 1:
            return np.zeros([0, 0], np.float32), [], {0: _short(error)}
    rows, kept, bad = [], [], {}
    for position, item in enumerate(inputs):
        try:
            rows.append(encode([item]))
            kept.append(position)
        except Exception as error:
            if not _is_invalid_input(error):
                raise
            bad[position] = _short(error)
    embeddings = np.concatenate(rows) if rows else np.zeros([0, 0], np.float32)
    return embeddings, kept, bad


def _short(error: Exception) -> str:
    message = getattr(error, "message", "") or str(error)
    return (
        message.strip().splitlines()[0][:300]
        if message.strip()
        else type(error).__name__
    )


@dataclasses.dataclass
class Index:
    """A loaded index.

    Attributes:
        embeddings: ``float16|float32 [N, D]`` as stored.
        items: ``[N]`` image paths or captions.
        manifest: The manifest dictionary.
        ann: Its approximate index when loaded with one
            (`vse_tf.retrieval.ann_index.load_index`); `search` then uses
            it. None: exact search.
    """

    embeddings: np.ndarray
    items: list[str]
    manifest: dict
    ann: Optional[Any] = None

    @property
    def kind(self) -> str:
        return self.manifest["kind"]

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    def __len__(self) -> int:
        return len(self.items)

    def search(
        self, query_embeddings: np.ndarray, k: int = 10
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by dot product: exact, or through `ann` when it is set.

        Args:
            query_embeddings: ``float32 [Q, D]``.
            k: Results per query (capped at the index size).

        Returns:
            ``(scores float32 [Q, k'], ids int64 [Q, k'])``, best first, where
            ``k' = min(k, N)``.
        """
        queries = np.asarray(query_embeddings, np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(
                f"queries must be [Q, {self.dim}] (the index dimension), got "
                f"{queries.shape}; was the index built with another model?"
            )
        k = min(int(k), len(self.items))
        if k < 1:
            return np.zeros([len(queries), 0], np.float32), np.zeros(
                [len(queries), 0], np.int64
            )
        if self.ann is not None:
            return self.ann.search(queries, k)
        scores, ids = search_lib.top_k(queries, self.embeddings, k=k)
        return np.asarray(scores, np.float32), np.asarray(ids, np.int64)


class Result(NamedTuple):
    """One search result: an image path or caption and its score."""

    item: str
    score: float


def load_index(index_dir: str, mmap_mode: Optional[str] = "r") -> Index:
    """Loads a finished index folder.

    Args:
        index_dir: The index folder.
        mmap_mode: ``np.load`` memory-map mode for the embeddings (``"r"``:
            read on demand, so large indexes need not fit in memory); None
            reads them into memory.

    Raises:
        FileNotFoundError: if the folder holds no finished index.
        ValueError: if its files disagree with each other.
    """
    manifest_path = os.path.join(index_dir, MANIFEST_FILE)
    if not io_utils.exists(manifest_path):
        hint = (
            "an unfinished build: run the same vse-index command again to resume"
            if io_utils.exists(os.path.join(index_dir, BUILD_FILE))
            else "build one with vse-index --model=MODEL --images=FOLDER "
            f"--output={index_dir}"
        )
        raise errors.MissingError(f"no index in {index_dir} ({hint})")
    manifest = json.loads(io_utils.read_bytes(manifest_path))
    embeddings_path = os.path.join(index_dir, EMBEDDINGS_FILE)
    if io_utils.is_url(embeddings_path):  # (no memory map of a remote file)
        embeddings = np.load(io.BytesIO(io_utils.read_bytes(embeddings_path)))
    else:
        embeddings = np.load(embeddings_path, mmap_mode=mmap_mode)
    items_data = io_utils.read_bytes(os.path.join(index_dir, ITEMS_FILE))
    items = items_data.decode("utf-8").split("\n")[:-1]
    if not (len(items) == embeddings.shape[0] == manifest["count"]):
        raise ValueError(
            f"{index_dir}: {len(items)} items, {embeddings.shape[0]} embeddings, "
            f"manifest count {manifest['count']}"
        )
    if embeddings.ndim != 2 or embeddings.shape[1] != manifest["dim"]:
        raise ValueError(
            f"{index_dir}: embeddings {embeddings.shape}, dim {manifest['dim']}"
        )
    return Index(embeddings=embeddings, items=items, manifest=manifest)


@dataclasses.dataclass(frozen=True)
class BuildJob:
    """What one index build encodes, with what, and where it writes.

    Attributes:
        kind: ``image`` or ``caption``.
        inputs: ``[N]`` image paths or captions.
        encoder: Encodes them (for a parallel build, only ``describe``).
        output_dir, dtype, batch_size, shard_size, overwrite, verbose,
        on_shard: As in `build_image_index`.
        source: The folder, list or caption file they came from.
    """

    kind: str
    inputs: list[str]
    encoder: Encoder
    output_dir: str
    source: str
    dtype: str
    batch_size: int
    shard_size: int
    overwrite: bool
    verbose: int
    on_shard: Optional[Callable[[int, int], None]]

    @property
    def num_shards(self) -> int:
        return (len(self.inputs) + self.shard_size - 1) // self.shard_size

    def chunk(self, shard: int) -> list[str]:
        """The inputs of shard ``shard``."""
        start = shard * self.shard_size
        return self.inputs[start : start + self.shard_size]


def _check_build_arguments(
    inputs: Sequence[str], dtype: str, batch_size: int, shard_size: int
) -> None:
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    if batch_size < 1 or shard_size < 1:
        raise ValueError("batch_size and shard_size must be >= 1")
    for item in inputs:
        if "\n" in item or "\r" in item:
            raise ValueError(f"items may not contain line breaks: {item!r}")


def _build_description(job: BuildJob, model: dict) -> dict:
    """What is being built (``build.json``, and ``build`` in the manifest)."""
    return {
        "format": INDEX_FORMAT,
        "kind": job.kind,
        "model": model,
        "dtype": job.dtype,
        "shard_size": job.shard_size,
        "inputs_sha256": hashlib.sha256("\n".join(job.inputs).encode()).hexdigest(),
        "count": len(job.inputs),
    }


def _finished_index(job: BuildJob, build: dict) -> Optional[Index]:
    """The index already in the folder when it is this build's, else None.

    Raises:
        FileExistsError: if the folder holds another index (and not
            ``overwrite``).
    """
    manifest_path = os.path.join(job.output_dir, MANIFEST_FILE)
    if job.overwrite or not io_utils.exists(manifest_path):
        return None
    index = load_index(job.output_dir)
    done = {k: index.manifest.get("build", {}).get(k) for k in build}
    if done == build:
        logging.info("%s already holds this index", job.output_dir)
        return index
    raise FileExistsError(
        f"{job.output_dir} holds another index; use another folder or overwrite"
    )


def _start_build(job: BuildJob, build: dict) -> list:
    """Prepares the folder for ``build``; returns the shard entries to resume.

    Raises:
        FileExistsError: if the folder holds an unfinished build of other
            inputs, model or settings (and not ``overwrite``).
    """
    build_path = os.path.join(job.output_dir, BUILD_FILE)
    entries: list = []
    if io_utils.exists(build_path):
        previous = json.loads(io_utils.read_bytes(build_path))
        entries = previous.pop("shards", None)
        if not isinstance(entries, list):
            entries = []  # (an older build's layout: its shards are recomputed)
        if previous != build and not job.overwrite:
            raise FileExistsError(
                f"{job.output_dir} holds an unfinished build of other inputs, "
                "model or settings; use another folder or overwrite"
            )
        if previous != build:
            io_utils.rmtree(os.path.join(job.output_dir, SHARDS_DIR))
            entries = []
    if job.overwrite:
        io_utils.rmtree(os.path.join(job.output_dir, ANN_DIR))
        for name in (MANIFEST_FILE, EMBEDDINGS_FILE, ITEMS_FILE, ANN_MANIFEST):
            if io_utils.exists(os.path.join(job.output_dir, name)):
                io_utils.remove(os.path.join(job.output_dir, name))
    return entries


def encode_chunk(
    kind: str,
    encoder: Encoder,
    chunk: list[str],
    batch_size: int,
    dtype: str,
    progbar=None,
) -> tuple[np.ndarray, dict]:
    """Encodes one shard's inputs: ``(embeddings [M, D], record)``.

    Args:
        kind: ``image`` (``chunk`` are files) or ``caption``.
        encoder: The model.
        chunk: The shard's inputs.
        batch_size: Inputs per encoder call.
        dtype: Stored precision.
        progbar: Moved on per input (optional).

    Returns:
        The embeddings of the kept inputs and the shard's record:
        ``{"items": kept inputs [M], "skipped": [{"item", "error"}]}``.
    """
    encode = _encode_images if kind == "image" else _encode_captions
    rows, kept, skipped = encode(encoder, batch_size, chunk, progbar)
    matrix = np.concatenate(rows).astype(dtype) if rows else np.zeros([0, 0], dtype)
    return matrix, {"items": kept, "skipped": skipped}


def _encode_images(
    encoder: Encoder, batch_size: int, chunk: list[str], progbar
) -> tuple[list[np.ndarray], list[str], list[dict]]:
    """Reads and encodes image files: ``(embedding batches, kept, skipped)``."""
    rows, kept, skipped, seen = [], [], [], set()
    for positions, data in _read_files(chunk, batch_size):
        seen.update(positions)
        embeddings, good, bad = _encode_checked(encoder.encode_images, data)
        if len(good):
            rows.append(embeddings)
        kept += [chunk[positions[i]] for i in good]
        skipped += [
            {"item": chunk[positions[i]], "error": message}
            for i, message in bad.items()
        ]
        if progbar is not None:
            progbar.add(len(positions))
    unread = [i for i in range(len(chunk)) if i not in seen]
    skipped += [{"item": chunk[i], "error": "cannot be read"} for i in unread]
    if progbar is not None and unread:
        progbar.add(len(unread))
    return rows, kept, skipped


def _encode_captions(
    encoder: Encoder, batch_size: int, chunk: list[str], progbar
) -> tuple[list[np.ndarray], list[str], list[dict]]:
    """Encodes captions in batches: ``(embedding batches, kept, skipped=[])``."""
    rows, kept = [], []
    for begin in range(0, len(chunk), batch_size):
        batch = chunk[begin : begin + batch_size]
        rows.append(encoder.encode_text(batch))
        kept += batch
        if progbar is not None:
            progbar.add(len(batch))
    return rows, kept, []


def _encode_shards(
    job: BuildJob,
    store: shard_store.ShardStore,
    build: dict,
    done: dict[int, shard_store.Shard],
) -> None:
    """Encodes the shards not in ``done``, writing and recording each one."""
    progbar = progress.bar(len(job.inputs), job.kind, "index") if job.verbose else None
    for shard in range(job.num_shards):
        chunk = job.chunk(shard)
        if shard in done:  # finished by an earlier run
            if progbar is not None:
                progbar.add(len(chunk))
            continue
        matrix, record = encode_chunk(
            job.kind, job.encoder, chunk, job.batch_size, job.dtype, progbar
        )
        entry = store.write_shard(shard, matrix, record=record)
        done[shard] = shard_store.Shard(entry, matrix, record)
        store.write_manifest(dict(build, shards=[done[s].entry for s in sorted(done)]))
        if job.on_shard is not None:
            job.on_shard(shard, shard * job.shard_size + len(chunk))


def complete_shards(
    job: BuildJob, store: shard_store.ShardStore, entries: list
) -> dict[int, shard_store.Shard]:
    """The verified shards of ``entries`` and of entries left beside shards.

    Only shards whose files match their checksums and whose record lists as
    many items as the shard has rows are kept: ``{shard number: Shard}``.
    """
    # The build's own entries, then those a parallel build finished before
    # it was stopped (`vse_tf.pipelines`: entries beside their shards).
    done = store.read_complete(
        entries + store.read_entries(),
        is_valid=lambda e: 0 <= e["shard"] < job.num_shards,
        dtype=job.dtype,
    )
    return {
        number: shard
        for number, shard in done.items()
        if isinstance(shard.record, dict)
        and len(shard.record.get("items", ())) == shard.array.shape[0]
        and isinstance(shard.record.get("skipped"), list)
    }


def _write_index(
    job: BuildJob, build: dict, model: dict, done: dict[int, shard_store.Shard]
) -> Index:
    """Joins the shards into the final files (the manifest last)."""
    matrices, items, skipped = [], [], []
    for shard in range(job.num_shards):
        record = done[shard].record
        if len(record["items"]):
            matrices.append(done[shard].array)
        items += record["items"]
        skipped += record["skipped"]
    if not matrices:
        first = skipped[0] if skipped else None
        why = f"; the first: {first}" if first else ""
        raise errors.UserError(
            f"nothing could be indexed from {job.source}: {len(skipped)} skipped"
            f"{why}. Paths in a list file are relative to the file's folder"
        )
    embeddings = np.concatenate(matrices).astype(job.dtype)
    manifest_path = os.path.join(job.output_dir, MANIFEST_FILE)
    if skipped:
        logging.warning(
            "%d of %d %ss skipped (listed in %s)",
            len(skipped),
            len(job.inputs),
            job.kind,
            manifest_path,
        )
    manifest = {
        "format": INDEX_FORMAT,
        "kind": job.kind,
        "model": model,
        "source": job.source,
        "dim": int(embeddings.shape[1]),
        "count": len(items),
        "dtype": job.dtype,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds"
        ),
        "num_skipped": len(skipped),
        "skipped": skipped,
        "build": build,
    }
    _atomic_save_npy(os.path.join(job.output_dir, EMBEDDINGS_FILE), embeddings)
    io_utils.atomic_write_bytes(
        os.path.join(job.output_dir, ITEMS_FILE),
        "".join(item + "\n" for item in items).encode("utf-8"),
    )
    _atomic_write_json(manifest_path, manifest)  # last: the index is complete
    return Index(embeddings=embeddings, items=items, manifest=manifest)


EncodeShards = Callable[
    [BuildJob, shard_store.ShardStore, dict, dict[int, shard_store.Shard]], None
]
"""``encode(job, store, build, done)``: encodes the shards of ``job`` not in
``done`` into ``store``, adding each to ``done``; `run_build` does the rest."""


def run_build(job: BuildJob, encode: Optional[EncodeShards] = None) -> Index:
    """Builds (or resumes, or returns the finished) index of ``job``.

    Args:
        job: The build.
        encode: How the missing shards are encoded: in this process
            (default), or e.g. by a Beam pipeline (`vse_tf.pipelines.index`).

    Returns:
        The finished `Index`.
    """
    _check_build_arguments(job.inputs, job.dtype, job.batch_size, job.shard_size)
    # Shards hold whole batches, so a resumed build encodes the same batches.
    size = max(job.batch_size, job.shard_size // job.batch_size * job.batch_size)
    job = dataclasses.replace(job, shard_size=size)
    model = job.encoder.describe()
    build = _build_description(job, model)
    io_utils.makedirs(job.output_dir)
    finished = _finished_index(job, build)
    if finished is not None:
        return finished
    entries = _start_build(job, build)
    store = shard_store.ShardStore(
        os.path.join(job.output_dir, SHARDS_DIR),
        manifest_path=os.path.join(job.output_dir, BUILD_FILE),
    )
    done = complete_shards(job, store, entries)
    store.write_manifest(dict(build, shards=[done[s].entry for s in sorted(done)]))
    (encode or _encode_shards)(job, store, build, done)
    index = _write_index(job, build, model, done)
    io_utils.rmtree(store.folder)
    io_utils.remove(store.manifest_path)
    return index


def image_inputs(images: Union[str, Sequence[str]]) -> tuple[list[str], str]:
    """``(paths [N], source)`` of an image collection (see `list_images`).

    Raises:
        ValueError: if it holds no image.
    """
    paths = list_images(images)
    if not paths:
        raise ValueError(f"no images in {images}")
    return paths, io_utils.absolute(images) if isinstance(images, str) else "<list>"


def caption_inputs(captions: Union[str, Sequence[str]]) -> tuple[list[str], str]:
    """``(captions [N], source)`` of a caption file or sequence.

    Raises:
        ValueError: if there is no caption.
    """
    if isinstance(captions, str):
        source, texts = io_utils.absolute(captions), read_captions(captions)
    else:
        source, texts = "<list>", [str(c) for c in captions]
    if not texts:
        raise ValueError(f"no captions in {source}")
    return texts, source


def build_image_index(
    model_path: Optional[str],
    images: Union[str, Sequence[str]],
    output_dir: str,
    dtype: str = "float16",
    batch_size: int = 32,
    shard_size: int = 1024,
    server: Optional[str] = None,
    encoder: Optional[Encoder] = None,
    overwrite: bool = False,
    verbose: int = 1,
    on_shard: Optional[Callable[[int, int], None]] = None,
) -> Index:
    """Encodes an image collection with the image tower and writes an index.

    Files are read in parallel by tf.data; their bytes go to ``encode_image``.
    Unreadable or undecodable images are skipped and listed in the manifest.
    Rerunning after an interruption resumes after the last complete shard;
    rerunning a finished build returns it unchanged.

    Args:
        model_path: Exported SavedModel version folder (or None with
            ``server`` or ``encoder``).
        images: Folder, list file or sequence of paths (see `list_images`).
        output_dir: Index folder.
        dtype: Stored precision, ``float16`` or ``float32``.
        batch_size: Images per encoder call.
        shard_size: Images per resumable shard (rounded to whole batches).
        server: TF Serving address instead of ``model_path``.
        encoder: A ready `Encoder` instead of either.
        overwrite: Replace another index or unfinished build in ``output_dir``.
        verbose: 1 shows a progress bar.
        on_shard: Called as ``on_shard(shard_number, inputs_done)`` after each
            shard computed (not after shards reused from an earlier run).

    Returns:
        The finished `Index`.

    Raises:
        FileExistsError: if ``output_dir`` holds a different index or build.
        ValueError: if no image at all could be encoded.
    """
    encoder = encoder or get_encoder(model_path, server)
    paths, source = image_inputs(images)
    job = BuildJob(
        kind="image",
        inputs=paths,
        encoder=encoder,
        output_dir=output_dir,
        source=source,
        dtype=dtype,
        batch_size=batch_size,
        shard_size=shard_size,
        overwrite=overwrite,
        verbose=verbose,
        on_shard=on_shard,
    )
    return run_build(job)


def build_caption_index(
    model_path: Optional[str],
    captions: Union[str, Sequence[str]],
    output_dir: str,
    dtype: str = "float16",
    batch_size: int = 256,
    shard_size: int = 8192,
    server: Optional[str] = None,
    encoder: Optional[Encoder] = None,
    overwrite: bool = False,
    verbose: int = 1,
    on_shard: Optional[Callable[[int, int], None]] = None,
) -> Index:
    """Encodes a caption set with the text tower and writes an index.

    Args:
        model_path: Exported SavedModel version folder.
        captions: A text file with one caption per line, or a sequence.
        output_dir, dtype, batch_size, shard_size, server, encoder, overwrite,
        verbose, on_shard: As in `build_image_index`.

    Returns:
        The finished `Index` (items are the captions).
    """
    encoder = encoder or get_encoder(model_path, server)
    texts, source = caption_inputs(captions)
    job = BuildJob(
        kind="caption",
        inputs=texts,
        encoder=encoder,
        output_dir=output_dir,
        source=source,
        dtype=dtype,
        batch_size=batch_size,
        shard_size=shard_size,
        overwrite=overwrite,
        verbose=verbose,
        on_shard=on_shard,
    )
    return run_build(job)


def _check_model(index: Index, encoder: Encoder) -> None:
    built = index.manifest.get("model", {})
    used = encoder.describe()
    if built.get("sha256") and used.get("sha256") and built["sha256"] != used["sha256"]:
        logging.warning(
            "the index was built with another model (%s) than the query model (%s): "
            "scores may be meaningless",
            built.get("path"),
            used.get("path"),
        )


def search_embedding(index: Index, query: np.ndarray, k: int = 10) -> list[Result]:
    """The ``k`` best items for one query embedding ``[1, D]`` or ``[D]``."""
    scores, ids = index.search(np.reshape(query, [1, -1]), k)
    return [
        Result(index.items[i], float(s))
        for s, i in zip(scores[0], ids[0].tolist())
        if i >= 0  # (an approximate index may find fewer than k)
    ]


def search_text(
    index: Index, encoder: Encoder, sentence: str, k: int = 10
) -> list[Result]:
    """Ranks the index items (images, usually) for a sentence.

    Args:
        index: A loaded `Index`.
        encoder: `SavedModelEncoder` or serving client (see `get_encoder`).
        sentence: Query text.
        k: Number of results.

    Returns:
        Up to ``k`` `Result` s, best first.
    """
    _check_model(index, encoder)
    return search_embedding(index, encoder.encode_text([sentence]), k)


def search_image(
    index: Index, encoder: Encoder, image_path: str, k: int = 10
) -> list[Result]:
    """Ranks the index items (captions, usually) for an image file.

    Raises:
        ValueError: if the image cannot be decoded.
    """
    _check_model(index, encoder)
    with open(image_path, "rb") as f:
        data = f.read()
    try:
        query = encoder.encode_images([data])
    except Exception as error:
        if _is_invalid_input(error):
            raise ValueError(
                f"{image_path}: not a readable image: {_short(error)}"
            ) from None
        raise
    return search_embedding(index, query, k)
