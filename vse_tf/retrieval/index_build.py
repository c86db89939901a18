"""Building an index folder, resumably, over a `vse_tf.shard_store` store.

`run_build` is the one path (`BuildJob`); `build_image_index` and
`build_caption_index` make the job from plain arguments. See
`vse_tf.retrieval.index_lib` for the folder's layout.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any, Optional, Union

import numpy as np

from vse_tf import errors, io_utils, progress, shard_store
from vse_tf import images as images_lib
from vse_tf.retrieval import encoders, index_lib, inputs

LOGGER = logging.getLogger(__name__)
"""Where the skipped inputs are reported (vse-index prints them itself)."""


def _atomic_write_json(path: str, value: Any) -> None:
    io_utils.atomic_write_bytes(path, shard_store.json_bytes(value))


def _atomic_save_npy(path: str, array: np.ndarray) -> None:
    io_utils.atomic_write_bytes(path, shard_store.npy_bytes(array), suffix=".npy")


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
    encoder: encoders.Encoder
    output_dir: str
    source: str
    dtype: str
    batch_size: int
    shard_size: int
    overwrite: bool
    verbose: int
    on_shard: Optional[Callable[[int, int], None]]
    allow_empty: bool = False
    """Whether an index of no rows (every input skipped) is a result (an add
    of files that all turn out unreadable), not an error."""

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
    if dtype not in index_lib.DTYPES:
        raise ValueError(f"dtype must be one of {index_lib.DTYPES}, got {dtype!r}")
    if batch_size < 1 or shard_size < 1:
        raise ValueError("batch_size and shard_size must be >= 1")
    for item in inputs:
        if "\n" in item or "\r" in item:
            raise ValueError(f"items may not contain line breaks: {item!r}")


def inputs_sha256(items: Sequence[str]) -> str:
    """The sha256 that names a build's inputs (``build.inputs_sha256``)."""
    return hashlib.sha256("\n".join(items).encode()).hexdigest()


def _build_description(job: BuildJob, model: dict) -> dict:
    """What is being built (``build.json``, and ``build`` in the manifest)."""
    return {
        "format": index_lib.INDEX_FORMAT,
        "kind": job.kind,
        "model": model,
        "dtype": job.dtype,
        "shard_size": job.shard_size,
        "inputs_sha256": inputs_sha256(job.inputs),
        "count": len(job.inputs),
    }


def _finished_index(job: BuildJob, build: dict) -> Optional[index_lib.Index]:
    """The index already in the folder when it is this build's, else None.

    Raises:
        FileExistsError: if the folder holds another index (and not
            ``overwrite``).
    """
    manifest_path = os.path.join(job.output_dir, index_lib.MANIFEST_FILE)
    if job.overwrite or not io_utils.exists(manifest_path):
        return None
    index = index_lib.load_index(job.output_dir)
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
    build_path = os.path.join(job.output_dir, index_lib.BUILD_FILE)
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
            io_utils.rmtree(os.path.join(job.output_dir, index_lib.SHARDS_DIR))
            entries = []
    if job.overwrite:
        io_utils.rmtree(os.path.join(job.output_dir, index_lib.ANN_DIR))
        names = set(index_lib.data_files({}).values())
        if io_utils.exists(os.path.join(job.output_dir, index_lib.MANIFEST_FILE)):
            manifest = index_lib.read_manifest(job.output_dir)
            names.update(index_lib.data_files(manifest).values())
        for name in (index_lib.MANIFEST_FILE, *sorted(names)):
            if io_utils.exists(os.path.join(job.output_dir, name)):
                io_utils.remove(os.path.join(job.output_dir, name))
    return entries


def encode_chunk(
    kind: str,
    encoder: encoders.Encoder,
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
    encoder: encoders.Encoder, batch_size: int, chunk: list[str], progbar
) -> tuple[list[np.ndarray], list[str], list[dict]]:
    """Reads and encodes image files: ``(embedding batches, kept, skipped)``."""
    rows, kept, skipped, seen = [], [], [], set()
    for positions, data in inputs.read_files(chunk, batch_size):
        seen.update(positions)
        # By content first (cheap): no other format, empty or truncated file
        # reaches the model, and each gets a reason a person can act on.
        problems = [images_lib.content_problem(item) for item in data]
        skipped += [
            {"item": chunk[position], "error": problem}
            for position, problem in zip(positions, problems)
            if problem is not None
        ]
        whole = [i for i, problem in enumerate(problems) if problem is None]
        batch = [data[i] for i in whole]
        embeddings, good, bad = (
            encoders.encode_checked(encoder.encode_images, batch)
            if batch
            else (None, [], {})
        )
        if len(good):
            rows.append(embeddings)
        kept += [chunk[positions[whole[i]]] for i in good]
        skipped += [
            {
                "item": chunk[positions[whole[i]]],
                "error": images_lib.decode_problem(batch[i]) or message,
            }
            for i, message in bad.items()
        ]
        if progbar is not None:
            progbar.add(len(positions))
    unread = [i for i in range(len(chunk)) if i not in seen]
    skipped += [
        {"item": chunk[i], "error": images_lib.read_checked(chunk[i])[1] or "unread"}
        for i in unread
    ]
    if progbar is not None and unread:
        progbar.add(len(unread))
    return rows, kept, skipped


