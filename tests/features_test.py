"""Image decoding and the on-disk feature cache."""

import hashlib
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from tests import testing_utils
from vse_tf import images as images_lib
from vse_tf.features import cache as feature_cache
from vse_tf.features import extraction as feature_extraction
from vse_tf.features import extractor as feature_extractor
from vse_tf.features import settings as feature_settings
from vse_tf.models import backbone as backbone_lib


@pytest.fixture(scope="module")
def image_paths(tmp_path_factory):
    root = testing_utils.write_tiny_captioned_images(
        str(tmp_path_factory.mktemp("imgs")), {"train": 6}, size=40
    )
    folder = os.path.join(root, "images")
    return [os.path.join(folder, name) for name in sorted(os.listdir(folder))]


def test_load_image_resizes_and_keeps_range(image_paths, tmp_path):
    image = images_lib.load_image(tf.constant(image_paths[0]), 32).numpy()
    assert image.shape == (32, 32, 3) and image.dtype == np.float32
    assert image.min() >= 0 and image.max() <= 255 and image.max() > 100
    # A JPEG works as well as a PNG, and a grey image becomes 3 channels.
    grey = np.full([20, 30, 1], 128, np.uint8)
    path = str(tmp_path / "grey.jpg")
    tf.io.write_file(path, tf.io.encode_jpeg(grey))
    image = images_lib.load_image(tf.constant(path), 32).numpy()
    assert image.shape == (32, 32, 3)
    np.testing.assert_allclose(image, 128, atol=2)


def test_extract_features_caches_by_key(image_paths, tmp_path, monkeypatch):
    cache = str(tmp_path / "cache")
    kwargs = dict(image_feature="pool5", image_size=32, weights="none", dtype="float32")
    first = feature_extraction.extract_features(
        image_paths, cache_dir=cache, verbose=0, **kwargs
    )
    assert first.shape == (len(image_paths), 512) and first.dtype == np.float32

    # A second call reads the cache and never builds VGG16.
    def fail(*args, **kwargs):
        raise AssertionError("VGG16 was rebuilt although the features are cached")

    monkeypatch.setattr(backbone_lib, "build_backbone", fail)
    again = feature_extraction.extract_features(
        image_paths, cache_dir=cache, verbose=0, **kwargs
    )
    np.testing.assert_array_equal(first, again)

    # Another image size is another key: it must compute (and so fail here).
    with pytest.raises(AssertionError, match="rebuilt"):
        feature_extraction.extract_features(
            image_paths,
            cache_dir=cache,
            verbose=0,
            **dict(kwargs, image_size=48),
        )
    # So is another image list.
    with pytest.raises(AssertionError, match="rebuilt"):
        feature_extraction.extract_features(
            image_paths[:3], cache_dir=cache, verbose=0, **kwargs
        )


def test_batching_does_not_change_features(image_paths, tmp_path):
    kwargs = dict(image_feature="pool5", image_size=32, weights="none", dtype="float32")
    a = feature_extraction.extract_features(
        image_paths, batch_size=2, cache_dir=str(tmp_path / "a"), verbose=0, **kwargs
    )
    b = feature_extraction.extract_features(
        image_paths, batch_size=5, cache_dir=str(tmp_path / "b"), verbose=0, **kwargs
    )
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_bf16_extraction_agrees_with_float32(image_paths, tmp_path):
    kwargs = dict(image_feature="pool5", image_size=32, weights="none")
    f32 = feature_extraction.extract_features(
        image_paths, dtype="float32", cache_dir=str(tmp_path / "a"), verbose=0, **kwargs
    )
    bf16 = feature_extraction.extract_features(
        image_paths,
        dtype="mixed_bfloat16",
        cache_dir=str(tmp_path / "b"),
        verbose=0,
        **kwargs,
    )
    cosine = (f32 * bf16).sum(1) / (
        np.linalg.norm(f32, axis=1) * np.linalg.norm(bf16, axis=1)
    )
    assert cosine.min() >= feature_extractor.BF16_MIN_COSINE


