"""The index pipeline: exported model + images or captions -> a vse-search index.

The same index folder as `vse_tf.retrieval.index_lib.build_image_index`
(``manifest.json``, ``embeddings.npy``, ``items.txt``), with the encoding
spread over Beam workers:

1. the driver prepares the folder as the local build does (a finished
   index of the same build is returned as is; an unfinished one resumes)
   and keeps the shards already complete;
2. the pending shards ``(shard, inputs)`` are spread over the workers
   (``Reshuffle``); each worker loads the SavedModel once (``setup``; or
   connects to the TF Serving server), encodes its shards exactly as the
   local build does (unreadable images skipped and listed) and writes each
   through `vse_tf.shard_store`, its entry beside it;
3. the driver gathers and verifies the shards and writes the final files
   (the manifest last).

The shards are those of the local build (same inputs per shard, same
batches), so the index equals the one ``vse-index --runner=local`` writes.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator, Sequence
from typing import Optional, Union

import numpy as np

from vse_tf import errors, io_utils, shard_store
from vse_tf.pipelines import runners
from vse_tf.retrieval import ann as ann_lib
from vse_tf.retrieval import ann_index, index_build, index_lib
from vse_tf.retrieval import encoders as index_encoders
from vse_tf.retrieval import inputs as index_inputs
from vse_tf.serving import client as client_lib

beam = runners.import_beam()


def build_image_index(
    model_path: Optional[str],
    images: Union[str, Sequence[str]],
    output_dir: str,
    runner: str = "DirectRunner",
    pipeline_options: Union[str, Sequence[str]] = (),
    dtype: str = "float16",
    batch_size: int = 32,
    shard_size: int = 1024,
    server: Optional[str] = None,
    overwrite: bool = False,
    verbose: int = 1,
) -> index_lib.Index:
    """`vse_tf.retrieval.index_lib.build_image_index`, encoded by Beam.

    Args:
        model_path: Exported SavedModel version folder (or None with
            ``server``); every worker must be able to read it.
        images: Folder, glob, list file or sequence of paths (local or URLs).
        output_dir: Index folder.
        runner: A Beam runner of `vse_tf.pipelines.RUNNERS` (not ``local``).
        pipeline_options: Beam's own flags, e.g. ``--num_workers=8``.
        dtype, batch_size, shard_size, server, overwrite, verbose: As in
            `vse_tf.retrieval.index_lib.build_image_index`.

    Returns:
        The finished `Index`.
    """
    paths, source = index_inputs.image_inputs(images)
    return _build(
        "image",
        paths,
        source,
        model_path,
        server,
        output_dir,
        runner,
        pipeline_options,
        dtype,
        batch_size,
        shard_size,
        overwrite,
        verbose,
    )


def build_caption_index(
    model_path: Optional[str],
    captions: Union[str, Sequence[str]],
    output_dir: str,
    runner: str = "DirectRunner",
    pipeline_options: Union[str, Sequence[str]] = (),
    dtype: str = "float16",
    batch_size: int = 256,
    shard_size: int = 8192,
    server: Optional[str] = None,
    overwrite: bool = False,
    verbose: int = 1,
) -> index_lib.Index:
    """`vse_tf.retrieval.index_lib.build_caption_index`, encoded by Beam.

    Args:
        model_path, output_dir, runner, pipeline_options, dtype, batch_size,
        shard_size, server, overwrite, verbose: As in `build_image_index`.
        captions: A text file with one caption per line, or a sequence.

    Returns:
        The finished `Index` (items are the captions).
    """
    texts, source = index_inputs.caption_inputs(captions)
    return _build(
        "caption",
        texts,
        source,
        model_path,
        server,
        output_dir,
        runner,
        pipeline_options,
        dtype,
        batch_size,
        shard_size,
        overwrite,
        verbose,
    )


def build_ann(
    index_dir: str,
    runner: str = "DirectRunner",
    pipeline_options: Union[str, Sequence[str]] = (),
    **settings,
) -> ann_lib.ApproximateIndex:
    """`vse_tf.retrieval.ann_index.build_ann` with the shards added by Beam.

    The driver trains the IVF quantiser (and PQ codebooks) once on a seeded
    sample; the workers each add whole shards of the embeddings to a copy of
    it; the driver verifies them and writes ``ann.json``.

    Args:
        index_dir: A finished index folder every worker can read.
        runner: A Beam runner of `vse_tf.pipelines.RUNNERS` (not ``local``).
        pipeline_options: Beam's own flags.
        **settings: ``encoding``, ``nlist``, ``nprobe``, ``train_size``,
            ``seed``, ``shard_size`` (see `ann_index.build_ann`).

    Returns:
        The `ApproximateIndex` over the shards.
    """
    runners.check_runner(runner)
    if runner == runners.LOCAL:
        raise ValueError("the local runner is vse_tf.retrieval.ann_index itself")

    def add(index_dir, trained, table, store):
        pipeline = runners.make_pipeline(runner, pipeline_options)
        _ = (
            pipeline
            | "Shards" >> beam.Create(table)
            | "Spread" >> beam.Reshuffle()
            | "Add" >> beam.ParDo(_AddAnnShard(index_dir, store.folder))
        )
        pipeline.run().wait_until_finish()

    return ann_index.build_ann(index_dir, add=add, **settings)


class _AddAnnShard(beam.DoFn):
    """``(shard, start, stop)`` -> that shard of the ANN written, entry beside it."""

    def __init__(self, index_dir: str, folder: str):
        super().__init__()
        self._index_dir, self._folder = index_dir, folder
        self._embeddings = self._trained = None

    def setup(self) -> None:
        # Read here, not pickled into the job: the trained index can be MBs.
        self._embeddings = index_lib.load_index(self._index_dir).embeddings
        store = shard_store.ShardStore(self._folder)
        data = io_utils.read_bytes(ann_index.trained_path(store))
        self._trained = np.load(io.BytesIO(data), allow_pickle=False).tobytes()

    def process(self, row) -> Iterator[int]:
        store = shard_store.ShardStore(self._folder)
        ann_index.write_ann_shard(store, self._trained, tuple(row), self._embeddings)
        yield row[0]


class _Described:
    """The driver's stand-in for the encoder: it only describes the model.

    The workers load the model; the driver needs its description for the
    build record and the manifest, so it never loads the SavedModel.
    """

    def __init__(self, model_path: Optional[str], server: Optional[str]):
        if bool(model_path) == bool(server):
            raise errors.ConfigError(
                "give exactly one of a SavedModel path and a server URL"
            )
        self._description = (
            index_encoders.describe_saved_model(model_path)
            if model_path
            else client_lib.connect(server).describe()
        )

    def describe(self) -> dict:
        return self._description


def _build(
    kind: str,
    inputs: list[str],
    source: str,
    model_path: Optional[str],
    server: Optional[str],
    output_dir: str,
    runner: str,
    pipeline_options: Union[str, Sequence[str]],
    dtype: str,
    batch_size: int,
    shard_size: int,
    overwrite: bool,
    verbose: int,
) -> index_lib.Index:
    runners.check_runner(runner)
    if runner == runners.LOCAL:
        raise ValueError("the local runner is vse_tf.retrieval.index_lib itself")
    job = index_build.BuildJob(
        kind=kind,
        inputs=inputs,
        encoder=_Described(model_path, server),
        output_dir=output_dir,
        source=source,
        dtype=dtype,
        batch_size=batch_size,
        shard_size=shard_size,
        overwrite=overwrite,
        verbose=verbose,
        on_shard=None,
    )

    # The workers get the absolute path the driver resolved and described.
    model = (job.encoder.describe()["path"] if model_path else None, server)

    def encode(job, store, build, done):
        _encode_with_beam(job, store, build, done, model, runner, pipeline_options)

    return index_build.run_build(job, encode=encode)


def _encode_with_beam(
    job: index_build.BuildJob,
    store: shard_store.ShardStore,
    build: dict,
    done: dict,
    model: tuple[Optional[str], Optional[str]],
    runner: str,
    pipeline_options: Union[str, Sequence[str]],
) -> None:
    """`vse_tf.retrieval.index_lib.EncodeShards` by a Beam pipeline."""
    pending = [s for s in range(job.num_shards) if s not in done]
    if not pending:
        return
    logging.info(
        "Encoding %d shards of %s with Beam (%s)", len(pending), job.output_dir, runner
    )
    pipeline = runners.make_pipeline(runner, pipeline_options)
    inputs = runners.write_inputs(store.folder, job.inputs)
    settings = (job.kind, job.batch_size, job.dtype)
    embed = _EmbedShard(model, inputs, *settings, store.folder)
    ranges = [
        (s, s * job.shard_size, s * job.shard_size + len(job.chunk(s))) for s in pending
    ]
    _ = (
        pipeline
        | "Shards" >> beam.Create(ranges)
        | "Spread" >> beam.Reshuffle()
        | "Embed" >> beam.ParDo(embed)
    )
    pipeline.run().wait_until_finish()
    finished = index_build.complete_shards(job, store, [])
    runners.check_written(pending, finished, job.output_dir, "--output")
    done.update({s: finished[s] for s in pending})
    store.write_manifest(dict(build, shards=[done[s].entry for s in sorted(done)]))


class _EmbedShard(beam.DoFn):
    """``(shard, start, stop)`` -> the shard encoded and written, entry beside it."""

    def __init__(
        self,
        model: tuple[Optional[str], Optional[str]],
        inputs: str,
        kind: str,
        batch_size: int,
        dtype: str,
        folder: str,
    ):
        super().__init__()
        self._model = model
        self._inputs_path = inputs
        self._settings = (kind, batch_size, dtype)
        self._folder = folder
        self._encoder = None
        self._inputs: list[str] = []

    def setup(self) -> None:
        model_path, server = self._model
        self._encoder = index_encoders.get_encoder(model_path, server)
        self._inputs = runners.read_inputs(self._inputs_path)

    def process(self, element) -> Iterator[int]:
        shard, start, stop = element
        kind, batch_size, dtype = self._settings
        matrix, record = index_build.encode_chunk(
            kind, self._encoder, self._inputs[start:stop], batch_size, dtype
        )
        store = shard_store.ShardStore(self._folder)
        store.write_entry(store.write_shard(shard, matrix, record=record))
        yield shard
