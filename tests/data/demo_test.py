"""Tests for vse_tf.data.demo (no VGG16: generation and file format only)."""

from __future__ import annotations

import collections
import csv
import json
import os

import numpy as np
import pytest

from vse_tf.data import demo
from vse_tf.text import split_words

SMALL = {"num_train": 12, "num_dev": 4, "num_test": 6, "image_size": 32, "seed": 3}


@pytest.fixture(scope="module")
def small_set(tmp_path_factory) -> str:
    return demo.generate_demo_dataset(str(tmp_path_factory.mktemp("demo")), **SMALL)


def _read_rows(root: str) -> list[dict[str, str]]:
    with open(os.path.join(root, "captions.csv"), encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def _tree_bytes(root: str) -> dict[str, bytes]:
    result = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                result[os.path.relpath(path, root)] = f.read()
    return result


def test_layout_and_csv(small_set):
    rows = _read_rows(small_set)
    assert list(rows[0]) == ["image", "caption", "split"]
    per_image = collections.Counter(row["image"] for row in rows)
    expected = SMALL["num_train"] + SMALL["num_dev"] + SMALL["num_test"]
    assert len(per_image) == expected
    assert set(per_image.values()) == {demo.CAPTIONS_PER_IMAGE}
    for name in ("README.txt", "manifest.json", "attributes.csv"):
        assert os.path.isfile(os.path.join(small_set, name))
    for image in per_image:
        assert os.path.isfile(os.path.join(small_set, "images", image))


def test_splits_present_and_disjoint(small_set):
    rows = _read_rows(small_set)
    images_by_split = collections.defaultdict(set)
    for row in rows:
        images_by_split[row["split"]].add(row["image"])
    assert set(images_by_split) == set(demo.SPLITS)
    for split in demo.SPLITS:
        assert len(images_by_split[split]) == SMALL[f"num_{split}"]
    train, dev, test = (images_by_split[s] for s in demo.SPLITS)
    assert not (train & dev or train & test or dev & test)


def test_image_sizes(small_set):
    import tensorflow as tf

    folder = os.path.join(small_set, "images")
    for name in sorted(os.listdir(folder))[:5]:
        with open(os.path.join(folder, name), "rb") as f:
            image = tf.io.decode_png(f.read()).numpy()
        size = SMALL["image_size"]
        assert image.shape == (size, size, 3)
        assert image.dtype == np.uint8
        assert image.std() > 0


def test_deterministic(small_set, tmp_path):
    again = demo.generate_demo_dataset(str(tmp_path / "again"), **SMALL)
    assert _tree_bytes(again) == _tree_bytes(small_set)


def test_seed_changes_output(tmp_path):
    a = demo.demo_records(5, 2, 2, seed=0)
    b = demo.demo_records(5, 2, 2, seed=1)
    assert [r.captions for r in a] != [r.captions for r in b]


def test_idempotent(tmp_path):
    root = str(tmp_path / "idem")
    demo.generate_demo_dataset(root, **SMALL)
    manifest = os.path.join(root, "manifest.json")
    stamp = os.stat(manifest).st_mtime_ns
    marker = os.path.join(root, "images", "train_00000.png")
    os.utime(marker, ns=(1, 1))
    assert demo.generate_demo_dataset(root, **SMALL) == root
    assert os.stat(manifest).st_mtime_ns == stamp
    assert os.stat(marker).st_mtime_ns == 1  # not rewritten
    with open(manifest, encoding="utf-8") as f:
        assert json.load(f)["params"]["num_train"] == SMALL["num_train"]


def test_regenerates_on_new_parameters(tmp_path):
    root = str(tmp_path / "regen")
    demo.generate_demo_dataset(root, **SMALL)
    smaller = dict(SMALL, num_train=5)
    demo.generate_demo_dataset(root, **smaller)
    images = {row["image"] for row in _read_rows(root)}
    assert len(images) == 5 + SMALL["num_dev"] + SMALL["num_test"]
    assert sorted(os.listdir(os.path.join(root, "images"))) == sorted(images)
    assert demo.is_complete(root, demo._params(**smaller))


def test_incomplete_set_is_redone(tmp_path):
    root = str(tmp_path / "partial")
    demo.generate_demo_dataset(root, **SMALL)
    os.remove(os.path.join(root, "manifest.json"))
    os.remove(os.path.join(root, "captions.csv"))
    demo.generate_demo_dataset(root, **SMALL)
    assert len(_read_rows(root)) == demo.CAPTIONS_PER_IMAGE * 22


def test_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="image_size"):
        demo.generate_demo_dataset(str(tmp_path), image_size=16)
    with pytest.raises(ValueError, match="at least one"):
        demo.generate_demo_dataset(str(tmp_path), num_test=0)


