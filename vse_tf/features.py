"""Image loading and cached, resumable CNN feature extraction.

With a frozen CNN (VGG16 or EfficientNet-Lite) the image features never
change, so they are computed once per (backbone, weights, feature, image
size, precision, image list) and stored under the cache directory; training
epochs then never run the CNN.

Cache layout (one folder per key and image list)::

    <cache>/features/<key id>/<list id>/
        manifest.json       backbone, weights (fingerprint + sha256), feature,
                            input size, preprocessing and resize, requested
                            and used dtype, bf16 agreement, image-list sha256,
                            shard size, one entry per finished shard (image
                            range, rows, file, sha256, skipped images with
                            reasons), ``complete``
        shard-00000.npy     float32 [rows, F]: the features of the shard's
        shard-00001.npy     readable images, in image order
        ...

Every file is written to a temporary name and renamed into place, a shard
before the manifest entry that names it. An interrupted extraction run again
continues after the last complete shard; a shard whose bytes do not match
the manifest's sha256 (truncated, overwritten, flipped bytes) or whose shape
is wrong is recomputed, never read as features.

Images that cannot be read or decoded (missing, empty, truncated, not an
image) are skipped, never a crash: their rows are zero, ``valid`` is False
and the manifest lists each with the reason.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Any, Optional

import keras
import numpy as np
import tensorflow as tf

from vse_tf import hardware, io_utils, progress
from vse_tf.config import Config
from vse_tf.models import backbone as backbone_lib

CACHE_FORMAT = 3
BF16_MIN_COSINE = 0.999
DEFAULT_SHARD_SIZE = 1024
MANIFEST_FILE = "manifest.json"
RESIZE = "bilinear-antialias"
DTYPES = ("mixed_bfloat16", "float32")
# The cache-key name of VGG16 (its caches were keyed so before other backbones).
BACKBONE = "keras.applications.VGG16"
_BACKBONE_KEYS = {backbone_lib.VGG16: BACKBONE}


default_cache_dir = io_utils.default_cache_dir


def resize_pixels(pixels: tf.Tensor, image_size: int) -> tf.Tensor:
    """``[..., H, W, 3]`` pixels -> ``float32 [..., S, S, 3]`` in 0..255.

    The one resize used everywhere (training, evaluation, serving): bilinear
    with antialiasing, aspect ratio not kept (VGG sees the whole image).
    """
    image = tf.image.resize(
        tf.cast(pixels, tf.float32), [image_size, image_size], antialias=True
    )
    return tf.clip_by_value(image, 0.0, 255.0)


def decode_image(data: tf.Tensor, image_size: int) -> tf.Tensor:
    """Encoded JPEG/PNG/GIF/BMP bytes -> ``float32 [S, S, 3]`` RGB in 0..255."""
    image = tf.io.decode_image(data, channels=3, expand_animations=False)
    return tf.ensure_shape(
        resize_pixels(image, image_size), [image_size, image_size, 3]
    )


def load_image(path: tf.Tensor, image_size: int) -> tf.Tensor:
    """Reads a JPEG/PNG/GIF/BMP file -> ``float32 [S, S, 3]`` RGB in 0..255."""
    return decode_image(tf.io.read_file(path), image_size)


def image_dataset(
    paths: Sequence[str], image_size: int, batch_size: int
) -> tf.data.Dataset:
    """Batches of decoded images, decoded in parallel, in ``paths`` order."""
    ds = tf.data.Dataset.from_tensor_slices(tf.constant(list(paths), tf.string))
    ds = ds.map(
        lambda p: load_image(p, image_size),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


# ---------------------------------------------------------------------------
# The report.


@dataclasses.dataclass(frozen=True)
class SkippedImage:
    """An image left out of extraction.

    Attributes:
        index: Its position in the requested ``paths``.
        path: Its absolute path.
        reason: Why, e.g. ``No such file or directory``, ``Input is empty``.
    """

    index: int
    path: str
    reason: str


@dataclasses.dataclass
class FeatureReport:
    """Features of an image list and what happened to each image.

    Attributes:
        features: ``float32 [N, F]`` in ``paths`` order; rows of skipped
            images are zero.
        valid: ``bool [N]``: False for skipped images.
        skipped: The skipped images, by index.
        cache_folder: The cache folder (holds ``manifest.json``).
        used_dtype: ``float32`` or ``mixed_bfloat16`` (what computed them).
        shards_reused: Shards read from the cache (checksum verified).
        shards_computed: Shards computed by this call.
    """

    features: np.ndarray
    valid: np.ndarray
    skipped: list[SkippedImage]
    cache_folder: str
    used_dtype: str
    shards_reused: int
    shards_computed: int

    @property
    def num_skipped(self) -> int:
        return len(self.skipped)

    @property
    def manifest_path(self) -> str:
        return os.path.join(self.cache_folder, MANIFEST_FILE)

    def valid_indices(self) -> np.ndarray:
        """``int64 [N_ok]``: indices of the images that have features."""
        return np.flatnonzero(self.valid)


# ---------------------------------------------------------------------------
# Files.


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _shard_file(shard: int) -> str:
    return f"shard-{shard:05d}.npy"


def _cache_key(
    image_feature: str,
    image_size: int,
    weights: str,
    dtype: str,
    flip: bool = False,
    backbone: str = backbone_lib.VGG16,
) -> dict[str, Any]:
    key = {
        "format": CACHE_FORMAT,
        "backbone": _BACKBONE_KEYS.get(backbone, backbone),
        "weights": backbone_lib.weights_fingerprint(weights, backbone),
        "feature": image_feature,
        "image_size": image_size,
        "dtype": dtype,
        "resize": RESIZE,
        "preprocessing": backbone_lib.preprocessing(backbone),
    }
    if flip:  # only then, so the keys of unflipped caches stay as they were
        key["flip"] = "left_right"
    return key


def _list_sha256(paths: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(paths).encode()).hexdigest()


def cache_folder(
    image_feature: str,
    image_size: int,
    weights: str,
    paths: Sequence[str],
    dtype: str = "mixed_bfloat16",
    cache_dir: Optional[str] = None,
    flip: bool = False,
    backbone: str = backbone_lib.VGG16,
) -> str:
    """The cache folder of these images' features (it may not exist yet)."""
    key = _cache_key(image_feature, image_size, weights, dtype, flip, backbone)
    paths = [os.path.abspath(p) for p in paths]
    return _cache_folder(cache_dir or default_cache_dir(), key, paths)


