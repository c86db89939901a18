"""The sharded feature cache survives kill -9, corrupt shards and corrupt images."""

import hashlib
import json
import os
import select
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import tensorflow as tf

from tests import testing_utils
from vse_tf.features import cache as feature_cache
from vse_tf.features import extraction as feature_extraction

SHARD_SIZE = 8
NUM_IMAGES = 40  # 5 shards
SETTINGS = dict(
    image_feature="pool5",
    image_size=32,
    weights="none",
    dtype="float32",
    batch_size=4,
    shard_size=SHARD_SIZE,
)
# Index -> how the image is broken; one in the first shard, others later.
BROKEN = {
    3: "truncated JPEG",
    12: "zero-byte file",
    20: "text file named .jpg",
    29: "truncated PNG",
    33: "missing file",
}


def _write_images(folder: str) -> list[str]:
    """``NUM_IMAGES`` small images; those in `BROKEN` are broken as described."""
    os.makedirs(folder)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(NUM_IMAGES):
        pixels = rng.integers(0, 256, [24 + i % 5, 40, 3]).astype(np.uint8)
        jpeg = tf.io.encode_jpeg(pixels).numpy()
        png = tf.io.encode_png(pixels).numpy()
        kind = BROKEN.get(i)
        path = os.path.join(folder, f"img_{i:03d}.{'png' if i % 2 else 'jpg'}")
        data = jpeg if path.endswith(".jpg") else png
        if kind == "truncated JPEG":
            path, data = path[:-4] + ".jpg", jpeg[: len(jpeg) // 2]
        elif kind == "truncated PNG":
            path, data = path[:-4] + ".png", png[: len(png) // 2]
        elif kind == "zero-byte file":
            data = b""
        elif kind == "text file named .jpg":
            path, data = path[:-4] + ".jpg", b"not an image\n"
        if kind != "missing file":
            with open(path, "wb") as f:
                f.write(data)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def image_paths(tmp_path_factory):
    return _write_images(str(tmp_path_factory.mktemp("images") / "images"))


@pytest.fixture(scope="module")
def reference(image_paths, tmp_path_factory):
    """An uninterrupted extraction."""
    cache = str(tmp_path_factory.mktemp("reference"))
    return feature_extraction.extract_features_with_report(
        image_paths, cache_dir=cache, verbose=0, **SETTINGS
    )


def _folder(cache: str, paths: list[str]) -> str:
    return feature_cache.cache_folder(
        SETTINGS["image_feature"],
        SETTINGS["image_size"],
        SETTINGS["weights"],
        paths,
        dtype=SETTINGS["dtype"],
        cache_dir=cache,
    )


def _manifest(report_or_folder) -> dict:
    folder = getattr(report_or_folder, "cache_folder", report_or_folder)
    with open(os.path.join(folder, feature_cache.MANIFEST_FILE)) as f:
        return json.load(f)


def test_corrupt_images_are_skipped_and_counted(reference, image_paths):
    assert reference.num_skipped == len(BROKEN)
    assert [s.index for s in reference.skipped] == sorted(BROKEN)
    assert [s.path for s in reference.skipped] == [
        os.path.abspath(image_paths[i]) for i in sorted(BROKEN)
    ]
    reasons = {s.index: s.reason for s in reference.skipped}
    assert reasons[33] == "no such file"
    assert reasons[12] == "empty (0 bytes)"
    assert reasons[20].startswith("not a JPEG, PNG, GIF or BMP image")
    assert reasons[3].startswith("truncated at byte ")
    assert reasons[29].startswith("truncated at byte ")
    assert all(reasons[i] for i in BROKEN)
    assert np.array_equal(np.flatnonzero(~reference.valid), sorted(BROKEN))
    assert not reference.features[~reference.valid].any()
    assert np.all(np.linalg.norm(reference.features[reference.valid], axis=1) > 0)
    np.testing.assert_array_equal(
        reference.valid_indices(), np.flatnonzero(reference.valid)
    )
    manifest = _manifest(reference)
    assert manifest["num_skipped"] == len(BROKEN)
    assert manifest["num_valid"] == NUM_IMAGES - len(BROKEN)
    assert sum(len(s["skipped"]) for s in manifest["shards"]) == len(BROKEN)
    # The good images' features do not depend on the broken ones around them.
    good = [p for i, p in enumerate(image_paths) if i not in BROKEN]
    alone = feature_extraction.extract_features_with_report(
        good,
        cache_dir=os.path.dirname(reference.cache_folder) + "-alone",
        verbose=0,
        **SETTINGS,
    )
    assert alone.num_skipped == 0
    np.testing.assert_allclose(
        alone.features, reference.features[reference.valid], rtol=1e-5, atol=1e-5
    )


_EXTRACT_SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    from vse_tf.features import cache as feature_cache
    from vse_tf.features import extraction as feature_extraction

    paths = json.loads(sys.argv[1])
    settings = json.loads(sys.argv[3])

    def on_shard(shard, num_shards):
        print(f"shard {shard} of {num_shards} done", flush=True)
        if shard == 0:
            time.sleep(600)  # killed here, with shard 1 not started

    feature_extraction.extract_features_with_report(
        paths, cache_dir=sys.argv[2], verbose=0, on_shard=on_shard, **settings
    )
    """
)


def _run_until_first_shard(paths, cache_dir, script_path):
    with open(script_path, "w") as f:
        f.write(_EXTRACT_SCRIPT)
    process = subprocess.Popen(
        [
            sys.executable,
            script_path,
            json.dumps(paths),
            cache_dir,
            json.dumps(SETTINGS),
        ],
        cwd=testing_utils.REPO_ROOT,
        env=dict(
            os.environ,
            TF_CPP_MIN_LOG_LEVEL="2",
            PYTHONPATH=testing_utils.REPO_ROOT,
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.time() + 180
        line = ""
        while not line.startswith("shard 0 "):
            ready, _, _ = select.select([process.stdout], [], [], 1.0)
            if ready:
                line = process.stdout.readline()
                if not line:  # exited before finishing a shard
                    break
            if time.time() > deadline or process.poll() is not None:
                break
        assert line.startswith("shard 0 of 5"), process.stderr.read()[-3000:]
        os.kill(process.pid, signal.SIGKILL)
        assert process.wait(timeout=60) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()
        process.stderr.close()


@pytest.mark.slow(reason="kills an extraction subprocess mid-shard")
def test_kill_9_then_rerun_computes_only_the_rest(
    image_paths, reference, tmp_path, caplog
):
    cache = str(tmp_path / "cache")
    _run_until_first_shard(image_paths, cache, str(tmp_path / "extract.py"))
    folder = _folder(cache, image_paths)
    killed = _manifest(folder)
    assert [s["shard"] for s in killed["shards"]] == [0] and not killed["complete"]
    first_shard = os.path.join(folder, "shard-00000.npy")
    stamp = os.stat(first_shard).st_mtime_ns
    # What a kill in the middle of writing leaves: a temporary file, and (were
    # writes not atomic) an unfinished next shard that no manifest entry names.
    with open(os.path.join(folder, ".tmp-half-written"), "wb") as f:
        f.write(b"\x93NUMPY half")
    with open(os.path.join(folder, "shard-00001.npy"), "wb") as f:
        f.write(b"\x93NUMPY\x01\x00garbage")

    computed = []
    with caplog.at_level("INFO"):
        resumed = feature_extraction.extract_features_with_report(
            image_paths,
            cache_dir=cache,
            verbose=0,
            on_shard=lambda shard, count: computed.append(shard),
            **SETTINGS,
        )
    assert computed == [1, 2, 3, 4]
    assert resumed.shards_reused == 1 and resumed.shards_computed == 4
    assert "1 of 5 shards complete, 4 to compute" in caplog.text
    assert os.stat(first_shard).st_mtime_ns == stamp  # read, not rewritten
    assert not [n for n in os.listdir(folder) if n.startswith(".tmp-")]
    # Bit-identical to the uninterrupted run, skipped images included.
    np.testing.assert_array_equal(resumed.features, reference.features)
    np.testing.assert_array_equal(resumed.valid, reference.valid)
    assert resumed.skipped == reference.skipped
    assert [s["sha256"] for s in _manifest(resumed)["shards"]] == [
        s["sha256"] for s in _manifest(reference)["shards"]
    ]
    # A third run computes nothing.
    again = feature_extraction.extract_features_with_report(
        image_paths, cache_dir=cache, verbose=0, **SETTINGS
    )
    assert again.shards_computed == 0
    np.testing.assert_array_equal(again.features, reference.features)


def _extracted_copy(image_paths, tmp_path):
    cache = str(tmp_path / "cache")
    report = feature_extraction.extract_features_with_report(
        image_paths, cache_dir=cache, verbose=0, **SETTINGS
    )
    return cache, report


def _truncate(path):
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])


def _flip_bytes(path):
    with open(path, "r+b") as f:
        f.seek(-8, os.SEEK_END)  # inside the float data: still a valid .npy
        tail = f.read(8)
        f.seek(-8, os.SEEK_END)
        f.write(bytes(b ^ 0xFF for b in tail))


@pytest.mark.parametrize("damage", [_truncate, _flip_bytes, os.remove])
def test_damaged_shard_is_recomputed_not_read(
    damage, image_paths, reference, tmp_path, caplog
):
    cache, _ = _extracted_copy(image_paths, tmp_path)
    damage(os.path.join(_folder(cache, image_paths), "shard-00002.npy"))
    computed = []
    with caplog.at_level("WARNING"):
        report = feature_extraction.extract_features_with_report(
            image_paths,
            cache_dir=cache,
            verbose=0,
            on_shard=lambda shard, count: computed.append(shard),
            **SETTINGS,
        )
    assert computed == [2]
    assert "shard-00002.npy" in caplog.text and "recomputing" in caplog.text
    np.testing.assert_array_equal(report.features, reference.features)
    assert report.skipped == reference.skipped
    assert _manifest(report)["complete"] is True


def test_shard_of_the_wrong_shape_is_recomputed(image_paths, reference, tmp_path):
    cache, first = _extracted_copy(image_paths, tmp_path)
    manifest = _manifest(first)
    entry = manifest["shards"][1]
    # A well-formed file whose checksum the manifest agrees with, one row short.
    wrong = np.ones([entry["rows"] - 1, 512], np.float32)
    path = os.path.join(first.cache_folder, entry["file"])
    np.save(path, wrong)
    with open(path, "rb") as f:
        entry["sha256"] = hashlib.sha256(f.read()).hexdigest()
    with open(first.manifest_path, "w") as f:
        json.dump(manifest, f)
    report = feature_extraction.extract_features_with_report(
        image_paths, cache_dir=cache, verbose=0, **SETTINGS
    )
    assert report.shards_computed == 1
    np.testing.assert_array_equal(report.features, reference.features)


def _rewrite_manifest(path, change):
    with open(path) as f:
        manifest = json.load(f)
    manifest = change(manifest)
    with open(path, "w") as f:
        json.dump(manifest, f)


@pytest.mark.parametrize(
    "damage, recomputed",
    [
        (_truncate, 5),
        pytest.param(
            lambda path: _rewrite_manifest(path, lambda m: dict(m, shards="?")),
            5,
            marks=pytest.mark.slow(reason="another malformed manifest (3 s)"),
        ),
        pytest.param(
            lambda path: _rewrite_manifest(path, lambda m: [m]),
            5,
            marks=pytest.mark.slow(reason="another malformed manifest (3 s)"),
        ),
        # A shard entry claiming another shard's images.
        (
            lambda path: _rewrite_manifest(
                path,
                lambda m: dict(
                    m, shards=[dict(m["shards"][1], start=0)] + m["shards"][2:]
                ),
            ),
            2,
        ),
    ],
)
def test_damaged_manifest_is_not_trusted(
    damage, recomputed, image_paths, reference, tmp_path
):
    cache, first = _extracted_copy(image_paths, tmp_path)
    damage(first.manifest_path)
    report = feature_extraction.extract_features_with_report(
        image_paths, cache_dir=cache, verbose=0, **SETTINGS
    )
    assert report.shards_computed == recomputed
    np.testing.assert_array_equal(report.features, reference.features)
    assert report.skipped == reference.skipped
    assert _manifest(report)["complete"] is True