def test_bad_dtype_is_rejected(image_paths):
    with pytest.raises(ValueError, match="dtype"):
        feature_extraction.extract_features(
            image_paths, "pool5", 32, "none", dtype="float16"
        )


def _pool5_kwargs(**changes):
    return dict(
        dict(image_feature="pool5", image_size=32, weights="none", dtype="float32"),
        **changes,
    )


def test_shards_add_up_to_one_extraction(image_paths, tmp_path):
    whole = feature_extraction.extract_features_with_report(
        image_paths, cache_dir=str(tmp_path / "a"), verbose=0, **_pool5_kwargs()
    )
    calls = []
    sharded = feature_extraction.extract_features_with_report(
        image_paths,
        cache_dir=str(tmp_path / "b"),
        verbose=0,
        batch_size=2,
        shard_size=2,
        on_shard=lambda shard, count: calls.append((shard, count)),
        **_pool5_kwargs(),
    )
    assert calls == [(0, 3), (1, 3), (2, 3)]
    assert sharded.shards_computed == 3 and sharded.shards_reused == 0
    # batch_size=2 both times within a shard vs 32 once: float32 round-off only.
    np.testing.assert_allclose(whole.features, sharded.features, rtol=1e-5, atol=1e-5)
    assert sharded.valid.all() and sharded.skipped == []
    names = sorted(n for n in os.listdir(sharded.cache_folder) if n.endswith(".npy"))
    assert names == ["shard-00000.npy", "shard-00001.npy", "shard-00002.npy"]


