"""What a new user hits, through the real commands: exit code, first line, no noise.

Each test runs a command as a subprocess with the environment a user has
(no ``TF_CPP_MIN_LOG_LEVEL``), and checks what they see and that files are
left as they were.
"""

import json
import os
import re
import shutil

import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorboard.plugins import projector as tb_projector

from tests import testing_utils
from vse_tf import quiet

pytestmark = pytest.mark.slow(reason="runs the commands as subprocesses")

TRACEBACK = "Traceback (most recent call last)"


def _run(*args):
    return testing_utils.run_python("-m", *args, user_env=True, timeout=300)


def _noise(stderr: str) -> list[str]:
    """TensorFlow C++ / libjpeg lines that reached the terminal."""
    return [line for line in stderr.splitlines() if quiet.NOISE.match(line.encode())]


def _photo(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, [40, 48, 3]).astype(np.uint8)
    return tf.io.encode_jpeg(pixels).numpy()


@pytest.fixture(scope="module")
def folder(tmp_path_factory, tiny_export):
    """Photos with every kind of broken file, and an index of good ones."""
    root = tmp_path_factory.mktemp("new_user")
    photos = root / "photos"
    photos.mkdir()
    for i in range(3):
        (photos / f"good_{i}.jpg").write_bytes(_photo(i))
    jpeg = _photo(7)
    (photos / "really_a_jpeg.txt").write_bytes(jpeg)  # decided by content
    (photos / "truncated.jpg").write_bytes(jpeg[:300])
    # Whole by its markers (SOI ... EOI), garbage in between: TF cannot decode.
    (photos / "corrupt.jpg").write_bytes(
        jpeg[:2] + b"\xff\x53" + bytes(400) + jpeg[-2:]
    )
    (photos / "empty.png").write_bytes(b"")
    (photos / "notes.md").write_text("# not an image\n")
    captions = root / "captions.txt"
    captions.write_text("a red square\na blue circle\ntwo green stripes\n")
    made = _run(
        "trainers.vse_index",
        f"--model={tiny_export.export_dir}",
        f"--captions={captions}",
        f"--output={root / 'captions'}",
    )
    assert made.returncode == 0, made.stderr[-3000:]
    return root, photos, tiny_export.export_dir


