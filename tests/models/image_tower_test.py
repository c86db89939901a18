"""Tests for vse_tf.models.image_tower."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from vse_tf.models.image_tower import ImageTower, L2Normalize

SIZE = 32
DIM = 8


def _pixels(batch: int = 3, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 255, size=(batch, SIZE, SIZE, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def tower():
    keras.utils.set_random_seed(0)
    return ImageTower(embed_dim=DIM, image_size=SIZE, vgg_weights="none")


class TestL2Normalize:
    def test_unit_rows_and_zero_row(self):
        x = np.array([[3.0, 4.0], [0.0, 0.0], [-1e-3, 0.0]], np.float32)
        out = np.asarray(L2Normalize()(x))
        np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0], [-1.0, 0.0]])
        assert out.dtype == np.float32

    def test_config(self):
        layer = L2Normalize(epsilon=1e-6, name="n")
        clone = L2Normalize.from_config(layer.get_config())
        assert clone.epsilon == 1e-6
        assert clone.name == "n"


class TestImageTower:
    def test_output_unit_norm(self, tower):
        out = tower(_pixels())
        assert tuple(out.shape) == (3, DIM)
        assert out.dtype == "float32"
        np.testing.assert_allclose(np.linalg.norm(np.asarray(out), axis=1), 1.0, 1e-5)

    def test_call_equals_embed_features_of_backbone(self, tower):
        pixels = _pixels(seed=1)
        features = tower.backbone(pixels)
        assert tuple(features.shape) == (3, tower.feature_dim) == (3, 512)
        np.testing.assert_allclose(
            np.asarray(tower(pixels)),
            np.asarray(tower.embed_features(features)),
            rtol=1e-5,
            atol=1e-6,
        )

    def test_embed_features_by_hand(self, tower):
        rng = np.random.default_rng(2)
        features = rng.uniform(0, 3, size=(4, 512)).astype(np.float32)
        kernel, bias = (np.asarray(w) for w in tower.w_emb.weights)
        normed = features / np.linalg.norm(features, axis=1, keepdims=True)
        proj = normed @ kernel + bias
        want = proj / np.linalg.norm(proj, axis=1, keepdims=True)
        np.testing.assert_allclose(
            np.asarray(tower.embed_features(features)), want, rtol=1e-5, atol=1e-6
        )
        # l2 feature norm: the scale of the features does not matter.
        np.testing.assert_allclose(
            np.asarray(tower.embed_features(features * 7.0)), want, atol=1e-5
        )

    def test_feature_norm_none(self):
        keras.utils.set_random_seed(0)
        head = ImageTower(embed_dim=DIM, include_backbone=False, feature_norm="none")
        rng = np.random.default_rng(3)
        features = rng.uniform(0, 3, size=(2, 512)).astype(np.float32)
        kernel, bias = (np.asarray(w) for w in head.w_emb.weights)
        proj = features @ kernel + bias
        want = proj / np.linalg.norm(proj, axis=1, keepdims=True)
        np.testing.assert_allclose(
            np.asarray(head.embed_features(features)), want, rtol=1e-5, atol=1e-6
        )

    def test_feature_norm_batchnorm(self, tmp_path):
        keras.utils.set_random_seed(0)
        head = ImageTower(
            embed_dim=DIM, include_backbone=False, feature_norm="batchnorm"
        )
        rng = np.random.default_rng(5)
        features = rng.uniform(0, 3, size=(6, 512)).astype(np.float32)
        kernel, bias = (np.asarray(w) for w in head.w_emb.weights)

        def by_hand(mean, variance):
            standard = (features - mean) / np.sqrt(variance + 1e-3)
            unit = standard / np.linalg.norm(standard, axis=1, keepdims=True)
            proj = unit @ kernel + bias
            return proj / np.linalg.norm(proj, axis=1, keepdims=True)

        # Training: the batch's own statistics (and the moving ones move).
        np.testing.assert_allclose(
            np.asarray(head.embed_features(features, training=True)),
            by_hand(features.mean(0), features.var(0)),
            rtol=1e-4,
            atol=1e-5,
        )
        moving_mean = np.asarray(head.feature_bn.moving_mean)
        np.testing.assert_allclose(moving_mean, 0.01 * features.mean(0), rtol=1e-5)
        # Inference: the moving statistics.
        np.testing.assert_allclose(
            np.asarray(head.embed_features(features)),
            by_hand(moving_mean, np.asarray(head.feature_bn.moving_variance)),
            rtol=1e-4,
            atol=1e-5,
        )
        assert len(head.trainable_weights) == 4  # gamma, beta, W_emb kernel, bias
        path = str(tmp_path / "head.keras")
        head.save(path)
        clone = keras.saving.load_model(path)
        np.testing.assert_allclose(
            np.asarray(clone.embed_features(features)),
            np.asarray(head.embed_features(features)),
            atol=1e-6,
        )

    def test_feature_norm_validation(self):
        with pytest.raises(ValueError, match="feature_norm"):
            ImageTower(embed_dim=DIM, include_backbone=False, feature_norm="l1")

    def test_without_backbone(self):
        head = ImageTower(embed_dim=DIM, image_size=SIZE, include_backbone=False)
        assert head.backbone is None
        with pytest.raises(ValueError, match="include_backbone=False"):
            head(_pixels())
        rng = np.random.default_rng(4)
        out = head.embed_features(rng.normal(size=(5, 512)).astype(np.float32))
        assert tuple(out.shape) == (5, DIM)
        np.testing.assert_allclose(np.linalg.norm(np.asarray(out), axis=1), 1.0, 1e-5)
        assert len(head.trainable_weights) == 2

    def test_frozen_backbone_only_w_emb_trainable(self, tower):
        trainable = tower.trainable_weights
        assert len(trainable) == 2
        assert {id(w) for w in trainable} == {id(w) for w in tower.w_emb.weights}
        assert tuple(trainable[0].shape) == (512, DIM)
        assert len(tower.non_trainable_weights) == 26

    def test_fine_tune_all(self):
        keras.utils.set_random_seed(0)
        tower = ImageTower(
            embed_dim=DIM, image_size=SIZE, vgg_weights="none", fine_tune_from="all"
        )
        assert len(tower.trainable_weights) == 2 + 26

    def test_config_round_trip(self, tower):
        config = tower.get_config()
        for key, value in dict(
            embed_dim=DIM,
            image_feature="pool5",
            image_size=SIZE,
            vgg_weights="none",
            feature_norm="l2",
            fine_tune_from="",
            include_backbone=True,
            backbone_dtype=None,
        ).items():
            assert config[key] == value, key
        restored = keras.saving.deserialize_keras_object(
            keras.saving.serialize_keras_object(tower)
        )
        assert isinstance(restored, ImageTower)
        assert restored.get_config() == config
        assert restored.backbone is not None
        # The backbone's fixed "none" init is rebuilt identically; copy W_emb
        # and the whole tower matches.
        restored.w_emb.set_weights(tower.w_emb.get_weights())
        pixels = _pixels(2, seed=6)
        np.testing.assert_allclose(
            np.asarray(restored(pixels)), np.asarray(tower(pixels)), atol=1e-6
        )

    def test_config_round_trip_head_only(self):
        head = ImageTower(
            embed_dim=4, include_backbone=False, feature_norm="none", name="head"
        )
        restored = ImageTower.from_config(head.get_config())
        assert restored.get_config() == head.get_config()
        assert restored.backbone is None
        assert restored.name == "head"


class TestCachedActivations:
    """Fine-tuning the cheap way: the tower's top on activations at the cut."""

    LITE_SIZE = 64

    def _lite_tower(self, fine_tune_batchnorm="frozen"):
        keras.utils.set_random_seed(0)
        return ImageTower(
            embed_dim=DIM,
            image_size=self.LITE_SIZE,
            backbone="efficientnet_lite0",
            lite_weights="none",
            image_feature="head_avg",
            fine_tune_from="stage7",
            fine_tune_batchnorm=fine_tune_batchnorm,
        )

    def _lite_pixels(self, batch=4):
        rng = np.random.default_rng(1)
        shape = (batch, self.LITE_SIZE, self.LITE_SIZE, 3)
        return rng.uniform(0, 255, size=shape).astype(np.float32)

    def test_embedding_of_activations_equals_embedding_of_pixels(self):
        from vse_tf.models import backbone as backbone_lib

        tower = self._lite_tower()
        bottom, _ = backbone_lib.split_backbone(tower.backbone, "stage7", "head_avg")
        pixels = self._lite_pixels()
        activations = bottom(pixels).numpy()
        assert tower.cut_shape == activations.shape[1:] == (2, 2, 192)
        expected = tower(pixels).numpy()
        flat = activations.reshape([len(pixels), -1])
        np.testing.assert_allclose(tower.embed_cached(activations), expected, atol=1e-5)
        np.testing.assert_allclose(tower.embed_cached(flat), expected, atol=1e-5)

    def test_frozen_batchnorm_ignores_the_batch_statistics(self):
        pixels = self._lite_pixels()
        frozen = self._lite_tower("frozen")
        np.testing.assert_allclose(
            frozen(pixels, training=True), frozen(pixels, training=False), atol=1e-6
        )
        batch = self._lite_tower("batch")
        trained_mode = batch(pixels, training=True).numpy()
        assert np.abs(trained_mode - batch(pixels, training=False).numpy()).max() > 1e-3

    def test_no_top_without_a_cut(self, tower):
        assert tower.trunk_top is None and tower.cut_shape is None
        features = np.random.default_rng(0).uniform(size=(2, 512)).astype("float32")
        np.testing.assert_allclose(
            tower.embed_cached(features), tower.embed_features(features), atol=1e-7
        )
        keras.utils.set_random_seed(0)
        whole = ImageTower(
            embed_dim=DIM, image_size=SIZE, vgg_weights="none", fine_tune_from="all"
        )
        assert whole.trunk_top is None

    def test_config_round_trip_keeps_the_batchnorm_mode(self):
        tower = self._lite_tower("batch")
        config = tower.get_config()
        assert config["fine_tune_batchnorm"] == "batch"
        assert ImageTower.from_config(config).fine_tune_batchnorm == "batch"

    def test_unknown_batchnorm_mode(self):
        with pytest.raises(ValueError, match="fine_tune_batchnorm"):
            ImageTower(embed_dim=DIM, include_backbone=False, fine_tune_batchnorm="x")


