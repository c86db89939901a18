"""read_precomp: one feature row per image or per caption, dev/val files."""

from __future__ import annotations

import numpy as np
import pytest

from tests.data.readers.helpers import assert_error, write
from vse_tf.data import readers
from vse_tf.data.split import DataError


def test_precomp_one_row_per_image(tmp_path):
    features = np.arange(12, dtype=np.float64).reshape(3, 4)
    np.save(tmp_path / "test_ims.npy", features)
    write(tmp_path / "test_caps.txt", "".join(f"cap {i}\n" for i in range(6)))
    split = readers.read_precomp(tmp_path, "test")
    assert split.image_paths == ["test:0", "test:1", "test:2"]
    assert split.features.dtype == np.float32
    np.testing.assert_array_equal(split.features, features)
    assert split.caption_image_index.tolist() == [0, 0, 1, 1, 2, 2]
    assert split.captions[5] == "cap 5"


def test_precomp_per_caption_rows_dedupe(tmp_path):
    base = np.arange(2 * 3, dtype=np.float32).reshape(2, 3)
    np.save(tmp_path / "val_ims.npy", np.repeat(base, 5, axis=0))  # 10 rows
    write(tmp_path / "val_caps.txt", "".join(f"c{i}\n" for i in range(10)))
    split = readers.read_precomp(tmp_path, "dev")
    assert split.name == "dev"
    assert split.image_paths == ["dev:0", "dev:1"]
    np.testing.assert_array_equal(split.features, base)
    assert split.captions_per_image() == 5
    with pytest.raises(DataError, match="captions_per_image=3"):
        readers.read_precomp(tmp_path, "dev", captions_per_image=3)
    two = readers.read_precomp(tmp_path, "dev", captions_per_image=2)
    assert two.num_images == 5


def test_precomp_prefers_dev_files(tmp_path):
    np.save(tmp_path / "dev_ims.npy", np.zeros((1, 2)))
    write(tmp_path / "dev_caps.txt", "a\nb\n")
    np.save(tmp_path / "val_ims.npy", np.zeros((1, 2)))
    write(tmp_path / "val_caps.txt", "c\n")
    assert readers.read_precomp(tmp_path, "dev").captions == ["a", "b"]


def test_precomp_malformed(tmp_path):
    np.save(tmp_path / "train_ims.npy", np.zeros((4, 2)))
    write(tmp_path / "train_caps.txt", "a\nb\n\nc\nd\ne\n")
    with pytest.raises(DataError, match="empty caption") as excinfo:
        readers.read_precomp(tmp_path, "train")
    assert_error(excinfo, "train_caps.txt", 3)
    write(tmp_path / "train_caps.txt", "a\nb\nc\nd\ne\nf\n")
    with pytest.raises(DataError, match="do not divide"):
        readers.read_precomp(tmp_path, "train")
    with pytest.raises(DataError, match="test_caps.txt"):
        readers.read_precomp(tmp_path, "test")
