"""A training workdir: its layout, its checks, and loading the model it holds.

Layout (written by `vse_tf.train_lib.train_and_evaluate`):

* ``config.json``: the config the run was started with (a rerun must match,
  except for ``epochs``).
* ``vocab.txt``: the vocabulary, built from the train split only.
* ``checkpoints/``: the last epoch's model, optimizer, epoch and best dev
  R-sum; rerunning the same command resumes from here.
* ``best/``: the model with the best dev R-sum (model selection).
* ``tensorboard/``: losses, learning rate and dev metrics.
* ``metrics_<split>.json``: the retrieval table of each evaluation.
* ``metrics.csv`` and ``report.html``: per-epoch rows and the run's page.

The trainer writes it; the evaluator, the exporters (SavedModel, TFLite)
and `vse_tf.Embedder` read it through `load_trained_model`, so none of them
depends on the trainer.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import shutil
from collections.abc import Sequence
from typing import Optional

import tensorflow as tf

from vse_tf import errors, io_utils, modeling, preset
from vse_tf import text as text_lib
from vse_tf.config import Config
from vse_tf.models.ensemble import Ensemble
from vse_tf.models.vse_model import VSEModel

CONFIG_FILE = "config.json"
VOCAB_FILE = "vocab.txt"
BEST_DIR = "best"


MIN_FREE_BYTES = 256 * 2**20
"""Free space a workdir needs at start (checkpoints of paper-size models are
~100 MB each and two are kept, plus the best one)."""


def check_workdir(workdir: str, min_free_bytes: int = MIN_FREE_BYTES) -> None:
    """Fails fast if ``workdir`` cannot be written or its disk is nearly full.

    Raises:
        OSError: naming the folder and what is wrong.
    """
    try:
        os.makedirs(workdir, exist_ok=True)
        probe = os.path.join(workdir, f".write-test-{os.getpid()}")
        with open(probe, "wb") as f:
            f.write(b"\0" * 4096)
            f.flush()
            os.fsync(f.fileno())
        os.remove(probe)
    except OSError as error:
        raise OSError(
            error.errno,
            f"workdir {workdir} is not writable ({error.strerror or error}); "
            "choose another --workdir",
        ) from error
    free = shutil.disk_usage(workdir).free
    if free < min_free_bytes:
        raise OSError(
            errno.ENOSPC,
            f"only {free / 2**20:.0f} MB free on the disk of {workdir}; training "
            f"needs at least {min_free_bytes / 2**20:.0f} MB for checkpoints. "
            "Free some space or choose another --workdir",
        )


def check_config(workdir: str, config: Config) -> None:
    """Refuses a workdir that holds a run with another config (reads only)."""
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.exists(path):
        return
    with open(path) as f:
        saved = Config.from_dict(json.load(f))
    # Free to change on resume: how long to train (more epochs continue
    # the run) and on what hardware, precisions included ("auto" already
    # picks them by machine; a run saved before a precision option existed
    # reads back its default).
    free = dict(
        epochs=0,
        strategy="",
        jit_compile_text=False,
        jit_compile_image=False,
        text_compute_dtype="",
        trunk_compute_dtype="",
    )
    old = dataclasses.replace(saved.train, **free)
    old = dataclasses.replace(saved, train=old).to_dict()
    new = dataclasses.replace(config.train, **free)
    new = dataclasses.replace(config, train=new).to_dict()
    diff = [
        f"{section}.{key}: {value!r} -> {new[section][key]!r}"
        for section, values in old.items()
        for key, value in values.items()
        if new[section][key] != value
    ]
    if diff:
        raise errors.ConfigError(
            f"{workdir} holds a run with a different config ({'; '.join(diff)}); "
            "use a new --workdir or the same flags"
        )


def write_config(workdir: str, config: Config) -> None:
    """Writes ``<workdir>/config.json`` atomically."""
    path = os.path.join(workdir, CONFIG_FILE)
    io_utils.atomic_write_text(path, config.to_json())


def local_folder(workdir: str) -> str:
    """A workdir or preset as a local folder (``hf://``: its Hub snapshot)."""
    return preset.resolve(workdir) if workdir.startswith(preset.HF_PREFIX) else workdir


def read_workdir_config(workdir: str) -> Config:
    """The config a training workdir was trained with.

    Raises:
        errors.MissingError: if ``workdir`` holds no ``config.json``.
    """
    if preset.names_preset(workdir):
        folder = preset.resolve(workdir)
        values = preset.read_json(os.path.join(folder, preset.CONFIG_FILE))
        return preset.read_config(values, os.path.join(folder, preset.CONFIG_FILE))
    config_path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.exists(config_path):
        raise errors.MissingError(
            f"{workdir} is not a training workdir (it has no {CONFIG_FILE}); "
            "give the --workdir that trainers.train wrote"
        )
    with open(config_path) as f:
        return Config.from_dict(json.load(f))


def best_checkpoint(workdir: str) -> str:
    """The path of ``workdir``'s best checkpoint (model selection on dev).

    Raises:
        errors.MissingError: if no epoch has finished yet.
    """
    path = tf.train.latest_checkpoint(os.path.join(workdir, BEST_DIR))
    if path is None:
        raise errors.MissingError(
            f"{workdir} has no best checkpoint yet (no finished epoch in "
            f"{workdir}/{BEST_DIR}); train first, or give the finished run's "
            "--workdir"
        )
    return path


def restore_best(model: VSEModel, workdir: str) -> str:
    """Loads the best checkpoint of ``workdir`` into ``model``; returns its path."""
    path = best_checkpoint(workdir)
    tf.train.Checkpoint(model=model).restore(path).expect_partial()
    return path


def load_ensemble(workdirs: Sequence[str]) -> tuple[Config, Ensemble]:
    """Several trained models as one (`vse_tf.models.ensemble`), CNNs included.

    Args:
        workdirs: Two or more workdirs or presets of models trained on the
            same captions (one vocabulary).

    Returns:
        ``(config of the first, ensemble)``.

    Raises:
        errors.ConfigError: for fewer than two, or members that cannot be
            put side by side (other vocabularies or image sizes).
    """
    if len(workdirs) < 2:
        raise errors.ConfigError("an ensemble needs at least two workdirs")
    loaded = [load_trained_model(w) for w in workdirs]
    try:
        return loaded[0][0], Ensemble([model for _, model in loaded])
    except ValueError as error:
        raise errors.ConfigError(f"{', '.join(workdirs)}: {error}") from error


def load_trained_model(
    workdir: str, include_backbone: Optional[bool] = True
) -> tuple[Config, VSEModel]:
    """Rebuilds a trained model from a workdir (config, vocabulary, best weights).

    Args:
        workdir: A folder written by `vse_tf.train_lib.train_and_evaluate`,
            or a preset (`vse_tf.preset`: a folder or ``hf://owner/name``).
        include_backbone: Build the CNN too (needed to embed image files);
            None builds it only for fine-tuned models.

    Returns:
        ``(config, model)``.
    """
    if preset.names_preset(workdir):
        # A preset's weights file holds the CNN too: it is always built.
        config, model, _ = preset.load_preset(workdir)
        return config, model
    config = read_workdir_config(workdir)
    vocabulary = text_lib.Vocabulary.load(os.path.join(workdir, VOCAB_FILE))
    # The word embedding's size is in the checkpoint; read it from there.
    best = best_checkpoint(workdir)
    word_dim = feature_dim = None
    for name, shape in tf.train.list_variables(best):
        if "word_embedding" in name and len(shape) == 2 and shape[0] == len(vocabulary):
            word_dim = shape[1]
        if "w_emb" in name and len(shape) == 2:
            feature_dim = shape[0]
    if config.data.dataset != "precomp":
        feature_dim = None
    model = modeling.build_model(
        config,
        vocabulary,
        word_dim=word_dim,
        include_backbone=include_backbone,
        feature_dim=feature_dim,
    )
    restore_best(model, workdir)
    return config, model
