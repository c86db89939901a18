"""Exports a trained workdir as a TF Serving SavedModel version.

Example:
    python -m export.export_saved_model --workdir=runs/demo --output_dir=models/vse
    # -> models/vse/1/ (next free version), models/vse/models.config and
    #    models/vse/batching_parameters.txt; then the new version is loaded
    #    and run through TensorFlow's C API as TF Serving would
    #    (export.check_serving), and the docker line to serve it is printed.
"""

from absl import flags

from vse_tf.retrieval import index_lib
from vse_tf.serving import saved_model_lib, serving_check, serving_config

from . import cli

_WORKDIR = flags.DEFINE_string(
    "workdir",
    None,
    "Training workdir, or a preset (a folder or hf://owner/name); several, "
    "comma-separated: their ensemble as one model (mean cosine).",
    required=True,
)
_OUTPUT_DIR = flags.DEFINE_string(
    "output_dir", None, "Model base path (numbered versions).", required=True
)
_VERSION = flags.DEFINE_integer("version", None, "Version number (default: next).")
_MODEL_NAME = flags.DEFINE_string("model_name", "vse", "Model name in warmup requests.")
_IMAGE_INDEX = flags.DEFINE_string(
    "image_index", None, "Image index folder (vse-index) to serve as search_images."
)
_SEARCH_K = flags.DEFINE_integer("search_k", 10, "Results per search_images query.")
_CHECK = flags.DEFINE_bool(
    "check_serving",
    True,
    "Then load and run the new version as TF Serving does (export.check_serving).",
)


def main(argv):
    del argv
    index = None
    if _IMAGE_INDEX.value:
        index = index_lib.load_index(_IMAGE_INDEX.value, mmap_mode=None)
    workdirs = [w for w in _WORKDIR.value.split(",") if w]
    path = saved_model_lib.export_saved_model(
        workdirs[0] if len(workdirs) == 1 else workdirs,
        _OUTPUT_DIR.value,
        _VERSION.value,
        _MODEL_NAME.value,
        image_index=index,
        search_k=_SEARCH_K.value,
    )
    print(f"SavedModel written to {path}")
    for written in serving_config.write_serving_files(
        _OUTPUT_DIR.value, _MODEL_NAME.value
    ):
        print(f"wrote {written}")
    if _CHECK.value:
        print(serving_check.check_or_raise(path).format())
    print(
        "Serve it with:\n  "
        + serving_config.docker_command(_OUTPUT_DIR.value, _MODEL_NAME.value)
    )


def run():
    cli.run(main, __doc__)


if __name__ == "__main__":
    run()