def _cache_folder(cache_dir: str, key: dict, paths: Sequence[str]) -> str:
    key_id = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return os.path.join(cache_dir, "features", key_id, _list_sha256(paths)[:16])


def _weights_sha256(weights: str, backbone: str) -> Optional[str]:
    """sha256 of the weights file, where there is one on this machine.

    None for ``none`` and for ``imagenet`` (Keras's download; its file name is
    version-dependent).
    """
    path = backbone_lib.weights_source(backbone, weights)
    return None if path is None else io_utils.file_sha256(path)


def _read_manifest(folder: str) -> Optional[dict]:
    path = os.path.join(folder, MANIFEST_FILE)
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, ValueError) as error:
        logging.warning("Unreadable %s (%s); extracting again", path, error)
        return None
    well_formed = (
        isinstance(manifest, dict)
        and isinstance(manifest.get("shards"), list)
        and isinstance(manifest.get("shard_size"), int)
        and manifest["shard_size"] >= 1
        and manifest.get("used_dtype") in (None, *DTYPES)
    )
    if not well_formed:
        logging.warning("Malformed %s; extracting again", path)
        return None
    return manifest


def _write_manifest(folder: str, manifest: dict) -> None:
    data = (json.dumps(manifest, indent=2) + "\n").encode()
    io_utils.atomic_write_bytes(os.path.join(folder, MANIFEST_FILE), data)


def _entry_ok(entry: Any, shard_size: int, count: int) -> bool:
    """Whether a manifest shard entry is well formed and where it belongs."""
    try:
        shard = entry["shard"]
        return (
            entry["start"] == shard * shard_size
            and entry["stop"] == min((shard + 1) * shard_size, count)
            and entry["start"] < entry["stop"]
            and entry["file"] == _shard_file(shard)
            and isinstance(entry["sha256"], str)
            and all(
                entry["start"] <= item["index"] < entry["stop"]
                for item in entry["skipped"]
            )
        )
    except (KeyError, TypeError):
        return False


