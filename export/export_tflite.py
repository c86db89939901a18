"""Exports a trained workdir's towers to TFLite / LiteRT.

Writes to ``--output_dir``: ``image_tower.tflite`` (RGB pixels in),
``text_tower.tflite`` (token ids in, builtin ops only),
``text_tower_strings.tflite`` (raw sentences in, tensorflow-text custom ops),
``vocab.txt`` and ``manifest.json`` (shapes, preprocessing, tokenizer, sha256
of every file). Files are first written to a temporary folder inside
``--output_dir`` and then moved into place one by one, ``manifest.json``
last, so a reader never sees a half-written file.

Example:
    python -m export.export_tflite --workdir=runs/demo \\
        --output_dir=runs/demo/tflite --quantize=float16
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

from absl import flags, logging

from vse_tf import errors
from vse_tf.serving.tflite import convert as tflite_convert
from vse_tf.serving.tflite import export as tflite_export
from vse_tf.serving.tflite import manifest as tflite_manifest

from . import cli

_WORKDIR = flags.DEFINE_string(
    "workdir",
    None,
    "Training workdir, or a preset (a folder or hf://owner/name).",
    required=True,
)
_OUTPUT_DIR = flags.DEFINE_string(
    "output_dir", None, "Output folder (default <workdir>/tflite)."
)
_QUANTIZE = flags.DEFINE_enum(
    "quantize",
    "none",
    list(tflite_convert.QUANTIZE_MODES),
    "none: float32; float16: float16 weights; dynamic: int8 weights; int8: "
    "int8 weights and activations, calibrated on real training data.",
)
_CALIBRATION_IMAGES = flags.DEFINE_integer(
    "num_calibration_images", 64, "Training images used to calibrate int8."
)
_CALIBRATION_CAPTIONS = flags.DEFINE_integer(
    "num_calibration_captions", 256, "Training captions used to calibrate int8."
)


def write_export(files: dict[str, bytes], manifest: dict, output_dir: str) -> list[str]:
    """Writes the files, then ``manifest.json``, each replaced atomically.

    Args:
        files: File name -> contents.
        manifest: The manifest dict.
        output_dir: Destination folder (created if needed).

    Returns:
        The paths written, manifest last.
    """
    os.makedirs(output_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tflite_export_", dir=output_dir)
    try:
        contents = dict(files)
        contents[tflite_manifest.MANIFEST_FILE] = (
            json.dumps(manifest, indent=2, sort_keys=True) + "\n"
        ).encode("utf-8")
        for name, data in contents.items():
            with open(os.path.join(tmp, name), "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        written = []
        order = [n for n in contents if n != tflite_manifest.MANIFEST_FILE]
        for name in order + [tflite_manifest.MANIFEST_FILE]:
            path = os.path.join(output_dir, name)
            os.replace(os.path.join(tmp, name), path)
            written.append(path)
        return written
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv):
    del argv
    if not _OUTPUT_DIR.value and _WORKDIR.value.startswith("hf://"):
        raise errors.ConfigError("an hf:// preset needs --output_dir")
    output_dir = _OUTPUT_DIR.value or os.path.join(_WORKDIR.value, "tflite")
    files, manifest = tflite_export.export_tflite(
        _WORKDIR.value,
        _QUANTIZE.value,
        num_calibration_images=_CALIBRATION_IMAGES.value,
        num_calibration_captions=_CALIBRATION_CAPTIONS.value,
    )
    for path in write_export(files, manifest, output_dir):
        logging.info("wrote %s (%d bytes)", path, os.path.getsize(path))
    print(f"TFLite export ({_QUANTIZE.value}) written to {output_dir}")


def run():
    cli.run(main, __doc__)


if __name__ == "__main__":
    run()
