"""Readers that turn the common caption-dataset layouts into `CaptionedSplit`s.

Every reader returns captions grouped by image in image order, with image
paths made absolute by joining them onto the image folder, and raises
`DataError` (naming the file and, where known, the 1-based line) on malformed
input. Supported layouts:

* Flickr8k (`read_flickr8k`): ``Flickr8k.token.txt`` or ``captions.txt`` plus
  the ``Flickr_8k.{train,dev,test}Images.txt`` split lists.
* Karpathy JSON (`read_karpathy`): ``dataset_{coco,flickr8k,flickr30k}.json``.
* MS-COCO (`read_coco`): ``annotations/captions_{train,val}2014.json``.
* VSE++ precomputed features (`read_precomp`): ``{split}_ims.npy`` plus
  ``{split}_caps.txt``.
* A plain CSV/TSV with ``image`` and ``caption`` columns (`read_caption_csv`).

`read_split` dispatches on a dataset name.
"""

from __future__ import annotations

import csv
import glob
import json
import os
import re
from typing import Any, Optional, Union

import numpy as np

from vse_tf.data.split import CaptionedSplit, DataError, group_captions

PathLike = Union[str, "os.PathLike[str]"]

FLICKR8K_SPLITS = ("train", "dev", "test")
FLICKR8K_IMAGE_DIRS = ("images", "Images", "Flicker8k_Dataset", "Flickr8k_Dataset")
KARPATHY_SPLITS = {
    "train": ("train", "restval"),
    "dev": ("val",),
    "val": ("val",),
    "test": ("test",),
}
KARPATHY_FILE_SPLITS = ("train", "val", "test", "restval")
DATASETS = ("flickr8k", "karpathy", "coco", "precomp", "csv")
_MAX_LISTED_MISSING = 10
_TOKEN_SUFFIX = re.compile(r"^(?P<image>.+)#(?P<index>\d+)$")


# --------------------------------------------------------------------------
# Shared helpers.


def _image_path(root: PathLike, *parts: str) -> str:
    """The absolute path of an image under ``root``."""
    return os.path.abspath(os.path.join(os.fspath(root), *parts))


def _check_files(split: CaptionedSplit, source: PathLike) -> None:
    """Raises `DataError` when any image file of ``split`` is missing.

    Args:
        split: The split whose ``image_paths`` are checked.
        source: The file or folder the error is attributed to.

    Raises:
        DataError: Listing up to 10 missing files and the total count.
    """
    missing = [p for p in split.image_paths if not os.path.isfile(p)]
    if missing:
        listed = ", ".join(missing[:_MAX_LISTED_MISSING])
        more = "" if len(missing) <= _MAX_LISTED_MISSING else ", ..."
        raise DataError(
            source,
            f"{len(missing)} of {split.num_images} image files missing: {listed}{more}",
        )


def _load_json(path: PathLike) -> Any:
    """Parses a JSON file, turning decode errors into `DataError`."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(path, f"invalid JSON: {e.msg}", e.lineno) from e


def _require(path: PathLike, record: Any, key: str, where: str) -> Any:
    """``record[key]``, or `DataError` when ``record`` lacks it."""
    if not isinstance(record, dict) or key not in record:
        raise DataError(path, f"{where} has no {key!r} key")
    return record[key]


def _caption_text(path: PathLike, raw: Any, where: str, line: Optional[int]) -> str:
    """A stripped caption; `DataError` when it is not a non-empty string."""
    if not isinstance(raw, str):
        raise DataError(path, f"{where}: caption is not a string: {raw!r}", line)
    text = raw.strip()
    if not text:
        raise DataError(path, f"{where}: empty caption", line)
    return text


def _from_ordered(
    name: str,
    source: PathLike,
    images: list[str],
    captions: list[list[str]],
    features: Optional[np.ndarray] = None,
) -> CaptionedSplit:
    """Builds a split from images and their caption lists, in that order.

    Raises:
        DataError: (attributed to ``source``) when an image repeats.
    """
    seen: set[str] = set()
    pairs: list[tuple[str, str]] = []
    for image, caps in zip(images, captions, strict=True):
        if image in seen:
            raise DataError(source, f"image {image} appears twice")
        seen.add(image)
        pairs.extend((image, c) for c in caps)
    return group_captions(name, pairs, image_order=images, features=features)


# --------------------------------------------------------------------------
# Flickr8k.


def _read_flickr_token(path: str) -> dict[str, list[str]]:
    """Parses ``Flickr8k.token.txt`` (``name.jpg#i<TAB>caption`` lines)."""
    by_image: dict[str, list[str]] = {}
    with open(path, encoding="utf-8-sig") as f:
        for line_no, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) != 2:
                raise DataError(
                    path,
                    f"expected 2 tab-separated columns (name.jpg#i, caption), "
                    f"got {len(fields)}",
                    line_no,
                )
            match = _TOKEN_SUFFIX.match(fields[0].strip())
            if match is None:
                raise DataError(
                    path, f"bad '#i' suffix in image name {fields[0]!r}", line_no
                )
            caption = _caption_text(path, fields[1], "token line", line_no)
            by_image.setdefault(match["image"], []).append(caption)
    return by_image


