"""End-to-end tests of the training library on the tiny preset."""

import dataclasses
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from tests import testing_utils
from vse_tf import config as config_lib
from vse_tf import evaluation, modeling, train_lib
from vse_tf import metrics as metrics_lib
from vse_tf import workdir as workdir_lib
from vse_tf.data import datasets
from vse_tf.features import settings as feature_settings


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    data_dir = testing_utils.write_tiny_captioned_images(str(root / "data"))
    return data_dir, str(root / "cache")


def _config(tiny_data, **overrides):
    data_dir, cache = tiny_data
    return config_lib.override(
        config_lib.get_config("tiny"),
        dataset="csv",
        data_dir=data_dir,
        cache_dir=cache,
        **overrides,
    )


def test_one_epoch_writes_metrics_and_checkpoints(tiny_data, tmp_path):
    workdir = str(tmp_path / "run")
    results = train_lib.train_and_evaluate(_config(tiny_data), workdir, verbose=0)

    assert set(results) == {"dev", "test"}
    for split in ("dev", "test"):
        with open(os.path.join(workdir, f"metrics_{split}.json")) as f:
            saved = json.load(f)
        assert set(metrics_lib.METRIC_KEYS) <= set(saved)
        assert saved["rsum"] == pytest.approx(results[split]["rsum"])
        assert 0 <= saved["i2t_r1"] <= 100
    for name in ("config.json", "vocab.txt", "checkpoints", "best", "tensorboard"):
        assert os.path.exists(os.path.join(workdir, name)), name
    assert os.listdir(os.path.join(workdir, "tensorboard"))


def test_rerun_resumes_and_continues(tiny_data, tmp_path):
    workdir = str(tmp_path / "run")
    train_lib.train_and_evaluate(_config(tiny_data, epochs=1), workdir, verbose=0)
    first = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
    assert any(name.startswith("ckpt-1") for name in first)

    # Same command with more epochs: resumes at epoch 1 and trains epoch 2 only.
    train_lib.train_and_evaluate(_config(tiny_data, epochs=2), workdir, verbose=0)
    names = os.listdir(os.path.join(workdir, "checkpoints"))
    assert any(name.startswith("ckpt-2") for name in names)

    # Same command again: nothing left to train, evaluation still runs.
    results = train_lib.train_and_evaluate(
        _config(tiny_data, epochs=2), workdir, verbose=0
    )
    assert "dev" in results


@pytest.mark.parametrize("ema_decay", [0.0, 0.9])
def test_resumed_run_matches_uninterrupted_run(tiny_data, tmp_path, ema_decay):
    # With a weight average, the best model is the average: it matches only
    # if the resume state carried the average (and its update count) over.
    straight = str(tmp_path / "straight")
    train_lib.train_and_evaluate(
        _config(tiny_data, epochs=2, ema_decay=ema_decay), straight, verbose=0
    )
    resumed = str(tmp_path / "resumed")
    for epochs in (1, 2):
        train_lib.train_and_evaluate(
            _config(tiny_data, epochs=epochs, ema_decay=ema_decay), resumed, verbose=0
        )

    _, model_a = workdir_lib.load_trained_model(straight, include_backbone=False)
    _, model_b = workdir_lib.load_trained_model(resumed, include_backbone=False)
    for a, b in zip(model_a.weights, model_b.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5, err_msg=a.path)


def test_augment_flip_trains_on_both_views_from_the_cache(tiny_data, tmp_path):
    config = config_lib.override(
        _config(tiny_data, augment_flip=True), cache_dir=str(tmp_path / "cache")
    )
    reports = train_lib.extract_split_features(config, ["train"], verbose=0)
    assert set(reports) == {"train", "train (mirrored)"}
    plain, mirrored = reports["train"], reports["train (mirrored)"]
    assert plain.cache_folder != mirrored.cache_folder

    split = datasets.load_split(config, "train")
    _, views, skipped = feature_settings.split_features(config, split, 0, flip=True)
    assert skipped == 0
    np.testing.assert_array_equal(views, np.stack([plain.features, mirrored.features]))

    results = train_lib.train_and_evaluate(config, str(tmp_path / "run"), verbose=0)
    assert np.isfinite(results["dev"]["rsum"])
    # Training read both cache entries and computed neither again.
    for report in (plain, mirrored):
        with open(os.path.join(report.cache_folder, "manifest.json")) as f:
            assert json.load(f)["complete"]
    again = train_lib.extract_split_features(config, ["train"], verbose=0)
    assert [r.shards_computed for r in again.values()] == [0, 0]


