"""A workdir's whole TFLite export, through ``python -m export.export_tflite``."""

import json
import os

import pytest

from tests import testing_utils
from tests.serving.tflite.helpers import cosine as _cosine
from vse_tf.serving.tflite import manifest as manifest_lib
from vse_tf.serving.tflite import runner

pytest.importorskip(
    "ai_edge_litert", reason='needs the LiteRT interpreter: pip install "vse_tf[lite]"'
)


@pytest.mark.slow(reason="runs the export command as a subprocess")
def test_script_writes_all_files(workdir, reference, tmp_path):
    output = tmp_path / "tflite"
    result = testing_utils.run_python(
        "-m", "export.export_tflite", f"--workdir={workdir}",
        f"--output_dir={output}", "--quantize=none",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    names = {
        manifest_lib.IMAGE_FILE,
        manifest_lib.TEXT_FILE,
        manifest_lib.STRINGS_FILE,
        manifest_lib.VOCAB_FILE,
        manifest_lib.MANIFEST_FILE,
    }
    assert set(os.listdir(output)) == names  # no temporary folder left
    with open(output / manifest_lib.MANIFEST_FILE) as f:
        manifest = json.load(f)
    assert manifest["quantize"] == "none"
    for name, entry in manifest["files"].items():
        data = (output / name).read_bytes()
        assert entry["sha256"] == manifest_lib.sha256(data), name
    with open(os.path.join(workdir, "vocab.txt"), "rb") as f:
        assert (output / manifest_lib.VOCAB_FILE).read_bytes() == f.read()
    got = runner.run_tflite(
        str(output / manifest_lib.IMAGE_FILE), reference["images"][:2]
    )
    assert _cosine(got, reference["image_emb"][:2]).min() >= 0.99999
