"""Readers that turn the common caption-dataset layouts into `CaptionedSplit`s.

Every reader returns captions grouped by image in image order, with image
paths made absolute by joining them onto the image folder. Supported layouts:

* Flickr8k (`read_flickr8k`): ``Flickr8k.token.txt`` or ``captions.txt`` plus
  the ``Flickr_8k.{train,dev,test}Images.txt`` split lists.
* Karpathy JSON (`read_karpathy`): ``dataset_{coco,flickr8k,flickr30k}.json``.
* MS-COCO (`read_coco`): ``annotations/captions_{train,val}2014.json``.
* VSE++ precomputed features (`read_precomp`): ``{split}_ims.npy`` plus
  ``{split}_caps.txt``.
* A plain CSV/TSV with ``image`` and ``caption`` columns (`read_caption_csv`).

`read_split` dispatches on a dataset name.

Validation: every reader checks every row or record (UTF-8, column counts,
JSON schema, empty captions, image paths that are absolute or escape the data
root, split lists naming unknown images, repeated images, duplicate
``(image, caption)`` pairs and, with ``check_files``, missing image files) and
reports *all* problems in one `DataError` (``error.problems`` holds each as a
`Problem` with file, line, byte offset and kind). With
``skip_bad_examples=True`` the bad rows (and images left without captions)
are left out instead and counted on the split's ``skipped``; problems that
make a whole file unusable (missing files, a bad header, JSON that does not
parse or is not the expected schema, unusable features) raise either way.
Duplicate ``(image, caption)`` pairs are only warnings (``split.warnings``)
unless skipping: the official Flickr8k captions hold nine of them.
"""

from __future__ import annotations

import csv
import dataclasses
import glob
import json
import os
import posixpath
import re
from collections.abc import Iterator
from typing import Any, Optional, Union

import numpy as np

from vse_tf.data import validation as v
from vse_tf.data.split import CaptionedSplit, DataError, Problem, kind_counts

__all__ = [
    "DATASETS",
    "CaptionedSplit",
    "DataError",
    "Problem",
    "read_caption_csv",
    "read_coco",
    "read_flickr8k",
    "read_karpathy",
    "read_precomp",
    "read_split",
]

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


@dataclasses.dataclass
class _Caption:
    """One accepted caption and where it was read."""

    text: str
    path: str
    line: Optional[int]
    where: str = ""


@dataclasses.dataclass
class _Image:
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
    captions: list[_Caption] = dataclasses.field(default_factory=list)


def _at(where: str) -> str:
    return f"{where}: " if where else ""


def _image_path(root: PathLike, *parts: str) -> str:
    """The absolute path of an image under ``root``."""
    return os.path.abspath(os.path.join(os.fspath(root), *parts))


def _relative_image(parts: list[Any]) -> tuple[Optional[str], Optional[tuple]]:
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


def _finish(
    name: str,
    images: list[_Image],
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
    notes: list[str] = []
    usable = [i for i, image in enumerate(images) if image.captions]
    if check_files:
        missing = [i for i in usable if not os.path.isfile(images[i].key)]
        for i in missing:
            image = images[i]
            log.add(
                v.MISSING_IMAGE,
                image.path,
                f"{_at(image.where)}missing image file {image.key}",
                image.line,
            )
        if missing:
            listed = ", ".join(images[i].key for i in missing[:_MAX_LISTED_MISSING])
            more = "" if len(missing) <= _MAX_LISTED_MISSING else ", ..."
            notes.append(
                f"{len(missing)} of {len(usable)} image files missing: {listed}{more}"
            )
            gone = set(missing)
            usable = [i for i in usable if i not in gone]
    for i in usable:
        image = images[i]
        first_seen: dict[str, _Caption] = {}
        kept = []
        for caption in image.captions:
            earlier = first_seen.get(caption.text)
            if earlier is None:
                first_seen[caption.text] = caption
                kept.append(caption)
                continue
            same_as = (
                f"line {earlier.line}" if earlier.line is not None else earlier.where
            )
            log.add(
                v.DUPLICATE_CAPTION,
                caption.path,
                f"{_at(caption.where)}duplicate (image, caption) pair for "
                f"{os.path.basename(image.key)}: same as {same_as}",
                caption.line,
            )
            if not skip:
                kept.append(caption)
        image.captions = kept
    if not skip:
        log.raise_errors(notes)

    keys: list[str] = []
    captions: list[str] = []
    index: list[int] = []
    rows: list[int] = []
    for i in usable:
        keys.append(images[i].key)
        rows.append(i)
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
        None if features is None else features[rows],
        skipped=kind_counts(log.problems) if skip else {},
        skipped_problems=tuple(log.ordered()) if skip else (),
        warnings=() if skip else warnings,
    )


