"""read_coco: image order by id, split aliases, the test split, bad records."""

from __future__ import annotations

import json
import os

import pytest

from tests.data.readers.helpers import assert_error, coco_dir, write
from vse_tf.data import readers
from vse_tf.data.split import DataError


def test_coco_order_and_paths(tmp_path):
    root = coco_dir(tmp_path)
    split = readers.read_coco(root, "train")
    assert [os.path.basename(p) for p in split.image_paths] == [
        "c4.jpg",
        "c12.jpg",
        "c30.jpg",
    ]
    assert split.image_paths[0] == str((root / "train2014" / "c4.jpg").resolve())
    assert split.captions == ["four a", "four b", "twelve a", "twelve b", "thirty a"]
    assert split.caption_image_index.tolist() == [0, 0, 1, 1, 2]
    assert split.captions_per_image() is None
    assert readers.read_coco(root, "train2014").captions == split.captions


def test_coco_val_and_test(tmp_path):
    root = coco_dir(tmp_path)
    for name in ("dev", "val", "val2014"):
        split = readers.read_coco(root, name)
        assert split.image_paths == [str((root / "val2014" / "v7.jpg").resolve())]
        assert split.captions == ["seven"]
    with pytest.raises(DataError, match="captions_test"):
        readers.read_coco(root, "test")
    write(
        root / "annotations" / "captions_test2015.json",
        json.dumps(
            {
                "images": [{"id": 1, "file_name": "t1.jpg"}],
                "annotations": [{"image_id": 1, "caption": "test"}],
            }
        ),
    )
    test = readers.read_coco(root, "test")
    assert test.image_paths == [str((root / "test2015" / "t1.jpg").resolve())]
    with pytest.raises(ValueError, match="unknown COCO split"):
        readers.read_coco(root, "holdout")


@pytest.mark.parametrize(
    "data, needle",
    [
        ({"annotations": []}, "'images'"),
        ({"images": []}, "'annotations'"),
        ({"images": [{"file_name": "a.jpg"}], "annotations": []}, "'id'"),
        (
            {"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [{}]},
            "'image_id'",
        ),
        (
            {
                "images": [{"id": 1, "file_name": "a.jpg"}],
                "annotations": [{"image_id": 2, "caption": "x"}],
            },
            "unknown image id 2",
        ),
        (
            {
                "images": [
                    {"id": 1, "file_name": "a.jpg"},
                    {"id": 2, "file_name": "b"},
                ],
                "annotations": [{"image_id": 2, "caption": "x"}],
            },
            "a.jpg.*no captions",
        ),
    ],
)
def test_coco_malformed(tmp_path, data, needle):
    root = tmp_path / "coco"
    write(root / "annotations" / "captions_val2014.json", json.dumps(data))
    with pytest.raises(DataError, match=needle) as excinfo:
        readers.read_coco(root, "dev")
    assert_error(excinfo, "captions_val2014.json", None)