def _encode_captions(
    encoder: encoders.Encoder, batch_size: int, chunk: list[str], progbar
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
                progbar.resume(len(chunk))
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
) -> index_lib.Index:
    """Joins the shards into the final files (the manifest last)."""
    matrices, items, skipped = [], [], []
    for shard in range(job.num_shards):
        record = done[shard].record
        if len(record["items"]):
            matrices.append(done[shard].array)
        items += record["items"]
        skipped += record["skipped"]
    if not matrices and not job.allow_empty:
        first = skipped[0] if skipped else None
        why = f"; the first: {first['item']}: {first['error']}" if first else ""
        raise errors.UserError(
            f"nothing could be indexed from {job.source}: {len(skipped)} skipped"
            f"{why}. Paths in a list file are relative to the file's folder"
        )
    embeddings = (
        np.concatenate(matrices).astype(job.dtype)
        if matrices
        else np.zeros([0, 0], job.dtype)
    )
    manifest_path = os.path.join(job.output_dir, index_lib.MANIFEST_FILE)
    if skipped:
        LOGGER.warning(
            "%d of %d %ss skipped (listed in %s): %s",
            len(skipped),
            len(job.inputs),
            job.kind,
            manifest_path,
            "; ".join(f"{item['item']}: {item['error']}" for item in skipped[:5]),
        )
    manifest = {
        "format": index_lib.INDEX_FORMAT,
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
        # What `index_add` checks a new model against (None from a stand-in).
        "fingerprint": encoders.fingerprint(job.encoder),
    }
    _atomic_save_npy(
        os.path.join(job.output_dir, index_lib.EMBEDDINGS_FILE), embeddings
    )
    io_utils.atomic_write_bytes(
        os.path.join(job.output_dir, index_lib.ITEMS_FILE),
        "".join(item + "\n" for item in items).encode("utf-8"),
    )
    _atomic_write_json(manifest_path, manifest)  # last: the index is complete
    return index_lib.Index(embeddings=embeddings, items=items, manifest=manifest)


EncodeShards = Callable[
    [BuildJob, shard_store.ShardStore, dict, dict[int, shard_store.Shard]], None
]
"""``encode(job, store, build, done)``: encodes the shards of ``job`` not in
``done`` into ``store``, adding each to ``done``; `run_build` does the rest."""


def run_build(job: BuildJob, encode: Optional[EncodeShards] = None) -> index_lib.Index:
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
        os.path.join(job.output_dir, index_lib.SHARDS_DIR),
        manifest_path=os.path.join(job.output_dir, index_lib.BUILD_FILE),
    )
    done = complete_shards(job, store, entries)
    store.write_manifest(dict(build, shards=[done[s].entry for s in sorted(done)]))
    (encode or _encode_shards)(job, store, build, done)
    index = _write_index(job, build, model, done)
    io_utils.rmtree(store.folder)
    io_utils.remove(store.manifest_path)
    return index


def build_image_index(
    model_path: Optional[str],
    images: Union[str, Sequence[str]],
    output_dir: str,
    dtype: str = "float16",
    batch_size: int = 32,
    shard_size: int = 1024,
    server: Optional[str] = None,
    encoder: Optional[encoders.Encoder] = None,
    overwrite: bool = False,
    verbose: int = 1,
    on_shard: Optional[Callable[[int, int], None]] = None,
) -> index_lib.Index:
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
    encoder = encoder or encoders.get_encoder(model_path, server)
    paths, source = inputs.image_inputs(images)
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
    encoder: Optional[encoders.Encoder] = None,
    overwrite: bool = False,
    verbose: int = 1,
    on_shard: Optional[Callable[[int, int], None]] = None,
) -> index_lib.Index:
    """Encodes a caption set with the text tower and writes an index.

    Args:
        model_path: Exported SavedModel version folder.
        captions: A text file with one caption per line, or a sequence.
        output_dir, dtype, batch_size, shard_size, server, encoder, overwrite,
        verbose, on_shard: As in `build_image_index`.

    Returns:
        The finished `Index` (items are the captions).
    """
    encoder = encoder or encoders.get_encoder(model_path, server)
    texts, source = inputs.caption_inputs(captions)
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
