"""The caption-table reader: a CSV/TSV with ``image`` and ``caption`` columns."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from typing import Optional

from vse_tf.data import validation as v
from vse_tf.data.readers.common import (
    Caption,
    Image,
    PathLike,
    csv_rows,
    finish,
    image_path,
)
from vse_tf.data.split import CaptionedSplit

_Rows = Iterator[tuple[int, Optional[list[str]]]]


@dataclasses.dataclass(frozen=True)
class _Columns:
    """Where the columns of a caption table are.

    Attributes:
        count: Columns in the header (every row must have as many).
        image: Index of ``image``.
        caption: Index of ``caption``.
        split: Index of ``split``, or None when there is none.
    """

    count: int
    image: int
    caption: int
    split: Optional[int]


def detect_delimiter(path: str, header_line: str) -> Optional[str]:
    """The delimiter of a caption table: tab for ``.tsv``, else sniffed."""
    if path.lower().endswith(".tsv"):
        return "\t"
    for delimiter in ("\t", ",", ";", "|"):
        names = [h.strip().strip('"') for h in header_line.split(delimiter)]
        if "image" in names and "caption" in names:
            return delimiter
    return None


def _header_and_rows(path: str, log: v.ProblemLog) -> tuple[list[str], _Rows]:
    """The table's header names and an iterator over its other rows.

    Raises:
        DataError: (``bad_header``) for a missing or unreadable header or one
            without a delimiter that gives ``image`` and ``caption``; a
            missing table is a plain ``missing_file`` `DataError`.
    """
    lines = v.decode_lines(path, v.read_bytes(path, log), log)
    header_line = lines[0][1] if lines else ""
    if not header_line.strip():
        log.fatal(v.BAD_HEADER, path, "missing header line", 1)
    delimiter = detect_delimiter(path, header_line)
    if delimiter is None:
        log.fatal(
            v.BAD_HEADER,
            path,
            f"header needs 'image' and 'caption' columns: {header_line!r}",
            1,
        )
    rows = csv_rows(path, lines, delimiter, log)
    first = next(rows, None)
    header = [] if first is None or first[1] is None else [h.strip() for h in first[1]]
    if first is None or first[0] != 1:
        log.fatal(v.BAD_HEADER, path, f"unreadable header line: {header_line!r}", 1)
    return header, rows


def _columns(
    header: list[str], split: Optional[str], path: str, log: v.ProblemLog
) -> _Columns:
    """The column positions; fatal when a needed column is absent.

    ``image`` and ``caption`` are always needed, ``split`` when ``split`` is
    given.
    """
    for column in ("image", "caption"):
        if column not in header:
            log.fatal(v.BAD_HEADER, path, f"header has no {column!r} column", 1)
    split_col = header.index("split") if "split" in header else None
    if split is not None and split_col is None:
        log.fatal(
            v.BAD_HEADER, path, f"split {split!r} requested but no 'split' column", 1
        )
    return _Columns(
        len(header), header.index("image"), header.index("caption"), split_col
    )


def _images(
    rows: _Rows,
    columns: _Columns,
    split: Optional[str],
    image_root: PathLike,
    path: str,
    log: v.ProblemLog,
) -> list[Image]:
    """The images of the rows of ``split`` (all rows for None), first seen first.

    Raises:
        DataError: (``no_examples``) when no row is of ``split``.
    """
    by_key: dict[str, Image] = {}
    matched = False
    for line_no, row in rows:
        if row is None:
            continue  # not UTF-8: already logged
        if len(row) != columns.count:
            log.add(
                v.BAD_COLUMNS,
                path,
                f"expected {columns.count} columns, got {len(row)}",
                line_no,
            )
            continue
        if split is not None and row[columns.split].strip() != split:
            continue
        matched = True
        image = row[columns.image].strip()
        caption, problem = v.clean_pair(image, row[columns.caption])
        if problem is not None:
            log.add(problem[0], path, problem[1], line_no)
            continue
        key = image_path(image_root, image)
        if key not in by_key:
            by_key[key] = Image(key, path, line_no)
        by_key[key].captions.append(Caption(caption, path, line_no))
    if not matched:
        which = f" with split {split!r}" if split is not None else ""
        log.fatal(v.NO_EXAMPLES, path, f"no caption rows{which}")
    return list(by_key.values())


def read_caption_csv(
    path: PathLike,
    image_root: PathLike,
    split: Optional[str] = None,
    check_files: bool = False,
    skip_bad_examples: bool = False,
) -> CaptionedSplit:
    """Reads a CSV or TSV table with ``image`` and ``caption`` columns.

    The delimiter is a tab for ``.tsv`` files and otherwise detected from the
    header line. An optional ``split`` column assigns rows to splits. Images
    are ordered by first appearance.

    Args:
        path: The table.
        image_root: Folder the ``image`` values are joined onto; values must
            be relative paths that stay inside it.
        split: When given, keep only rows whose ``split`` column equals it.
        check_files: Whether to verify that every image file exists.
        skip_bad_examples: Leave bad rows out instead of raising; see the
            `vse_tf.data.readers` docstring.

    Returns:
        The split (named ``split``, or the file's base name when None).

    Raises:
        DataError: Listing every problem: a missing file, a bad header, a
            ``split`` argument without a ``split`` column or no matching rows
            (fatal; none of them a `MissingSplitError`: one table holds every
            split); lines that are not UTF-8, broken quoting, wrong column
            counts, unsafe or empty image names, empty captions and (with
            ``check_files``) missing images.
    """
    path = os.fspath(path)
    log = v.ProblemLog()
    header, rows = _header_and_rows(path, log)
    columns = _columns(header, split, path, log)
    images = _images(rows, columns, split, image_root, path, log)
    name = split if split is not None else os.path.splitext(os.path.basename(path))[0]
    return finish(name, images, log, path, skip_bad_examples, check_files)
