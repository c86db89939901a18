"""The extraction pipeline: image files -> the feature cache training reads.

The same cache entry as `vse_tf.features.extraction.extract_features_with_report`
(same key, manifest, shard files and sha256s), computed by a Beam pipeline:

1. the driver opens the cache entry, keeps the shards already complete
   (in the manifest, or left by a killed run beside their files) and, for
   bf16, checks bf16 against float32 on the first batch, as the local path
   does, so every worker computes in the one precision the manifest records;
2. the pending shards ``(shard, start, stop, paths)`` are spread over the
   workers (``Reshuffle``); each worker reads and decodes a shard's images
   with the training resize (unreadable ones skipped, with the reason) and
   batches them exactly as the local path does (``batch_size`` images of a
   shard, in order), so the backbone sees the same batches;
3. ``RunInference`` runs the frozen backbone on each batch, with our own
   `BackboneModelHandler` (loaded once per worker; Beam's
   ``TFModelHandlerTensor`` loads through ``tf.keras``, which Keras 3
   refuses, apache/beam#30616);
4. the batches of a shard are grouped, and the shard is written through
   `vse_tf.shard_store` (atomically) with its entry beside it;
5. the driver gathers the entries, verifies every shard and writes the
   manifest, complete.

A rerun of a killed pipeline keeps the shards finished before the kill and
computes the rest: the files it ends with are those of an uninterrupted run.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any, Optional

import numpy as np

from vse_tf import io_utils, shard_store
from vse_tf.config import Config
from vse_tf.features import cache as feature_cache
from vse_tf.features import extraction as feature_extraction
from vse_tf.features import extractor as feature_extractor
from vse_tf.features import report as feature_report
from vse_tf.features import settings as feature_settings
from vse_tf.models import backbone as backbone_lib
from vse_tf.models import catalog as backbone_catalog
from vse_tf.pipelines import runners

beam = runners.import_beam()
from apache_beam.ml.inference import base as inference_base  # noqa: E402

_SUMMARY = "summary"


def extract_features_with_report(
    *args: Any,
    runner: str = "DirectRunner",
    pipeline_options: str | Sequence[str] = (),
    **kwargs: Any,
) -> feature_report.FeatureReport:
    """`vse_tf.features.extraction.extract_features_with_report`, computed by Beam.

    Takes that function's arguments (``paths`` and ``cache_dir`` may be
    URLs: ``gs://``, ``s3://``, ``hdfs://``; ``on_shard`` is not called:
    the shards are written by the workers) and:

    Args:
        *args: As `vse_tf.features.extraction.extract_features_with_report`.
        runner: A Beam runner name of `vse_tf.pipelines.RUNNERS` (for
            ``local``, call `vse_tf.features` directly).
        pipeline_options: Beam's own flags, e.g. ``--num_workers=8``.
        **kwargs: As `vse_tf.features.extraction.extract_features_with_report`.

    Returns:
        The `FeatureReport`, as the local path returns it.
    """
    runners.check_runner(runner)
    if runner == runners.LOCAL:
        raise ValueError("the local runner is vse_tf.features itself")
    if kwargs.get("cut"):
        raise ValueError(
            "the activations fine-tuning trains on (fine_tune_from) are "
            "computed by the local runner only; use --runner=local"
        )

    def compute(store, manifest, job, done, pending):
        _compute_with_beam(
            store, manifest, job, done, pending, runner, pipeline_options
        )

    return feature_extraction.extract_features_with_report(
        *args, compute=compute, **kwargs
    )


def extract_for_config(
    config: Config,
    paths: Sequence[str],
    verbose: int = 1,
    flip: bool = False,
    runner: str = "DirectRunner",
    pipeline_options: str | Sequence[str] = (),
) -> feature_report.FeatureReport:
    """`vse_tf.features.settings.extract_for_config` on ``runner``.

    The same cache entry training reads.
    """
    settings = feature_settings.extraction_settings(config)
    return extract_features_with_report(
        paths,
        verbose=verbose,
        flip=flip,
        runner=runner,
        pipeline_options=pipeline_options,
        **settings,
    )


# ---------------------------------------------------------------------------
# The driver's part.


def _agreed_dtype(
    job: feature_extraction.ExtractionJob,
    manifest: dict,
    table: list[tuple[int, int, int]],
) -> tuple[str, Optional[float]]:
    """The precision every worker uses: the manifest's, or bf16 checked here.

    Checked on the first batch of the pending shards, as the local path
    checks the first batch it computes.
    """
    if manifest["used_dtype"] is not None or job.dtype == "float32":
        return manifest["used_dtype"] or job.dtype, None
    extractor = feature_extractor.Extractor(
        job.backbone,
        job.image_feature,
        job.image_size,
        job.weights,
        job.dtype,
        None,
        job.cache_dir,
    )
    batches = feature_extractor.shard_dataset(
        job.paths, table, job.image_size, job.batch_size, job.flip
    )
    for _, _, images in batches.take(1):
        extractor(images)
    if extractor.min_cosine is None:  # no readable image: nothing to compute
        return job.dtype, None
    return extractor.used_dtype, extractor.min_cosine


def _compute_with_beam(
    store: shard_store.ShardStore,
    manifest: dict,
    job: feature_extraction.ExtractionJob,
    done: dict[int, shard_store.Shard],
    pending: list[int],
    runner: str,
    pipeline_options: str | Sequence[str],
) -> None:
    """A `vse_tf.features.extraction.ComputeShards` run as a Beam pipeline.

    See the module docstring.
    """
    size, count = int(manifest["shard_size"]), len(job.paths)
    table = [(s, *feature_cache.shard_range(s, size, count)) for s in pending]
    used_dtype, min_cosine = _agreed_dtype(job, manifest, table)
    manifest["used_dtype"] = used_dtype
    if min_cosine is not None:
        manifest["bf16_min_cosine"] = round(min_cosine, 6)
    store.write_manifest(manifest)  # the agreed precision, before any shard
    logging.info(
        "Extracting %d shards of %s with Beam (%s, %s)",
        len(pending),
        store.folder,
        runner,
        used_dtype,
    )
    pipeline = runners.make_pipeline(runner, pipeline_options)
    _add_extraction(pipeline, job, table, store.folder, used_dtype)
    result = pipeline.run()
    result.wait_until_finish()
    io_utils.remove(f"{store.folder}/{runners.INPUTS_FILE}")
    dim = int(manifest["feature_dim"])
    finished = store.read_complete(
        store.read_entries(),
        is_valid=lambda e: feature_cache.entry_ok(e, size, count),
        dtype=np.float32,
        row_shape=(dim,),
    )
    runners.check_written(pending, finished, store.folder, "--cache_dir")
    done.update(finished)
    manifest["shards"] = [done[s].entry for s in sorted(done)]
    store.write_manifest(manifest)


def _add_extraction(
    pipeline: Any,
    job: feature_extraction.ExtractionJob,
    table: list[tuple[int, int, int]],
    folder: str,
    used_dtype: str,
) -> None:
    """Adds the extraction's transforms to ``pipeline``."""
    dim = backbone_catalog.feature_dim(job.backbone, job.image_feature)
    inputs = runners.write_inputs(folder, job.paths)
    decode = _DecodeShard(inputs, job.image_size, job.batch_size, job.flip)
    handler = BackboneModelHandler(
        job.backbone,
        job.image_feature,
        job.image_size,
        job.weights,
        used_dtype,
        None if io_utils.is_url(job.cache_dir or "") else job.cache_dir,
    )
    decoded = (
        pipeline
        | "Shards" >> beam.Create(table)
        | "Spread" >> beam.Reshuffle()
        | "Decode" >> beam.ParDo(decode).with_outputs(_SUMMARY, main="batches")
    )
    features = (
        decoded.batches
        | "Backbone"
        >> inference_base.RunInference(inference_base.KeyedModelHandler(handler))
        | "ByShard" >> beam.Map(_by_shard)
    )
    _ = (
        (features, decoded[_SUMMARY])
        | "Join" >> beam.Flatten()
        | "Group" >> beam.GroupByKey()
        | "Write" >> beam.ParDo(_WriteShard(folder, job.batch_size, job.backbone, dim))
    )


