"""The TFDS reader on mock COCO captions (tfds.testing.mock_data, no network)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import tensorflow as tf

tfds = pytest.importorskip(
    "tensorflow_datasets",
    reason='tensorflow_datasets missing: pip install "vse_tf[tfds]"',
)

from vse_tf import config as config_lib  # noqa: E402
from vse_tf.data import datasets  # noqa: E402
from vse_tf.data.readers import tfds_reader  # noqa: E402
from vse_tf.data.split import DataError  # noqa: E402


def _png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, [8, 10, 3], np.uint8)
    return tf.io.encode_png(pixels).numpy()


# Per TFDS split: (image id, captions). Ids are unique across splits, as in
# COCO; "val" holds an empty caption and a caption written twice.
SPLITS = {
    "train": [(1, ["a dog runs", "a brown dog"]), (2, ["two cats sleep"])],
    "restval": [(3, ["a man rides a bike", "a cyclist"])],
    "val": [(10, ["a red bus", "   ", "a red bus"]), (11, ["a kite in the sky"])],
    "test": [(20, ["a boat on a lake"])],
}


def _as_dataset(builder, split, decoders=None, read_config=None, **kwargs):
    """What ``builder.as_dataset`` gives with the image left encoded."""
    assert decoders is not None and "image" in decoders  # (SkipDecoding asked)
    rows = SPLITS[str(split)]

    def examples():
        for image_id, captions in rows:
            yield {
                "image": _png(image_id),
                "image/id": np.int64(image_id),
                "image/filename": f"COCO_{image_id:012d}.jpg".encode(),
                "captions": {
                    "text": np.array([c.encode() for c in captions]),
                    "id": np.arange(len(captions), dtype=np.int64),
                },
            }

    return tf.data.Dataset.from_generator(
        examples,
        output_signature={
            "image": tf.TensorSpec([], tf.string),
            "image/id": tf.TensorSpec([], tf.int64),
            "image/filename": tf.TensorSpec([], tf.string),
            "captions": {
                "text": tf.TensorSpec([None], tf.string),
                "id": tf.TensorSpec([None], tf.int64),
            },
        },
    )


@pytest.fixture
def mocked():
    with tfds.testing.mock_data(as_dataset_fn=_as_dataset):
        yield


def test_karpathy_splits_of_coco_captions(mocked, tmp_path):
    train = tfds_reader.read_tfds("coco_captions", "train", str(tmp_path))
    # train is TFDS train + restval, in that order.
    assert train.num_images == 3
    assert [os.path.basename(p) for p in train.image_paths] == [
        "1.png",
        "2.png",
        "3.png",
    ]
    assert train.captions == [
        "a dog runs",
        "a brown dog",
        "two cats sleep",
        "a man rides a bike",
        "a cyclist",
    ]
    assert train.caption_image_index.tolist() == [0, 0, 1, 2, 2]
    # The image files hold the bytes TFDS stored, untouched.
    with open(train.image_paths[2], "rb") as f:
        assert f.read() == _png(3)
    assert train.image_paths[2] == os.path.join(
        str(tmp_path), "coco_captions", "restval", "3.png"
    )
    test = tfds_reader.read_tfds("coco_captions", "test", str(tmp_path))
    assert test.captions == ["a boat on a lake"]


def test_bad_captions_are_reported_as_by_every_reader(mocked, tmp_path):
    with pytest.raises(DataError) as caught:
        tfds_reader.read_tfds("coco_captions", "dev", str(tmp_path))
    message = str(caught.value)
    assert "tfds:coco_captions/val" in message
    assert "[0].captions[1]: empty caption" in message
    dev = tfds_reader.read_tfds(
        "coco_captions", "dev", str(tmp_path), skip_bad_examples=True
    )
    assert dev.captions == ["a red bus", "a kite in the sky"]
    assert dev.skipped == {"empty_caption": 1, "duplicate_caption": 1}


def test_dataset_flag_reads_through_tfds(mocked, tmp_path):
    config = config_lib.override(
        config_lib.get_config("tiny"),
        dataset="tfds",
        tfds_name="coco_captions",
        cache_dir=str(tmp_path),
    )
    config_lib.validate(config)  # (no --data_dir needed for tfds)
    split = datasets.load_split(config, "test")
    assert split.captions == ["a boat on a lake"]
    assert split.image_paths[0].startswith(str(tmp_path / "tfds_images"))


def test_unknown_split_and_missing_data(tmp_path):
    with pytest.raises(ValueError, match="unknown split 'dev2'"):
        tfds_reader.tfds_splits("coco_captions", "dev2")
    assert tfds_reader.tfds_splits("oxford_flowers102", "dev") == ("validation",)
