"""Cached, resumable extraction: open the entry, compute missing shards, assemble.

`run_extraction` is the one path; `extract_features_with_report` builds its
job from plain arguments. Shards are computed in this process by default, or
by any `ComputeShards` (the Beam pipeline in `vse_tf.pipelines.extract`).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Optional

import numpy as np

from vse_tf import io_utils, progress, shard_store
from vse_tf.features import cache as cache_lib
from vse_tf.features import extractor as extractor_lib
from vse_tf.features import report as report_lib
from vse_tf.models import backbone as backbone_lib
from vse_tf.models import catalog as backbone_catalog


@dataclasses.dataclass(frozen=True)
class ExtractionJob:
    """What one extraction computes, and how (see `extract_features_with_report`).

    Attributes:
        paths: ``[N]`` absolute image paths (or URLs).
        backbone, image_feature, image_size, weights, dtype, batch_size,
        flip, cache_dir, on_shard, verbose, cut: As in
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
    cut: str = ""

    def row_dim(self) -> int:
        """Values per image: F, or ``h * w * c`` of the activations at the cut."""
        if not self.cut:
            return backbone_catalog.feature_dim(self.backbone, self.image_feature)
        shape = backbone_lib.cut_shape(
            self.backbone, self.image_feature, self.image_size, self.cut
        )
        return int(np.prod(shape))


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
        self.extractor = extractor_lib.Extractor(
            job.backbone,
            job.image_feature,
            job.image_size,
            job.weights,
            job.dtype,
            manifest["used_dtype"],
            job.cache_dir,
            cut=job.cut,
            storage=manifest.get("storage"),
        )
        self.shard_size = int(manifest["shard_size"])
        self.num_shards = -(-len(job.paths) // self.shard_size)
        self.progbar = None
        if job.verbose:
            self.progbar = progress.bar(len(job.paths), "image", "features")
        if self.progbar is not None:
            resumed = sum(s.entry["stop"] - s.entry["start"] for s in done.values())
            self.progbar.resume(resumed)

    def advance(self, images: int) -> None:
        """Moves the progress bar on by ``images``."""
        if self.progbar is not None and images:
            self.progbar.add(images)

    def write(self, shard: int, rows: list[np.ndarray], kept: list[int]) -> None:
        """Writes shard ``shard`` from its feature batches and kept image indices."""
        start, stop = cache_lib.shard_range(shard, self.shard_size, len(self.job.paths))
        skipped = self._skipped(start, stop, kept)
        dim = self.manifest["feature_dim"]
        # (Undecided only while no image was readable: an empty array.)
        storage = self.extractor.storage or self.manifest.get("storage") or "float32"
        array = np.concatenate(rows) if rows else np.zeros([0, dim], storage)
        if not np.all(np.isfinite(array)):
            raise FloatingPointError(
                f"non-finite {self.job.backbone} features"
                + (" in float16" if self.job.cut else "")
                + "; check the weights"
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
        if self.job.cut and self.extractor.storage is not None:
            # (features keep storage None, as the Beam path writes them)
            self.manifest["storage"] = self.extractor.storage
        if self.extractor.storage_min_cosine is not None:
            self.manifest["float16_min_cosine"] = round(
                self.extractor.storage_min_cosine, 7
            )
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
                "reason": report_lib.failure_reason(paths[i], self.job.image_size),
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
    table = [(s, *cache_lib.shard_range(s, size, count)) for s in pending]
    batches = extractor_lib.shard_dataset(
        job.paths, table, job.image_size, job.batch_size, job.flip
    )
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
    manifest = cache_lib.usable_manifest(store, key, job.paths)
    if manifest is None:
        io_utils.makedirs(store.folder)
        manifest = cache_lib.new_manifest(
            key, job.weights, job.paths, shard_size, job.backbone, dim
        )
    size, count = int(manifest["shard_size"]), len(job.paths)
    # The manifest's shards, then those a parallel run finished before it
    # was stopped (`vse_tf.pipelines`: entries beside their shards).
    done = store.read_complete(
        manifest["shards"] + store.read_entries(),
        is_valid=lambda entry: cache_lib.entry_ok(entry, size, count),
        dtype=cache_lib.storage_dtype(manifest),
        row_shape=(dim,),
    )
    manifest["shards"] = [done[s].entry for s in sorted(done)]
    return manifest, done


def _assemble(
    done: dict[int, shard_store.Shard], count: int, dim: int, dtype: np.dtype
) -> tuple[np.ndarray, np.ndarray, list[report_lib.SkippedImage]]:
    """``(features [N, F], valid [N], skipped)`` from the complete shards."""
    features = np.zeros([count, dim], dtype)
    valid = np.ones([count], bool)
    skipped: list[report_lib.SkippedImage] = []
    for shard in sorted(done):
        entry = done[shard].entry
        for item in entry["skipped"]:
            valid[item["index"]] = False
            skipped.append(
                report_lib.SkippedImage(item["index"], item["path"], item["reason"])
            )
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
    shard_size: int = cache_lib.DEFAULT_SHARD_SIZE,
    on_shard: Optional[Callable[[int, int], None]] = None,
    flip: bool = False,
    backbone: str = backbone_catalog.VGG16,
    compute: Optional[ComputeShards] = None,
    cut: str = "",
) -> report_lib.FeatureReport:
    """CNN features of images from the sharded cache, computing what is missing.

    Args:
        paths: ``[N]`` image files.
        image_feature: One of `backbone_catalog.image_features(backbone)`.
        image_size: Square input size.
        weights: VGG16: ``imagenet|none|hed|PATH``; EfficientNet-Lite:
            ``pretrained|none|PATH``.
        batch_size: Images per backbone call.
        dtype: ``mixed_bfloat16`` or ``float32``. With bf16 the first batch
            computed is also computed in float32; if any cosine similarity
            falls below 0.999 everything runs in float32. The precision
            used is kept in the manifest, so a resumed run uses it too.
        cache_dir: Cache root (default `io_utils.default_cache_dir()`); ``""`` or
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
        cut: ``""`` for the features; a ``fine_tune_from`` point for the
            activations at the input of that layer instead
            (`backbone.split_backbone`'s ``bottom``), flattened and stored
            as float16 where the first batch shows float16 keeps them (min
            cosine `extractor.FLOAT16_MIN_COSINE`; else float32): what the
            cheap fine-tuning path trains on (its own cache entry).

    Returns:
        The features (``float32 [N, F]``; ``float16|float32 [N, h*w*c]``
        with ``cut``; zero rows for skipped images), the ``valid`` mask and
        the skipped images with reasons.

    Raises:
        ValueError: for a bad ``dtype``, ``batch_size`` or ``shard_size``.
        FloatingPointError: if VGG16 produces non-finite features.
    """
    cache_lib.check_arguments(dtype, batch_size, shard_size)
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
        cut=cut,
    )
    return run_extraction(job, shard_size, compute)


def run_extraction(
    job: ExtractionJob,
    shard_size: int = cache_lib.DEFAULT_SHARD_SIZE,
    compute: Optional[ComputeShards] = None,
) -> report_lib.FeatureReport:
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
    key = cache_lib.cache_key(
        job.image_feature,
        job.image_size,
        job.weights,
        job.dtype,
        job.flip,
        job.backbone,
        job.cut,
    )
    store = shard_store.ShardStore(
        cache_lib.folder_for_key(
            job.cache_dir or io_utils.default_cache_dir(), key, paths
        )
    )
    dim = job.row_dim()
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
    storage = cache_lib.storage_dtype(manifest)
    features, valid, skipped = _assemble(done, len(paths), dim, storage)
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
    return report_lib.FeatureReport(
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
