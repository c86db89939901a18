"""Input validation shared by the annotation readers, and protocol checks.

The readers in `vse_tf.data.readers` validate every row or record they read
and collect each problem as a `Problem` (file, line, byte offset for invalid
UTF-8, message, kind) in a `ProblemLog`. By default they then raise one
`DataError` listing every problem; with ``skip_bad_examples=True`` they leave
the bad examples out and record what was skipped on the returned
`CaptionedSplit` (``skipped``, ``skipped_problems``). Problems that make a
whole file unusable (``FATAL_KINDS``) are raised in either mode.

`check_captions_per_image` checks the captions-per-image protocol of a split
before evaluation (error) or training (warnings).
"""

from __future__ import annotations

import math
import ntpath
import os
import posixpath
from collections.abc import Sequence
from typing import NoReturn, Optional, Union

import numpy as np

from vse_tf.data.split import CaptionedSplit, DataError, MissingSplitError, Problem

PathLike = Union[str, "os.PathLike[str]"]

# Kinds that make a whole file (or the split) unusable: always raised.
MISSING_FILE = "missing_file"
BAD_HEADER = "bad_header"
INVALID_JSON = "invalid_json"
BAD_SCHEMA = "bad_schema"
BAD_FEATURES = "bad_features"
NO_EXAMPLES = "no_examples"
# Kinds tied to one row, record, caption or image: skippable.
INVALID_UTF8 = "invalid_utf8"
BAD_COLUMNS = "bad_columns"
BAD_RECORD = "bad_record"
EMPTY_CAPTION = "empty_caption"
UNSAFE_PATH = "unsafe_path"
UNKNOWN_IMAGE = "unknown_image"
NO_CAPTIONS = "no_captions"
DUPLICATE_IMAGE = "duplicate_image"
MISSING_IMAGE = "missing_image"
NONFINITE_FEATURES = "nonfinite_features"
# Reported, but kept unless skipping (the official Flickr8k captions.txt has
# nine identical captions written twice for the same image).
DUPLICATE_CAPTION = "duplicate_caption"
# From `check_captions_per_image`.
CAPTION_COUNT = "caption_count"

KINDS: dict[str, str] = {
    MISSING_FILE: "an annotation, split list or feature file (or folder) is absent",
    BAD_HEADER: "a CSV/TSV header lacks the expected columns",
    INVALID_JSON: "a JSON file does not parse (or is not UTF-8)",
    BAD_SCHEMA: "a JSON file parses but is not the expected schema",
    BAD_FEATURES: "a feature file cannot be loaded or does not match the captions",
    NO_EXAMPLES: "nothing usable: an empty list, no rows, or nothing left",
    INVALID_UTF8: "a line (or caption) is not valid UTF-8",
    BAD_COLUMNS: "a row has the wrong number of columns or broken CSV quoting",
    BAD_RECORD: "a row or JSON record lacks a field, has a wrong type or value",
    EMPTY_CAPTION: "a caption is empty or whitespace only",
    UNSAFE_PATH: "an image path is absolute or escapes the data root (../)",
    UNKNOWN_IMAGE: "a split list or annotation names an image with no captions",
    NO_CAPTIONS: "an image record has no captions",
    DUPLICATE_IMAGE: "an image is listed twice",
    MISSING_IMAGE: "an image file does not exist (with check_files=True)",
    NONFINITE_FEATURES: "a precomputed feature row holds NaN or infinity",
    DUPLICATE_CAPTION: "the same (image, caption) pair appears twice (a warning)",
    CAPTION_COUNT: "an image has the wrong number of captions for the protocol",
}
FATAL_KINDS = frozenset(
    {MISSING_FILE, BAD_HEADER, INVALID_JSON, BAD_SCHEMA, BAD_FEATURES, NO_EXAMPLES}
)
WARNING_KINDS = frozenset({DUPLICATE_CAPTION})

__all__ = [
    "CaptionedSplit",
    "DataError",
    "MissingSplitError",
    "Problem",
    "ProblemLog",
    "KINDS",
    "FATAL_KINDS",
    "WARNING_KINDS",
    "check_captions_per_image",
    "clean_caption",
    "clean_pair",
    "decode_lines",
    "path_problem",
    "read_bytes",
    "short_repr",
]


