"""Image and caption indexes: build, resume, skip bad files, search, CLI."""

from __future__ import annotations

import csv
import hashlib
import json
import os

import numpy as np
import pytest

from tests import testing_utils
from tests.serving.client_test import fake_rest_server
from vse_tf import errors
from vse_tf.retrieval import encoders as index_encoders
from vse_tf.retrieval import index_build, index_lib
from vse_tf.retrieval import inputs as index_inputs


class _Stop(Exception):
    pass


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_export):
    export_dir, data_dir = tiny_export.export_dir, tiny_export.data_dir
    root = tmp_path_factory.mktemp("index")
    folder = os.path.join(data_dir, "images")
    names = sorted(os.listdir(folder))
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n definitely not a png")
    (root / "empty.jpg").write_bytes(b"")
    # 40 good images, a corrupt one, an empty one, a missing one; relative
    # paths resolve against the list file's folder.
    lines = [os.path.join(folder, n) for n in names[:20]]
    lines += ["corrupt.png", "missing.png", "empty.jpg"]
    lines += [os.path.join(folder, n) for n in names[20:]]
    list_file = root / "images.txt"
    list_file.write_text("# the collection\n" + "\n".join(lines) + "\n\n")
    with open(os.path.join(data_dir, "captions.csv")) as f:
        rows = list(csv.DictReader(f))
    captions_file = root / "captions.txt"
    captions_file.write_text("\n".join(r["caption"] for r in rows) + "\n")
    encoder = index_encoders.SavedModelEncoder(export_dir)
    full = root / "full"
    index = index_build.build_image_index(
        export_dir,
        str(list_file),
        str(full),
        dtype="float32",
        batch_size=4,
        shard_size=8,
        verbose=0,
    )
    return {
        "export_dir": export_dir,
        "good": [os.path.join(folder, n) for n in names],
        "rows": rows,
        "root": root,
        "list_file": str(list_file),
        "captions_file": str(captions_file),
        "encoder": encoder,
        "full": str(full),
        "index": index,
    }


