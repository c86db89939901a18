"""The Python API (`vse_tf.Embedder`) on a tiny trained workdir and its export."""

import os
import pathlib

import numpy as np
import pytest
import tensorflow as tf

import vse_tf
from vse_tf import config as config_lib
from vse_tf import errors, evaluation
from vse_tf import images as images_lib
from vse_tf import workdir as workdir_lib
from vse_tf.retrieval import index_build


@pytest.fixture(scope="module")
def trained(tiny_export):
    workdir, export_dir, data_dir = tiny_export[:3]
    folder = os.path.join(data_dir, "images")
    images = [os.path.join(folder, n) for n in sorted(os.listdir(folder))]
    return workdir, export_dir, data_dir, images


def test_lazy_top_level_surface():
    assert vse_tf.Embedder is vse_tf.api.Embedder
    assert vse_tf.get_config("tiny").model.embed_dim == 16
    with pytest.raises(AttributeError):
        vse_tf.nope  # noqa: B018


def test_workdir_embedder_matches_the_keras_towers(trained):
    workdir, _, _, images = trained
    embedder = vse_tf.Embedder.load(workdir)
    _, model = workdir_lib.load_trained_model(workdir)
    got = embedder.encode_images(images[:3])
    pixels = tf.stack([images_lib.load_image(tf.constant(p), 32) for p in images[:3]])
    np.testing.assert_allclose(got, model.image_tower(pixels).numpy(), atol=1e-5)
    texts = embedder.encode_texts(["a red square", "a blue stripe"])
    np.testing.assert_allclose(
        texts, model.text_tower(tf.constant(["a red square", "a blue stripe"])).numpy()
    )
    assert got.shape == (3, 16) and texts.shape == (2, 16)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_paths_bytes_and_arrays_give_the_same_embedding(trained):
    workdir, export_dir, _, images = trained
    with open(images[0], "rb") as f:
        data = f.read()
    pixels = tf.io.decode_png(data).numpy()
    for embedder in (vse_tf.Embedder.load(workdir), vse_tf.Embedder.load(export_dir)):
        rows = embedder.encode_images(
            [images[0], pathlib.Path(images[0]), data, pixels, pixels[None][0]]
        )
        np.testing.assert_allclose(rows, np.repeat(rows[:1], 5, axis=0), atol=1e-5)
        batch = embedder.encode_images(np.stack([pixels, pixels]))
        np.testing.assert_allclose(batch, rows[:2], atol=1e-5)


def test_export_and_workdir_embed_alike(trained):
    workdir, export_dir, _, images = trained
    local = vse_tf.Embedder.load(workdir)
    exported = vse_tf.Embedder.load(os.path.dirname(export_dir))  # newest version
    assert exported.source == export_dir
    np.testing.assert_allclose(
        exported.encode_images(images[:4]), local.encode_images(images[:4]), atol=1e-4
    )
    sentences = ["a green square", "", "the stripe is yellow"]
    np.testing.assert_allclose(
        exported.encode_texts(sentences), local.encode_texts(sentences), atol=1e-5
    )


def test_search_finds_the_indexed_image_for_its_own_embedding(trained, tmp_path):
    workdir, export_dir, _, images = trained
    index = index_build.build_image_index(export_dir, images, str(tmp_path / "idx"))
    embedder = vse_tf.Embedder.load(export_dir)
    # An image query against a caption-free index: the image itself is first.
    results = embedder.search(pathlib.Path(images[5]), index, k=3)
    assert results[0].item == index.items[5] and len(results) == 3
    by_text = embedder.search("a red square", str(tmp_path / "idx"), k=4)
    assert len(by_text) == 4
    expected = index.search(embedder.encode_texts(["a red square"]), 4)[1][0]
    assert [r.item for r in by_text] == [index.items[i] for i in expected]


def test_evaluate_a_workdir_and_its_export_give_the_same_numbers(trained):
    workdir, export_dir, data_dir, _ = trained
    local = vse_tf.Embedder.load(workdir).evaluate("dev")
    exported = vse_tf.Embedder.load(export_dir).evaluate(
        "dev", dataset="csv", data_dir=data_dir, preset="tiny"
    )
    assert set(local) >= {"i2t_r1", "t2i_r10", "rsum"}
    for key in ("i2t_r1", "i2t_r5", "t2i_r1", "t2i_r5", "rsum"):
        assert exported[key] == pytest.approx(local[key], abs=1e-6), key


def test_evaluate_max_images(trained):
    workdir, export_dir, data_dir, _ = trained
    config = config_lib.override(
        config_lib.get_config("tiny"), dataset="csv", data_dir=data_dir
    )
    config = config_lib.override(config, max_eval_images=4)
    values = evaluation.evaluate_embedder(
        vse_tf.Embedder.load(export_dir), config, "dev", verbose=False
    )
    # 4 images: every caption's image is among the top 5 of 4 (8 would not be).
    assert values["t2i_r5"] == 100.0
    assert values["t2i_medr"] <= 4


def test_user_mistakes(trained, tmp_path):
    workdir, _, _, _ = trained
    with pytest.raises(errors.MissingError, match="neither a training workdir"):
        vse_tf.Embedder.load(str(tmp_path))
    embedder = vse_tf.Embedder.load(workdir)
    with pytest.raises(errors.MissingError, match="nope.jpg not found"):
        embedder.encode_images([str(tmp_path / "nope.jpg")])
    with pytest.raises(TypeError, match="list of sentences"):
        embedder.encode_texts("a red square")
    with pytest.raises(ValueError, match=r"\[H, W, 3\]"):
        embedder.encode_images([np.zeros([4, 4, 5])])
    truncated = tmp_path / "cut.jpg"
    jpeg = tf.io.encode_jpeg(tf.zeros([8, 8, 3], tf.uint8)).numpy()
    truncated.write_bytes(jpeg[:50])
    with pytest.raises(errors.InputError, match=r"cut.jpg: truncated at byte 50 \("):
        embedder.encode_images([str(truncated)])
    with pytest.raises(errors.InputError, match="image bytes: empty"):
        embedder.encode_images([b""])


@pytest.mark.parametrize("source", ["workdir", "export"])
def test_empty_inputs_give_zero_rows_of_the_embedding_size(trained, source):
    workdir, export_dir, _, _ = trained
    embedder = vse_tf.Embedder.load(workdir if source == "workdir" else export_dir)
    assert embedder.dim == 16  # the tiny preset's embed_dim
    assert embedder.encode_images([]).shape == (0, 16)
    assert embedder.encode_texts([]).shape == (0, 16)


def test_an_index_in_memory_searches_like_a_built_one(trained):
    workdir, _, _, images = trained
    embedder = vse_tf.Embedder.load(workdir)
    embeddings = embedder.encode_images(images[:4])
    index = vse_tf.Index.from_embeddings(embeddings, images[:4])
    assert index.kind == "image" and len(index) == 4 and index.dim == 16
    hits = embedder.search(pathlib.Path(images[2]), index, k=1)
    assert hits[0].item == images[2]
    with pytest.raises(ValueError, match="N = 3 items"):
        vse_tf.Index.from_embeddings(embeddings, images[:3])
