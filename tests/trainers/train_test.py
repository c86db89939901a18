"""The absl entry points, run as a user runs them (subprocesses)."""

import json
import os

import pytest

from tests import testing_utils

pytestmark = pytest.mark.slow(reason="runs the training commands as subprocesses")


def _run(*args):
    return testing_utils.run_python("-m", *args)


def _files(folder):
    """``relative path -> (size, mtime_ns)`` of every file under ``folder``."""
    found = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            stat = os.stat(path)
            found[os.path.relpath(path, folder)] = (stat.st_size, stat.st_mtime_ns)
    return found


def test_train_then_evaluate_scripts(tmp_path):
    data_dir = testing_utils.write_tiny_captioned_images(str(tmp_path / "data"))
    workdir = str(tmp_path / "run")
    cache = tmp_path / "cache"
    data_flags = (
        "--preset=tiny",
        "--dataset=csv",
        f"--data_dir={data_dir}",
        f"--cache_dir={cache}",
        "--seed=3",
    )
    extract = _run("trainers.extract_features", *data_flags, "--splits=train,dev")
    assert extract.returncode == 0, extract.stderr[-3000:]
    extracted = _files(cache)
    assert any(name.endswith(".npy") for name in extracted), extracted
    train = _run(
        "trainers.train",
        *data_flags,
        f"--workdir={workdir}",
        "--embed_dim=12",
        "--margin=0.1",
        "--epochs=1",
    )
    assert train.returncode == 0, train.stderr[-3000:]
    # Same flags, same cache key: training read the extracted train and dev
    # features and rewrote none of them (it added only the test split's).
    after = _files(cache)
    assert {name: after.get(name) for name in extracted} == extracted
    manifests = [name for name in after if name.endswith("manifest.json")]
    assert len(manifests) == 3, manifests  # train, dev (extracted), test
    assert "rsum" in train.stdout
    with open(os.path.join(workdir, "config.json")) as f:
        saved = json.load(f)
    assert saved["model"]["embed_dim"] == 12
    assert saved["train"]["margin"] == 0.1
    assert saved["train"]["seed"] == 3

    os.remove(os.path.join(workdir, "metrics_test.json"))
    evaluate = _run("trainers.evaluate", f"--workdir={workdir}", "--split=test")
    assert evaluate.returncode == 0, evaluate.stderr[-3000:]
    assert "i2t" in evaluate.stdout and "t2i" in evaluate.stdout
    with open(os.path.join(workdir, "metrics_test.json")) as f:
        assert "rsum" in json.load(f)


def test_bad_flag_value_fails_with_message(tmp_path):
    result = _run("trainers.train", "--preset=nope", f"--workdir={tmp_path}")
    assert result.returncode != 0
    assert "preset" in result.stderr
