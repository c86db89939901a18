"""Growing a finished index: new images or captions appended, old rows kept.

``vse-index --add --index=INDEX --images=NEW`` (`add_to_index`):

1. Refuses another model: the index's manifest records the model's
   `encoders.fingerprint` (its embedding of a probe sentence), and the model
   given now must embed the probe the same (within
   `encoders.FINGERPRINT_TOLERANCE`). An index from before fingerprints is
   checked by the sha256 of its ``saved_model.pb``.
2. Skips, and counts, inputs already in the index by content: the sha256 of
   an image file's bytes (of a caption's text), so a copy under another name
   is found too. The hashes of the indexed items are kept in the index
   (``hashes*.txt``), computed once from the files for an older index.
3. Encodes only the new inputs, as a resumable build of their own in
   ``INDEX/.add/`` (`index_build.run_build`: shards, checksums, resume).
4. Writes the grown index as a new generation under new file names (old rows
   copied, new rows after them, so every old id stays), extends the
   approximate index where the folder has a finished one (the new rows are
   added to its trained IVF index as new shards; the coarse quantiser is not
   trained again: run ``vse-index --ann --overwrite`` after the collection
   changed much), and then swaps the manifest, atomically and last
   (`index_lib` explains the generations).

A kill at any point leaves the old index whole and searchable; the same
command run again resumes the encoding where it stopped. Searchers that
watch the manifest (``vse-serve``) pick up the grown index.
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
from typing import Optional, Union

import numpy as np

from vse_tf import errors, io_utils, shard_store
from vse_tf.retrieval import ann as ann_lib
from vse_tf.retrieval import ann_index, encoders, index_build, index_lib, inputs

ADD_DIR = ".add"
"""In the index folder: the resumable build of the inputs being added."""


@dataclasses.dataclass(frozen=True)
class AddReport:
    """What an add did.

    Attributes:
        index: The index after the add (unchanged when nothing was added).
        added: Rows appended.
        duplicates: New inputs whose content was already indexed, or repeated
            among the new inputs: skipped, not encoded.
        skipped: ``[{"item", "error"}]``: new inputs that could not be
            indexed (unreadable images), with the reason.
        ann_extended: Whether the approximate index grew with it.
    """

    index: index_lib.Index
    added: int
    duplicates: int
    skipped: list[dict]
    ann_extended: bool


def content_hash(kind: str, item: str) -> Optional[str]:
    """The sha256 that says two inputs are the same: file bytes or caption text.

    Returns:
        Hex sha256, or None for an image file that cannot be read (it goes on
        to the build, which skips it with the reason).
    """
    if kind == "caption":
        return hashlib.sha256(item.encode("utf-8")).hexdigest()
    try:
        return hashlib.sha256(io_utils.read_bytes(item)).hexdigest()
    except Exception:  # noqa: BLE001  (unreadable: reported by the build)
        return None


def _indexed_hashes(index_dir: str, index: index_lib.Index) -> list[str]:
    """The content hashes of the indexed items: kept in the folder, or computed.

    An image that can no longer be read gets its path's hash, so it is never
    taken for a new file.
    """
    path = os.path.join(index_dir, index_lib.data_files(index.manifest)["hashes"])
    if io_utils.exists(path):
        hashes = io_utils.read_bytes(path).decode("ascii").split("\n")[:-1]
        if len(hashes) == len(index.items):
            return hashes
    return [
        content_hash(index.kind, item)
        or hashlib.sha256(b"unreadable:" + item.encode("utf-8")).hexdigest()
        for item in index.items
    ]


def check_same_model(manifest: dict, encoder: encoders.Encoder) -> None:
    """Refuses an encoder that is not the model the index was built with.

    Raises:
        errors.UserError: naming both models, when they differ or when the
            index records nothing to tell.
    """
    recorded = manifest.get("fingerprint")
    current = encoders.fingerprint(encoder) if recorded else None
    same = encoders.same_model(recorded, current)
    built = manifest.get("model") or {}
    if same is None:
        used = encoder.describe()
        if built.get("sha256") and used.get("sha256"):
            same = built["sha256"] == used["sha256"]
    if same:
        return
    where = built.get("path") or built.get("server") or "an unrecorded model"
    if same is None:
        raise errors.UserError(
            f"the index records no fingerprint of its model ({where}), so adding "
            "with this one could mix two models: build a new index"
        )
    raise errors.UserError(
        f"the index was built with another model ({where}); its embeddings and "
        "this model's are not comparable: add with that model or build a new index"
    )


def add_to_index(
    index_dir: str,
    new_inputs: Union[str, Sequence[str]],
    model_path: Optional[str] = None,
    server: Optional[str] = None,
    encoder: Optional[encoders.Encoder] = None,
    batch_size: Optional[int] = None,
    shard_size: Optional[int] = None,
    verbose: int = 1,
    on_shard: Optional[Callable[[int, int], None]] = None,
) -> AddReport:
    """Appends new images (or captions) to a finished index, atomically.

    Args:
        index_dir: A finished index folder.
        new_inputs: For an image index, a folder, glob, list file or paths
            (`inputs.list_images`); for a caption index, a caption file or
            the captions.
        model_path: The SavedModel; default the one the index records.
        server: A TF Serving address instead.
        encoder: A ready encoder instead of either.
        batch_size: Inputs per encoder call (default 32 images, 256 captions).
        shard_size: Inputs per resumable shard (default 1024 / 8192).
        verbose: 1 shows a progress bar.
        on_shard: As in `index_build.build_image_index`.

    Returns:
        An `AddReport`.

    Raises:
        errors.MissingError: if ``index_dir`` holds no finished index.
        errors.UserError: if the model is another than the index's.
    """
    manifest = index_lib.read_manifest(index_dir)
    kind = manifest["kind"]
    if encoder is None:
        if not model_path and not server:
            model_path = (manifest.get("model") or {}).get("path")
            if not model_path:
                raise errors.UserError(
                    f"{index_dir} was built through a server: pass it as --server"
                )
        encoder = encoders.get_encoder(model_path, server)
    check_same_model(manifest, encoder)
    index = index_lib.load_index(index_dir)
    hashes = _indexed_hashes(index_dir, index)
    if kind == "image":
        candidates, source = inputs.image_inputs(new_inputs)
    else:
        candidates, source = inputs.caption_inputs(new_inputs)
    seen, fresh, fresh_hashes, duplicates = set(hashes), [], {}, 0
    for item in candidates:
        digest = content_hash(kind, item)
        if digest is not None and digest in seen:
            duplicates += 1
            continue
        if digest is not None:
            seen.add(digest)
        fresh.append(item)
        fresh_hashes[item] = digest
    if not fresh:
        return AddReport(index, 0, duplicates, [], False)
    job = index_build.BuildJob(
        kind=kind,
        inputs=fresh,
        encoder=encoder,
        output_dir=os.path.join(index_dir, ADD_DIR),
        source=source,
        dtype=manifest["dtype"],
        batch_size=batch_size or (32 if kind == "image" else 256),
        shard_size=shard_size or (1024 if kind == "image" else 8192),
        overwrite=False,
        verbose=verbose,
        on_shard=on_shard,
        allow_empty=True,
    )
    _discard_other_add(job)
    added = index_build.run_build(job)
    if not len(added):  # every new input unreadable: nothing to commit
        io_utils.rmtree(job.output_dir)
        return AddReport(index, 0, duplicates, added.manifest["skipped"], False)
    new_hashes = [fresh_hashes[item] for item in added.items]
    grown, ann_extended = _commit(index_dir, index, hashes, added, new_hashes, source)
    io_utils.rmtree(job.output_dir)
    return AddReport(
        grown, len(added), duplicates, added.manifest["skipped"], ann_extended
    )


def _discard_other_add(job: index_build.BuildJob) -> None:
    """Removes an interrupted add of other inputs (this one's is resumed)."""
    wanted = index_build.inputs_sha256(job.inputs)
    for name, key in ((index_lib.BUILD_FILE, None), (index_lib.MANIFEST_FILE, "build")):
        path = os.path.join(job.output_dir, name)
        if not io_utils.exists(path):
            continue
        previous = json.loads(io_utils.read_bytes(path))
        if key is not None:
            previous = previous.get(key) or {}
        if previous.get("inputs_sha256") != wanted:
            logging.info("discarding an interrupted add of other inputs")
            io_utils.rmtree(job.output_dir)
        return


def _commit(
    index_dir: str,
    index: index_lib.Index,
    hashes: list[str],
    added: index_lib.Index,
    new_hashes: list[str],
    source: str,
) -> tuple[index_lib.Index, bool]:
    """Writes the next generation and swaps the manifest (last)."""
    manifest = index.manifest
    generation = int(manifest.get("generation", 0)) + 1
    old_files = index_lib.data_files(manifest)
    files = {
        role: index_lib.generation_name(name, generation)
        for role, name in index_lib.data_files({}).items()
    }
    count = len(index) + len(added)
    dtype = manifest["dtype"]
    embeddings_path = os.path.join(index_dir, files["embeddings"])
    with io_utils.atomic_path(embeddings_path, suffix=".npy") as temporary:
        rows = np.lib.format.open_memmap(
            temporary, mode="w+", dtype=dtype, shape=(count, index.dim)
        )
        step = 65_536
        for start in range(0, len(index), step):
            stop = min(start + step, len(index))
            rows[start:stop] = index.embeddings[start:stop]
        rows[len(index) :] = added.embeddings.astype(dtype)
        rows.flush()
        del rows
    items = index.items + added.items
    io_utils.atomic_write_bytes(
        os.path.join(index_dir, files["items"]),
        "".join(item + "\n" for item in items).encode("utf-8"),
    )
    io_utils.atomic_write_bytes(
        os.path.join(index_dir, files["hashes"]),
        "".join(h + "\n" for h in hashes + new_hashes).encode("ascii"),
    )
    ann_file = _extend_ann(index_dir, old_files["ann"], files["ann"], len(index), count)
    files["ann"] = ann_file or old_files["ann"]
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    grown = dict(
        manifest,
        count=count,
        generation=generation,
        files=files,
        updated=now,
        num_skipped=manifest["num_skipped"] + len(added.manifest["skipped"]),
        skipped=manifest["skipped"] + added.manifest["skipped"],
        additions=[
            *manifest.get("additions", []),
            {"time": now, "source": source, "count": len(added)},
        ],
    )
    io_utils.atomic_write_json(os.path.join(index_dir, index_lib.MANIFEST_FILE), grown)
    for role, name in old_files.items():  # the previous generation, now unused
        path = os.path.join(index_dir, name)
        if name != files[role] and io_utils.exists(path):
            io_utils.remove(path)
    return index_lib.load_index(index_dir), ann_file is not None


def _extend_ann(
    index_dir: str, old_name: str, new_name: str, old_count: int, count: int
) -> Optional[str]:
    """Adds rows ``old_count:count`` to a finished approximate index.

    Writes the new shards beside the old ones (new numbers) and the grown
    ANN manifest under ``new_name``; the index manifest, swapped after,
    makes it current.

    Returns:
        ``new_name``, or None where the folder has no finished ANN.
    """
    folder = os.path.join(index_dir, index_lib.ANN_DIR)
    old = shard_store.ShardStore(folder, os.path.join(index_dir, old_name))
    manifest = old.read_manifest() if io_utils.exists(old.manifest_path) else None
    if not manifest or not manifest.get("complete"):
        return None
    build = manifest["build"]
    if build.get("count") != old_count:
        return None  # stale already (built for an earlier index): left as it is
    trained_file = ann_index.trained_path(old)
    trained = np.load(io.BytesIO(io_utils.read_bytes(trained_file))).tobytes()
    if shard_store.sha256_bytes(trained) != build["trained_sha256"]:
        raise errors.UserError(
            f"{index_dir}: the approximate index's trained file is damaged; "
            "build it again with vse-index --ann --overwrite"
        )
    new = shard_store.ShardStore(folder, os.path.join(index_dir, new_name))
    embeddings = index_lib.load_index(os.path.join(index_dir, ADD_DIR)).embeddings
    entries = list(manifest["shards"])
    number = max((e["shard"] for e in entries), default=-1) + 1
    size = int(build.get("shard_size") or count)
    for start in range(old_count, count, size):
        stop = min(start + size, count)
        rows = np.asarray(embeddings[start - old_count : stop - old_count], np.float32)
        array = ann_lib.add_shard(trained, rows, start)
        entries.append(
            new.write_shard(
                number,
                array,
                start=start,
                stop=stop,
                trained_sha256=build["trained_sha256"],
            )
        )
        number += 1
    new.write_manifest(
        {"build": dict(build, count=count), "shards": entries, "complete": True}
    )
    return new_name
