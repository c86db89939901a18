"""The joint model of a config: its word vectors, its towers, `VSEModel`."""

from __future__ import annotations

import logging
from typing import Optional

import keras
import numpy as np
import tensorflow as tf

from vse_tf import errors, hardware
from vse_tf import images as images_lib
from vse_tf import text as text_lib
from vse_tf.config import Config
from vse_tf.data import glove as glove_lib
from vse_tf.models.image_tower import ImageTower
from vse_tf.models.text_tower import LSTMTextTower
from vse_tf.models.vse_model import VSEModel


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
        fine_tune_batchnorm=m.fine_tune_batchnorm,
        flip_average=m.flip_average,
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
        pooling=m.text_pooling,
        bidirectional=m.text_bidirectional,
        name="text_tower",
    )
    model = VSEModel(
        image_tower,
        text_tower,
        margin=config.train.margin,
        loss_mode=config.train.loss,
        temperature=config.train.temperature,
        learn_temperature=config.train.learn_temperature,
        mask_same_image=config.train.mask_same_image,
        text_compute_dtype=hardware.compute_dtype(config.train.text_compute_dtype),
        # Only a fine-tuned CNN has trained layers to run in bf16.
        trunk_compute_dtype=(
            hardware.compute_dtype(config.train.trunk_compute_dtype)
            if m.fine_tune_from
            else "float32"
        ),
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


def embed_images(model: VSEModel, images: list, image_size: int) -> np.ndarray:
    """Embeds encoded image files or RGB pixels with the model's image tower.

    Args:
        model: A `VSEModel` built with its CNN.
        images: ``[N]`` encoded JPEG/PNG/GIF/BMP bytes, or ``[H, W, 3]``
            pixels in 0..255.
        image_size: The square size the tower takes.

    Returns:
        ``float32 [N, D]`` L2-normalised rows.

    Raises:
        errors.ConfigError: for a model trained on precomputed features
            (it has no CNN).
        tf.errors.InvalidArgumentError: for bytes that do not decode.
    """
    if model.image_tower.backbone is None:
        raise errors.ConfigError(
            "this model was trained on precomputed features and has no CNN; "
            "it can encode texts only"
        )
    pixels = [
        images_lib.decode_image(tf.constant(item), image_size)
        if isinstance(item, bytes)
        else images_lib.resize_pixels(tf.constant(item), image_size)
        for item in images
    ]
    return model.image_tower(tf.stack(pixels), training=False).numpy()
