"""The typed config: presets, field docs, validation."""

import dataclasses

import pytest

from vse_tf import config as config_lib
from vse_tf import errors


def _runnable(preset, tmp_path):
    config = config_lib.get_config(preset)
    if config.data.dataset != "demo":
        config = config_lib.override(config, data_dir=str(tmp_path))
    return config


@pytest.mark.parametrize("preset", sorted(config_lib.PRESETS))
def test_every_preset_is_valid_given_its_data_folder(preset, tmp_path):
    assert config_lib.problems(_runnable(preset, tmp_path)) == []


@pytest.mark.parametrize("preset", sorted(config_lib.PRESETS))
def test_every_preset_decays_inside_its_schedule(preset):
    train = config_lib.get_config(preset).train
    # 0 = no decay; otherwise the x0.1 must happen before the last epoch.
    assert train.lr_decay_epochs == 0 or 0 < train.lr_decay_epochs < train.epochs


@pytest.mark.parametrize("preset", ["flickr30k", "coco"])
def test_paper_presets_follow_vsepp_30_epochs_decay_after_15(preset):
    train = config_lib.get_config(preset).train
    assert (train.epochs, train.lr_decay_epochs, train.learning_rate) == (30, 15, 2e-4)


def test_every_field_is_described_and_every_choice_is_a_field():
    fields = set()
    for section in config_lib.SECTIONS.values():
        described = config_lib.field_help(section)
        names = {field.name for field in dataclasses.fields(section)}
        assert set(described) == names, section
        assert all(text for text in described.values())
        fields |= names
    assert set(config_lib.choices()) <= fields


def test_field_help_reads_continuation_lines():
    text = config_lib.field_help(config_lib.DataConfig)["augment_flip"]
    assert text.startswith("Train on the cached features")
    assert text.endswith("extraction runs twice on train).")


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        (dict(data_dir="somewhere"), "add --dataset="),
        (dict(dataset="flickr8k"), "needs --data_dir"),
        (dict(epochs=0), "--epochs=0: must be at least 1"),
        (dict(epochs=5, lr_decay_epochs=5), "i.e. never"),
        (dict(learning_rate=0.0), "--learning_rate=0.0: must be positive"),
        (dict(batch_size=1), "no in-batch negatives"),
        (dict(max_train_images=-1), "must not be negative"),
        (dict(loss="hinge"), "loss='hinge' is not one of"),
        (dict(image_feature="fc7"), "fc7"),
        (dict(backbone="efficientnet_lite0", image_feature="pool5"), "head_avg"),
        (dict(glove="/no/such/glove.txt"), "--glove=/no/such/glove.txt"),
        (dict(trunk_lr_multiplier=0.0), "--trunk_lr_multiplier=0.0: must be"),
        (dict(ema_decay=1.0), "--ema_decay=1.0: must be in [0, 1)"),
        (dict(ema_decay=-0.5), "--ema_decay=-0.5: must be in [0, 1)"),
        (dict(fine_tune_from="all"), "add --nofine_tune_cached"),
        (dict(fine_tune_batchnorm="moving"), "fine_tune_batchnorm='moving'"),
        (
            dict(fine_tune_from="block5", fine_tune_cached=False, augment_flip=True),
            "with --nofine_tune_cached add --noaugment_flip",
        ),
    ],
)
def test_problems_name_the_flag_and_the_fix(overrides, fragment):
    config = config_lib.override(config_lib.get_config("demo"), **overrides)
    found = config_lib.problems(config)
    assert any(fragment in problem for problem in found), found
    with pytest.raises(errors.ConfigError):
        config_lib.validate(config)


def test_flip_with_precomputed_features_is_refused(tmp_path):
    config = config_lib.override(
        config_lib.get_config("flickr8k"), dataset="precomp", data_dir=str(tmp_path)
    )
    assert any("--noaugment_flip" in p for p in config_lib.problems(config))


def test_fine_tuning_from_cached_activations_may_mirror_images():
    config = config_lib.override(
        config_lib.get_config("flickr8k_lite_ft"), data_dir="/data"
    )
    assert config.data.augment_flip and config.model.fine_tune_from
    assert config.model.fine_tune_cached
    assert config_lib.problems(config, check_paths=False) == []


def test_missing_data_folder_is_a_problem_only_when_paths_are_checked():
    config = config_lib.override(
        config_lib.get_config("flickr8k"), data_dir="/no/such/folder"
    )
    assert config_lib.problems(config, check_paths=False) == []
    assert config_lib.problems(config) == ["--data_dir=/no/such/folder is not a folder"]


def test_all_problems_are_listed_at_once():
    config = config_lib.override(
        config_lib.get_config("demo"), epochs=0, learning_rate=-1.0, batch_size=1
    )
    with pytest.raises(errors.ConfigError) as raised:
        config_lib.validate(config)
    assert str(raised.value).count("\n  - ") == 3


def test_config_errors_are_value_errors_for_library_callers():
    with pytest.raises(ValueError, match="unknown preset 'nope'"):
        config_lib.get_config("nope")
    with pytest.raises(ValueError, match="unknown config field 'nope'"):
        config_lib.override(config_lib.get_config("demo"), nope=1)


def test_flip_averaging_precomputed_features_is_refused(tmp_path):
    config = config_lib.override(
        config_lib.get_config("flickr8k_lite"),
        dataset="precomp",
        data_dir=str(tmp_path),
        augment_flip=False,
        flip_average=True,
    )
    assert config_lib.problems(config) == [
        "--flip_average mirrors images, but precomp data sets hold features "
        "only; add --noflip_average"
    ]