def test_manifest_describes_the_features(image_paths, tmp_path):
    report = feature_extraction.extract_features_with_report(
        image_paths,
        cache_dir=str(tmp_path),
        verbose=0,
        shard_size=4,
        **_pool5_kwargs(),
    )
    with open(report.manifest_path) as f:
        manifest = json.load(f)
    assert manifest["complete"] is True
    assert manifest["backbone"] == feature_cache.BACKBONE
    assert manifest["weights"] == "none" and manifest["feature"] == "pool5"
    assert manifest["image_size"] == 32 and manifest["resize"] == feature_cache.RESIZE
    assert manifest["used_dtype"] == "float32" and manifest["feature_dim"] == 512
    assert manifest["count"] == len(image_paths) and manifest["num_skipped"] == 0
    expected_list = hashlib.sha256(
        "\n".join(os.path.abspath(p) for p in image_paths).encode()
    ).hexdigest()
    assert manifest["image_list_sha256"] == expected_list
    assert [(s["start"], s["stop"], s["rows"]) for s in manifest["shards"]] == [
        (0, 4, 4),
        (4, 6, 2),
    ]
    for shard in manifest["shards"]:
        with open(os.path.join(report.cache_folder, shard["file"]), "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == shard["sha256"]
    assert report.cache_folder == feature_cache.cache_folder(
        "pool5", 32, "none", image_paths, dtype="float32", cache_dir=str(tmp_path)
    )


def test_bf16_that_disagrees_falls_back_to_float32(image_paths, tmp_path, monkeypatch):
    f32 = feature_extraction.extract_features_with_report(
        image_paths, cache_dir=str(tmp_path / "a"), verbose=0, **_pool5_kwargs()
    )
    monkeypatch.setattr(
        feature_extractor, "BF16_MIN_COSINE", 1.5
    )  # no cosine reaches it
    fallback = feature_extraction.extract_features_with_report(
        image_paths,
        cache_dir=str(tmp_path / "b"),
        verbose=0,
        **_pool5_kwargs(dtype="mixed_bfloat16"),
    )
    assert fallback.used_dtype == "float32"
    np.testing.assert_array_equal(f32.features, fallback.features)
    with open(fallback.manifest_path) as f:
        manifest = json.load(f)
    assert manifest["dtype"] == "mixed_bfloat16"
    assert manifest["used_dtype"] == "float32"
    assert 0.99 < manifest["bf16_min_cosine"] < 1.5


def test_extract_for_config_shares_the_training_cache(image_paths, tmp_path):
    from vse_tf import config as config_lib

    config = config_lib.override(config_lib.get_config("tiny"), cache_dir=str(tmp_path))
    report = feature_settings.extract_for_config(config, image_paths, verbose=0)
    assert report.shards_computed == 1
    again = feature_extraction.extract_features(
        image_paths,
        config.model.image_feature,
        config.data.image_size,
        config.model.vgg_weights,
        batch_size=config.data.extract_batch_size,
        dtype=config.data.extract_dtype,
        cache_dir=str(tmp_path),
        verbose=0,
    )
    np.testing.assert_array_equal(report.features, again)
    assert feature_settings.extract_for_config(
        config, image_paths, verbose=0
    ).shards_reused


def test_no_images_gives_no_rows(tmp_path):
    report = feature_extraction.extract_features_with_report(
        [], cache_dir=str(tmp_path), verbose=0, **_pool5_kwargs()
    )
    assert report.features.shape == (0, 512) and report.valid.shape == (0,)
    assert report.skipped == [] and report.shards_computed == 0


def test_mirrored_features_are_their_own_cache_entry(image_paths, tmp_path):
    from vse_tf.models import backbone as backbone_lib

    cache = str(tmp_path / "cache")
    kwargs = _pool5_kwargs(image_size=64)
    plain = feature_extraction.extract_features_with_report(
        image_paths, cache_dir=cache, verbose=0, **kwargs
    )
    mirrored = feature_extraction.extract_features_with_report(
        image_paths, cache_dir=cache, verbose=0, flip=True, **kwargs
    )
    assert mirrored.cache_folder != plain.cache_folder
    assert mirrored.shards_computed == 1  # not taken from the plain entry
    # The unflipped key is what it always was.
    assert plain.cache_folder == feature_cache.cache_folder(
        "pool5", 64, "none", image_paths, dtype="float32", cache_dir=cache
    )
    assert mirrored.cache_folder == feature_cache.cache_folder(
        "pool5", 64, "none", image_paths, dtype="float32", cache_dir=cache, flip=True
    )
    with open(os.path.join(mirrored.cache_folder, feature_cache.MANIFEST_FILE)) as f:
        assert json.load(f)["flip"] == "left_right"
    # They are VGG16's features of the mirrored pixels.
    backbone = backbone_lib.build_vgg16_backbone("pool5", 64, "none")
    pixels = np.stack(
        [images_lib.load_image(tf.constant(p), 64).numpy() for p in image_paths]
    )
    np.testing.assert_allclose(
        mirrored.features, backbone(pixels[:, :, ::-1]).numpy(), rtol=1e-4, atol=1e-4
    )
    np.testing.assert_allclose(
        plain.features, backbone(pixels).numpy(), rtol=1e-4, atol=1e-4
    )
    assert np.abs(mirrored.features - plain.features).max() > 1e-3


def test_backbone_is_part_of_the_cache_key(image_paths, tmp_path):
    """Same feature settings, another CNN: another cache entry, named in it."""
    cache = str(tmp_path / "cache")
    vgg = feature_cache.cache_folder("pool5", 32, "none", image_paths, "float32", cache)
    lite = feature_cache.cache_folder(
        "head_avg",
        32,
        "none",
        image_paths,
        "float32",
        cache,
        backbone="efficientnet_lite0",
    )
    assert vgg != lite
    report = feature_extraction.extract_features_with_report(
        image_paths, "head_avg", 32, "none", dtype="float32", cache_dir=cache,
        verbose=0, backbone="efficientnet_lite0",
    )  # fmt: skip
    assert report.cache_folder == lite
    assert report.features.shape == (len(image_paths), 1280)
    with open(os.path.join(lite, feature_cache.MANIFEST_FILE)) as f:
        manifest = json.load(f)
    assert manifest["backbone"] == "efficientnet_lite0"
    assert manifest["preprocessing"].endswith("(rgb - 127) / 128")
    assert manifest["feature_dim"] == 1280


def test_activations_at_a_cut_are_their_own_float16_entry(image_paths, tmp_path):
    """The cheap fine-tuning path caches the frozen part's output once."""
    cache = str(tmp_path / "cache")
    kwargs = dict(
        image_feature="pool5",
        image_size=32,
        weights="none",
        dtype="float32",
        cache_dir=cache,
        verbose=0,
    )
    report = feature_extraction.extract_features_with_report(
        image_paths, cut="block5", **kwargs
    )
    # block5 reads block4's pooled output: 32 / 16 = 2x2, 512 channels.
    assert report.features.shape == (len(image_paths), 2 * 2 * 512)
    assert report.features.dtype == np.float16
    backbone = backbone_lib.build_backbone("vgg16", "pool5", 32, "none")
    bottom, top = backbone_lib.split_backbone(backbone, "block5", "pool5")
    pixels = np.stack(
        [images_lib.load_image(tf.constant(p), 32).numpy() for p in image_paths]
    )
    expected = bottom(pixels).numpy().reshape([len(image_paths), -1])
    np.testing.assert_allclose(report.features, expected, rtol=1e-3, atol=1e-3)
    # Through the top they give the features the plain entry holds.
    features = feature_extraction.extract_features(image_paths, **kwargs)
    from_cut = top(report.features.astype(np.float32).reshape([-1, 2, 2, 512]))
    np.testing.assert_allclose(from_cut.numpy(), features, rtol=1e-2, atol=1e-2)

    with open(os.path.join(report.cache_folder, "manifest.json")) as f:
        manifest = json.load(f)
    assert manifest["cut"] == "block5" and manifest["storage"] == "float16"
    assert manifest["float16_min_cosine"] >= 0.9999
    assert manifest["feature_dim"] == 2048
    plain = feature_cache.cache_folder(
        "pool5", 32, "none", image_paths, "float32", cache, False, "vgg16"
    )
    assert report.cache_folder != plain
    again = feature_extraction.extract_features_with_report(
        image_paths, cut="block5", **kwargs
    )
    assert again.shards_computed == 0 and again.shards_reused == 1
    np.testing.assert_array_equal(again.features, report.features)


def _random_lite0_stage7_activations(image_paths, cache_dir, image_feature):
    """The random-init Lite0's activations at stage 7 (64x64), cached there."""
    return feature_extraction.extract_features_with_report(
        image_paths,
        image_feature=image_feature,
        image_size=64,
        weights="none",
        dtype="float32",
        backbone="efficientnet_lite0",
        cache_dir=str(cache_dir),
        verbose=0,
        cut="stage7",
    )


def test_activations_at_a_cut_are_shared_by_every_pooling(image_paths, tmp_path):
    """The pooling runs after the cut: changing it reuses the activations."""
    average = _random_lite0_stage7_activations(image_paths, tmp_path, "head_avg")
    maximum = _random_lite0_stage7_activations(image_paths, tmp_path, "head_max")
    assert average.shards_computed == 1
    assert maximum.shards_computed == 0 and maximum.shards_reused == 1
    assert maximum.cache_folder == average.cache_folder
    np.testing.assert_array_equal(maximum.features, average.features)
    with open(os.path.join(average.cache_folder, "manifest.json")) as f:
        assert "feature" not in json.load(f)
    # Without a cut the entry holds pooled features: one per pooling.
    plain_average = feature_cache.cache_folder(
        "head_avg", 64, "none", image_paths, "float32", str(tmp_path),
        backbone="efficientnet_lite0",
    )  # fmt: skip
    plain_maximum = feature_cache.cache_folder(
        "head_max", 64, "none", image_paths, "float32", str(tmp_path),
        backbone="efficientnet_lite0",
    )  # fmt: skip
    assert plain_average != plain_maximum


def test_activations_float16_cannot_keep_are_stored_float32(image_paths, tmp_path):
    # The random-init EfficientNet-Lite's stage-6 output is ~1e-9, below
    # float16's smallest subnormal (6e-8): float16 would store zeros.
    report = _random_lite0_stage7_activations(image_paths, tmp_path, "head_avg")
    assert report.features.dtype == np.float32
    assert report.features.shape == (len(image_paths), 2 * 2 * 192)
    assert np.abs(report.features).max() > 0
    with open(os.path.join(report.cache_folder, "manifest.json")) as f:
        manifest = json.load(f)
    assert manifest["storage"] == "float32"
    assert manifest["float16_min_cosine"] < 0.9999
