"""Tests for vse_tf.data.readers on small files written to tmp_path."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from vse_tf.data import readers
from vse_tf.data.split import CaptionedSplit, DataError

FLICKR8K_DIR = (
    Path(__file__).resolve().parents[2].parent / "shared" / "data" / "flickr8k"
)


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _assert_error(excinfo: pytest.ExceptionInfo, name: str, line: int | None) -> None:
    message = str(excinfo.value)
    assert name in message
    if line is not None:
        assert f"{name}:{line}:" in message
        assert excinfo.value.line == line


def _grouped(split: CaptionedSplit) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for caption, index in zip(split.captions, split.caption_image_index, strict=True):
        out.setdefault(os.path.basename(split.image_paths[index]), []).append(caption)
    return out


# --------------------------------------------------------------------------
# Flickr8k.


def _flickr_dir(
    tmp_path: Path, caption_file: str = "token", image_dir="images"
) -> Path:
    root = tmp_path / "flickr8k"
    (root / image_dir).mkdir(parents=True)
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        (root / image_dir / name).write_bytes(b"jpg")
    if caption_file == "token":
        _write(
            root / "Flickr8k.token.txt",
            "a.jpg#0\tA dog runs .\n"
            "b.jpg#0\tA cat sits.  \n"
            "a.jpg#1\tThe dog, brown, runs .\n"
            "\n"
            "c.jpg#0\tA bird .\n"
            "b.jpg#1\tThe cat sleeps .\n",
        )
    else:
        _write(
            root / "captions.txt",
            "image,caption\n"
            "a.jpg,A dog runs .\n"
            'b.jpg," A cat sits, calmly ."\n'
            'a.jpg,"The dog, brown, runs ."\n'
            "c.jpg,A bird .\n"
            "b.jpg,The cat sleeps .\n",
        )
    _write(root / "Flickr_8k.trainImages.txt", "b.jpg\n\na.jpg\n")
    _write(root / "Flickr_8k.devImages.txt", "c.jpg\n")
    return root


def test_flickr8k_token_file(tmp_path):
    root = _flickr_dir(tmp_path, "token")
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
    root = _flickr_dir(tmp_path, "csv", image_dir="Flicker8k_Dataset")
    split = readers.read_flickr8k(root, "train")
    assert _grouped(split) == {
        "b.jpg": ["A cat sits, calmly .", "The cat sleeps ."],
        "a.jpg": ["A dog runs .", "The dog, brown, runs ."],
    }
    assert split.image_paths[0].endswith(os.path.join("Flicker8k_Dataset", "b.jpg"))


def test_flickr8k_prefers_token_file(tmp_path):
    root = _flickr_dir(tmp_path, "token")
    _write(root / "captions.txt", "image,caption\nb.jpg,other\na.jpg,other\n")
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
    root = _flickr_dir(tmp_path, "token")
    path = root / "Flickr8k.token.txt"
    _write(path, "b.jpg#0\tok\n" + line + "\n")
    with pytest.raises(DataError, match=needle) as excinfo:
        readers.read_flickr8k(root, "train")
    _assert_error(excinfo, "Flickr8k.token.txt", 2)


@pytest.mark.parametrize(
    "row, line",
    [
        ("a.jpg,one,two", 3),
        ('a.jpg,"  "', 3),
        ("a.jpg", 3),
    ],
)
def test_flickr8k_csv_malformed(tmp_path, row, line):
    root = _flickr_dir(tmp_path, "csv")
    _write(root / "captions.txt", f"image,caption\nb.jpg,ok\n{row}\n")
    with pytest.raises(DataError) as excinfo:
        readers.read_flickr8k(root, "train")
    _assert_error(excinfo, "captions.txt", line)


def test_flickr8k_csv_bad_header(tmp_path):
    root = _flickr_dir(tmp_path, "csv")
    _write(root / "captions.txt", "img,text\nb.jpg,ok\n")
    with pytest.raises(DataError, match="header") as excinfo:
        readers.read_flickr8k(root, "train")
    _assert_error(excinfo, "captions.txt", 1)


def test_flickr8k_image_without_captions(tmp_path):
    root = _flickr_dir(tmp_path, "token")
    _write(root / "Flickr_8k.trainImages.txt", "a.jpg\n\nzzz.jpg\n")
    with pytest.raises(DataError, match="zzz.jpg") as excinfo:
        readers.read_flickr8k(root, "train")
    _assert_error(excinfo, "Flickr_8k.trainImages.txt", 3)


def test_flickr8k_duplicate_in_split_list(tmp_path):
    root = _flickr_dir(tmp_path, "token")
    _write(root / "Flickr_8k.trainImages.txt", "a.jpg\na.jpg\n")
    with pytest.raises(DataError) as excinfo:
        readers.read_flickr8k(root, "train")
    _assert_error(excinfo, "Flickr_8k.trainImages.txt", 2)


def test_flickr8k_missing_pieces(tmp_path):
    root = _flickr_dir(tmp_path, "token")
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
    root = _flickr_dir(tmp_path, "token")
    (root / "images" / "a.jpg").unlink()
    assert readers.read_flickr8k(root, "train").num_images == 2  # not checked
    with pytest.raises(DataError, match=r"1 of 2 image files missing: .*a\.jpg"):
        readers.read_flickr8k(root, "train", check_files=True)


def test_check_files_lists_at_most_ten(tmp_path):
    names = [f"{i:02d}.jpg" for i in range(12)]
    table = _write(
        tmp_path / "caps.csv", "image,caption\n" + "".join(f"{n},x\n" for n in names)
    )
    with pytest.raises(DataError) as excinfo:
        readers.read_caption_csv(table, tmp_path, check_files=True)
    message = str(excinfo.value)
    assert "12 of 12 image files missing" in message
    assert "09.jpg" in message and "10.jpg" not in message


# --------------------------------------------------------------------------
# Karpathy JSON.


def _karpathy(tmp_path: Path, images: list | None = None) -> Path:
    if images is None:
        images = [
            {
                "filename": "t1.jpg",
                "filepath": "train2014",
                "split": "train",
                "sentences": [{"raw": "train one "}, {"raw": "train two"}],
            },
            {
                "filename": "v1.jpg",
                "filepath": "val2014",
                "split": "val",
                "sentences": [{"raw": "val one"}],
            },
            {
                "filename": "r1.jpg",
                "filepath": "val2014",
                "split": "restval",
                "sentences": [{"raw": "restval one"}, {"raw": "restval two"}],
            },
            {
                "filename": "x1.jpg",
                "split": "test",
                "sentences": [{"raw": "test one"}],
            },
        ]
    path = tmp_path / "dataset_coco.json"
    _write(path, json.dumps({"images": images, "dataset": "coco"}))
    return path


def test_karpathy_splits(tmp_path):
    path = _karpathy(tmp_path)
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
    path = _karpathy(tmp_path, [image])
    with pytest.raises(DataError, match=needle) as excinfo:
        readers.read_karpathy(path, "train", tmp_path)
    _assert_error(excinfo, "dataset_coco.json", None)


def test_karpathy_invalid_json_names_line(tmp_path):
    path = _write(tmp_path / "dataset_f8k.json", '{"images": [\n  {,\n]}')
    with pytest.raises(DataError, match="invalid JSON") as excinfo:
        readers.read_karpathy(path, "train", tmp_path)
    _assert_error(excinfo, "dataset_f8k.json", 2)


# --------------------------------------------------------------------------
# MS-COCO.


def _coco_dir(tmp_path: Path) -> Path:
    root = tmp_path / "coco"
    train = {
        "images": [
            {"id": 30, "file_name": "c30.jpg"},
            {"id": 4, "file_name": "c4.jpg"},
            {"id": 12, "file_name": "c12.jpg"},
        ],
        "annotations": [
            {"id": 1, "image_id": 12, "caption": "twelve a"},
            {"id": 2, "image_id": 30, "caption": "thirty a"},
            {"id": 3, "image_id": 4, "caption": " four a "},
            {"id": 4, "image_id": 12, "caption": "twelve b"},
            {"id": 5, "image_id": 4, "caption": "four b"},
        ],
    }
    val = {
        "images": [{"id": 7, "file_name": "v7.jpg"}],
        "annotations": [{"image_id": 7, "caption": "seven"}],
    }
    _write(root / "annotations" / "captions_train2014.json", json.dumps(train))
    _write(root / "annotations" / "captions_val2014.json", json.dumps(val))
    return root


def test_coco_order_and_paths(tmp_path):
    root = _coco_dir(tmp_path)
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
    root = _coco_dir(tmp_path)
    for name in ("dev", "val", "val2014"):
        split = readers.read_coco(root, name)
        assert split.image_paths == [str((root / "val2014" / "v7.jpg").resolve())]
        assert split.captions == ["seven"]
    with pytest.raises(DataError, match="captions_test"):
        readers.read_coco(root, "test")
    _write(
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
    _write(root / "annotations" / "captions_val2014.json", json.dumps(data))
    with pytest.raises(DataError, match=needle) as excinfo:
        readers.read_coco(root, "dev")
    _assert_error(excinfo, "captions_val2014.json", None)


# --------------------------------------------------------------------------
# VSE++ precomputed.


def test_precomp_one_row_per_image(tmp_path):
    features = np.arange(12, dtype=np.float64).reshape(3, 4)
    np.save(tmp_path / "test_ims.npy", features)
    _write(tmp_path / "test_caps.txt", "".join(f"cap {i}\n" for i in range(6)))
    split = readers.read_precomp(tmp_path, "test")
    assert split.image_paths == ["test:0", "test:1", "test:2"]
    assert split.features.dtype == np.float32
    np.testing.assert_array_equal(split.features, features)
    assert split.caption_image_index.tolist() == [0, 0, 1, 1, 2, 2]
    assert split.captions[5] == "cap 5"


def test_precomp_per_caption_rows_dedupe(tmp_path):
    base = np.arange(2 * 3, dtype=np.float32).reshape(2, 3)
    np.save(tmp_path / "val_ims.npy", np.repeat(base, 5, axis=0))  # 10 rows
    _write(tmp_path / "val_caps.txt", "".join(f"c{i}\n" for i in range(10)))
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
    _write(tmp_path / "dev_caps.txt", "a\nb\n")
    np.save(tmp_path / "val_ims.npy", np.zeros((1, 2)))
    _write(tmp_path / "val_caps.txt", "c\n")
    assert readers.read_precomp(tmp_path, "dev").captions == ["a", "b"]


def test_precomp_malformed(tmp_path):
    np.save(tmp_path / "train_ims.npy", np.zeros((4, 2)))
    _write(tmp_path / "train_caps.txt", "a\nb\n\nc\nd\ne\n")
    with pytest.raises(DataError, match="empty caption") as excinfo:
        readers.read_precomp(tmp_path, "train")
    _assert_error(excinfo, "train_caps.txt", 3)
    _write(tmp_path / "train_caps.txt", "a\nb\nc\nd\ne\nf\n")
    with pytest.raises(DataError, match="do not divide"):
        readers.read_precomp(tmp_path, "train")
    with pytest.raises(DataError, match="test_caps.txt"):
        readers.read_precomp(tmp_path, "test")


# --------------------------------------------------------------------------
# Generic CSV / TSV.


def test_caption_csv_with_split_column(tmp_path):
    table = _write(
        tmp_path / "data.csv",
        "split,image,caption\n"
        'train,x.jpg,"one, with comma"\n'
        "dev,y.jpg,dev caption\n"
        "train,z.jpg,three\n"
        "train,x.jpg,two\n",
    )
    train = readers.read_caption_csv(table, tmp_path / "img", split="train")
    assert _grouped(train) == {"x.jpg": ["one, with comma", "two"], "z.jpg": ["three"]}
    assert train.image_paths[0] == str((tmp_path / "img" / "x.jpg").resolve())
    assert train.caption_image_index.tolist() == [0, 0, 1]
    everything = readers.read_caption_csv(table, tmp_path)
    assert everything.num_captions == 4 and everything.name == "data"
    with pytest.raises(DataError, match="no caption rows with split 'test'"):
        readers.read_caption_csv(table, tmp_path, split="test")


def test_caption_tsv_and_sniffed_tab(tmp_path):
    text = "image\tcaption\na.jpg\tA, b and c\nb.jpg\tsecond\n"
    for name in ("caps.tsv", "caps.txt"):
        split = readers.read_caption_csv(_write(tmp_path / name, text), tmp_path)
        assert split.captions == ["A, b and c", "second"]


def test_caption_csv_malformed(tmp_path):
    table = _write(tmp_path / "c.csv", "image,caption\na.jpg,ok\nb.jpg,x,y\n")
    with pytest.raises(DataError, match="columns") as excinfo:
        readers.read_caption_csv(table, tmp_path)
    _assert_error(excinfo, "c.csv", 3)
    _write(table, "image,caption\na.jpg,ok\n\nb.jpg,\n")
    with pytest.raises(DataError, match="empty caption") as excinfo:
        readers.read_caption_csv(table, tmp_path)
    _assert_error(excinfo, "c.csv", 4)
    _write(table, "image,caption\na.jpg,ok\n")
    with pytest.raises(DataError, match="no 'split' column") as excinfo:
        readers.read_caption_csv(table, tmp_path, split="train")
    _assert_error(excinfo, "c.csv", 1)
    _write(table, "picture,text\na.jpg,ok\n")
    with pytest.raises(DataError, match="header") as excinfo:
        readers.read_caption_csv(table, tmp_path)
    _assert_error(excinfo, "c.csv", 1)


# --------------------------------------------------------------------------
# Dispatch.


def test_read_split_dispatch(tmp_path):
    root = _flickr_dir(tmp_path, "token")
    assert readers.read_split("flickr8k", root, "dev").captions == ["A bird ."]

    kdir = tmp_path / "karpathy"
    kdir.mkdir()
    path = _karpathy(kdir)
    by_dir = readers.read_split("karpathy", kdir, "test")
    assert by_dir.image_paths == [str((kdir / "x1.jpg").resolve())]
    (kdir / "images").mkdir()
    by_file = readers.read_split("Karpathy", path, "test")
    assert by_file.image_paths == [str((kdir / "images" / "x1.jpg").resolve())]
    custom = readers.read_split("karpathy", kdir, "test", image_root=tmp_path)
    assert custom.image_paths == [str((tmp_path / "x1.jpg").resolve())]

    coco = _coco_dir(tmp_path)
    assert readers.read_split("coco", coco, "val").captions == ["seven"]

    pdir = tmp_path / "precomp"
    pdir.mkdir()
    np.save(pdir / "test_ims.npy", np.zeros((1, 2)))
    _write(pdir / "test_caps.txt", "a\nb\n")
    assert readers.read_split("precomp", pdir, "test").features.shape == (1, 2)

    cdir = tmp_path / "csvdata"
    _write(cdir / "captions.tsv", "image\tcaption\tsplit\na.jpg\thi\ttrain\n")
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
    _karpathy(tmp_path)
    _write(tmp_path / "dataset_f30k.json", "{}")
    with pytest.raises(DataError, match="found 2"):
        readers.read_split("karpathy", tmp_path, "train")
    with pytest.raises(DataError, match="captions.csv"):
        readers.read_split("csv", tmp_path, "train")


# --------------------------------------------------------------------------
# Real data.


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
