"""Approximate nearest-neighbour search with a FAISS inverted-file index.

For collections too large for :mod:`vse_tf.retrieval.search` (tens of
millions, or when many queries per second are needed), :class:`ApproximateIndex`
wraps a FAISS inverted-file (IVF) index with inner-product metric:

* a coarse quantizer of ``nlist`` centroids, trained with spherical k-means on
  a sample of the vectors (``train_size``);
* each vector stored in the inverted list of its nearest centroid, encoded
  with 4-bit product quantization scanned by SIMD "fast scan" (``"pq"``,
  default: ``D / 16`` bytes per vector), as float16 (``"fp16"``), float32
  (``"flat"``) or 8 bits per value (``"sq8"``);
* a search scans the ``nprobe`` lists whose centroids are nearest the query
  and keeps the best ``rerank * k`` candidates, which are then re-scored
  exactly (float32 dot products) from the original vectors, so the returned
  scores are exact and the order is that of exact search among the
  candidates.

The compressed codes only have to bring the true neighbours into the
candidate list, not to order them, so ``"pq"`` + re-ranking reaches the
recall of an uncompressed ("fp16") scan of the same lists at a fraction of
its cost. Measured on 1M x 1,024 clustered float16 vectors with 2 shared CPU
cores (``benchmarks/retrieval_speed.py``): ``nlist=1024, nprobe=128`` gives
recall@10 ~0.96 against exact search.

The original vectors are kept by reference (no copy for a float16 or float32
array or memory map) for the re-ranking: do not modify them afterwards.

FAISS (``faiss-cpu``, MIT) is an optional dependency: ``pip install
"vse_tf[ann]"``. It was picked over ScaNN because its wheels depend only on
numpy, while ScaNN 1.4's TensorFlow ops pin ``tensorflow~=2.20``.

Example:
    >>> index = ApproximateIndex(image_embeddings)  # doctest: +SKIP
    >>> scores, ids = index.search(caption_embeddings, k=10)  # doctest: +SKIP
    >>> exact_ids = ExactIndex(image_embeddings).search(queries)[1]  # doctest: +SKIP
    >>> recall_at_k(ids, exact_ids)  # doctest: +SKIP
"""

from __future__ import annotations

import math
from types import ModuleType
from typing import Optional

import numpy as np

INSTALL_HINT = 'pip install "vse_tf[ann]"'

ENCODINGS = ("pq", "fp16", "flat", "sq8")
"""Accepted ``encoding`` values of :class:`ApproximateIndex`."""

LOSSY_ENCODINGS = ("pq", "sq8")
"""Encodings whose scores are approximate: re-ranked by default."""

DEFAULT_RERANK = 10
"""Candidates re-scored exactly per result (``rerank * k``) for lossy codes."""

MIN_PQ_VECTORS = 1024
"""Below this many training vectors, ``"pq"`` falls back to ``"fp16"``."""

_ADD_BATCH = 65536


def import_faiss() -> ModuleType:
    """Imports FAISS, or raises an ImportError that says how to install it."""
    try:
        import faiss  # noqa: PLC0415 (optional dependency)
    except ImportError as err:
        raise ImportError(
            f"approximate search needs FAISS (faiss-cpu): {INSTALL_HINT}"
        ) from err
    return faiss


