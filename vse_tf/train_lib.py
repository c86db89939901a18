"""Training and evaluation: everything `trainers/` calls, with no flags here.

Workdir layout:

* ``config.json``: the config the run was started with (a rerun must match,
  except for ``epochs``).
* ``vocab.txt``: the vocabulary, built from the train split only.
* ``checkpoints/``: the last epoch's model, optimizer, epoch and best dev
  R-sum; rerunning the same command resumes from here.
* ``best/``: the model with the best dev R-sum (model selection).
* ``tensorboard/``: losses, learning rate and dev metrics.
* ``metrics_<split>.json``: the retrieval table of each evaluation.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os
import shutil
import time
import weakref
from collections.abc import Sequence
from typing import Optional

import keras
import numpy as np
import tensorflow as tf

from vse_tf import config as config_lib
from vse_tf import distribute, errors, hardware, progress
from vse_tf import features as features_lib
from vse_tf import metrics as metrics_lib
from vse_tf import report as report_lib
from vse_tf import text as text_lib
from vse_tf.config import Config
from vse_tf.data import glove as glove_lib
from vse_tf.data import pipeline, readers, validation
from vse_tf.data.split import CaptionedSplit
from vse_tf.models.image_tower import ImageTower
from vse_tf.models.text_tower import LSTMTextTower
from vse_tf.models.vse_model import VSEModel

CONFIG_FILE = "config.json"
VOCAB_FILE = "vocab.txt"
CAPTIONS_PER_IMAGE = 5


# ---------------------------------------------------------------------------
# Data.


def demo_data_dir(config: Config) -> str:
    """Generates (once) the embedded demo data set and returns its folder."""
    from vse_tf.data import demo

    cache = config.data.cache_dir or features_lib.default_cache_dir()
    folder = os.path.join(
        cache,
        "demo",
        f"v{demo.DEMO_VERSION}-s{config.data.image_size}-seed{config.train.seed}",
    )
    return demo.generate_demo_dataset(
        folder, image_size=config.data.image_size, seed=config.train.seed
    )


def load_split(config: Config, split: str) -> CaptionedSplit:
    """Reads one split of the configured data set.

    Args:
        config: The run's config (``data.dataset``, ``data.data_dir``).
        split: ``train``, ``dev`` or ``test``.

    Returns:
        The split, cut to ``max_train_images`` / ``max_eval_images``.

    Raises:
        readers.DataError: listing every problem found in the annotations
            (unless ``skip_bad_examples``, which leaves the bad examples out
            and records them on ``split.skipped``).
    """
    dataset = config.data.dataset
    options = dict(check_files=True, skip_bad_examples=config.data.skip_bad_examples)
    if dataset == "demo":
        result = readers.read_split("csv", demo_data_dir(config), split, **options)
    else:
        if not config.data.data_dir:
            raise errors.ConfigError(f"--dataset={dataset} needs --data_dir")
        try:
            result = readers.read_split(dataset, config.data.data_dir, split, **options)
        except readers.DataError as error:
            if set(error.kinds) - {validation.MISSING_FILE}:
                error.hint = (
                    "Fix the file, or rerun with --skip_bad_examples to train "
                    "on the good examples only."
                )
            raise
    for warning in result.warnings:
        logging.warning("%s", warning)
    if result.skipped:
        print(
            f"{split}: skipped {sum(result.skipped.values())} bad examples "
            f"({_counts(result.skipped)}); see the log for each"
        )
        for problem in result.skipped_problems:
            logging.warning("skipped: %s", problem)
    limit = (
        config.data.max_train_images
        if split == "train"
        else config.data.max_eval_images
    )
    return result.take_images(limit) if limit else result


def _counts(kinds: dict[str, int]) -> str:
    return ", ".join(f"{count} {kind}" for kind, count in sorted(kinds.items()))


def select_images(split: CaptionedSplit, keep: Sequence[int]) -> CaptionedSplit:
    """The split restricted to images ``keep`` (sorted indices) and their captions."""
    new_index = np.full(split.num_images, -1, np.int64)
    new_index[np.asarray(keep, np.int64)] = np.arange(len(keep))
    owners = new_index[split.caption_image_index]
    kept = owners >= 0
    return dataclasses.replace(
        split,
        image_paths=[split.image_paths[i] for i in keep],
        captions=[c for c, k in zip(split.captions, kept) if k],
        caption_image_index=owners[kept],
        features=None if split.features is None else split.features[keep],
    )


def evaluation_view(split: CaptionedSplit) -> CaptionedSplit:
    """The split as the retrieval protocol scores it: 5 captions per image.

    Raises:
        readers.DataError: naming the images with fewer than 5 captions
            (more are allowed: the first 5 are used).
    """
    validation.check_captions_per_image(
        split, CAPTIONS_PER_IMAGE, "evaluation", allow_more=True
    )
    return protocol_view(split)


def protocol_view(split: CaptionedSplit, k: int = CAPTIONS_PER_IMAGE) -> CaptionedSplit:
    """The first ``k`` captions of every image that has at least ``k``.

    The retrieval protocol needs exactly ``k`` captions per image (COCO has
    5-7); images with fewer are dropped with a warning.
    """
    if split.captions_per_image() == k:
        return split
    keep_captions, keep_images = [], []
    counts = np.bincount(split.caption_image_index, minlength=split.num_images)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    for image, (start, count) in enumerate(zip(starts, counts)):
        if count >= k:
            keep_images.append(image)
            keep_captions.extend(range(start, start + k))
    dropped = split.num_images - len(keep_images)
    if dropped:
        logging.warning(
            "%s: %d images have fewer than %d captions and are left out of evaluation",
            split.name,
            dropped,
            k,
        )
    remap = {old: new for new, old in enumerate(keep_images)}
    return dataclasses.replace(
        split,
        image_paths=[split.image_paths[i] for i in keep_images],
        captions=[split.captions[i] for i in keep_captions],
        caption_image_index=np.asarray(
            [remap[split.caption_image_index[i]] for i in keep_captions]
        ),
        features=None if split.features is None else split.features[keep_images],
    )


def split_features(
    config: Config, split: CaptionedSplit, verbose: int = 1, flip: bool = False
) -> tuple[CaptionedSplit, Optional[np.ndarray], int]:
    """A split's cached backbone features, without its unreadable images.

    Images that cannot be read or decoded (missing, truncated, not an image)
    are skipped: they and their captions leave the split, and the count is
    logged (the feature cache's manifest lists each with its reason). When
    fine-tuning (no feature cache) the image files are only checked.

    Args:
        config: The run's config.
        split: The split.
        verbose: 1 shows extraction progress.
        flip: Also the mirrored images' features (training augmentation,
            ``config.data.augment_flip``).

    Returns:
        ``(split, features, skipped)``: the split without the skipped
        images; their features, ``[N', F]``, ``[2, N', F]`` (image, mirror
        image) with ``flip``, or None when fine-tuning; and how many images
        were skipped.

    Raises:
        ValueError: ``flip`` with precomputed features or fine-tuning.
    """
    if flip and (split.features is not None or config.model.fine_tune_from):
        raise ValueError(
            "augment_flip mirrors images before the frozen CNN, so it needs "
            "image files and cached features: "
            + (
                f"the {config.data.dataset} data set has precomputed features"
                if split.features is not None
                else f"fine_tune_from={config.model.fine_tune_from!r} trains on images"
            )
        )
    if split.features is not None:
        return split, split.features, 0
    if config.model.fine_tune_from:
        features = None
        skipped = features_lib.unreadable_images(
            split.image_paths, config.data.image_size
        )
    else:
        report = features_lib.extract_for_config(config, split.image_paths, verbose)
        features, skipped = report.features, report.skipped
        if flip:
            mirrored = features_lib.extract_for_config(
                config, split.image_paths, verbose, flip=True
            )
            features = np.stack([features, mirrored.features])
            known = {image.index for image in skipped}
            skipped = skipped + [i for i in mirrored.skipped if i.index not in known]
    if not skipped:
        return split, features, 0
    print(f"{split.name}: skipped {len(skipped)} unreadable images")
    for image in skipped[:20]:
        logging.warning("skipped image %s: %s", image.path, image.reason)
    keep = sorted(set(range(split.num_images)) - {image.index for image in skipped})
    kept_features = None if features is None else features[..., keep, :]
    return select_images(split, keep), kept_features, len(skipped)


# ---------------------------------------------------------------------------
# Model.


def word_vectors(
    config: Config, vocabulary: text_lib.Vocabulary
) -> tuple[np.ndarray, int]:
    """Initial word vectors ``[V, word_dim]`` and word_dim (GloVe's when used)."""
    source = config.model.glove
    seed = config.train.seed
    if source != "none":
        try:
            matrix, coverage = glove_lib.load_glove_matrix(
                source, vocabulary.tokens, seed=seed
            )
            print(coverage)
            return matrix, matrix.shape[1]
        except ImportError as error:
            if source != glove_lib.KUMO_SOURCE:
                raise
            logging.warning("%s; word vectors start random", error)
    matrix, _ = glove_lib.load_glove_matrix(
        "none", vocabulary.tokens, dim=config.model.word_dim, seed=seed
    )
    return matrix, config.model.word_dim


def build_model(
    config: Config,
    vocabulary: text_lib.Vocabulary,
    vectors: Optional[np.ndarray] = None,
    word_dim: Optional[int] = None,
    include_backbone: Optional[bool] = None,
    feature_dim: Optional[int] = None,
) -> VSEModel:
    """The joint model for a config.

    Args:
        config: Run config.
        vocabulary: Train vocabulary.
        vectors: Initial ``[V, word_dim]`` word vectors (None: random).
        word_dim: Word vector size (default ``config.model.word_dim``).
        include_backbone: Build the CNN into the image tower; default only when
            fine-tuning (a frozen CNN trains on cached features).
        feature_dim: Feature size of precomputed (``precomp``) features.
    """
    m = config.model
    if include_backbone is None:
        include_backbone = bool(m.fine_tune_from)
    keras.utils.set_random_seed(config.train.seed)
    image_tower = ImageTower(
        embed_dim=m.embed_dim,
        image_feature=m.image_feature,
        image_size=config.data.image_size,
        backbone=m.backbone,
        vgg_weights=m.vgg_weights,
        lite_weights=m.lite_weights,
        feature_norm=m.feature_norm,
        fine_tune_from=m.fine_tune_from,
        include_backbone=include_backbone and not feature_dim,
        feature_dim=feature_dim,
        name="image_tower",
    )
    text_tower = LSTMTextTower(
        vocabulary=vocabulary.tokens,
        embed_dim=m.embed_dim,
        word_dim=word_dim or (vectors.shape[1] if vectors is not None else m.word_dim),
        max_length=config.data.max_length,
        train_word_embeddings=m.train_word_embeddings,
        word_vectors=vectors,
        rnn=m.text_rnn,
        name="text_tower",
    )
    model = VSEModel(
        image_tower,
        text_tower,
        margin=config.train.margin,
        loss_mode=config.train.loss,
        temperature=config.train.temperature,
        mask_same_image=config.train.mask_same_image,
        text_compute_dtype=hardware.text_compute_dtype(config.train.text_compute_dtype),
        jit_compile_text=config.train.jit_compile_text,
        jit_compile_image=config.train.jit_compile_image,
        grad_clip_norm=config.train.grad_clip_norm,
        name="vse",
    )
    dummy = {"token_ids": np.ones([1, 2], np.int32)}
    if image_tower.backbone is not None:
        size = config.data.image_size
        dummy["images"] = np.zeros([1, size, size, 3], np.float32)
    else:
        dummy["image_features"] = np.zeros([1, image_tower.feature_dim], np.float32)
    model(dummy)
    return model


def make_optimizer(config: Config, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    """Adam with the VSE++ step decay (`VSEModel` clips the gradient)."""
    t = config.train
    learning_rate = t.learning_rate
    if t.lr_decay_epochs and t.lr_decay_epochs < t.epochs:
        learning_rate = keras.optimizers.schedules.PiecewiseConstantDecay(
            [t.lr_decay_epochs * steps_per_epoch],
            [t.learning_rate, t.learning_rate * 0.1],
        )
    return keras.optimizers.Adam(learning_rate=learning_rate)


# ---------------------------------------------------------------------------
# Evaluation.


_COMPILED: weakref.WeakKeyDictionary[keras.Model, dict] = weakref.WeakKeyDictionary()


def _compiled(owner: keras.Model, method: str):
    """One traced ``tf.function`` per (model, method), reused across calls."""
    functions = _COMPILED.setdefault(owner, {})
    if method not in functions:
        functions[method] = tf.function(getattr(owner, method), reduce_retracing=True)
    return functions[method]


def embed_split(
    model: VSEModel,
    token_ids: np.ndarray,
    image_features: Optional[np.ndarray] = None,
    image_paths: Optional[list[str]] = None,
    image_size: int = 224,
    batch_size: int = 256,
) -> tuple[np.ndarray, np.ndarray]:
    """Embeds a split's images (features or files) and captions.

    Returns:
        ``(image_emb [N, D], caption_emb [M, D])`` float32.
    """
    encode_text = _compiled(model.text_tower, "encode_tokens")
    caption_emb = [
        encode_text(tf.constant(token_ids[i : i + batch_size])).numpy()
        for i in range(0, len(token_ids), batch_size)
    ]
    if image_features is not None:
        embed = _compiled(model.image_tower, "embed_features")
        image_emb = [
            embed(tf.constant(image_features[i : i + batch_size])).numpy()
            for i in range(0, len(image_features), batch_size)
        ]
    else:
        embed = _compiled(model.image_tower, "call")
        image_emb = [
            embed(images).numpy()
            for images in features_lib.image_dataset(
                image_paths, image_size, batch_size
            )
        ]
    return np.concatenate(image_emb), np.concatenate(caption_emb)


def extract_split_features(
    config: Config,
    splits: Sequence[str] = ("train", "dev", "test"),
    verbose: int = 1,
) -> dict[str, features_lib.FeatureReport]:
    """Precomputes the CNN features training and evaluation read from the cache.

    The same image lists as `train_and_evaluate`: the whole train split, the
    protocol view (`protocol_view`) of dev and test, so the same cache keys.

    Args:
        config: The run's config.
        splits: Split names; a missing ``test`` split is skipped.
        verbose: 1 shows progress bars.

    Returns:
        ``{split: FeatureReport}`` for the splits with image files
        (precomputed-feature data sets have nothing to extract); with
        ``config.data.augment_flip`` also ``"train (mirrored)"``.

    Raises:
        ValueError: for a fine-tuning config (it reads images, not features).
    """
    if config.model.fine_tune_from:
        raise ValueError(
            "fine_tune_from is set: fine-tuning reads images, not cached features"
        )
    reports = {}
    for name in splits:
        split = _optional_split(config, name)
        if split is None or split.features is not None:
            continue
        view = split if name == "train" else protocol_view(split)
        if name != "train":
            validation.check_captions_per_image(
                split, CAPTIONS_PER_IMAGE, "evaluation", allow_more=True
            )
        mirrored = name == "train" and config.data.augment_flip
        for flip in [False, True] if mirrored else [False]:
            report = features_lib.extract_for_config(
                config, view.image_paths, verbose, flip=flip
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


@dataclasses.dataclass
class EvalData:
    """A split prepared for evaluation (5 captions per image)."""

    split: CaptionedSplit
    token_ids: np.ndarray
    features: Optional[np.ndarray]
    skipped_images: int = 0


def prepare_eval(
    config: Config, split: CaptionedSplit, tokenizer: text_lib.SentenceTokenizer
) -> EvalData:
    """The protocol view of a split, its caption ids and its features.

    Raises:
        readers.DataError: naming the images with fewer than 5 captions
            (more are allowed: the first 5 are used).
    """
    view, feats, skipped = split_features(config, evaluation_view(split))
    ids = text_lib.encode_captions(tokenizer, view.captions)
    return EvalData(view, ids, feats, skipped_images=skipped)


def embed_eval_data(
    model: VSEModel, data: EvalData, config: Config
) -> tuple[np.ndarray, np.ndarray]:
    """``(image_emb [N, D], caption_emb [5N, D])`` of a prepared split."""
    return embed_split(
        model,
        data.token_ids,
        image_features=data.features,
        image_paths=None if data.features is not None else data.split.image_paths,
        image_size=config.data.image_size,
        batch_size=config.train.eval_batch_size,
    )


def evaluate(model: VSEModel, data: EvalData, config: Config) -> dict[str, float]:
    """The paper's retrieval metrics of a model on a prepared split."""
    image_emb, caption_emb = embed_eval_data(model, data, config)
    return metrics_lib.retrieval_metrics(image_emb, caption_emb, CAPTIONS_PER_IMAGE)


def write_metrics(
    workdir: str, split: str, values: dict, extra: Optional[dict] = None
) -> str:
    """Writes ``<workdir>/metrics_<split>.json`` atomically; returns the path."""
    path = os.path.join(workdir, f"metrics_{split}.json")
    payload = dict(values)
    payload.update(extra or {})
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=2)
    os.replace(tmp, path)
    return path


def report(
    model: VSEModel,
    data: EvalData,
    config: Config,
    workdir: str,
    extra: Optional[dict] = None,
    embeddings: Optional[tuple[np.ndarray, np.ndarray]] = None,
) -> dict[str, float]:
    """Evaluates, prints the table and writes ``metrics_<split>.json``.

    A split of exactly 5,000 images (the COCO 5K test set) is also scored
    with the COCO 1K protocol (mean over five 1,000-image folds), written to
    ``metrics_<split>_1k.json``; the main file holds the 5K numbers.

    Args:
        embeddings: ``(image_emb, caption_emb)`` of ``data`` when already
            computed (`embed_eval_data`); computed here otherwise.

    Returns:
        The metrics over the whole split.
    """
    name = data.split.name
    image_emb, caption_emb = embeddings or embed_eval_data(model, data, config)
    values = metrics_lib.retrieval_metrics(image_emb, caption_emb, CAPTIONS_PER_IMAGE)
    write_metrics(workdir, name, values, extra)
    print(metrics_lib.format_table(values, f"{name} ({data.split.num_images} images)"))
    if data.split.num_images == 5000:
        folds = metrics_lib.coco_metrics(image_emb, caption_emb, protocol="1k")
        write_metrics(workdir, f"{name}_1k", folds, extra)
        print(metrics_lib.format_table(folds, f"{name} COCO 1K (mean of 5 folds)"))
    return values


# ---------------------------------------------------------------------------
# Checkpoints.


class _Checkpoints:
    """Last-epoch state (resume) and best-model checkpoints of a workdir.

    Reads ``workdir``; writes ``write_dir`` (the workdir itself, except on
    non-chief multi-worker replicas, see `vse_tf.distribute.WriteDir`).
    """

    def __init__(
        self,
        workdir: str,
        model: VSEModel,
        optimizer,
        write_dir: Optional[str] = None,
    ):
        self.workdir = workdir
        write_dir = write_dir or workdir
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        self.best_rsum = tf.Variable(
            -1.0, dtype=tf.float64, trainable=False, name="best_rsum"
        )
        self.state = tf.train.Checkpoint(
            model=model, optimizer=optimizer, epoch=self.epoch, best_rsum=self.best_rsum
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


def restore_best(model: VSEModel, workdir: str) -> str:
    """Loads the best checkpoint of ``workdir`` into ``model``; returns its path."""
    path = tf.train.latest_checkpoint(os.path.join(workdir, "best"))
    if path is None:
        raise errors.MissingError(
            f"{workdir} has no best checkpoint yet (no finished epoch in "
            f"{workdir}/best); train first, or give the finished run's --workdir"
        )
    tf.train.Checkpoint(model=model).restore(path).expect_partial()
    return path


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


class _EpochEnd(keras.callbacks.Callback):
    """Evaluates on dev, keeps the best model and saves the resume state."""

    def __init__(
        self, checkpoints: _Checkpoints, dev: EvalData, config: Config, write_dir: str
    ):
        super().__init__()
        self.checkpoints = checkpoints
        self.dev = dev
        self.config = config
        self.write_dir = write_dir
        self.writer = tf.summary.create_file_writer(
            os.path.join(write_dir, "tensorboard", "dev")
        )

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = time.time()

    def on_epoch_end(self, epoch, logs=None):
        values = evaluate(self.model, self.dev, self.config)
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
        self.checkpoints.epoch.assign(epoch + 1)
        self.checkpoints.last.save(checkpoint_number=epoch + 1)
        report_lib.append_epoch(self.write_dir, row)
        print(
            f"\nepoch {epoch + 1}: dev i2t R@1 {values['i2t_r1']:.1f} "
            f"t2i R@1 {values['t2i_r1']:.1f} rsum {values['rsum']:.1f}"
            + (" (best so far, saved)" if improved else "")
        )


# ---------------------------------------------------------------------------
# Entry points.


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


def _check_config(workdir: str, config: Config) -> None:
    """Refuses a workdir that holds a run with another config (reads only)."""
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.exists(path):
        return
    with open(path) as f:
        saved = Config.from_dict(json.load(f))
    # Free to change on resume: how long to train (more epochs continue
    # the run) and on what hardware.
    free = dict(epochs=0, strategy="", jit_compile_text=False, jit_compile_image=False)
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


def _write_config(workdir: str, config: Config) -> None:
    path = os.path.join(workdir, CONFIG_FILE)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(config.to_json())
    os.replace(tmp, path)


def _vocabulary(
    workdir: str, config: Config, train: CaptionedSplit
) -> text_lib.Vocabulary:
    path = os.path.join(workdir, VOCAB_FILE)
    if os.path.exists(path):
        return text_lib.Vocabulary.load(path)
    vocabulary = text_lib.Vocabulary.build(train.captions, config.data.min_word_count)
    vocabulary.save(path)
    return vocabulary


def _optional_split(config: Config, name: str) -> Optional[CaptionedSplit]:
    try:
        return load_split(config, name)
    except (FileNotFoundError, readers.DataError) as error:
        if name == "test" and ("not found" in str(error) or "No such" in str(error)):
            logging.warning("No %s split (%s); skipping it", name, error)
            return None
        raise


def train_and_evaluate(
    config: Config, workdir: str, verbose: int = 1
) -> dict[str, dict]:
    """Trains on train, selects on dev, then evaluates dev (and test).

    Rerunning with the same config and workdir resumes from the last
    finished epoch; with more ``epochs`` it continues training.

    Args:
        config: Run config.
        workdir: Output folder (see module docstring).
        verbose: Keras verbosity (1 = progress bar).

    Returns:
        ``{split: metrics}`` for the evaluated splits.
    """
    # Everything that can be checked is checked before the workdir is
    # touched, so a failed start leaves it as it was.
    start = time.time()
    config_lib.validate(config)
    _check_config(workdir, config)
    splits = (
        load_split(config, "train"),
        load_split(config, "dev"),
        _optional_split(config, "test"),
    )
    strategy = distribute.get_strategy(config.train.strategy)
    chief = distribute.is_chief(strategy)
    writer = distribute.WriteDir(workdir, chief)
    if chief:
        check_workdir(workdir)
        _write_config(workdir, config)
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
    fine_tune = bool(config.model.fine_tune_from)
    # First: images that cannot be decoded leave the split with their
    # captions, before the vocabulary and the batches are made.
    skipped_images = {}
    train, train_feats, skipped_images["train"] = split_features(
        config, train, verbose, flip=config.data.augment_flip
    )
    vocabulary = _vocabulary(writer.path, config, train)
    print(
        f"train: {train.num_images} images, {train.num_captions} captions; "
        f"dev: {dev.num_images} images; vocabulary: {len(vocabulary)} tokens"
    )
    vectors, word_dim = word_vectors(config, vocabulary)
    precomputed_dim = None if train.features is None else train.features.shape[1]
    t = config.train
    with strategy.scope():
        model = build_model(
            config, vocabulary, vectors, word_dim, feature_dim=precomputed_dim
        )
        optimizer = make_optimizer(config, max(train.num_captions // t.batch_size, 1))
        # Keras's jit_compile="auto" would pick XLA here. Batches are trimmed
        # to their longest caption, so XLA recompiles for every new length
        # (5-9 s each); the text tower's own jit_compile_text is the switch.
        model.compile(optimizer=optimizer, jit_compile=False)
        # Built inside the scope (Keras 3.15 + MultiWorkerMirroredStrategy:
        # building lazily inside `fit` fails on PerReplica values).
        optimizer.build(model.trainable_variables)
    tokenizer = model.text_tower.tokenizer
    train_ids = text_lib.encode_captions(tokenizer, train.captions)
    dev_data = prepare_eval(config, dev, tokenizer)
    prepare_seconds = time.time() - start  # reading, tokenising, CNN features

    checkpoints = _Checkpoints(workdir, model, optimizer, write_dir=writer.path)
    if checkpoints.restore_last():
        print(f"Resuming from {checkpoints.latest}")
    first_epoch = int(checkpoints.epoch.numpy())
    train_start = time.time()
    if first_epoch < t.epochs:
        dataset, steps = pipeline.train_dataset(
            train_ids,
            train.caption_image_index,
            t.batch_size,
            t.seed,
            first_epoch,
            t.epochs,
            image_features=train_feats,
            image_paths=train.image_paths if fine_tune else None,
            image_size=config.data.image_size,
            bucket_by_length=t.bucket_by_length,
            hard_negatives_from_epoch=(
                t.warmup_epochs if t.loss == "sum_then_max" else None
            ),
        )
        callbacks = [
            _StopOnNonFiniteLoss(checkpoints, steps),
            keras.callbacks.TensorBoard(writer.join("tensorboard"), write_graph=False),
            _EpochEnd(checkpoints, dev_data, config, writer.path),
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
    train_seconds = time.time() - train_start

    best_path = restore_best(model, writer.path)
    results = {}
    extra = {
        "prepare_seconds": round(prepare_seconds, 1),
        "train_seconds": round(train_seconds, 1),
        "checkpoint": best_path,
        "skipped_train_examples": dict(train.skipped),
    }
    evaluations = [dev_data]
    if test is not None:
        evaluations.append(prepare_eval(config, test, tokenizer))
    for data in evaluations:
        skipped_images[data.split.name] = data.skipped_images
    extra["skipped_images"] = skipped_images
    # Dev is embedded once, for its table and for the report's queries.
    dev_embeddings = embed_eval_data(model, dev_data, config)
    for data in evaluations:
        results[data.split.name] = report(
            model,
            data,
            config,
            writer.path,
            extra,
            embeddings=dev_embeddings if data is dev_data else None,
        )
    if distribute.is_chief(strategy):
        path = write_report(dev_data, dev_embeddings, config, writer.path, results)
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


def read_workdir_config(workdir: str) -> Config:
    """The config a training workdir was trained with.

    Raises:
        errors.MissingError: if ``workdir`` holds no ``config.json``.
    """
    config_path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.exists(config_path):
        raise errors.MissingError(
            f"{workdir} is not a training workdir (it has no {CONFIG_FILE}); "
            "give the --workdir that trainers.train wrote"
        )
    with open(config_path) as f:
        return Config.from_dict(json.load(f))


def load_trained_model(
    workdir: str, include_backbone: Optional[bool] = True
) -> tuple[Config, VSEModel]:
    """Rebuilds a trained model from a workdir (config, vocabulary, best weights).

    Args:
        workdir: A folder written by `train_and_evaluate`.
        include_backbone: Build the CNN too (needed to embed image files);
            None builds it only for fine-tuned models.

    Returns:
        ``(config, model)``.
    """
    config = read_workdir_config(workdir)
    vocabulary = text_lib.Vocabulary.load(os.path.join(workdir, VOCAB_FILE))
    # The word embedding's size is in the checkpoint; read it from there.
    best = tf.train.latest_checkpoint(os.path.join(workdir, "best"))
    if best is None:
        raise errors.MissingError(
            f"{workdir} has no best checkpoint yet (no finished epoch in "
            f"{workdir}/best); train first, or give the finished run's --workdir"
        )
    word_dim = feature_dim = None
    for name, shape in tf.train.list_variables(best):
        if "word_embedding" in name and len(shape) == 2 and shape[0] == len(vocabulary):
            word_dim = shape[1]
        if "w_emb" in name and len(shape) == 2:
            feature_dim = shape[0]
    if config.data.dataset != "precomp":
        feature_dim = None
    model = build_model(
        config,
        vocabulary,
        word_dim=word_dim,
        include_backbone=include_backbone,
        feature_dim=feature_dim,
    )
    restore_best(model, workdir)
    return config, model


def evaluate_workdir(
    workdir: str,
    split: str = "dev",
    dataset: Optional[str] = None,
    data_dir: Optional[str] = None,
    max_eval_images: Optional[int] = None,
) -> dict[str, float]:
    """Evaluates a trained workdir's best model on a split; writes the JSON.

    Args:
        workdir: Training workdir.
        split: Split name.
        dataset: Data set (default: the training one).
        data_dir: Data root (default: the training one).
        max_eval_images: Score the first N images (default: as trained).

    Returns:
        The metrics dict (also in ``<workdir>/metrics_<split>.json``).
    """
    config, model = load_trained_model(workdir, include_backbone=None)
    config = config_lib.override(
        config,
        dataset=dataset or None,
        data_dir=data_dir or None,
        max_eval_images=max_eval_images,
    )
    if dataset == "demo":
        config = config_lib.override(config, data_dir="")
    config_lib.validate(config)
    data = prepare_eval(config, load_split(config, split), model.text_tower.tokenizer)
    return report(model, data, config, workdir, {"skipped_images": data.skipped_images})