# ---------------------------------------------------------------------------
# The workers' part.


class BackboneModelHandler(inference_base.ModelHandler):
    """A Beam ``ModelHandler`` running our frozen backbone on image batches.

    Each example is one whole batch, ``float32 [B, S, S, 3]`` pixels in
    0..255 (``batch_elements_kwargs`` keeps Beam from re-batching them, so
    the backbone sees the batches the local path makes); each inference is
    its ``float32 [B, F]`` features. The model is loaded once per worker
    (`load_model`).

    Args:
        backbone, image_feature, image_size, weights: As in
            `vse_tf.models.backbone.build_backbone`.
        dtype: ``float32`` or ``mixed_bfloat16`` (already agreed).
        cache_dir: Where converted backbone weights are cached on a worker
            (None: the worker's default).
    """

    def __init__(
        self,
        backbone: str,
        image_feature: str,
        image_size: int,
        weights: str,
        dtype: str,
        cache_dir: Optional[str],
    ):
        super().__init__()
        self._args = (backbone, image_feature, image_size, weights)
        self._dtype = dtype
        self._cache_dir = cache_dir

    def load_model(self) -> Any:
        model = backbone_lib.build_backbone(
            *self._args, dtype=self._dtype, cache_dir=self._cache_dir
        )
        return feature_extractor.inference_fn(model)

    def run_inference(
        self, batch: Sequence[np.ndarray], model: Any, inference_args=None
    ) -> list:
        import tensorflow as tf  # noqa: PLC0415

        return [
            inference_base.PredictionResult(
                None, model(tf.constant(x)).numpy().astype(np.float32)
            )
            for x in batch
        ]

    def batch_elements_kwargs(self) -> dict[str, int]:
        return {"min_batch_size": 1, "max_batch_size": 1}


