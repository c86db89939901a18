"""Tests for vse_tf.models.vse_model."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from vse_tf import losses
from vse_tf.models import backbone as backbone_lib
from vse_tf.models.image_tower import ImageTower
from vse_tf.models.text_tower import LSTMTextTower
from vse_tf.models.vse_model import VSEModel
from vse_tf.text import Vocabulary

WORDS = ["a", "red", "blue", "green", "yellow", "square", "stripe", "the", "is"]
VOCAB = Vocabulary(WORDS).tokens
DIM = 8
MAX_LENGTH = 6
SIZE = 32
BATCH = 8


def _towers(include_backbone: bool = False):
    keras.utils.set_random_seed(0)
    image_tower = ImageTower(
        embed_dim=DIM,
        image_size=SIZE,
        vgg_weights="none",
        include_backbone=include_backbone,
    )
    text_tower = LSTMTextTower(VOCAB, embed_dim=DIM, word_dim=8, max_length=MAX_LENGTH)
    return image_tower, text_tower


def _batch(seed: int = 0, image_ids=None) -> dict:
    """Feature + token-id batch where pair i is (features_i, caption_i)."""
    rng = np.random.default_rng(seed)
    features = rng.uniform(0, 1, size=(BATCH, 512)).astype(np.float32)
    token_ids = rng.integers(2, len(VOCAB), size=(BATCH, MAX_LENGTH)).astype(np.int32)
    lengths = rng.integers(1, MAX_LENGTH + 1, size=BATCH)
    for row, length in zip(token_ids, lengths):
        row[length:] = 0
    if image_ids is None:
        image_ids = np.arange(BATCH)
    return {
        "image_features": tf.constant(features),
        "token_ids": tf.constant(token_ids),
        "image_ids": tf.constant(np.asarray(image_ids, np.int32)),
    }


class TestCall:
    def test_features_and_tokens(self):
        image_tower, text_tower = _towers()
        model = VSEModel(image_tower, text_tower)
        batch = _batch()
        out = model(batch)
        assert set(out) == {"image_embedding", "text_embedding"}
        for key in out:
            assert tuple(out[key].shape) == (BATCH, DIM)
            np.testing.assert_allclose(
                np.linalg.norm(np.asarray(out[key]), axis=1), 1.0, atol=1e-5
            )
        np.testing.assert_allclose(
            np.asarray(out["image_embedding"]),
            np.asarray(image_tower.embed_features(batch["image_features"])),
            atol=1e-6,
        )
        np.testing.assert_allclose(
            np.asarray(out["text_embedding"]),
            np.asarray(text_tower.encode_tokens(batch["token_ids"])),
            atol=1e-6,
        )

    def test_images_and_text(self):
        image_tower, text_tower = _towers(include_backbone=True)
        model = VSEModel(image_tower, text_tower)
        rng = np.random.default_rng(1)
        images = rng.uniform(0, 255, size=(2, SIZE, SIZE, 3)).astype(np.float32)
        text = tf.constant(["a red square", "The blue stripe!"])
        out = model({"images": images, "text": text})
        assert tuple(out["image_embedding"].shape) == (2, DIM)
        assert tuple(out["text_embedding"].shape) == (2, DIM)
        np.testing.assert_allclose(
            np.asarray(out["image_embedding"]), np.asarray(image_tower(images)), 1e-5
        )
        np.testing.assert_allclose(
            np.asarray(out["text_embedding"]),
            np.asarray(text_tower(text)),
            atol=1e-6,
        )

    def test_invalid_loss_mode(self):
        image_tower, text_tower = _towers()
        with pytest.raises(ValueError, match="loss_mode"):
            VSEModel(image_tower, text_tower, loss_mode="mean")


class TestLoss:
    @pytest.mark.parametrize("mode", ["sum", "max"])
    def test_matches_ranking_loss(self, mode):
        image_tower, text_tower = _towers()
        model = VSEModel(image_tower, text_tower, margin=0.3, loss_mode=mode)
        batch = _batch(image_ids=[0, 0, 1, 1, 2, 3, 4, 5])
        out = model(batch)
        want = losses.ranking_loss(
            out["image_embedding"],
            out["text_embedding"],
            margin=0.3,
            mode=mode,
            image_ids=batch["image_ids"],
        )
        got = model.compute_ranking_loss(batch)
        np.testing.assert_allclose(float(got), float(want), rtol=1e-6)

    def test_mask_same_image_changes_loss(self):
        image_tower, text_tower = _towers()
        masked = VSEModel(image_tower, text_tower, mask_same_image=True)
        unmasked = VSEModel(image_tower, text_tower, mask_same_image=False)
        repeated = _batch(image_ids=[0, 0, 0, 1, 1, 2, 3, 4])
        unique = _batch(image_ids=np.arange(BATCH))
        masked_loss = float(masked.compute_ranking_loss(repeated))
        unmasked_loss = float(unmasked.compute_ranking_loss(repeated))
        assert masked_loss != pytest.approx(unmasked_loss)
        # Masking only removes non-negative hinges.
        assert masked_loss < unmasked_loss
        out = masked(repeated)
        np.testing.assert_allclose(
            unmasked_loss,
            float(losses.ranking_loss(out["image_embedding"], out["text_embedding"])),
            rtol=1e-6,
        )
        # With distinct ids, masking makes no difference.
        np.testing.assert_allclose(
            float(masked.compute_ranking_loss(unique)),
            float(unmasked.compute_ranking_loss(unique)),
            rtol=1e-6,
        )


class TestTraining:
    def test_fit_reduces_loss(self):
        image_tower, text_tower = _towers()
        model = VSEModel(image_tower, text_tower, margin=0.2)
        batch = _batch(seed=3)
        before = float(model.compute_ranking_loss(batch))
        assert before > 0
        frozen_words = np.asarray(text_tower.word_embedding.embeddings).copy()
        dataset = tf.data.Dataset.from_tensors(batch).repeat(30)
        model.compile(optimizer=keras.optimizers.Adam(1e-2))
        history = model.fit(dataset, epochs=1, verbose=0)
        after = float(model.compute_ranking_loss(batch))
        assert np.isfinite(after)
        assert after < 0.5 * before, (before, after)
        assert history.history["loss"][0] > after
        # The default text tower keeps its word vectors frozen.
        np.testing.assert_array_equal(
            np.asarray(text_tower.word_embedding.embeddings), frozen_words
        )
        evaluated = model.evaluate(
            tf.data.Dataset.from_tensors(batch), verbose=0, return_dict=True
        )
        np.testing.assert_allclose(evaluated["loss"], after, rtol=1e-5)


class TestConfig:
    def test_round_trip(self):
        image_tower, text_tower = _towers()
        model = VSEModel(
            image_tower, text_tower, margin=0.1, loss_mode="max", mask_same_image=False
        )
        config = model.get_config()
        assert config["margin"] == 0.1
        assert config["loss_mode"] == "max"
        assert config["mask_same_image"] is False
        restored = keras.saving.deserialize_keras_object(
            keras.saving.serialize_keras_object(model)
        )
        assert isinstance(restored, VSEModel)
        assert isinstance(restored.image_tower, ImageTower)
        assert isinstance(restored.text_tower, LSTMTextTower)
        assert restored.get_config() == config
        assert restored.image_tower.get_config() == image_tower.get_config()
        assert restored.text_tower.get_config() == text_tower.get_config()
        direct = VSEModel.from_config(config)
        assert direct.get_config() == config
        out = restored(_batch())
        assert tuple(out["text_embedding"].shape) == (BATCH, DIM)


class TestFusedTraining:
    def test_text_tower_fused_path_matches_keras_lstm(self):
        _, text_tower = _towers()
        ids = _batch(seed=4)["token_ids"]
        np.testing.assert_allclose(
            text_tower.encode_tokens_fused(ids).numpy(),
            text_tower.encode_tokens(ids).numpy(),
            atol=1e-5,
        )

    @pytest.mark.parametrize(
        "options",
        [
            dict(jit_compile_text=True),
            dict(text_compute_dtype="bfloat16"),
        ],
    )
    def test_train_step_variants_follow_the_float32_step(self, options):
        batch = _batch(seed=5)

        def update(**kwargs):
            image_tower, text_tower = _towers()
            model = VSEModel(image_tower, text_tower, **kwargs)
            model.compile(optimizer=keras.optimizers.SGD(0.1))
            before = [w.numpy() for w in model.trainable_weights]
            model.fit(tf.data.Dataset.from_tensors(batch), epochs=1, verbose=0)
            after = [w.numpy() for w in model.trainable_weights]
            return np.concatenate([(a - b).ravel() for a, b in zip(after, before)])

        reference = update()
        variant = update(**options)
        assert np.abs(reference).max() > 1e-3
        if "jit_compile_text" in options:
            np.testing.assert_allclose(variant, reference, rtol=1e-4, atol=1e-6)
        else:  # bf16 matmuls: the same step up to bf16 rounding
            cosine = variant @ reference / np.linalg.norm(variant)
            cosine /= np.linalg.norm(reference)
            assert cosine > 0.999, cosine

    def test_bfloat16_trunk_step_follows_the_float32_step(self):
        rng = np.random.default_rng(8)
        batch = dict(_batch(seed=8))
        del batch["image_features"]
        batch["images"] = tf.constant(rng.uniform(0, 255, (BATCH, SIZE, SIZE, 3)))

        def update(trunk_compute_dtype):
            keras.utils.set_random_seed(0)
            image_tower = ImageTower(
                embed_dim=DIM,
                image_size=SIZE,
                vgg_weights="none",
                fine_tune_from="block5",
            )
            _, text_tower = _towers()
            model = VSEModel(
                image_tower, text_tower, trunk_compute_dtype=trunk_compute_dtype
            )
            model.compile(optimizer=keras.optimizers.SGD(0.1))
            trunk = model.trunk_variables()
            before = [w.numpy() for w in trunk]
            model.fit(tf.data.Dataset.from_tensors(batch), epochs=1, verbose=0)
            # Only the training step ran in bf16: the weights stay float32,
            # and the tower computes in float32 afterwards.
            assert all(w.dtype == "float32" for w in trunk)
            trained = backbone_lib.matmul_layers(image_tower.backbone)
            assert [layer.compute_dtype for layer in trained] == ["float32"] * 3
            step = [(w.numpy() - b).ravel() for w, b in zip(trunk, before)]
            return np.concatenate(step)

        reference = update("float32")
        variant = update("bfloat16")
        assert len(reference) > 0 and np.abs(reference).max() > 0
        assert not np.array_equal(variant, reference)  # bf16 products ran
        # The same step up to bf16's 8-bit mantissa, which can also flip a
        # few ReLU gates of the random convs: the direction, not the digits.
        cosine = variant @ reference / np.linalg.norm(variant)
        cosine /= np.linalg.norm(reference)
        assert cosine > 0.95, cosine
        config = VSEModel.from_config(
            VSEModel(*_towers(), trunk_compute_dtype="bfloat16").get_config()
        )
        assert config.trunk_compute_dtype == "bfloat16"

    def test_gradient_is_clipped_to_its_global_norm(self):
        batch = _batch(seed=7)
        image_tower, text_tower = _towers()
        model = VSEModel(image_tower, text_tower, grad_clip_norm=1e-3)
        model.compile(optimizer=keras.optimizers.SGD(1.0))
        before = [w.numpy() for w in model.trainable_weights]
        model.fit(tf.data.Dataset.from_tensors(batch), epochs=1, verbose=0)
        after = [w.numpy() for w in model.trainable_weights]
        step = np.sqrt(sum(((a - b) ** 2).sum() for a, b in zip(after, before)))
        np.testing.assert_allclose(step, 1e-3, rtol=1e-3)
        assert model.get_config()["grad_clip_norm"] == 1e-3

    def test_sum_then_max_follows_the_batch_flag(self):
        image_tower, text_tower = _towers()
        schedule = VSEModel(image_tower, text_tower, loss_mode="sum_then_max")
        by_mode = {
            mode: VSEModel(image_tower, text_tower, loss_mode=mode)
            for mode in ("sum", "max")
        }
        batch = _batch(seed=6)
        for hard, mode in ((False, "sum"), (True, "max")):
            flagged = dict(batch, hard_negatives=tf.fill([BATCH], int(hard)))
            np.testing.assert_allclose(
                float(schedule.compute_ranking_loss(flagged)),
                float(by_mode[mode].compute_ranking_loss(batch)),
                rtol=1e-6,
            )
        # Without the flag (e.g. evaluation) it is the hardest-negative loss.
        np.testing.assert_allclose(
            float(schedule.compute_ranking_loss(batch)),
            float(by_mode["max"].compute_ranking_loss(batch)),
            rtol=1e-6,
        )

    def test_jit_text_refused_when_fine_tuning_the_cnn(self):
        image_tower, text_tower = _towers(include_backbone=True)
        model = VSEModel(image_tower, text_tower, jit_compile_text=True)
        with pytest.raises(ValueError, match="cached image features"):
            model.compile(optimizer=keras.optimizers.SGD(0.1))


class TestInfoNCETraining:
    def test_learns_its_temperature_and_lowers_the_loss(self):
        image_tower, text_tower = _towers()
        model = VSEModel(image_tower, text_tower, loss_mode="infonce", temperature=0.07)
        batch = _batch(seed=4)
        expected = losses.infonce_loss(
            *model(batch).values(), 0.07, image_ids=batch["image_ids"]
        )
        before = float(model.compute_ranking_loss(batch))
        np.testing.assert_allclose(before, float(expected), rtol=1e-5)
        assert any(
            v is model.log_inverse_temperature for v in model.trainable_variables
        )
        model.compile(optimizer=keras.optimizers.Adam(1e-2))
        model.fit(tf.data.Dataset.from_tensors(batch).repeat(20), verbose=0)
        assert float(model.compute_ranking_loss(batch)) < 0.5 * before
        assert float(model.log_inverse_temperature) != pytest.approx(np.log(1 / 0.07))
        restored = VSEModel.from_config(model.get_config())
        assert restored.loss_mode == "infonce" and restored.temperature == 0.07
        assert restored.learn_temperature

    def test_a_fixed_temperature_stays_while_the_towers_learn(self):
        image_tower, text_tower = _towers()
        model = VSEModel(
            image_tower,
            text_tower,
            loss_mode="infonce",
            temperature=0.05,
            learn_temperature=False,
        )
        batch = _batch(seed=4)
        before = float(model.compute_ranking_loss(batch))
        assert not any(
            v is model.log_inverse_temperature for v in model.trainable_variables
        )
        model.compile(optimizer=keras.optimizers.Adam(1e-2))
        model.fit(tf.data.Dataset.from_tensors(batch).repeat(20), verbose=0)
        after = float(model.compute_ranking_loss(batch))
        assert after < 0.5 * before
        # exp(-log(1 / 0.05)) is 0.05 again, and the loss is the plain
        # function's at 0.05 on the trained embeddings.
        assert float(model.log_inverse_temperature) == pytest.approx(np.log(20.0))
        expected = losses.infonce_loss(
            *model(batch).values(), 0.05, image_ids=batch["image_ids"]
        )
        np.testing.assert_allclose(after, float(expected), rtol=1e-5)
        restored = VSEModel.from_config(model.get_config())
        assert not restored.learn_temperature
        assert not restored.log_inverse_temperature.trainable


def test_the_trained_joint_model_round_trips_through_a_keras_archive(
    tiny_export, tmp_path
):
    """keras.saving.save_model/load_model: registered towers, same embeddings."""
    model = tiny_export.model
    path = str(tmp_path / "vse.keras")
    keras.saving.save_model(model, path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, VSEModel)
    sentences = tf.constant(["a red square", "two blue circles", ""])
    np.testing.assert_allclose(
        loaded.text_tower(sentences, training=False),
        model.text_tower(sentences, training=False),
        atol=1e-6,
    )
    size = model.image_tower.image_size
    pixels = tf.random.stateless_uniform([2, size, size, 3], [1, 2], 0, 255)
    np.testing.assert_allclose(
        loaded.image_tower(pixels, training=False),
        model.image_tower(pixels, training=False),
        atol=1e-6,
    )


class TestFineTuningFromActivations:
    """The cheap path: cached activations at the cut, the trunk's own Adam."""

    def _model(self):
        keras.utils.set_random_seed(0)
        image_tower = ImageTower(
            embed_dim=DIM, image_size=SIZE, vgg_weights="none", fine_tune_from="block5"
        )
        text_tower = LSTMTextTower(
            VOCAB, embed_dim=DIM, word_dim=8, max_length=MAX_LENGTH
        )
        return VSEModel(image_tower, text_tower)

    def _batch(self, model):
        from vse_tf.models.backbone import split_backbone

        bottom, _ = split_backbone(model.image_tower.backbone, "block5", "pool5")
        rng = np.random.default_rng(2)
        pixels = rng.uniform(0, 255, (BATCH, SIZE, SIZE, 3)).astype(np.float32)
        batch = _batch()
        batch["image_features"] = tf.constant(
            bottom(pixels).numpy().reshape([BATCH, -1]).astype(np.float16)
        )
        return batch

    def _kernel(self, model, name):
        return model.image_tower.backbone.get_layer("vgg16").get_layer(name).kernel

    def test_each_part_moves_at_its_own_learning_rate(self):
        model = self._model()
        batch = self._batch(model)
        model(batch)
        trainable = model.trainable_variables
        assert len({id(v) for v in trainable}) == len(trainable)  # no doubles
        trunk = model.trunk_variables()
        assert {v.path.split("/")[-2] for v in trunk} == {
            f"block5_conv{i}" for i in (1, 2, 3)
        }
        model.compile(optimizer=keras.optimizers.Adam(1e-2))
        model.trunk_optimizer = keras.optimizers.Adam(1e-3)
        model.trunk_optimizer.build(trunk)
        everything = model.image_tower.weights
        before = {id(v): np.array(v.numpy()) for v in everything}
        model.train_on_batch(batch)
        moved = {id(v): np.abs(v.numpy() - before[id(v)]) for v in everything}
        # Adam's first step moves each weight by lr * g / (|g| + eps), i.e.
        # by lr where the gradient is not tiny: 1e-3 in the trunk's kernels,
        # 1e-2 in the head's (W_emb).
        for name in ("block5_conv1", "block5_conv2", "block5_conv3"):
            kernel = self._kernel(model, name)
            assert moved[id(kernel)].max() == pytest.approx(1e-3, rel=1e-3), name
        w_emb = model.image_tower.w_emb
        assert moved[id(w_emb.kernel)].max() == pytest.approx(1e-2, rel=1e-3)
        # The frozen blocks did not move.
        changed = {id(v) for v in trunk} | {id(w_emb.kernel), id(w_emb.bias)}
        for v in everything:
            if id(v) not in changed:
                assert moved[id(v)].max() == 0.0, v.path

    @pytest.mark.slow(reason="the one-optimizer step again, on activations (3 s)")
    def test_one_optimizer_without_trunk_optimizer(self):
        model = self._model()
        batch = self._batch(model)
        model(batch)
        model.compile(optimizer=keras.optimizers.Adam(1e-2))
        kernel = self._kernel(model, "block5_conv3")
        before = kernel.numpy().copy()
        model.train_on_batch(batch)
        assert np.abs(kernel.numpy() - before).max() == pytest.approx(1e-2, rel=1e-3)
