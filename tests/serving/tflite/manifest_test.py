"""The export's ``manifest.json``: sizes, hashes and the towers' interfaces."""

import json

import pytest

from vse_tf.serving.tflite import manifest as manifest_lib

pytest.importorskip(
    "ai_edge_litert", reason='needs the LiteRT interpreter: pip install "vse_tf[lite]"'
)


def test_manifest_describes_the_files(exported, reference):
    files, manifest = exported("none")
    config = reference["config"]
    assert manifest["embed_dim"] == config.model.embed_dim
    assert manifest["max_length"] == config.data.max_length
    assert manifest["image_size"] == [config.data.image_size] * 2
    assert set(manifest["files"]) == set(files)
    for name, data in files.items():
        entry = manifest["files"][name]
        assert entry["sha256"] == manifest_lib.sha256(data)
        assert entry["size_bytes"] == len(data)
    image = manifest["files"][manifest_lib.IMAGE_FILE]
    size, dim = config.data.image_size, config.model.embed_dim
    assert image["inputs"]["pixels"]["shape"] == [-1, size, size, 3]
    assert image["inputs"]["pixels"]["dtype"] == "float32"
    assert image["outputs"]["embedding"]["shape"] == [-1, dim]
    text = manifest["files"][manifest_lib.TEXT_FILE]
    assert text["inputs"]["token_ids"]["shape"] == [-1, config.data.max_length]
    assert text["inputs"]["token_ids"]["dtype"] == "int32"
    strings = manifest["files"][manifest_lib.STRINGS_FILE]
    assert strings["inputs"]["sentences"]["dtype"] == "string"
    json.dumps(manifest)  # serialisable