class ProblemLog:
    """Collects the problems found while reading one split.

    Attributes:
        problems: Every problem so far, in the order found.
    """

    def __init__(self) -> None:
        self.problems: list[Problem] = []

    def add(
        self,
        kind: str,
        path: PathLike,
        message: str,
        line: Optional[int] = None,
        offset: Optional[int] = None,
    ) -> None:
        """Records a problem that concerns one row, record or image."""
        self.problems.append(Problem(os.fspath(path), line, message, kind, offset))

    def fatal(
        self,
        kind: str,
        path: PathLike,
        message: str,
        line: Optional[int] = None,
        notes: Sequence[str] = (),
    ) -> NoReturn:
        """Raises `DataError` with this problem and every earlier one.

        Raises:
            DataError: Always.
        """
        self.problems.append(Problem(os.fspath(path), line, message, kind, fatal=True))
        raise DataError.from_problems(self.ordered(), notes)

    def missing_split(self, path: PathLike, message: str) -> NoReturn:
        """Raises `MissingSplitError`: the file that defines the split is absent.

        Like `fatal` with kind ``missing_file``; the error lists every earlier
        problem too.

        Raises:
            MissingSplitError: Always.
        """
        self.problems.append(
            Problem(os.fspath(path), None, message, MISSING_FILE, fatal=True)
        )
        raise MissingSplitError.from_problems(self.ordered())

    def ordered(self) -> list[Problem]:
        """The problems grouped by file (in order of first appearance), by line.

        Problems without a line (JSON records, whole-file problems) keep the
        order they were found in, after the numbered ones of their file.
        """
        rank: dict[str, int] = {}
        for problem in self.problems:
            rank.setdefault(problem.path, len(rank))
        return sorted(
            self.problems,
            key=lambda p: (rank[p.path], math.inf if p.line is None else p.line),
        )

    @property
    def errors(self) -> list[Problem]:
        """The problems that are not mere warnings."""
        return [p for p in self.problems if p.kind not in WARNING_KINDS]

    def raise_errors(self, notes: Sequence[str] = ()) -> None:
        """Raises `DataError` listing every problem when any is an error.

        Raises:
            DataError: When ``errors`` is not empty.
        """
        if self.errors:
            raise DataError.from_problems(self.ordered(), notes)


def read_bytes(path: PathLike, log: ProblemLog) -> bytes:
    """The bytes of ``path``; a fatal ``missing_file`` problem when unreadable."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        log.fatal(MISSING_FILE, path, "file not found")
    except OSError as e:
        log.fatal(MISSING_FILE, path, f"cannot read file: {e.strerror or e}")


def decode_lines(
    path: PathLike, data: bytes, log: ProblemLog
) -> list[tuple[int, str, bool]]:
    """Splits ``data`` into lines and decodes each as UTF-8.

    Lines end at ``\\n``, ``\\r\\n`` or ``\\r`` (as Python's text files split
    them); a leading UTF-8 byte-order mark is dropped. Each line that is not
    valid UTF-8 is logged as ``invalid_utf8`` with its byte offset in the file.

    Args:
        path: The file, for the problem reports.
        data: Its bytes.
        log: Where problems go.

    Returns:
        ``(line_number, text, valid)`` per line, 1-based, ``text`` with its
        line ending kept; where the line is not valid UTF-8, ``valid`` is
        False and ``text`` has U+FFFD in place of the bad bytes.
    """
    start = 3 if data.startswith(b"\xef\xbb\xbf") else 0
    lines: list[tuple[int, str, bool]] = []
    offset = start
    for number, raw in enumerate(data[start:].splitlines(keepends=True), start=1):
        try:
            lines.append((number, raw.decode("utf-8"), True))
        except UnicodeDecodeError as e:
            bad = offset + e.start
            log.add(
                INVALID_UTF8,
                path,
                f"invalid UTF-8 at byte offset {bad} (byte 0x{data[bad]:02x})",
                number,
                offset=bad,
            )
            lines.append((number, raw.decode("utf-8", errors="replace"), False))
        offset += len(raw)
    return lines


def decode_json_text(path: PathLike, data: bytes, log: ProblemLog) -> str:
    """The text of a JSON file; fatal ``invalid_json`` when not UTF-8."""
    start = 3 if data.startswith(b"\xef\xbb\xbf") else 0
    try:
        return data[start:].decode("utf-8")
    except UnicodeDecodeError as e:
        bad = start + e.start
        line = data.count(b"\n", 0, bad) + 1
        log.problems.append(
            Problem(
                os.fspath(path),
                line,
                f"invalid UTF-8 at byte offset {bad} (byte 0x{data[bad]:02x}); "
                "the JSON file cannot be parsed",
                INVALID_UTF8,
                offset=bad,
                fatal=True,
            )
        )
        raise DataError.from_problems(log.ordered()) from None


def _not_unicode(text: str) -> Optional[int]:
    """Index of the first unpaired surrogate in ``text``, else None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return e.start
    return None


def clean_caption(raw: object) -> tuple[Optional[str], Optional[tuple[str, str]]]:
    """Validates one caption.

    Args:
        raw: The caption as read (JSON values may be any type).

    Returns:
        ``(caption, None)`` with the caption stripped, or ``(None, (kind,
        message))`` when it is not a string, not encodable as UTF-8 (a lone
        surrogate from a JSON escape) or empty after stripping.
    """
    if not isinstance(raw, str):
        return None, (BAD_RECORD, f"caption is not a string: {short_repr(raw)}")
    bad = _not_unicode(raw)
    if bad is not None:
        return None, (INVALID_UTF8, f"caption has an unpaired surrogate at char {bad}")
    text = raw.strip()
    if not text:
        return None, (EMPTY_CAPTION, "empty caption")
    return text, None