def test_augment_flip_is_refused_when_fine_tuning_reads_images(tiny_data):
    config = _config(
        tiny_data, augment_flip=True, fine_tune_from="block5", fine_tune_cached=False
    )
    split = datasets.load_split(config, "train")
    with pytest.raises(ValueError, match="fine_tune_from='block5'"):
        feature_settings.split_features(config, split, 0, flip=True)
    precomputed = dataclasses.replace(split, features=np.zeros([split.num_images, 4]))
    with pytest.raises(ValueError, match="precomputed features"):
        feature_settings.split_features(config, precomputed, 0, flip=True)


def test_weight_average_is_evaluated_and_kept_as_the_best_model(tiny_data, tmp_path):
    workdir = str(tmp_path / "run")
    # One epoch: its model is the best by construction.
    config = _config(tiny_data, epochs=1, ema_decay=0.9)
    results = train_lib.train_and_evaluate(config, workdir, verbose=0)
    state = testing_utils.last_checkpoint_values(workdir)
    # One update per optimizer step.
    updates = state["weight_average/updates/.ATTRIBUTES/VARIABLE_VALUE"]
    iterations = state["optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE"]
    assert int(updates) == int(iterations) > 1

    _, best = workdir_lib.load_trained_model(workdir, include_backbone=False)
    trained = best.trainable_variables
    shadows = [
        state[f"weight_average/shadows/{i}/.ATTRIBUTES/VARIABLE_VALUE"]
        for i in range(len(trained))
    ]
    assert len(trained) > 0
    assert not any(
        k.startswith(f"weight_average/shadows/{len(trained)}/") for k in state
    )
    for variable, shadow in zip(trained, shadows):
        np.testing.assert_allclose(
            variable.numpy(), shadow, atol=1e-6, err_msg=variable.path
        )
    # The resume state holds the raw weights, which differ from the average.
    last = tf.train.latest_checkpoint(os.path.join(workdir, "checkpoints"))
    tf.train.Checkpoint(model=best).restore(last).expect_partial()
    assert any(
        np.abs(v.numpy() - shadow).max() > 1e-4
        for v, shadow in zip(best.trainable_variables, shadows)
    )
    # What training reported on dev is the kept model's score.
    values = evaluation.evaluate_workdir(workdir, split="dev")
    assert values == pytest.approx(results["dev"])


def test_rerun_with_different_config_is_refused(tiny_data, tmp_path):
    workdir = str(tmp_path / "run")
    train_lib.train_and_evaluate(_config(tiny_data), workdir, verbose=0)
    with pytest.raises(ValueError, match="margin"):
        train_lib.train_and_evaluate(_config(tiny_data, margin=0.5), workdir, verbose=0)


def test_evaluate_workdir_matches_training_metrics(tiny_data, tmp_path):
    workdir = str(tmp_path / "run")
    results = train_lib.train_and_evaluate(_config(tiny_data), workdir, verbose=0)
    os.remove(os.path.join(workdir, "metrics_test.json"))
    values = evaluation.evaluate_workdir(workdir, split="test")
    assert values == pytest.approx(results["test"])
    assert os.path.exists(os.path.join(workdir, "metrics_test.json"))


def test_load_trained_model_embeds_image_files(tiny_data, tmp_path):
    workdir = str(tmp_path / "run")
    train_lib.train_and_evaluate(_config(tiny_data), workdir, verbose=0)
    config, model = workdir_lib.load_trained_model(workdir)
    split = datasets.load_split(config, "test")
    from_files, _ = evaluation.embed_split(
        model, np.ones([1, 2], np.int32), image_paths=split.image_paths, image_size=32
    )
    _, feats, skipped = feature_settings.split_features(config, split, verbose=0)
    assert skipped == 0
    from_features = model.image_tower.embed_features(feats).numpy()
    np.testing.assert_allclose(from_files, from_features, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(from_files, axis=1), 1.0, atol=1e-5)


def test_protocol_view_keeps_first_five_captions():
    from vse_tf.data.split import group_captions

    pairs = [("a", f"a{i}") for i in range(7)] + [("b", f"b{i}") for i in range(3)]
    pairs += [("c", f"c{i}") for i in range(5)]
    view = datasets.protocol_view(group_captions("dev", pairs))
    assert view.image_paths == ["a", "c"]
    assert view.captions == [f"a{i}" for i in range(5)] + [f"c{i}" for i in range(5)]
    assert view.captions_per_image() == 5


def _vocabulary(workdir):
    from vse_tf import text as text_lib

    return text_lib.Vocabulary.load(os.path.join(workdir, workdir_lib.VOCAB_FILE))


