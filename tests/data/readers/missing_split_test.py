"""MissingSplitError: raised exactly when the file that defines a split is absent."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tests.data.readers.helpers import coco_dir, flickr_dir, karpathy_json, write
from vse_tf.data import readers
from vse_tf.data.split import DataError, MissingSplitError


def _no_test_list(tmp_path: Path) -> Path:
    return flickr_dir(tmp_path)


def _no_caption_file(tmp_path: Path) -> Path:
    root = flickr_dir(tmp_path)
    (root / "Flickr8k.token.txt").unlink()
    write(root / "Flickr_8k.testImages.txt", "a.jpg\n")
    return root


def _no_image_folder(tmp_path: Path) -> Path:
    root = flickr_dir(tmp_path, image_dir="pictures")
    write(root / "Flickr_8k.testImages.txt", "a.jpg\n")
    return root


def _karpathy_without_test(tmp_path: Path) -> Path:
    karpathy_json(
        tmp_path,
        [{"filename": "a.jpg", "split": "train", "sentences": [{"raw": "a"}]}],
    )
    return tmp_path


def _precomp_without_features(tmp_path: Path) -> Path:
    write(tmp_path / "test_caps.txt", "a\n")
    return tmp_path


def _table(text: str) -> Callable[[Path], Path]:
    def make(tmp_path: Path) -> Path:
        write(tmp_path / "captions.csv", text)
        return tmp_path

    return make


# (data set, how its folder is made, whether the test split is "missing").
# The last column is also what `datasets.load_optional_split` decided from the
# message text ("not found" / "No such") before the type existed.
CASES = {
    "flickr8k_no_split_list": ("flickr8k", _no_test_list, True),
    "flickr8k_no_caption_file": ("flickr8k", _no_caption_file, False),
    "flickr8k_no_image_folder": ("flickr8k", _no_image_folder, False),
    "karpathy_no_json": ("karpathy", lambda p: p, False),
    "karpathy_no_test_records": ("karpathy", _karpathy_without_test, False),
    "coco_no_test_annotations": ("coco", coco_dir, False),
    "precomp_no_captions": ("precomp", lambda p: p, True),
    "precomp_no_features": ("precomp", _precomp_without_features, True),
    "csv_no_table": ("csv", lambda p: p, False),
    "csv_no_split_column": ("csv", _table("image,caption\na.jpg,x\n"), False),
    "csv_no_test_rows": ("csv", _table("image,caption,split\na.jpg,x,train\n"), False),
}


@pytest.mark.parametrize("case", list(CASES))
def test_missing_test_split_is_typed_as_the_message_said(tmp_path, case):
    dataset, make, missing = CASES[case]
    with pytest.raises(DataError) as excinfo:
        readers.read_split(dataset, make(tmp_path), "test")
    error = excinfo.value
    assert isinstance(error, MissingSplitError) is missing
    message = str(error)
    assert ("not found" in message or "No such" in message) is missing
    if missing:
        assert error.kinds == {"missing_file": 1}


def test_flickr8k_split_list_message_and_earlier_problems(tmp_path):
    root = flickr_dir(tmp_path)
    with pytest.raises(MissingSplitError) as excinfo:
        readers.read_flickr8k(root, "test")
    list_path = root / "Flickr_8k.testImages.txt"
    assert str(excinfo.value) == f"{list_path}: split list not found"
    assert excinfo.value.path == str(list_path) and excinfo.value.line is None
    write(root / "Flickr8k.token.txt", "a.jpg#0\t \nb.jpg#0\tok\n")
    with pytest.raises(MissingSplitError) as excinfo:
        readers.read_flickr8k(root, "test", skip_bad_examples=True)
    assert excinfo.value.kinds == {"empty_caption": 1, "missing_file": 1}
    assert "split list not found" in str(excinfo.value)


@pytest.mark.parametrize(
    "split, tag",
    [
        ("train", "train2014"),
        ("train2014", "train2014"),
        ("dev", "val2014"),
        ("val", "val2014"),
        ("val2014", "val2014"),
    ],
)
def test_coco_missing_annotation_of_a_split(tmp_path, split, tag):
    with pytest.raises(MissingSplitError) as excinfo:
        readers.read_coco(tmp_path, split, skip_bad_examples=True)
    path = tmp_path / "annotations" / f"captions_{tag}.json"
    assert str(excinfo.value) == f"{path}: annotation file not found"
    assert excinfo.value.kinds == {"missing_file": 1}


def test_coco_test_and_unknown_splits_are_not_missing_splits(tmp_path):
    root = coco_dir(tmp_path)
    with pytest.raises(DataError, match="no captions_test") as excinfo:
        readers.read_coco(root, "test")
    assert not isinstance(excinfo.value, MissingSplitError)
    with pytest.raises(ValueError, match="unknown COCO split"):
        readers.read_coco(root, "holdout")


def test_precomp_missing_files_of_a_split(tmp_path):
    with pytest.raises(MissingSplitError) as excinfo:
        readers.read_precomp(tmp_path, "dev")
    assert str(excinfo.value) == (
        f"{tmp_path / 'dev_caps.txt'}: caption file not found (tried dev, val)"
    )
    write(tmp_path / "val_caps.txt", "a\nb\n")
    with pytest.raises(MissingSplitError) as excinfo:
        readers.read_precomp(tmp_path, "dev")
    assert str(excinfo.value) == f"{tmp_path / 'val_ims.npy'}: feature file not found"
    np.save(tmp_path / "val_ims.npy", np.zeros((1, 2)))
    assert readers.read_precomp(tmp_path, "dev").captions == ["a", "b"]


def test_other_missing_files_are_plain_data_errors(tmp_path):
    """Files every split needs: their absence is not a missing split."""
    for read in (
        lambda: readers.read_karpathy(tmp_path / "dataset_coco.json", "test", tmp_path),
        lambda: readers.read_caption_csv(tmp_path / "captions.csv", tmp_path, "test"),
    ):
        with pytest.raises(DataError, match="file not found") as excinfo:
            read()
        assert not isinstance(excinfo.value, MissingSplitError)
        assert excinfo.value.kinds == {"missing_file": 1}
    write(tmp_path / "test_caps.txt", "a\n")
    np.save(tmp_path / "test_ims.npy", np.array(["a"]))
    with pytest.raises(DataError, match="not numbers") as excinfo:
        readers.read_precomp(tmp_path, "test")
    assert not isinstance(excinfo.value, MissingSplitError)


def test_missing_split_error_is_exported_and_survives_pickling(tmp_path):
    assert readers.MissingSplitError is MissingSplitError
    assert issubclass(MissingSplitError, DataError)
    write(tmp_path / "Flickr8k.token.txt", "a.jpg#0\tx\n")
    with pytest.raises(MissingSplitError) as excinfo:
        readers.read_flickr8k(tmp_path, "dev")
    again = pickle.loads(pickle.dumps(excinfo.value))
    assert type(again) is MissingSplitError
    assert str(again) == str(excinfo.value)
    assert again.problems == excinfo.value.problems