def _read_flickr_csv(path: str) -> dict[str, list[str]]:
    """Parses a Kaggle-style ``captions.txt`` (CSV with ``image,caption``)."""
    by_image: dict[str, list[str]] = {}
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or [h.strip() for h in header] != ["image", "caption"]:
            raise DataError(path, f"expected header 'image,caption', got {header}", 1)
        for row in reader:
            if not row:
                continue
            if len(row) != 2:
                raise DataError(
                    path,
                    f"expected 2 columns (image, caption), got {len(row)}",
                    reader.line_num,
                )
            image = row[0].strip()
            if not image:
                raise DataError(path, "empty image name", reader.line_num)
            caption = _caption_text(path, row[1], "caption row", reader.line_num)
            by_image.setdefault(image, []).append(caption)
    return by_image


def _read_name_list(path: str) -> list[tuple[int, str]]:
    """``(line, name)`` for each non-blank line of a split list."""
    with open(path, encoding="utf-8-sig") as f:
        return [
            (line_no, line.strip())
            for line_no, line in enumerate(f, start=1)
            if line.strip()
        ]


def read_flickr8k(
    data_dir: PathLike, split: str, check_files: bool = False
) -> CaptionedSplit:
    """Reads one Flickr8k split.

    Captions come from ``Flickr8k.token.txt`` (preferred) or ``captions.txt``;
    the split list ``Flickr_8k.{split}Images.txt`` sets the image order. Images
    live in the first of ``images/``, ``Images/``, ``Flicker8k_Dataset/`` and
    ``Flickr8k_Dataset/`` that exists.

    Args:
        data_dir: The Flickr8k folder.
        split: ``train``, ``dev`` or ``test``.
        check_files: Whether to verify that every image file exists.

    Returns:
        The split; image paths are absolute.

    Raises:
        ValueError: For an unknown ``split``.
        DataError: For missing or malformed files, a listed image without
            captions, or (with ``check_files``) missing images.
    """
    if split not in FLICKR8K_SPLITS:
        raise ValueError(
            f"unknown Flickr8k split {split!r}; choose from {FLICKR8K_SPLITS}"
        )
    data_dir = os.fspath(data_dir)
    token_path = os.path.join(data_dir, "Flickr8k.token.txt")
    csv_path = os.path.join(data_dir, "captions.txt")
    if os.path.isfile(token_path):
        caption_path, by_image = token_path, _read_flickr_token(token_path)
    elif os.path.isfile(csv_path):
        caption_path, by_image = csv_path, _read_flickr_csv(csv_path)
    else:
        raise DataError(
            data_dir, "no caption file (Flickr8k.token.txt or captions.txt)"
        )

    list_path = os.path.join(data_dir, f"Flickr_8k.{split}Images.txt")
    if not os.path.isfile(list_path):
        raise DataError(list_path, "split list not found")
    image_dir = next(
        (
            os.path.join(data_dir, d)
            for d in FLICKR8K_IMAGE_DIRS
            if os.path.isdir(os.path.join(data_dir, d))
        ),
        None,
    )
    if image_dir is None:
        raise DataError(
            data_dir, f"no image folder; looked for {', '.join(FLICKR8K_IMAGE_DIRS)}"
        )

    images: list[str] = []
    captions: list[list[str]] = []
    seen: dict[str, int] = {}
    for line_no, name in _read_name_list(list_path):
        if name in seen:
            raise DataError(
                list_path, f"image {name} already listed on line {seen[name]}", line_no
            )
        seen[name] = line_no
        caps = by_image.get(name)
        if not caps:
            raise DataError(
                list_path, f"image {name} has no captions in {caption_path}", line_no
            )
        images.append(_image_path(image_dir, name))
        captions.append(caps)
    if not images:
        raise DataError(list_path, "split list is empty")
    result = _from_ordered(split, list_path, images, captions)
    if check_files:
        _check_files(result, image_dir)
    return result