def default_nlist(num_vectors: int) -> int:
    """Number of inverted lists for ``num_vectors``: a power of two near sqrt(N).

    About sqrt(N) keeps both the coarse search and the list scans small
    (1M -> 1,024 lists of ~1,000 vectors), and k-means training stays quick on
    a few cores. At least 1, and at most N / 39 so that every centroid gets
    FAISS's recommended 39 training points.

    Args:
        num_vectors: Collection size ``N``.

    Returns:
        The list count.
    """
    if num_vectors < 1:
        raise ValueError(f"num_vectors must be >= 1, got {num_vectors}")
    nlist = 2 ** round(math.log2(max(1.0, math.sqrt(num_vectors))))
    return int(max(1, min(nlist, num_vectors // 39)))


def default_nprobe(nlist: int) -> int:
    """Lists scanned per query by default: one eighth of them (at least 1)."""
    return max(1, nlist // 8)


def _pq_subvector_dim(dim: int) -> int:
    """Dimensions per PQ sub-vector: 8, 4, 2 or 1, whichever is largest.

    It must divide ``dim`` and leave at least 64 sub-quantizers (32 bytes per
    vector; all ``dim`` of them below 64 dimensions): fewer 4-bit codes lose
    too much for re-ranking to recover.
    """
    return next(
        size for size in (8, 4, 2, 1) if dim % size == 0 and dim // size >= min(64, dim)
    )


def _checked_vectors(vectors) -> np.ndarray:
    """``vectors`` as a float ``[N, D]`` array (N >= 1), not copied if one."""
    vectors = np.asarray(vectors) if not isinstance(vectors, np.ndarray) else vectors
    if not np.issubdtype(vectors.dtype, np.floating):
        raise TypeError(f"vectors must be a float array, got {vectors.dtype}")
    if vectors.ndim != 2 or len(vectors) == 0:
        raise ValueError(f"vectors must be a non-empty [N, D], got {vectors.shape}")
    return vectors


def _list_sizes(
    num: int,
    nlist: Optional[int],
    nprobe: Optional[int],
    train_size: Optional[int],
    kmeans_iterations: int,
) -> tuple[int, int, int]:
    """Checked ``(nlist, nprobe, train_size)`` for ``num`` vectors, defaults filled."""
    nlist = default_nlist(num) if nlist is None else nlist
    if not 1 <= nlist <= num:
        raise ValueError(f"nlist must be in [1, {num}], got {nlist}")
    nprobe = default_nprobe(nlist) if nprobe is None else nprobe
    if nprobe < 1:
        raise ValueError(f"nprobe must be >= 1, got {nprobe}")
    if kmeans_iterations < 1:
        raise ValueError(f"kmeans_iterations must be >= 1, got {kmeans_iterations}")
    train_size = min(num, 64 * nlist if train_size is None else train_size)
    if train_size < nlist:
        raise ValueError(f"train_size={train_size} is below nlist={nlist}")
    return nlist, nprobe, train_size


def _encoding_and_rerank(
    encoding: str, train_size: int, rerank: Optional[int]
) -> tuple[str, int]:
    """The encoding used (``"pq"`` needs enough vectors) and its re-ranking."""
    if encoding == "pq" and train_size < MIN_PQ_VECTORS:
        encoding = "fp16"  # Too few vectors to train 16-centroid codebooks.
    if rerank is None:
        rerank = DEFAULT_RERANK if encoding in LOSSY_ENCODINGS else 0
    if rerank < 0:
        raise ValueError(f"rerank must be >= 0, got {rerank}")
    return encoding, rerank


def _new_ivf_index(faiss: ModuleType, quantizer, encoding: str, dim: int, nlist: int):
    """An untrained inner-product IVF index storing ``encoding`` codes."""
    metric = faiss.METRIC_INNER_PRODUCT
    if encoding == "flat":
        return faiss.IndexIVFFlat(quantizer, dim, nlist, metric)
    if encoding == "pq":
        sub_dim = _pq_subvector_dim(dim)
        return faiss.IndexIVFPQFastScan(
            quantizer, dim, nlist, dim // sub_dim, 4, metric
        )
    qtype = {
        "fp16": faiss.ScalarQuantizer.QT_fp16,
        "sq8": faiss.ScalarQuantizer.QT_8bit,
    }[encoding]
    return faiss.IndexIVFScalarQuantizer(quantizer, dim, nlist, qtype, metric)


def _set_kmeans(
    index, encoding: str, seed: int, kmeans_iterations: int, train_size: int
) -> None:
    """Spherical, seeded k-means of the centroids (and of the PQ codebooks)."""
    index.cp.spherical = True  # Centroids on the unit sphere, as the data.
    index.cp.seed = seed
    index.cp.niter = int(kmeans_iterations)
    index.cp.max_points_per_centroid = max(256, -(-train_size // index.nlist))
    if encoding == "pq":
        index.pq.cp.niter = int(kmeans_iterations)


def _train_and_add(index, vectors: np.ndarray, train_size: int, seed: int) -> None:
    """Trains ``index`` on a seeded sample of ``[N, D]`` vectors, adds them all."""
    _train(index, vectors, train_size, seed)
    _add(index, vectors, first_id=None)


def _train(index, vectors: np.ndarray, train_size: int, seed: int) -> None:
    """Trains ``index`` on the seeded sample of ``train_size`` of ``[N, D]`` rows."""
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(len(vectors), size=train_size, replace=False))
    index.train(np.ascontiguousarray(vectors[sample], dtype=np.float32))


def _add(index, vectors: np.ndarray, first_id: Optional[int]) -> None:
    """Adds ``[M, D]`` rows in batches (ids ``first_id...`` when given)."""
    for start in range(0, len(vectors), _ADD_BATCH):
        batch = np.ascontiguousarray(
            vectors[start : start + _ADD_BATCH], dtype=np.float32
        )
        if first_id is None:
            index.add(batch)
        else:
            ids = np.arange(len(batch), dtype=np.int64) + first_id + start
            index.add_with_ids(batch, ids)


def train_shardable(
    vectors: np.ndarray,
    nlist: Optional[int] = None,
    nprobe: Optional[int] = None,
    encoding: str = "pq",
    train_size: Optional[int] = None,
    seed: int = 0,
    rerank: Optional[int] = None,
    kmeans_iterations: int = 10,
) -> tuple[bytes, dict]:
    """Trains the empty IVF index that shards are added to, in parallel.

    The same training as `ApproximateIndex` (same sample, same k-means), so
    the shards searched together (`ApproximateIndex.from_shards`) find what
    an `ApproximateIndex` of all the vectors finds.

    Args:
        vectors: ``[N, D]`` all the vectors (read: only the sample).
        nlist, nprobe, encoding, train_size, seed, rerank,
        kmeans_iterations: As in `ApproximateIndex`.

    Returns:
        ``(trained, settings)``: the trained empty index
        (``faiss.serialize_index`` bytes) for `add_shard`, and the resolved
        ``{"encoding", "nlist", "nprobe", "train_size", "seed", "rerank",
        "kmeans_iterations"}``.
    """
    faiss = import_faiss()
    vectors = _checked_vectors(vectors)
    if encoding not in ENCODINGS:
        raise ValueError(f"encoding must be one of {ENCODINGS}, got {encoding!r}")
    num, dim = vectors.shape
    nlist, nprobe, train_size = _list_sizes(
        num, nlist, nprobe, train_size, kmeans_iterations
    )
    encoding, rerank = _encoding_and_rerank(encoding, train_size, rerank)
    quantizer = faiss.IndexFlatIP(dim)
    index = _new_ivf_index(faiss, quantizer, encoding, dim, nlist)
    _set_kmeans(index, encoding, seed, kmeans_iterations, train_size)
    _train(index, vectors, train_size, seed)
    settings = dict(
        encoding=encoding,
        nlist=nlist,
        nprobe=nprobe,
        train_size=train_size,
        seed=seed,
        rerank=rerank,
        kmeans_iterations=kmeans_iterations,
    )
    return bytes(faiss.serialize_index(index)), settings


def add_shard(trained: bytes, vectors: np.ndarray, first_id: int) -> np.ndarray:
    """One shard: ``[M, D]`` rows added to a copy of the trained index.

    Args:
        trained: `train_shardable`'s index.
        vectors: The shard's rows.
        first_id: The id of its first row (its position in the collection).

    Returns:
        ``uint8 [bytes]``: the shard's index, serialised (a shard store array).
    """
    faiss = import_faiss()
    index = faiss.deserialize_index(np.frombuffer(trained, np.uint8))
    _add(index, vectors, first_id=first_id)
    return np.asarray(faiss.serialize_index(index), np.uint8)


class ApproximateIndex:
    """An inverted-file (IVF) index for fast, approximate inner-product search.

    The defaults are tuned for unit-norm embeddings: on 1M x 1,024 clustered
    vectors (see ``benchmarks/retrieval_speed.py``) ``nlist=1024`` lists,
    ``nprobe=128`` of them scanned as 4-bit PQ codes and the best 100
    candidates re-ranked exactly give recall@10 ~0.96 at more than 10x the
    queries/s of exact search.

    Args:
        vectors: ``[N, D]`` float16 or float32 vectors (unit-norm for cosine).
            Added in batches, so a memory map is fine. Kept by reference for
            re-ranking (other float types are copied as float32).
        nlist: Inverted lists (k-means centroids); default
            :func:`default_nlist`.
        nprobe: Lists scanned per query (more: higher recall, slower); default
            :func:`default_nprobe` (``nlist / 8``). Can be changed later
            through :attr:`nprobe`.
        encoding: How vectors are stored in the lists, one of
            :data:`ENCODINGS`. ``"pq"`` (default) is 4-bit product
            quantization with one sub-quantizer per 8 dimensions (``D / 16``
            bytes per vector; fewer dimensions each when ``D`` < 512);
            collections with fewer than :data:`MIN_PQ_VECTORS` training
            vectors use ``"fp16"`` instead.
        train_size: Vectors sampled (without replacement) to train the
            centroids (and the PQ codebooks); default ``64 * nlist`` (at most
            ``N``).
        seed: Seed of the training sample and of k-means.
        num_threads: FAISS (OpenMP) threads; None keeps FAISS's default.
        rerank: Re-score the best ``rerank * k`` candidates of the scan
            exactly from ``vectors`` (float32 arithmetic); 0 or 1 returns the
            scan's own scores. Default :data:`DEFAULT_RERANK` for the lossy
            encodings (:data:`LOSSY_ENCODINGS`), 0 for ``"fp16"`` and
            ``"flat"`` (whose scores are already exact up to rounding).
            Can be changed later through :attr:`rerank`.
        kmeans_iterations: k-means iterations of the coarse quantizer (and of
            the PQ codebooks).

    Raises:
        ImportError: FAISS is not installed.
        ValueError: Bad shapes or parameters.
        TypeError: ``vectors`` is not a float array.
    """

    def __init__(
        self,
        vectors: np.ndarray,
        nlist: Optional[int] = None,
        nprobe: Optional[int] = None,
        encoding: str = "pq",
        train_size: Optional[int] = None,
        seed: int = 0,
        num_threads: Optional[int] = None,
        rerank: Optional[int] = None,
        kmeans_iterations: int = 10,
    ):
        faiss = import_faiss()
        vectors = _checked_vectors(vectors)
        if encoding not in ENCODINGS:
            raise ValueError(f"encoding must be one of {ENCODINGS}, got {encoding!r}")
        if vectors.dtype not in (np.float16, np.float32):
            vectors = vectors.astype(np.float32)
        num, dim = vectors.shape
        nlist, nprobe, train_size = _list_sizes(
            num, nlist, nprobe, train_size, kmeans_iterations
        )
        encoding, rerank = _encoding_and_rerank(encoding, train_size, rerank)
        if num_threads is not None:
            faiss.omp_set_num_threads(int(num_threads))
        quantizer = faiss.IndexFlatIP(dim)
        index = _new_ivf_index(faiss, quantizer, encoding, dim, nlist)
        _set_kmeans(index, encoding, seed, kmeans_iterations, train_size)
        _train_and_add(index, vectors, train_size, seed)
        self._index = index
        self._quantizer = quantizer  # FAISS does not own it from Python.
        self._vectors = vectors
        self.encoding = encoding
        self.nprobe = nprobe
        self.rerank = rerank

    @classmethod
    def from_shards(
        cls, shards: list[np.ndarray], vectors: np.ndarray, settings: dict
    ) -> ApproximateIndex:
        """The index of shards made by `add_shard`, searched together.

        FAISS's ``IndexShards`` scans the same ``nprobe`` lists in every shard
        and merges their results, so with the shards of one trained index it
        returns what one index of all the vectors returns (equal scores may
        come in another order before re-ranking).

        Args:
            shards: `add_shard` arrays, in collection order.
            vectors: ``[N, D]`` the collection (re-ranking reads it).
            settings: `train_shardable`'s settings.
        """
        faiss = import_faiss()
        vectors = _checked_vectors(vectors)
        parts = [faiss.deserialize_index(np.asarray(b, np.uint8)) for b in shards]
        index = faiss.IndexShards(vectors.shape[1], False, False)
        for part in parts:
            index.add_shard(part)
        if index.ntotal != len(vectors):
            raise ValueError(
                f"the shards hold {index.ntotal} vectors, the collection {len(vectors)}"
            )
        self = cls.__new__(cls)
        self._index, self._parts, self._vectors = index, parts, vectors
        self._quantizer = None
        self.encoding = settings["encoding"]
        self.nprobe = settings["nprobe"]
        self.rerank = settings["rerank"]
        return self

    def _ivf_parts(self) -> list:
        return getattr(self, "_parts", None) or [self._index]

    @property
    def size(self) -> int:
        """Number of indexed vectors ``N``."""
        return int(self._index.ntotal)

    @property
    def dim(self) -> int:
        """Vector dimension ``D``."""
        return int(self._index.d)

    @property
    def nlist(self) -> int:
        """Number of inverted lists."""
        return int(self._ivf_parts()[0].nlist)

    @property
    def nprobe(self) -> int:
        """Lists scanned per query."""
        return int(self._ivf_parts()[0].nprobe)

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        if value < 1:
            raise ValueError(f"nprobe must be >= 1, got {value}")
        for part in self._ivf_parts():
            part.nprobe = int(min(value, self.nlist))

    @property
    def rerank(self) -> int:
        """Candidates re-scored exactly per result (0 or 1: no re-ranking)."""
        return self._rerank

    @rerank.setter
    def rerank(self, value: int) -> None:
        if int(value) != value or value < 0:
            raise ValueError(f"rerank must be an integer >= 0, got {value!r}")
        self._rerank = int(value)

    def __len__(self) -> int:
        return self.size

    def search(self, queries: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Approximate top-``k`` by inner product.

        Args:
            queries: ``[Q, D]`` float queries.
            k: Neighbours per query.

        Returns:
            ``(scores, ids)``: float32 ``[Q, min(k, N)]`` and int64
            ``[Q, min(k, N)]``, best first (equal re-ranked scores by lower
            id). When the scanned lists hold fewer than ``k`` vectors, the
            missing slots have id -1 and score -inf.

        Raises:
            ValueError: Bad shapes, ``k`` < 1, or non-finite queries.
            TypeError: ``queries`` is not a float array.
        """
        queries = np.asarray(queries)
        if not np.issubdtype(queries.dtype, np.floating):
            raise TypeError(f"queries must be a float array, got {queries.dtype}")
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(
                f"queries must be [Q, {self.dim}], got shape {queries.shape}"
            )
        if int(k) != k or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if not np.all(np.isfinite(queries)):
            raise ValueError("queries contain NaN or infinite values")
        k = min(int(k), self.size)
        if len(queries) == 0:
            return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
        candidates = min(self.size, k * self._rerank) if self._rerank > 1 else k
        scores, ids = self._index.search(queries, max(k, candidates))
        ids = np.asarray(ids, dtype=np.int64)
        if self._rerank > 1:
            return self._rescore(queries, ids, k)
        scores = np.asarray(scores, dtype=np.float32)
        scores[ids < 0] = -np.inf
        return scores, ids

    def _rescore(
        self, queries: np.ndarray, ids: np.ndarray, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact scores of the ``[Q, C]`` candidate ``ids``; the best ``k``."""
        num, count = ids.shape
        valid = ids >= 0
        rows = self._vectors[np.where(valid, ids, 0).ravel()]
        rows = rows.astype(np.float32, copy=False).reshape(num, count, self.dim)
        scores = np.matmul(rows, queries[:, :, None])[:, :, 0]
        scores[~valid] = -np.inf
        # Best first; ties (and the -1 slots, last) by id.
        order = np.lexsort((np.where(valid, ids, np.iinfo(np.int64).max), -scores))
        order = order[:, :k]
        return (
            np.take_along_axis(scores, order, axis=1),
            np.take_along_axis(ids, order, axis=1),
        )


def recall_at_k(approx_ids: np.ndarray, exact_ids: np.ndarray) -> float:
    """Mean share of the exact top-k found by the approximate top-k.

    For each query, ``|approx_ids[q] & exact_ids[q]| / k`` with ``k`` the
    number of exact columns, averaged over queries (the usual "recall@k" of
    ANN benchmarks, also called intersection recall). Ids of -1 never match.

    Args:
        approx_ids: ``[Q, k']`` ids from the approximate search.
        exact_ids: ``[Q, k]`` ids from the exact search.

    Returns:
        Recall in ``[0, 1]``.

    Raises:
        ValueError: Shapes are not 2-D, query counts differ, or ``k`` is 0.
    """
    approx_ids = np.asarray(approx_ids)
    exact_ids = np.asarray(exact_ids)
    if approx_ids.ndim != 2 or exact_ids.ndim != 2:
        raise ValueError(
            f"expected [Q, k] id arrays, got {approx_ids.shape} and {exact_ids.shape}"
        )
    if len(approx_ids) != len(exact_ids):
        raise ValueError(
            f"{len(approx_ids)} approximate rows but {len(exact_ids)} exact"
        )
    if exact_ids.shape[1] == 0:
        raise ValueError("exact_ids has no columns")
    if len(exact_ids) == 0:
        return 1.0
    hits = 0
    for approx_row, exact_row in zip(approx_ids, exact_ids):
        hits += np.intersect1d(approx_row[approx_row >= 0], exact_row).size
    return hits / exact_ids.size
