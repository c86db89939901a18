"""Tests of the resumable shard store (vse_tf.shard_store)."""

import hashlib
import io
import json
import os

import numpy as np
import pytest

from vse_tf import shard_store


def _store(tmp_path, **kwargs):
    return shard_store.ShardStore(str(tmp_path / "store"), **kwargs)


def test_written_shard_is_read_back_with_its_record_and_fields(tmp_path):
    store = _store(tmp_path)
    array = np.arange(6, dtype=np.float32).reshape(3, 2)
    entry = store.write_shard(4, array, record={"items": ["a", "b", "c"]}, start=12)
    # The entry names the files and holds the sha256 of their bytes.
    with open(os.path.join(store.folder, "shard-00004.npy"), "rb") as f:
        npy = f.read()
    with open(os.path.join(store.folder, "shard-00004.json"), "rb") as f:
        record = f.read()
    assert entry == {
        "shard": 4,
        "start": 12,
        "rows": 3,
        "file": "shard-00004.npy",
        "sha256": hashlib.sha256(npy).hexdigest(),
        "record_file": "shard-00004.json",
        "record_sha256": hashlib.sha256(record).hexdigest(),
    }
    np.testing.assert_array_equal(np.load(io.BytesIO(npy)), array)
    shard = store.read_shard(entry, dtype=np.float32, row_shape=(2,))
    np.testing.assert_array_equal(shard.array, array)
    assert shard.record == {"items": ["a", "b", "c"]} and shard.entry is entry


def test_manifest_round_trip_and_other_location(tmp_path):
    store = _store(tmp_path, manifest_path=str(tmp_path / "build.json"))
    assert store.read_manifest() is None
    entry = store.write_shard(0, np.zeros([2, 1], np.float16))
    store.write_manifest({"what": "x", "shards": [entry]})
    with open(tmp_path / "build.json") as f:
        assert json.load(f) == {"what": "x", "shards": [entry]}
    assert store.read_manifest() == {"what": "x", "shards": [entry]}
    assert not os.path.exists(os.path.join(store.folder, "manifest.json"))


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '{"shards": 3}'])
def test_unusable_manifest_reads_as_absent(tmp_path, text):
    store = _store(tmp_path)
    os.makedirs(store.folder)
    with open(store.manifest_path, "w") as f:
        f.write(text)
    assert store.read_manifest() is None


def _damage_flip(path):
    data = bytearray(open(path, "rb").read())
    data[-1] ^= 0x01
    open(path, "wb").write(bytes(data))


def _damage_truncate(path):
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])


@pytest.mark.parametrize("damage", [_damage_flip, _damage_truncate, os.remove])
@pytest.mark.parametrize("which", ["file", "record_file"])
def test_damaged_files_fail_verification(tmp_path, damage, which):
    store = _store(tmp_path)
    entry = store.write_shard(0, np.ones([2, 3], np.float32), record=["x", "y"])
    damage(os.path.join(store.folder, entry[which]))
    assert store.read_shard(entry) is None


def test_wrong_dtype_rows_or_row_shape_fail_verification(tmp_path):
    store = _store(tmp_path)
    entry = store.write_shard(0, np.ones([2, 3], np.float32))
    assert store.read_shard(entry, dtype=np.float16) is None
    assert store.read_shard(entry, row_shape=(4,)) is None
    assert store.read_shard(dict(entry, rows=3)) is None
    assert store.read_shard(entry, dtype=np.float32, row_shape=(3,)) is not None


def test_read_complete_keeps_verified_well_formed_entries_once(tmp_path):
    store = _store(tmp_path)
    entries = [store.write_shard(s, np.full([1, 2], s, np.float32)) for s in range(4)]
    _damage_flip(os.path.join(store.folder, entries[2]["file"]))
    complete = store.read_complete(
        [entries[0], entries[0], entries[1], entries[2], entries[3], {"x": 1}, 7],
        is_valid=lambda entry: entry["shard"] != 3,
        dtype=np.float32,
        row_shape=(2,),
    )
    # 0 once (its repeat dropped), 1; 2 is damaged, 3 refused by is_valid.
    assert sorted(complete) == [0, 1]
    np.testing.assert_array_equal(complete[1].array, [[1.0, 1.0]])


def test_stale_temporaries_are_removed_but_not_fresh_ones(tmp_path):
    store = _store(tmp_path)
    store.write_shard(0, np.zeros([1, 1], np.float32))
    old = os.path.join(store.folder, ".tmp-old.npy")
    new = os.path.join(store.folder, ".tmp-new.npy")
    for path in (old, new):
        open(path, "wb").close()
    os.utime(old, (1000.0, 1000.0))
    store.remove_stale_temporaries(older_than=2000.0)
    assert sorted(os.listdir(store.folder)) == [".tmp-new.npy", "shard-00000.npy"]


def test_entries_left_beside_shards_are_gathered_and_removed(tmp_path):
    store = _store(tmp_path)
    entries = [store.write_shard(s, np.full([2, 1], s, np.float32)) for s in (2, 0)]
    for entry in entries:
        store.write_entry(entry)
    with open(os.path.join(store.folder, "shard-00001.entry.json"), "w") as f:
        f.write("{truncated")  # a damaged entry is left out, its shard redone
    assert store.read_entries() == [entries[1], entries[0]]  # by file name
    store.remove_entries()
    assert store.read_entries() == []
    assert sorted(os.listdir(store.folder)) == ["shard-00000.npy", "shard-00002.npy"]


def test_a_store_on_a_url_file_system(tmp_path):
    """URLs go through tf.io.gfile; TensorFlow's ram:// stands in for gs://."""
    import tensorflow as tf

    folder = f"ram://{tmp_path.name}/store"
    store = shard_store.ShardStore(folder)
    entry = store.write_shard(0, np.eye(2, dtype=np.float32), record={"a": 1})
    store.write_entry(entry)
    store.write_manifest({"shards": [entry]})
    assert sorted(tf.io.gfile.listdir(folder)) == [
        "manifest.json",
        "shard-00000.entry.json",
        "shard-00000.json",
        "shard-00000.npy",
    ]
    assert store.read_manifest() == {"shards": [entry]}
    assert store.read_entries() == [entry]
    shard = store.read_shard(entry, dtype=np.float32, row_shape=(2,))
    np.testing.assert_array_equal(shard.array, np.eye(2))
    assert shard.record == {"a": 1}
    with tf.io.gfile.GFile(f"{folder}/shard-00000.npy", "wb") as f:
        f.write(b"overwritten")
    assert store.read_shard(entry) is None


def test_an_entry_both_in_the_manifest_and_beside_its_shard_counts_once(
    tmp_path, caplog
):
    store = _store(tmp_path)
    entry = store.write_entry(store.write_shard(3, np.ones([1, 1], np.float32)))
    with caplog.at_level("WARNING"):
        complete = store.read_complete([entry] + store.read_entries())
    assert list(complete) == [3] and "Malformed" not in caplog.text


def test_write_entry_names_the_files_on_disk(tmp_path):
    """Two overlapping attempts at a shard: the entry follows the winner."""
    store = _store(tmp_path)
    first = store.write_shard(0, np.zeros([2, 1], np.float32))
    store.write_shard(0, np.ones([2, 1], np.float32))  # the other attempt won
    written = store.write_entry(first)
    np.testing.assert_array_equal(store.read_shard(written).array, np.ones([2, 1]))
    assert store.read_entries() == [written]