def _block_kernels(model, prefix):
    vgg = model.image_tower.backbone.get_layer("vgg16")
    return {
        layer.name: layer.kernel.numpy()
        for layer in vgg.layers
        if layer.name.startswith(prefix) and layer.weights
    }


@pytest.mark.slow(reason="fine-tunes VGG16's block5 on decoded images (8 s)")
def test_fine_tuning_on_images_trains_the_cnn(tiny_data, tmp_path):
    workdir = str(tmp_path / "run")
    config = _config(
        tiny_data, fine_tune_from="block5", fine_tune_cached=False, max_train_images=16
    )
    results = train_lib.train_and_evaluate(config, workdir, verbose=0)
    assert "dev" in results
    _, model = workdir_lib.load_trained_model(workdir)
    fresh = modeling.build_model(config, _vocabulary(workdir))
    trained, start = _block_kernels(model, "block5"), _block_kernels(fresh, "block5")
    assert len(trained) == 3
    assert all(np.abs(trained[k] - start[k]).max() > 0 for k in trained)


@pytest.mark.slow(reason="trains twice on cached block5 activations (15 s)")
def test_fine_tuning_from_cached_activations(tiny_data, tmp_path, monkeypatch):
    """The cheap path: the frozen blocks run once, the cache is reused on
    resume, block5 trains at its own learning rate and block4 stays."""
    workdir = str(tmp_path / "run")
    config = _config(
        tiny_data,
        fine_tune_from="block5",
        augment_flip=True,
        max_train_images=16,
        trunk_lr_multiplier=0.5,
    )
    results = train_lib.train_and_evaluate(config, workdir, verbose=0)
    assert np.isfinite(results["dev"]["rsum"])
    reports = train_lib.extract_split_features(config, ["train", "dev"], verbose=0)
    # Train (and its mirror images) and dev were computed by training: reused.
    assert sorted(reports) == ["dev", "train", "train (mirrored)"]
    for report in reports.values():
        assert report.shards_computed == 0
        # block5 reads block4's pooled output: 32 / 16 = 2x2, 512 channels.
        assert report.features.shape[1:] == (2 * 2 * 512,)
        assert report.features.dtype == np.float16

    _, model = workdir_lib.load_trained_model(workdir)
    assert model.image_tower.cut_shape == (2, 2, 512)
    fresh = modeling.build_model(config, _vocabulary(workdir))
    for prefix, changed in (("block5", True), ("block4", False), ("block1", False)):
        trained, start = _block_kernels(model, prefix), _block_kernels(fresh, prefix)
        for name in trained:
            moved = np.abs(trained[name] - start[name]).max()
            assert (moved > 0) == changed, (name, moved)

    # Resuming with one more epoch reads the cache: the CNN never runs again.
    from vse_tf.features import extractor

    def fail(*args, **kwargs):
        raise AssertionError("the activations were computed again")

    monkeypatch.setattr(extractor, "Extractor", fail)
    more = config_lib.override(config, epochs=2)
    train_lib.train_and_evaluate(more, workdir, verbose=0)
    assert os.path.exists(os.path.join(workdir, "checkpoints", "ckpt-2.index"))


def test_precomputed_features_train_and_reload(tmp_path):
    # VSE++ *_precomp layout: one feature row per image, one caption per line.
    rng = np.random.default_rng(0)
    words = ["red", "green", "blue", "cat", "dog", "bird"]
    for split, n in (("train", 16), ("dev", 6), ("test", 6)):
        labels = rng.integers(0, len(words), n)
        feats = rng.normal(size=(n, 24)).astype(np.float32)
        feats[np.arange(n), labels] += 4.0
        np.save(tmp_path / f"{split}_ims.npy", feats)
        captions = [f"a {words[k]} thing number {j}" for k in labels for j in range(5)]
        (tmp_path / f"{split}_caps.txt").write_text("\n".join(captions) + "\n")
    config = config_lib.override(
        config_lib.get_config("tiny"),
        dataset="precomp",
        data_dir=str(tmp_path),
        epochs=2,
    )
    workdir = str(tmp_path / "run")
    results = train_lib.train_and_evaluate(config, workdir, verbose=0)
    assert set(results) == {"dev", "test"}
    _, model = workdir_lib.load_trained_model(workdir, include_backbone=None)
    assert model.image_tower.feature_dim == 24
    assert model.image_tower.backbone is None
    values = evaluation.evaluate_workdir(workdir, split="test")
    assert values == pytest.approx(results["test"])


