"""Growing an index: appended rows, duplicates by content, model check, kills."""

from __future__ import annotations

import csv
import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from tests import testing_utils
from vse_tf import errors, io_utils
from vse_tf.retrieval import encoders, index_add, index_build, index_lib


class _Stop(Exception):
    pass


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_export):
    folder = os.path.join(tiny_export.data_dir, "images")
    names = sorted(os.listdir(folder))
    root = tmp_path_factory.mktemp("add")
    old, new = root / "old", root / "new"
    old.mkdir()
    new.mkdir()
    # The tiny data set repeats some pictures; here every file is distinct
    # (one pixel marks it), so the only duplicate is the copy made below.
    for number, name in enumerate(names):
        target = (old if number < 24 else new) / name
        _write_marked(os.path.join(folder, name), str(target), number)
    # The same photo under another name, and a file that is no image.
    shutil.copy(old / names[0], new / "copy-of-first.png")
    (new / "notes.txt").write_text("not an image\n")
    encoder = encoders.SavedModelEncoder(tiny_export.export_dir)
    # Everything at once, for comparison: old rows, then the new ones.
    everything = index_build.build_image_index(
        None,
        [str(old / n) for n in names[:24]] + [str(new / n) for n in names[24:]],
        str(root / "everything"),
        dtype="float32",
        batch_size=4,
        encoder=encoder,
        verbose=0,
    )
    old_index = index_build.build_image_index(
        tiny_export.export_dir,
        str(old),
        str(root / "old_index"),
        dtype="float32",
        batch_size=4,
        shard_size=8,
        verbose=0,
    )
    assert old_index.manifest["model"]["path"] == tiny_export.export_dir
    with open(os.path.join(tiny_export.data_dir, "captions.csv")) as f:
        captions = [row["caption"] for row in csv.DictReader(f)]
    return {
        "export_dir": tiny_export.export_dir,
        "encoder": encoder,
        "old": str(old),
        "new": str(new),
        "num_old": 24,
        "num_new": len(names) - 24,
        "everything": everything,
        "old_index": str(root / "old_index"),
        "captions": captions,
    }


def _write_marked(source: str, target: str, number: int) -> None:
    pixels = tf.io.decode_png(tf.io.read_file(source), channels=3).numpy()
    pixels[0, 0] = [number, 255 - number, 7]
    tf.io.write_file(target, tf.io.encode_png(pixels))


def _build_old(setup, output):
    """The index of the old photos (built once, by the model's path), copied."""
    shutil.copytree(setup["old_index"], output)
    return index_lib.load_index(str(output))


def test_add_appends_only_the_new_images(setup, tmp_path):
    output = tmp_path / "idx"
    old = _build_old(setup, output)
    old_rows = np.array(old.embeddings)
    encoded = []
    report = index_add.add_to_index(
        str(output),
        setup["new"],
        batch_size=4,
        shard_size=8,
        verbose=0,
        on_shard=lambda shard, done: encoded.append(done),
    )
    num_old, num_new = setup["num_old"], setup["num_new"]
    # Only the new inputs were encoded (the new photos + the text file, in
    # shards of 8), never the 24 old ones; the copy was not encoded.
    assert encoded == [*range(8, num_new + 1, 8), num_new + 1]
    assert (report.added, report.duplicates) == (num_new, 1)
    assert [s["item"] for s in report.skipped] == [
        os.path.join(setup["new"], "notes.txt")
    ]
    index = index_lib.load_index(str(output))
    assert report.index.items == index.items
    assert len(index) == num_old + num_new
    # Old rows unchanged, every old id the same; new rows after them.
    np.testing.assert_array_equal(index.embeddings[:num_old], old_rows)
    assert index.items[:num_old] == old.items
    everything = setup["everything"]
    assert index.items == everything.items
    np.testing.assert_allclose(index.embeddings, everything.embeddings, atol=1e-5)
    manifest = index.manifest
    assert manifest["generation"] == 1 and manifest["count"] == num_old + num_new
    assert manifest["files"]["embeddings"] == "embeddings-g00001.npy"
    assert [s["item"] for s in manifest["skipped"]] == [
        os.path.join(setup["new"], "notes.txt")
    ]
    assert manifest["additions"][0]["count"] == num_new
    # The previous generation and the add's own build are gone.
    assert sorted(os.listdir(output)) == [
        "embeddings-g00001.npy",
        "hashes-g00001.txt",
        "items-g00001.txt",
        "manifest.json",
    ]
    hashes = (output / "hashes-g00001.txt").read_text().split()
    assert hashes == [index_add.content_hash("image", item) for item in index.items]

    # Adding the same folder again adds nothing and says so.
    again = index_add.add_to_index(
        str(output), setup["new"], verbose=0, encoder=setup["encoder"]
    )
    assert (again.added, again.duplicates) == (0, num_new + 1)
    assert len(again.skipped) == 1  # the text file, again
    assert index_lib.read_manifest(str(output))["generation"] == 1