# --------------------------------------------------------------------------
# Karpathy JSON.


def read_karpathy(
    json_path: PathLike,
    split: str,
    image_root: PathLike,
    check_files: bool = False,
) -> CaptionedSplit:
    """Reads one split of a Karpathy ``dataset_*.json`` file.

    Args:
        json_path: The Karpathy JSON file.
        split: ``train`` (Karpathy ``train`` plus ``restval``), ``dev`` (or
            ``val``; Karpathy ``val``) or ``test``.
        image_root: Folder the image paths are joined onto, as
            ``image_root/filepath/filename`` (``filepath`` may be absent).
        check_files: Whether to verify that every image file exists.

    Returns:
        The split, images in file order.

    Raises:
        ValueError: For an unknown ``split``.
        DataError: For invalid JSON, missing keys, unknown split names in the
            file, images without captions, empty captions, repeated images or
            (with ``check_files``) missing images.
    """
    if split not in KARPATHY_SPLITS:
        raise ValueError(
            f"unknown Karpathy split {split!r}; choose from {tuple(KARPATHY_SPLITS)}"
        )
    wanted = KARPATHY_SPLITS[split]
    data = _load_json(json_path)
    entries = _require(json_path, data, "images", "top level")
    if not isinstance(entries, list):
        raise DataError(json_path, "'images' is not a list")

    images: list[str] = []
    captions: list[list[str]] = []
    for i, entry in enumerate(entries):
        where = f"images[{i}]"
        file_split = _require(json_path, entry, "split", where)
        if file_split not in KARPATHY_FILE_SPLITS:
            raise DataError(
                json_path,
                f"{where}: unknown split name {file_split!r}; "
                f"expected one of {KARPATHY_FILE_SPLITS}",
            )
        filename = _require(json_path, entry, "filename", where)
        sentences = _require(json_path, entry, "sentences", where)
        if file_split not in wanted:
            continue
        if not isinstance(sentences, list) or not sentences:
            raise DataError(json_path, f"{where} ({filename}): no sentences")
        caps = [
            _caption_text(
                json_path,
                _require(json_path, s, "raw", f"{where}.sentences[{j}]"),
                f"{where}.sentences[{j}]",
                None,
            )
            for j, s in enumerate(sentences)
        ]
        parts = [str(entry["filepath"])] if entry.get("filepath") else []
        images.append(_image_path(image_root, *parts, str(filename)))
        captions.append(caps)
    if not images:
        raise DataError(json_path, f"no images in split {split!r} ({wanted})")
    result = _from_ordered(split, json_path, images, captions)
    if check_files:
        _check_files(result, image_root)
    return result


# --------------------------------------------------------------------------
# MS-COCO.


def _coco_annotation_file(data_dir: str, split: str) -> tuple[str, str]:
    """``(annotation json, image folder name)`` for a COCO split name."""
    ann_dir = os.path.join(data_dir, "annotations")
    aliases = {"train": "train2014", "dev": "val2014", "val": "val2014"}
    tag = aliases.get(split, split)
    if split == "test":
        found = sorted(glob.glob(os.path.join(ann_dir, "captions_test*.json")))
        if not found:
            raise DataError(ann_dir, "no captions_test*.json for the test split")
        path = found[0]
        tag = os.path.basename(path)[len("captions_") : -len(".json")]
        return path, tag
    path = os.path.join(ann_dir, f"captions_{tag}.json")
    if not os.path.isfile(path):
        if split in aliases or split in ("train2014", "val2014"):
            raise DataError(path, "annotation file not found")
        raise ValueError(
            f"unknown COCO split {split!r}; choose from train, dev, val, test, "
            "train2014, val2014"
        )
    return path, tag


