"""Small caption data sets the reader tests write to tmp_path, and checks."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from vse_tf.data.split import CaptionedSplit

FLICKR8K_DIR = (
    Path(__file__).resolve().parents[3].parent / "shared" / "data" / "flickr8k"
)


def write(path: Path, text: str) -> Path:
    """Writes ``text`` (UTF-8) to ``path``, making its folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def assert_error(excinfo: pytest.ExceptionInfo, name: str, line: int | None) -> None:
    """The error names file ``name`` (and ``name:line:`` with its line)."""
    message = str(excinfo.value)
    assert name in message
    if line is not None:
        assert f"{name}:{line}:" in message
        assert excinfo.value.line == line


def grouped(split: CaptionedSplit) -> dict[str, list[str]]:
    """``{image base name: captions}`` of ``split``."""
    out: dict[str, list[str]] = {}
    for caption, index in zip(split.captions, split.caption_image_index, strict=True):
        out.setdefault(os.path.basename(split.image_paths[index]), []).append(caption)
    return out


def flickr_dir(tmp_path: Path, caption_file: str = "token", image_dir="images") -> Path:
    """A Flickr8k folder: 3 images, train and dev lists, no test list."""
    root = tmp_path / "flickr8k"
    (root / image_dir).mkdir(parents=True)
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        (root / image_dir / name).write_bytes(b"jpg")
    if caption_file == "token":
        write(
            root / "Flickr8k.token.txt",
            "a.jpg#0\tA dog runs .\n"
            "b.jpg#0\tA cat sits.  \n"
            "a.jpg#1\tThe dog, brown, runs .\n"
            "\n"
            "c.jpg#0\tA bird .\n"
            "b.jpg#1\tThe cat sleeps .\n",
        )
    else:
        write(
            root / "captions.txt",
            "image,caption\n"
            "a.jpg,A dog runs .\n"
            'b.jpg," A cat sits, calmly ."\n'
            'a.jpg,"The dog, brown, runs ."\n'
            "c.jpg,A bird .\n"
            "b.jpg,The cat sleeps .\n",
        )
    write(root / "Flickr_8k.trainImages.txt", "b.jpg\n\na.jpg\n")
    write(root / "Flickr_8k.devImages.txt", "c.jpg\n")
    return root


def karpathy_json(tmp_path: Path, images: list | None = None) -> Path:
    """``dataset_coco.json`` with one image of each Karpathy split by default."""
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
    write(path, json.dumps({"images": images, "dataset": "coco"}))
    return path


def coco_dir(tmp_path: Path) -> Path:
    """A COCO folder with train2014 and val2014 annotations, no test."""
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
    write(root / "annotations" / "captions_train2014.json", json.dumps(train))
    write(root / "annotations" / "captions_val2014.json", json.dumps(val))
    return root
