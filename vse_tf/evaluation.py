"""Retrieval evaluation: of a trained model on a split, of a workdir, of any embedder.

The protocol is the one training selects on (`vse_tf.metrics`): each image
with its first 5 captions; R@1/5/10 and median rank for image->text and
text->image; rsum. `evaluate_embedder` sends the images through the model as
files (JPEG/PNG bytes), as a deployed model sees them, so its numbers check
an export end to end.
"""

from __future__ import annotations

import dataclasses
import os
import weakref
from typing import Any, Optional

import keras
import numpy as np
import tensorflow as tf

from vse_tf import config as config_lib
from vse_tf import errors, io_utils, preset
from vse_tf import images as images_lib
from vse_tf import metrics as metrics_lib
from vse_tf import projector as projector_lib
from vse_tf import text as text_lib
from vse_tf import workdir as workdir_lib
from vse_tf.config import Config
from vse_tf.data import datasets
from vse_tf.data.datasets import CAPTIONS_PER_IMAGE
from vse_tf.data.split import CaptionedSplit
from vse_tf.features import settings as feature_settings
from vse_tf.models import ensemble as ensemble_lib
from vse_tf.models.vse_model import VSEModel

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
    """Embeds a split's images (what the cache holds, or files) and captions.

    Args:
        image_features: What the cache holds per image, ``[N, F]``, or for
            several views of each image ``[V, N, F]`` (their embeddings are
            averaged: `ImageTower.embed_cached_views`); None embeds the files
            at ``image_paths``.

    Returns:
        ``(image_emb [N, D], caption_emb [M, D])`` float32.
    """
    encode_text = _compiled(model.text_tower, "encode_tokens")
    caption_emb = [
        encode_text(tf.constant(token_ids[i : i + batch_size])).numpy()
        for i in range(0, len(token_ids), batch_size)
    ]
    if image_features is not None and image_features.ndim == 3:
        # [V, N, F]: several views of each image (`ImageTower.flip_average`).
        embed = _compiled(model.image_tower, "embed_cached_views")
        image_emb = [
            embed(tf.constant(image_features[:, i : i + batch_size])).numpy()
            for i in range(0, image_features.shape[1], batch_size)
        ]
    elif image_features is not None:
        embed = _compiled(model.image_tower, "embed_cached")
        image_emb = [
            embed(tf.constant(image_features[i : i + batch_size])).numpy()
            for i in range(0, len(image_features), batch_size)
        ]
    else:
        embed = _compiled(model.image_tower, "call")
        image_emb = [
            embed(images).numpy()
            for images in images_lib.image_dataset(image_paths, image_size, batch_size)
        ]
    return np.concatenate(image_emb), np.concatenate(caption_emb)


@dataclasses.dataclass
class EvalData:
    """A split prepared for evaluation (5 captions per image)."""

    split: CaptionedSplit
    token_ids: np.ndarray
    features: Optional[np.ndarray]  # [N, F], or [2, N, F] with the mirror images
    skipped_images: int = 0


def prepare_eval(
    config: Config, split: CaptionedSplit, tokenizer: text_lib.SentenceTokenizer
) -> EvalData:
    """The protocol view of a split, its caption ids and its features.

    Raises:
        readers.DataError: naming the images with fewer than 5 captions
            (more are allowed: the first 5 are used).
    """
    view = datasets.evaluation_view(split)
    # Flip averaging over cached features needs the mirror images' too
    # (a tower that runs its CNN on the images mirrors them itself).
    flip = (
        config.model.flip_average
        and view.features is None
        and not feature_settings.trains_on_images(config)
    )
    view, feats, skipped = feature_settings.split_features(config, view, flip=flip)
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
    """Writes ``<workdir>/metrics_<split>.json`` atomically; returns the path.

    Floats are rounded to 2 decimals: no float noise (``95.89999999999999``),
    and recalls stay exact (multiples of 0.1 at 1,000 images, of 0.02 at
    5,000 captions); the printed table shows 1.
    """
    path = os.path.join(workdir, f"metrics_{split}.json")
    payload = {
        name: round(value, 2) if isinstance(value, float) else value
        for name, value in values.items()
    }
    payload.update(extra or {})
    io_utils.atomic_write_json(path, payload, indent=2)
    return path


