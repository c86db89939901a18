"""read_flickr8k: token and CSV caption files, split lists, image folders."""

from __future__ import annotations

import os

import pytest

from tests.data.readers.helpers import (
    FLICKR8K_DIR,
    assert_error,
    flickr_dir,
    grouped,
    write,
)
from vse_tf.data import readers
from vse_tf.data.split import DataError


def test_flickr8k_token_file(tmp_path):
    root = flickr_dir(tmp_path, "token")
    split = readers.read_flickr8k(root, "train", check_files=True)
    assert split.name == "train"
    assert split.image_paths == [
        str((root / "images" / "b.jpg").resolve()),
        str((root / "images" / "a.jpg").resolve()),
    ]
    assert split.captions == [
        "A cat sits.",
        "The cat sleeps .",
        "A dog runs .",
        "The dog, brown, runs .",
    ]
    assert split.caption_image_index.tolist() == [0, 0, 1, 1]
    assert split.captions_per_image() == 2
    dev = readers.read_flickr8k(root, "dev")
    assert dev.captions == ["A bird ."] and dev.num_images == 1


def test_flickr8k_csv_with_quoted_commas(tmp_path):
    root = flickr_dir(tmp_path, "csv", image_dir="Flicker8k_Dataset")
    split = readers.read_flickr8k(root, "train")
    assert grouped(split) == {
        "b.jpg": ["A cat sits, calmly .", "The cat sleeps ."],
        "a.jpg": ["A dog runs .", "The dog, brown, runs ."],
    }
    assert split.image_paths[0].endswith(os.path.join("Flicker8k_Dataset", "b.jpg"))


def test_flickr8k_prefers_token_file(tmp_path):
    root = flickr_dir(tmp_path, "token")
    write(root / "captions.txt", "image,caption\nb.jpg,other\na.jpg,other\n")
    assert readers.read_flickr8k(root, "train").captions[0] == "A cat sits."


@pytest.mark.parametrize(
    "line, needle",
    [
        ("a.jpg#0 no tab here", "columns"),
        ("a.jpg#0\tone\ttoo many", "columns"),
        ("a.jpg\tno suffix", "#i"),
        ("a.jpg#x\tbad suffix", "#i"),
        ("a.jpg#2\t   ", "empty caption"),
    ],
)
def test_flickr8k_token_malformed(tmp_path, line, needle):
    root = flickr_dir(tmp_path, "token")
    path = root / "Flickr8k.token.txt"
    write(path, "b.jpg#0\tok\n" + line + "\n")
    with pytest.raises(DataError, match=needle) as excinfo:
        readers.read_flickr8k(root, "train")
    assert_error(excinfo, "Flickr8k.token.txt", 2)


@pytest.mark.parametrize(
    "row, line",
    [
        ("a.jpg,one,two", 3),
        ('a.jpg,"  "', 3),
        ("a.jpg", 3),
    ],
)
def test_flickr8k_csv_malformed(tmp_path, row, line):
    root = flickr_dir(tmp_path, "csv")
    write(root / "captions.txt", f"image,caption\nb.jpg,ok\n{row}\n")
    with pytest.raises(DataError) as excinfo:
        readers.read_flickr8k(root, "train")
    assert_error(excinfo, "captions.txt", line)


def test_flickr8k_csv_bad_header(tmp_path):
    root = flickr_dir(tmp_path, "csv")
    write(root / "captions.txt", "img,text\nb.jpg,ok\n")
    with pytest.raises(DataError, match="header") as excinfo:
        readers.read_flickr8k(root, "train")
    assert_error(excinfo, "captions.txt", 1)


@pytest.mark.parametrize(
    "split_list, needle, line",
    [
        ("a.jpg\n\nzzz.jpg\n", "zzz.jpg", 3),
        ("a.jpg\na.jpg\n", None, 2),
    ],
    ids=["image_without_captions", "duplicate_in_split_list"],
)
def test_flickr8k_bad_split_list(tmp_path, split_list, needle, line):
    root = flickr_dir(tmp_path, "token")
    write(root / "Flickr_8k.trainImages.txt", split_list)
    with pytest.raises(DataError, match=needle) as excinfo:
        readers.read_flickr8k(root, "train")
    assert_error(excinfo, "Flickr_8k.trainImages.txt", line)


def test_flickr8k_missing_pieces(tmp_path):
    root = flickr_dir(tmp_path, "token")
    with pytest.raises(ValueError, match="unknown Flickr8k split"):
        readers.read_flickr8k(root, "val")
    with pytest.raises(DataError, match="Flickr_8k.testImages.txt"):
        readers.read_flickr8k(root, "test")
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        (root / "images" / name).unlink()
    (root / "images").rmdir()
    with pytest.raises(DataError, match="no image folder"):
        readers.read_flickr8k(root, "train")


def test_check_files_lists_missing(tmp_path):
    root = flickr_dir(tmp_path, "token")
    (root / "images" / "a.jpg").unlink()
    assert readers.read_flickr8k(root, "train").num_images == 2  # not checked
    with pytest.raises(DataError, match=r"1 of 2 image files missing: .*a\.jpg"):
        readers.read_flickr8k(root, "train", check_files=True)


@pytest.mark.skipif(
    not FLICKR8K_DIR.is_dir(), reason=f"Flickr8k data not found at {FLICKR8K_DIR}"
)
def test_real_flickr8k():
    train = readers.read_flickr8k(FLICKR8K_DIR, "train")
    assert train.num_images == 6000
    assert train.num_captions == 30000
    assert train.captions_per_image() == 5
    assert all(os.path.isabs(p) for p in train.image_paths[:10])
    assert any("," in c for c in train.captions)
    dev = readers.read_flickr8k(FLICKR8K_DIR, "dev", check_files=True)
    assert dev.num_images == 1000
    assert dev.num_captions == 5000
    assert set(train.image_paths).isdisjoint(dev.image_paths)
    first = (FLICKR8K_DIR / "Flickr_8k.trainImages.txt").read_text().split()[0]
    assert train.image_paths[0] == os.path.abspath(FLICKR8K_DIR / "images" / first)
