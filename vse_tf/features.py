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

The shards are a `vse_tf.shard_store` store: every file is written to a
temporary name and renamed into place, a shard before the manifest entry
that names it. An interrupted extraction run again
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
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Any, Optional

import keras
import numpy as np
import tensorflow as tf

from vse_tf import hardware, io_utils, progress, shard_store
from vse_tf.config import Config
from vse_tf.data import datasets
from vse_tf.data.split import CaptionedSplit
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
# The cache entry.


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
    paths = [io_utils.absolute(p) for p in paths]
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


def _usable_manifest(
    store: shard_store.ShardStore, key: dict, paths: Sequence[str]
) -> Optional[dict]:
    """The entry's manifest if it is well formed and of these features, else None."""
    manifest = store.read_manifest()
    if manifest is None:
        return None
    well_formed = (
        isinstance(manifest.get("shard_size"), int)
        and manifest["shard_size"] >= 1
        and manifest.get("used_dtype") in (None, *DTYPES)
    )
    if not well_formed:
        logging.warning("Malformed %s; extracting again", store.manifest_path)
        return None
    if (
        any(manifest.get(name) != value for name, value in key.items())
        or manifest.get("image_list_sha256") != _list_sha256(paths)
        or manifest.get("count") != len(paths)
    ):
        logging.warning("%s belongs to other features; extracting again", store.folder)
        return None
    return manifest


def shard_range(shard: int, shard_size: int, count: int) -> tuple[int, int]:
    """``(start, stop)``: the image indices of shard ``shard``."""
    return shard * shard_size, min((shard + 1) * shard_size, count)


def entry_ok(entry: Any, shard_size: int, count: int) -> bool:
    """Whether a manifest shard entry is well formed and where it belongs."""
    try:
        shard = entry["shard"]
        return (
            (entry["start"], entry["stop"]) == shard_range(shard, shard_size, count)
            and entry["start"] < entry["stop"]
            and entry["file"] == shard_store.shard_file(shard)
            and isinstance(entry["sha256"], str)
            and entry["rows"] == entry["stop"] - entry["start"] - len(entry["skipped"])
            and all(
                entry["start"] <= item["index"] < entry["stop"]
                for item in entry["skipped"]
            )
        )
    except (KeyError, TypeError):
        return False


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


def failure_reason(path: str, image_size: int) -> str:
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
        SkippedImage(int(i), paths[i], failure_reason(paths[i], image_size))
        for i in np.flatnonzero(~seen)
    ]


# ---------------------------------------------------------------------------
# Extraction.


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    na = np.linalg.norm(a, axis=1)
    nb = np.linalg.norm(b, axis=1)
    return (a * b).sum(1) / np.maximum(na * nb, 1e-12)


def inference_fn(model: keras.Model):
    """``model`` in inference mode as one traced function (shapes relaxed)."""
    return tf.function(lambda x: model(x, training=False), reduce_retracing=True)


