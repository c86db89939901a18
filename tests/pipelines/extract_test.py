"""The Beam extraction pipeline writes the feature cache the local path writes."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip(
    "apache_beam", reason='the Beam tier needs: pip install -e ".[beam]"'
)

from tests import testing_utils  # noqa: E402
from vse_tf import config as config_lib  # noqa: E402
from vse_tf import train_lib  # noqa: E402
from vse_tf.data import datasets  # noqa: E402
from vse_tf.features import extraction as feature_extraction  # noqa: E402
from vse_tf.features import settings as feature_settings  # noqa: E402
from vse_tf.models import backbone as backbone_lib  # noqa: E402
from vse_tf.pipelines import extract  # noqa: E402

MULTI_PROCESS = [
    "--direct_running_mode=multi_processing",
    "--direct_num_workers=2",
]
TINY = dict(
    image_feature="pool5",
    image_size=32,
    weights="none",
    dtype="float32",
    batch_size=4,
    shard_size=8,
    verbose=0,
)


@pytest.fixture(scope="module")
def tiny_images(tmp_path_factory):
    """25 paths: 23 demo images, one corrupt file and one missing one."""
    root = tmp_path_factory.mktemp("images")
    data_dir = testing_utils.write_tiny_captioned_images(str(root), {"train": 23})
    folder = os.path.join(data_dir, "images")
    paths = sorted(os.path.join(folder, n) for n in os.listdir(folder))
    (root / "corrupt.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    return (
        paths[:10]
        + [str(root / "corrupt.jpg"), str(root / "missing.jpg")]
        + (paths[10:])
    )


def _files(report):
    folder = report.cache_folder
    return {
        name: open(os.path.join(folder, name), "rb").read()
        for name in sorted(os.listdir(folder))
        if name.startswith("shard-")
    }


def _manifest(report):
    with open(report.manifest_path) as f:
        manifest = json.load(f)
    manifest.pop("seconds", None)  # how long it took: the one field that differs
    return manifest


def _assert_same(local, beam):
    np.testing.assert_array_equal(beam.features, local.features)
    np.testing.assert_array_equal(beam.valid, local.valid)
    assert beam.skipped == local.skipped
    # The same cache entry: features/<key id>/<list id> under each root.
    assert beam.cache_folder.split(os.sep)[-3:] == local.cache_folder.split(os.sep)[-3:]
    assert _manifest(beam) == _manifest(local)
    assert _files(beam) == _files(local)  # bit-identical shards


@pytest.mark.parametrize(
    "runner, options",
    [("FnApiRunner", []), ("DirectRunner", MULTI_PROCESS)],
    ids=["fn_api", "direct_2_processes"],
)
def test_beam_cache_is_the_local_cache(tiny_images, tmp_path, runner, options):
    local = feature_extraction.extract_features_with_report(
        tiny_images, cache_dir=str(tmp_path / "local"), **TINY
    )
    beam = extract.extract_features_with_report(
        tiny_images,
        cache_dir=str(tmp_path / "beam"),
        runner=runner,
        pipeline_options=options,
        **TINY,
    )
    _assert_same(local, beam)
    # The bad files are skipped and counted, and the shard that holds them
    # (shard 1: images 8..15) is not lost.
    assert [s.index for s in beam.skipped] == [10, 11]
    assert beam.valid.sum() == 23 and beam.shards_computed == 4
    with open(beam.manifest_path) as f:
        manifest = json.load(f)
    assert manifest["complete"] and manifest["num_skipped"] == 2
    assert [e["rows"] for e in manifest["shards"]] == [8, 6, 8, 1]
    # A rerun finds the entry complete and runs nothing.
    again = extract.extract_features_with_report(
        tiny_images, cache_dir=str(tmp_path / "beam"), runner=runner, **TINY
    )
    assert again.shards_computed == 0 and again.shards_reused == 4


_KILLED_RUN = """
import os, signal, sys
from vse_tf import shard_store
from vse_tf.pipelines import extract

write_entry = shard_store.ShardStore.write_entry
written = []

def write_then_die(store, entry):  # the worker is killed after its 3rd shard
    write_entry(store, entry)
    written.append(entry)
    if len(written) == 3:
        os.kill(os.getpid(), signal.SIGKILL)

shard_store.ShardStore.write_entry = write_then_die
extract.extract_features_with_report(
    sys.argv[2:], cache_dir=sys.argv[1], runner="FnApiRunner", image_feature="pool5",
    image_size=32, weights="none", dtype="float32", batch_size=4, shard_size=2,
    verbose=0,
)
"""


def test_killed_pipeline_rerun_ends_with_identical_files(tiny_images, tmp_path):
    cache = str(tmp_path / "killed")
    settings = dict(TINY, shard_size=2)
    killed = subprocess.run(
        [sys.executable, "-c", _KILLED_RUN, cache, *tiny_images],
        cwd=testing_utils.REPO_ROOT,
        capture_output=True,
        timeout=600,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-2000:]
    entries = [
        name
        for _, _, names in os.walk(cache)
        for name in names
        if name.endswith(".entry.json")
    ]
    assert len(entries) == 3  # 3 of 13 shards written when it died
    resumed = extract.extract_features_with_report(
        tiny_images, cache_dir=cache, runner="FnApiRunner", **settings
    )
    assert resumed.shards_reused == 3  # the shards finished before the kill
    whole = feature_extraction.extract_features_with_report(
        tiny_images, cache_dir=str(tmp_path / "whole"), **settings
    )
    _assert_same(whole, resumed)
    assert not [n for n in os.listdir(resumed.cache_folder) if n.startswith(".tmp-")]


def test_training_reads_the_beam_built_cache(tmp_path, monkeypatch):
    config = config_lib.override(
        config_lib.get_config("tiny"), cache_dir=str(tmp_path / "cache"), epochs=1
    )
    reports = train_lib.extract_split_features(config, verbose=0, runner="FnApiRunner")
    assert sorted(reports) == ["dev", "test", "train"]
    assert all(r.shards_computed for r in reports.values())

    def no_backbone(*args, **kwargs):
        raise AssertionError("the backbone ran although Beam cached the features")

    monkeypatch.setattr(backbone_lib, "build_backbone", no_backbone)
    results = train_lib.train_and_evaluate(config, str(tmp_path / "run"), verbose=0)
    assert sorted(results) == ["dev", "test"]
    for name in ("train", "dev", "test"):
        view = datasets.load_split(config, name)
        if name != "train":
            view = datasets.protocol_view(view)
        report = feature_settings.extract_for_config(
            config, view.image_paths, verbose=0
        )
        assert report.cache_folder == reports[name].cache_folder
        assert report.shards_computed == 0


@pytest.mark.slow(reason="real Flickr8k photos through the Beam pipeline")
def test_real_flickr8k_subset_with_the_hed_trunk(tmp_path):
    """200 real images, the flickr8k preset's extraction: Beam == local."""
    config = testing_utils.shared_flickr8k_config("flickr8k", str(tmp_path))
    paths = datasets.load_split(config, "dev").image_paths[:200]
    settings = feature_settings.extraction_settings(config)
    del settings["cache_dir"]
    local = feature_extraction.extract_features_with_report(
        paths, cache_dir=str(tmp_path / "local"), verbose=0, **settings
    )
    for runner, options in [("FnApiRunner", []), ("DirectRunner", MULTI_PROCESS)]:
        beam = extract.extract_features_with_report(
            paths,
            cache_dir=str(tmp_path / runner),
            verbose=0,
            runner=runner,
            pipeline_options=options,
            **settings,
        )
        _assert_same(local, beam)
        assert beam.used_dtype == local.used_dtype
