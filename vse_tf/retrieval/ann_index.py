"""The approximate (FAISS IVF) index of an index folder: built in shards, loaded.

``vse-index --ann`` adds to a finished index folder::

    ann.json          what was built (encoding, nlist, nprobe, train size,
                      seed, rerank, shard size, sha256 of the trained index),
                      one entry per shard, ``complete``
    ann/trained.npy   the trained, empty IVF index (coarse centroids, PQ
                      codebooks), trained once on a seeded sample
    ann/shard-NNNNN.npy   the index of ``shard_size`` rows each (serialised
                      FAISS, uint8), added independently, so in parallel

It is a `vse_tf.shard_store` store (checksums, atomic files, resume), and
its shards are searched together through FAISS's ``IndexShards``
(`ApproximateIndex.from_shards`), with exact re-ranking from
``embeddings.npy`` as `ApproximateIndex` does: what one process building
one `ApproximateIndex` of all the embeddings would find. The Beam pipeline
(`vse_tf.pipelines.index.build_ann`) adds the shards on many workers.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Callable
from typing import Optional

import numpy as np

from vse_tf import errors, io_utils, shard_store
from vse_tf.retrieval import ann as ann_lib
from vse_tf.retrieval import index_lib

ANN_MANIFEST = index_lib.ANN_MANIFEST
ANN_DIR = index_lib.ANN_DIR
TRAINED_FILE = "trained.npy"
DEFAULT_SHARD_SIZE = 262_144

AddShards = Callable[
    [str, bytes, list[tuple[int, int, int]], shard_store.ShardStore], None
]
"""``add(index_dir, trained, table, store)``: writes the shards of ``table``
(``(shard, start, stop)`` rows of the embeddings) into ``store``, each with
its entry beside it (`write_ann_shard`)."""


def trained_path(store: shard_store.ShardStore) -> str:
    """Where the trained, empty IVF index of ``store`` is kept."""
    return os.path.join(store.folder, TRAINED_FILE)


def write_ann_shard(
    store: shard_store.ShardStore,
    trained: bytes,
    row: tuple[int, int, int],
    embeddings: np.ndarray,
) -> None:
    """Adds rows ``start:stop`` to the trained index; writes the shard + entry.

    The entry names the trained index it belongs to (its sha256), so shards
    of another training (other settings, a rebuilt index) are never mixed in.
    """
    shard, start, stop = row
    array = ann_lib.add_shard(trained, embeddings[start:stop], start)
    entry = store.write_shard(
        shard,
        array,
        start=start,
        stop=stop,
        trained_sha256=shard_store.sha256_bytes(trained),
    )
    store.write_entry(entry)


def _store(index_dir: str) -> shard_store.ShardStore:
    """The ANN store of the index's current generation (`index_lib.data_files`)."""
    manifest_path = os.path.join(index_dir, index_lib.MANIFEST_FILE)
    name = ANN_MANIFEST
    if io_utils.exists(manifest_path):
        name = index_lib.data_files(index_lib.read_manifest(index_dir))["ann"]
    return shard_store.ShardStore(
        os.path.join(index_dir, ANN_DIR),
        manifest_path=os.path.join(index_dir, name),
    )


def _trained(
    store: shard_store.ShardStore, index: index_lib.Index, settings: dict
) -> tuple[bytes, dict]:
    """The trained empty index of these settings: kept from a run, or trained."""
    path = trained_path(store)
    manifest = store.read_manifest() or {}
    build = manifest.get("build", {})
    # Of this index (a rebuilt index folder gets a new ANN), these settings.
    requested = dict(
        settings,
        index_created=index.manifest.get("created"),
        index_inputs_sha256=index.manifest.get("build", {}).get("inputs_sha256"),
    )
    if build.get("requested") == requested and io_utils.exists(path):
        data = np.load(io.BytesIO(io_utils.read_bytes(path)), allow_pickle=False)
        data = data.tobytes()
        if shard_store.sha256_bytes(data) == build.get("trained_sha256"):
            return data, build
    trained, resolved = ann_lib.train_shardable(index.embeddings, **settings)
    io_utils.makedirs(store.folder)
    io_utils.atomic_write_bytes(
        path, shard_store.npy_bytes(np.frombuffer(trained, np.uint8)), suffix=".npy"
    )
    build = dict(
        requested=requested,
        resolved=resolved,
        trained_sha256=shard_store.sha256_bytes(trained),
    )
    store.write_manifest({"build": build, "shards": [], "complete": False})
    return trained, build