def _read_shard(folder: str, entry: dict, dim: int) -> Optional[np.ndarray]:
    """A shard's features if its file matches the manifest entry, else None."""
    path = os.path.join(folder, entry["file"])
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as error:
        logging.warning("Feature shard %s unreadable (%s); recomputing", path, error)
        return None
    if _sha256_bytes(data) != entry["sha256"]:
        logging.warning("Feature shard %s fails its sha256; recomputing", path)
        return None
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as error:  # sha256 matched, so only a manifest bug gets here.
        logging.warning("Feature shard %s unparsable (%s); recomputing", path, error)
        return None
    expected_rows = entry["stop"] - entry["start"] - len(entry["skipped"])
    if array.dtype != np.float32 or array.shape != (expected_rows, dim):
        logging.warning(
            "Feature shard %s is %s %s, expected float32 %s; recomputing",
            path,
            array.dtype,
            array.shape,
            (expected_rows, dim),
        )
        return None
    return array


def _remove_stale_temporaries(folder: str, older_than: float) -> None:
    """Deletes temporary files that runs killed while writing left behind."""
    for name in os.listdir(folder):
        path = os.path.join(folder, name)
        try:
            if name.startswith(".tmp-") and os.path.getmtime(path) < older_than:
                os.remove(path)
        except OSError:
            pass  # removed meanwhile by another run


def _error_reason(error: Exception) -> str:
    message = (getattr(error, "message", "") or str(error)).strip()
    if not message:
        return type(error).__name__
    message = message.splitlines()[0]
    if message.startswith("{{function_node") and "}}" in message:
        message = message.split("}}", 1)[1].strip()
    if " [Op:" in message:
        message = message.split(" [Op:", 1)[0]
    return message[:300]


def _failure_reason(path: str, image_size: int) -> str:
    """Decodes one image eagerly to say why the pipeline dropped it."""
    try:
        load_image(tf.constant(path), image_size)
    except Exception as error:  # any error of one image must not stop the run
        return _error_reason(error)
    return "dropped by the input pipeline (decodes on retry)"


def unreadable_images(paths: Sequence[str], image_size: int) -> list[SkippedImage]:
    """The images of ``paths`` that cannot be read and decoded, with reasons.

    What fine-tuning (which decodes images every epoch, no feature cache)
    checks before training, so a corrupt file never stops an epoch.
    Decodes in parallel with tf.data; ``ignore_errors`` drops the failures
    and their indices are the ones missing from the output.
    """
    indexed = tf.data.Dataset.from_tensor_slices(
        (tf.range(len(paths), dtype=tf.int64), tf.constant(list(paths), tf.string))
    )
    decoded = indexed.map(
        # (a reduction, not the shape: the static shape would let the
        # optimiser drop the decode)
        lambda i, p: (i, tf.reduce_sum(load_image(p, image_size))),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    ).ignore_errors()
    seen = np.zeros(len(paths), bool)
    for index, _ in decoded.as_numpy_iterator():
        seen[index] = True
    return [
        SkippedImage(int(i), paths[i], _failure_reason(paths[i], image_size))
        for i in np.flatnonzero(~seen)
    ]


# ---------------------------------------------------------------------------
# Extraction.


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    na = np.linalg.norm(a, axis=1)
    nb = np.linalg.norm(b, axis=1)
    return (a * b).sum(1) / np.maximum(na * nb, 1e-12)


def _inference_fn(model: keras.Model):
    return tf.function(lambda x: model(x, training=False), reduce_retracing=True)