def test_learning_rate_drops_tenfold_after_decay_epochs():
    config = config_lib.override(
        config_lib.get_config("tiny"), epochs=4, lr_decay_epochs=2, learning_rate=0.01
    )
    optimizer = train_lib.make_optimizer(config, steps_per_epoch=10)
    schedule = optimizer._learning_rate
    assert float(schedule(19)) == pytest.approx(0.01)
    assert float(schedule(21)) == pytest.approx(0.001)
    # Clipping is the model's (after the cross-replica sum), not Adam's.
    assert optimizer.global_clipnorm is None


def test_report_adds_coco_1k_protocol_for_5000_images(tmp_path):
    from vse_tf import text
    from vse_tf.data.split import CaptionedSplit

    n = 5000
    rng = np.random.default_rng(0)
    split = CaptionedSplit(
        "test",
        [f"test:{i}" for i in range(n)],
        [f"caption {i % 7}" for i in range(5 * n)],
        np.repeat(np.arange(n), 5),
        rng.normal(size=(n, 6)).astype(np.float32),
    )
    vocabulary = text.Vocabulary([f"{i}" for i in range(7)] + ["caption"])
    config = config_lib.get_config("tiny")
    model = modeling.build_model(config, vocabulary, feature_dim=6)
    data = evaluation.EvalData(
        split,
        text.encode_captions(model.text_tower.tokenizer, split.captions),
        split.features,
    )
    values = evaluation.report(model, data, config, str(tmp_path))

    with open(tmp_path / "metrics_test.json") as f:
        assert json.load(f)["rsum"] == round(values["rsum"], 2)  # as written
    with open(tmp_path / "metrics_test_1k.json") as f:
        folds = json.load(f)
    image_emb, caption_emb = evaluation.embed_eval_data(model, data, config)
    expected = metrics_lib.coco_metrics(image_emb, caption_emb, protocol="1k")
    assert folds["rsum"] == pytest.approx(expected["rsum"], abs=0.005)


def test_non_finite_loss_stops_with_the_step_and_keeps_last_checkpoint(
    tiny_data, tmp_path
):
    workdir = str(tmp_path / "run")
    train_lib.train_and_evaluate(_config(tiny_data, epochs=1), workdir, verbose=0)
    # A loss that turns NaN (as a diverging run's does) in the second epoch.
    from vse_tf.models import vse_model

    original = vse_model.losses.ranking_loss

    def diverging(*args, **kwargs):
        return original(*args, **kwargs) * float("nan")

    import unittest.mock

    with unittest.mock.patch.object(vse_model.losses, "ranking_loss", diverging):
        with pytest.raises(FloatingPointError, match=r"at step \d+ \(epoch 2"):
            train_lib.train_and_evaluate(
                _config(tiny_data, epochs=2), workdir, verbose=0
            )
    names = os.listdir(os.path.join(workdir, "checkpoints"))
    assert not any(name.startswith("ckpt-2") for name in names)
    _, model = workdir_lib.load_trained_model(workdir, include_backbone=False)
    assert all(np.all(np.isfinite(w.numpy())) for w in model.weights)


@pytest.mark.parametrize("native, expected", [("1", "bfloat16"), ("0", "float32")])
def test_build_model_resolves_auto_compute_dtypes_by_hardware(
    monkeypatch, native, expected
):
    from vse_tf import hardware, text

    monkeypatch.setenv("VSE_TF_NATIVE_BF16", native)
    hardware.native_bfloat16.cache_clear()
    vocabulary = text.Vocabulary(["a"])
    try:
        tiny = config_lib.get_config("tiny")
        # A frozen CNN has no trained layers: no precision to choose, and
        # the hardware is not even asked (loading a model for export logs
        # nothing about it).
        frozen = config_lib.override(tiny, trunk_compute_dtype="auto")
        model = modeling.build_model(frozen, vocabulary, feature_dim=6)
        assert model.trunk_compute_dtype == "float32"
        assert hardware.native_bfloat16.cache_info().currsize == 0
        fine_tuned = config_lib.override(frozen, fine_tune_from="block5")
        model = modeling.build_model(fine_tuned, vocabulary)
        assert model.trunk_compute_dtype == expected
        # The tests' preset and the fine-tuned preset keep float32.
        assert tiny.train.trunk_compute_dtype == "float32"
        pinned = config_lib.get_config("flickr8k_lite_ft").train
        assert hardware.compute_dtype(pinned.trunk_compute_dtype) == "float32"
    finally:
        hardware.native_bfloat16.cache_clear()
