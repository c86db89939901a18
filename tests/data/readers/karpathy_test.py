"""read_karpathy: splits (train = train + restval), malformed records, JSON."""

from __future__ import annotations

import pytest

from tests.data.readers.helpers import assert_error, karpathy_json, write
from vse_tf.data import readers
from vse_tf.data.split import DataError


def test_karpathy_splits(tmp_path):
    path = karpathy_json(tmp_path)
    root = tmp_path / "imgs"
    train = readers.read_karpathy(path, "train", root)
    assert train.image_paths == [
        str((root / "train2014" / "t1.jpg").resolve()),
        str((root / "val2014" / "r1.jpg").resolve()),
    ]
    assert train.captions == ["train one", "train two", "restval one", "restval two"]
    assert train.caption_image_index.tolist() == [0, 0, 1, 1]
    dev = readers.read_karpathy(path, "dev", root)
    assert dev.name == "dev" and dev.captions == ["val one"]
    test = readers.read_karpathy(path, "test", root)
    assert test.image_paths == [str((root / "x1.jpg").resolve())]
    with pytest.raises(ValueError, match="unknown Karpathy split"):
        readers.read_karpathy(path, "restval", root)


@pytest.mark.parametrize(
    "image, needle",
    [
        ({"split": "train", "sentences": [{"raw": "x"}]}, "'filename'"),
        ({"filename": "a.jpg", "sentences": [{"raw": "x"}]}, "'split'"),
        ({"filename": "a.jpg", "split": "train"}, "'sentences'"),
        ({"filename": "a.jpg", "split": "train", "sentences": [{}]}, "'raw'"),
        ({"filename": "a.jpg", "split": "train", "sentences": []}, "no sentences"),
        ({"filename": "a.jpg", "split": "train", "sentences": [{"raw": " "}]}, "empty"),
        ({"filename": "a.jpg", "split": "holdout", "sentences": []}, "unknown split"),
    ],
)
def test_karpathy_malformed(tmp_path, image, needle):
    path = karpathy_json(tmp_path, [image])
    with pytest.raises(DataError, match=needle) as excinfo:
        readers.read_karpathy(path, "train", tmp_path)
    assert_error(excinfo, "dataset_coco.json", None)


def test_karpathy_invalid_json_names_line(tmp_path):
    path = write(tmp_path / "dataset_f8k.json", '{"images": [\n  {,\n]}')
    with pytest.raises(DataError, match="invalid JSON") as excinfo:
        readers.read_karpathy(path, "train", tmp_path)
    assert_error(excinfo, "dataset_f8k.json", 2)