def _load_json(path: PathLike, log: v.ProblemLog) -> Any:
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


def _missing_keys(record: Any, keys: tuple[str, ...], where: str) -> Optional[str]:
    """A message when ``record`` is not an object holding ``keys``."""
    if not isinstance(record, dict):
        return f"{where} is not a JSON object: {v.short_repr(record)}"
    missing = [repr(k) for k in keys if k not in record]
    if missing:
        return f"{where} has no {', '.join(missing)} key"
    return None


def _csv_rows(
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
# Flickr8k.

_Captions = dict[str, list[_Caption]]


def _read_flickr_token(path: str, log: v.ProblemLog) -> tuple[_Captions, set[str]]:
    """Parses ``Flickr8k.token.txt`` (``name.jpg#i<TAB>caption`` lines).

    Returns:
        The accepted captions by image name, and the names of images that
        lost a caption line to a problem.
    """
    by_image: _Captions = {}
    rejected: set[str] = set()
    for number, text, valid in v.decode_lines(path, v.read_bytes(path, log), log):
        line = text.rstrip("\r\n")
        fields = line.split("\t")
        match = _TOKEN_SUFFIX.match(fields[0].strip())
        if not valid:
            if match is not None:
                rejected.add(match["image"])
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
                rejected.add(match["image"])
            continue
        if match is None:
            log.add(
                v.BAD_RECORD,
                path,
                f"bad '#i' suffix in image name {fields[0]!r}",
                number,
            )
            continue
        image = match["image"]
        problem = v.path_problem(image)
        if problem is None:
            caption, problem = v.clean_caption(fields[1])
        if problem is not None:
            log.add(problem[0], path, problem[1], number)
            rejected.add(image)
            continue
        by_image.setdefault(image, []).append(_Caption(caption, path, number))
    return by_image, rejected


def _read_flickr_csv(path: str, log: v.ProblemLog) -> tuple[_Captions, set[str]]:
    """Parses a Kaggle-style ``captions.txt`` (CSV with ``image,caption``).

    Returns:
        As `_read_flickr_token`.
    """
    by_image: _Captions = {}
    rejected: set[str] = set()
    lines = v.decode_lines(path, v.read_bytes(path, log), log)
    rows = _csv_rows(path, lines, ",", log)
    first = next(rows, None)
    header = None if first is None or first[0] != 1 else first[1]
    if header is None or [h.strip() for h in header] != ["image", "caption"]:
        log.fatal(
            v.BAD_HEADER, path, f"expected header 'image,caption', got {header}", 1
        )
    for number, row in rows:
        if row is None or len(row) != 2:
            if row is None:
                continue  # not UTF-8: already logged
            log.add(
                v.BAD_COLUMNS,
                path,
                f"expected 2 columns (image, caption), got {len(row)}",
                number,
            )
            rejected.add(row[0].strip())
            continue
        image = row[0].strip()
        problem = v.path_problem(image)
        if problem is None:
            caption, problem = v.clean_caption(row[1])
        if problem is not None:
            log.add(problem[0], path, problem[1], number)
            rejected.add(image)
            continue
        by_image.setdefault(image, []).append(_Caption(caption, path, number))
    return by_image, rejected


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
            out instead of raising; see the module docstring.

    Returns:
        The split; image paths are absolute.

    Raises:
        ValueError: For an unknown ``split``.
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
    token_path = os.path.join(data_dir, "Flickr8k.token.txt")
    csv_path = os.path.join(data_dir, "captions.txt")
    if os.path.isfile(token_path):
        caption_path = token_path
        by_image, rejected = _read_flickr_token(token_path, log)
    elif os.path.isfile(csv_path):
        caption_path = csv_path
        by_image, rejected = _read_flickr_csv(csv_path, log)
    else:
        log.fatal(
            v.MISSING_FILE,
            data_dir,
            "no caption file (Flickr8k.token.txt or captions.txt)",
        )

    list_path = os.path.join(data_dir, f"Flickr_8k.{split}Images.txt")
    if not os.path.isfile(list_path):
        log.fatal(v.MISSING_FILE, list_path, "split list not found")
    image_dir = next(
        (
            os.path.join(data_dir, d)
            for d in FLICKR8K_IMAGE_DIRS
            if os.path.isdir(os.path.join(data_dir, d))
        ),
        None,
    )
    if image_dir is None:
        log.fatal(
            v.MISSING_FILE,
            data_dir,
            f"no image folder; looked for {', '.join(FLICKR8K_IMAGE_DIRS)}",
        )

    images: list[_Image] = []
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
        captions = by_image.get(name)
        if not captions:
            if name not in rejected:
                log.add(
                    v.UNKNOWN_IMAGE,
                    list_path,
                    f"image {name} has no captions in {caption_path}",
                    number,
                )
            continue
        images.append(
            _Image(_image_path(image_dir, name), list_path, number, "", list(captions))
        )
    if not listed:
        log.fatal(v.NO_EXAMPLES, list_path, "split list is empty")
    return _finish(split, images, log, list_path, skip_bad_examples, check_files)


# --------------------------------------------------------------------------
# Karpathy JSON.


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
            raising; see the module docstring.

    Returns:
        The split, images in file order.

    Raises:
        ValueError: For an unknown ``split``.
        DataError: Listing every problem: invalid JSON or UTF-8 and a top
            level without an ``images`` list (both fatal); records without
            ``split``/``filename``/``sentences``, unknown split names, unsafe
            image paths, images without sentences, empty captions, repeated
            images and (with ``check_files``) missing images.
    """
    if split not in KARPATHY_SPLITS:
        raise ValueError(
            f"unknown Karpathy split {split!r}; choose from {tuple(KARPATHY_SPLITS)}"
        )
    wanted = KARPATHY_SPLITS[split]
    json_path = os.fspath(json_path)
    log = v.ProblemLog()
    data = _load_json(json_path, log)
    problem = _missing_keys(data, ("images",), "top level")
    if problem is not None:
        log.fatal(v.BAD_SCHEMA, json_path, problem)
    entries = data["images"]
    if not isinstance(entries, list):
        log.fatal(v.BAD_SCHEMA, json_path, "'images' is not a list")

    images: list[_Image] = []
    seen: dict[str, str] = {}
    for i, entry in enumerate(entries):
        where = f"images[{i}]"
        problem = _missing_keys(entry, ("split", "filename", "sentences"), where)
        if problem is not None:
            log.add(v.BAD_RECORD, json_path, problem)
            continue
        file_split = entry["split"]
        if not isinstance(file_split, str) or file_split not in KARPATHY_FILE_SPLITS:
            log.add(
                v.BAD_RECORD,
                json_path,
                f"{where}: unknown split name {v.short_repr(file_split)}; "
                f"expected one of {KARPATHY_FILE_SPLITS}",
            )
            continue
        if file_split not in wanted:
            continue
        filepath = entry.get("filepath")
        parts = [filepath] if filepath not in (None, "") else []
        relative, problem = _relative_image([*parts, entry["filename"]])
        if problem is not None:
            log.add(problem[0], json_path, f"{where}: {problem[1]}")
            continue
        key = _image_path(image_root, relative)
        if key in seen:
            log.add(
                v.DUPLICATE_IMAGE,
                json_path,
                f"{where}: image {relative} already listed at {seen[key]}",
            )
            continue
        seen[key] = where
        sentences = entry["sentences"]
        if not isinstance(sentences, list) or not sentences:
            log.add(
                v.NO_CAPTIONS if isinstance(sentences, list) else v.BAD_RECORD,
                json_path,
                f"{where} ({relative}): no sentences"
                if isinstance(sentences, list)
                else f"{where}: 'sentences' is not a list",
            )
            continue
        image = _Image(key, json_path, None, where)
        for j, sentence in enumerate(sentences):
            at = f"{where}.sentences[{j}]"
            problem = _missing_keys(sentence, ("raw",), at)
            if problem is not None:
                log.add(v.BAD_RECORD, json_path, problem)
                continue
            caption, bad = v.clean_caption(sentence["raw"])
            if bad is not None:
                log.add(bad[0], json_path, f"{at}: {bad[1]}")
                continue
            image.captions.append(_Caption(caption, json_path, None, at))
        images.append(image)
    if not images and not log.problems:
        log.fatal(v.NO_EXAMPLES, json_path, f"no images in split {split!r} ({wanted})")
    return _finish(split, images, log, json_path, skip_bad_examples, check_files)


# --------------------------------------------------------------------------
# MS-COCO.


def _coco_annotation_file(
    data_dir: str, split: str, log: v.ProblemLog
) -> tuple[str, str]:
    """``(annotation json, image folder name)`` for a COCO split name."""
    ann_dir = os.path.join(data_dir, "annotations")
    aliases = {"train": "train2014", "dev": "val2014", "val": "val2014"}
    tag = aliases.get(split, split)
    if split == "test":
        found = sorted(glob.glob(os.path.join(ann_dir, "captions_test*.json")))
        if not found:
            log.fatal(
                v.MISSING_FILE, ann_dir, "no captions_test*.json for the test split"
            )
        path = found[0]
        tag = os.path.basename(path)[len("captions_") : -len(".json")]
        return path, tag
    path = os.path.join(ann_dir, f"captions_{tag}.json")
    if not os.path.isfile(path):
        if split in aliases or split in ("train2014", "val2014"):
            log.fatal(v.MISSING_FILE, path, "annotation file not found")
        raise ValueError(
            f"unknown COCO split {split!r}; choose from train, dev, val, test, "
            "train2014, val2014"
        )
    return path, tag


def _coco_id(value: Any) -> bool:
    """Whether ``value`` can be a COCO image id (an int or a string)."""
    return isinstance(value, (int, str)) and not isinstance(value, bool)


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
            module docstring.

    Returns:
        The split, images sorted by COCO image id, captions of each image in
        annotation order.

    Raises:
        ValueError: For an unknown ``split``.
        DataError: Listing every problem: a missing or unparseable annotation
            file or one without ``images``/``annotations`` lists (fatal);
            records without ``id``/``file_name`` or ``image_id``/``caption``,
            ids that are not numbers or strings, repeated ids or files,
            unsafe file names, annotations of unknown images, empty captions,
            images without captions and (with ``check_files``) missing images.
    """
    data_dir = os.fspath(data_dir)
    log = v.ProblemLog()
    path, tag = _coco_annotation_file(data_dir, split, log)
    data = _load_json(path, log)
    problem = _missing_keys(data, ("images", "annotations"), "top level")
    if problem is not None:
        log.fatal(v.BAD_SCHEMA, path, problem)
    entries, annotations = data["images"], data["annotations"]
    if not isinstance(entries, list) or not isinstance(annotations, list):
        log.fatal(v.BAD_SCHEMA, path, "'images' and 'annotations' must be lists")
    if not entries:
        log.fatal(v.NO_EXAMPLES, path, "no images")

    image_dir = os.path.join(data_dir, tag)
    records: dict[Any, _Image] = {}
    file_names: dict[str, str] = {}
    rejected: set[Any] = set()  # ids whose record or a caption was bad
    for i, entry in enumerate(entries):
        where = f"images[{i}]"
        problem = _missing_keys(entry, ("id", "file_name"), where)
        if problem is not None:
            log.add(v.BAD_RECORD, path, problem)
            if isinstance(entry, dict) and _coco_id(entry.get("id")):
                rejected.add(entry["id"])
            continue
        image_id = entry["id"]
        if not _coco_id(image_id):
            log.add(
                v.BAD_RECORD,
                path,
                f"{where}: image id {v.short_repr(image_id)} is not a number or string",
            )
            continue
        if image_id in records:
            log.add(
                v.DUPLICATE_IMAGE,
                path,
                f"{where}: duplicate image id {image_id} "
                f"(also {records[image_id].where})",
            )
            continue
        file_name, problem = _relative_image([entry["file_name"]])
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
        records[image_id] = _Image(_image_path(image_dir, file_name), path, None, where)

    for k, ann in enumerate(annotations):
        where = f"annotations[{k}]"
        problem = _missing_keys(ann, ("image_id", "caption"), where)
        if problem is not None:
            log.add(v.BAD_RECORD, path, problem)
            if isinstance(ann, dict) and _coco_id(ann.get("image_id")):
                rejected.add(ann["image_id"])
            continue
        image_id = ann["image_id"]
        if not _coco_id(image_id):
            log.add(
                v.BAD_RECORD,
                path,
                f"{where}: image id {v.short_repr(image_id)} is not a number or string",
            )
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
        records[image_id].captions.append(_Caption(caption, path, None, where))

    kinds = {type(image_id) for image_id in records}
    if len(kinds) > 1:
        log.fatal(v.BAD_SCHEMA, path, "image ids mix numbers and strings")
    images = [records[image_id] for image_id in sorted(records)]
    for image_id, image in zip(sorted(records), images):
        if not image.captions and image_id not in rejected:
            log.add(
                v.NO_CAPTIONS,
                path,
                f"image id {image_id} ({os.path.relpath(image.key, image_dir)}) "
                "has no captions",
            )
    return _finish(split, images, log, path, skip_bad_examples, check_files)


# --------------------------------------------------------------------------
# VSE++ precomputed features.


def _precomp_prefix(data_dir: str, split: str, log: v.ProblemLog) -> str:
    """The file prefix (``dev`` or ``val`` for the dev split) that exists."""
    candidates = {"dev": ("dev", "val"), "val": ("val", "dev")}.get(split, (split,))
    for prefix in candidates:
        if os.path.isfile(os.path.join(data_dir, f"{prefix}_caps.txt")):
            return prefix
    log.fatal(
        v.MISSING_FILE,
        os.path.join(data_dir, f"{candidates[0]}_caps.txt"),
        f"caption file not found (tried {', '.join(candidates)})",
    )


def _load_features(ims_path: str, log: v.ProblemLog) -> np.ndarray:
    """``[N, ...]`` float32 features; fatal ``bad_features`` when unusable."""
    try:
        features = np.load(ims_path, allow_pickle=False)
    except Exception as e:  # np.load raises many types on a bad file
        log.fatal(v.BAD_FEATURES, ims_path, f"cannot load features: {e}")
    if not isinstance(features, np.ndarray):
        if hasattr(features, "close"):
            features.close()
        log.fatal(v.BAD_FEATURES, ims_path, "not a single .npy array")
    if features.dtype.kind not in "biuf":
        log.fatal(
            v.BAD_FEATURES,
            ims_path,
            f"features have dtype {features.dtype}, not numbers",
        )
    if features.ndim < 2:
        log.fatal(
            v.BAD_FEATURES, ims_path, f"expected [N, F] features, got {features.shape}"
        )
    with np.errstate(over="ignore", invalid="ignore"):
        return np.asarray(features, dtype=np.float32)


def read_precomp(
    data_dir: PathLike,
    split: str,
    captions_per_image: int = 5,
    skip_bad_examples: bool = False,
) -> CaptionedSplit:
    """Reads a VSE++ ``*_precomp`` split (precomputed image features).

    ``{split}_ims.npy`` holds either one feature row per image (then every
    image has ``captions / rows`` captions, which must be a whole number) or
    one row per caption, as in Kiros et al. (then only every
    ``captions_per_image``-th row is kept). Captions are matched to images by
    position, so a bad caption line is left out without shifting the others.

    Args:
        data_dir: Folder holding ``{split}_ims.npy`` and ``{split}_caps.txt``.
        split: Split name; ``dev`` also finds ``val_*`` files (and vice versa).
        captions_per_image: Captions per image, used only when the feature
            file has one row per caption.
        skip_bad_examples: Leave bad captions and feature rows out instead of
            raising; see the module docstring.

    Returns:
        The split with ``features`` set; image keys are ``"{split}:{i}"``.

    Raises:
        DataError: Listing every problem: missing or unloadable files and
            inconsistent row and caption counts (fatal); lines that are not
            UTF-8, empty captions and feature rows with NaN or infinity.
    """
    data_dir = os.fspath(data_dir)
    log = v.ProblemLog()
    prefix = _precomp_prefix(data_dir, split, log)
    caps_path = os.path.join(data_dir, f"{prefix}_caps.txt")
    ims_path = os.path.join(data_dir, f"{prefix}_ims.npy")
    if not os.path.isfile(ims_path):
        log.fatal(v.MISSING_FILE, ims_path, "feature file not found")

    captions: list[Optional[str]] = []
    for number, text, valid in v.decode_lines(
        caps_path, v.read_bytes(caps_path, log), log
    ):
        caption, problem = v.clean_caption(text.rstrip("\r\n"))
        if valid and problem is not None:
            log.add(problem[0], caps_path, f"caption: {problem[1]}", number)
        captions.append(caption if valid else None)
    if not captions:
        log.fatal(v.NO_EXAMPLES, caps_path, "no captions")
    features = _load_features(ims_path, log)

    rows, num_caps = len(features), len(captions)
    if rows == num_caps:
        if captions_per_image < 1 or num_caps % captions_per_image:
            log.fatal(
                v.BAD_FEATURES,
                ims_path,
                f"one feature row per caption, but {num_caps} captions are not a "
                f"multiple of captions_per_image={captions_per_image}",
            )
        per_image = captions_per_image
        features = features[::per_image]
    else:
        if rows == 0 or num_caps % rows:
            log.fatal(
                v.BAD_FEATURES,
                ims_path,
                f"{rows} feature rows do not divide {num_caps} captions in {caps_path}",
            )
        per_image = num_caps // rows
    finite = np.isfinite(features.reshape(len(features), -1)).all(axis=1)
    images: list[_Image] = []
    for i in range(len(features)):
        image = _Image(f"{split}:{i}", ims_path, None, f"feature row {i}")
        if not finite[i]:
            row = i * per_image if rows == num_caps else i
            log.add(
                v.NONFINITE_FEATURES,
                ims_path,
                f"feature row {row} holds NaN or infinite values",
            )
        else:
            for j in range(i * per_image, (i + 1) * per_image):
                if captions[j] is not None:
                    image.captions.append(_Caption(captions[j], caps_path, j + 1))
        images.append(image)
    return _finish(split, images, log, ims_path, skip_bad_examples, features=features)


# --------------------------------------------------------------------------
# Generic CSV / TSV.


def _detect_delimiter(path: str, header_line: str) -> Optional[str]:
    """The delimiter of a caption table: tab for ``.tsv``, else sniffed."""
    if path.lower().endswith(".tsv"):
        return "\t"
    for delimiter in ("\t", ",", ";", "|"):
        names = [h.strip().strip('"') for h in header_line.split(delimiter)]
        if "image" in names and "caption" in names:
            return delimiter
    return None


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
            module docstring.

    Returns:
        The split (named ``split``, or the file's base name when None).

    Raises:
        DataError: Listing every problem: a missing file, a bad header, a
            ``split`` argument without a ``split`` column or no matching rows
            (fatal); lines that are not UTF-8, broken quoting, wrong column
            counts, unsafe or empty image names, empty captions and (with
            ``check_files``) missing images.
    """
    path = os.fspath(path)
    log = v.ProblemLog()
    lines = v.decode_lines(path, v.read_bytes(path, log), log)
    header_line = lines[0][1] if lines else ""
    if not header_line.strip():
        log.fatal(v.BAD_HEADER, path, "missing header line", 1)
    delimiter = _detect_delimiter(path, header_line)
    if delimiter is None:
        log.fatal(
            v.BAD_HEADER,
            path,
            f"header needs 'image' and 'caption' columns: {header_line!r}",
            1,
        )
    rows = _csv_rows(path, lines, delimiter, log)
    first = next(rows, None)
    header = [] if first is None or first[1] is None else [h.strip() for h in first[1]]
    if first is None or first[0] != 1:
        log.fatal(v.BAD_HEADER, path, f"unreadable header line: {header_line!r}", 1)
    for column in ("image", "caption"):
        if column not in header:
            log.fatal(v.BAD_HEADER, path, f"header has no {column!r} column", 1)
    image_col, caption_col = header.index("image"), header.index("caption")
    split_col = header.index("split") if "split" in header else None
    if split is not None and split_col is None:
        log.fatal(
            v.BAD_HEADER, path, f"split {split!r} requested but no 'split' column", 1
        )

    by_key: dict[str, _Image] = {}
    matched = False
    for line_no, row in rows:
        if row is None:
            continue  # not UTF-8: already logged
        if len(row) != len(header):
            log.add(
                v.BAD_COLUMNS,
                path,
                f"expected {len(header)} columns, got {len(row)}",
                line_no,
            )
            continue
        if split is not None and row[split_col].strip() != split:
            continue
        matched = True
        image, problem = _relative_image([row[image_col].strip()])
        if problem is None:
            caption, problem = v.clean_caption(row[caption_col])
        if problem is not None:
            log.add(problem[0], path, problem[1], line_no)
            continue
        key = _image_path(image_root, image)
        if key not in by_key:
            by_key[key] = _Image(key, path, line_no)
        by_key[key].captions.append(_Caption(caption, path, line_no))
    if not matched:
        which = f" with split {split!r}" if split is not None else ""
        log.fatal(v.NO_EXAMPLES, path, f"no caption rows{which}")
    name = split if split is not None else os.path.splitext(os.path.basename(path))[0]
    return _finish(
        name, list(by_key.values()), log, path, skip_bad_examples, check_files
    )


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
            kind=v.MISSING_FILE,
        )
    return found[0]


def _find_caption_table(data_dir: str) -> str:
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
    delimiter = _detect_delimiter(table, lines[0][1]) if lines else None
    if delimiter is None:
        return None
    rows = _csv_rows(table, lines, delimiter, scratch)
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
            folder = os.path.dirname(table)
            first = _first_table_image(table)
            options["image_root"] = (
                folder
                if first is not None and os.path.exists(os.path.join(folder, first))
                else _default_image_root(folder)
            )
        return read_caption_csv(table, split=split, **options)
    raise ValueError(f"unknown dataset {dataset!r}; choose from {', '.join(DATASETS)}")
