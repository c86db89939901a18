"""A SavedModel export killed mid-write never leaves a partial version.

`export_saved_model` writes into ``.tmp-<version>-<pid>-<host>-<random>``
and renames it to the version number only when complete; the next export
deletes staging folders of dead processes, and TF Serving ignores them
(their names are not numbers).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from tests import testing_utils
from vse_tf import workdir as workdir_lib
from vse_tf.serving import loader, saved_model_lib


def _numbered(folder: str) -> list[str]:
    return sorted(n for n in os.listdir(folder) if n.isdigit())


def _staging(folder: str) -> list[str]:
    if not os.path.isdir(folder):
        return []
    return [
        n for n in os.listdir(folder) if n.startswith(saved_model_lib.STAGING_PREFIX)
    ]


@pytest.fixture(scope="module")
def workdir(tiny_export):
    return tiny_export.workdir


@pytest.mark.slow(reason="kills and reruns the export in subprocesses")
def test_kill_9_mid_write_then_rerun(workdir, tmp_path):
    base = str(tmp_path / "models")
    command = [
        sys.executable, "-m", "export.export_saved_model",
        f"--workdir={workdir}", f"--output_dir={base}",
    ]  # fmt: skip
    process = subprocess.Popen(
        command,
        cwd=testing_utils.REPO_ROOT,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        # Wait until the SavedModel is being written into the staging folder.
        deadline = time.time() + 300
        while time.time() < deadline and process.poll() is None:
            if any(
                os.path.isdir(os.path.join(base, name, "model"))
                for name in _staging(base)
            ):
                break
            time.sleep(0.002)
        assert process.poll() is None, "the export ended before it could be killed"
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait(timeout=60)  # reaped: its pid is no longer alive
    assert process.returncode == -signal.SIGKILL

    leftovers = _staging(base)
    assert _numbered(base) == [], "a killed export published a version"
    assert len(leftovers) == 1 and sorted(os.listdir(base)) == leftovers
    assert f"-{process.pid}-" in leftovers[0]
    assert saved_model_lib.next_version(base) == 1  # the leftover is ignored

    result = testing_utils.run_python(*command[1:])
    assert result.returncode == 0, result.stderr[-3000:]
    serving_files = ["batching_parameters.txt", "models.config"]
    assert sorted(os.listdir(base)) == ["1"] + serving_files, (
        "the stale staging folder remains"
    )

    version = os.path.join(base, "1")
    for name in ("saved_model.pb", "variables", "assets/vocab.txt"):
        assert os.path.exists(os.path.join(version, name)), name
    assert os.path.exists(os.path.join(version, saved_model_lib.WARMUP_FILE))
    loaded = loader.load_saved_model(version)
    _, model = workdir_lib.load_trained_model(workdir)
    sentences = ["a red square", "the blue stripe"]
    got = loaded.signatures["encode_text"](text=tf.constant(sentences))["embedding"]
    want = model.text_tower(tf.constant(sentences)).numpy()
    assert np.abs(got.numpy() - want).max() <= 1e-5


def test_only_staging_of_dead_local_exports_is_removed(tmp_path):
    base = tmp_path / "models"
    (base / "3").mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = saved_model_lib._host_tag()
    names = {
        "dead_here": f".tmp-4-{dead.pid}-{host}-abc123xy",
        "alive_here": f".tmp-4-{os.getpid()}-{host}-abc123xy",
        "other_host": f".tmp-4-{dead.pid}-some_other_host-abc123xy",
        "old_format": ".tmp-4-abc123xy",
    }
    for name in names.values():
        (base / name / "model").mkdir(parents=True)
    removed = saved_model_lib.remove_stale_staging(str(base))
    assert removed == [str(base / names["dead_here"])]
    left = sorted(os.listdir(base))
    assert left == sorted(["3"] + [n for k, n in names.items() if k != "dead_here"])
    assert saved_model_lib.next_version(str(base)) == 4
    assert saved_model_lib.remove_stale_staging(str(tmp_path / "missing")) == []
