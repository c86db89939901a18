"""Indexes an image collection or a caption set for `vse-search`.

Examples:
    vse-index --model=models/vse/1 --images=photos/ --output=idx/photos
    vse-index --model=models/vse/1 --captions=captions.txt --output=idx/caps
    vse-index --server=http://127.0.0.1:8501 --images=list.txt --output=idx/p
    vse-index --add --index=idx/photos --images=new_photos/

An interrupted run, started again with the same flags, continues where it
stopped. With ``--runner`` set to a Beam runner the encoding is an Apache
Beam pipeline (local worker processes, or Dataflow, Flink, Spark; see the
README's "Millions of images"); the index written is the same.

With ``--ann`` an approximate (FAISS IVF-PQ) index is added to the folder,
in shards (on Beam workers with a Beam runner), for ``vse-search --ann``.

    vse-index --model=models/vse/1 --images='gs://b/photos/*.jpg' \\
        --output=gs://b/idx --runner=DataflowRunner -- --project=p --region=r
"""

import logging

from absl import app, flags

from vse_tf import projector as projector_lib
from vse_tf.retrieval import ann_index, index_add, index_build, index_lib

from . import cli

_MODEL = flags.DEFINE_string(
    "model",
    None,
    "Exported SavedModel version folder, or a preset (a folder or hf://owner/name).",
)
_SERVER = flags.DEFINE_string(
    "server", None, "TF Serving URL instead of --model (http://h:8501 or h:8500)."
)
_IMAGES = flags.DEFINE_string(
    "images", None, "Image folder, glob ('photos/*.jpg') or a file of paths."
)
_CAPTIONS = flags.DEFINE_string("captions", None, "Caption file, one per line.")
_OUTPUT = flags.DEFINE_string("output", None, "Index folder to build.")
_ADD = flags.DEFINE_bool(
    "add",
    False,
    "Append --images (or --captions) to the finished index --index, without "
    "encoding the old ones again: files already indexed (by content) are skipped "
    "and counted, another model is refused, a kill leaves the old index whole, and "
    "the same command run again resumes.",
)
_INDEX = flags.DEFINE_string("index", None, "The index to grow (with --add).")
_SHOWN_SKIPPED = 20
"""Skipped inputs named on the console (the manifest lists all)."""
_DTYPE = flags.DEFINE_enum("dtype", "float16", index_lib.DTYPES, "Stored precision.")
_BATCH_SIZE = flags.DEFINE_integer(
    "batch_size", None, "Inputs per encoder call (unset: 32 images or 256 captions)."
)
_SHARD_SIZE = flags.DEFINE_integer(
    "shard_size",
    None,
    "Inputs per resumable shard (unset: 1024 images or 8192 captions).",
)
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace another index there.")
_ANN = flags.DEFINE_bool(
    "ann", False, "Also build the approximate index (FAISS) for vse-search --ann."
)
_ANN_SHARD_SIZE = flags.DEFINE_integer(
    "ann_shard_size", ann_index.DEFAULT_SHARD_SIZE, "Vectors per ANN shard."
)
_PROJECTOR = flags.DEFINE_string(
    "projector",
    None,
    "Also write the image index for TensorBoard's Embedding Projector into this "
    "folder: tensorboard --logdir DIR.",
)
_RUNNER, _PIPELINE_OPTIONS = cli.define_runner_flags()

flags.register_multi_flags_validator(
    ["model", "server", "add"],
    lambda v: (
        not (v["model"] and v["server"])
        and (v["add"] or bool(v["model"]) != bool(v["server"]))
    ),
    "give exactly one of --model and --server (with --add, at most one: "
    "default the index's model)",
)
flags.register_multi_flags_validator(
    ["output", "index", "add"],
    lambda v: (
        (bool(v["index"]) and not v["output"])
        if v["add"]
        else (bool(v["output"]) and not v["index"])
    ),
    "build with --output=FOLDER, or grow an index with --add --index=FOLDER",
)
flags.register_multi_flags_validator(
    ["images", "captions"],
    lambda v: bool(v["images"]) != bool(v["captions"]),
    "give exactly one of --images and --captions",
)


