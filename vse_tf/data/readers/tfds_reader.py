"""The TensorFlow Datasets reader: captioned images through ``tensorflow_datasets``.

``--dataset=tfds --tfds_name=coco_captions`` reads COCO with the Karpathy
splits as TFDS prepares them: ``train`` is TFDS ``train`` + ``restval``,
``dev`` (or ``val``) is ``val``, ``test`` is ``test``. Other TFDS data sets
with an ``image`` feature and captions (a ``captions`` sequence with
``text``, or a ``caption`` string) read the same, split names passed on as
they are (``dev`` -> ``validation``).

The rest of vse_tf works on image files (feature caches, indexes, exports
all name images by path), so each image's encoded bytes, as TFDS stores
them (never decoded here), are written once to
``<image_root>/<tfds name>/<tfds split>/<image id>.<jpg|png>`` (atomically;
a later read reuses the file). Captions go through the same checks as every
reader's (`vse_tf.data.validation.clean_caption`, duplicates, images with
no caption left), reported the same way.

``tensorflow_datasets`` is the ``tfds`` extra; it installs beside
TensorFlow 2.21. Tested offline with ``tfds.testing.mock_data``.
"""

from __future__ import annotations

import os
from typing import Any, Optional

from vse_tf import errors, io_utils, shard_store
from vse_tf import images as images_lib
from vse_tf.data import validation as v
from vse_tf.data.readers.common import Caption, Image, finish
from vse_tf.data.split import CaptionedSplit

KARPATHY_TFDS_SPLITS = {
    "train": ("train", "restval"),
    "dev": ("val",),
    "val": ("val",),
    "test": ("test",),
}
"""``coco_captions``' TFDS splits of each vse_tf split."""

_EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "GIF": "gif", "BMP": "bmp"}


def default_image_root(cache_dir: str = "") -> str:
    """Where TFDS images are written as files: ``<cache>/tfds_images``."""
    return os.path.join(cache_dir or shard_store.default_cache_dir(), "tfds_images")


def _tfds():
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise errors.UserError(
            "--dataset=tfds needs tensorflow_datasets: pip install 'vse_tf[tfds]'"
        ) from None
    return tfds


def tfds_splits(name: str, split: str) -> tuple[str, ...]:
    """The TFDS splits that make up vse_tf split ``split`` of data set ``name``."""
    if name.split("/")[0] == "coco_captions":
        if split not in KARPATHY_TFDS_SPLITS:
            raise ValueError(
                f"unknown split {split!r} of coco_captions; choose from "
                f"{tuple(KARPATHY_TFDS_SPLITS)}"
            )
        return KARPATHY_TFDS_SPLITS[split]
    return ({"dev": "validation"}.get(split, split),)


def _captions(example: dict[str, Any]) -> list[Any]:
    """The raw captions of one example, whatever the data set calls them."""
    if "captions" in example:
        captions = example["captions"]
        texts = captions["text"] if isinstance(captions, dict) else captions
        return [_text(t) for t in texts]
    if "caption" in example:
        return [_text(example["caption"])]
    raise errors.UserError(
        "this TFDS data set has no 'captions' or 'caption' feature: "
        f"it has {sorted(example)}"
    )


def _text(value: Any) -> Any:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return value  # (clean_caption reports a caption that is no text)
    return value


def _image_file(
    folder: str, example: dict[str, Any], position: int
) -> tuple[str, Optional[str]]:
    """``(path, problem)``: the example's image written as a file (once)."""
    data = example["image"]
    kind = images_lib.sniff_kind(data)
    if kind is None:
        return "", f"image {position} is no JPEG, PNG, GIF or BMP"
    image_id = example.get("image/id")
    stem = str(int(image_id)) if image_id is not None else f"{position:08d}"
    path = os.path.join(folder, f"{stem}.{_EXTENSIONS[kind]}")
    if not (os.path.isfile(path) and os.path.getsize(path) == len(data)):
        io_utils.atomic_write_bytes(path, data)
    return path, None


def read_tfds(
    name: str,
    split: str,
    image_root: str,
    data_dir: Optional[str] = None,
    skip_bad_examples: bool = False,
) -> CaptionedSplit:
    """Reads one split of a TFDS captioned-image data set.

    Args:
        name: The TFDS name (``coco_captions``, ``coco_captions/2014``...).
        split: ``train``, ``dev`` (``val``) or ``test``.
        image_root: Where the images are written as files.
        data_dir: TFDS data folder (None: TFDS's default).
        skip_bad_examples: Leave bad captions and images out instead of
            raising (`vse_tf.data.readers`).

    Returns:
        The split, images in TFDS order.

    Raises:
        errors.UserError: when tensorflow_datasets is not installed, or the
            data set has no captions.
        DataError: listing every caption and image problem (as the other
            readers).
    """
    tfds = _tfds()
    log = v.ProblemLog()
    images: list[Image] = []
    seen: dict[str, str] = {}
    for tfds_split in tfds_splits(name, split):
        source = f"tfds:{name}/{tfds_split}"
        folder = os.path.join(image_root, name.replace("/", "_"), tfds_split)
        os.makedirs(folder, exist_ok=True)
        try:
            dataset = tfds.load(
                name,
                split=tfds_split,
                data_dir=data_dir,
                decoders={"image": tfds.decode.SkipDecoding()},
            )
        except Exception as error:  # noqa: BLE001  (TFDS's many error types)
            first = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise errors.UserError(
                f"TFDS could not load {name} split {tfds_split} ({first[:240]}); "
                "prepare it once where there is network: tfds build "
                f"{name} --data_dir=DIR, then pass --data_dir=DIR"
            ) from None
        for position, example in enumerate(tfds.as_numpy(dataset)):
            where = f"[{position}]"
            path, problem = _image_file(folder, example, position)
            if problem is not None:
                log.add(v.BAD_RECORD, source, f"{where}: {problem}")
                continue
            if path in seen:
                log.add(
                    v.DUPLICATE_IMAGE,
                    source,
                    f"{where}: image {os.path.basename(path)} already listed at "
                    f"{seen[path]}",
                )
                continue
            seen[path] = f"{source}{where}"
            image = Image(path, source, None, where)
            for j, raw in enumerate(_captions(example)):
                caption, bad = v.clean_caption(raw)
                if bad is not None:
                    log.add(bad[0], source, f"{where}.captions[{j}]: {bad[1]}")
                    continue
                image.captions.append(Caption(caption, source, None, f"{where}"))
            if not image.captions:
                log.add(v.NO_CAPTIONS, source, f"{where}: no usable caption")
            images.append(image)
    return finish(split, images, log, f"tfds:{name}", skip_bad_examples)