class TestFlipAverage:
    """``flip_average``: each image and its mirror image, embeddings averaged."""

    def _towers(self):
        keras.utils.set_random_seed(0)
        plain = ImageTower(embed_dim=DIM, image_size=SIZE, vgg_weights="none")
        flipping = ImageTower.from_config({**plain.get_config(), "flip_average": True})
        flipping.set_weights(plain.get_weights())
        return plain, flipping

    def test_embedding_is_the_normalised_sum_of_both_views_by_hand(self):
        plain, flipping = self._towers()
        pixels = _pixels(seed=3)
        one = plain(pixels).numpy()
        mirror = plain(pixels[:, :, ::-1]).numpy()
        assert np.abs(one - mirror).max() > 1e-3  # the views differ
        total = one + mirror
        expected = total / np.linalg.norm(total, axis=1, keepdims=True)
        np.testing.assert_allclose(flipping(pixels), expected, atol=1e-6)
        # A mirror-symmetric image is its own mirror: one view's embedding.
        symmetric = np.concatenate(
            [pixels[:, :, :16], pixels[:, :, :16][:, :, ::-1]], 2
        )
        np.testing.assert_allclose(flipping(symmetric), plain(symmetric), atol=1e-6)

    def test_training_sees_one_view(self):
        plain, flipping = self._towers()
        pixels = _pixels(seed=4)
        np.testing.assert_allclose(
            flipping(pixels, training=True), plain(pixels, training=True), atol=1e-6
        )

    def test_cached_views_equal_the_pixels_path(self):
        plain, flipping = self._towers()
        pixels = _pixels(seed=5)
        views = np.stack(
            [plain.backbone(pixels).numpy(), plain.backbone(pixels[:, :, ::-1]).numpy()]
        )
        np.testing.assert_allclose(
            flipping.embed_cached_views(views), flipping(pixels), atol=1e-5
        )

    def test_config_round_trip(self):
        _, flipping = self._towers()
        assert flipping.get_config()["flip_average"] is True
        assert ImageTower.from_config(flipping.get_config()).flip_average
