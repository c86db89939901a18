"""Speed of exact and approximate top-10 search over float16 embeddings.

Builds ``--num_vectors`` x ``--dim`` random unit vectors (float16, ~2 GB at
1M x 1,024) drawn around random cluster centres, as real embeddings are
clustered (on uniform random vectors every neighbour is nearly equidistant
and no index can beat a scan), plus held-out queries from the same
distribution. Then measures:

* exact search (:class:`vse_tf.retrieval.search.ExactIndex`) queries/s for
  batches of 1 and 64 queries, and the same for a plain numpy baseline in the
  same process (``queries @ database.T`` on a float32 copy, then
  ``np.argpartition`` and a sort of the top k);
* the approximate index (:class:`vse_tf.retrieval.ann.ApproximateIndex`,
  default settings: IVF, 4-bit fast-scan PQ codes, the best 10 * k
  candidates re-ranked exactly from the float16 vectors): build time,
  queries/s and recall@10 against the exact results, for each ``--nprobes``.

The data are synthetic (``--clusters`` random centres, each vector at cosine
``--cosine_to_centre`` from its centre), not real embeddings: with 10k
centres and cosine 0.7, each query's top 10 lie in its own ~100-vector
cluster, so recall measures how well the inverted lists keep clusters
together. Real embeddings are less cleanly clustered; check recall on them.

Prints a table, then ONE line of JSON (last line) with ``exact_qps_b1``,
``exact_qps_b64``, ``exact_vs_numpy`` (the smaller of the batch-1 and
batch-64 ratios), ``ann_recall_at_10`` and ``ann_speedup_vs_exact`` (the
smaller ratio of the two batch sizes). Targets: ``exact_vs_numpy >= 1``,
``ann_recall_at_10 >= 0.95``, ``ann_speedup_vs_exact >= 10``.

Usage:
    python -m benchmarks.retrieval_speed                  # 1M x 1024, minutes
    python -m benchmarks.retrieval_speed --num_vectors=100000
"""

from __future__ import annotations

import json
import time

import numpy as np
from absl import app, flags

from vse_tf.retrieval import ann as ann_lib
from vse_tf.retrieval import search as search_lib

_NUM_VECTORS = flags.DEFINE_integer("num_vectors", 1_000_000, "Database size.")
_DIM = flags.DEFINE_integer("dim", 1024, "Embedding dimension.")
_NUM_QUERIES = flags.DEFINE_integer("num_queries", 256, "Queries (batch 64 runs).")
_NUM_SINGLE = flags.DEFINE_integer("num_single", 8, "Batch-1 queries timed (exact).")
_CLUSTERS = flags.DEFINE_integer("clusters", 10000, "Cluster centres of the data.")
_COSINE = flags.DEFINE_float(
    "cosine_to_centre", 0.7, "Typical cosine between a vector and its centre."
)
_NPROBES = flags.DEFINE_list(
    "nprobes",
    ["64", "128", "256"],
    "Lists scanned per query to try; the JSON reports the smallest reaching "
    "recall@10 >= 0.95 (else the largest).",
)
_NLIST = flags.DEFINE_integer("nlist", None, "ANN lists (default: ~sqrt(N)).")
_ENCODING = flags.DEFINE_enum(
    "encoding", "pq", list(ann_lib.ENCODINGS), "ANN list encoding."
)
_RERANK = flags.DEFINE_integer(
    "rerank", None, "ANN candidates re-ranked per result (default: the index's)."
)
_SEED = flags.DEFINE_integer("seed", 0, "Data seed.")
_K = 10


def make_vectors(
    num: int, dim: int, centres: np.ndarray, cosine: float, rng: np.random.Generator
) -> np.ndarray:
    """``[num, dim]`` float16 unit vectors around random ``centres``."""
    noise = np.sqrt(1.0 / cosine**2 - 1.0) / np.sqrt(dim)
    out = np.empty((num, dim), dtype=np.float16)
    for start in range(0, num, 65536):
        n = min(65536, num - start)
        x = centres[rng.integers(0, len(centres), n)]
        x += noise * rng.standard_normal((n, dim), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out[start : start + n] = x
    return out


def numpy_top_k(queries: np.ndarray, database: np.ndarray, k: int) -> np.ndarray:
    """The plain numpy baseline: full score matrix, argpartition, sort."""
    scores = queries @ database.T
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1)
    return np.take_along_axis(part, order, axis=1)


def timed_qps(search, queries: np.ndarray, batch: int) -> tuple[float, list]:
    """Queries/s of ``search`` over ``queries`` in batches (after one warm-up)."""
    search(queries[:batch])
    results = []
    start = time.perf_counter()
    for q0 in range(0, len(queries), batch):
        results.append(search(queries[q0 : q0 + batch]))
    return len(queries) / (time.perf_counter() - start), results


