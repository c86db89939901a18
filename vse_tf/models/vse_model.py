"""The joint model: composes the two towers and trains them with the ranking loss."""

from __future__ import annotations

import keras
import tensorflow as tf

from vse_tf import losses
from vse_tf.models.image_tower import VGG16ImageTower
from vse_tf.models.text_tower import LSTMTextTower


@keras.saving.register_keras_serializable(package="vse_tf")
class VSEModel(keras.Model):
    """Image and text towers trained into one space with a pairwise ranking loss.

    Inputs are dicts. Images come as ``"image_features"`` (``[B, F]`` cached
    CNN features; frozen CNN) or ``"images"`` (``[B, S, S, 3]`` RGB 0..255;
    fine-tuning); text as ``"token_ids"`` (``int32 [B, L]``) or ``"text"``
    (``tf.string [B]``). Training batches also carry ``"image_ids"``
    (``int [B]``) so two captions of one image are not used as negatives.

    ``call`` returns ``{"image_embedding": [B, D], "text_embedding": [B, D]}``;
    the score of a pair is the dot product (cosine similarity) of the two.

    Args:
        image_tower: A `VGG16ImageTower`.
        text_tower: An `LSTMTextTower`.
        margin: Hinge margin alpha.
        loss_mode: ``sum`` or ``max`` (see `vse_tf.losses.ranking_loss`).
        mask_same_image: Use ``image_ids`` to drop false negatives.
    """

    def __init__(
        self,
        image_tower: VGG16ImageTower,
        text_tower: LSTMTextTower,
        margin: float = 0.2,
        loss_mode: str = "sum",
        mask_same_image: bool = True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if loss_mode not in losses.LOSS_MODES:
            raise ValueError(f"loss_mode must be one of {losses.LOSS_MODES}")
        self.image_tower = image_tower
        self.text_tower = text_tower
        self.margin = margin
        self.loss_mode = loss_mode
        self.mask_same_image = mask_same_image
        self.loss_tracker = keras.metrics.Mean(name="loss")

    def build(self, input_shape=None):
        # The towers build their own weights on first use.
        self.built = True

    @property
    def metrics(self):
        return [self.loss_tracker]

    def embed_images(self, inputs, training=False):
        if "image_features" in inputs:
            return self.image_tower.embed_features(inputs["image_features"])
        return self.image_tower(inputs["images"], training=training)

    def embed_text(self, inputs, training=False):
        if "token_ids" in inputs:
            return self.text_tower.encode_tokens(inputs["token_ids"], training=training)
        return self.text_tower(inputs["text"], training=training)

    def call(self, inputs, training=False):
        return {
            "image_embedding": self.embed_images(inputs, training),
            "text_embedding": self.embed_text(inputs, training),
        }

    def compute_ranking_loss(self, inputs, training=False):
        """The batch's summed ranking loss (scalar float32)."""
        outputs = self(inputs, training=training)
        image_ids = inputs.get("image_ids") if self.mask_same_image else None
        return losses.ranking_loss(
            outputs["image_embedding"],
            outputs["text_embedding"],
            margin=self.margin,
            mode=self.loss_mode,
            image_ids=image_ids,
        )

    def train_step(self, data):
        data, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        with tf.GradientTape() as tape:
            loss = self.compute_ranking_loss(data, training=True)
        variables = self.trainable_variables
        gradients = tape.gradient(loss, variables)
        self.optimizer.apply_gradients(zip(gradients, variables))
        self.loss_tracker.update_state(loss)
        return {"loss": self.loss_tracker.result()}

    def test_step(self, data):
        data, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        self.loss_tracker.update_state(self.compute_ranking_loss(data))
        return {"loss": self.loss_tracker.result()}

    def get_config(self):
        config = super().get_config()
        config.update(
            image_tower=keras.saving.serialize_keras_object(self.image_tower),
            text_tower=keras.saving.serialize_keras_object(self.text_tower),
            margin=self.margin,
            loss_mode=self.loss_mode,
            mask_same_image=self.mask_same_image,
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["image_tower"] = keras.saving.deserialize_keras_object(
            config["image_tower"]
        )
        config["text_tower"] = keras.saving.deserialize_keras_object(
            config["text_tower"]
        )
        return cls(**config)
