"""The sharded approximate index of an index folder (vse_tf.retrieval.ann_index)."""

import json
import os

import numpy as np
import pytest

pytest.importorskip("faiss", reason='FAISS missing: pip install "vse_tf[ann]"')

from vse_tf import errors  # noqa: E402
from vse_tf.retrieval import ann, ann_index, index_lib, search  # noqa: E402


class _Stop(Exception):
    pass


def _recording(added):
    """An `ann_index.AddShards` that adds here and notes each shard in ``added``."""

    def add(index_dir, trained, table, store):
        added.extend(row[0] for row in table)
        ann_index.add_shards_here(index_dir, trained, table, store)

    return add


def _clustered(num, dim, seed=0):
    """Unit vectors around 300 centres: neighbourhoods an IVF index can use."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((300, dim))
    vectors = centres[rng.integers(0, 300, num)] + 0.3 * rng.standard_normal((num, dim))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors.astype(np.float16)


def write_index(folder, vectors):
    """A finished index folder holding ``vectors`` (as vse-index writes one)."""
    os.makedirs(folder)
    np.save(os.path.join(folder, index_lib.EMBEDDINGS_FILE), vectors)
    items = [f"image_{i:05d}.jpg" for i in range(len(vectors))]
    with open(os.path.join(folder, index_lib.ITEMS_FILE), "w") as f:
        f.write("".join(item + "\n" for item in items))
    manifest = {
        "format": index_lib.INDEX_FORMAT,
        "kind": "image",
        "model": {"path": "m", "sha256": "0", "version": "1"},
        "source": "<list>",
        "dim": vectors.shape[1],
        "count": len(vectors),
        "dtype": str(vectors.dtype),
        "created": "2026-12-02T00:00:00+00:00",
        "num_skipped": 0,
        "skipped": [],
        "build": {"inputs_sha256": "x"},
    }
    with open(os.path.join(folder, index_lib.MANIFEST_FILE), "w") as f:
        json.dump(manifest, f)
    return folder


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    vectors = _clustered(12_000, 64)
    queries = _clustered(300, 64, seed=1).astype(np.float32)
    exact = search.ExactIndex(vectors).search(queries, 10)[1]
    return vectors, queries, exact


def test_exact_codes_sharded_equal_one_index(collection, tmp_path):
    vectors, queries, exact = collection
    folder = write_index(str(tmp_path / "index"), vectors)
    settings = dict(encoding="flat", nlist=64, nprobe=64)
    sharded = ann_index.build_ann(folder, shard_size=2_500, **settings)
    single = ann.ApproximateIndex(vectors, **settings)
    # Every list scanned with exact codes: both are exact search.
    np.testing.assert_array_equal(sharded.search(queries, 10)[1], exact)
    np.testing.assert_array_equal(single.search(queries, 10)[1], exact)
    manifest = json.load(open(os.path.join(folder, ann_index.ANN_MANIFEST)))
    assert manifest["complete"]
    assert [e["shard"] for e in manifest["shards"]] == [0, 1, 2, 3, 4]
    names = sorted(os.listdir(os.path.join(folder, ann_index.ANN_DIR)))
    assert names == [f"shard-0000{s}.npy" for s in range(5)] + ["trained.npy"]


@pytest.mark.slow(reason="trains FAISS IVF-PQ codebooks on 12,000 vectors (10-30 s)")
def test_pq_sharded_recall_matches_one_index(collection, tmp_path):
    vectors, queries, exact = collection
    folder = write_index(str(tmp_path / "index"), vectors)
    sharded = ann_index.build_ann(folder, nlist=64, nprobe=16, shard_size=3_000)
    single = ann.ApproximateIndex(vectors, nlist=64, nprobe=16)
    assert sharded.encoding == single.encoding == "pq"
    assert sharded.nprobe == single.nprobe
    recall_sharded = ann.recall_at_k(sharded.search(queries, 10)[1], exact)
    recall_single = ann.recall_at_k(single.search(queries, 10)[1], exact)
    assert recall_single > 0.9
    print(f"recall@10 sharded {recall_sharded:.4f}, one index {recall_single:.4f}")
    assert abs(recall_sharded - recall_single) <= 0.005


@pytest.mark.slow(reason="trains FAISS IVF-PQ codebooks on 12,000 vectors (10-30 s)")
def test_interrupted_build_resumes_and_search_uses_it(collection, tmp_path):
    vectors, queries, exact = collection
    folder = write_index(str(tmp_path / "index"), vectors)
    written = []

    def stop_after_two(index_dir, trained, table, store):
        for shard, start, stop in table:
            if len(written) == 2:
                raise _Stop
            ann_index.write_ann_shard(store, trained, (shard, start, stop), vectors)
            written.append(shard)

    with pytest.raises(errors.MissingError, match="vse-index --ann"):
        ann_index.load_index(folder)
    with pytest.raises(_Stop):
        ann_index.build_ann(folder, nlist=64, shard_size=2_500, add=stop_after_two)
    added = []
    record = _recording(added)

    resumed = ann_index.build_ann(folder, nlist=64, shard_size=2_500, add=record)
    assert added == [2, 3, 4]  # the two shards finished before the stop kept
    whole = ann_index.build_ann(
        write_index(str(tmp_path / "whole"), vectors), nlist=64, shard_size=2_500
    )
    np.testing.assert_array_equal(
        resumed.search(queries, 10)[1], whole.search(queries, 10)[1]
    )
    loaded = ann_index.load_index(folder)
    np.testing.assert_array_equal(
        loaded.search(queries, 10)[1], whole.search(queries, 10)[1]
    )
    results = index_lib.search_embedding(loaded, queries[0], k=5)
    assert [r.item for r in results] == [
        f"image_{i:05d}.jpg" for i in whole.search(queries[:1], 5)[1][0]
    ]


@pytest.mark.slow(reason="trains FAISS IVF-PQ codebooks on 12,000 vectors (10-30 s)")
def test_shards_of_another_training_or_index_are_never_used(collection, tmp_path):
    vectors, queries, _ = collection
    folder = write_index(str(tmp_path / "index"), vectors)

    def stop_after_one(index_dir, trained, table, store):
        ann_index.write_ann_shard(store, trained, table[0], vectors)
        raise _Stop

    with pytest.raises(_Stop):
        ann_index.build_ann(folder, nlist=64, shard_size=2_500, add=stop_after_one)
    added = []
    record = _recording(added)

    # Other settings: the shard left by the first training is not mixed in.
    other = ann_index.build_ann(folder, nlist=32, shard_size=2_500, add=record)
    assert added == [0, 1, 2, 3, 4] and other.nlist == 32
    # An index rebuilt in the folder makes its old ANN unusable.
    manifest_path = os.path.join(folder, index_lib.MANIFEST_FILE)
    manifest = json.load(open(manifest_path))
    manifest["created"] = "2026-12-03T00:00:00+00:00"
    json.dump(manifest, open(manifest_path, "w"))
    with pytest.raises(errors.UserError, match="earlier index"):
        ann_index.load_index(folder)