def paired_qps(search_a, search_b, queries: np.ndarray, batch: int):
    """Queries/s of two searches timed batch by batch in turn (median times)."""
    search_a(queries[:batch])
    search_b(queries[:batch])
    times_a, times_b, results_a, results_b = [], [], [], []
    for q0 in range(0, len(queries), batch):
        part = queries[q0 : q0 + batch]
        for search, times, results in (
            (search_a, times_a, results_a),
            (search_b, times_b, results_b),
        ):
            start = time.perf_counter()
            results.append(search(part))
            times.append(time.perf_counter() - start)
    return (
        batch / float(np.median(times_a)),
        batch / float(np.median(times_b)),
        results_a,
        results_b,
    )


def main(argv):
    del argv
    num, dim = _NUM_VECTORS.value, _DIM.value
    rng = np.random.default_rng(_SEED.value)
    centres = rng.standard_normal((_CLUSTERS.value, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    t0 = time.perf_counter()
    database = make_vectors(num, dim, centres, _COSINE.value, rng)
    queries = make_vectors(_NUM_QUERIES.value, dim, centres, _COSINE.value, rng)
    queries = queries.astype(np.float32)
    print(
        f"data: {num:,} x {dim} float16 ({database.nbytes / 2**30:.2f} GiB), "
        f"{len(queries)} queries, {time.perf_counter() - t0:.1f}s"
    )

    t0 = time.perf_counter()
    exact = search_lib.ExactIndex(database)  # float32 copy, made once.
    print(f"exact index (float32 copy): {time.perf_counter() - t0:.1f}s")
    base32 = exact.database  # The baseline reads the same float32 copy.
    single = queries[: _NUM_SINGLE.value]

    # Interleaved, median per batch: the machine may be shared.
    exact_b1, numpy_b1, _, _ = paired_qps(
        lambda q: exact.search(q, _K), lambda q: numpy_top_k(q, base32, _K), single, 1
    )
    exact_b64, numpy_b64, exact_res, numpy_res = paired_qps(
        lambda q: exact.search(q, _K), lambda q: numpy_top_k(q, base32, _K), queries, 64
    )
    exact_ids = np.concatenate([ids for _, ids in exact_res])
    numpy_ids = np.concatenate(numpy_res)
    agree = float(np.mean(np.sort(exact_ids, 1) == np.sort(numpy_ids, 1)))

    t0 = time.perf_counter()
    index = ann_lib.ApproximateIndex(
        database, nlist=_NLIST.value, encoding=_ENCODING.value, rerank=_RERANK.value
    )
    build_s = time.perf_counter() - t0
    config = f"IVF{index.nlist},{index.encoding},rerank={index.rerank}"
    print(f"ANN index {config} built in {build_s:.1f}s")
    sweep = []
    for nprobe in sorted(int(n) for n in _NPROBES.value):
        index.nprobe = nprobe
        qps_b64, res = timed_qps(lambda q: index.search(q, _K), queries, 64)
        recall = ann_lib.recall_at_k(np.concatenate([i for _, i in res]), exact_ids)
        sweep.append((nprobe, recall, qps_b64))
        print(
            f"  nprobe={nprobe:<4} recall@10 {recall:.4f}  b64 q/s {qps_b64:.1f} "
            f"({qps_b64 / exact_b64:.1f}x exact)"
        )
    chosen = next((row for row in sweep if row[1] >= 0.95), sweep[-1])
    index.nprobe, recall, ann_b64 = chosen
    ann_b1, _ = timed_qps(lambda q: index.search(q, _K), queries, 1)

    print(f"\n{'method':<34}{'batch 1 q/s':>14}{'batch 64 q/s':>14}")
    print(f"{'exact (ExactIndex)':<34}{exact_b1:>14.2f}{exact_b64:>14.2f}")
    print(f"{'numpy matmul + argpartition':<34}{numpy_b1:>14.2f}{numpy_b64:>14.2f}")
    name = f"ANN nprobe={index.nprobe}"
    print(f"{name:<34}{ann_b1:>14.2f}{ann_b64:>14.2f}")
    print(
        f"exact/numpy: {exact_b1 / numpy_b1:.2f}x (b1), {exact_b64 / numpy_b64:.2f}x "
        f"(b64); top-10 sets agree on {100 * agree:.2f}% of entries"
    )
    print(
        f"ANN: recall@10 {recall:.4f}, speed-up {ann_b1 / exact_b1:.1f}x (b1), "
        f"{ann_b64 / exact_b64:.1f}x (b64), built in {build_s:.1f}s"
    )
    result = {
        "num_vectors": num,
        "dim": dim,
        "exact_qps_b1": round(exact_b1, 3),
        "exact_qps_b64": round(exact_b64, 3),
        "exact_vs_numpy": round(min(exact_b1 / numpy_b1, exact_b64 / numpy_b64), 3),
        "ann_recall_at_10": round(recall, 4),
        "ann_speedup_vs_exact": round(min(ann_b1 / exact_b1, ann_b64 / exact_b64), 2),
        "ann_speedup_b1": round(ann_b1 / exact_b1, 2),
        "ann_speedup_b64": round(ann_b64 / exact_b64, 2),
        "ann_config": f"{config},nprobe={index.nprobe}",
        "ann_build_s": round(build_s, 1),
        "data": f"synthetic: {_CLUSTERS.value} centres, cosine {_COSINE.value}",
    }
    print(json.dumps(result))


if __name__ == "__main__":
    app.run(main)
