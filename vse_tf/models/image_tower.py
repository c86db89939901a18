"""Image tower: CNN features -> W_emb -> L2-normalised D-dim embedding.

The CNN is VGG16 (the paper's) or EfficientNet-Lite (`vse_tf.models.backbone`).
"""

from __future__ import annotations

from typing import Optional

import keras

from vse_tf.models import backbone as backbone_lib
from vse_tf.models import catalog


def l2_normalize(x, epsilon: float = 1e-12):
    """Each row of ``[B, D]`` over its L2 norm; an all-zero row stays zero."""
    norm = keras.ops.sqrt(keras.ops.sum(keras.ops.square(x), -1, keepdims=True))
    return x / keras.ops.maximum(norm, epsilon)


@keras.saving.register_keras_serializable(package="vse_tf")
class L2Normalize(keras.layers.Layer):
    """Scales each row to unit L2 norm; an all-zero row stays zero (no NaN).

    Call: ``[B, D]`` -> ``[B, D]`` float32.
    """

    def __init__(self, epsilon: float = 1e-12, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = epsilon

    def call(self, x):
        return l2_normalize(keras.ops.cast(x, "float32"), self.epsilon)

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon}


def average_views(embeddings):
    """Unit embeddings of several views of an image -> their mean direction.

    The sum of the views' unit vectors, re-normalised: its cosine with a
    sentence ranks like the mean of the views' cosines (they differ by the
    positive factor ``|sum|``). Used for test-time flip averaging.

    Args:
        embeddings: V tensors ``[B, D]`` of unit rows.

    Returns:
        ``[B, D]`` unit rows.
    """
    total = embeddings[0]
    for embedding in embeddings[1:]:
        total = total + embedding
    return l2_normalize(total)


FEATURE_NORMS = ("l2", "batchnorm", "none")
"""``l2``: unit-normalise CNN features (Kiros); ``batchnorm``: standardise
each feature dimension with batch statistics (moving averages at
inference), then unit-normalise; ``none``."""


FINE_TUNE_BATCHNORM = ("frozen", "batch")
"""Batch norm of fine-tuned CNN layers while training: ImageNet statistics
(``frozen``) or batch statistics (``batch``)."""


