"""Image decoding and the on-disk feature cache."""

import os

import numpy as np
import pytest
import tensorflow as tf

from tests import testing_utils
from vse_tf import features


@pytest.fixture(scope="module")
def image_paths(tmp_path_factory):
    root = testing_utils.write_tiny_captioned_images(
        str(tmp_path_factory.mktemp("imgs")), {"train": 6}, size=40
    )
    folder = os.path.join(root, "images")
    return [os.path.join(folder, name) for name in sorted(os.listdir(folder))]


def test_load_image_resizes_and_keeps_range(image_paths, tmp_path):
    image = features.load_image(tf.constant(image_paths[0]), 32).numpy()
    assert image.shape == (32, 32, 3) and image.dtype == np.float32
    assert image.min() >= 0 and image.max() <= 255 and image.max() > 100
    # A JPEG works as well as a PNG, and a grey image becomes 3 channels.
    grey = np.full([20, 30, 1], 128, np.uint8)
    path = str(tmp_path / "grey.jpg")
    tf.io.write_file(path, tf.io.encode_jpeg(grey))
    image = features.load_image(tf.constant(path), 32).numpy()
    assert image.shape == (32, 32, 3)
    np.testing.assert_allclose(image, 128, atol=2)


def test_extract_features_caches_by_key(image_paths, tmp_path, monkeypatch):
    cache = str(tmp_path / "cache")
    kwargs = dict(
        image_feature="pool5", image_size=32, vgg_weights="none", dtype="float32"
    )
    first = features.extract_features(image_paths, cache_dir=cache, verbose=0, **kwargs)
    assert first.shape == (len(image_paths), 512) and first.dtype == np.float32

    # A second call reads the cache and never builds VGG16.
    def fail(*args, **kwargs):
        raise AssertionError("VGG16 was rebuilt although the features are cached")

    monkeypatch.setattr(features.backbone_lib, "build_vgg16_backbone", fail)
    again = features.extract_features(image_paths, cache_dir=cache, verbose=0, **kwargs)
    np.testing.assert_array_equal(first, again)

    # Another image size is another key: it must compute (and so fail here).
    with pytest.raises(AssertionError, match="rebuilt"):
        features.extract_features(
            image_paths,
            cache_dir=cache,
            verbose=0,
            **dict(kwargs, image_size=48),
        )
    # So is another image list.
    with pytest.raises(AssertionError, match="rebuilt"):
        features.extract_features(image_paths[:3], cache_dir=cache, verbose=0, **kwargs)


def test_batching_does_not_change_features(image_paths, tmp_path):
    kwargs = dict(
        image_feature="pool5", image_size=32, vgg_weights="none", dtype="float32"
    )
    a = features.extract_features(
        image_paths, batch_size=2, cache_dir=str(tmp_path / "a"), verbose=0, **kwargs
    )
    b = features.extract_features(
        image_paths, batch_size=5, cache_dir=str(tmp_path / "b"), verbose=0, **kwargs
    )
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_bf16_extraction_agrees_with_float32(image_paths, tmp_path):
    kwargs = dict(image_feature="pool5", image_size=32, vgg_weights="none")
    f32 = features.extract_features(
        image_paths, dtype="float32", cache_dir=str(tmp_path / "a"), verbose=0, **kwargs
    )
    bf16 = features.extract_features(
        image_paths,
        dtype="mixed_bfloat16",
        cache_dir=str(tmp_path / "b"),
        verbose=0,
        **kwargs,
    )
    cosine = (f32 * bf16).sum(1) / (
        np.linalg.norm(f32, axis=1) * np.linalg.norm(bf16, axis=1)
    )
    assert cosine.min() >= features.BF16_MIN_COSINE


def test_bad_dtype_is_rejected(image_paths):
    with pytest.raises(ValueError, match="dtype"):
        features.extract_features(image_paths, "pool5", 32, "none", dtype="float16")
