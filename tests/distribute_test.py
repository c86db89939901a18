"""tf.distribute: N replicas train exactly like one device on the global batch.

Each case runs in fresh Python processes (logical CPU devices and
TF_CONFIG must be set before TensorFlow starts) and compares every variable
of the last checkpoint (model and optimizer state) with a one-device run.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile

import numpy as np
import pytest

from tests import testing_utils
from vse_tf import distribute

# Trains the tiny preset: python -c SCRIPT ROOT WORKDIR STRATEGY EPOCHS [CPUS]
TRAIN_SCRIPT = """
import sys
import tempfile
root, workdir, strategy, epochs = sys.argv[1:5]
cpus = int(sys.argv[5]) if len(sys.argv) > 5 else 1
from vse_tf import distribute
if cpus > 1:
    distribute.split_cpu(cpus)
from tests import testing_utils
from vse_tf import config as config_lib, train_lib
import os
config = config_lib.override(
    config_lib.get_config("tiny"),
    dataset="csv",
    data_dir=os.path.join(root, "data"),
    cache_dir=os.path.join(root, "cache"),
    strategy=strategy,
    epochs=int(epochs),
    batch_size=16,
    loss="sum_then_max",
    ema_decay=0.9,  # the weight average is in the compared checkpoint too
)
train_lib.train_and_evaluate(config, workdir, verbose=0)
print("DONE", workdir)
"""


def _train(root, workdir, strategy, epochs, cpus=1, env=None, timeout=300):
    return subprocess.Popen(
        [sys.executable, "-c", TRAIN_SCRIPT, root, workdir, strategy, str(epochs)]
        + ([str(cpus)] if cpus > 1 else []),
        cwd=testing_utils.REPO_ROOT,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **(env or {})),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _finish(process, timeout=300):
    try:
        out, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, _ = process.communicate()
        pytest.fail(f"training did not finish in {timeout}s:\n{out[-3000:]}")
    assert process.returncode == 0, out[-5000:]
    return out


def _assert_same_state(got, want):
    assert got.keys() == want.keys()
    trained = [k for k in want if "_trainable_variables" in k]
    assert trained, sorted(want)
    assert any(k.startswith("weight_average/") for k in want), sorted(want)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], atol=1e-5, err_msg=name)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("distribute"))
    testing_utils.write_tiny_captioned_images(os.path.join(root, "data"))
    return root


@pytest.fixture(scope="module")
def one_device(data_root):
    workdir = os.path.join(data_root, "one_device")
    _finish(_train(data_root, workdir, "one_device", 2))
    return testing_utils.last_checkpoint_values(workdir)


@pytest.mark.slow(reason="trains three times on two replicas")
def test_mirrored_two_replicas_equal_one_device_and_resume(data_root, one_device):
    workdir = os.path.join(data_root, "mirrored")
    # One epoch, then the same command with two: resumes under the strategy.
    _finish(_train(data_root, workdir, "mirrored", 1, cpus=2))
    out = _finish(_train(data_root, workdir, "mirrored", 2, cpus=2))
    assert "Resuming from" in out
    _assert_same_state(testing_utils.last_checkpoint_values(workdir), one_device)


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.mark.slow(reason="trains in two worker processes")
def test_multi_worker_two_processes_equal_one_device(data_root, one_device):
    workdir = os.path.join(data_root, "multi_worker")
    cluster = {"worker": [f"127.0.0.1:{port}" for port in _free_ports(2)]}
    workers = [
        _train(
            data_root,
            workdir,
            "multi_worker",
            2,
            env={
                "TF_CONFIG": json.dumps(
                    {"cluster": cluster, "task": {"type": "worker", "index": index}}
                )
            },
        )
        for index in range(2)
    ]
    try:
        outputs = [_finish(worker, timeout=400) for worker in workers]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
    assert all("DONE" in out for out in outputs)
    _assert_same_state(testing_utils.last_checkpoint_values(workdir), one_device)
    # Only the chief (worker 0) wrote the workdir.
    assert os.path.exists(os.path.join(workdir, "metrics_dev.json"))
    leftovers = [
        name
        for name in os.listdir(tempfile.gettempdir())
        if name.startswith("vse_tf_worker_")
    ]
    assert not leftovers, leftovers


def test_unknown_strategy_and_missing_tf_config(monkeypatch):
    with pytest.raises(ValueError, match="unknown strategy"):
        distribute.get_strategy("horovod")
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="TF_CONFIG"):
        distribute.get_strategy("multi_worker")


def test_non_chief_writes_to_a_scratch_folder(tmp_path):
    chief = distribute.WriteDir(str(tmp_path), chief=True)
    assert chief.path == str(tmp_path)
    other = distribute.WriteDir(str(tmp_path), chief=False)
    assert other.path != str(tmp_path) and os.path.isdir(other.path)
    other.cleanup()
    chief.cleanup()
    assert not os.path.exists(other.path) and os.path.isdir(str(tmp_path))
