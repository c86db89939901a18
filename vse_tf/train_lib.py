"""Training: everything `trainers.train` calls, with no flags here.

`train_and_evaluate` reads the splits (`vse_tf.data.datasets`), caches the
CNN features (`vse_tf.features`), builds the model (`vse_tf.modeling`),
trains it with checkpoints and dev model selection, evaluates dev and test
(`vse_tf.evaluation`) and writes the report; the workdir it fills is
described in `vse_tf.workdir`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from typing import Optional

import keras
import numpy as np
import tensorflow as tf

from vse_tf import config as config_lib
from vse_tf import distribute, evaluation, progress
from vse_tf import report as report_lib
from vse_tf import text as text_lib
from vse_tf import workdir as workdir_lib
from vse_tf.config import Config
from vse_tf.data import datasets, pipeline, validation
from vse_tf.data.datasets import CAPTIONS_PER_IMAGE
from vse_tf.data.split import CaptionedSplit
from vse_tf.evaluation import EvalData
from vse_tf.features import report as feature_report
from vse_tf.features import settings as feature_settings
from vse_tf.modeling import build_model, word_vectors
from vse_tf.models.vse_model import VSEModel
from vse_tf.weight_average import WeightAverage


def make_optimizer(
    config: Config, steps_per_epoch: int, scale: float = 1.0
) -> keras.optimizers.Optimizer:
    """Adam with the VSE++ step decay (`VSEModel` clips the gradient).

    Args:
        config: The run's config (``learning_rate``, ``lr_decay_epochs``).
        steps_per_epoch: Steps of one epoch (when the decay happens).
        scale: Multiplies the learning rate throughout (the fine-tuned
            CNN's ``trunk_lr_multiplier``).
    """
    t = config.train
    base = t.learning_rate * scale
    learning_rate = base
    if t.lr_decay_epochs and t.lr_decay_epochs < t.epochs:
        learning_rate = keras.optimizers.schedules.PiecewiseConstantDecay(
            [t.lr_decay_epochs * steps_per_epoch], [base, base * 0.1]
        )
    return keras.optimizers.Adam(learning_rate=learning_rate)


def extract_split_features(
    config: Config,
    splits: Sequence[str] = ("train", "dev", "test"),
    verbose: int = 1,
    runner: str = "local",
    pipeline_options: Sequence[str] = (),
) -> dict[str, feature_report.FeatureReport]:
    """Precomputes the CNN features training and evaluation read from the cache.

    The same image lists as `train_and_evaluate`: the whole train split, the
    protocol view (`protocol_view`) of dev and test, so the same cache keys.

    Args:
        config: The run's config.
        splits: Split names; a missing ``test`` split is skipped.
        verbose: 1 shows progress bars.
        runner: ``local`` (this process) or a Beam runner name
            (`vse_tf.pipelines.RUNNERS`): the same cache entries, computed by
            `vse_tf.pipelines.extract`.
        pipeline_options: Beam's own flags for a Beam runner.

    Returns:
        ``{split: FeatureReport}`` for the splits with image files
        (precomputed-feature data sets have nothing to extract); with
        ``config.data.augment_flip`` also ``"train (mirrored)"``.

    With ``fine_tune_from`` (and ``fine_tune_cached``) these are the
    activations where fine-tuning starts, which that training reads.

    Raises:
        ValueError: for fine-tuning on images (``fine_tune_cached`` off:
            training reads images, not a cache).
    """
    if feature_settings.trains_on_images(config):
        raise ValueError(
            "fine_tune_from is set with fine_tune_cached off: fine-tuning reads "
            "images, not cached features"
        )
    reports = {}
    for name in splits:
        split = datasets.load_optional_split(config, name)
        if split is None or split.features is not None:
            continue
        view = split if name == "train" else datasets.protocol_view(split)
        if name != "train":
            validation.check_captions_per_image(
                split, CAPTIONS_PER_IMAGE, "evaluation", allow_more=True
            )
        mirrored = name == "train" and config.data.augment_flip
        for flip in [False, True] if mirrored else [False]:
            report = _extract(
                config, view.image_paths, verbose, flip, runner, pipeline_options
            )
            label = f"{name} (mirrored)" if flip else name
            reports[label] = report
            print(
                f"{label}: {len(view.image_paths)} images, {report.num_skipped} "
                f"skipped, {report.shards_computed} shards computed, "
                f"{report.shards_reused} reused ({report.used_dtype}) in "
                f"{report.cache_folder}"
            )
    return reports


def _extract(
    config: Config,
    paths: Sequence[str],
    verbose: int,
    flip: bool,
    runner: str,
    pipeline_options: Sequence[str],
) -> feature_report.FeatureReport:
    if runner == "local":
        return feature_settings.extract_for_config(config, paths, verbose, flip=flip)
    from vse_tf.pipelines import extract  # noqa: PLC0415 (Beam: optional)

    return extract.extract_for_config(
        config, paths, verbose, flip, runner=runner, pipeline_options=pipeline_options
    )


class _Checkpoints:
    """Last-epoch state (resume) and best-model checkpoints of a workdir.

    Reads ``workdir``; writes ``write_dir`` (the workdir itself, except on
    non-chief multi-worker replicas, see `vse_tf.distribute.WriteDir`). The
    resume state holds the raw weights and, with ``weight_average``, the
    average; the best model is whatever the model holds when it is saved
    (`_EpochEnd` swaps the average in first).
    """

    def __init__(
        self,
        workdir: str,
        model: VSEModel,
        optimizer,
        write_dir: Optional[str] = None,
        weight_average: Optional[WeightAverage] = None,
    ):
        self.workdir = workdir
        write_dir = write_dir or workdir
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        self.best_rsum = tf.Variable(
            -1.0, dtype=tf.float64, trainable=False, name="best_rsum"
        )
        extra = {} if weight_average is None else {"weight_average": weight_average}
        self.state = tf.train.Checkpoint(
            model=model,
            optimizer=optimizer,
            epoch=self.epoch,
            best_rsum=self.best_rsum,
            **extra,
        )
        self.last = tf.train.CheckpointManager(
            self.state, os.path.join(write_dir, "checkpoints"), max_to_keep=2
        )
        self.best = tf.train.CheckpointManager(
            tf.train.Checkpoint(model=model),
            os.path.join(write_dir, "best"),
            max_to_keep=1,
        )

    @property
    def latest(self) -> Optional[str]:
        return tf.train.latest_checkpoint(os.path.join(self.workdir, "checkpoints"))

    def restore_last(self) -> bool:
        if not self.latest:
            return False
        self.state.restore(self.latest).assert_existing_objects_matched()
        return True


class _StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Stops at the first NaN/Inf loss, naming the step; saves nothing then.

    The last saved checkpoint (previous epoch) stays the resume point.
    """

    def __init__(self, checkpoints: _Checkpoints, steps_per_epoch: int):
        super().__init__()
        self.checkpoints = checkpoints
        self.steps_per_epoch = steps_per_epoch
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None:
            loss = float(np.reshape(loss, [-1])[0])  # [1] under multi-worker
        if loss is not None and not np.isfinite(loss):
            step = self.epoch * self.steps_per_epoch + batch + 1
            raise FloatingPointError(
                f"training loss became {float(loss)} at step {step} (epoch "
                f"{self.epoch + 1}, batch {batch + 1}); nothing was saved after "
                f"it. Last good checkpoint: {self.checkpoints.latest}"
            )


class _AverageWeights(keras.callbacks.Callback):
    """Moves the weight average towards the weights after every step."""

    def __init__(self, weight_average: WeightAverage):
        super().__init__()
        self.weight_average = weight_average

    def on_train_batch_end(self, batch, logs=None):
        self.weight_average.update(self.model.trainable_variables)


class _EpochEnd(keras.callbacks.Callback):
    """Evaluates on dev, keeps the best model and saves the resume state.

    With a weight average, the average is what is evaluated and kept as the
    best model; the raw weights go back into the model for the resume state
    and the next epoch.
    """

    def __init__(
        self,
        checkpoints: _Checkpoints,
        dev: EvalData,
        config: Config,
        write_dir: str,
        weight_average: Optional[WeightAverage] = None,
    ):
        super().__init__()
        self.checkpoints = checkpoints
        self.dev = dev
        self.config = config
        self.write_dir = write_dir
        self.weight_average = weight_average
        self.writer = tf.summary.create_file_writer(
            os.path.join(write_dir, "tensorboard", "dev")
        )

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = time.time()

    def on_epoch_end(self, epoch, logs=None):
        if self.weight_average is None:
            row, improved = self._evaluate_and_keep_best(epoch, logs)
        else:
            variables = self.model.trainable_variables
            self.weight_average.swap(variables)
            try:
                row, improved = self._evaluate_and_keep_best(epoch, logs)
            finally:
                self.weight_average.swap(variables)
        self.checkpoints.epoch.assign(epoch + 1)
        self.checkpoints.last.save(checkpoint_number=epoch + 1)
        report_lib.append_epoch(self.write_dir, row)
        print(
            f"\nepoch {epoch + 1}: dev i2t R@1 {row['i2t_r1']:.1f} "
            f"t2i R@1 {row['t2i_r1']:.1f} rsum {row['rsum']:.1f}"
            + (" (best so far, saved)" if improved else "")
        )

    def _evaluate_and_keep_best(self, epoch, logs) -> tuple[dict, bool]:
        """Dev's row for the report, and whether it beat the best (saved)."""
        values = evaluation.evaluate(self.model, self.dev, self.config)
        row = dict(values, epoch=epoch + 1)
        row["seconds"] = time.time() - getattr(self, "_epoch_start", time.time())
        if logs and "loss" in logs:
            row["loss"] = float(np.reshape(logs["loss"], [-1])[0])
        learning_rate = getattr(self.model.optimizer, "learning_rate", None)
        if learning_rate is not None:
            row["learning_rate"] = float(np.asarray(learning_rate))
        with self.writer.as_default(step=epoch + 1):
            for key, value in values.items():
                tf.summary.scalar(key, value)
        self.writer.flush()
        improved = values["rsum"] > float(self.checkpoints.best_rsum.numpy())
        if improved:
            self.checkpoints.best_rsum.assign(values["rsum"])
            self.checkpoints.best.save(checkpoint_number=epoch + 1)
        return row, improved


def _vocabulary(
    workdir: str, config: Config, train: CaptionedSplit
) -> text_lib.Vocabulary:
    path = os.path.join(workdir, workdir_lib.VOCAB_FILE)
    if os.path.exists(path):
        return text_lib.Vocabulary.load(path)
    vocabulary = text_lib.Vocabulary.build(train.captions, config.data.min_word_count)
    vocabulary.save(path)
    return vocabulary


def train_and_evaluate(
    config: Config, workdir: str, verbose: int = 1
) -> dict[str, dict]:
    """Trains on train, selects on dev, then evaluates dev (and test).

    Rerunning with the same config and workdir resumes from the last
    finished epoch; with more ``epochs`` it continues training.

    Args:
        config: Run config.
        workdir: Output folder (see `vse_tf.workdir`).
        verbose: Keras verbosity (1 = progress bar).

    Returns:
        ``{split: metrics}`` for the evaluated splits.
    """
    # Everything that can be checked is checked before the workdir is
    # touched, so a failed start leaves it as it was.
    start = time.time()
    config_lib.validate(config)
    workdir_lib.check_config(workdir, config)
    splits = (
        datasets.load_split(config, "train"),
        datasets.load_split(config, "dev"),
        datasets.load_optional_split(config, "test"),
    )
    strategy = distribute.get_strategy(config.train.strategy)
    chief = distribute.is_chief(strategy)
    writer = distribute.WriteDir(workdir, chief)
    if chief:
        workdir_lib.check_workdir(workdir)
        workdir_lib.write_config(workdir, config)
    try:
        return _train_and_evaluate(
            config, splits, workdir, strategy, writer, verbose, start
        )
    finally:
        writer.cleanup()


def _train_and_evaluate(
    config: Config,
    splits: tuple[CaptionedSplit, CaptionedSplit, Optional[CaptionedSplit]],
    workdir: str,
    strategy: tf.distribute.Strategy,
    writer: distribute.WriteDir,
    verbose: int,
    start: float,
) -> dict[str, dict]:
    train, dev, test = splits
    for warning in validation.check_captions_per_image(
        train, CAPTIONS_PER_IMAGE, "training", allow_more=True
    ):
        logging.warning("%s", warning)
    # First: images that cannot be decoded leave the split with their
    # captions, before the vocabulary and the batches are made.
    train, train_feats, skipped_train = feature_settings.split_features(
        config, train, verbose, flip=config.data.augment_flip
    )
    vocabulary = _vocabulary(writer.path, config, train)
    print(
        f"train: {train.num_images} images, {train.num_captions} captions; "
        f"dev: {dev.num_images} images; vocabulary: {len(vocabulary)} tokens"
    )
    model, optimizer = _build_for_training(config, strategy, vocabulary, train)
    tokenizer = model.text_tower.tokenizer
    train_ids = text_lib.encode_captions(tokenizer, train.captions)
    dev_data = evaluation.prepare_eval(config, dev, tokenizer)
    prepare_seconds = time.time() - start  # reading, tokenising, CNN features

    weight_average = _weight_average(config, strategy, model)
    checkpoints = _Checkpoints(
        workdir, model, optimizer, write_dir=writer.path, weight_average=weight_average
    )
    if checkpoints.restore_last():
        print(f"Resuming from {checkpoints.latest}")
    train_start = time.time()
    _fit(
        model,
        checkpoints,
        config,
        (train, train_ids, train_feats),
        dev_data,
        writer,
        verbose,
        weight_average,
    )
    extra = {
        "prepare_seconds": round(prepare_seconds, 1),
        "train_seconds": round(time.time() - train_start, 1),
        "checkpoint": workdir_lib.restore_best(model, writer.path),
        "skipped_train_examples": dict(train.skipped),
        "skipped_images": {"train": skipped_train},
    }
    evaluations = [dev_data]
    if test is not None:
        evaluations.append(evaluation.prepare_eval(config, test, tokenizer))
    return _evaluate_and_report(
        model, config, evaluations, writer.path, extra, distribute.is_chief(strategy)
    )


def _build_for_training(
    config: Config,
    strategy: tf.distribute.Strategy,
    vocabulary: text_lib.Vocabulary,
    train: CaptionedSplit,
) -> tuple[VSEModel, keras.optimizers.Optimizer]:
    """The model (GloVe-initialised) and its built optimizer, in ``strategy``."""
    vectors, word_dim = word_vectors(config, vocabulary)
    precomputed_dim = None if train.features is None else train.features.shape[1]
    steps_per_epoch = max(train.num_captions // config.train.batch_size, 1)
    with strategy.scope():
        model = build_model(
            config, vocabulary, vectors, word_dim, feature_dim=precomputed_dim
        )
        optimizer = make_optimizer(config, steps_per_epoch)
        multiplier = config.train.trunk_lr_multiplier
        if model.trunk_variables() and multiplier != 1.0:
            model.trunk_optimizer = make_optimizer(config, steps_per_epoch, multiplier)
            model.trunk_optimizer.build(model.trunk_variables())
        # Keras's jit_compile="auto" would pick XLA here. Batches are trimmed
        # to their longest caption, so XLA recompiles for every new length
        # (5-9 s each); the text tower's own jit_compile_text is the switch.
        model.compile(optimizer=optimizer, jit_compile=False)
        # Built inside the scope (Keras 3.15 + MultiWorkerMirroredStrategy:
        # building lazily inside `fit` fails on PerReplica values).
        optimizer.build(model.trainable_variables)
    return model, optimizer


def _weight_average(
    config: Config, strategy: tf.distribute.Strategy, model: VSEModel
) -> Optional[WeightAverage]:
    """The average of the trained weights (``ema_decay``), or None."""
    if not config.train.ema_decay:
        return None
    with strategy.scope():
        return WeightAverage(model.trainable_variables, config.train.ema_decay)


def _fit(
    model: VSEModel,
    checkpoints: _Checkpoints,
    config: Config,
    train_data: tuple[CaptionedSplit, np.ndarray, Optional[np.ndarray]],
    dev_data: EvalData,
    writer: distribute.WriteDir,
    verbose: int,
    weight_average: Optional[WeightAverage] = None,
) -> None:
    """Trains from the restored epoch to ``config.train.epochs``.

    Args:
        model: The compiled model (restored from the last checkpoint).
        checkpoints: Its checkpoints (the restored epoch).
        config: The run's config.
        train_data: ``(split, token_ids [M, L], features [N, F] or
            [2, N, F] with flip (activations at the cut when fine-tuning
            the cheap way), or None when fine-tuning on images)``.
        dev_data: The prepared dev split (model selection).
        writer: Where this replica writes.
        verbose: Keras verbosity.
        weight_average: Updated after every step; evaluated and kept as
            the best model each epoch (None: the raw weights).
    """
    train, train_ids, train_feats = train_data
    t = config.train
    first_epoch = int(checkpoints.epoch.numpy())
    if first_epoch >= t.epochs:
        return
    dataset, steps = pipeline.train_dataset(
        train_ids,
        train.caption_image_index,
        t.batch_size,
        t.seed,
        first_epoch,
        t.epochs,
        image_features=train_feats,
        image_paths=(
            train.image_paths if feature_settings.trains_on_images(config) else None
        ),
        image_size=config.data.image_size,
        bucket_by_length=t.bucket_by_length,
        hard_negatives_from_epoch=(
            t.warmup_epochs if t.loss == "sum_then_max" else None
        ),
    )
    callbacks = [_StopOnNonFiniteLoss(checkpoints, steps)]
    if weight_average is not None:
        callbacks.append(_AverageWeights(weight_average))
    callbacks += [
        keras.callbacks.TensorBoard(writer.join("tensorboard"), write_graph=False),
        _EpochEnd(checkpoints, dev_data, config, writer.path, weight_average),
    ]
    if verbose and not progress.interactive():
        # A log file gets plain periodic lines, not a redrawn bar.
        callbacks.append(progress.TrainProgress(steps, t.epochs, t.batch_size))
        verbose = 0
    model.fit(
        dataset,
        epochs=t.epochs,
        initial_epoch=first_epoch,
        steps_per_epoch=steps,
        callbacks=callbacks,
        shuffle=False,  # the dataset shuffles itself, per (seed, epoch)
        verbose=verbose,
    )


def _evaluate_and_report(
    model: VSEModel,
    config: Config,
    evaluations: list[EvalData],
    write_dir: str,
    extra: dict,
    chief: bool,
) -> dict[str, dict]:
    """Scores the best model on dev (and test); writes the metrics and report."""
    for data in evaluations:
        extra["skipped_images"][data.split.name] = data.skipped_images
    dev_data = evaluations[0]
    # Dev is embedded once, for its table and for the report's queries.
    dev_embeddings = evaluation.embed_eval_data(model, dev_data, config)
    results = {}
    for data in evaluations:
        results[data.split.name] = evaluation.report(
            model,
            data,
            config,
            write_dir,
            extra,
            embeddings=dev_embeddings if data is dev_data else None,
        )
    if chief:
        path = write_report(dev_data, dev_embeddings, config, write_dir, results)
        print(f"Report: {path}")
    return results


def write_report(
    dev: EvalData,
    dev_embeddings: tuple[np.ndarray, np.ndarray],
    config: Config,
    workdir: str,
    results: dict[str, dict],
    num_queries: int = 4,
) -> str:
    """Writes ``<workdir>/report.html`` (curves, tables, config, dev queries).

    Args:
        dev: The prepared dev split.
        dev_embeddings: Its ``(image_emb [N, D], caption_emb [5N, D])``.
        config: The run's config.
        workdir: Where the page goes.
        results: ``{split: metrics}`` for the tables.
        num_queries: Example dev captions shown.
    """
    image_emb, caption_emb = dev_embeddings
    examples = report_lib.example_queries(
        image_emb, caption_emb, dev.split.captions, num_queries
    )
    image_paths = dev.split.image_paths or []
    notes = [
        f"Data set {config.data.dataset} ({config.data.data_dir or 'built-in'}); "
        f"backbone {config.model.backbone} ({config.model.image_feature}); "
        f"{config.train.epochs} epochs."
    ]
    return report_lib.write_report(
        workdir,
        results,
        config.to_json(),
        examples,
        image_paths,
        notes=notes,
    )