def test_attributes_file_matches_records(small_set):
    attrs = demo.read_demo_attributes(small_set)
    records = demo.demo_records(
        SMALL["num_train"], SMALL["num_dev"], SMALL["num_test"], SMALL["seed"]
    )
    assert attrs == {r.image: r.attributes for r in records}


def test_default_dev_and_test_combinations_unique():
    assert len(demo.attribute_space()) >= DEFAULT_TEST_AND_DEV
    records = demo.demo_records()
    for split in ("dev", "test"):
        keys = [r.attributes.key() for r in records if r.split == split]
        assert len(keys) == demo.DEMO_DEFAULTS[f"num_{split}"]
        assert len(set(keys)) == len(keys)


DEFAULT_TEST_AND_DEV = max(
    demo.DEMO_DEFAULTS["num_dev"], demo.DEMO_DEFAULTS["num_test"]
)


def _mentions(caption: str) -> dict[str, str]:
    """Which attribute value each attribute's words in ``caption`` point to."""
    words = set(split_words(caption))
    text = " ".join(split_words(caption))
    found = {}
    vocab = {
        "size": demo.SIZES,
        "fill": demo.FILLS,
        "shape": {k: [w for pair in v for w in pair] for k, v in demo.SHAPES.items()},
    }
    for name, table in vocab.items():
        hits = {value for value, syn in table.items() if words & set(syn)}
        assert len(hits) == 1, (caption, name, hits)
        found[name] = hits.pop()
    backgrounds = {
        value
        for value, phrases in demo.BACKGROUNDS.items()
        if any(" ".join(split_words(p)) in text for p in phrases)
    }
    assert len(backgrounds) == 1, (caption, backgrounds)
    found["background"] = backgrounds.pop()
    return found


def test_captions_name_every_attribute():
    for record in demo.demo_records(100, 10, 10, seed=5):
        a = record.attributes
        assert len(record.captions) == demo.CAPTIONS_PER_IMAGE
        assert len(set(record.captions)) == demo.CAPTIONS_PER_IMAGE
        for caption in record.captions:
            assert _mentions(caption) == {
                "size": a.size,
                "fill": a.fill,
                "shape": a.shape,
                "background": a.background,
            }
            numbers = set(split_words(caption)) & {"two", "pair", "three"}
            expected = {1: set(), 2: {"two", "pair"}, 3: {"three"}}[a.count]
            assert numbers <= expected and bool(numbers) == bool(expected), caption


def test_captions_vary_and_words_are_frequent():
    records = demo.demo_records()
    train = [c for r in records if r.split == "train" for c in r.captions]
    assert len(set(train)) > 0.9 * len(train)
    counts = collections.Counter(w for c in train for w in split_words(c))
    rare = {w: n for w, n in counts.items() if n < 20}
    assert not rare
    all_words = {w for r in records for c in r.captions for w in split_words(c)}
    assert all_words <= set(counts)  # dev/test use no unseen word
    assert all(w.isalpha() for w in all_words)


def test_render_image_shapes_and_hollow_has_less_ink():
    rng_a, rng_b = np.random.default_rng(0), np.random.default_rng(0)
    base = dict(count=1, size="large", shape="square", background="plain")
    solid = demo.render_image(
        demo.DemoAttributes(fill="solid", colour="red", **base), 64, rng_a
    )
    hollow = demo.render_image(
        demo.DemoAttributes(fill="hollow", colour="red", **base), 64, rng_b
    )
    assert solid.shape == hollow.shape == (64, 64, 3)
    red = lambda im: np.sum((im[..., 0] > 150) & (im[..., 1] < 100))  # noqa: E731
    assert red(solid) > 2 * red(hollow) > 0
