"""The search service without the web framework: answers, refusals, reloads."""

from __future__ import annotations

import json
import os
import shutil
import struct
import zlib

import numpy as np
import pytest
import tensorflow as tf

from vse_tf import errors
from vse_tf.retrieval import index_add, index_build, index_lib
from vse_tf.web import service


@pytest.fixture(scope="module")
def search(served):
    return service.SearchService(
        served["encoder"], served["index"], served["captions"], reload_interval_s=0
    )


def _photo(served, row=0) -> bytes:
    with open(served["items"][row], "rb") as f:
        return f.read()


def test_text_search_ranks_by_dot_product(served, search):
    answer = search.search_text("a red square", k=5, embedding=True)
    index = index_lib.load_index(served["index"])
    query = served["encoder"].encode_text(["a red square"])[0]
    scores = np.asarray(index.embeddings, np.float32) @ query
    expected = np.argsort(-scores, kind="stable")[:5]
    results = answer["results"]
    assert [r["rank"] for r in results] == [1, 2, 3, 4, 5]
    assert sorted(r["id"] for r in results) == sorted(expected.tolist())
    for r in results:
        assert r["score"] == pytest.approx(scores[r["id"]], abs=2e-3)
        assert r["item"] == index.items[r["id"]]
        assert r["name"] == os.path.basename(r["item"])
        assert r["thumbnail"] == f"/thumbnail/{r['id']}"
    assert [r["score"] for r in results] == sorted(
        (r["score"] for r in results), reverse=True
    )
    np.testing.assert_allclose(answer["embedding"], query, atol=1e-5)
    assert answer["query"] == {"text": "a red square"}
    assert answer["count"] == len(index) and "captions" not in answer


def test_an_uploaded_photo_finds_itself_and_its_captions(served, search):
    answer = search.search_upload(_photo(served, 3), k=3)
    first = answer["results"][0]
    # The photo itself (or an identical copy) is first, at cosine 1.
    assert first["score"] == pytest.approx(1.0, abs=2e-3)
    with open(first["item"], "rb") as f:
        assert f.read() == _photo(served, 3)
    assert len(answer["captions"]) == 3
    assert all(c["item"] in served["caption_texts"] for c in answer["captions"])
    height, width = tf.io.decode_png(_photo(served, 3)).shape[:2]
    assert answer["query"]["upload"]["width"] == width
    assert answer["query"]["upload"]["height"] == height


def test_search_by_a_result_id(served, search):
    answer = search.search_indexed(5, k=2)
    assert answer["results"][0]["score"] == pytest.approx(1.0, abs=2e-3)
    assert answer["query"]["id"] == 5 and answer["query"]["item"] == served["items"][5]
    with pytest.raises(service.NotFound, match="has no item 999"):
        search.search_indexed(999)
    with pytest.raises(errors.InputError, match="no result id"):
        search.search_indexed("abc")


@pytest.mark.parametrize(
    "text, k, message",
    [
        ("   ", 5, "the query is empty"),
        ("x" * 1001, 5, "1001 characters; the limit is 1000"),
        ("a dog", 0, "k must be between 1 and 100, got 0"),
        ("a dog", 101, "k must be between 1 and 100, got 101"),
        ("a dog", "ten", "k must be a whole number"),
    ],
)
def test_bad_queries_are_one_sentence(search, text, k, message):
    with pytest.raises(errors.InputError, match=message):
        search.search_text(text, k)