def read_coco(
    data_dir: PathLike, split: str, check_files: bool = False
) -> CaptionedSplit:
    """Reads one split of MS-COCO from its official caption annotations.

    Args:
        data_dir: Folder holding ``annotations/captions_*.json`` and the image
            folders (``train2014/``, ``val2014/``...).
        split: ``train`` (or ``train2014``), ``dev``/``val`` (or ``val2014``)
            or ``test`` (needs ``annotations/captions_test*.json``).
        check_files: Whether to verify that every image file exists.

    Returns:
        The split, images sorted by COCO image id, captions of each image in
        annotation order.

    Raises:
        ValueError: For an unknown ``split``.
        DataError: For missing or malformed annotation files, annotations of
            unknown images, images without captions or (with
            ``check_files``) missing images.
    """
    data_dir = os.fspath(data_dir)
    path, tag = _coco_annotation_file(data_dir, split)
    data = _load_json(path)
    entries = _require(path, data, "images", "top level")
    annotations = _require(path, data, "annotations", "top level")
    if not isinstance(entries, list) or not isinstance(annotations, list):
        raise DataError(path, "'images' and 'annotations' must be lists")

    file_names: dict[Any, str] = {}
    for i, entry in enumerate(entries):
        image_id = _require(path, entry, "id", f"images[{i}]")
        file_name = _require(path, entry, "file_name", f"images[{i}]")
        if image_id in file_names:
            raise DataError(path, f"images[{i}]: duplicate image id {image_id}")
        file_names[image_id] = str(file_name)

    by_id: dict[Any, list[str]] = {}
    for k, ann in enumerate(annotations):
        where = f"annotations[{k}]"
        image_id = _require(path, ann, "image_id", where)
        caption = _caption_text(
            path, _require(path, ann, "caption", where), where, None
        )
        if image_id not in file_names:
            raise DataError(path, f"{where}: unknown image id {image_id}")
        by_id.setdefault(image_id, []).append(caption)

    try:
        ids = sorted(file_names)
    except TypeError as e:
        raise DataError(path, f"image ids are not comparable: {e}") from e
    image_dir = os.path.join(data_dir, tag)
    images: list[str] = []
    captions: list[list[str]] = []
    for image_id in ids:
        caps = by_id.get(image_id)
        if not caps:
            raise DataError(
                path, f"image id {image_id} ({file_names[image_id]}) has no captions"
            )
        images.append(_image_path(image_dir, file_names[image_id]))
        captions.append(caps)
    if not images:
        raise DataError(path, "no images")
    result = _from_ordered(split, path, images, captions)
    if check_files:
        _check_files(result, image_dir)
    return result


# --------------------------------------------------------------------------
# VSE++ precomputed features.


def _precomp_prefix(data_dir: str, split: str) -> str:
    """The file prefix (``dev`` or ``val`` for the dev split) that exists."""
    candidates = {"dev": ("dev", "val"), "val": ("val", "dev")}.get(split, (split,))
    for prefix in candidates:
        if os.path.isfile(os.path.join(data_dir, f"{prefix}_caps.txt")):
            return prefix
    raise DataError(
        os.path.join(data_dir, f"{candidates[0]}_caps.txt"),
        f"caption file not found (tried {', '.join(candidates)})",
    )


