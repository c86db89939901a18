"""Every annotation reader reports every problem: file, line, offset and kind.

One test per kind of problem (`vse_tf.data.validation.KINDS`), tests that
several problems in one file are all reported, the capped message, the
``skip_bad_examples`` mode and the captions-per-image protocol check.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from vse_tf.data import readers, validation
from vse_tf.data.split import (
    MAX_LISTED_PER_KIND,
    MAX_LISTED_PROBLEMS,
    CaptionedSplit,
    DataError,
    Problem,
    group_captions,
)


def _write(path: Path, data: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode("utf-8")
    path.write_bytes(data)
    return path


def _problems(excinfo: pytest.ExceptionInfo, kind: str) -> list[Problem]:
    return [p for p in excinfo.value.problems if p.kind == kind]


def _lines(excinfo: pytest.ExceptionInfo, kind: str) -> list[int | None]:
    return [p.line for p in _problems(excinfo, kind)]


def _assert_listed(excinfo: pytest.ExceptionInfo, path: Path, line: int) -> None:
    """The message names ``path:line:`` (one listed problem)."""
    assert f"{path}:{line}:" in str(excinfo.value)


def _flickr(
    tmp_path: Path,
    tokens: str | bytes,
    train_list: str | bytes = "a.jpg\nb.jpg\n",
    images: tuple[str, ...] = ("a.jpg", "b.jpg", "c.jpg"),
) -> Path:
    root = tmp_path / "flickr8k"
    (root / "images").mkdir(parents=True)
    for name in images:
        (root / "images" / name).write_bytes(b"jpg")
    _write(root / "Flickr8k.token.txt", tokens)
    _write(root / "Flickr_8k.trainImages.txt", train_list)
    return root


GOOD_TOKENS = "a.jpg#0\tA dog .\na.jpg#1\tA brown dog .\nb.jpg#0\tA cat .\n"


def _coco(tmp_path: Path, data: object) -> Path:
    root = tmp_path / "coco"
    _write(root / "annotations" / "captions_val2014.json", json.dumps(data))
    return root


def _karpathy(tmp_path: Path, images: list) -> Path:
    return _write(tmp_path / "dataset_f8k.json", json.dumps({"images": images}))


def _kimage(name: str, *captions: str, split: str = "train", **extra) -> dict:
    return {
        "filename": name,
        "split": split,
        "sentences": [{"raw": c} for c in captions],
        **extra,
    }


# --------------------------------------------------------------------------
# One test per kind.


def test_invalid_utf8_names_line_and_byte_offset(tmp_path):
    tokens = b"a.jpg#0\tA dog .\nb.jpg#0\tA c\xe9t .\na.jpg#1\tok\nb.jpg#1\t\xff\n"
    root = _flickr(tmp_path, tokens)
    path = root / "Flickr8k.token.txt"
    with pytest.raises(DataError) as excinfo:
        readers.read_flickr8k(root, "train")
    bad = _problems(excinfo, "invalid_utf8")
    first, second = tokens.index(b"\xe9"), tokens.index(b"\xff")
    assert [(p.line, p.offset) for p in bad] == [(2, first), (4, second)]
    message = str(excinfo.value)
    _assert_listed(excinfo, path, 2)
    assert f"byte offset {first} (byte 0xe9)" in message
    assert f"byte offset {second} (byte 0xff)" in message
    # The bad lines cost their captions only; b.jpg keeps its good one.
    split = readers.read_flickr8k(root, "train", skip_bad_examples=True)
    assert split.captions == ["A dog .", "ok"]
    assert split.skipped == {"invalid_utf8": 2}


def test_invalid_utf8_offset_counts_the_byte_order_mark(tmp_path):
    data = b"\xef\xbb\xbfimage,caption\na.jpg,ok\nb.jpg,x\x80y\n"
    table = _write(tmp_path / "caps.csv", data)
    with pytest.raises(DataError) as excinfo:
        readers.read_caption_csv(table, tmp_path)
    (problem,) = excinfo.value.problems
    offset = data.index(b"\x80")
    assert (problem.line, problem.offset) == (3, offset)
    assert str(excinfo.value) == (
        f"{table}:3: invalid UTF-8 at byte offset {offset} (byte 0x80)"
    )


def test_invalid_utf8_in_json_is_fatal(tmp_path):
    data = b'{"images": [\n {"filename": "a\xc3.jpg"}]}'
    path = _write(tmp_path / "dataset_f8k.json", data)
    for skip in (False, True):
        with pytest.raises(DataError) as excinfo:
            readers.read_karpathy(path, "train", tmp_path, skip_bad_examples=skip)
        (problem,) = excinfo.value.problems
        assert problem.kind == "invalid_utf8" and problem.fatal
        assert (problem.line, problem.offset) == (2, data.index(b"\xc3"))
        _assert_listed(excinfo, path, 2)


def test_empty_and_whitespace_captions_all_reported(tmp_path):
    table = _write(
        tmp_path / "caps.csv",
        'image,caption\na.jpg,ok\nb.jpg,\nc.jpg,"   "\nd.jpg,fine\ne.jpg,\t\n',
    )
    with pytest.raises(DataError, match="empty caption") as excinfo:
        readers.read_caption_csv(table, tmp_path)
    assert _lines(excinfo, "empty_caption") == [3, 4, 6]
    for line in (3, 4, 6):
        _assert_listed(excinfo, table, line)


def test_empty_captions_in_json_name_the_record(tmp_path):
    path = _karpathy(
        tmp_path,
        [_kimage("a.jpg", "ok", "  "), _kimage("b.jpg", ""), _kimage("c.jpg", 7)],
    )
    with pytest.raises(DataError) as excinfo:
        readers.read_karpathy(path, "train", tmp_path)
    message = str(excinfo.value)
    assert "images[0].sentences[1]: empty caption" in message
    assert "images[1].sentences[0]: empty caption" in message
    assert "images[2].sentences[0]: caption is not a string: 7" in message
    assert excinfo.value.kinds == {"empty_caption": 2, "bad_record": 1}


def test_bad_header_is_fatal_even_when_skipping(tmp_path):
    table = _write(tmp_path / "caps.csv", "picture,text\na.jpg,ok\n")
    flickr = _flickr(tmp_path, "")
    (flickr / "Flickr8k.token.txt").unlink()
    _write(flickr / "captions.txt", "image,caption,extra\na.jpg,ok,1\n")
    for skip in (False, True):
        with pytest.raises(DataError, match="header") as excinfo:
            readers.read_caption_csv(table, tmp_path, skip_bad_examples=skip)
        assert excinfo.value.kinds == {"bad_header": 1}
        _assert_listed(excinfo, table, 1)
        with pytest.raises(DataError, match="expected header 'image,caption'"):
            readers.read_flickr8k(flickr, "train", skip_bad_examples=skip)


def test_wrong_column_counts_all_reported(tmp_path):
    table = _write(
        tmp_path / "caps.tsv",
        "image\tcaption\tsplit\na.jpg\tok\ttrain\nb.jpg\tshort\n"
        "c.jpg\tfine\ttrain\nd.jpg\ttoo\tmany\tcols\n",
    )
    with pytest.raises(DataError) as excinfo:
        readers.read_caption_csv(table, tmp_path)
    assert _lines(excinfo, "bad_columns") == [3, 5]
    assert "expected 3 columns, got 2" in str(excinfo.value)
    assert "expected 3 columns, got 4" in str(excinfo.value)


def test_broken_csv_quoting_names_the_row_start(tmp_path):
    table = _write(
        tmp_path / "caps.csv", 'image,caption\na.jpg,ok\nb.jpg,"oops"x\nc.jpg,"open\n'
    )
    with pytest.raises(DataError) as excinfo:
        readers.read_caption_csv(table, tmp_path)
    assert _lines(excinfo, "bad_columns") == [3, 4]
    assert "unexpected end of data" in str(excinfo.value)


def test_bad_records_in_token_file(tmp_path):
    root = _flickr(
        tmp_path,
        "a.jpg#0\tok\na.jpg\tno index\nb.jpg#x\tbad index\nb.jpg#0\tok\n",
    )
    with pytest.raises(DataError, match="'#i' suffix") as excinfo:
        readers.read_flickr8k(root, "train")
    assert _lines(excinfo, "bad_record") == [2, 3]


def test_invalid_json_names_line_even_when_skipping(tmp_path):
    path = _write(tmp_path / "dataset_f8k.json", '{"images": [\n {"filename": "a.jpg",')
    for skip in (False, True):
        with pytest.raises(DataError, match="invalid JSON") as excinfo:
            readers.read_karpathy(path, "train", tmp_path, skip_bad_examples=skip)
        assert excinfo.value.kinds == {"invalid_json": 1}
        assert excinfo.value.line == 2


@pytest.mark.parametrize(
    "data, needle",
    [
        ([1, 2], "top level is not a JSON object"),
        ({"images": {"a": 1}}, "'images' is not a list"),
        ({"dataset": "f8k"}, "top level has no 'images' key"),
    ],
)
def test_karpathy_schema_is_fatal_even_when_skipping(tmp_path, data, needle):
    path = _write(tmp_path / "dataset_f8k.json", json.dumps(data))
    with pytest.raises(DataError, match=needle) as excinfo:
        readers.read_karpathy(path, "train", tmp_path, skip_bad_examples=True)
    assert excinfo.value.kinds == {"bad_schema": 1}
    assert excinfo.value.problems[0].fatal


def test_coco_schema_is_fatal_even_when_skipping(tmp_path):
    root = _coco(tmp_path, {"images": [], "annotations": {}})
    with pytest.raises(DataError, match="must be lists") as excinfo:
        readers.read_coco(root, "dev", skip_bad_examples=True)
    assert excinfo.value.kinds == {"bad_schema": 1}
    root = _coco(
        tmp_path / "mixed",
        {
            "images": [{"id": 1, "file_name": "a.jpg"}, {"id": "2", "file_name": "b"}],
            "annotations": [],
        },
    )
    with pytest.raises(DataError, match="mix numbers and strings"):
        readers.read_coco(root, "dev", skip_bad_examples=True)


def test_split_list_naming_unknown_images(tmp_path):
    root = _flickr(tmp_path, GOOD_TOKENS, "a.jpg\nzzz.jpg\nb.jpg\nyyy.jpg\n")
    list_path = root / "Flickr_8k.trainImages.txt"
    with pytest.raises(DataError, match="zzz.jpg has no captions") as excinfo:
        readers.read_flickr8k(root, "train")
    assert _lines(excinfo, "unknown_image") == [2, 4]
    _assert_listed(excinfo, list_path, 2)
    _assert_listed(excinfo, list_path, 4)


def test_coco_annotations_of_unknown_images_and_images_without_captions(tmp_path):
    root = _coco(
        tmp_path,
        {
            "images": [
                {"id": 1, "file_name": "a.jpg"},
                {"id": 2, "file_name": "b.jpg"},
                {"id": 3, "file_name": "c.jpg"},
            ],
            "annotations": [
                {"image_id": 1, "caption": "one"},
                {"image_id": 9, "caption": "nine"},
                {"image_id": 8, "caption": "eight"},
                {"image_id": 3, "caption": "three"},
            ],
        },
    )
    with pytest.raises(DataError) as excinfo:
        readers.read_coco(root, "dev")
    message = str(excinfo.value)
    assert "annotations[1]: unknown image id 9" in message
    assert "annotations[2]: unknown image id 8" in message
    assert "image id 2 (b.jpg) has no captions" in message
    assert excinfo.value.kinds == {"unknown_image": 2, "no_captions": 1}


def test_duplicate_caption_is_a_warning_unless_skipping(tmp_path):
    table = _write(
        tmp_path / "caps.csv",
        "image,caption\na.jpg,a dog\nb.jpg,a cat\na.jpg,a dog\na.jpg, a dog \n",
    )
    split = readers.read_caption_csv(table, tmp_path)
    assert split.captions == ["a dog", "a dog", "a dog", "a cat"]
    assert [(p.kind, p.line) for p in split.warnings] == [
        ("duplicate_caption", 4),
        ("duplicate_caption", 5),
    ]
    assert "same as line 2" in split.warnings[0].message
    assert split.skipped == {}
    skipped = readers.read_caption_csv(table, tmp_path, skip_bad_examples=True)
    assert skipped.captions == ["a dog", "a cat"]
    assert skipped.skipped == {"duplicate_caption": 2}
    assert skipped.warnings == ()


def test_duplicate_caption_listed_with_errors(tmp_path):
    table = _write(tmp_path / "c.csv", "image,caption\na.jpg,x\na.jpg,x\nb.jpg,\n")
    with pytest.raises(DataError) as excinfo:
        readers.read_caption_csv(table, tmp_path)
    assert excinfo.value.kinds == {"duplicate_caption": 1, "empty_caption": 1}


def test_duplicate_images(tmp_path):
    root = _flickr(tmp_path, GOOD_TOKENS, "a.jpg\nb.jpg\na.jpg\nb.jpg\n")
    with pytest.raises(DataError, match="already listed on line 1") as excinfo:
        readers.read_flickr8k(root, "train")
    assert _lines(excinfo, "duplicate_image") == [3, 4]

    path = _karpathy(tmp_path, [_kimage("a.jpg", "x"), _kimage("a.jpg", "y")])
    with pytest.raises(DataError, match=r"images\[1\]: image a.jpg already listed"):
        readers.read_karpathy(path, "train", tmp_path)

    root = _coco(
        tmp_path / "c",
        {
            "images": [
                {"id": 1, "file_name": "a.jpg"},
                {"id": 1, "file_name": "b.jpg"},
                {"id": 2, "file_name": "a.jpg"},
            ],
            "annotations": [{"image_id": 1, "caption": "x"}],
        },
    )
    with pytest.raises(DataError) as excinfo:
        readers.read_coco(root, "dev")
    message = str(excinfo.value)
    assert "images[1]: duplicate image id 1" in message
    assert "images[2]: file a.jpg already listed at images[0]" in message


@pytest.mark.parametrize(
    "name, reason",
    [
        ("../secret.jpg", "escapes the data root"),
        ("sub/../../secret.jpg", "escapes the data root"),
        ("..\\secret.jpg", "escapes the data root"),
        ("/etc/passwd", "absolute image path"),
        ("C:\\images\\a.jpg", "absolute image path"),
        ("\\\\server\\share\\a.jpg", "absolute image path"),
    ],
)
def test_unsafe_paths_rejected_in_every_reader(tmp_path, name, reason):
    table = _write(tmp_path / "caps.tsv", f"image\tcaption\na.jpg\tok\n{name}\tbad\n")
    with pytest.raises(DataError) as excinfo:
        readers.read_caption_csv(table, tmp_path)
    assert reason in str(excinfo.value)
    assert _lines(excinfo, "unsafe_path") == [3]
    kept = readers.read_caption_csv(table, tmp_path, skip_bad_examples=True)
    assert kept.image_paths == [str(tmp_path / "a.jpg")]

    root = _flickr(tmp_path, GOOD_TOKENS, f"a.jpg\n{name}\n")
    with pytest.raises(DataError, match=reason) as excinfo:
        readers.read_flickr8k(root, "train")
    assert _lines(excinfo, "unsafe_path") == [2]

    path = _karpathy(tmp_path, [_kimage(name, "x"), _kimage("a.jpg", "y")])
    with pytest.raises(DataError, match=reason):
        readers.read_karpathy(path, "train", tmp_path)

    coco = _coco(
        tmp_path,
        {
            "images": [{"id": 1, "file_name": name}],
            "annotations": [{"image_id": 1, "caption": "x"}],
        },
    )
    with pytest.raises(DataError, match=reason) as excinfo:
        readers.read_coco(coco, "dev")
    assert excinfo.value.kinds == {"unsafe_path": 1}


def test_karpathy_filepath_cannot_escape_either(tmp_path):
    path = _karpathy(
        tmp_path,
        [
            _kimage("a.jpg", "x", filepath="../outside"),
            _kimage("/etc/passwd", "y", filepath="val2014"),
            _kimage("../../b.jpg", "z", filepath="val2014"),
            _kimage("../c.jpg", "fine: stays in val2014/..", filepath="val2014"),
        ],
    )
    with pytest.raises(DataError) as excinfo:
        readers.read_karpathy(path, "train", tmp_path)
    assert excinfo.value.kinds == {"unsafe_path": 3}
    split = readers.read_karpathy(path, "train", tmp_path, skip_bad_examples=True)
    assert split.image_paths == [str(tmp_path / "c.jpg")]


def test_missing_images_name_the_line_that_lists_them(tmp_path):
    root = _flickr(tmp_path, GOOD_TOKENS + "c.jpg#0\tx\n", "a.jpg\nb.jpg\nc.jpg\n")
    (root / "images" / "a.jpg").unlink()
    (root / "images" / "c.jpg").unlink()
    list_path = root / "Flickr_8k.trainImages.txt"
    assert readers.read_flickr8k(root, "train").num_images == 3  # not checked
    with pytest.raises(DataError, match="2 of 3 image files missing") as excinfo:
        readers.read_flickr8k(root, "train", check_files=True)
    assert _lines(excinfo, "missing_image") == [1, 3]
    _assert_listed(excinfo, list_path, 3)
    assert "missing image file " + str(root / "images" / "c.jpg") in str(excinfo.value)
    split = readers.read_flickr8k(
        root, "train", check_files=True, skip_bad_examples=True
    )
    assert [os.path.basename(p) for p in split.image_paths] == ["b.jpg"]
    assert split.skipped == {"missing_image": 2}


def test_nonfinite_features(tmp_path):
    features = np.ones((3, 2), np.float32)
    features[1, 0] = np.nan
    features[2, 1] = np.inf
    np.save(tmp_path / "test_ims.npy", features)
    _write(tmp_path / "test_caps.txt", "a\nb\nc\nd\ne\nf\n")
    with pytest.raises(DataError) as excinfo:
        readers.read_precomp(tmp_path, "test")
    assert excinfo.value.kinds == {"nonfinite_features": 2}
    assert "feature row 1 holds NaN" in str(excinfo.value)
    split = readers.read_precomp(tmp_path, "test", skip_bad_examples=True)
    assert split.image_paths == ["test:0"] and split.features.shape == (1, 2)


def test_precomp_bad_caption_lines_keep_positions(tmp_path):
    np.save(tmp_path / "dev_ims.npy", np.arange(4, dtype=np.float32).reshape(2, 2))
    _write(tmp_path / "dev_caps.txt", b"a0\n \nb0\nb\xff1\n")
    with pytest.raises(DataError) as excinfo:
        readers.read_precomp(tmp_path, "dev")
    assert [(p.kind, p.line) for p in excinfo.value.problems] == [
        ("empty_caption", 2),
        ("invalid_utf8", 4),
    ]
    split = readers.read_precomp(tmp_path, "dev", skip_bad_examples=True)
    assert split.captions == ["a0", "b0"]
    assert split.caption_image_index.tolist() == [0, 1]
    np.testing.assert_array_equal(split.features, [[0, 1], [2, 3]])


@pytest.mark.parametrize(
    "make, needle",
    [
        (lambda p: p.write_bytes(b"not numpy"), "cannot load features"),
        (lambda p: np.save(p, np.array(["a", "b"])), "not numbers"),
        (lambda p: np.save(p, np.zeros(3)), "expected \\[N, F\\]"),
    ],
)
def test_unusable_features_are_fatal(tmp_path, make, needle):
    make(tmp_path / "test_ims.npy")
    _write(tmp_path / "test_caps.txt", "a\nb\n")
    with pytest.raises(DataError, match=needle) as excinfo:
        readers.read_precomp(tmp_path, "test", skip_bad_examples=True)
    assert excinfo.value.kinds == {"bad_features": 1}


def test_missing_files_are_fatal(tmp_path):
    _write(tmp_path / "test_caps.txt", "a\n")
    with pytest.raises(DataError, match="feature file not found") as excinfo:
        readers.read_precomp(tmp_path, "test", skip_bad_examples=True)
    assert excinfo.value.kinds == {"missing_file": 1}
    with pytest.raises(DataError, match="annotation file not found"):
        readers.read_coco(tmp_path, "train", skip_bad_examples=True)


# --------------------------------------------------------------------------
# Several problems, the message and the structured list.


def test_every_kind_in_one_file_reported_in_line_order(tmp_path):
    data = (
        b"image,caption\n"
        b"a.jpg,fine\n"  # 2
        b"b.jpg,\n"  # 3 empty
        b"../x.jpg,escape\n"  # 4 unsafe
        b"c.jpg,one,two\n"  # 5 columns
        b"d.jpg,caf\xc3\n"  # 6 UTF-8
        b",no image\n"  # 7 empty image name
        b"a.jpg,fine\n"  # 8 duplicate (warning)
    )
    table = _write(tmp_path / "caps.csv", data)
    with pytest.raises(DataError) as excinfo:
        readers.read_caption_csv(table, tmp_path)
    error = excinfo.value
    assert [(p.line, p.kind) for p in error.problems] == [
        (3, "empty_caption"),
        (4, "unsafe_path"),
        (5, "bad_columns"),
        (6, "invalid_utf8"),
        (7, "bad_record"),
        (8, "duplicate_caption"),
    ]
    assert all(p.path == str(table) for p in error.problems)
    assert (error.path, error.line) == (str(table), 3)
    message = str(error).splitlines()
    assert message[0].startswith(f"6 data problems in {table} (")
    for line in range(3, 9):
        assert any(f"{table}:{line}: " in m for m in message)


def test_message_is_capped_but_problems_are_complete(tmp_path):
    rows = [f"e{i}.jpg,\n" for i in range(70)] + [f"c{i}.jpg,x,y\n" for i in range(5)]
    table = _write(tmp_path / "caps.csv", "image,caption\n" + "".join(rows))
    with pytest.raises(DataError) as excinfo:
        readers.read_caption_csv(table, tmp_path)
    error = excinfo.value
    assert len(error.problems) == 75
    assert error.kinds == {"empty_caption": 70, "bad_columns": 5}
    listed = [m for m in str(error).splitlines() if f"{table}:" in m]
    # A flood of one kind does not hide the other kinds.
    assert len(listed) == MAX_LISTED_PER_KIND + 5
    assert "... and 60 more not listed (all 75 are on DataError.problems)" in str(error)
    assert MAX_LISTED_PER_KIND * 2 <= MAX_LISTED_PROBLEMS


def test_problems_across_files(tmp_path):
    root = _flickr(
        tmp_path, "a.jpg#0\t \nb.jpg#0\tok\n", "a.jpg\nb.jpg\nq.jpg\n../z.jpg\n"
    )
    with pytest.raises(DataError) as excinfo:
        readers.read_flickr8k(root, "train")
    error = excinfo.value
    assert [(os.path.basename(p.path), p.line, p.kind) for p in error.problems] == [
        ("Flickr8k.token.txt", 1, "empty_caption"),
        ("Flickr_8k.trainImages.txt", 3, "unknown_image"),
        ("Flickr_8k.trainImages.txt", 4, "unsafe_path"),
    ]
    assert str(error).startswith("3 data problems (")


def test_single_problem_message_keeps_the_old_format(tmp_path):
    table = _write(tmp_path / "c.csv", "image,caption\na.jpg,ok\nb.jpg,\n")
    with pytest.raises(DataError) as excinfo:
        readers.read_caption_csv(table, tmp_path)
    assert str(excinfo.value) == f"{table}:3: empty caption"
    assert excinfo.value.line == 3 and excinfo.value.path == str(table)


def test_data_error_survives_pickling():
    error = DataError.from_problems(
        [Problem("a.csv", 2, "empty caption", "empty_caption"), Problem("b", None, "x")]
    )
    again = pickle.loads(pickle.dumps(error))
    assert str(again) == str(error)
    assert again.problems == error.problems and again.line == 2
    plain = DataError("f.txt", "boom", 4)
    assert plain.problems == [Problem("f.txt", 4, "boom", "invalid")]
    assert str(pickle.loads(pickle.dumps(plain))) == "f.txt:4: boom"


# --------------------------------------------------------------------------
# skip_bad_examples.


def test_skip_returns_the_good_examples_and_counts(tmp_path):
    (tmp_path / "images").mkdir()
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        (tmp_path / "images" / name).write_bytes(b"x")
    _write(
        tmp_path / "captions.csv",
        b"image,caption,split\n"
        b"a.jpg,a one,train\n"
        b"a.jpg,,train\n"
        b"b.jpg,b one,train\n"
        b"/etc/passwd,root,train\n"
        b"c.jpg,c one,train,extra\n"
        b"missing.jpg,gone,train\n"
        b"b.jpg,b \xff,train\n"
        b"b.jpg,b one,train\n"
        b"c.jpg,,dev\n",  # another split's row: not validated
    )
    split = readers.read_split(
        "csv", tmp_path, "train", check_files=True, skip_bad_examples=True
    )
    assert [os.path.basename(p) for p in split.image_paths] == ["a.jpg", "b.jpg"]
    assert split.captions == ["a one", "b one"]
    assert split.skipped == {
        "empty_caption": 1,
        "unsafe_path": 1,
        "bad_columns": 1,
        "invalid_utf8": 1,
        "missing_image": 1,
        "duplicate_caption": 1,
    }
    assert [p.line for p in split.skipped_problems] == [3, 5, 6, 7, 8, 9]
    assert split.take_images(1).skipped == split.skipped
    with pytest.raises(DataError) as excinfo:
        readers.read_split("csv", tmp_path, "train", check_files=True)
    assert excinfo.value.kinds == split.skipped


def test_skip_with_nothing_left_is_fatal(tmp_path):
    table = _write(tmp_path / "c.csv", "image,caption\na.jpg,\nb.jpg,  \n")
    with pytest.raises(DataError, match="no usable examples left") as excinfo:
        readers.read_caption_csv(table, tmp_path, skip_bad_examples=True)
    assert excinfo.value.kinds == {"empty_caption": 2, "no_examples": 1}


def test_skip_drops_images_left_without_captions(tmp_path):
    root = _flickr(tmp_path, "a.jpg#0\t \nb.jpg#0\tok\n")
    split = readers.read_flickr8k(root, "train", skip_bad_examples=True)
    assert [os.path.basename(p) for p in split.image_paths] == ["b.jpg"]
    # a.jpg is not reported a second time as an image without captions.
    assert split.skipped == {"empty_caption": 1}


def test_skip_in_every_reader(tmp_path):
    path = _karpathy(
        tmp_path,
        [_kimage("a.jpg", "ok", ""), {"filename": "b.jpg"}, _kimage("c.jpg", "fine")],
    )
    split = readers.read_split("karpathy", path, "train", skip_bad_examples=True)
    assert split.captions == ["ok", "fine"]
    assert split.skipped == {"empty_caption": 1, "bad_record": 1}

    coco = _coco(
        tmp_path,
        {
            "images": [{"id": 2, "file_name": "b.jpg"}, {"id": 1, "file_name": "a"}],
            "annotations": [
                {"image_id": 1, "caption": "one"},
                {"image_id": 2, "caption": " "},
                {"image_id": 3, "caption": "three"},
            ],
        },
    )
    split = readers.read_split("coco", coco, "dev", skip_bad_examples=True)
    assert split.captions == ["one"]
    assert split.skipped == {"empty_caption": 1, "unknown_image": 1}

    pdir = tmp_path / "precomp"
    pdir.mkdir()
    np.save(pdir / "train_ims.npy", np.zeros((2, 3)))
    _write(pdir / "train_caps.txt", "a\n\nb\nc\n")
    split = readers.read_split(
        "precomp", pdir, "train", check_files=True, skip_bad_examples=True
    )
    assert split.captions == ["a", "b", "c"]
    assert split.skipped == {"empty_caption": 1}


def test_captioned_split_stays_backward_compatible():
    split = CaptionedSplit("t", ["a", "b"], ["x", "y"], np.array([0, 1]), None)
    assert split.skipped == {} and split.skipped_problems == () and split.warnings == ()
    by_keyword = CaptionedSplit(
        name="t", image_paths=["a"], captions=["x"], caption_image_index=[0]
    )
    assert by_keyword.skipped == {}
    assert group_captions("t", [("a", "x")]).skipped == {}


# --------------------------------------------------------------------------
# Captions-per-image protocol.


def _split_with_counts(counts: list[int]) -> CaptionedSplit:
    pairs = [
        (f"/d/img{i}.jpg", f"c{j}") for i, n in enumerate(counts) for j in range(n)
    ]
    return group_captions("dev", pairs)


def test_protocol_check_for_evaluation_names_every_image():
    assert validation.check_captions_per_image(_split_with_counts([5, 5])) == []
    split = _split_with_counts([5, 4, 5, 6])
    with pytest.raises(DataError) as excinfo:
        validation.check_captions_per_image(split, k=5, purpose="evaluation")
    error = excinfo.value
    assert [(p.path, p.kind) for p in error.problems] == [
        ("/d/img1.jpg", "caption_count"),
        ("/d/img3.jpg", "caption_count"),
    ]
    message = str(error)
    assert "2 of 4 images in split 'dev' do not have exactly 5 captions" in message
    assert "/d/img1.jpg: dev split: image has 4 captions" in message
    with pytest.raises(DataError) as excinfo:
        validation.check_captions_per_image(split, 5, "evaluation", allow_more=True)
    assert [p.path for p in excinfo.value.problems] == ["/d/img1.jpg"]


def test_protocol_check_for_training_returns_warnings():
    split = _split_with_counts([5, 4, 5, 6, 4])
    warnings = validation.check_captions_per_image(split, k=5, purpose="training")
    assert warnings == [
        "dev: 2 of 5 images have 4 captions instead of exactly 5 "
        "(e.g. img1.jpg, img4.jpg)",
        "dev: 1 of 5 images have 6 captions instead of exactly 5 (e.g. img3.jpg)",
    ]
    assert (
        validation.check_captions_per_image(_split_with_counts([5]), 5, "training")
        == []
    )
    with pytest.raises(ValueError, match="purpose"):
        validation.check_captions_per_image(split, 5, "testing")


def test_every_kind_is_documented():
    kinds = {
        value
        for name, value in vars(validation).items()
        if name.isupper() and isinstance(value, str)
    }
    assert kinds == set(validation.KINDS)
    assert validation.FATAL_KINDS <= kinds and validation.WARNING_KINDS <= kinds