def test_a_kill_mid_add_leaves_the_old_index_and_the_rerun_resumes(setup, tmp_path):
    output = tmp_path / "idx"
    _build_old(setup, output)
    before = index_lib.read_manifest(str(output))

    def stop_after_first(shard, done):
        raise _Stop

    with pytest.raises(_Stop):
        index_add.add_to_index(
            str(output),
            setup["new"],
            batch_size=4,
            shard_size=8,
            verbose=0,
            on_shard=stop_after_first,
            encoder=setup["encoder"],
        )
    index = index_lib.load_index(str(output))
    assert index.manifest == before and len(index) == setup["num_old"]
    assert os.path.isdir(output / index_add.ADD_DIR)

    encoded = []
    report = index_add.add_to_index(
        str(output),
        setup["new"],
        batch_size=4,
        shard_size=8,
        verbose=0,
        on_shard=lambda shard, done: encoded.append(shard),
        encoder=setup["encoder"],
    )
    assert encoded == [1, 2]  # shard 0 (of 0-2) came from the killed run
    assert report.added == setup["num_new"]
    np.testing.assert_allclose(
        report.index.embeddings, setup["everything"].embeddings, atol=1e-5
    )


def test_a_kill_before_the_manifest_swap_leaves_the_old_index(
    setup, tmp_path, monkeypatch
):
    output = tmp_path / "idx"
    _build_old(setup, output)
    before = index_lib.read_manifest(str(output))
    real = io_utils.atomic_write_json

    def crash_on_manifest(path, value, **kwargs):
        if os.path.basename(path) == index_lib.MANIFEST_FILE and value.get(
            "generation"
        ):
            raise _Stop
        return real(path, value, **kwargs)

    monkeypatch.setattr(io_utils, "atomic_write_json", crash_on_manifest)
    with pytest.raises(_Stop):
        index_add.add_to_index(
            str(output), setup["new"], verbose=0, encoder=setup["encoder"]
        )
    index = index_lib.load_index(str(output))
    assert index.manifest == before and len(index) == setup["num_old"]
    monkeypatch.setattr(io_utils, "atomic_write_json", real)
    encoded = []
    report = index_add.add_to_index(
        str(output),
        setup["new"],
        verbose=0,
        on_shard=lambda shard, done: encoded.append(shard),
        encoder=setup["encoder"],
    )
    assert encoded == []  # the finished add build was reused, not encoded again
    assert report.added == setup["num_new"]
    assert len(index_lib.load_index(str(output))) == setup["num_old"] + setup["num_new"]


class _OtherModel:
    """The tiny model's encoder with other outputs: a different model."""

    def __init__(self, encoder, describe_sha=None, shift=0.0):
        self._encoder, self._sha, self._shift = encoder, describe_sha, shift

    def encode_text(self, sentences):
        rows = self._encoder.encode_text(sentences)
        return np.roll(rows, 1, axis=1) if self._shift else rows

    def encode_images(self, images):
        return self._encoder.encode_images(images)

    def describe(self):
        description = dict(self._encoder.describe())
        if self._sha:
            description["sha256"] = self._sha
        return description


def test_another_model_is_refused_and_a_re_export_accepted(setup, tmp_path):
    output = tmp_path / "idx"
    _build_old(setup, output)
    before = index_lib.read_manifest(str(output))
    fingerprint = before["fingerprint"]
    assert fingerprint["probe"] == encoders.FINGERPRINT_PROBE
    assert len(fingerprint["text"]) == before["dim"]
    other = _OtherModel(setup["encoder"], shift=1.0)
    with pytest.raises(errors.UserError, match="built with another model"):
        index_add.add_to_index(str(output), setup["new"], encoder=other, verbose=0)
    assert index_lib.read_manifest(str(output)) == before
    # The same weights exported again (another graph file hash): same model.
    again = _OtherModel(setup["encoder"], describe_sha="0" * 64)
    report = index_add.add_to_index(str(output), setup["new"], encoder=again, verbose=0)
    assert report.added == setup["num_new"]