def read_precomp(
    data_dir: PathLike, split: str, captions_per_image: int = 5
) -> CaptionedSplit:
    """Reads a VSE++ ``*_precomp`` split (precomputed image features).

    ``{split}_ims.npy`` holds either one feature row per image (then every
    image has ``captions / rows`` captions, which must be a whole number) or
    one row per caption, as in Kiros et al. (then only every
    ``captions_per_image``-th row is kept).

    Args:
        data_dir: Folder holding ``{split}_ims.npy`` and ``{split}_caps.txt``.
        split: Split name; ``dev`` also finds ``val_*`` files (and vice versa).
        captions_per_image: Captions per image, used only when the feature
            file has one row per caption.

    Returns:
        The split with ``features`` set; image keys are ``"{split}:{i}"``.

    Raises:
        DataError: For missing files, empty caption lines or inconsistent
            row and caption counts.
    """
    data_dir = os.fspath(data_dir)
    prefix = _precomp_prefix(data_dir, split)
    caps_path = os.path.join(data_dir, f"{prefix}_caps.txt")
    ims_path = os.path.join(data_dir, f"{prefix}_ims.npy")
    if not os.path.isfile(ims_path):
        raise DataError(ims_path, "feature file not found")

    with open(caps_path, encoding="utf-8-sig") as f:
        lines = f.read().splitlines()
    captions = [
        _caption_text(caps_path, c, "caption", i + 1) for i, c in enumerate(lines)
    ]
    if not captions:
        raise DataError(caps_path, "no captions")
    try:
        features = np.load(ims_path)
    except (ValueError, OSError) as e:
        raise DataError(ims_path, f"cannot load features: {e}") from e
    if features.ndim < 2:
        raise DataError(ims_path, f"expected [N, F] features, got {features.shape}")
    features = np.asarray(features, dtype=np.float32)

    rows, num_caps = len(features), len(captions)
    if rows == num_caps:
        if captions_per_image < 1 or num_caps % captions_per_image:
            raise DataError(
                ims_path,
                f"one feature row per caption, but {num_caps} captions are not a "
                f"multiple of captions_per_image={captions_per_image}",
            )
        per_image = captions_per_image
        features = features[::per_image]
    else:
        if rows == 0 or num_caps % rows:
            raise DataError(
                ims_path,
                f"{rows} feature rows do not divide {num_caps} captions in {caps_path}",
            )
        per_image = num_caps // rows
    keys = [f"{split}:{i}" for i in range(len(features))]
    grouped = [captions[i * per_image : (i + 1) * per_image] for i in range(len(keys))]
    return _from_ordered(split, ims_path, keys, grouped, features=features)


# --------------------------------------------------------------------------
# Generic CSV / TSV.


def _detect_delimiter(path: str, header_line: str) -> str:
    """The delimiter of a caption table: tab for ``.tsv``, else sniffed."""
    if path.lower().endswith(".tsv"):
        return "\t"
    for delimiter in ("\t", ",", ";", "|"):
        names = [h.strip().strip('"') for h in header_line.split(delimiter)]
        if "image" in names and "caption" in names:
            return delimiter
    raise DataError(
        path, f"header needs 'image' and 'caption' columns: {header_line!r}", 1
    )


def read_caption_csv(
    path: PathLike,
    image_root: PathLike,
    split: Optional[str] = None,
    check_files: bool = False,
) -> CaptionedSplit:
    """Reads a CSV or TSV table with ``image`` and ``caption`` columns.

    The delimiter is a tab for ``.tsv`` files and otherwise detected from the
    header line. An optional ``split`` column assigns rows to splits. Images
    are ordered by first appearance.

    Args:
        path: The table.
        image_root: Folder the ``image`` values are joined onto.
        split: When given, keep only rows whose ``split`` column equals it.
        check_files: Whether to verify that every image file exists.

    Returns:
        The split (named ``split``, or the file's base name when None).

    Raises:
        DataError: For a bad header, wrong column counts, empty fields, a
            ``split`` argument without a ``split`` column, no matching rows or
            (with ``check_files``) missing images.
    """
    path = os.fspath(path)
    with open(path, encoding="utf-8-sig", newline="") as f:
        header_line = f.readline()
        if not header_line.strip():
            raise DataError(path, "missing header line", 1)
        delimiter = _detect_delimiter(path, header_line)
        f.seek(0)
        reader = csv.reader(f, delimiter=delimiter)
        header = [h.strip() for h in next(reader)]
        for column in ("image", "caption"):
            if column not in header:
                raise DataError(path, f"header has no {column!r} column", 1)
        image_col, caption_col = header.index("image"), header.index("caption")
        split_col = header.index("split") if "split" in header else None
        if split is not None and split_col is None:
            raise DataError(path, f"split {split!r} requested but no 'split' column", 1)

        pairs: list[tuple[str, str]] = []
        for row in reader:
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            line_no = reader.line_num
            if len(row) != len(header):
                raise DataError(
                    path,
                    f"expected {len(header)} columns, got {len(row)}",
                    line_no,
                )
            if split is not None and row[split_col].strip() != split:
                continue
            image = row[image_col].strip()
            if not image:
                raise DataError(path, "empty image name", line_no)
            caption = _caption_text(path, row[caption_col], "row", line_no)
            pairs.append((_image_path(image_root, image), caption))
    if not pairs:
        which = f" with split {split!r}" if split is not None else ""
        raise DataError(path, f"no caption rows{which}")
    name = split if split is not None else os.path.splitext(os.path.basename(path))[0]
    result = group_captions(name, pairs)
    if check_files:
        _check_files(result, image_root)
    return result