def _shard_dataset(
    paths: Sequence[str],
    shards: Sequence[tuple[int, int, int]],
    image_size: int,
    batch_size: int,
    flip: bool = False,
) -> tf.data.Dataset:
    """``(shard, indices [B], images [B, S, S, 3])`` batches of the given shards.

    Images are decoded in parallel (and mirrored left-right with ``flip``);
    those that fail to read or decode are dropped (their indices are
    missing). Batches never cross a shard, so a shard's batches are the same
    whichever shards are computed together.
    """
    all_paths = tf.constant(list(paths), tf.string)

    def load(i):
        image = load_image(tf.gather(all_paths, i), image_size)
        return i, tf.image.flip_left_right(image) if flip else image

    def one_shard(shard, start, stop):
        images = tf.data.Dataset.range(start, stop).map(
            load,
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
        images = images.ignore_errors(log_warning=False).batch(batch_size)
        return images.map(lambda i, x: (shard, i, x))

    table = np.asarray(shards, np.int64).reshape([-1, 3])
    ds = tf.data.Dataset.from_tensor_slices((table[:, 0], table[:, 1], table[:, 2]))
    return ds.flat_map(one_shard).prefetch(tf.data.AUTOTUNE)


class _Extractor:
    """Runs the backbone in the agreed precision; checks bf16 on its first batch."""

    def __init__(
        self, backbone, image_feature, image_size, weights, dtype, used_dtype, cache_dir
    ):
        self._args = (backbone, image_feature, image_size, weights)
        self._cache_dir = cache_dir
        self.used_dtype = used_dtype or dtype
        self.checked = used_dtype is not None or dtype == "float32"
        self.min_cosine: Optional[float] = None
        self._run = _inference_fn(
            backbone_lib.build_backbone(
                *self._args, dtype=self.used_dtype, cache_dir=self._cache_dir
            )
        )

    def __call__(self, images: tf.Tensor) -> np.ndarray:
        out = self._run(images).numpy()
        if self.checked:
            return out.astype(np.float32)
        self.checked = True
        reference = _inference_fn(
            backbone_lib.build_backbone(
                *self._args, dtype="float32", cache_dir=self._cache_dir
            )
        )
        ref_out = reference(images).numpy()
        self.min_cosine = float(_cosine(out, ref_out).min())
        logging.info("bf16 vs float32 features: min cosine %.6f", self.min_cosine)
        if self.min_cosine < BF16_MIN_COSINE:
            logging.warning(
                "bf16 features disagree with float32 (min cosine %.5f < %.3f); "
                "extracting in float32",
                self.min_cosine,
                BF16_MIN_COSINE,
            )
            self._run, self.used_dtype, out = reference, "float32", ref_out
        return out.astype(np.float32)


def _new_manifest(
    key: dict,
    weights: str,
    paths: Sequence[str],
    shard_size: int,
    backbone: str,
) -> dict:
    return dict(
        key,
        weights_sha256=_weights_sha256(weights, backbone),
        feature_dim=backbone_lib.feature_dim(backbone, key["feature"]),
        image_list_sha256=_list_sha256(paths),
        count=len(paths),
        first_image=paths[0] if paths else "",
        shard_size=shard_size,
        used_dtype=None,
        bf16_min_cosine=None,
        shards=[],
        complete=False,
    )


def _adopt_format2_cache(cache_dir: str, folder: str, fresh: dict) -> Optional[dict]:
    """Turns a finished cache entry of the previous (unsharded) format into shards.

    Format 2 kept one ``<list id>.npy`` of all ``N`` rows and a JSON beside
    it, under a key without backbone/preprocessing (same computation). When
    one matches, its rows become shards and a complete manifest here, so an
    upgrade does not run VGG16 again; the old files are left in place.

    Args:
        cache_dir: The cache root.
        folder: This cache entry's folder (exists, holds no manifest).
        fresh: The new, empty manifest of this entry.

    Returns:
        The written manifest, or None when there is nothing to take over.
    """
    if "flip" in fresh:  # format 2 had no mirrored features
        return None
    old_key = {
        name: fresh[name]
        for name in ("weights", "feature", "image_size", "dtype", "resize")
    }
    old_key["format"] = 2
    key_id = hashlib.sha256(json.dumps(old_key, sort_keys=True).encode()).hexdigest()
    base = os.path.join(
        cache_dir, "features", key_id[:16], fresh["image_list_sha256"][:16]
    )
    if not (os.path.exists(base + ".npy") and os.path.exists(base + ".json")):
        return None
    try:
        with open(base + ".json", encoding="utf-8") as f:
            old_manifest = json.load(f)
        features = np.load(base + ".npy", allow_pickle=False)
    except (OSError, ValueError) as error:
        logging.warning("Ignoring unreadable old feature cache %s: %s", base, error)
        return None
    count, dim = fresh["count"], fresh["feature_dim"]
    used_dtype = old_manifest.get("used_dtype")
    if (
        features.shape != (count, dim)
        or features.dtype != np.float32
        or old_manifest.get("count") != count
        or used_dtype not in DTYPES
        or not np.all(np.isfinite(features))
    ):
        logging.warning("Ignoring old feature cache %s: it does not match", base)
        return None
    size = fresh["shard_size"]
    manifest = dict(fresh, used_dtype=used_dtype, adopted_from=base + ".npy")
    manifest["shards"] = []
    for shard, start in enumerate(range(0, count, size)):
        stop = min(start + size, count)
        data = _npy_bytes(np.ascontiguousarray(features[start:stop]))
        io_utils.atomic_write_bytes(os.path.join(folder, _shard_file(shard)), data)
        manifest["shards"].append(
            {
                "shard": shard,
                "start": start,
                "stop": stop,
                "rows": stop - start,
                "file": _shard_file(shard),
                "sha256": _sha256_bytes(data),
                "batch_size": None,
                "skipped": [],
            }
        )
    _write_manifest(folder, manifest)
    logging.info("Features of %d images taken over from %s.npy", count, base)
    return manifest


def extract_features_with_report(
    paths: Sequence[str],
    image_feature: str,
    image_size: int,
    weights: str,
    batch_size: int = 32,
    dtype: str = "mixed_bfloat16",
    cache_dir: Optional[str] = None,
    verbose: int = 1,
    shard_size: int = DEFAULT_SHARD_SIZE,
    on_shard: Optional[Callable[[int, int], None]] = None,
    flip: bool = False,
    backbone: str = backbone_lib.VGG16,
) -> FeatureReport:
    """CNN features of images from the sharded cache, computing what is missing.

    Args:
        paths: ``[N]`` image files.
        image_feature: One of `backbone_lib.image_features(backbone)`.
        image_size: Square input size.
        weights: VGG16: ``imagenet|none|hed|PATH``; EfficientNet-Lite:
            ``pretrained|none|PATH``.
        batch_size: Images per backbone call.
        dtype: ``mixed_bfloat16`` or ``float32``. With bf16 the first batch
            computed is also computed in float32; if any cosine similarity
            falls below 0.999 everything runs in float32. The precision
            used is kept in the manifest, so a resumed run uses it too.
        cache_dir: Cache root (default `default_cache_dir()`); ``""`` or
            None uses the default.
        verbose: 1 shows a progress bar.
        shard_size: Images per shard file, for a new cache (a resumed one
            keeps the size it was started with).
        on_shard: Called as ``on_shard(shard, num_shards)`` after each
            computed shard is safely on disk.
        flip: Features of the left-right mirrored images (a training
            augmentation; its own cache entry).
        backbone: ``vgg16`` or ``efficientnet_lite0|1|2``.

    Returns:
        The features (``float32 [N, F]``, zero rows for skipped images), the
        ``valid`` mask and the skipped images with reasons.

    Raises:
        ValueError: for a bad ``dtype``, ``batch_size`` or ``shard_size``.
        FloatingPointError: if VGG16 produces non-finite features.
    """
    if dtype not in DTYPES:
        raise ValueError(f"extract dtype must be one of {DTYPES}, got {dtype}")
    if batch_size < 1 or shard_size < 1:
        raise ValueError(
            f"batch_size and shard_size must be >= 1, got {batch_size}, {shard_size}"
        )
    start_time = time.time()
    paths = [os.path.abspath(p) for p in paths]
    key = _cache_key(image_feature, image_size, weights, dtype, flip, backbone)
    folder = _cache_folder(cache_dir or default_cache_dir(), key, paths)
    dim = backbone_lib.feature_dim(backbone, image_feature)

    manifest = _read_manifest(folder)
    if manifest is not None and (
        any(manifest.get(name) != value for name, value in key.items())
        or manifest.get("image_list_sha256") != _list_sha256(paths)
        or manifest.get("count") != len(paths)
    ):
        logging.warning("%s belongs to other features; extracting again", folder)
        manifest = None
    if manifest is None:
        os.makedirs(folder, exist_ok=True)
        manifest = _new_manifest(key, weights, paths, shard_size, backbone)
        manifest = (
            _adopt_format2_cache(cache_dir or default_cache_dir(), folder, manifest)
            or manifest
        )
    shard_size = int(manifest["shard_size"])
    num_shards = -(-len(paths) // shard_size)

    done: dict[int, np.ndarray] = {}
    entries: dict[int, dict] = {}
    for entry in manifest["shards"]:
        if not _entry_ok(entry, shard_size, len(paths)) or entry["shard"] in done:
            logging.warning("Malformed shard entry in %s: %r", folder, entry)
            continue
        array = _read_shard(folder, entry, dim)
        if array is not None:
            done[entry["shard"]] = array
            entries[entry["shard"]] = entry
    pending = [s for s in range(num_shards) if s not in done]
    if pending:
        manifest["complete"] = False
    manifest["shards"] = [entries[s] for s in sorted(entries)]
    if done and pending:
        logging.info(
            "Resuming feature extraction in %s: %d of %d shards complete, "
            "%d to compute",
            folder,
            len(done),
            num_shards,
            len(pending),
        )

    if pending:
        extractor = _Extractor(
            backbone,
            image_feature,
            image_size,
            weights,
            dtype,
            manifest["used_dtype"],
            cache_dir,
        )
        progbar = progress.bar(len(paths), "image", "features") if verbose else None
        if progbar:
            progbar.add(sum(entries[s]["stop"] - entries[s]["start"] for s in entries))
        ranges = {
            s: (s * shard_size, min((s + 1) * shard_size, len(paths))) for s in pending
        }
        rows: list[np.ndarray] = []
        kept: list[int] = []

        def finish(shard: int) -> None:
            begin, end = ranges[shard]
            kept_set = set(kept)
            skipped = [
                {
                    "index": i,
                    "path": paths[i],
                    "reason": _failure_reason(paths[i], image_size),
                }
                for i in range(begin, end)
                if i not in kept_set
            ]
            for item in skipped:
                logging.warning(
                    "Skipping image %d %s: %s",
                    item["index"],
                    item["path"],
                    item["reason"],
                )
            array = np.concatenate(rows) if rows else np.zeros([0, dim], np.float32)
            if not np.all(np.isfinite(array)):
                raise FloatingPointError(
                    f"non-finite {backbone} features; check the weights"
                )
            data = _npy_bytes(array)
            io_utils.atomic_write_bytes(os.path.join(folder, _shard_file(shard)), data)
            entries[shard] = {
                "shard": shard,
                "start": begin,
                "stop": end,
                "rows": int(array.shape[0]),
                "file": _shard_file(shard),
                "sha256": _sha256_bytes(data),
                "batch_size": batch_size,
                "skipped": skipped,
            }
            done[shard] = array
            manifest["used_dtype"] = extractor.used_dtype
            if extractor.min_cosine is not None:
                manifest["bf16_min_cosine"] = round(extractor.min_cosine, 6)
            manifest["shards"] = [entries[s] for s in sorted(entries)]
            _write_manifest(folder, manifest)  # after the shard: it is complete
            rows.clear()
            kept.clear()
            if progbar and skipped:
                progbar.add(len(skipped))
            if on_shard is not None:
                on_shard(shard, num_shards)

        shard_table = [(s, *ranges[s]) for s in pending]
        position = 0
        for shard, indices, images in _shard_dataset(
            paths, shard_table, image_size, batch_size, flip
        ):
            shard = int(shard)
            while pending[position] != shard:
                finish(pending[position])
                position += 1
            rows.append(extractor(images))
            kept.extend(indices.numpy().tolist())
            if progbar:
                progbar.add(len(indices))
        for shard in pending[position:]:
            finish(shard)

    features = np.zeros([len(paths), dim], np.float32)
    valid = np.ones([len(paths)], bool)
    skipped: list[SkippedImage] = []
    for shard in range(num_shards):
        entry = entries[shard]
        for item in entry["skipped"]:
            valid[item["index"]] = False
            skipped.append(SkippedImage(item["index"], item["path"], item["reason"]))
        span = np.arange(entry["start"], entry["stop"])
        features[span[valid[span]]] = done[shard]
    if not manifest["complete"]:
        manifest.update(
            complete=True,
            num_valid=int(valid.sum()),
            num_skipped=len(skipped),
            used_dtype=manifest["used_dtype"] or dtype,
        )
        if pending:
            manifest["seconds"] = round(time.time() - start_time, 2)
        _write_manifest(folder, manifest)
        _remove_stale_temporaries(folder, older_than=start_time)
    if skipped:
        logging.warning(
            "%d of %d images could not be read or decoded and have no features "
            "(listed in %s)",
            len(skipped),
            len(paths),
            os.path.join(folder, MANIFEST_FILE),
        )
    if verbose and not pending:
        logging.info("Features of %d images read from %s", len(paths), folder)
    return FeatureReport(
        features=features,
        valid=valid,
        skipped=skipped,
        cache_folder=folder,
        used_dtype=manifest["used_dtype"],
        shards_reused=num_shards - len(pending),
        shards_computed=len(pending),
    )


def extract_features(
    paths: Sequence[str],
    image_feature: str,
    image_size: int,
    weights: str,
    batch_size: int = 32,
    dtype: str = "mixed_bfloat16",
    cache_dir: Optional[str] = None,
    verbose: int = 1,
    shard_size: int = DEFAULT_SHARD_SIZE,
    backbone: str = backbone_lib.VGG16,
) -> np.ndarray:
    """CNN features of images, read from or written to the cache.

    `extract_features_with_report` without the report: rows of images that
    cannot be read are zero (a warning says how many); use the report to
    drop them.

    Args:
        paths: ``[N]`` image files.
        image_feature: One of `backbone_lib.image_features(backbone)`.
        image_size: Square input size.
        weights: See `extract_features_with_report`.
        batch_size: Images per backbone call.
        dtype: ``mixed_bfloat16`` (checked against float32) or ``float32``.
        cache_dir: Cache root (default `default_cache_dir()`).
        verbose: 1 shows a progress bar.
        shard_size: Images per cache shard.
        backbone: ``vgg16`` or ``efficientnet_lite0|1|2``.

    Returns:
        ``float32 [N, F]`` features.
    """
    return extract_features_with_report(
        paths,
        image_feature,
        image_size,
        weights,
        batch_size=batch_size,
        dtype=dtype,
        cache_dir=cache_dir,
        verbose=verbose,
        shard_size=shard_size,
        backbone=backbone,
    ).features


def extract_for_config(
    config: Config,
    paths: Sequence[str],
    verbose: int = 1,
    shard_size: int = DEFAULT_SHARD_SIZE,
    on_shard: Optional[Callable[[int, int], None]] = None,
    flip: bool = False,
) -> FeatureReport:
    """The features training uses for these images under ``config``.

    Same settings and so the same cache entry as training: backbone weights
    and feature from ``config.model``, image size, extraction batch size,
    dtype and cache folder from ``config.data``.

    Args:
        config: The run's config.
        paths: ``[N]`` image files (a split's ``image_paths``).
        verbose: 1 shows a progress bar.
        shard_size: Images per cache shard.
        on_shard: See `extract_features_with_report`.
        flip: Features of the mirrored images (``config.data.augment_flip``).

    Returns:
        The `FeatureReport`.
    """
    data = config.data
    return extract_features_with_report(
        paths,
        config.model.image_feature,
        data.image_size,
        config.model.backbone_weights,
        batch_size=data.extract_batch_size,
        dtype=hardware.extract_dtype(data.extract_dtype),
        cache_dir=data.cache_dir or None,
        verbose=verbose,
        shard_size=shard_size,
        on_shard=on_shard,
        flip=flip,
        backbone=config.model.backbone,
    )