def report(
    model: VSEModel,
    data: EvalData,
    config: Config,
    workdir: Optional[str],
    extra: Optional[dict] = None,
    embeddings: Optional[tuple[np.ndarray, np.ndarray]] = None,
) -> dict[str, float]:
    """Evaluates, prints the table and writes ``metrics_<split>.json``.

    ``workdir`` None writes nothing (a preset is not written into).

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
    if workdir is not None:
        write_metrics(workdir, name, values, extra)
    print(metrics_lib.format_table(values, f"{name} ({data.split.num_images} images)"))
    if data.split.num_images == 5000:
        folds = metrics_lib.coco_metrics(image_emb, caption_emb, protocol="1k")
        if workdir is not None:
            write_metrics(workdir, f"{name}_1k", folds, extra)
        print(metrics_lib.format_table(folds, f"{name} COCO 1K (mean of 5 folds)"))
    return values


def evaluate_workdir(
    workdir: str,
    split: str = "dev",
    dataset: Optional[str] = None,
    data_dir: Optional[str] = None,
    max_eval_images: Optional[int] = None,
    projector_dir: Optional[str] = None,
    flip_average: Optional[bool] = None,
) -> dict[str, float]:
    """Evaluates a trained workdir's best model on a split; writes the JSON.

    Args:
        workdir: Training workdir.
        split: Split name.
        dataset: Data set (default: the training one).
        data_dir: Data root (default: the training one).
        max_eval_images: Score the first N images (default: as trained).
        projector_dir: Also write the split's image and caption embeddings
            there for TensorBoard's Embedding Projector (`vse_tf.projector`).
        flip_average: Score each image with its mirror image too
            (`ImageTower.flip_average`; default: as trained). The metrics
            file records the choice.

    Returns:
        The metrics dict (also in ``<workdir>/metrics_<split>.json``; a
        preset is scored the same and not written into).
    """
    config, model, data, embeddings = _workdir_embeddings(
        workdir, split, dataset, data_dir, max_eval_images, flip_average
    )
    written = None if preset.names_preset(workdir) else workdir
    if projector_dir:
        files = projector_lib.projector_files(
            embeddings[0],
            data.split.image_paths,
            embeddings[1],
            data.split.captions,
            data.split.caption_image_index,
        )
        projector_lib.write_projector(projector_dir, files)
    extra = {
        "skipped_images": data.skipped_images,
        "flip_average": config.model.flip_average,
    }
    return report(model, data, config, written, extra, embeddings=embeddings)


def _workdir_embeddings(
    workdir: str,
    split: str,
    dataset: Optional[str],
    data_dir: Optional[str],
    max_eval_images: Optional[int],
    flip_average: Optional[bool] = None,
) -> tuple[Config, VSEModel, EvalData, tuple[np.ndarray, np.ndarray]]:
    """A workdir's model, its prepared split and their embeddings."""
    config, model = workdir_lib.load_trained_model(workdir, include_backbone=None)
    config = config_lib.override(
        config,
        dataset=dataset or None,
        data_dir=data_dir or None,
        max_eval_images=max_eval_images,
        flip_average=flip_average,
    )
    model.image_tower.flip_average = config.model.flip_average
    if dataset == "demo":
        config = config_lib.override(config, data_dir="")
    config_lib.validate(config)
    data = prepare_eval(
        config, datasets.load_split(config, split), model.text_tower.tokenizer
    )
    return config, model, data, embed_eval_data(model, data, config)