def test_image_index_files_and_manifest(setup):
    index, export_dir = setup["index"], setup["export_dir"]
    assert sorted(os.listdir(setup["full"])) == [
        "embeddings.npy",
        "items.txt",
        "manifest.json",
    ]
    loaded = index_lib.load_index(setup["full"])
    assert loaded.items == index.items == setup["good"]
    np.testing.assert_array_equal(loaded.embeddings, index.embeddings)
    manifest = loaded.manifest
    with open(os.path.join(export_dir, "saved_model.pb"), "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()
    assert manifest["kind"] == "image"
    assert manifest["model"] == {
        "path": os.path.abspath(export_dir),
        "sha256": sha,
        "version": "1",
    }
    assert manifest["count"] == 40 and manifest["dim"] == loaded.dim
    assert manifest["dtype"] == "float32" and loaded.embeddings.dtype == np.float32
    assert manifest["created"].endswith("+00:00")
    # Bad files skipped, counted and listed; they did not stop the run.
    assert manifest["num_skipped"] == 3
    skipped = {os.path.basename(s["item"]): s["error"] for s in manifest["skipped"]}
    assert sorted(skipped) == ["corrupt.png", "empty.jpg", "missing.png"]
    assert skipped["missing.png"] == "no such file"
    assert skipped["empty.jpg"] == "empty (0 bytes)"
    # PNG magic, then text: no IEND chunk, so cut short by content.
    assert skipped["corrupt.png"] == "truncated at byte 29 (no PNG IEND chunk)"
    assert all(skipped.values())


def test_embeddings_are_the_image_tower_of_the_file_bytes(setup):
    index, encoder = setup["index"], setup["encoder"]
    data = [open(p, "rb").read() for p in setup["good"]]
    want = encoder.encode_images(data)
    np.testing.assert_allclose(index.embeddings, want, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(index.embeddings, axis=1), 1, atol=1e-5)


def test_text_search_is_sorted_and_scores_are_dot_products(setup):
    index, encoder = setup["index"], setup["encoder"]
    results = index_lib.search_text(index, encoder, "a red square", k=7)
    assert len(results) == 7
    scores = [r.score for r in results]
    assert scores == sorted(scores, reverse=True)
    query = encoder.encode_text(["a red square"])[0]
    for item, score in results:
        dot = float(index.embeddings[index.items.index(item)] @ query)
        assert score == pytest.approx(dot, abs=1e-5)
    everything = index_lib.search_text(index, encoder, "a red square", k=1000)
    assert len(everything) == len(index)
    assert everything[:7] == results


def test_captions_find_images_of_their_kind(setup):
    """A class caption ("a red square") ranks its kind of image well (tiny model).

    The tiny data has 8 kinds (colour x shape), 5 images each: by chance 5 of
    the 40 top-5 slots of the 8 queries would hold the queried kind.
    """
    index, encoder = setup["index"], setup["encoder"]
    kind = {}
    for row in setup["rows"]:
        words = row["caption"].lower()
        colour = next(c for c in testing_utils.COLOURS if c in words)
        shape = next(s for s in testing_utils.SHAPES if s in words)
        kind[os.path.basename(row["image"])] = (colour, shape)
    hits = 0
    for colour in testing_utils.COLOURS:
        for shape in testing_utils.SHAPES:
            results = index_lib.search_text(index, encoder, f"a {colour} {shape}", 5)
            found = [kind[os.path.basename(r.item)] for r in results]
            hits += found.count((colour, shape))
    assert hits >= 10, hits  # at least twice chance


def test_float16_index(setup, tmp_path):
    index = index_build.build_image_index(
        setup["export_dir"],
        setup["good"][:10],
        str(tmp_path / "f16"),
        batch_size=4,
        verbose=0,
    )
    assert index.embeddings.dtype == np.float16
    assert index_lib.load_index(str(tmp_path / "f16")).manifest["dtype"] == "float16"
    np.testing.assert_allclose(
        index.embeddings.astype(np.float32), setup["index"].embeddings[:10], atol=2e-3
    )


def test_interrupted_build_resumes_without_recomputing(setup, tmp_path):
    output = str(tmp_path / "resumed")

    def stop_after_first(shard, done):
        raise _Stop

    with pytest.raises(_Stop):
        index_build.build_image_index(
            setup["export_dir"],
            setup["list_file"],
            output,
            dtype="float32",
            batch_size=4,
            shard_size=8,
            verbose=0,
            on_shard=stop_after_first,
        )
    assert not os.path.exists(os.path.join(output, "manifest.json"))
    assert sorted(os.listdir(os.path.join(output, "shards"))) == [
        "shard-00000.json",
        "shard-00000.npy",
    ]
    with pytest.raises(FileNotFoundError, match="vse-index command again to resume"):
        index_lib.load_index(output)

    computed = []
    index = index_build.build_image_index(
        setup["export_dir"],
        setup["list_file"],
        output,
        dtype="float32",
        batch_size=4,
        shard_size=8,
        verbose=0,
        on_shard=lambda shard, done: computed.append(shard),
    )
    assert computed == [1, 2, 3, 4, 5]  # 43 inputs in shards of 8; 0 was kept
    full = setup["index"]
    assert index.items == full.items
    np.testing.assert_array_equal(index.embeddings, full.embeddings)
    assert index.manifest["skipped"] == full.manifest["skipped"]
    assert sorted(os.listdir(output)) == [
        "embeddings.npy",
        "items.txt",
        "manifest.json",
    ]

    # A finished build run again is returned as is.
    again = index_build.build_image_index(
        setup["export_dir"],
        setup["list_file"],
        output,
        dtype="float32",
        batch_size=4,
        shard_size=8,
        verbose=0,
        on_shard=lambda shard, done: computed.append(-1),
    )
    assert -1 not in computed and again.manifest == index.manifest


def test_resumed_build_encodes_a_damaged_shard_again(setup, tmp_path):
    """Index shards get the feature cache's integrity: sha256 checked on resume."""
    output = str(tmp_path / "damaged")
    kwargs = dict(dtype="float32", batch_size=4, shard_size=8, verbose=0)

    def stop_after_third(shard, done):
        if shard == 2:
            raise _Stop

    with pytest.raises(_Stop):
        index_build.build_image_index(
            setup["export_dir"],
            setup["list_file"],
            output,
            on_shard=stop_after_third,
            **kwargs,
        )
    with open(os.path.join(output, "build.json")) as f:
        entries = json.load(f)["shards"]
    assert [e["shard"] for e in entries] == [0, 1, 2]
    assert [e["rows"] for e in entries] == [8, 8, 5]  # shard 2 skips 3 bad files
    # Flip one byte of shard 1's embeddings and truncate shard 2's items.
    npy = os.path.join(output, "shards", "shard-00001.npy")
    data = bytearray(open(npy, "rb").read())
    data[-1] ^= 0x01
    open(npy, "wb").write(bytes(data))
    record = os.path.join(output, "shards", "shard-00002.json")
    open(record, "w").write(open(record).read()[:20])

    computed = []
    index = index_build.build_image_index(
        setup["export_dir"],
        setup["list_file"],
        output,
        on_shard=lambda shard, done: computed.append(shard),
        **kwargs,
    )
    assert computed == [1, 2, 3, 4, 5]  # shard 0 verified and kept
    np.testing.assert_array_equal(index.embeddings, setup["index"].embeddings)
    assert index.items == setup["index"].items
    assert index.manifest["skipped"] == setup["index"].manifest["skipped"]


def test_list_images_globs_and_odd_folder_names(tmp_path):
    odd = tmp_path / "photos [2019]"
    (odd / "a").mkdir(parents=True)
    (odd / ".git").mkdir()
    for name in ("x.jpg", "a/y.png", "a/z.txt", ".DS_Store", ".git/HEAD"):
        (odd / name).write_bytes(b"")
    # Every file but hidden ones: the build decides by content what is an image.
    expected = [str(odd / "a" / "y.png"), str(odd / "a" / "z.txt"), str(odd / "x.jpg")]
    assert index_inputs.list_images(str(odd)) == expected  # a folder, not a glob
    assert index_inputs.list_images(str(tmp_path / "photos ?2019?" / "*.jpg")) == [
        str(odd / "x.jpg")
    ]
    captions = tmp_path / "captions.txt"
    captions.write_bytes("one\r\ntwo\rthree with a \u2028 separator\n\n".encode())
    assert index_inputs.read_captions(str(captions)) == [
        "one",
        "two",
        "three with a \u2028 separator",
    ]


def test_caption_index_and_image_search(setup, tmp_path):
    output = str(tmp_path / "captions")
    encoder = setup["encoder"]
    index = index_build.build_caption_index(
        None,
        setup["captions_file"],
        output,
        encoder=encoder,
        batch_size=64,
        shard_size=128,
        verbose=0,
    )
    captions = [r["caption"] for r in setup["rows"]]
    assert index.items == captions and index.kind == "caption"
    np.testing.assert_allclose(
        index.embeddings.astype(np.float32),
        encoder.encode_text(captions),
        atol=2e-3,
    )
    image = setup["good"][0]
    results = index_lib.search_image(index, encoder, image, k=5)
    scores = [r.score for r in results]
    assert scores == sorted(scores, reverse=True) and len(results) == 5
    query = encoder.encode_images([open(image, "rb").read()])[0]
    database = index.embeddings.astype(np.float32)
    best = np.sort(database @ query)[::-1][:5]
    np.testing.assert_allclose(scores, best, atol=1e-5)
    with pytest.raises(errors.InputError, match=r"corrupt.png: truncated at byte 29"):
        index_lib.search_image(index, encoder, str(setup["root"] / "corrupt.png"))

    # Another build into the same folder is refused unless overwriting.
    with pytest.raises(FileExistsError):
        index_build.build_caption_index(
            None, captions[:5], output, encoder=encoder, verbose=0
        )
    small = index_build.build_caption_index(
        None, captions[:5], output, encoder=encoder, verbose=0, overwrite=True
    )
    assert index_lib.load_index(output).items == small.items == captions[:5]


def test_index_built_through_a_server_matches_the_local_one(setup, tmp_path):
    with fake_rest_server(setup["export_dir"]) as (url, _):
        index = index_build.build_image_index(
            None,
            setup["list_file"],
            str(tmp_path / "served"),
            dtype="float32",
            batch_size=4,
            shard_size=8,
            server=url,
            verbose=0,
        )
    assert index.items == setup["index"].items
    np.testing.assert_allclose(index.embeddings, setup["index"].embeddings, atol=1e-5)
    assert index.manifest["num_skipped"] == 3
    assert index.manifest["model"]["server"] == f"{url}/v1/models/vse"


def test_query_of_the_wrong_dimension_is_refused(setup):
    with pytest.raises(ValueError, match="index dimension"):
        setup["index"].search(np.zeros([1, setup["index"].dim + 1], np.float32))


def _tool(module, *args):
    return testing_utils.run_python("-m", f"trainers.{module}", *args, timeout=300)


@pytest.mark.slow(reason="runs vse-index and vse-search as subprocesses")
def test_command_line_tools(setup, tmp_path):
    output = tmp_path / "cli"
    result = _tool(
        "vse_index",
        f"--model={setup['export_dir']}",
        f"--images={setup['list_file']}",
        f"--output={output}",
        "--batch_size=8",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Indexed 40 images" in result.stdout and "3 skipped" in result.stdout
    page = tmp_path / "pages" / "results.html"
    result = _tool(
        "vse_search",
        f"--index={output}",
        "a red square",
        "--k",
        "3",
        f"--html={page}",
        "--noembed_images",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line.split("\t") for line in result.stdout.splitlines() if "\t" in line]
    assert [int(rank) for rank, _, _ in lines] == [1, 2, 3]
    scores = [float(score) for _, score, _ in lines]
    assert scores == sorted(scores, reverse=True)
    assert all(item in setup["good"] for _, _, item in lines)
    html = page.read_text()
    assert "a red square" in html and 'src="../../' in html
    with open(os.path.join(output, "manifest.json")) as f:
        assert json.load(f)["dtype"] == "float16"