def shard_dataset(
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


class Extractor:
    """Runs the backbone in the agreed precision; checks bf16 on its first batch."""

    def __init__(
        self, backbone, image_feature, image_size, weights, dtype, used_dtype, cache_dir
    ):
        self._args = (backbone, image_feature, image_size, weights)
        self._cache_dir = cache_dir
        self.used_dtype = used_dtype or dtype
        self.checked = used_dtype is not None or dtype == "float32"
        self.min_cosine: Optional[float] = None
        self._run = inference_fn(
            backbone_lib.build_backbone(
                *self._args, dtype=self.used_dtype, cache_dir=self._cache_dir
            )
        )

    def __call__(self, images: tf.Tensor) -> np.ndarray:
        out = self._run(images).numpy()
        if self.checked:
            return out.astype(np.float32)
        self.checked = True
        reference = inference_fn(
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


def check_arguments(dtype: str, batch_size: int, shard_size: int) -> None:
    """Raises ValueError for a bad extraction ``dtype``, batch or shard size."""
    if dtype not in DTYPES:
        raise ValueError(f"extract dtype must be one of {DTYPES}, got {dtype}")
    if batch_size < 1 or shard_size < 1:
        raise ValueError(
            f"batch_size and shard_size must be >= 1, got {batch_size}, {shard_size}"
        )


@dataclasses.dataclass(frozen=True)
class ExtractionJob:
    """What one extraction computes, and how (see `extract_features_with_report`).

    Attributes:
        paths: ``[N]`` absolute image paths (or URLs).
        backbone, image_feature, image_size, weights, dtype, batch_size,
        flip, cache_dir, on_shard, verbose: As in
            `extract_features_with_report`.
    """

    paths: list[str]
    backbone: str
    image_feature: str
    image_size: int
    weights: str
    dtype: str
    batch_size: int
    flip: bool
    cache_dir: Optional[str]
    on_shard: Optional[Callable[[int, int], None]]
    verbose: int


class _ShardWriter:
    """Writes each computed shard into the cache, then records it in the manifest.

    Args:
        store: The cache entry's store.
        manifest: Its manifest (updated in place and rewritten per shard).
        job: The extraction.
        done: ``{shard: Shard}`` of the complete shards (added to).
    """

    def __init__(
        self,
        store: shard_store.ShardStore,
        manifest: dict,
        job: ExtractionJob,
        done: dict[int, shard_store.Shard],
    ):
        self.store, self.manifest, self.job, self.done = store, manifest, job, done
        self.extractor = Extractor(
            job.backbone,
            job.image_feature,
            job.image_size,
            job.weights,
            job.dtype,
            manifest["used_dtype"],
            job.cache_dir,
        )
        self.shard_size = int(manifest["shard_size"])
        self.num_shards = -(-len(job.paths) // self.shard_size)
        self.progbar = None
        if job.verbose:
            self.progbar = progress.bar(len(job.paths), "image", "features")
        self.advance(sum(s.entry["stop"] - s.entry["start"] for s in done.values()))

    def advance(self, images: int) -> None:
        """Moves the progress bar on by ``images``."""
        if self.progbar is not None and images:
            self.progbar.add(images)

    def write(self, shard: int, rows: list[np.ndarray], kept: list[int]) -> None:
        """Writes shard ``shard`` from its feature batches and kept image indices."""
        start, stop = shard_range(shard, self.shard_size, len(self.job.paths))
        skipped = self._skipped(start, stop, kept)
        dim = self.manifest["feature_dim"]
        array = np.concatenate(rows) if rows else np.zeros([0, dim], np.float32)
        if not np.all(np.isfinite(array)):
            raise FloatingPointError(
                f"non-finite {self.job.backbone} features; check the weights"
            )
        entry = self.store.write_shard(
            shard,
            array,
            start=start,
            stop=stop,
            batch_size=self.job.batch_size,
            skipped=skipped,
        )
        self.done[shard] = shard_store.Shard(entry=entry, array=array)
        self.manifest["used_dtype"] = self.extractor.used_dtype
        if self.extractor.min_cosine is not None:
            self.manifest["bf16_min_cosine"] = round(self.extractor.min_cosine, 6)
        self.manifest["shards"] = [self.done[s].entry for s in sorted(self.done)]
        self.store.write_manifest(self.manifest)  # after the shard: it is complete
        self.advance(len(skipped))
        if self.job.on_shard is not None:
            self.job.on_shard(shard, self.num_shards)

    def _skipped(self, start: int, stop: int, kept: list[int]) -> list[dict]:
        kept_set, paths = set(kept), self.job.paths
        skipped = [
            {
                "index": i,
                "path": paths[i],
                "reason": failure_reason(paths[i], self.job.image_size),
            }
            for i in range(start, stop)
            if i not in kept_set
        ]
        for item in skipped:
            logging.warning(
                "Skipping image %d %s: %s", item["index"], item["path"], item["reason"]
            )
        return skipped


def _compute_shards(
    store: shard_store.ShardStore,
    manifest: dict,
    job: ExtractionJob,
    done: dict[int, shard_store.Shard],
    pending: Sequence[int],
) -> None:
    """Runs the backbone over the pending shards, writing each when it is done.

    Args:
        store: The cache entry's store.
        manifest: Its manifest (updated and rewritten per shard).
        job: The extraction.
        done: ``{shard: Shard}`` of the complete shards (added to).
        pending: The shards to compute, ascending.
    """
    writer = _ShardWriter(store, manifest, job, done)
    count, size = len(job.paths), writer.shard_size
    table = [(s, *shard_range(s, size, count)) for s in pending]
    batches = shard_dataset(job.paths, table, job.image_size, job.batch_size, job.flip)
    position, rows, kept = 0, [], []
    for shard, indices, images in batches:
        while pending[position] != int(shard):  # shards with no readable image
            writer.write(pending[position], rows, kept)
            position, rows, kept = position + 1, [], []
        rows.append(writer.extractor(images))
        kept.extend(indices.numpy().tolist())
        writer.advance(len(indices))
    for shard in pending[position:]:
        writer.write(shard, rows, kept)
        rows, kept = [], []


def _open_cache(
    store: shard_store.ShardStore,
    key: dict,
    job: ExtractionJob,
    shard_size: int,
    dim: int,
) -> tuple[dict, dict[int, shard_store.Shard]]:
    """The entry's manifest (a new one unless it fits) and its complete shards."""
    manifest = _usable_manifest(store, key, job.paths)
    if manifest is None:
        io_utils.makedirs(store.folder)
        manifest = _new_manifest(key, job.weights, job.paths, shard_size, job.backbone)
    size, count = int(manifest["shard_size"]), len(job.paths)
    # The manifest's shards, then those a parallel run finished before it
    # was stopped (`vse_tf.pipelines`: entries beside their shards).
    done = store.read_complete(
        manifest["shards"] + store.read_entries(),
        is_valid=lambda entry: entry_ok(entry, size, count),
        dtype=np.float32,
        row_shape=(dim,),
    )
    manifest["shards"] = [done[s].entry for s in sorted(done)]
    return manifest, done


def _assemble(
    done: dict[int, shard_store.Shard], count: int, dim: int
) -> tuple[np.ndarray, np.ndarray, list[SkippedImage]]:
    """``(features [N, F], valid [N], skipped)`` from the complete shards."""
    features = np.zeros([count, dim], np.float32)
    valid = np.ones([count], bool)
    skipped: list[SkippedImage] = []
    for shard in sorted(done):
        entry = done[shard].entry
        for item in entry["skipped"]:
            valid[item["index"]] = False
            skipped.append(SkippedImage(item["index"], item["path"], item["reason"]))
        span = np.arange(entry["start"], entry["stop"])
        features[span[valid[span]]] = done[shard].array
    return features, valid, skipped


def _mark_complete(
    store: shard_store.ShardStore,
    manifest: dict,
    valid: np.ndarray,
    num_skipped: int,
    dtype: str,
    seconds: Optional[float],
) -> None:
    manifest.update(
        complete=True,
        num_valid=int(valid.sum()),
        num_skipped=num_skipped,
        used_dtype=manifest["used_dtype"] or dtype,
    )
    if seconds is not None:
        manifest["seconds"] = round(seconds, 2)
    store.write_manifest(manifest)


ComputeShards = Callable[
    [shard_store.ShardStore, dict, ExtractionJob, dict, list[int]], None
]
"""``compute(store, manifest, job, done, pending)``: computes the shards
``pending`` into ``store``, adding each to ``done`` (``{shard: Shard}``) and
recording it in ``manifest``; `run_extraction` does the rest."""


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
    compute: Optional[ComputeShards] = None,
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
        compute: How the missing shards are computed: in this process
            (default), or by a Beam pipeline
            (`vse_tf.pipelines.extract.extract_features_with_report`).

    Returns:
        The features (``float32 [N, F]``, zero rows for skipped images), the
        ``valid`` mask and the skipped images with reasons.

    Raises:
        ValueError: for a bad ``dtype``, ``batch_size`` or ``shard_size``.
        FloatingPointError: if VGG16 produces non-finite features.
    """
    check_arguments(dtype, batch_size, shard_size)
    job = ExtractionJob(
        paths=[io_utils.absolute(p) for p in paths],
        backbone=backbone,
        image_feature=image_feature,
        image_size=image_size,
        weights=weights,
        dtype=dtype,
        batch_size=batch_size,
        flip=flip,
        cache_dir=cache_dir,
        on_shard=on_shard,
        verbose=verbose,
    )
    return run_extraction(job, shard_size, compute)


def run_extraction(
    job: ExtractionJob,
    shard_size: int = DEFAULT_SHARD_SIZE,
    compute: Optional[ComputeShards] = None,
) -> FeatureReport:
    """Opens the job's cache entry, computes its missing shards, reads it all.

    Args:
        job: The extraction.
        shard_size: Images per shard of a new cache entry.
        compute: How the missing shards are computed: in this process
            (default), or e.g. by a Beam pipeline (`vse_tf.pipelines.extract`).

    Returns:
        The `FeatureReport`.
    """
    start_time = time.time()
    paths = job.paths
    key = _cache_key(
        job.image_feature,
        job.image_size,
        job.weights,
        job.dtype,
        job.flip,
        job.backbone,
    )
    store = shard_store.ShardStore(
        _cache_folder(job.cache_dir or default_cache_dir(), key, paths)
    )
    dim = backbone_lib.feature_dim(job.backbone, job.image_feature)
    manifest, done = _open_cache(store, key, job, shard_size, dim)
    num_shards = -(-len(paths) // int(manifest["shard_size"]))
    pending = [s for s in range(num_shards) if s not in done]
    if pending:
        manifest["complete"] = False
        if done:
            logging.info(
                "Resuming feature extraction in %s: %d of %d shards complete, "
                "%d to compute",
                store.folder,
                len(done),
                num_shards,
                len(pending),
            )
        (compute or _compute_shards)(store, manifest, job, done, pending)
    features, valid, skipped = _assemble(done, len(paths), dim)
    if not manifest["complete"]:
        seconds = time.time() - start_time if pending else None
        _mark_complete(store, manifest, valid, len(skipped), job.dtype, seconds)
        store.remove_stale_temporaries(older_than=start_time)
    store.remove_entries()  # (also those of a run killed after its manifest)
    if skipped:
        logging.warning(
            "%d of %d images could not be read or decoded and have no features "
            "(listed in %s)",
            len(skipped),
            len(paths),
            store.manifest_path,
        )
    if job.verbose and not pending:
        logging.info("Features of %d images read from %s", len(paths), store.folder)
    return FeatureReport(
        features=features,
        valid=valid,
        skipped=skipped,
        cache_folder=store.folder,
        used_dtype=manifest["used_dtype"],
        shards_reused=num_shards - len(pending),
        shards_computed=len(pending),
    )


def extract_features(paths: Sequence[str], *args: Any, **kwargs: Any) -> np.ndarray:
    """CNN features of images, read from or written to the cache.

    `extract_features_with_report` without the report; it takes the same
    arguments. Rows of images that cannot be read are zero (a warning says
    how many); use the report to drop them.

    Returns:
        ``float32 [N, F]`` features.
    """
    return extract_features_with_report(paths, *args, **kwargs).features


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
    return extract_features_with_report(
        paths,
        verbose=verbose,
        shard_size=shard_size,
        on_shard=on_shard,
        flip=flip,
        **extraction_settings(config),
    )


def extraction_settings(config: Config) -> dict[str, Any]:
    """The extraction arguments of ``config``: what keys its cache entries.

    Returns:
        ``image_feature``, ``image_size``, ``weights``, ``batch_size``,
        ``dtype`` (``auto`` resolved for this machine), ``cache_dir`` and
        ``backbone``, as `extract_features_with_report` takes them.
    """
    data = config.data
    return dict(
        image_feature=config.model.image_feature,
        image_size=data.image_size,
        weights=config.model.backbone_weights,
        batch_size=data.extract_batch_size,
        dtype=hardware.extract_dtype(data.extract_dtype),
        cache_dir=data.cache_dir or None,
        backbone=config.model.backbone,
    )


def split_features(
    config: Config, split: CaptionedSplit, verbose: int = 1, flip: bool = False
) -> tuple[CaptionedSplit, Optional[np.ndarray], int]:
    """A split's cached backbone features, without its unreadable images.

    Images that cannot be read or decoded (missing, truncated, not an image)
    are skipped: they and their captions leave the split, and the count is
    logged (the feature cache's manifest lists each with its reason). When
    fine-tuning (no feature cache) the image files are only checked.

    Args:
        config: The run's config.
        split: The split.
        verbose: 1 shows extraction progress.
        flip: Also the mirrored images' features (training augmentation,
            ``config.data.augment_flip``).

    Returns:
        ``(split, features, skipped)``: the split without the skipped
        images; their features, ``[N', F]``, ``[2, N', F]`` (image, mirror
        image) with ``flip``, or None when fine-tuning; and how many images
        were skipped.

    Raises:
        ValueError: ``flip`` with precomputed features or fine-tuning.
    """
    if flip and (split.features is not None or config.model.fine_tune_from):
        raise ValueError(
            "augment_flip mirrors images before the frozen CNN, so it needs "
            "image files and cached features: "
            + (
                f"the {config.data.dataset} data set has precomputed features"
                if split.features is not None
                else f"fine_tune_from={config.model.fine_tune_from!r} trains on images"
            )
        )
    if split.features is not None:
        return split, split.features, 0
    if config.model.fine_tune_from:
        features = None
        skipped = unreadable_images(split.image_paths, config.data.image_size)
    else:
        report = extract_for_config(config, split.image_paths, verbose)
        features, skipped = report.features, report.skipped
        if flip:
            mirrored = extract_for_config(config, split.image_paths, verbose, flip=True)
            features = np.stack([features, mirrored.features])
            known = {image.index for image in skipped}
            skipped = skipped + [i for i in mirrored.skipped if i.index not in known]
    if not skipped:
        return split, features, 0
    print(f"{split.name}: skipped {len(skipped)} unreadable images")
    for image in skipped[:20]:
        logging.warning("skipped image %s: %s", image.path, image.reason)
    keep = sorted(set(range(split.num_images)) - {image.index for image in skipped})
    kept_features = None if features is None else features[..., keep, :]
    return datasets.select_images(split, keep), kept_features, len(skipped)
