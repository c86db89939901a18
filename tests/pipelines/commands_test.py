"""The commands users run: same flags plus --runner, same outputs."""

import json
import os
import shutil

import numpy as np
import pytest

pytest.importorskip(
    "apache_beam", reason='the Beam tier needs: pip install -e ".[beam]"'
)

from tests import testing_utils  # noqa: E402
from tests.pipelines.extract_test import MULTI_PROCESS  # noqa: E402
from tests.pipelines.index_test import collection  # noqa: E402, F401
from vse_tf.retrieval import ann_index, index_lib  # noqa: E402
from vse_tf.retrieval import encoders as index_encoders


def _manifests(cache):
    found = {}
    for folder, _, names in os.walk(cache):
        if "manifest.json" in names and os.path.relpath(folder, cache).startswith(
            "features"
        ):
            with open(os.path.join(folder, "manifest.json")) as f:
                manifest = json.load(f)
            manifest.pop("seconds", None)
            found[os.path.relpath(folder, cache)] = manifest
    return found


def test_extract_features_command_on_beam_equals_local(tmp_path):
    cache = str(tmp_path / "cache")  # one cache: the demo images are its own
    outputs = {}
    for name, extra in [
        ("local", []),
        ("beam", ["--runner=DirectRunner", "--", *MULTI_PROCESS]),
    ]:
        shutil.rmtree(os.path.join(cache, "features"), ignore_errors=True)
        result = testing_utils.run_python(
            "-m", "trainers.extract_features", "--preset=tiny",
            f"--cache_dir={cache}", *extra,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        assert "train: 64 images, 0 skipped, 1 shards computed" in result.stdout
        outputs[name] = _manifests(cache)
    assert len(outputs["local"]) == 3  # train, dev, test
    assert outputs["beam"] == outputs["local"]


def test_index_and_search_commands_on_beam(collection, tmp_path):  # noqa: F811
    export_dir, list_file, local = collection
    output = str(tmp_path / "index")
    result = testing_utils.run_python(
        "-m", "trainers.vse_index", f"--model={export_dir}", f"--images={list_file}",
        f"--output={output}", "--dtype=float32", "--batch_size=4", "--shard_size=8",
        "--ann", "--ann_shard_size=16", "--runner=FnApiRunner",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Indexed 40 images" in result.stdout and "2 skipped" in result.stdout
    assert "Approximate index: fp16" in result.stdout  # (40 vectors: too few for PQ)
    built = index_lib.load_index(output)
    np.testing.assert_array_equal(built.embeddings, local.embeddings)
    assert len(ann_index.load_index(output).ann) == 40
    searches = {}
    for flag in ([], ["--ann"]):
        result = testing_utils.run_python(
            "-m", "trainers.vse_search", f"--index={output}", "a red square", *flag
        )
        assert result.returncode == 0, result.stderr[-3000:]
        searches[bool(flag)] = result.stdout.splitlines()
    # Each prints what its index finds for the query's embedding.
    query = index_encoders.SavedModelEncoder(export_dir).encode_text(["a red square"])
    for flag, index in [(False, built), (True, ann_index.load_index(output))]:
        scores, ids = index.search(query, 10)
        assert searches[flag] == [
            f"{rank}\t{score:.4f}\t{index.items[i]}"
            for rank, (score, i) in enumerate(zip(scores[0], ids[0]), start=1)
        ]
