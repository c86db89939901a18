"""An index folder: its files, loading it, and searching it.

An index is a folder::

    manifest.json     kind (image|caption), model (path, sha256 of
                      saved_model.pb, version) or server, dim, count, dtype,
                      created, skipped items (unreadable images) with reasons
    embeddings.npy    float16 or float32 [count, D], L2-normalised rows
    items.txt         count lines: absolute image paths, or captions

An index grows (`vse_tf.retrieval.index_add`, ``vse-index --add``) by
generations: generation G > 0 writes ``embeddings-gG.npy``, ``items-gG.txt``,
``hashes-gG.txt`` (the sha256 of each item's content) and, with an
approximate index, ``ann-gG.json``, all under new names, then swaps the
manifest, whose ``files`` names them (`data_files`). The manifest is the one
file replaced in place, atomically and last, so a reader sees the old index
or the new one, never a mix, and a kill mid-add leaves the old one whole.

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

Modules by job: `vse_tf.retrieval.encoders` (the model that embeds),
`vse_tf.retrieval.inputs` (what to index), `vse_tf.retrieval.index_build`
(building, resumably), this module (the finished index and search).
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
from collections.abc import Sequence
from typing import Any, NamedTuple, Optional

import numpy as np

from vse_tf import errors, io_utils
from vse_tf import images as images_lib
from vse_tf.retrieval import encoders
from vse_tf.retrieval import search as search_lib

INDEX_FORMAT = 1


MANIFEST_FILE = "manifest.json"


EMBEDDINGS_FILE = "embeddings.npy"


ITEMS_FILE = "items.txt"


BUILD_FILE = "build.json"


SHARDS_DIR = "shards"


ANN_MANIFEST = "ann.json"  # the approximate index (`vse_tf.retrieval.ann_index`)


ANN_DIR = "ann"


HASHES_FILE = "hashes.txt"  # (written by the first `index_add`)


DTYPES = ("float16", "float32")


KINDS = ("image", "caption")


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

    @classmethod
    def from_embeddings(
        cls, embeddings: np.ndarray, items: Sequence[str], kind: str = "image"
    ) -> Index:
        """An index in memory, of embeddings already computed.

        Args:
            embeddings: ``[N, D]`` L2-normalised rows (what an encoder gives).
            items: ``[N]`` what each row is: an image path or a caption.
            kind: ``image`` or ``caption``.

        Raises:
            ValueError: for a kind other than those, rows that do not match
                the items, or embeddings that are not ``[N, D]``.
        """
        embeddings = np.asarray(embeddings)
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if embeddings.ndim != 2 or len(embeddings) != len(items):
            raise ValueError(
                f"embeddings must be [N, D] with N = {len(items)} items; "
                f"got shape {embeddings.shape}"
            )
        manifest = {
            "format": INDEX_FORMAT,
            "kind": kind,
            "dim": int(embeddings.shape[1]),
            "count": len(items),
            "dtype": str(embeddings.dtype),
            "model": None,
            "num_skipped": 0,
            "skipped": [],
        }
        return cls(embeddings=embeddings, items=list(items), manifest=manifest)

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


def data_files(manifest: dict) -> dict[str, str]:
    """The file names of the index's generation, by role.

    Returns:
        ``{"embeddings", "items", "hashes", "ann"}`` -> names inside the
        folder: those the manifest's ``files`` lists (a grown index), the
        first generation's for the rest.
    """
    names = {
        "embeddings": EMBEDDINGS_FILE,
        "items": ITEMS_FILE,
        "hashes": HASHES_FILE,
        "ann": ANN_MANIFEST,
    }
    listed = manifest.get("files") or {}
    names.update({role: name for role, name in listed.items() if role in names})
    return names


def generation_name(role_name: str, generation: int) -> str:
    """``embeddings.npy`` -> ``embeddings-g00003.npy`` for generation 3."""
    if generation == 0:
        return role_name
    stem, dot, suffix = role_name.partition(".")
    return f"{stem}-g{generation:05d}{dot}{suffix}"


def read_manifest(index_dir: str) -> dict:
    """The manifest of a finished index.

    Raises:
        errors.MissingError: if the folder holds no finished index.
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
    return json.loads(io_utils.read_bytes(manifest_path))


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
    for attempt in range(3):
        manifest = read_manifest(index_dir)
        files = data_files(manifest)
        try:
            embeddings, items_data = _read_data(index_dir, files, mmap_mode)
            break
        except FileNotFoundError:
            # An add swapped the manifest and removed the generation just read
            # between the two reads: read the new one.
            if attempt == 2:
                raise
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


def _read_data(
    index_dir: str, files: dict[str, str], mmap_mode: Optional[str]
) -> tuple[np.ndarray, bytes]:
    embeddings_path = os.path.join(index_dir, files["embeddings"])
    if io_utils.is_url(embeddings_path):  # (no memory map of a remote file)
        embeddings = np.load(io.BytesIO(io_utils.read_bytes(embeddings_path)))
    else:
        embeddings = np.load(embeddings_path, mmap_mode=mmap_mode)
    return embeddings, io_utils.read_bytes(os.path.join(index_dir, files["items"]))


def check_model(index: Index, encoder: encoders.Encoder) -> None:
    built = index.manifest.get("model") or {}
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
    index: Index, encoder: encoders.Encoder, sentence: str, k: int = 10
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
    check_model(index, encoder)
    return search_embedding(index, encoder.encode_text([sentence]), k)


def search_image(
    index: Index, encoder: encoders.Encoder, image_path: str, k: int = 10
) -> list[Result]:
    """Ranks the index items (captions, usually) for an image file.

    Raises:
        errors.InputError: naming the file and why it is no readable image
            (missing, empty, another format, truncated at byte N, data that
            does not decode); decided by content, as indexing decides.
    """
    check_model(index, encoder)
    data, problem = images_lib.read_checked(image_path)
    if problem is not None:
        raise errors.InputError(f"{image_path}: {problem}")
    try:
        query = encoder.encode_images([data])
    except Exception as error:
        if encoders.is_invalid_input(error):
            reason = images_lib.decode_problem(data) or encoders.short_error(error)
            raise errors.InputError(f"{image_path}: {reason}") from None
        raise
    return search_embedding(index, query, k)