def _by_shard(keyed: tuple) -> tuple[int, tuple]:
    (shard, batch, indices), result = keyed
    return shard, ("batch", batch, list(indices), result.inference)


class _DecodeShard(beam.DoFn):
    """``(shard, start, stop)`` -> keyed image batches + a summary."""

    def __init__(self, inputs: str, image_size: int, batch_size: int, flip: bool):
        super().__init__()
        self._inputs = inputs
        self._settings = (image_size, batch_size, flip)
        self._paths: list[str] = []

    def setup(self) -> None:
        self._paths = runners.read_inputs(self._inputs)

    def process(self, element) -> Iterator:
        shard, start, stop = element
        paths = self._paths[start:stop]
        image_size, batch_size, flip = self._settings
        # The shard's images as the local path batches them: the readable
        # ones in order, batch_size at a time (indices relative to start).
        batches = feature_extractor.shard_dataset(
            paths, [(shard, 0, stop - start)], image_size, batch_size, flip
        )
        seen, number = set(), 0
        for _, indices, images in batches:
            positions = [start + int(i) for i in indices.numpy()]
            seen.update(positions)
            yield (shard, number, tuple(positions)), images.numpy()
            number += 1
        skipped = [
            {
                "index": start + i,
                "path": path,
                "reason": feature_report.failure_reason(path, image_size),
            }
            for i, path in enumerate(paths)
            if start + i not in seen
        ]
        for item in skipped:
            logging.warning(
                "Skipping image %d %s: %s", item["index"], item["path"], item["reason"]
            )
        summary = (_SUMMARY, start, stop, skipped, number)
        yield beam.pvalue.TaggedOutput(_SUMMARY, (shard, summary))


class _WriteShard(beam.DoFn):
    """``(shard, [batches..., summary])`` -> the shard written, its entry beside it."""

    def __init__(self, folder: str, batch_size: int, backbone: str, dim: int):
        super().__init__()
        self._args = (folder, batch_size, backbone, dim)

    def process(self, element) -> Iterator[int]:
        folder, batch_size, backbone, dim = self._args
        shard, parts = element
        batches = sorted((p for p in parts if p[0] == "batch"), key=lambda p: p[1])
        (summary,) = [p for p in parts if p[0] == _SUMMARY]
        _, start, stop, skipped, num_batches = summary
        if [p[1] for p in batches] != list(range(num_batches)):
            raise RuntimeError(f"shard {shard} of {folder}: batches missing")
        array = (
            np.concatenate([p[3] for p in batches])
            if batches
            else np.zeros([0, dim], np.float32)
        )
        if not np.all(np.isfinite(array)):
            raise FloatingPointError(
                f"non-finite {backbone} features; check the weights"
            )
        store = shard_store.ShardStore(folder)
        entry = store.write_shard(
            shard,
            array,
            start=start,
            stop=stop,
            batch_size=batch_size,
            skipped=skipped,
        )
        store.write_entry(entry)
        yield shard
