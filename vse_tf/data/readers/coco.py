"""The MS-COCO reader: the official ``annotations/captions_*.json`` files."""

from __future__ import annotations

import glob
import os
from typing import Any, Optional, Union

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

CocoId = Union[int, str]
_ALIASES = {"train": "train2014", "dev": "val2014", "val": "val2014"}


def _annotation_file(data_dir: str, split: str, log: v.ProblemLog) -> tuple[str, str]:
    """``(annotation json, image folder name)`` for a COCO split name.

    Raises:
        ValueError: For an unknown split name.
        MissingSplitError: When the ``captions_{train,val}2014.json`` of a
            train or dev split is absent.
        DataError: When the test split has no ``captions_test*.json``.
    """
    ann_dir = os.path.join(data_dir, "annotations")
    if split == "test":
        found = sorted(glob.glob(os.path.join(ann_dir, "captions_test*.json")))
        if not found:
            log.fatal(
                v.MISSING_FILE, ann_dir, "no captions_test*.json for the test split"
            )
        path = found[0]
        return path, os.path.basename(path)[len("captions_") : -len(".json")]
    tag = _ALIASES.get(split, split)
    path = os.path.join(ann_dir, f"captions_{tag}.json")
    if not os.path.isfile(path):
        if split in _ALIASES or split in ("train2014", "val2014"):
            log.missing_split(path, "annotation file not found")
        raise ValueError(
            f"unknown COCO split {split!r}; choose from train, dev, val, test, "
            "train2014, val2014"
        )
    return path, tag


def _coco_id(value: Any) -> bool:
    """Whether ``value`` can be a COCO image id (an int or a string)."""
    return isinstance(value, (int, str)) and not isinstance(value, bool)


def _record_image_id(
    record: Any,
    keys: tuple[str, str],
    where: str,
    path: str,
    log: v.ProblemLog,
    rejected: set[CocoId],
) -> Optional[CocoId]:
    """The image id of an ``images`` or ``annotations`` record, or None.

    Args:
        record: The record as parsed.
        keys: ``(id key, other key)`` the record must hold: ``("id",
            "file_name")`` or ``("image_id", "caption")``.
        where: Its locator, e.g. ``images[3]``.
        path: The annotation file.
        log: Where problems go.
        rejected: Ids whose record or a caption was bad; a record lacking a
            key but with a usable id adds that id.

    Returns:
        The id, or None (logged) when a key is missing or the id is neither
        a number nor a string.
    """
    id_key = keys[0]
    problem = missing_keys(record, keys, where)
    if problem is not None:
        log.add(v.BAD_RECORD, path, problem)
        if isinstance(record, dict) and _coco_id(record.get(id_key)):
            rejected.add(record[id_key])
        return None
    image_id = record[id_key]
    if not _coco_id(image_id):
        log.add(
            v.BAD_RECORD,
            path,
            f"{where}: image id {v.short_repr(image_id)} is not a number or string",
        )
        return None
    return image_id


def _lists(path: str, log: v.ProblemLog) -> tuple[list[Any], list[Any]]:
    """The ``images`` and ``annotations`` lists; fatal when absent or empty."""
    data = load_json_object(path, ("images", "annotations"), log)
    entries, annotations = data["images"], data["annotations"]
    if not isinstance(entries, list) or not isinstance(annotations, list):
        log.fatal(v.BAD_SCHEMA, path, "'images' and 'annotations' must be lists")
    if not entries:
        log.fatal(v.NO_EXAMPLES, path, "no images")
    return entries, annotations