def main(argv):
    if len(argv) > 1 and _RUNNER.value == "local":
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    # Skipped inputs are printed below, one line each, not logged as well.
    index_build.LOGGER.setLevel(logging.ERROR)
    if _PROJECTOR.value and not _IMAGES.value:
        raise app.UsageError(
            "--projector takes an image index (--images): its points carry "
            "their thumbnails"
        )
    if _ADD.value:
        _add()
        return
    kwargs = {
        "dtype": _DTYPE.value,
        "server": _SERVER.value,
        "overwrite": _OVERWRITE.value,
    }
    if _BATCH_SIZE.value:
        kwargs["batch_size"] = _BATCH_SIZE.value
    if _SHARD_SIZE.value:
        kwargs["shard_size"] = _SHARD_SIZE.value
    builders = index_build
    if _RUNNER.value != "local":
        from vse_tf.pipelines import index as builders  # Beam: optional

        kwargs["runner"] = _RUNNER.value
        kwargs["pipeline_options"] = cli.pipeline_options(_PIPELINE_OPTIONS, argv)
    if _IMAGES.value:
        index = builders.build_image_index(
            _MODEL.value, _IMAGES.value, _OUTPUT.value, **kwargs
        )
    else:
        index = builders.build_caption_index(
            _MODEL.value, _CAPTIONS.value, _OUTPUT.value, **kwargs
        )
    if _ANN.value:
        if _RUNNER.value == "local":
            approximate = ann_index.build_ann(
                _OUTPUT.value, shard_size=_ANN_SHARD_SIZE.value
            )
        else:
            approximate = builders.build_ann(
                _OUTPUT.value,
                kwargs["runner"],
                kwargs["pipeline_options"],
                shard_size=_ANN_SHARD_SIZE.value,
            )
        print(
            f"Approximate index: {approximate.encoding}, {approximate.nlist} lists, "
            f"nprobe {approximate.nprobe}"
        )
    if _PROJECTOR.value:
        files = projector_lib.projector_files(
            index.embeddings.astype("float32"), index.items
        )
        projector_lib.write_projector(_PROJECTOR.value, files)
        print(
            f"Projector files in {_PROJECTOR.value}: "
            f"tensorboard --logdir {_PROJECTOR.value}"
        )
    skipped = index.manifest["skipped"]
    print(
        f"Indexed {len(index)} {index.kind}s (D={index.dim}, {index.embeddings.dtype})"
        f" into {_OUTPUT.value}" + (f"; {len(skipped)} skipped:" if skipped else "")
    )
    for item in skipped[:_SHOWN_SKIPPED]:
        print(f"  {item['item']}: {item['error']}")
    if len(skipped) > _SHOWN_SKIPPED:
        print(
            f"  ... and {len(skipped) - _SHOWN_SKIPPED} more, each with its reason "
            f"in {_OUTPUT.value}/manifest.json"
        )


def _add() -> None:
    """``--add``: grows ``--index`` and says what it added, skipped and kept."""
    if _RUNNER.value != "local" or _ANN.value or _PROJECTOR.value:
        raise app.UsageError(
            "--add runs locally and extends an existing approximate index itself; "
            "drop --runner, --ann and --projector"
        )
    report = index_add.add_to_index(
        _INDEX.value,
        _IMAGES.value or _CAPTIONS.value,
        model_path=_MODEL.value,
        server=_SERVER.value,
        batch_size=_BATCH_SIZE.value,
        shard_size=_SHARD_SIZE.value,
    )
    index = report.index
    print(
        f"Added {report.added} {index.kind}s to {_INDEX.value}: {len(index)} now; "
        f"{report.duplicates} already indexed (same content), "
        f"{len(report.skipped)} skipped" + (":" if report.skipped else ".")
    )
    for item in report.skipped[:_SHOWN_SKIPPED]:
        print(f"  {item['item']}: {item['error']}")
    if len(report.skipped) > _SHOWN_SKIPPED:
        print(f"  ... and {len(report.skipped) - _SHOWN_SKIPPED} more")
    if report.ann_extended:
        print("The approximate index was extended with the new rows.")


def run():
    cli.run(main, __doc__, takes_arguments=True)


if __name__ == "__main__":
    run()