def test_index_names_each_skipped_image_with_its_reason(folder):
    root, photos, export_dir = folder
    output = root / "idx"
    result = _run(
        "trainers.vse_index",
        f"--model={export_dir}",
        f"--images={photos}",
        f"--output={output}",
        "--dtype=float32",
        f"--projector={root / 'projector'}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # The skipped files are listed on stdout, once; nothing reaches stderr.
    assert result.stderr == "", result.stderr
    expected = {
        "corrupt.jpg": "a JPEG whose data does not decode (",
        "truncated.jpg": "truncated at byte 300 (no JPEG end-of-image marker)",
        "empty.png": "empty (0 bytes)",
        # "# no" in hex: the file's first four bytes.
        "notes.md": "not a JPEG, PNG, GIF or BMP image (it starts with bytes "
        "23 20 6e 6f)",
    }
    with open(output / "manifest.json") as f:
        manifest = json.load(f)
    skipped = {os.path.basename(s["item"]): s["error"] for s in manifest["skipped"]}
    assert sorted(skipped) == sorted(expected)
    for name, reason in expected.items():
        assert skipped[name].startswith(reason), (name, skipped[name])
        assert "Graph execution error" not in skipped[name]
        # The console names each one, with the same reason.
        assert f"{photos / name}: {skipped[name]}" in result.stdout
    assert "Indexed 4 images" in result.stdout and "4 skipped:" in result.stdout
    with open(output / "items.txt") as f:
        assert str(photos / "really_a_jpeg.txt") in f.read().splitlines()
    # The projector's files, for the 4 indexed images (TensorBoard's proto).
    config = text_format.Parse(
        (root / "projector" / "projector_config.pbtxt").read_text(),
        tb_projector.ProjectorConfig(),
    )
    assert config.embeddings[0].sprite.image_path == "sprite.png"
    tensors = (root / "projector" / "tensors.tsv").read_text().splitlines()
    assert len(tensors) == 4
    rate = re.search(r"([\d.]+) images/s", result.stdout)
    assert rate and float(rate.group(1)) < 10_000, result.stdout  # a real speed


@pytest.mark.parametrize(
    "name, reason",
    [
        ("corrupt.jpg", "a JPEG whose data does not decode ("),
        ("truncated.jpg", "truncated at byte 300 (no JPEG end-of-image marker)"),
        ("empty.png", "empty (0 bytes)"),
        ("missing.jpg", "no such file"),
    ],
)
def test_a_bad_query_image_is_one_line_naming_the_file(folder, name, reason):
    root, photos, _ = folder
    index = root / "captions"
    before = sorted(os.listdir(index))
    result = _run(
        "trainers.vse_search", f"--index={index}", f"--image={photos / name}", "-k", "3"
    )
    assert result.returncode == 1
    assert TRACEBACK not in result.stderr and not _noise(result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"error: {photos / name}: {reason}"), lines
    assert "function_node" not in lines[0] and "Graph execution" not in lines[0]
    assert sorted(os.listdir(index)) == before


def test_a_real_jpeg_named_txt_is_a_query_as_it_is_an_index_item(folder):
    root, photos, _ = folder
    index = root / "captions"
    result = _run(
        "trainers.vse_search",
        f"--index={index}",
        f"--image={photos / 'really_a_jpeg.txt'}",
        "-k",
        "1",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("1\t")


def test_import_vse_tf_and_a_text_search_print_nothing_of_tensorflow(folder):
    root, photos, export_dir = folder
    imported = testing_utils.run_python(
        "-c", "import vse_tf; vse_tf.Embedder; print('ok')", user_env=True
    )
    assert imported.returncode == 0 and imported.stdout == "ok\n"
    assert imported.stderr == "", imported.stderr
    result = _run(
        "trainers.vse_search",
        f"--index={root / 'idx'}",
        f"--model={export_dir}",
        "a red square",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr == "", result.stderr


def test_evaluate_refuses_a_preset_it_would_ignore(tiny_export, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(tiny_export.workdir, workdir)
    before = sorted(os.listdir(workdir))
    result = _run("trainers.evaluate", f"--workdir={workdir}", "--preset=flickr8k_lite")
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [
        "error: --preset has no effect with --workdir: the workdir's config.json "
        "decides; drop it (with --workdir only --dataset, --data_dir and "
        "--max_eval_images apply)"
    ]
    assert sorted(os.listdir(workdir)) == before


def test_a_missing_required_flag_is_one_sentence():
    result = _run("trainers.vse_search", "a dog")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: flag --index=None: Flag --index must have a value other than "
        "None. See python -m trainers.vse_search --help."
    )


def test_tflite_export_prints_only_what_it_wrote(tiny_export, tmp_path):
    result = _run(
        "export.export_tflite",
        f"--workdir={tiny_export.workdir}",
        f"--output_dir={tmp_path / 'tflite'}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert not _noise(result.stderr), _noise(result.stderr)
    assert "custom op" not in result.stderr.lower()
    # What is left: one line per file written (our own absl INFO lines).
    assert all(" wrote " in line for line in result.stderr.splitlines()), result.stderr
    assert result.stdout.strip().endswith(f"written to {tmp_path / 'tflite'}")


def test_help_texts_say_what_unset_means_and_keep_examples_on_their_lines():
    search = _run("trainers.vse_search", "--help")
    assert search.returncode == 0
    example = [line for line in search.stdout.splitlines() if '"a dog" ' in line]
    assert example and example[0].rstrip().endswith("\\"), example
    assert not [line for line in search.stdout.splitlines() if '" ' + " " * 5 in line]
    index = _run("trainers.vse_index", "--help")
    assert "unset: 32 images or 256 captions" in index.stdout
    assert "unset: 1024 images or 8192 captions" in index.stdout
