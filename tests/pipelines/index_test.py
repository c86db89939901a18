"""The Beam index pipeline writes the index the local build writes."""

import json
import os

import numpy as np
import pytest

pytest.importorskip(
    "apache_beam", reason='the Beam tier needs: pip install -e ".[beam]"'
)

from tests.pipelines.extract_test import MULTI_PROCESS  # noqa: E402
from vse_tf.pipelines import index as beam_index  # noqa: E402
from vse_tf.retrieval import (
    index_build,
    index_lib,  # noqa: E402
)

SETTINGS = dict(dtype="float32", batch_size=4, shard_size=8, verbose=0)


class _Stop(Exception):
    pass


@pytest.fixture(scope="module")
def collection(tmp_path_factory, tiny_export):
    export_dir, data_dir = tiny_export.export_dir, tiny_export.data_dir
    root = tmp_path_factory.mktemp("collection")
    folder = os.path.join(data_dir, "images")
    names = sorted(os.listdir(folder))
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not a png")
    lines = [os.path.join(folder, n) for n in names[:20]]
    lines += ["corrupt.png", "missing.png"]
    lines += [os.path.join(folder, n) for n in names[20:]]
    list_file = root / "images.txt"
    list_file.write_text("\n".join(lines) + "\n")
    local = index_build.build_image_index(
        export_dir, str(list_file), str(root / "local"), **SETTINGS
    )
    return export_dir, str(list_file), local


def _same_index(beam, local):
    np.testing.assert_array_equal(beam.embeddings, local.embeddings)
    assert beam.items == local.items
    for key in ("kind", "model", "source", "dim", "count", "dtype", "skipped"):
        assert beam.manifest[key] == local.manifest[key], key
    assert beam.manifest["build"] == local.manifest["build"]


@pytest.mark.parametrize(
    "runner, options",
    [("FnApiRunner", []), ("DirectRunner", MULTI_PROCESS)],
    ids=["fn_api", "direct_2_processes"],
)
def test_beam_index_is_the_local_index(collection, tmp_path, runner, options):
    export_dir, list_file, local = collection
    output = str(tmp_path / "beam")
    beam = beam_index.build_image_index(
        export_dir, list_file, output, runner, options, **SETTINGS
    )
    _same_index(beam, local)
    assert beam.manifest["num_skipped"] == 2
    assert sorted(os.listdir(output)) == [
        "embeddings.npy",
        "items.txt",
        "manifest.json",
    ]
    _same_index(index_lib.load_index(output), local)
    # Exact search over the two gives the same top-10 for every image query.
    queries = local.embeddings[:8]
    np.testing.assert_array_equal(
        beam.search(queries, 10)[1], local.search(queries, 10)[1]
    )


def test_beam_build_resumes_a_local_build_and_its_captions(collection, tmp_path):
    export_dir, list_file, local = collection
    output = str(tmp_path / "resumed")

    def stop_after_two(shard, done):
        if shard == 1:
            raise _Stop

    with pytest.raises(_Stop):
        index_build.build_image_index(
            export_dir, list_file, output, on_shard=stop_after_two, **SETTINGS
        )
    with open(os.path.join(output, "build.json")) as f:
        assert [e["shard"] for e in json.load(f)["shards"]] == [0, 1]
    beam = beam_index.build_image_index(
        export_dir, list_file, output, "FnApiRunner", **SETTINGS
    )
    _same_index(beam, local)

    captions = [f"a caption number {i}" for i in range(21)]
    local_captions = index_build.build_caption_index(
        export_dir, captions, str(tmp_path / "caps_local"), **SETTINGS
    )
    beam_captions = beam_index.build_caption_index(
        export_dir, captions, str(tmp_path / "caps_beam"), "FnApiRunner", **SETTINGS
    )
    _same_index(beam_captions, local_captions)


@pytest.mark.parametrize(
    "runner, options",
    [("FnApiRunner", []), ("DirectRunner", MULTI_PROCESS)],
    ids=["fn_api", "direct_2_processes"],
)
def test_ann_shards_added_by_workers_equal_local_ones(tmp_path, runner, options):
    from tests.retrieval.ann_index_test import _clustered, write_index
    from vse_tf.retrieval import ann, ann_index, search

    vectors = _clustered(12_000, 64)
    queries = _clustered(300, 64, seed=1).astype(np.float32)
    exact = search.ExactIndex(vectors).search(queries, 10)[1]
    settings = dict(nlist=64, nprobe=16, shard_size=2_500)
    local = ann_index.build_ann(write_index(str(tmp_path / "a"), vectors), **settings)
    folder = write_index(str(tmp_path / "b"), vectors)
    beam = beam_index.build_ann(folder, runner, options, **settings)
    one = ann.ApproximateIndex(vectors, nlist=64, nprobe=16)
    recall = {
        name: ann.recall_at_k(index.search(queries, 10)[1], exact)
        for name, index in [("beam", beam), ("local", local), ("one", one)]
    }
    print(f"recall@10 {recall}")
    np.testing.assert_array_equal(
        beam.search(queries, 10)[1], local.search(queries, 10)[1]
    )
    assert abs(recall["beam"] - recall["one"]) <= 0.005
    loaded = ann_index.load_index(folder)
    np.testing.assert_array_equal(
        loaded.search(queries, 10)[1], local.search(queries, 10)[1]
    )
