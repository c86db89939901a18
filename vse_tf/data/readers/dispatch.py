"""`read_split`: picks the reader by data set name and finds its files."""

from __future__ import annotations

import glob
import os
from typing import Any, Optional

from vse_tf.data import validation as v
from vse_tf.data.readers.caption_csv import detect_delimiter, read_caption_csv
from vse_tf.data.readers.coco import read_coco
from vse_tf.data.readers.common import PathLike, csv_rows
from vse_tf.data.readers.flickr8k import read_flickr8k
from vse_tf.data.readers.karpathy import read_karpathy
from vse_tf.data.readers.precomp import read_precomp
from vse_tf.data.split import CaptionedSplit, DataError

DATASETS = ("flickr8k", "karpathy", "coco", "precomp", "csv")


def _find_karpathy_json(data_dir: str) -> str:
    """``data_dir`` itself when a file, else its one ``dataset_*.json``."""
    if os.path.isfile(data_dir):
        return data_dir
    found = sorted(glob.glob(os.path.join(data_dir, "dataset_*.json")))
    if len(found) != 1:
        raise DataError(
            data_dir,
            f"expected exactly one dataset_*.json, found {len(found)}"
            + (f": {', '.join(os.path.basename(p) for p in found)}" if found else ""),
            kind=v.MISSING_FILE,
        )
    return found[0]


def _find_caption_table(data_dir: str) -> str:
    """``data_dir`` itself when a file, else its ``captions.{csv,tsv}``."""
    if os.path.isfile(data_dir):
        return data_dir
    for name in ("captions.csv", "captions.tsv"):
        candidate = os.path.join(data_dir, name)
        if os.path.isfile(candidate):
            return candidate
    raise DataError(data_dir, "no captions.csv or captions.tsv", kind=v.MISSING_FILE)


def _default_image_root(folder: str) -> str:
    images = os.path.join(folder, "images")
    return images if os.path.isdir(images) else folder


def _first_table_image(table: str) -> Optional[str]:
    """The first usable ``image`` value of a caption table, or None.

    Only used to guess the image folder; problems are left for the real read.
    """
    scratch = v.ProblemLog()
    try:
        lines = v.decode_lines(table, v.read_bytes(table, scratch), scratch)
    except DataError:
        return None
    delimiter = detect_delimiter(table, lines[0][1]) if lines else None
    if delimiter is None:
        return None
    rows = csv_rows(table, lines, delimiter, scratch)
    first = next(rows, None)
    if first is None or first[1] is None:
        return None
    header = [h.strip() for h in first[1]]
    if "image" not in header:
        return None
    column = header.index("image")
    for _, row in rows:
        if row is not None and len(row) == len(header):
            name = row[column].strip()
            if v.path_problem(name) is None:
                return name
    return None


def _table_image_root(table: str) -> str:
    """The table's folder when its first image is there, else `_default_image_root`."""
    folder = os.path.dirname(table)
    first = _first_table_image(table)
    if first is not None and os.path.exists(os.path.join(folder, first)):
        return folder
    return _default_image_root(folder)


def read_split(
    dataset: str,
    data_dir: PathLike,
    split: Optional[str],
    *,
    check_files: bool = False,
    skip_bad_examples: bool = False,
    **kwargs: Any,
) -> CaptionedSplit:
    """Reads and validates one split of a dataset given by name.

    Args:
        dataset: ``flickr8k``, ``karpathy``, ``coco``, ``precomp`` or ``csv``.
        data_dir: The dataset folder. For ``karpathy`` it holds exactly one
            ``dataset_*.json`` (or is that file); for ``csv`` it is the table
            or a folder holding ``captions.csv``/``captions.tsv``.
        split: Split name, as the reader for ``dataset`` accepts it (``csv``
            also takes None: every row of the table).
        check_files: Whether to check that every image file exists (ignored
            for ``precomp``, which has no image files).
        skip_bad_examples: False (default): raise one `DataError` listing
            every problem found. True: leave the bad examples out and return
            the rest, with ``split.skipped`` (``{kind: count}``) and
            ``split.skipped_problems`` saying what was left out; problems
            that make a whole file unusable still raise.
        **kwargs: Passed on to the reader (``captions_per_image``,
            ``image_root``...). For ``karpathy`` and ``csv``, ``image_root``
            defaults to the table's folder when the first listed image is
            found there, else to its ``images/`` subfolder (``karpathy``:
            ``images/`` when it exists).

    Returns:
        The split. ``split.warnings`` lists problems that were kept
        (duplicate ``(image, caption)`` pairs) when not skipping.

    Raises:
        ValueError: For an unknown dataset or split.
        MissingSplitError: When the file that defines the split is absent
            (see its docstring for which readers have one).
        DataError: For missing or malformed data; ``error.problems`` lists
            every `Problem` found.
    """
    name = dataset.lower()
    data_dir = os.fspath(data_dir)
    options = dict(skip_bad_examples=skip_bad_examples, **kwargs)
    if name != "precomp":
        options["check_files"] = check_files
    if name == "flickr8k":
        return read_flickr8k(data_dir, split, **options)
    if name == "karpathy":
        json_path = _find_karpathy_json(data_dir)
        options.setdefault(
            "image_root", _default_image_root(os.path.dirname(json_path))
        )
        return read_karpathy(json_path, split, **options)
    if name == "coco":
        return read_coco(data_dir, split, **options)
    if name == "precomp":
        return read_precomp(data_dir, split, **options)
    if name == "csv":
        table = _find_caption_table(data_dir)
        if "image_root" not in options:
            options["image_root"] = _table_image_root(table)
        return read_caption_csv(table, split=split, **options)
    raise ValueError(f"unknown dataset {dataset!r}; choose from {', '.join(DATASETS)}")
