"""TensorBoard Embedding Projector files, parsed with TensorBoard's own proto."""

import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorboard.plugins import projector as tb_projector

from vse_tf import evaluation
from vse_tf import projector as projector_lib

THUMB = 8


def _image(path, rgb):
    pixels = np.zeros([12, 20, 3], np.uint8) + np.array(rgb, np.uint8)
    path.write_bytes(tf.io.encode_png(pixels).numpy())
    return str(path)


@pytest.fixture
def inputs(tmp_path):
    red = _image(tmp_path / "red.png", (255, 0, 0))
    blue = _image(tmp_path / "blue.png", (0, 0, 255))
    images = np.eye(2, 4, dtype=np.float32)  # [2, 4]
    captions = ["a red\tsquare", "a blue square", "blue\nagain"]
    caption_emb = np.eye(3, 4, k=1, dtype=np.float32)  # [3, 4]
    return [red, blue], images, captions, caption_emb, [0, 1, 1]


def test_files_parse_and_hold_every_point(inputs):
    paths, images, captions, caption_emb, owners = inputs
    files = projector_lib.projector_files(
        images, paths, caption_emb, captions, owners, thumbnail=THUMB
    )
    config = text_format.Parse(
        files[projector_lib.CONFIG_FILE].decode(), tb_projector.ProjectorConfig()
    )
    (embedding,) = config.embeddings
    assert embedding.tensor_path == "tensors.tsv"
    assert embedding.metadata_path == "metadata.tsv"
    assert embedding.sprite.image_path == "sprite.png"
    assert list(embedding.sprite.single_image_dim) == [THUMB, THUMB]

    rows = files["tensors.tsv"].decode().splitlines()
    assert len(rows) == 5 and rows[0] == "1\t0\t0\t0" and rows[2] == "0\t1\t0\t0"
    metadata = files["metadata.tsv"].decode().splitlines()
    assert metadata[0] == "kind\tfile\tcaption"
    assert metadata[1] == f"image\t{paths[0]}\t"
    assert metadata[3] == f"caption\t{paths[0]}\ta red square"  # tab cleaned
    assert metadata[5] == f"caption\t{paths[1]}\tblue again"  # newline cleaned
    assert len(metadata) == 1 + 5

    # 5 points: a 3x3 grid of 8px cells; a caption's cell is its image's.
    sprite = tf.io.decode_png(files["sprite.png"]).numpy()
    assert sprite.shape == (3 * THUMB, 3 * THUMB, 3)

    def cell(i):
        row, column = divmod(i, 3)
        return sprite[
            row * THUMB : (row + 1) * THUMB, column * THUMB : (column + 1) * THUMB
        ]

    np.testing.assert_array_equal(cell(0)[0, 0], [255, 0, 0])
    np.testing.assert_array_equal(cell(1)[0, 0], [0, 0, 255])
    np.testing.assert_array_equal(cell(2), cell(0))  # "a red square": red.png
    np.testing.assert_array_equal(cell(4), cell(1))
    assert not cell(8).any()  # the empty ninth cell


def test_mismatched_inputs_and_oversized_sprites_are_refused(inputs):
    paths, images, captions, caption_emb, owners = inputs
    with pytest.raises(ValueError, match="2 image embeddings for 1 paths"):
        projector_lib.projector_files(images, paths[:1])
    with pytest.raises(ValueError, match="must be as many"):
        projector_lib.projector_files(images, paths, caption_emb, captions[:2], owners)
    with pytest.raises(ValueError, match="at most 8192px"):
        projector_lib.projector_files(images, paths, thumbnail=8000)


def test_write_projector_writes_every_file(inputs, tmp_path):
    paths, images, *_ = inputs
    files = projector_lib.projector_files(images, paths, thumbnail=THUMB)
    written = projector_lib.write_projector(str(tmp_path / "proj"), files)
    assert [os.path.basename(p) for p in written][-1] == "projector_config.pbtxt"
    for name, data in files.items():
        with open(tmp_path / "proj" / name, "rb") as f:
            assert f.read() == data


def test_evaluate_a_workdir_writes_the_split_for_the_projector(tiny_export, tmp_path):
    workdir = str(shutil.copytree(tiny_export.workdir, tmp_path / "run"))
    folder = str(tmp_path / "proj")
    values = evaluation.evaluate_workdir(workdir, projector_dir=folder)
    rows = open(os.path.join(folder, "tensors.tsv")).read().splitlines()
    metadata = open(os.path.join(folder, "metadata.tsv")).read().splitlines()
    images = sum(line.startswith("image\t") for line in metadata)
    captions = sum(line.startswith("caption\t") for line in metadata)
    assert captions == 5 * images and len(rows) == images + captions
    assert all(len(row.split("\t")) == 16 for row in rows)  # tiny: embed_dim 16
    assert values["rsum"] >= 0
