"""What every reader shares: image records, path and JSON checks, CSV rows, `finish`."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import posixpath
from collections.abc import Iterator
from typing import Any, Optional, Union

import numpy as np

from vse_tf.data import validation as v
from vse_tf.data.split import CaptionedSplit, kind_counts

PathLike = Union[str, "os.PathLike[str]"]

MAX_LISTED_MISSING = 10
"""Missing image files named in the summary note (all are on the problems)."""


@dataclasses.dataclass
class Caption:
    """One accepted caption and where it was read."""

    text: str
    path: str
    line: Optional[int]
    where: str = ""


@dataclasses.dataclass
class Image:
    """One image being assembled, with where it is listed.

    Attributes:
        key: Absolute image path, or a synthetic key (precomp).
        path: The annotation file that lists the image.
        line: Its line there, or None (JSON).
        where: A JSON locator such as ``images[3]``, or "".
        captions: Its accepted captions, in file order.
    """

    key: str
    path: str
    line: Optional[int]
    where: str = ""
    captions: list[Caption] = dataclasses.field(default_factory=list)


# --------------------------------------------------------------------------
# Paths and records.


def where_prefix(where: str) -> str:
    """``"images[3]: "`` for a JSON locator, "" for none."""
    return f"{where}: " if where else ""


def image_path(root: PathLike, *parts: str) -> str:
    """The absolute path of an image under ``root``."""
    return os.path.abspath(os.path.join(os.fspath(root), *parts))


def relative_image(parts: list[Any]) -> tuple[Optional[str], Optional[tuple]]:
    """Joins annotation path parts; ``(None, (kind, reason))`` when unsafe."""
    for part in parts:
        problem = v.path_problem(part, allow_parent=len(parts) > 1)
        if problem is not None:
            return None, problem
    joined = posixpath.join(*parts)
    problem = v.path_problem(joined)
    if problem is not None:
        return None, problem
    return joined, None


def missing_keys(record: Any, keys: tuple[str, ...], where: str) -> Optional[str]:
    """A message when ``record`` is not an object holding ``keys``."""
    if not isinstance(record, dict):
        return f"{where} is not a JSON object: {v.short_repr(record)}"
    missing = [repr(k) for k in keys if k not in record]
    if missing:
        return f"{where} has no {', '.join(missing)} key"
    return None


def load_json(path: PathLike, log: v.ProblemLog) -> Any:
    """Parses a JSON file; fatal problems when unreadable or not JSON."""
    text = v.decode_json_text(path, v.read_bytes(path, log), log)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        log.fatal(
            v.INVALID_JSON,
            path,
            f"invalid JSON: {e.msg} (line {e.lineno} column {e.colno})",
            e.lineno,
        )
    except (ValueError, RecursionError) as e:
        log.fatal(v.INVALID_JSON, path, f"invalid JSON: {e}")


def load_json_object(
    path: PathLike, keys: tuple[str, ...], log: v.ProblemLog
) -> dict[str, Any]:
    """A JSON file whose top level is an object with ``keys``; else fatal.

    Raises:
        DataError: ``invalid_json`` (see `load_json`) or ``bad_schema``.
    """
    data = load_json(path, log)
    problem = missing_keys(data, keys, "top level")
    if problem is not None:
        log.fatal(v.BAD_SCHEMA, path, problem)
    return data


def csv_rows(
    path: str,
    lines: list[tuple[int, str, bool]],
    delimiter: str,
    log: v.ProblemLog,
) -> Iterator[tuple[int, Optional[list[str]]]]:
    """``(first line, row)`` for each CSV row of the decoded ``lines``.

    Rows broken by CSV quoting are logged (``bad_columns``) and skipped; rows
    that touch a line that is not UTF-8 (already logged) come back as
    ``(line, None)``. Blank rows are left out.
    """
    bad_lines = {number for number, _, valid in lines if not valid}
    texts = [text for _, text, _ in lines]
    reader = csv.reader(iter(texts), delimiter=delimiter, strict=True)
    previous = 0
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            first, previous = previous + 1, reader.line_num
            log.add(v.BAD_COLUMNS, path, f"broken CSV row: {e}", first)
            if reader.line_num < first:
                return
            continue
        first, previous = previous + 1, reader.line_num
        if any(n in bad_lines for n in range(first, previous + 1)):
            yield first, None
            continue
        if not row or (len(row) == 1 and not row[0].strip()):
            continue
        yield first, row


# --------------------------------------------------------------------------
# The common last step.


def finish(
    name: str,
    images: list[Image],
    log: v.ProblemLog,
    source: PathLike,
    skip: bool,
    check_files: bool = False,
    features: Optional[np.ndarray] = None,
) -> CaptionedSplit:
    """Checks image files and duplicates, then builds the split or raises.

    Args:
        name: Split name.
        images: The images in split order; those without captions are left
            out (their problems are already logged).
        log: The problems found so far.
        source: What a "nothing left" problem is attributed to.
        skip: Whether bad examples are left out instead of raising.
        check_files: Whether to check that each image file exists.
        features: Optional ``[len(images), F]`` features, one row per image.

    Returns:
        The split.

    Raises:
        DataError: Listing every problem when one is an error and ``skip`` is
            False, or when nothing usable is left.
    """
    usable = [i for i, image in enumerate(images) if image.captions]
    notes: list[str] = []
    if check_files:
        usable, notes = _drop_missing_files(images, usable, log)
    for i in usable:
        _drop_duplicate_captions(images[i], log, skip)
    if not skip:
        log.raise_errors(notes)
    return _build_split(name, images, usable, log, source, skip, features, notes)


def _drop_missing_files(
    images: list[Image], usable: list[int], log: v.ProblemLog
) -> tuple[list[int], list[str]]:
    """Logs each usable image whose file is absent.

    Returns:
        The usable images that remain, and a summary note (none when no
        file is missing).
    """
    missing = [i for i in usable if not os.path.isfile(images[i].key)]
    for i in missing:
        image = images[i]
        log.add(
            v.MISSING_IMAGE,
            image.path,
            f"{where_prefix(image.where)}missing image file {image.key}",
            image.line,
        )
    if not missing:
        return usable, []
    listed = ", ".join(images[i].key for i in missing[:MAX_LISTED_MISSING])
    more = "" if len(missing) <= MAX_LISTED_MISSING else ", ..."
    note = f"{len(missing)} of {len(usable)} image files missing: {listed}{more}"
    gone = set(missing)
    return [i for i in usable if i not in gone], [note]


def _drop_duplicate_captions(image: Image, log: v.ProblemLog, skip: bool) -> None:
    """Logs repeated captions of ``image``; drops the repeats when skipping."""
    first_seen: dict[str, Caption] = {}
    kept = []
    for caption in image.captions:
        earlier = first_seen.get(caption.text)
        if earlier is None:
            first_seen[caption.text] = caption
            kept.append(caption)
            continue
        same_as = f"line {earlier.line}" if earlier.line is not None else earlier.where
        log.add(
            v.DUPLICATE_CAPTION,
            caption.path,
            f"{where_prefix(caption.where)}duplicate (image, caption) pair for "
            f"{os.path.basename(image.key)}: same as {same_as}",
            caption.line,
        )
        if not skip:
            kept.append(caption)
    image.captions = kept


def _build_split(
    name: str,
    images: list[Image],
    usable: list[int],
    log: v.ProblemLog,
    source: PathLike,
    skip: bool,
    features: Optional[np.ndarray],
    notes: list[str],
) -> CaptionedSplit:
    """The split of the ``usable`` images; fatal ``no_examples`` when none."""
    keys: list[str] = []
    captions: list[str] = []
    index: list[int] = []
    for i in usable:
        keys.append(images[i].key)
        captions.extend(c.text for c in images[i].captions)
        index.extend([len(keys) - 1] * len(images[i].captions))
    if not keys:
        log.fatal(
            v.NO_EXAMPLES,
            source,
            f"no usable examples left after leaving out {len(log.problems)} problems",
            notes=notes,
        )
    warnings = tuple(p for p in log.ordered() if p.kind in v.WARNING_KINDS)
    return CaptionedSplit(
        name,
        keys,
        captions,
        np.asarray(index, np.int32),
        None if features is None else features[usable],
        skipped=kind_counts(log.problems) if skip else {},
        skipped_problems=tuple(log.ordered()) if skip else (),
        warnings=() if skip else warnings,
    )