def ensemble_embeddings(
    members: list[tuple[np.ndarray, np.ndarray]],
) -> tuple[np.ndarray, np.ndarray]:
    """One embedding space for K models: their unit embeddings side by side.

    The K L2-normalised embeddings of an item concatenated and divided by
    sqrt(K) form a unit vector, and the dot product of two such vectors is
    the mean of the K models' cosines: the score ensemble VSE++, SCAN and
    m-CNN report, as one model's embeddings (one index, one export).

    Args:
        members: ``[(image_emb [N, D_k], caption_emb [M, D_k])]`` of each
            model on the same images and captions.

    Returns:
        ``(image_emb [N, sum D_k], caption_emb [M, sum D_k])``.
    """
    return tuple(
        np.asarray(ensemble_lib.side_by_side([member[i] for member in members]))
        for i in range(2)
    )


def evaluate_ensemble(
    workdirs: list[str],
    split: str = "dev",
    dataset: Optional[str] = None,
    data_dir: Optional[str] = None,
    max_eval_images: Optional[int] = None,
    flip_average: Optional[bool] = None,
) -> dict[str, float]:
    """Scores the mean-cosine ensemble of several trained models; prints the table.

    Each workdir (or preset) embeds the split with its own config; the
    scores are the mean of their cosines (`ensemble_embeddings`). Nothing is
    written into the workdirs.

    Args:
        workdirs: Two or more training workdirs or presets.
        split, dataset, data_dir, max_eval_images, flip_average: As
            `evaluate_workdir`.

    Returns:
        The ensemble's metrics.

    Raises:
        errors.ConfigError: for fewer than two models, or models whose
            splits hold other images or captions (other data sets).
    """
    if len(workdirs) < 2:
        raise errors.ConfigError("an ensemble needs at least two workdirs")
    members, first = [], None
    for workdir in workdirs:
        config, model, data, embeddings = _workdir_embeddings(
            workdir, split, dataset, data_dir, max_eval_images, flip_average
        )
        if first is None:
            first = (config, model, data)
        elif (data.split.image_paths, data.split.captions) != (
            first[2].split.image_paths,
            first[2].split.captions,
        ):
            raise errors.ConfigError(
                f"{workdir} scores other {split} images or captions than "
                f"{workdirs[0]}: ensemble models trained on the same data set"
            )
        members.append(embeddings)
    config, model, data = first
    return report(model, data, config, None, embeddings=ensemble_embeddings(members))


def evaluate_embedder(
    embedder: Any,
    config: config_lib.Config,
    split: str = "dev",
    batch_size: int = 32,
    verbose: bool = True,
) -> dict[str, float]:
    """Encodes a split's images and captions with ``embedder``; returns metrics.

    Args:
        embedder: A `vse_tf.Embedder` (anything with ``encode_images(paths)``
            and ``encode_texts(sentences)`` returning ``[N, D]`` unit rows).
        config: Where the data come from (``config.data``: dataset,
            data_dir, max_eval_images, and for the demo its size and seed).
        split: ``dev`` or ``test``.
        batch_size: Images per encoder call.
        verbose: Print the table.

    Returns:
        ``{i2t_r1, ..., rsum}`` (see `vse_tf.metrics.retrieval_metrics`).

    Raises:
        errors.ConfigError: for an invalid config.
        readers.DataError: for bad annotations, or images with fewer than
            5 captions.
    """
    config_lib.validate(config)
    view = datasets.evaluation_view(datasets.load_split(config, split))
    image_emb = embedder.encode_images(view.image_paths, batch_size=batch_size)
    caption_emb = embedder.encode_texts(view.captions)
    values = metrics_lib.retrieval_metrics(image_emb, caption_emb, CAPTIONS_PER_IMAGE)
    if verbose:
        title = f"{split} ({view.num_images} images, {getattr(embedder, 'source', '')})"
        print(metrics_lib.format_table(values, title))
    return values