@keras.saving.register_keras_serializable(package="vse_tf")
class ImageTower(keras.Model):
    """RGB images (or their cached CNN features) -> unit D-dim embeddings.

    ``call(pixels)``: ``float32 [B, S, S, 3]`` RGB in 0..255 -> ``[B, D]``.
    ``embed_features(features)``: ``[B, F]`` backbone features -> ``[B, D]``;
    training on cached features uses this and never runs the CNN.

    Args:
        embed_dim: D.
        image_feature: One of `catalog.image_features(backbone)`
            (VGG16: ``fc7``, ``pool5``, ``pool5_max``, ``pool5_avgmax``;
            EfficientNet-Lite: ``head_avg``, ``head_max``, ``head_avgmax``).
        image_size: Input size S.
        vgg_weights: VGG16's weights, ``imagenet|none|hed|PATH``.
        feature_norm: ``l2`` or ``none``: normalisation of the features
            before ``W_emb`` (Kiros normalises them).
        fine_tune_from: ``""`` keeps the CNN frozen; e.g. ``block5``.
        include_backbone: False builds only the head (training on cached
            features); ``call`` then raises.
        backbone_dtype: Dtype policy of the VGG16 (e.g. ``mixed_bfloat16``).
        feature_dim: Size F of the features ``W_emb`` reads; defaults to the
            backbone's (4096 fc7, 512 pool5, 1280 head_avg). Set it for
            precomputed features from another CNN (VSE++ ``*_precomp``);
            such a tower has no backbone.
        backbone: ``vgg16`` or ``efficientnet_lite0|1|2``.
        lite_weights: EfficientNet-Lite's weights, ``pretrained|none|PATH``.
        fine_tune_batchnorm: ``frozen`` (batch norm of the fine-tuned layers
            keeps its ImageNet statistics, as VSE++ and CLIP fine-tune on
            small data; gamma and beta still train) or ``batch`` (batch
            statistics while training, moving averages updated).
        flip_average: At inference, embed each image and its mirror image
            and average the two unit embeddings (`average_views`): test-time
            augmentation at twice the CNN's cost. Training is unchanged.
            Cached features of both views go through `embed_cached_views`.

    With ``fine_tune_from`` naming a point inside the trunk, the tower also
    holds ``trunk_top``: the layers from that point on (`split_backbone`,
    the same weights). ``embed_cached`` then takes the activations at the
    cut, ``[B, h*w*c]`` or ``[B, h, w, c]``, computed once by the frozen
    part (the cheap fine-tuning path of `vse_tf.train_lib`).

    Example:
        >>> tower = ImageTower(embed_dim=8, image_size=32, vgg_weights="none")
        >>> tower(np.zeros([2, 32, 32, 3], "float32")).shape
        TensorShape([2, 8])
    """

    def __init__(
        self,
        embed_dim: int,
        image_feature: str = "pool5",
        image_size: int = 224,
        vgg_weights: str = "none",
        feature_norm: str = "l2",
        fine_tune_from: str = "",
        include_backbone: bool = True,
        backbone_dtype: Optional[str] = None,
        feature_dim: Optional[int] = None,
        backbone: str = catalog.VGG16,
        lite_weights: str = "pretrained",
        fine_tune_batchnorm: str = "frozen",
        flip_average: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.flip_average = flip_average
        if feature_norm not in FEATURE_NORMS:
            raise ValueError(
                f"feature_norm must be one of {FEATURE_NORMS}, got {feature_norm!r}"
            )
        if fine_tune_batchnorm not in FINE_TUNE_BATCHNORM:
            raise ValueError(
                f"fine_tune_batchnorm must be one of {FINE_TUNE_BATCHNORM}, "
                f"got {fine_tune_batchnorm!r}"
            )
        self.embed_dim = embed_dim
        self.fine_tune_batchnorm = fine_tune_batchnorm
        self.image_feature = image_feature
        self.image_size = image_size
        self.vgg_weights = vgg_weights
        self.feature_norm = feature_norm
        self.fine_tune_from = fine_tune_from
        self.include_backbone = include_backbone
        self.backbone_dtype = backbone_dtype
        self.backbone_name = backbone
        self.lite_weights = lite_weights
        native_dim = catalog.feature_dim(backbone, image_feature)
        self.feature_dim = int(feature_dim or native_dim)
        if include_backbone and self.feature_dim != native_dim:
            raise ValueError(
                f"feature_dim={feature_dim} does not match the {image_feature} "
                f"backbone ({native_dim}); use include_backbone=False"
            )
        self.backbone = None
        if include_backbone:
            self.backbone = backbone_lib.build_backbone(
                backbone,
                image_feature,
                image_size,
                self.backbone_weights,
                dtype=backbone_dtype,
            )
            backbone_lib.set_fine_tuning(self.backbone, fine_tune_from)
        self.trunk_top = None
        if self.backbone is not None and fine_tune_from not in ("", "all"):
            _, self.trunk_top = backbone_lib.split_backbone(
                self.backbone, fine_tune_from, image_feature
            )
        self.feature_normalize = L2Normalize(name="feature_l2")
        self.feature_bn = None
        if feature_norm == "batchnorm":
            # Synchronized: under tf.distribute the batch statistics are
            # those of the global batch, as on one device.
            self.feature_bn = keras.layers.BatchNormalization(
                synchronized=True, name="feature_bn"
            )
            self.feature_bn.build((None, self.feature_dim))
        self.w_emb = keras.layers.Dense(embed_dim, name="W_emb")
        self.normalize = L2Normalize(name="embedding_l2")
        self.w_emb.build((None, self.feature_dim))
        self.built = True  # the backbone and W_emb are built above

    @property
    def backbone_weights(self) -> str:
        """``vgg_weights`` or ``lite_weights``, whichever the backbone uses."""
        return catalog.weights_for(
            self.backbone_name, self.vgg_weights, self.lite_weights
        )

    def embed_features(self, features, training=False):
        """``[B, F]`` CNN features -> ``[B, D]`` unit embeddings."""
        features = keras.ops.cast(features, "float32")
        if self.feature_bn is not None:
            features = self.feature_bn(features, training=training)
        if self.feature_norm in ("l2", "batchnorm"):
            features = self.feature_normalize(features)
        return self.normalize(self.w_emb(features))

    @property
    def cut_shape(self) -> Optional[tuple[int, ...]]:
        """``(h, w, c)`` of the activations ``embed_cached`` takes (None: features)."""
        if self.trunk_top is None:
            return None
        return tuple(int(d) for d in self.trunk_top.input.shape[1:])

    def _trunk_training(self, training) -> bool:
        """The CNN's ``training`` flag: batch norm stays frozen unless ``batch``."""
        return bool(training) and self.fine_tune_batchnorm == "batch"

    def embed_cached(self, cached, training=False):
        """What the feature cache holds for this tower -> ``[B, D]`` embeddings.

        Args:
            cached: ``[B, F]`` features of the frozen CNN, or, for a tower
                with ``trunk_top``, the activations at the cut (``[B, h*w*c]``
                flattened or ``[B, h, w, c]``, any float dtype).
            training: Training mode (batch norm of ``feature_norm``).
        """
        if self.trunk_top is None:
            return self.embed_features(cached, training=training)
        activations = keras.ops.reshape(
            keras.ops.cast(cached, "float32"), (-1, *self.cut_shape)
        )
        features = self.trunk_top(activations, training=self._trunk_training(training))
        return self.embed_features(features, training=training)

    def embed_cached_views(self, cached_views):
        """Cached features (or activations) of several views -> one embedding.

        Args:
            cached_views: ``[V, B, ...]``: what `embed_cached` takes, for V
                views of the same B images (the image and its mirror).

        Returns:
            ``[B, D]``: the views' unit embeddings averaged (`average_views`).
        """
        views = keras.ops.unstack(keras.ops.convert_to_tensor(cached_views), axis=0)
        return average_views([self.embed_cached(view) for view in views])

    def call(self, pixels, training=False):
        if self.backbone is None:
            raise ValueError(
                "this image tower was built without its backbone "
                "(include_backbone=False); use embed_features()"
            )
        if self.flip_average and not training:
            # One trunk pass over both views ([2B, S, S, 3]): an exported
            # graph then holds each layer once, so its weights are not
            # shared between two copies (which weight-only quantisation of
            # some of the layers cannot store).
            mirrored = keras.ops.flip(pixels, axis=2)
            both = self._embed_pixels(keras.ops.concatenate([pixels, mirrored], 0))
            views = keras.ops.reshape(both, (2, -1, self.embed_dim))
            return average_views([views[0], views[1]])
        return self._embed_pixels(pixels, training=training)

    def _embed_pixels(self, pixels, training=False):
        features = self.backbone(pixels, training=self._trunk_training(training))
        return self.embed_features(features, training=training)

    def get_config(self):
        config = super().get_config()
        config.update(
            embed_dim=self.embed_dim,
            image_feature=self.image_feature,
            image_size=self.image_size,
            vgg_weights=self.vgg_weights,
            feature_norm=self.feature_norm,
            fine_tune_from=self.fine_tune_from,
            include_backbone=self.include_backbone,
            backbone_dtype=self.backbone_dtype,
            feature_dim=self.feature_dim,
            backbone=self.backbone_name,
            lite_weights=self.lite_weights,
            fine_tune_batchnorm=self.fine_tune_batchnorm,
            flip_average=self.flip_average,
        )
        return config
