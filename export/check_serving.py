"""Checks an exported SavedModel the way TF Serving will run it, before deploying.

Loads MODEL_DIR (a folder of numbered versions: the newest; or one version)
in a child process through TensorFlow's C API, the C++ loader TF Serving
uses, with the tensorflow-text op libraries registered as the server links
them, and without any TensorFlow Python. Runs every signature on real
inputs (JPEG and PNG bytes, pixels, features, sentences, token ids;
search_images when present) and replays the warmup file, by tensor name.
Exits 0 only when everything ran and matched the SavedModel's own Python
load (max |diff| <= --atol).

Example:
    python -m export.check_serving models/vse
"""

from absl import flags

from vse_tf import errors
from vse_tf.serving import serving_check

from . import cli

_ATOL = flags.DEFINE_float("atol", 1e-5, "Largest allowed difference from Python.")
_TEXT_OPS = flags.DEFINE_bool(
    "text_ops", True, "Register the tensorflow-text op libraries (as TF Serving)."
)


def main(argv):
    if len(argv) != 2:
        raise errors.ConfigError(
            "give one MODEL_DIR: python -m export.check_serving DIR"
        )
    report = serving_check.check_serving(
        argv[1], with_text_ops=_TEXT_OPS.value, atol=_ATOL.value
    )
    print(report.format())
    if not report.ok:
        cli.fail("the export would not serve as it should (see above)", 1)
    print(f"OK: {len(report.results)} requests ran through the C API and matched.")


def run():
    cli.run(main, __doc__, takes_arguments=True)


if __name__ == "__main__":
    run()
