"""The Karpathy JSON reader: ``dataset_{coco,flickr8k,flickr30k}.json``."""

from __future__ import annotations

import os
from typing import Any, Optional

from vse_tf.data import validation as v
from vse_tf.data.readers.common import (
    Caption,
    Image,
    PathLike,
    finish,
    image_path,
    load_json_object,
    missing_keys,
    relative_image,
)
from vse_tf.data.split import CaptionedSplit

KARPATHY_SPLITS = {
    "train": ("train", "restval"),
    "dev": ("val",),
    "val": ("val",),
    "test": ("test",),
}
KARPATHY_FILE_SPLITS = ("train", "val", "test", "restval")


def _entries(json_path: str, log: v.ProblemLog) -> list[Any]:
    """The ``images`` list of the file; fatal when it has none."""
    data = load_json_object(json_path, ("images",), log)
    entries = data["images"]
    if not isinstance(entries, list):
        log.fatal(v.BAD_SCHEMA, json_path, "'images' is not a list")
    return entries


def _file_split_wanted(
    entry: Any, where: str, wanted: tuple[str, ...], json_path: str, log: v.ProblemLog
) -> bool:
    """Whether ``entry`` is a well-formed record of one of the ``wanted`` splits.

    Records without ``split``/``filename``/``sentences`` or with an unknown
    split name are logged.
    """
    problem = missing_keys(entry, ("split", "filename", "sentences"), where)
    if problem is not None:
        log.add(v.BAD_RECORD, json_path, problem)
        return False
    file_split = entry["split"]
    if not isinstance(file_split, str) or file_split not in KARPATHY_FILE_SPLITS:
        log.add(
            v.BAD_RECORD,
            json_path,
            f"{where}: unknown split name {v.short_repr(file_split)}; "
            f"expected one of {KARPATHY_FILE_SPLITS}",
        )
        return False
    return file_split in wanted


def _image(
    entry: dict[str, Any],
    where: str,
    image_root: PathLike,
    seen: dict[str, str],
    json_path: str,
    log: v.ProblemLog,
) -> Optional[Image]:
    """The image of one record of the split, or None (logged) when unusable.

    An image whose every sentence is bad comes back without captions; the
    last step (`finish`) leaves it out.
    """
    filepath = entry.get("filepath")
    parts = [filepath] if filepath not in (None, "") else []
    relative, problem = relative_image([*parts, entry["filename"]])
    if problem is not None:
        log.add(problem[0], json_path, f"{where}: {problem[1]}")
        return None
    key = image_path(image_root, relative)
    if key in seen:
        log.add(
            v.DUPLICATE_IMAGE,
            json_path,
            f"{where}: image {relative} already listed at {seen[key]}",
        )
        return None
    seen[key] = where
    sentences = entry["sentences"]
    if not isinstance(sentences, list):
        log.add(v.BAD_RECORD, json_path, f"{where}: 'sentences' is not a list")
        return None
    if not sentences:
        log.add(v.NO_CAPTIONS, json_path, f"{where} ({relative}): no sentences")
        return None
    image = Image(key, json_path, None, where)
    image.captions = _sentences(sentences, where, json_path, log)
    return image


def _sentences(
    sentences: list[Any], where: str, json_path: str, log: v.ProblemLog
) -> list[Caption]:
    """The good ``raw`` captions of a record's sentences; the bad ones logged."""
    captions = []
    for j, sentence in enumerate(sentences):
        at = f"{where}.sentences[{j}]"
        problem = missing_keys(sentence, ("raw",), at)
        if problem is not None:
            log.add(v.BAD_RECORD, json_path, problem)
            continue
        caption, bad = v.clean_caption(sentence["raw"])
        if bad is not None:
            log.add(bad[0], json_path, f"{at}: {bad[1]}")
            continue
        captions.append(Caption(caption, json_path, None, at))
    return captions


def read_karpathy(
    json_path: PathLike,
    split: str,
    image_root: PathLike,
    check_files: bool = False,
    skip_bad_examples: bool = False,
) -> CaptionedSplit:
    """Reads one split of a Karpathy ``dataset_*.json`` file.

    Args:
        json_path: The Karpathy JSON file.
        split: ``train`` (Karpathy ``train`` plus ``restval``), ``dev`` (or
            ``val``; Karpathy ``val``) or ``test``.
        image_root: Folder the image paths are joined onto, as
            ``image_root/filepath/filename`` (``filepath`` may be absent).
        check_files: Whether to verify that every image file exists.
        skip_bad_examples: Leave bad records and captions out instead of
            raising; see the `vse_tf.data.readers` docstring.

    Returns:
        The split, images in file order.

    Raises:
        ValueError: For an unknown ``split``.
        DataError: Listing every problem: invalid JSON or UTF-8 and a top
            level without an ``images`` list (both fatal); records without
            ``split``/``filename``/``sentences``, unknown split names, unsafe
            image paths, images without sentences, empty captions, repeated
            images and (with ``check_files``) missing images. A file without
            any record of ``split`` is a plain `DataError` (``no_examples``).
    """
    if split not in KARPATHY_SPLITS:
        raise ValueError(
            f"unknown Karpathy split {split!r}; choose from {tuple(KARPATHY_SPLITS)}"
        )
    wanted = KARPATHY_SPLITS[split]
    json_path = os.fspath(json_path)
    log = v.ProblemLog()
    images: list[Image] = []
    seen: dict[str, str] = {}
    for i, entry in enumerate(_entries(json_path, log)):
        where = f"images[{i}]"
        if not _file_split_wanted(entry, where, wanted, json_path, log):
            continue
        image = _image(entry, where, image_root, seen, json_path, log)
        if image is not None:
            images.append(image)
    if not images and not log.problems:
        log.fatal(v.NO_EXAMPLES, json_path, f"no images in split {split!r} ({wanted})")
    return finish(split, images, log, json_path, skip_bad_examples, check_files)