def _png_claiming(width: int, height: int) -> bytes:
    """A whole PNG (1x1 pixels) whose header states ``width`` x ``height``."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        return struct.pack(">I", len(data)) + kind + data + crc

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00\x00\x00\x00")
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", pixels)
        + chunk(b"IEND", b"")
    )


def test_bad_uploads_are_refused_before_decoding(served, search):
    photo = _photo(served)
    cases = [
        (b"", r"empty \(0 bytes\)"),
        (b"hello, not an image", "not a JPEG, PNG, GIF or BMP"),
        (photo[: len(photo) // 2], "truncated at byte"),
        (_png_claiming(7072, 7072), r"7072x7072 \(50.0 megapixels\); the limit is 40"),
        (b"\x00" * (16 * 2**20 + 1), "the upload is 16.0 MiB; the limit is 16 MiB"),
    ]
    for data, message in cases:
        with pytest.raises(errors.InputError, match=message):
            search.search_upload(data)


def test_data_that_does_not_decode_is_an_input_error(search):
    # A whole PNG by its header and trailer whose pixel data is wrong.
    with pytest.raises(errors.InputError, match="does not decode"):
        search.search_upload(_png_claiming(4, 4))


def test_thumbnails_only_of_indexed_files_inside_their_folder(served, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(served["items"][0], folder / "inside.png")
    outside = tmp_path / "secret"
    outside.mkdir()
    shutil.copy(served["items"][1], outside / "private.png")
    os.symlink(outside / "private.png", folder / "link-out.png")
    os.symlink(folder / "inside.png", folder / "link-in.png")
    index = index_build.build_image_index(
        None, str(folder), str(tmp_path / "idx"), encoder=served["encoder"], verbose=0
    )
    names = [os.path.basename(item) for item in index.items]
    assert names == ["inside.png", "link-in.png", "link-out.png"]
    search = service.SearchService(served["encoder"], str(tmp_path / "idx"))
    jpeg = search.thumbnail(0)
    assert jpeg.startswith(b"\xff\xd8\xff")
    assert max(tf.io.decode_jpeg(jpeg).shape[:2]) <= 256
    assert search.thumbnail(1).startswith(b"\xff\xd8\xff")  # a link inside
    for row in (2, 3, -1, "../etc/passwd", "/etc/passwd"):
        with pytest.raises(service.NotFound):
            search.thumbnail(row)
    # One file (the link inside resolves to it), one thumbnail made; asked
    # again, it comes from the cache.
    assert search.thumbnails.made == 1
    search.thumbnail(0)
    assert search.thumbnails.made == 1


def test_served_path_refuses_what_is_not_a_local_file_below_its_folder(tmp_path):
    (tmp_path / "a.png").write_bytes(b"x")
    manifest = {"source": str(tmp_path)}
    assert service.served_path(manifest, str(tmp_path / "a.png")) == str(
        (tmp_path / "a.png").resolve()
    )
    assert service.served_path(manifest, "a.png") is None
    assert service.served_path(manifest, "gs://bucket/a.png") is None
    assert service.served_path(manifest, str(tmp_path / "missing.png")) is None
    assert service.served_path(manifest, str(tmp_path / ".." / "a.png")) is None


def test_a_grown_index_is_served_without_a_restart(served, tmp_path):
    folder = tmp_path / "idx"
    shutil.copytree(served["index"], folder)
    search = service.SearchService(served["encoder"], str(folder), reload_interval_s=0)
    before = search.search_text("a blue circle", k=100)["count"]
    new = tmp_path / "new"
    new.mkdir()
    pixels = np.zeros([40, 40, 3], np.uint8)
    pixels[:, :20] = [250, 10, 10]
    (new / "half-red.png").write_bytes(tf.io.encode_png(pixels).numpy())
    index_add.add_to_index(str(folder), str(new), encoder=served["encoder"], verbose=0)
    answer = search.search_text("a blue circle", k=100)
    assert answer["count"] == before + 1
    assert search.images.loads == 2
    assert str(new / "half-red.png") in [r["item"] for r in answer["results"]]
    # A damaged manifest does not stop the service: the last index serves on.
    grown = (folder / "manifest.json").read_text()
    (folder / "manifest.json").write_text("{ not json")
    assert search.search_text("a blue circle", k=1)["count"] == before + 1
    assert search.images.loads == 2
    (folder / "manifest.json").write_text(grown)
    search.search_text("a dog", k=1)
    assert search.images.loads == 3
    # reload() (SIGHUP) loads again even when nothing changed on disk.
    search.search_text("a dog", k=1)
    assert search.images.loads == 3
    search.reload()
    search.search_text("a dog", k=1)
    assert search.images.loads == 4


def test_an_index_of_another_model_is_refused(served, tmp_path):
    folder = tmp_path / "idx"
    shutil.copytree(served["index"], folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["fingerprint"]["text"] = [-x for x in manifest["fingerprint"]["text"]]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(errors.UserError, match="built with another model"):
        service.SearchService(served["encoder"], str(folder))


def test_captions_must_be_a_caption_index(served):
    with pytest.raises(errors.UserError, match="takes a caption index"):
        service.SearchService(served["encoder"], served["index"], served["index"])
