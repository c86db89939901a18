"""The absl entry points, run as a user runs them (subprocesses)."""

import json
import os

from tests import testing_utils


def _run(*args):
    return testing_utils.run_python("-m", *args)


def test_train_then_evaluate_scripts(tmp_path):
    data_dir = testing_utils.write_tiny_captioned_images(str(tmp_path / "data"))
    workdir = str(tmp_path / "run")
    train = _run(
        "trainers.train",
        "--preset=tiny",
        "--dataset=csv",
        f"--data_dir={data_dir}",
        f"--workdir={workdir}",
        f"--cache_dir={tmp_path / 'cache'}",
        "--embed_dim=12",
        "--margin=0.1",
        "--epochs=1",
        "--seed=3",
    )
    assert train.returncode == 0, train.stderr[-3000:]
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