def test_an_index_without_fingerprint_is_checked_by_its_model_hash(setup, tmp_path):
    output = tmp_path / "idx"
    _build_old(setup, output)
    manifest = index_lib.read_manifest(str(output))
    del manifest["fingerprint"]  # as an index from before fingerprints
    (output / "manifest.json").write_text(json.dumps(manifest))
    other = _OtherModel(setup["encoder"], describe_sha="f" * 64)
    with pytest.raises(errors.UserError, match="built with another model"):
        index_add.add_to_index(str(output), setup["new"], encoder=other, verbose=0)
    report = index_add.add_to_index(
        str(output), setup["new"], verbose=0, encoder=setup["encoder"]
    )
    assert report.added == setup["num_new"]


def test_caption_index_grows_by_new_sentences(setup, tmp_path):
    output = tmp_path / "captions"
    captions = setup["captions"]
    first, rest = captions[:30], captions[30:50]
    index_build.build_caption_index(
        None,
        first,
        str(output),
        dtype="float32",
        encoder=setup["encoder"],
        verbose=0,
    )
    report = index_add.add_to_index(
        str(output), rest + first[:3], verbose=0, encoder=setup["encoder"]
    )
    new = list(dict.fromkeys(rest))  # repeated sentences are one
    assert report.added == len([c for c in new if c not in first])
    index = index_lib.load_index(str(output))
    assert index.items[:30] == first and index.kind == "caption"
    expected = setup["encoder"].encode_text(index.items[30:])
    np.testing.assert_allclose(index.embeddings[30:], expected, atol=1e-5)


def test_all_new_files_unreadable_adds_nothing(setup, tmp_path):
    output = tmp_path / "idx"
    old = _build_old(setup, output)
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "a.jpg").write_bytes(b"\xff\xd8\xff not really")
    report = index_add.add_to_index(
        str(output), str(junk), verbose=0, encoder=setup["encoder"]
    )
    assert (report.added, len(report.skipped)) == (0, 1)
    assert "truncated" in report.skipped[0]["error"]
    assert index_lib.read_manifest(str(output)) == old.manifest
    assert not os.path.exists(output / index_add.ADD_DIR)


def test_the_approximate_index_grows_with_it(setup, tmp_path):
    pytest.importorskip("faiss", reason='FAISS missing: pip install "vse_tf[ann]"')
    from vse_tf.retrieval import ann_index

    output = tmp_path / "idx"
    _build_old(setup, output)
    ann_index.build_ann(str(output), encoding="flat", nlist=2, nprobe=2)
    report = index_add.add_to_index(
        str(output), setup["new"], verbose=0, encoder=setup["encoder"]
    )
    assert report.ann_extended
    index = ann_index.load_index(str(output))
    assert len(index) == setup["num_old"] + setup["num_new"]
    # The old shard is kept as it was; the new rows are a shard of their own.
    assert sorted(os.listdir(output / "ann")) == [
        "shard-00000.npy",
        "shard-00001.npy",
        "trained.npy",
    ]
    ann_manifest = json.loads((output / index.manifest["files"]["ann"]).read_text())
    assert [(s["start"], s["stop"]) for s in ann_manifest["shards"]] == [
        (0, setup["num_old"]),
        (setup["num_old"], len(index)),
    ]
    # Each new photo finds itself first, through the approximate index.
    for row in range(setup["num_old"], len(index)):
        scores, ids = index.search(np.asarray(index.embeddings[row : row + 1]), 1)
        assert ids[0, 0] == row
    assert not os.path.exists(output / "ann.json")  # the old generation's


@pytest.mark.slow(reason="runs vse-index --add as a subprocess")
def test_the_add_command(setup, tmp_path):
    output = tmp_path / "idx"
    _build_old(setup, output)

    def add(*flags):
        return testing_utils.run_python(
            "-m", "trainers.vse_index", "--add", *flags, timeout=300
        )

    result = add(f"--index={output}", f"--images={setup['new']}")
    assert result.returncode == 0, result.stderr[-3000:]
    total = setup["num_old"] + setup["num_new"]
    assert (
        f"Added {setup['num_new']} images to {output}: {total} now; "
        "1 already indexed (same content), 1 skipped:"
    ) in result.stdout
    assert "notes.txt: not a JPEG, PNG, GIF or BMP image" in result.stdout
    again = add(f"--index={output}", f"--images={setup['new']}")
    assert f"Added 0 images to {output}: {total} now" in again.stdout
    # Mistakes are one line, without a traceback.
    for flags, message in (
        ([f"--output={output}", f"--images={setup['new']}"], "--add --index=FOLDER"),
        ([f"--index={tmp_path}/none", f"--images={setup['new']}"], "no index in"),
    ):
        result = add(*flags)
        assert result.returncode != 0 and "Traceback" not in result.stderr
        assert message in result.stderr, result.stderr[-2000:]
