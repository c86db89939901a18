"""Training faults: kill -9 and resume, bad images and rows, unusable workdirs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests import testing_utils
from vse_tf import config as config_lib
from vse_tf import train_lib
from vse_tf import workdir as workdir_lib
from vse_tf.data import readers

TRAIN_SCRIPT = """
import os, sys
from vse_tf import config as config_lib, train_lib
root, workdir = sys.argv[1:3]
config = config_lib.override(
    config_lib.get_config("tiny"),
    dataset="csv",
    data_dir=os.path.join(root, "data"),
    cache_dir=os.path.join(root, "cache"),
    epochs=4,
    batch_size=4,
)
train_lib.train_and_evaluate(config, workdir, verbose=0)
print("DONE")
"""


def _start(root, workdir):
    return subprocess.Popen(
        [sys.executable, "-c", TRAIN_SCRIPT, root, workdir],
        cwd=testing_utils.REPO_ROOT,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _finish(process, timeout=300):
    out, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, out[-4000:]
    return out


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("faults"))
    testing_utils.write_tiny_captioned_images(os.path.join(root, "data"))
    return root


@pytest.mark.slow(reason="kills a training subprocess and resumes it")
@pytest.mark.parametrize("when", ["after_first_epoch", "early"])
def test_kill_9_then_rerun_ends_with_the_uninterrupted_weights(data_root, when):
    reference = os.path.join(data_root, "uninterrupted")
    if not os.path.exists(os.path.join(reference, "metrics_dev.json")):
        _finish(_start(data_root, reference))
    workdir = os.path.join(data_root, f"killed_{when}")
    process = _start(data_root, workdir)
    checkpoint_index = os.path.join(workdir, "checkpoints", "checkpoint")
    deadline = time.time() + 240
    if when == "after_first_epoch":
        # Killed while epoch 2 runs: the epoch-1 checkpoint exists.
        while not os.path.exists(checkpoint_index) and time.time() < deadline:
            assert process.poll() is None, process.communicate()[0][-3000:]
            time.sleep(0.05)
    else:
        # Killed during start-up (features, vocabulary, first steps).
        while not os.path.exists(os.path.join(workdir, "config.json")):
            assert time.time() < deadline and process.poll() is None
            time.sleep(0.05)
        time.sleep(1.0)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    assert not os.path.exists(os.path.join(workdir, "metrics_dev.json"))

    out = _finish(_start(data_root, workdir))
    assert "DONE" in out
    if when == "after_first_epoch":
        assert "Resuming from" in out
    got = testing_utils.last_checkpoint_values(workdir)
    want = testing_utils.last_checkpoint_values(reference)
    assert got.keys() == want.keys()
    for name in want:
        np.testing.assert_allclose(got[name], want[name], atol=1e-5, err_msg=name)
    with open(os.path.join(workdir, "metrics_dev.json")) as f:
        got_metrics = json.load(f)
    with open(os.path.join(reference, "metrics_dev.json")) as f:
        want_metrics = json.load(f)
    assert got_metrics["rsum"] == pytest.approx(want_metrics["rsum"])


def _config(root, **overrides):
    return config_lib.override(
        config_lib.get_config("tiny"),
        dataset="csv",
        data_dir=os.path.join(root, "data"),
        cache_dir=os.path.join(root, "cache"),
        **overrides,
    )


def _copy_data(data_root, tmp_path):
    root = str(tmp_path)
    shutil.copytree(os.path.join(data_root, "data"), os.path.join(root, "data"))
    return root


@pytest.mark.slow(reason="trains a tiny model over unreadable images (5 s)")
def test_unreadable_images_are_skipped_and_counted(data_root, tmp_path):
    root = _copy_data(data_root, tmp_path)
    images = os.path.join(root, "data", "images")
    # A truncated PNG in train, a text file in dev (see the CSV's split order).
    with open(os.path.join(images, "img_0003.png"), "r+b") as f:
        f.truncate(40)
    with open(os.path.join(images, "img_0026.png"), "wb") as f:
        f.write(b"this is not an image\n")
    workdir = str(tmp_path / "run")
    results = train_lib.train_and_evaluate(_config(root), workdir, verbose=0)
    assert np.isfinite(results["dev"]["rsum"])
    with open(os.path.join(workdir, "metrics_dev.json")) as f:
        metrics = json.load(f)
    assert metrics["skipped_images"] == {"train": 1, "dev": 1, "test": 0}
    with open(os.path.join(workdir, "metrics_test.json")) as f:
        assert json.load(f)["skipped_images"]["train"] == 1


@pytest.mark.slow(reason="trains a tiny model over bad caption rows (5 s)")
def test_bad_rows_stop_with_every_problem_or_are_skipped(data_root, tmp_path):
    root = _copy_data(data_root, tmp_path)
    table = os.path.join(root, "data", "captions.csv")
    with open(table) as f:
        lines = f.read().splitlines()
    # Line 3: empty caption; line 5: a missing image (both in train).
    lines[2] = "images/img_0000.png,   ,train"
    lines[4] = "images/nowhere.png,a red square,train"
    with open(table, "w") as f:
        f.write("\n".join(lines) + "\n")
    with pytest.raises(readers.DataError) as info:
        train_lib.train_and_evaluate(_config(root), str(tmp_path / "a"), verbose=0)
    message = str(info.value)
    assert "captions.csv:3" in message and "captions.csv:5" in message
    assert len(info.value.problems) == 2

    workdir = str(tmp_path / "b")
    train_lib.train_and_evaluate(
        _config(root, skip_bad_examples=True), workdir, verbose=0
    )
    with open(os.path.join(workdir, "metrics_dev.json")) as f:
        skipped = json.load(f)["skipped_train_examples"]
    assert sum(skipped.values()) == 2, skipped


def test_evaluation_refuses_images_without_five_captions(data_root, tmp_path):
    root = _copy_data(data_root, tmp_path)
    table = os.path.join(root, "data", "captions.csv")
    with open(table) as f:
        lines = f.read().splitlines()
    dev_rows = [i for i, line in enumerate(lines) if line.endswith(",dev")]
    del lines[dev_rows[0]]  # the first dev image now has 4 captions
    with open(table, "w") as f:
        f.write("\n".join(lines) + "\n")
    with pytest.raises(readers.DataError, match="caption"):
        train_lib.train_and_evaluate(_config(root), str(tmp_path / "w"), verbose=0)


def test_unwritable_workdir_fails_before_any_work(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(OSError, match="not writable"):
        workdir_lib.check_workdir(str(blocker / "run"))
    with pytest.raises(OSError, match="not writable"):
        train_lib.train_and_evaluate(
            config_lib.get_config("tiny"), str(blocker / "run"), verbose=0
        )


def test_nearly_full_disk_fails_fast(tmp_path, monkeypatch):
    usage = shutil.disk_usage(str(tmp_path))
    monkeypatch.setattr(
        workdir_lib.shutil,
        "disk_usage",
        lambda path: usage._replace(free=10 * 2**20),
    )
    with pytest.raises(OSError, match="only 10 MB free"):
        workdir_lib.check_workdir(str(tmp_path / "run"))


@pytest.mark.slow(reason="fine-tunes a tiny model over unreadable images (5 s)")
def test_fine_tuning_skips_unreadable_images_before_training(data_root, tmp_path):
    root = _copy_data(data_root, tmp_path)
    images = os.path.join(root, "data", "images")
    with open(os.path.join(images, "img_0005.png"), "r+b") as f:
        f.truncate(50)  # train
    with open(os.path.join(images, "img_0030.png"), "wb") as f:
        f.write(b"")  # dev
    workdir = str(tmp_path / "run")
    config = _config(root, fine_tune_from="block5", max_train_images=16, epochs=1)
    results = train_lib.train_and_evaluate(config, workdir, verbose=0)
    assert np.isfinite(results["dev"]["rsum"])
    with open(os.path.join(workdir, "metrics_dev.json")) as f:
        assert json.load(f)["skipped_images"] == {"train": 1, "dev": 1, "test": 0}
