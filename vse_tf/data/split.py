"""The in-memory form of one data split: images, captions and who owns what."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Optional

import numpy as np

from vse_tf import errors

MAX_LISTED_PROBLEMS = 50
MAX_LISTED_PER_KIND = 10


@dataclasses.dataclass(frozen=True)
class Problem:
    """One thing wrong with the input data.

    Attributes:
        path: The file the problem is in (or, for a missing image, the
            annotation file that names it).
        line: 1-based line number, or None when not tied to a line (JSON
            records are named by their index in ``message`` instead).
        message: What is wrong, without the ``path:line:`` prefix.
        kind: A short machine-readable category (``empty_caption``,
            ``bad_columns``, ``missing_image``...; see
            `vse_tf.data.validation` for the list).
        offset: 0-based byte offset into ``path`` (invalid UTF-8), or None.
        fatal: Whether the problem makes the whole file unusable (raised even
            when bad examples are skipped).
    """

    path: str
    line: Optional[int]
    message: str
    kind: str = "invalid"
    offset: Optional[int] = None
    fatal: bool = False

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line is not None else self.path
        return f"{where}: {self.message}"


def kind_counts(problems: Sequence[Problem]) -> dict[str, int]:
    """``{kind: count}`` over ``problems``, in order of first appearance."""
    counts: dict[str, int] = {}
    for problem in problems:
        counts[problem.kind] = counts.get(problem.kind, 0) + 1
    return counts


def format_problems(problems: Sequence[Problem], notes: Sequence[str] = ()) -> str:
    """The text of a `DataError`: every problem, up to a cap.

    One problem and no notes gives ``path:line: message``. More give a header
    with the count per kind, the notes, then one problem per line: at most
    `MAX_LISTED_PER_KIND` of each kind (so one flood cannot hide the other
    kinds) and `MAX_LISTED_PROBLEMS` in all, then how many were left out.

    Args:
        problems: The problems, in the order found (at least one).
        notes: Extra summary lines printed after the header.

    Returns:
        The message.
    """
    if len(problems) == 1 and not notes:
        return str(problems[0])
    counts = kind_counts(problems)
    paths = {p.path for p in problems}
    where = f" in {next(iter(paths))}" if len(paths) == 1 else ""
    noun = "problem" if len(problems) == 1 else "problems"
    by_kind = ", ".join(f"{kind}: {n}" for kind, n in counts.items())
    lines = [f"{len(problems)} data {noun}{where} ({by_kind}):"]
    lines.extend(f"  {note}" for note in notes)
    listed: dict[str, int] = {}
    shown = 0
    for problem in problems:
        if shown >= MAX_LISTED_PROBLEMS:
            break
        if listed.get(problem.kind, 0) >= MAX_LISTED_PER_KIND:
            continue
        listed[problem.kind] = listed.get(problem.kind, 0) + 1
        shown += 1
        lines.append(f"  {problem}")
    if shown < len(problems):
        lines.append(
            f"  ... and {len(problems) - shown} more not listed "
            f"(all {len(problems)} are on DataError.problems)"
        )
    return "\n".join(lines)


class DataError(errors.UserError, ValueError):
    """Malformed input data; the message names the file and, where known, the line.

    A reader reports every problem it finds in one `DataError`; the message
    lists them (capped, see `format_problems`) and ``problems`` holds them all.

    Attributes:
        path: The file of the first problem.
        line: 1-based line of the first problem, or None when it is not tied
            to a line.
        problems: Every `Problem` found, in the order found.
        kinds: ``{kind: count}`` over ``problems``.
    """

    def __init__(
        self,
        path: str,
        message: str,
        line: Optional[int] = None,
        *,
        kind: str = "invalid",
        problems: Optional[Sequence[Problem]] = None,
        notes: Sequence[str] = (),
    ):
        if problems:
            self.problems = list(problems)
            text = message
        else:
            self.problems = [Problem(str(path), line, message, kind)]
            text = format_problems(self.problems, notes)
        self.path = str(path)
        self.line = line
        self.kinds = kind_counts(self.problems)
        super().__init__(text)

    @classmethod
    def from_problems(
        cls, problems: Sequence[Problem], notes: Sequence[str] = ()
    ) -> DataError:
        """One error reporting all of ``problems`` (at least one).

        ``path`` and ``line`` are those of the first problem.
        """
        if not problems:
            raise ValueError("from_problems needs at least one problem")
        first = problems[0]
        return cls(
            first.path,
            format_problems(problems, notes),
            first.line,
            problems=problems,
        )

    def __reduce__(self):
        return _rebuild_data_error, (self.problems, str(self))


def _rebuild_data_error(problems: list[Problem], text: str) -> DataError:
    first = problems[0]
    return DataError(first.path, text, first.line, problems=problems)


class MissingSplitError(DataError):
    """The requested split does not exist in the data set.

    Raised, with kind ``missing_file``, exactly when the file that defines the
    split is absent: the Flickr8k split list ``Flickr_8k.{split}Images.txt``,
    the MS-COCO ``annotations/captions_{train,val}2014.json`` of a train or
    dev split, or a VSE++ precomp ``{split}_caps.txt`` (neither ``dev_`` nor
    ``val_`` for dev) or ``{split}_ims.npy``. A missing file that every split
    needs (a caption file, the image folder, a Karpathy ``dataset_*.json``,
    a caption table) is a plain `DataError`, as are splits that are merely
    empty; so is a COCO test split without ``captions_test*.json``, which
    has always been an error rather than an absent split. Callers may treat
    a missing optional split (``test``) as absent.
    """

    def __reduce__(self):
        return _rebuild_missing_split_error, (self.problems, str(self))


def _rebuild_missing_split_error(
    problems: list[Problem], text: str
) -> MissingSplitError:
    first = problems[0]
    return MissingSplitError(first.path, text, first.line, problems=problems)


@dataclasses.dataclass(frozen=True)
class CaptionedSplit:
    """Images and their captions for one split.

    Captions are grouped by image in image order: when every image has
    ``k`` captions, captions ``k*i .. k*i+k-1`` belong to image ``i`` (the
    layout the retrieval protocol expects).

    Attributes:
        name: Split name (``train``, ``dev``, ``test``...).
        image_paths: ``[N]`` image file paths (absolute, or relative to the
            data root), or synthetic keys when ``features`` is given.
        captions: ``[M]`` raw caption strings.
        caption_image_index: ``[M]`` int32, index into ``image_paths`` of the
            image each caption describes (non-decreasing).
        features: Optional ``[N, F]`` float32 precomputed image features
            (VSE++ ``*_precomp`` data); when set, no image files are read.
        skipped: ``{kind: count}`` of the problems whose examples a reader
            left out (``skip_bad_examples=True``); empty when none were.
        skipped_problems: Those problems, in the order found.
        warnings: Problems that were found but left the data in (duplicate
            ``(image, caption)`` rows when not skipping).
    """

    name: str
    image_paths: list[str]
    captions: list[str]
    caption_image_index: np.ndarray
    features: Optional[np.ndarray] = None
    skipped: dict[str, int] = dataclasses.field(
        default_factory=dict, compare=False, repr=False
    )
    skipped_problems: tuple[Problem, ...] = dataclasses.field(
        default=(), compare=False, repr=False
    )
    warnings: tuple[Problem, ...] = dataclasses.field(
        default=(), compare=False, repr=False
    )

    def __post_init__(self):
        index = np.asarray(self.caption_image_index, dtype=np.int32)
        object.__setattr__(self, "caption_image_index", index)
        if len(index) != len(self.captions):
            raise ValueError(
                f"{len(self.captions)} captions but {len(index)} image indices"
            )
        if len(index) and (index.min() < 0 or index.max() >= len(self.image_paths)):
            raise ValueError("caption_image_index points outside image_paths")
        if len(index) > 1 and np.any(np.diff(index) < 0):
            raise ValueError("captions must be grouped by image in image order")
        object.__setattr__(self, "skipped", dict(self.skipped))
        object.__setattr__(self, "skipped_problems", tuple(self.skipped_problems))
        object.__setattr__(self, "warnings", tuple(self.warnings))
        if self.features is not None and len(self.features) != len(self.image_paths):
            raise ValueError(
                f"{len(self.features)} feature rows for {len(self.image_paths)} images"
            )

    @property
    def num_images(self) -> int:
        return len(self.image_paths)

    @property
    def num_captions(self) -> int:
        return len(self.captions)

    def captions_per_image(self) -> Optional[int]:
        """The common number of captions per image, or None if it varies."""
        counts = np.bincount(self.caption_image_index, minlength=self.num_images)
        if len(counts) == 0 or np.any(counts != counts[0]):
            return None
        return int(counts[0])

    def take_images(self, count: int) -> CaptionedSplit:
        """The first ``count`` images and their captions (for quick runs)."""
        count = min(count, self.num_images)
        keep = self.caption_image_index < count
        return CaptionedSplit(
            name=self.name,
            image_paths=self.image_paths[:count],
            captions=[c for c, k in zip(self.captions, keep) if k],
            caption_image_index=self.caption_image_index[keep],
            features=None if self.features is None else self.features[:count],
            skipped=self.skipped,
            skipped_problems=self.skipped_problems,
            warnings=self.warnings,
        )


def group_captions(
    name: str,
    pairs: list[tuple[str, str]],
    image_order: Optional[list[str]] = None,
    features: Optional[np.ndarray] = None,
) -> CaptionedSplit:
    """Builds a split from ``(image, caption)`` pairs in any order.

    Args:
        name: Split name.
        pairs: ``(image_path, caption)`` pairs. Captions of one image keep
            their relative order.
        image_order: Image order to use; defaults to first appearance. Images
            listed here with no caption are dropped.
        features: Optional ``[N, F]`` features aligned with ``image_order``.

    Returns:
        The grouped split.
    """
    by_image: dict[str, list[str]] = {}
    for image, caption in pairs:
        by_image.setdefault(image, []).append(caption)
    order = list(by_image) if image_order is None else image_order
    images, captions, index = [], [], []
    keep_rows = []
    for row, image in enumerate(order):
        caps = by_image.get(image)
        if not caps:
            continue
        keep_rows.append(row)
        captions.extend(caps)
        index.extend([len(images)] * len(caps))
        images.append(image)
    if features is not None:
        features = features[keep_rows]
    return CaptionedSplit(name, images, captions, np.asarray(index, np.int32), features)
