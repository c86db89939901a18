"""The Flickr8k reader: a token or CSV caption file plus the split lists."""

from __future__ import annotations

import dataclasses
import os
import re

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

FLICKR8K_SPLITS = ("train", "dev", "test")
FLICKR8K_IMAGE_DIRS = ("images", "Images", "Flicker8k_Dataset", "Flickr8k_Dataset")
_TOKEN_SUFFIX = re.compile(r"^(?P<image>.+)#(?P<index>\d+)$")


@dataclasses.dataclass
class _FlickrCaptions:
    """The captions of a Flickr8k caption file.

    Attributes:
        path: The caption file.
        by_image: The accepted captions by image name, in file order.
        rejected: Names of images that lost a caption line to a problem (so
            the split list does not report them again as caption-less).
    """

    path: str
    by_image: dict[str, list[Caption]] = dataclasses.field(default_factory=dict)
    rejected: set[str] = dataclasses.field(default_factory=set)

    def add(self, image: str, raw_caption: str, line: int, log: v.ProblemLog) -> None:
        """Validates one ``(image, caption)`` line; keeps it or logs why not."""
        caption, problem = v.clean_pair(image, raw_caption)
        if problem is not None:
            log.add(problem[0], self.path, problem[1], line)
            self.rejected.add(image)
            return
        self.by_image.setdefault(image, []).append(Caption(caption, self.path, line))


def _read_flickr_token(path: str, log: v.ProblemLog) -> _FlickrCaptions:
    """Parses ``Flickr8k.token.txt`` (``name.jpg#i<TAB>caption`` lines)."""
    captions = _FlickrCaptions(path)
    for number, text, valid in v.decode_lines(path, v.read_bytes(path, log), log):
        line = text.rstrip("\r\n")
        fields = line.split("\t")
        match = _TOKEN_SUFFIX.match(fields[0].strip())
        if not valid:
            if match is not None:
                captions.rejected.add(match["image"])
            continue
        if not line.strip():
            continue
        if len(fields) != 2:
            log.add(
                v.BAD_COLUMNS,
                path,
                f"expected 2 tab-separated columns (name.jpg#i, caption), "
                f"got {len(fields)}",
                number,
            )
            if match is not None:
                captions.rejected.add(match["image"])
            continue
        if match is None:
            log.add(
                v.BAD_RECORD,
                path,
                f"bad '#i' suffix in image name {fields[0]!r}",
                number,
            )
            continue
        captions.add(match["image"], fields[1], number, log)
    return captions


def _read_flickr_csv(path: str, log: v.ProblemLog) -> _FlickrCaptions:
    """Parses a Kaggle-style ``captions.txt`` (CSV with ``image,caption``)."""
    captions = _FlickrCaptions(path)
    lines = v.decode_lines(path, v.read_bytes(path, log), log)
    rows = csv_rows(path, lines, ",", log)
    first = next(rows, None)
    header = None if first is None or first[0] != 1 else first[1]
    if header is None or [h.strip() for h in header] != ["image", "caption"]:
        log.fatal(
            v.BAD_HEADER, path, f"expected header 'image,caption', got {header}", 1
        )
    for number, row in rows:
        if row is None:
            continue  # not UTF-8: already logged
        if len(row) != 2:
            log.add(
                v.BAD_COLUMNS,
                path,
                f"expected 2 columns (image, caption), got {len(row)}",
                number,
            )
            captions.rejected.add(row[0].strip())
            continue
        captions.add(row[0].strip(), row[1], number, log)
    return captions


