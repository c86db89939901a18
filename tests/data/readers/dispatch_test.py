"""read_split: each data set by name, and where it looks for files."""

from __future__ import annotations

import numpy as np
import pytest

from tests.data.readers.helpers import coco_dir, flickr_dir, karpathy_json, write
from vse_tf.data import readers
from vse_tf.data.split import DataError


def test_read_split_dispatch(tmp_path):
    root = flickr_dir(tmp_path, "token")
    assert readers.read_split("flickr8k", root, "dev").captions == ["A bird ."]

    kdir = tmp_path / "karpathy"
    kdir.mkdir()
    path = karpathy_json(kdir)
    by_dir = readers.read_split("karpathy", kdir, "test")
    assert by_dir.image_paths == [str((kdir / "x1.jpg").resolve())]
    (kdir / "images").mkdir()
    by_file = readers.read_split("Karpathy", path, "test")
    assert by_file.image_paths == [str((kdir / "images" / "x1.jpg").resolve())]
    custom = readers.read_split("karpathy", kdir, "test", image_root=tmp_path)
    assert custom.image_paths == [str((tmp_path / "x1.jpg").resolve())]

    coco = coco_dir(tmp_path)
    assert readers.read_split("coco", coco, "val").captions == ["seven"]

    pdir = tmp_path / "precomp"
    pdir.mkdir()
    np.save(pdir / "test_ims.npy", np.zeros((1, 2)))
    write(pdir / "test_caps.txt", "a\nb\n")
    assert readers.read_split("precomp", pdir, "test").features.shape == (1, 2)

    cdir = tmp_path / "csvdata"
    write(cdir / "captions.tsv", "image\tcaption\tsplit\na.jpg\thi\ttrain\n")
    assert readers.read_split("csv", cdir, "train").image_paths == [
        str((cdir / "a.jpg").resolve())
    ]
    (cdir / "images").mkdir()
    assert readers.read_split("csv", cdir / "captions.tsv", None).image_paths == [
        str((cdir / "images" / "a.jpg").resolve())
    ]


def test_read_split_errors(tmp_path):
    with pytest.raises(ValueError, match="flickr8k, karpathy, coco, precomp, csv"):
        readers.read_split("imagenet", tmp_path, "train")
    with pytest.raises(DataError, match="found 0"):
        readers.read_split("karpathy", tmp_path, "train")
    karpathy_json(tmp_path)
    write(tmp_path / "dataset_f30k.json", "{}")
    with pytest.raises(DataError, match="found 2"):
        readers.read_split("karpathy", tmp_path, "train")
    with pytest.raises(DataError, match="captions.csv"):
        readers.read_split("csv", tmp_path, "train")