def _images_by_id(
    entries: list[Any],
    image_dir: str,
    path: str,
    log: v.ProblemLog,
    rejected: set[CocoId],
) -> dict[CocoId, Image]:
    """The good ``images`` records by id; repeated ids or files are logged."""
    records: dict[CocoId, Image] = {}
    file_names: dict[str, str] = {}
    for i, entry in enumerate(entries):
        where = f"images[{i}]"
        image_id = _record_image_id(
            entry, ("id", "file_name"), where, path, log, rejected
        )
        if image_id is None:
            continue
        if image_id in records:
            log.add(
                v.DUPLICATE_IMAGE,
                path,
                f"{where}: duplicate image id {image_id} "
                f"(also {records[image_id].where})",
            )
            continue
        file_name, problem = relative_image([entry["file_name"]])
        if problem is None and file_name in file_names:
            problem = (
                v.DUPLICATE_IMAGE,
                f"file {file_name} already listed at {file_names[file_name]}",
            )
        if problem is not None:
            log.add(problem[0], path, f"{where}: {problem[1]}")
            rejected.add(image_id)
            continue
        file_names[file_name] = where
        records[image_id] = Image(image_path(image_dir, file_name), path, None, where)
    return records


def _attach_captions(
    annotations: list[Any],
    records: dict[CocoId, Image],
    path: str,
    log: v.ProblemLog,
    rejected: set[CocoId],
) -> None:
    """Adds each good ``annotations`` caption to its image, in file order."""
    for k, ann in enumerate(annotations):
        where = f"annotations[{k}]"
        image_id = _record_image_id(
            ann, ("image_id", "caption"), where, path, log, rejected
        )
        if image_id is None:
            continue
        if image_id not in records:
            if image_id not in rejected:
                log.add(v.UNKNOWN_IMAGE, path, f"{where}: unknown image id {image_id}")
            continue
        caption, bad = v.clean_caption(ann["caption"])
        if bad is not None:
            log.add(bad[0], path, f"{where}: {bad[1]}")
            rejected.add(image_id)
            continue
        records[image_id].captions.append(Caption(caption, path, None, where))


def _sorted_images(
    records: dict[CocoId, Image],
    image_dir: str,
    path: str,
    log: v.ProblemLog,
    rejected: set[CocoId],
) -> list[Image]:
    """The images by id; ids that mix types are fatal, caption-less ones logged."""
    kinds = {type(image_id) for image_id in records}
    if len(kinds) > 1:
        log.fatal(v.BAD_SCHEMA, path, "image ids mix numbers and strings")
    order = sorted(records)
    for image_id in order:
        image = records[image_id]
        if not image.captions and image_id not in rejected:
            log.add(
                v.NO_CAPTIONS,
                path,
                f"image id {image_id} ({os.path.relpath(image.key, image_dir)}) "
                "has no captions",
            )
    return [records[image_id] for image_id in order]


def read_coco(
    data_dir: PathLike,
    split: str,
    check_files: bool = False,
    skip_bad_examples: bool = False,
) -> CaptionedSplit:
    """Reads one split of MS-COCO from its official caption annotations.

    Args:
        data_dir: Folder holding ``annotations/captions_*.json`` and the image
            folders (``train2014/``, ``val2014/``...).
        split: ``train`` (or ``train2014``), ``dev``/``val`` (or ``val2014``)
            or ``test`` (needs ``annotations/captions_test*.json``).
        check_files: Whether to verify that every image file exists.
        skip_bad_examples: Leave bad records out instead of raising; see the
            `vse_tf.data.readers` docstring.

    Returns:
        The split, images sorted by COCO image id, captions of each image in
        annotation order.

    Raises:
        ValueError: For an unknown ``split``.
        MissingSplitError: When the train or dev annotation file is absent.
        DataError: Listing every problem: a missing (test) or unparseable
            annotation file or one without ``images``/``annotations`` lists
            (fatal); records without ``id``/``file_name`` or
            ``image_id``/``caption``, ids that are not numbers or strings,
            repeated ids or files, unsafe file names, annotations of unknown
            images, empty captions, images without captions and (with
            ``check_files``) missing images.
    """
    data_dir = os.fspath(data_dir)
    log = v.ProblemLog()
    path, tag = _annotation_file(data_dir, split, log)
    entries, annotations = _lists(path, log)
    image_dir = os.path.join(data_dir, tag)
    rejected: set[CocoId] = set()  # ids whose record or a caption was bad
    records = _images_by_id(entries, image_dir, path, log, rejected)
    _attach_captions(annotations, records, path, log, rejected)
    images = _sorted_images(records, image_dir, path, log, rejected)
    return finish(split, images, log, path, skip_bad_examples, check_files)
