"""Property tests: malformed input gives a valid split or a `DataError`, nothing else.

Each reader is fed randomly malformed files (random bytes, lines built from
valid and broken fragments, invalid UTF-8, random CSV columns and quoting,
truncated or schema-breaking JSON, odd feature arrays) in both the default
and the ``skip_bad_examples`` mode. The outcome must be either a well-formed
`CaptionedSplit` or a `DataError` whose ``problems`` are all `Problem`s;
any other exception fails. Bounded and derandomized, so the run is
deterministic.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Optional

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vse_tf.data import readers
from vse_tf.data.split import CaptionedSplit, DataError, Problem

SETTINGS = settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

IMAGES = ("a.jpg", "b.jpg", "sub/c.jpg")
NEWLINES = st.sampled_from([b"\n", b"\r\n", b"\r"])
BAD_BYTES = st.sampled_from(
    [b"\xff", b"\xfe\xff", b"\xc3", b"\xc3(", b"\xe2\x82", b"\xed\xa0\x80", b"\x80"]
)


def _mostly(good: st.SearchStrategy, bad: st.SearchStrategy) -> st.SearchStrategy:
    """``good`` seven times in eight, else ``bad``.

    (``st.one_of`` does not weight repeated branches; ``sampled_from`` does.)
    """
    return st.sampled_from([True] * 7 + [False]).flatmap(lambda ok: good if ok else bad)


NAMES = _mostly(
    st.sampled_from(IMAGES),
    st.sampled_from(
        [
            "zzz.jpg",
            "../up.jpg",
            "/etc/passwd",
            "C:\\x.jpg",
            "sub/../a.jpg",
            "",
            " ",
            "a\x00.jpg",
        ]
    ),
)
CAPTIONS = _mostly(
    st.sampled_from(["A dog runs .", "a cat", 'say "hi"', "x,y", "caf\u00e9", "a dog"]),
    st.sampled_from(["", "   ", "\t", "\ud800"]) | st.text(max_size=8),
)
SPLITS = _mostly(st.sampled_from(["train", "train", "dev"]), st.text(max_size=3))


def _encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def _check(read: Callable[[], CaptionedSplit]) -> None:
    """Runs ``read``: a well-formed split or a `DataError` report, else fails."""
    try:
        split = read()
    except DataError as error:
        assert error.problems
        assert all(isinstance(p, Problem) for p in error.problems)
        assert all(isinstance(p.path, str) and p.message for p in error.problems)
        assert str(error)
        return
    assert isinstance(split, CaptionedSplit)
    assert split.num_images > 0 and split.num_captions > 0
    assert all(isinstance(c, str) and c and c == c.strip() for c in split.captions)
    assert all(isinstance(p, str) for p in split.image_paths)
    assert sum(split.skipped.values()) == len(split.skipped_problems)
    if split.features is not None:
        assert np.isfinite(split.features).all()
        assert split.features.dtype == np.float32


@st.composite
def text_files(draw, lines: st.SearchStrategy[bytes], bom: bool = True) -> bytes:
    """Lines from ``lines``; in half the files also garbage lines and bytes.

    With ``bom``, sometimes a UTF-8 byte-order mark first.
    """
    if draw(st.booleans()):
        lines = _mostly(
            lines,
            st.one_of(
                lines.flatmap(lambda f: BAD_BYTES.map(lambda b: f + b)),
                st.text(max_size=20).map(_encode),
                st.binary(max_size=12),
            ),
        )
    chosen = draw(st.lists(lines, min_size=1, max_size=12))
    newline = draw(NEWLINES)
    data = newline.join(chosen) + (newline if draw(st.booleans()) else b"")
    if bom and draw(st.booleans()):
        data = b"\xef\xbb\xbf" + data
    return data


TOKEN_LINES = _mostly(
    st.builds(
        lambda name, index, caption: _encode(f"{name}#{index}\t{caption}"),
        NAMES,
        st.sampled_from(["0", "1", "2", "x"]),
        CAPTIONS,
    ),
    st.sampled_from([b"a.jpg\tno index", b"a.jpg#0\tone\ttwo", b"", b"#0\tx"]),
)
LIST_LINES = NAMES.map(_encode)
QUOTES = _mostly(st.sampled_from(["", "", "q"]), st.sampled_from(["open", "junk"]))


def _field(text: str, quote: str) -> str:
    return {"": text, "q": f'"{text}"', "open": f'"{text}', "junk": f'"{text}"z'}[quote]


@st.composite
def csv_rows(draw, columns: tuple[str, ...], delimiter: str) -> bytes:
    """One row for ``columns``; sometimes a column too many or too few."""
    values = {"image": draw(NAMES), "caption": draw(CAPTIONS), "split": draw(SPLITS)}
    fields = [values.get(c, "x") for c in columns]
    shape = draw(st.sampled_from(["ok", "ok", "ok", "ok", "extra", "short"]))
    if shape == "extra":
        fields.append(draw(CAPTIONS))
    elif shape == "short" and fields:
        fields.pop()
    return _encode(delimiter.join(_field(f, draw(QUOTES)) for f in fields))


LAYOUTS = [
    ("image,caption", ",", ("image", "caption")),
    ("image,caption,split", ",", ("image", "caption", "split")),
    ("split\timage\tcaption", "\t", ("split", "image", "caption")),
    ("caption;image", ";", ("caption", "image")),
]
BAD_HEADERS = st.sampled_from(
    [b"img,text", b"", b'"image,caption', b"image,capt\xffion", b"image caption"]
)


@st.composite
def caption_tables(draw) -> tuple[bytes, str, Optional[str]]:
    """A CSV/TSV table (a layout's header or a bad one, and its rows), a file
    suffix that suits it and a split to ask for."""
    header, delimiter, columns = draw(st.sampled_from(LAYOUTS))
    rows = draw(text_files(csv_rows(columns, delimiter), bom=False))
    first = draw(_mostly(st.just(header.encode()), BAD_HEADERS))
    if draw(st.booleans()):
        first = b"\xef\xbb\xbf" + first
    suffixes = [".tsv", ".txt"] if delimiter == "\t" else [".csv", ".txt"]
    suffix = draw(_mostly(st.sampled_from(suffixes), st.just(".tsv")))
    splits = [None, "train"] if "split" in columns else [None]
    split = draw(_mostly(st.sampled_from(splits), st.just("dev")))
    return first + b"\n" + rows, suffix, split


def _images_dir(root: Path, present: list[bool]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for name, keep in zip(IMAGES, present):
        if keep:
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(b"jpg")


@SETTINGS
@given(
    captions=text_files(TOKEN_LINES),
    as_csv=st.booleans(),
    table=text_files(csv_rows(("image", "caption"), ","), bom=False),
    split_list=text_files(LIST_LINES),
    present=st.lists(st.booleans(), min_size=3, max_size=3),
    check_files=st.booleans(),
    skip=st.booleans(),
)
def test_flickr8k_never_crashes(
    captions, as_csv, table, split_list, present, check_files, skip
):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _images_dir(root / "images", present)
        if as_csv:
            (root / "captions.txt").write_bytes(b"image,caption\n" + table)
        else:
            (root / "Flickr8k.token.txt").write_bytes(captions)
        (root / "Flickr_8k.trainImages.txt").write_bytes(split_list)
        _check(
            lambda: readers.read_flickr8k(
                root, "train", check_files=check_files, skip_bad_examples=skip
            )
        )


@SETTINGS
@given(
    table=caption_tables(),
    present=st.lists(st.booleans(), min_size=3, max_size=3),
    check_files=st.booleans(),
    skip=st.booleans(),
)
def test_caption_csv_never_crashes(table, present, check_files, skip):
    data, suffix, split = table
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _images_dir(root, present)
        table = root / f"captions{suffix}"
        table.write_bytes(data)
        _check(
            lambda: readers.read_caption_csv(
                table,
                root,
                split=split,
                check_files=check_files,
                skip_bad_examples=skip,
            )
        )
        if suffix != ".txt":
            _check(
                lambda: readers.read_split(
                    "csv", root, split, check_files=check_files, skip_bad_examples=skip
                )
            )


@SETTINGS
@given(data=st.binary(max_size=300), skip=st.booleans())
def test_every_reader_survives_random_bytes(data, skip):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "images").mkdir()
        for name in (
            "Flickr8k.token.txt",
            "Flickr_8k.trainImages.txt",
            "captions.csv",
            "dataset_x.json",
            "train_caps.txt",
            "train_ims.npy",
        ):
            (root / name).write_bytes(data)
        (root / "annotations").mkdir()
        (root / "annotations" / "captions_train2014.json").write_bytes(data)
        for dataset in readers.DATASETS:
            _check(
                lambda dataset=dataset: readers.read_split(
                    dataset, root, "train", skip_bad_examples=skip
                )
            )


SCHEMA_KEYS = st.sampled_from(
    [
        "images",
        "annotations",
        "id",
        "image_id",
        "file_name",
        "filename",
        "filepath",
        "split",
        "sentences",
        "raw",
        "caption",
    ]
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.floats(allow_nan=True),
    NAMES,
    CAPTIONS,
    st.sampled_from(["train", "val", "test", "restval", "\ud800"]),
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(SCHEMA_KEYS, children, max_size=5)
    ),
    max_leaves=25,
)


def _karpathy_doc(draw) -> object:
    image = st.fixed_dictionaries(
        {
            "filename": _mostly(NAMES, JSON_VALUES),
            "split": _mostly(
                st.sampled_from(["train", "restval", "val"]), st.just("bogus")
            ),
            "sentences": _mostly(
                st.lists(
                    st.fixed_dictionaries({"raw": _mostly(CAPTIONS, JSON_VALUES)}),
                    max_size=3,
                ),
                JSON_VALUES,
            ),
        },
        optional={
            "filepath": _mostly(
                st.sampled_from(["", "."]), st.sampled_from(["..", "/a"])
            )
        },
    )
    return {
        "images": draw(st.lists(_mostly(image, JSON_VALUES), min_size=1, max_size=5))
    }


def _coco_doc(draw) -> object:
    ids = _mostly(st.integers(0, 4), st.sampled_from(["1", True, 1.5, None, [1]]))
    return {
        "images": draw(
            st.lists(
                _mostly(
                    st.fixed_dictionaries(
                        {"id": ids, "file_name": _mostly(NAMES, JSON_VALUES)}
                    ),
                    JSON_VALUES,
                ),
                min_size=1,
                max_size=5,
            )
        ),
        "annotations": draw(
            st.lists(
                _mostly(
                    st.fixed_dictionaries(
                        {"image_id": ids, "caption": _mostly(CAPTIONS, JSON_VALUES)}
                    ),
                    JSON_VALUES,
                ),
                max_size=8,
            )
        ),
    }


@st.composite
def json_files(draw, kind: str) -> bytes:
    """A near-valid document, a random one, truncated, or with bad bytes."""
    shape = draw(_mostly(st.just("schema"), st.sampled_from(["random", "keys"])))
    if shape == "schema":
        doc = _karpathy_doc(draw) if kind == "karpathy" else _coco_doc(draw)
    elif shape == "random":
        doc = draw(JSON_VALUES)
    else:
        doc = draw(st.dictionaries(SCHEMA_KEYS, JSON_VALUES, max_size=3))
    data = json.dumps(doc, indent=draw(st.sampled_from([None, 1]))).encode()
    mangle = draw(
        _mostly(st.just("none"), st.sampled_from(["truncate", "bad_byte", "nest"]))
    )
    if mangle == "truncate" and data:
        data = data[: draw(st.integers(0, len(data) - 1))]
    elif mangle == "bad_byte":
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(BAD_BYTES) + data[at:]
    elif mangle == "nest":
        data = b"[" * 100_000 + b"]" * 100_000
    return data


@SETTINGS
@given(
    data=json_files("karpathy"),
    split=st.sampled_from(["train", "dev", "test"]),
    check_files=st.booleans(),
    skip=st.booleans(),
)
def test_karpathy_never_crashes(data, split, check_files, skip):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _images_dir(root, [True, True, True])
        (root / "dataset_f8k.json").write_bytes(data)
        _check(
            lambda: readers.read_split(
                "karpathy", root, split, check_files=check_files, skip_bad_examples=skip
            )
        )


@SETTINGS
@given(data=json_files("coco"), check_files=st.booleans(), skip=st.booleans())
def test_coco_never_crashes(data, check_files, skip):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _images_dir(root / "val2014", [True, False, True])
        (root / "annotations").mkdir()
        (root / "annotations" / "captions_val2014.json").write_bytes(data)
        _check(
            lambda: readers.read_coco(
                root, "dev", check_files=check_files, skip_bad_examples=skip
            )
        )


@st.composite
def precomp_files(draw) -> tuple[bytes, object]:
    """Caption lines and a feature file: an array of related or random shape
    and dtype (maybe non-finite), an ``.npz``, a truncated ``.npy`` or bytes."""
    lines = draw(st.lists(CAPTIONS.map(_encode), max_size=12))
    captions = draw(text_files(st.sampled_from(lines or [b"x"])))
    count = len(lines)
    rows = draw(
        _mostly(
            st.sampled_from(
                [r for r in (1, 2, 3, count) if r and count % r == 0] or [0]
            ),
            st.integers(0, 7),
        )
    )
    shape = draw(
        _mostly(st.just((rows, 3)), st.sampled_from([(rows,), (rows, 2, 2), ()]))
    )
    dtype = draw(
        _mostly(
            st.just("float32"), st.sampled_from(["float64", "int8", "bool", "U2", "c8"])
        )
    )
    array = np.zeros(shape, dtype=dtype)
    if array.size and dtype.startswith("float") and draw(st.booleans()):
        array.flat[draw(st.integers(0, array.size - 1))] = draw(
            st.sampled_from([np.nan, np.inf, -np.inf, 1e38])
        )
    form = draw(_mostly(st.just("npy"), st.sampled_from(["bytes", "npz", "cut"])))
    if form == "bytes":
        return captions, draw(st.binary(max_size=64))
    return captions, (form, array)


@SETTINGS
@given(files=precomp_files(), per_image=st.integers(0, 3), skip=st.booleans())
def test_precomp_never_crashes(files, per_image, skip):
    captions, features = files
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "dev_caps.txt").write_bytes(captions)
        ims = root / "dev_ims.npy"
        if isinstance(features, bytes):
            ims.write_bytes(features)
        elif features[0] == "npz":
            with open(ims, "wb") as f:
                np.savez(f, x=features[1])
        else:
            np.save(ims, features[1])
            if features[0] == "cut":
                ims.write_bytes(ims.read_bytes()[: max(1, os.path.getsize(ims) // 2)])
        _check(
            lambda: readers.read_precomp(
                root, "dev", captions_per_image=per_image, skip_bad_examples=skip
            )
        )
