"""K trained models as one: their towers side by side, one embedding space.

The ensemble VSE++, SCAN and m-CNN report scores a pair by the mean of the
K models' cosines. With each model's unit embeddings concatenated and
divided by sqrt(K), the result is a unit vector whose dot product with
another such vector is exactly that mean; so an ensemble is one pair of
towers (`EnsembleImageTower`, `EnsembleTextTower`) that exports, indexes and
serves like a single model, with D = the sum of the members' D.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import keras

from vse_tf.models.image_tower import ImageTower
from vse_tf.models.text_tower import LSTMTextTower


def side_by_side(embeddings: list) -> object:
    """``[B, D_k]`` unit rows of K models -> ``[B, sum D_k]`` unit rows."""
    scale = 1.0 / math.sqrt(len(embeddings))
    return keras.ops.concatenate(embeddings, axis=-1) * scale


def _check_members(members: Sequence, kind: str) -> list:
    members = list(members)
    if len(members) < 2:
        raise ValueError(f"an ensemble needs at least two {kind} towers")
    return members


class _Towers(keras.Model):
    """Serialises the member towers of an ensemble tower (its only argument)."""

    def get_config(self):
        config = super().get_config()
        config["members"] = [
            keras.saving.serialize_keras_object(m) for m in self.members
        ]
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["members"] = [
            keras.saving.deserialize_keras_object(m) for m in config["members"]
        ]
        return cls(**config)


@keras.saving.register_keras_serializable(package="vse_tf")
class EnsembleImageTower(_Towers):
    """Images -> the members' image embeddings side by side (`module doc`).

    ``call(pixels)``: ``float32 [B, S, S, 3]`` RGB 0..255 -> ``[B, sum D_k]``.
    Every member must take the same input size and have its CNN. There is no
    ``embed_features``: members fine-tuned differently compute different
    features from the same pixels.

    Args:
        members: Two or more `ImageTower` built with their backbones.
    """

    def __init__(self, members: Sequence[ImageTower], **kwargs):
        super().__init__(**kwargs)
        self.members = _check_members(members, "image")
        sizes = {member.image_size for member in self.members}
        if len(sizes) != 1:
            raise ValueError(f"the members take different image sizes: {sorted(sizes)}")
        if any(member.backbone is None for member in self.members):
            raise ValueError("every member needs its CNN (include_backbone=True)")
        self.image_size = sizes.pop()
        self.embed_dim = sum(member.embed_dim for member in self.members)
        self.backbone = self.members[0].backbone  # (has a CNN: the export checks)
        self.backbone_name = "+".join(m.backbone_name for m in self.members)
        self.feature_dim = None  # no shared feature input
        self.built = True

    def call(self, pixels, training=False):
        return side_by_side([m(pixels, training=training) for m in self.members])


@keras.saving.register_keras_serializable(package="vse_tf")
class EnsembleTextTower(_Towers):
    """Sentences (or token ids) -> the members' text embeddings side by side.

    ``call(sentences)``: ``tf.string [B]`` -> ``[B, sum D_k]``;
    ``encode_tokens(token_ids)``: ``int32 [B, L]`` -> the same. The members
    must share their vocabulary and ``max_length`` (models trained on the
    same captions do), so one tokenisation serves them all.

    Args:
        members: Two or more `LSTMTextTower`.
    """

    def __init__(self, members: Sequence[LSTMTextTower], **kwargs):
        super().__init__(**kwargs)
        self.members = _check_members(members, "text")
        first = self.members[0]
        for member in self.members[1:]:
            if member.vocabulary != first.vocabulary:
                raise ValueError(
                    "the members have different vocabularies: ensemble models "
                    "trained on the same captions"
                )
            if member.max_length != first.max_length:
                raise ValueError("the members keep different numbers of words")
        self.vocabulary = first.vocabulary
        self.max_length = first.max_length
        self.tokenizer = first.tokenizer
        self.embed_dim = sum(member.embed_dim for member in self.members)
        self.built = True

    def encode_tokens(self, token_ids, training=False):
        """``int32 [B, L]`` padded token ids -> ``[B, sum D_k]``."""
        return side_by_side(
            [m.encode_tokens(token_ids, training=training) for m in self.members]
        )

    def call(self, sentences, training=False):
        return self.encode_tokens(self.tokenizer(sentences), training=training)


class Ensemble:
    """K trained `VSEModel` as one: ``image_tower`` and ``text_tower``.

    What the export and the retrieval code read of a model; not trainable.

    Args:
        models: Two or more trained models (CNNs included) of the same
            captions and image size.
    """

    def __init__(self, models: Sequence):
        models = list(models)
        self.models = models
        self.image_tower = EnsembleImageTower(
            [m.image_tower for m in models], name="image_tower"
        )
        self.text_tower = EnsembleTextTower(
            [m.text_tower for m in models], name="text_tower"
        )
