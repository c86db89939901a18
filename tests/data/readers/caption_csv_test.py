"""read_caption_csv: split column, TSV and sniffed delimiters, bad rows."""

from __future__ import annotations

import pytest

from tests.data.readers.helpers import assert_error, grouped, write
from vse_tf.data import readers
from vse_tf.data.split import DataError


def test_caption_csv_with_split_column(tmp_path):
    table = write(
        tmp_path / "data.csv",
        "split,image,caption\n"
        'train,x.jpg,"one, with comma"\n'
        "dev,y.jpg,dev caption\n"
        "train,z.jpg,three\n"
        "train,x.jpg,two\n",
    )
    train = readers.read_caption_csv(table, tmp_path / "img", split="train")
    assert grouped(train) == {"x.jpg": ["one, with comma", "two"], "z.jpg": ["three"]}
    assert train.image_paths[0] == str((tmp_path / "img" / "x.jpg").resolve())
    assert train.caption_image_index.tolist() == [0, 0, 1]
    everything = readers.read_caption_csv(table, tmp_path)
    assert everything.num_captions == 4 and everything.name == "data"
    with pytest.raises(DataError, match="no caption rows with split 'test'"):
        readers.read_caption_csv(table, tmp_path, split="test")


def test_caption_tsv_and_sniffed_tab(tmp_path):
    text = "image\tcaption\na.jpg\tA, b and c\nb.jpg\tsecond\n"
    for name in ("caps.tsv", "caps.txt"):
        split = readers.read_caption_csv(write(tmp_path / name, text), tmp_path)
        assert split.captions == ["A, b and c", "second"]


def test_caption_csv_malformed(tmp_path):
    table = write(tmp_path / "c.csv", "image,caption\na.jpg,ok\nb.jpg,x,y\n")
    with pytest.raises(DataError, match="columns") as excinfo:
        readers.read_caption_csv(table, tmp_path)
    assert_error(excinfo, "c.csv", 3)
    write(table, "image,caption\na.jpg,ok\n\nb.jpg,\n")
    with pytest.raises(DataError, match="empty caption") as excinfo:
        readers.read_caption_csv(table, tmp_path)
    assert_error(excinfo, "c.csv", 4)
    write(table, "image,caption\na.jpg,ok\n")
    with pytest.raises(DataError, match="no 'split' column") as excinfo:
        readers.read_caption_csv(table, tmp_path, split="train")
    assert_error(excinfo, "c.csv", 1)
    write(table, "picture,text\na.jpg,ok\n")
    with pytest.raises(DataError, match="header") as excinfo:
        readers.read_caption_csv(table, tmp_path)
    assert_error(excinfo, "c.csv", 1)