def clean_pair(
    image: object, raw_caption: object
) -> tuple[Optional[str], Optional[tuple[str, str]]]:
    """Validates one ``(image name, caption)`` row of a caption table.

    Args:
        image: The image name as read (stripped).
        raw_caption: The caption as read.

    Returns:
        As `clean_caption`; the image name is checked first (`path_problem`)
        and its problem, if any, is the one returned.
    """
    problem = path_problem(image)
    if problem is not None:
        return None, problem
    return clean_caption(raw_caption)


def path_problem(name: object, allow_parent: bool = False) -> Optional[tuple[str, str]]:
    """Why an image path taken from an annotation file is not acceptable.

    Image paths must be non-empty relative paths that stay inside the data
    root once ``.`` and ``..`` are resolved (symbolic links are not
    followed). Backslashes count as separators, and Windows drive or UNC
    prefixes as absolute.

    Args:
        name: The path as read from the annotation.
        allow_parent: Skip the ``..`` check (for one part of a path that is
            checked again once joined, as Karpathy's ``filepath/filename``).

    Returns:
        None when fine, else ``(kind, reason)``.
    """
    if not isinstance(name, str):
        return BAD_RECORD, f"image path is not a string: {short_repr(name)}"
    if not name.strip():
        return BAD_RECORD, "empty image name"
    if "\x00" in name:
        return BAD_RECORD, f"image name {name!r} contains a NUL character"
    if _not_unicode(name) is not None:
        return INVALID_UTF8, f"image name {name!r} has an unpaired surrogate"
    if posixpath.isabs(name) or ntpath.isabs(name) or ntpath.splitdrive(name)[0]:
        return UNSAFE_PATH, f"absolute image path {name!r} is not allowed"
    normal = posixpath.normpath(name.replace("\\", "/"))
    if not allow_parent and (normal == ".." or normal.startswith("../")):
        return UNSAFE_PATH, f"image path {name!r} escapes the data root"
    return None


def short_repr(value: object, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters for messages."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_captions_per_image(
    split: CaptionedSplit,
    k: int = 5,
    purpose: str = "evaluation",
    allow_more: bool = False,
) -> list[str]:
    """Checks that every image of ``split`` has ``k`` captions.

    The retrieval protocol (R@K over ``k`` captions per image) needs exactly
    ``k``; training works with any number but a skewed count changes how often
    each image is seen.

    Args:
        split: The split to check.
        k: Captions per image the protocol expects.
        purpose: ``"evaluation"``: raise on any image with a different count;
            ``"training"``: return warnings instead.
        allow_more: Accept images with more than ``k`` captions (they are cut
            to ``k`` later, as for MS-COCO's 5-7); only fewer is a problem.

    Returns:
        Warning lines (``"training"``; empty when every count is right). For
        ``"evaluation"`` an empty list, since problems raise.

    Raises:
        ValueError: For an unknown ``purpose`` or ``k < 1``.
        DataError: (``"evaluation"``) naming every image with a wrong count;
            its problems have kind ``caption_count``.
    """
    if purpose not in ("evaluation", "training"):
        raise ValueError(f"purpose must be 'evaluation' or 'training', not {purpose!r}")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    counts = np.bincount(split.caption_image_index, minlength=split.num_images)
    wrong = counts < k if allow_more else counts != k
    bad = np.flatnonzero(wrong)
    if not len(bad):
        return []
    need = f"at least {k}" if allow_more else f"exactly {k}"
    if purpose == "evaluation":
        problems = [
            Problem(
                split.image_paths[i],
                None,
                f"{split.name} split: image has {counts[i]} captions; "
                f"evaluation needs {need}",
                CAPTION_COUNT,
            )
            for i in bad
        ]
        raise DataError.from_problems(
            problems,
            notes=[
                f"{len(bad)} of {split.num_images} images in split "
                f"{split.name!r} do not have {need} captions"
            ],
        )
    by_count: dict[int, list[int]] = {}
    for i in bad:
        by_count.setdefault(int(counts[i]), []).append(int(i))
    warnings = []
    for count in sorted(by_count):
        images = by_count[count]
        examples = ", ".join(os.path.basename(split.image_paths[i]) for i in images[:5])
        more = ", ..." if len(images) > 5 else ""
        warnings.append(
            f"{split.name}: {len(images)} of {split.num_images} images have "
            f"{count} captions instead of {need} (e.g. {examples}{more})"
        )
    return warnings