# --------------------------------------------------------------------------
# Dispatch.


def _find_karpathy_json(data_dir: str) -> str:
    if os.path.isfile(data_dir):
        return data_dir
    found = sorted(glob.glob(os.path.join(data_dir, "dataset_*.json")))
    if len(found) != 1:
        raise DataError(
            data_dir,
            f"expected exactly one dataset_*.json, found {len(found)}"
            + (f": {', '.join(os.path.basename(p) for p in found)}" if found else ""),
        )
    return found[0]


def _find_caption_table(data_dir: str) -> str:
    if os.path.isfile(data_dir):
        return data_dir
    for name in ("captions.csv", "captions.tsv"):
        candidate = os.path.join(data_dir, name)
        if os.path.isfile(candidate):
            return candidate
    raise DataError(data_dir, "no captions.csv or captions.tsv")


def _default_image_root(folder: str) -> str:
    images = os.path.join(folder, "images")
    return images if os.path.isdir(images) else folder


def read_split(
    dataset: str, data_dir: PathLike, split: Optional[str], **kwargs: Any
) -> CaptionedSplit:
    """Reads one split of a dataset given by name.

    Args:
        dataset: ``flickr8k``, ``karpathy``, ``coco``, ``precomp`` or ``csv``.
        data_dir: The dataset folder. For ``karpathy`` it holds exactly one
            ``dataset_*.json`` (or is that file); for ``csv`` it is the table
            or a folder holding ``captions.csv``/``captions.tsv``.
        split: Split name, as the reader for ``dataset`` accepts it (``csv``
            also takes None: every row of the table).
        **kwargs: Passed on to the reader (``check_files``,
            ``captions_per_image``, ``image_root``...). For ``karpathy`` and
            ``csv``, ``image_root`` defaults to the table's folder when the
            first listed image is found there, else to its ``images/``
            subfolder (``karpathy``: ``images/`` when it exists).

    Returns:
        The split.

    Raises:
        ValueError: For an unknown dataset or split.
        DataError: For missing or malformed data.
    """
    name = dataset.lower()
    data_dir = os.fspath(data_dir)
    if name == "flickr8k":
        return read_flickr8k(data_dir, split, **kwargs)
    if name == "karpathy":
        json_path = _find_karpathy_json(data_dir)
        kwargs.setdefault("image_root", _default_image_root(os.path.dirname(json_path)))
        return read_karpathy(json_path, split, **kwargs)
    if name == "coco":
        return read_coco(data_dir, split, **kwargs)
    if name == "precomp":
        return read_precomp(data_dir, split, **kwargs)
    if name == "csv":
        table = _find_caption_table(data_dir)
        if "image_root" not in kwargs:
            whole = read_caption_csv(table, image_root=os.path.dirname(table))
            first = whole.image_paths[0]
            kwargs["image_root"] = (
                os.path.dirname(table)
                if os.path.exists(first)
                else _default_image_root(os.path.dirname(table))
            )
        return read_caption_csv(table, split=split, **kwargs)
    raise ValueError(f"unknown dataset {dataset!r}; choose from {', '.join(DATASETS)}")
