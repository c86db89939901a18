"""Tests for vse_tf.workdir: what a rerun in the same workdir may change."""

from __future__ import annotations

import dataclasses
import json

import pytest

from vse_tf import config as config_lib
from vse_tf import errors
from vse_tf import workdir as workdir_lib


def _save(workdir, values: dict) -> None:
    with open(workdir / workdir_lib.CONFIG_FILE, "w") as f:
        json.dump(values, f)


def test_a_run_saved_before_the_precision_options_resumes(tmp_path):
    preset = config_lib.get_config("flickr8k_lite_ft")
    assert preset.train.trunk_compute_dtype == "float32"
    saved = preset.to_dict()
    del saved["train"]["trunk_compute_dtype"]  # as written before it existed
    _save(tmp_path, saved)
    workdir_lib.check_config(str(tmp_path), preset)
    # How long and on what hardware (precisions too) may change.
    faster = dataclasses.replace(
        preset.train,
        epochs=8,
        trunk_compute_dtype="auto",
        text_compute_dtype="float32",
        strategy="mirrored",
    )
    workdir_lib.check_config(str(tmp_path), dataclasses.replace(preset, train=faster))


def test_another_recipe_is_refused_naming_what_differs(tmp_path):
    preset = config_lib.get_config("flickr8k_lite_ft")
    _save(tmp_path, preset.to_dict())
    other = dataclasses.replace(
        preset, train=dataclasses.replace(preset.train, learning_rate=1e-3)
    )
    with pytest.raises(
        errors.ConfigError, match=r"train.learning_rate: 0.002 -> 0.001"
    ):
        workdir_lib.check_config(str(tmp_path), other)