def _read_caption_file(data_dir: str, log: v.ProblemLog) -> _FlickrCaptions:
    """The captions of ``Flickr8k.token.txt``, else of ``captions.txt``.

    Raises:
        DataError: (``missing_file``) when neither exists; not a
            `MissingSplitError`, as every split needs the caption file.
    """
    token_path = os.path.join(data_dir, "Flickr8k.token.txt")
    csv_path = os.path.join(data_dir, "captions.txt")
    if os.path.isfile(token_path):
        return _read_flickr_token(token_path, log)
    if os.path.isfile(csv_path):
        return _read_flickr_csv(csv_path, log)
    log.fatal(
        v.MISSING_FILE,
        data_dir,
        "no caption file (Flickr8k.token.txt or captions.txt)",
    )


def _split_list_path(data_dir: str, split: str, log: v.ProblemLog) -> str:
    """The split list ``Flickr_8k.{split}Images.txt``.

    Raises:
        MissingSplitError: When it does not exist.
    """
    list_path = os.path.join(data_dir, f"Flickr_8k.{split}Images.txt")
    if not os.path.isfile(list_path):
        log.missing_split(list_path, "split list not found")
    return list_path


def _image_dir(data_dir: str, log: v.ProblemLog) -> str:
    """The first of `FLICKR8K_IMAGE_DIRS` that exists; fatal when none does."""
    for name in FLICKR8K_IMAGE_DIRS:
        if os.path.isdir(os.path.join(data_dir, name)):
            return os.path.join(data_dir, name)
    log.fatal(
        v.MISSING_FILE,
        data_dir,
        f"no image folder; looked for {', '.join(FLICKR8K_IMAGE_DIRS)}",
    )


def _listed_images(
    list_path: str, image_dir: str, captions: _FlickrCaptions, log: v.ProblemLog
) -> list[Image]:
    """The images of the split list, in its order, with their captions.

    Unsafe names, images listed twice and images without captions are
    logged and left out; an empty list is fatal.
    """
    images: list[Image] = []
    seen: dict[str, int] = {}
    listed = False
    lines = v.decode_lines(list_path, v.read_bytes(list_path, log), log)
    for number, text, valid in lines:
        name = text.strip()
        listed = listed or bool(name)
        if not valid or not name:
            continue
        problem = v.path_problem(name)
        if problem is not None:
            log.add(problem[0], list_path, problem[1], number)
            continue
        if name in seen:
            log.add(
                v.DUPLICATE_IMAGE,
                list_path,
                f"image {name} already listed on line {seen[name]}",
                number,
            )
            continue
        seen[name] = number
        found = captions.by_image.get(name)
        if not found:
            if name not in captions.rejected:
                log.add(
                    v.UNKNOWN_IMAGE,
                    list_path,
                    f"image {name} has no captions in {captions.path}",
                    number,
                )
            continue
        key = image_path(image_dir, name)
        images.append(Image(key, list_path, number, "", list(found)))
    if not listed:
        log.fatal(v.NO_EXAMPLES, list_path, "split list is empty")
    return images


def read_flickr8k(
    data_dir: PathLike,
    split: str,
    check_files: bool = False,
    skip_bad_examples: bool = False,
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
        skip_bad_examples: Leave bad rows (and images left without captions)
            out instead of raising; see the `vse_tf.data.readers` docstring.

    Returns:
        The split; image paths are absolute.

    Raises:
        ValueError: For an unknown ``split``.
        MissingSplitError: When the split list does not exist.
        DataError: Listing every problem: missing files, lines that are not
            UTF-8, wrong column counts, bad ``#i`` suffixes, empty captions,
            unsafe image names, split-list images without captions or listed
            twice, and (with ``check_files``) missing images.
    """
    if split not in FLICKR8K_SPLITS:
        raise ValueError(
            f"unknown Flickr8k split {split!r}; choose from {FLICKR8K_SPLITS}"
        )
    log = v.ProblemLog()
    data_dir = os.fspath(data_dir)
    captions = _read_caption_file(data_dir, log)
    list_path = _split_list_path(data_dir, split, log)
    image_dir = _image_dir(data_dir, log)
    images = _listed_images(list_path, image_dir, captions, log)
    return finish(split, images, log, list_path, skip_bad_examples, check_files)