def add_shards_here(
    index_dir: str,
    trained: bytes,
    table: list[tuple[int, int, int]],
    store: shard_store.ShardStore,
) -> None:
    """`AddShards` in this process."""
    embeddings = index_lib.load_index(index_dir).embeddings
    for row in table:
        write_ann_shard(store, trained, row, embeddings)


def build_ann(
    index_dir: str,
    encoding: str = "pq",
    nlist: Optional[int] = None,
    nprobe: Optional[int] = None,
    train_size: Optional[int] = None,
    seed: int = 0,
    shard_size: int = DEFAULT_SHARD_SIZE,
    add: Optional[AddShards] = None,
) -> ann_lib.ApproximateIndex:
    """Builds (or resumes, or reads) the approximate index of an index folder.

    Args:
        index_dir: A finished index (`index_build.build_image_index`).
        encoding, nlist, nprobe, train_size, seed: As in
            `vse_tf.retrieval.ann.ApproximateIndex`.
        shard_size: Rows per shard (each added independently).
        add: How the shards are added: here (default) or by Beam workers.

    Returns:
        The `ApproximateIndex` over the shards.
    """
    index = index_lib.load_index(index_dir)
    settings = dict(
        encoding=encoding, nlist=nlist, nprobe=nprobe, train_size=train_size, seed=seed
    )
    store = _store(index_dir)
    trained, build = _trained(store, index, settings)
    build = dict(build, shard_size=shard_size, count=len(index))
    manifest = store.read_manifest() or {}
    entries = manifest.get("shards", []) if manifest.get("build") == build else []
    table = [
        (shard, start, min(start + shard_size, len(index)))
        for shard, start in enumerate(range(0, len(index), shard_size))
    ]
    done = _verified(store, entries + store.read_entries(), table, build)
    pending = [row for row in table if row[0] not in done]
    if pending:
        logging.info("Adding %d ANN shards of %s", len(pending), index_dir)
        (add or add_shards_here)(index_dir, trained, pending, store)
        done.update(_verified(store, store.read_entries(), table, build))
    missing = sorted(row[0] for row in table if row[0] not in done)
    if missing:
        raise RuntimeError(f"ANN shards {missing} of {index_dir} were not written")
    entries = [done[s].entry for s in sorted(done)]
    store.write_manifest({"build": build, "shards": entries, "complete": True})
    store.remove_entries()
    return ann_lib.ApproximateIndex.from_shards(
        [done[s].array for s in sorted(done)], index.embeddings, build["resolved"]
    )


def _verified(
    store: shard_store.ShardStore,
    entries: list,
    table: list[tuple[int, int, int]],
    build: dict,
) -> dict[int, shard_store.Shard]:
    rows = {shard: (start, stop) for shard, start, stop in table}

    def is_valid(entry: dict) -> bool:
        return (
            rows.get(entry["shard"])
            == (
                entry.get("start"),
                entry.get("stop"),
            )
            and entry.get("trained_sha256") == build["trained_sha256"]
        )

    return store.read_complete(entries, is_valid=is_valid, dtype=np.uint8)


def load_index(index_dir: str, mmap_mode: Optional[str] = "r") -> index_lib.Index:
    """`index_lib.load_index` with its approximate index: ``search`` uses it.

    Raises:
        errors.MissingError: if the folder has no finished ANN (build it with
            ``vse-index ... --ann``).
    """
    index = index_lib.load_index(index_dir, mmap_mode=mmap_mode)
    store = _store(index_dir)
    manifest = store.read_manifest()
    if not manifest or not manifest.get("complete"):
        raise errors.MissingError(
            f"{index_dir} has no approximate index; build it with vse-index "
            "--ann (the same flags as the index, plus --ann)"
        )
    build = manifest["build"]
    requested = build.get("requested", {})
    if (
        build.get("count") != len(index)
        or requested.get("index_created") != index.manifest.get("created")
        or requested.get("index_inputs_sha256")
        != index.manifest.get("build", {}).get("inputs_sha256")
    ):
        raise errors.UserError(
            f"{index_dir}: the approximate index was built for an earlier index "
            "in this folder; build it again with vse-index --ann"
        )
    shards = store.read_complete(manifest["shards"], dtype=np.uint8)
    if len(shards) != len(manifest["shards"]):
        raise errors.UserError(
            f"{index_dir}: an approximate-index shard is damaged; run vse-index "
            "--ann again to rebuild it"
        )
    index.ann = ann_lib.ApproximateIndex.from_shards(
        [shards[s].array for s in sorted(shards)], index.embeddings, build["resolved"]
    )
    return index
