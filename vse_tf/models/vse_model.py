"""The joint model: composes the two towers and trains them with the ranking loss."""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from vse_tf import losses
from vse_tf.models import backbone as backbone_lib
from vse_tf.models.image_tower import ImageTower
from vse_tf.models.text_tower import LSTMTextTower

LOSS_MODES = (*losses.LOSS_MODES, "sum_then_max", "infonce")


@keras.saving.register_keras_serializable(package="vse_tf")
class VSEModel(keras.Model):
    """Image and text towers trained into one space with a pairwise ranking loss.

    Inputs are dicts. Images come as ``"image_features"`` (what the feature
    cache holds: ``[B, F]`` features of a frozen CNN, or, when fine-tuning
    the cheap way, the activations where fine-tuning starts,
    ``[B, h*w*c]``; see `ImageTower.embed_cached`) or ``"images"``
    (``[B, S, S, 3]`` RGB 0..255; fine-tuning on images); text as
    ``"token_ids"`` (``int32 [B, L]``) or ``"text"`` (``tf.string [B]``).
    Training batches also carry ``"image_ids"`` (``int [B]``) so two
    captions of one image are not used as negatives, and
    may carry ``"hard_negatives"`` (``int32 [B]``, 0 or 1, equal across the
    batch):
    with ``loss_mode="sum_then_max"`` it picks the hardest-negative loss for
    that batch (the input pipeline sets it from the epoch: a warm-up with
    the sum of hinges, then the max, as VSE-infinity does).

    Under a `tf.distribute` strategy each replica embeds its share of the
    global batch; the embeddings (and image ids) are all-gathered inside
    `train_step` so every pair is contrasted with the negatives of the whole
    global batch, and each replica's loss is divided by the number of
    replicas, so the summed gradients equal one device's on the same global
    batch.

    ``call`` returns ``{"image_embedding": [B, D], "text_embedding": [B, D]}``;
    the score of a pair is the dot product (cosine similarity) of the two.

    Args:
        image_tower: A `ImageTower`.
        text_tower: An `LSTMTextTower`.
        margin: Hinge margin alpha.
        loss_mode: ``sum`` or ``max`` (see `vse_tf.losses.ranking_loss`),
            ``sum_then_max`` (per batch, from ``"hard_negatives"``), or
            ``infonce`` (`vse_tf.losses.infonce_loss` with a learnt or
            fixed temperature).
        temperature: Initial InfoNCE temperature (learnt as
            ``log(1 / temperature)``, CLIP's parameterisation, and clamped
            to ``[0.01, 1]``).
        learn_temperature: Train the InfoNCE temperature (CLIP); False
            keeps it at ``temperature`` (a non-trainable weight).
        mask_same_image: Use ``image_ids`` to drop false negatives.
        text_compute_dtype: Training matmuls of the text LSTM in
            ``float32`` or ``bfloat16`` (`LSTMTextTower.encode_tokens_fused`).
        trunk_compute_dtype: Training matmuls of the fine-tuned CNN layers
            (their convolutions and dense layers, `backbone.matmul_layers`)
            in ``float32`` or ``bfloat16`` (float32 weights; evaluation and
            export stay float32; `backbone.computing_in`).
        jit_compile_text: Compile the training text tower with XLA. The
            LSTM's gradient keeps per-step values in TensorLists, which may
            not cross an XLA cluster's edge (TF 2.21), so this compiles the
            whole train step; with cached features the rest of it is only
            the image head and the loss. Not available when fine-tuning the
            CNN (XLA made VGG16 6x slower on CPU).
        jit_compile_image: Compile the training image tower with XLA.
        grad_clip_norm: Clip the global batch's gradient to this global norm
            (0 = off). Done here, after the cross-replica sum, because a
            Keras optimizer's ``global_clipnorm`` clips each replica's
            partial gradient before the sum (Keras 3.15), which would make
            N replicas differ from one device.

    Attributes:
        trunk_optimizer: None (one optimizer for every trainable variable),
            or the optimizer of the fine-tuned CNN layers
            (``image_tower.backbone``): with its own learning rate, a
            fraction of the head's (`vse_tf.train_lib.make_optimizer`), as
            small-data fine-tuning wants. Set it before training; it is
            part of the model's checkpoint.
    """

    def __init__(
        self,
        image_tower: ImageTower,
        text_tower: LSTMTextTower,
        margin: float = 0.2,
        loss_mode: str = "sum",
        mask_same_image: bool = True,
        text_compute_dtype: str = "float32",
        trunk_compute_dtype: str = "float32",
        jit_compile_text: bool = False,
        jit_compile_image: bool = False,
        grad_clip_norm: float = 0.0,
        temperature: float = 0.07,
        learn_temperature: bool = True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if loss_mode not in LOSS_MODES:
            raise ValueError(f"loss_mode must be one of {LOSS_MODES}")
        self.image_tower = image_tower
        self.text_tower = text_tower
        self.margin = margin
        self.loss_mode = loss_mode
        self.mask_same_image = mask_same_image
        self.text_compute_dtype = text_compute_dtype
        self.trunk_compute_dtype = trunk_compute_dtype
        self.jit_compile_text = jit_compile_text
        self.jit_compile_image = jit_compile_image
        self.grad_clip_norm = grad_clip_norm
        self.temperature = temperature
        self.learn_temperature = learn_temperature
        self.log_inverse_temperature = None
        if loss_mode == "infonce":
            self.log_inverse_temperature = self.add_weight(
                shape=(),
                initializer=keras.initializers.Constant(math.log(1.0 / temperature)),
                name="log_inverse_temperature",
                trainable=learn_temperature,
            )
        self.trunk_optimizer = None  # see `trunk_optimizer` in the class doc
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self._train_image_fn = tf.function(
            self._train_image, jit_compile=jit_compile_image, reduce_retracing=True
        )

    def build(self, input_shape=None):
        # The towers build their own weights on first use.
        self.built = True

    # Keras 3.15 + MultiWorkerMirroredStrategy workarounds (both here):
    # 1. fit() first averages a batch across replicas to build the model
    #    symbolically, and that reduce fails on a dict of PerReplica values.
    #    `train_lib` builds the model and the optimizer inside the strategy
    #    scope before fit(), so there is nothing left to build.
    # 2. fit() reduces the returned logs with a cross-worker MEAN over axis
    #    0, which fails on scalars: logs get shape [1] under that strategy.

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        if self.built and getattr(self.optimizer, "built", False):
            return
        super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    def _logs(self, value: tf.Tensor) -> dict:
        strategy = tf.distribute.get_strategy()
        if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
            value = tf.reshape(value, [1])
        return {"loss": value}

    @property
    def metrics(self):
        return [self.loss_tracker]

    def embed_images(self, inputs, training=False):
        if "image_features" in inputs:  # features, or activations at the cut
            return self.image_tower.embed_cached(
                inputs["image_features"], training=training
            )
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

    def compile(self, *args, jit_compile=False, **kwargs):
        """`keras.Model.compile`; ``jit_compile_text`` turns on ``jit_compile``."""
        if self.jit_compile_text:
            if self.image_tower.backbone is not None:
                raise ValueError(
                    "jit_compile_text needs cached image features (a frozen "
                    "CNN): it compiles the whole train step, and XLA makes "
                    "VGG16 slower on CPU"
                )
            jit_compile = True
        super().compile(*args, jit_compile=jit_compile, **kwargs)

    def _train_text(self, inputs):
        if "token_ids" in inputs:
            return self.text_tower.encode_tokens_fused(
                inputs["token_ids"],
                self.text_compute_dtype,
                # XLA needs static shapes: every row runs every step.
                packed=not self.jit_compile_text,
            )
        return self.text_tower(inputs["text"], training=True)

    def _train_image(self, inputs):
        backbone = self.image_tower.backbone
        trained = [] if backbone is None else backbone_lib.matmul_layers(backbone)
        with backbone_lib.computing_in(trained, self.trunk_compute_dtype):
            return self.embed_images(inputs, training=True)

    def _loss(self, image_emb, text_emb, inputs):
        """Summed ranking loss of one (global) batch of embeddings."""
        image_ids = inputs.get("image_ids") if self.mask_same_image else None
        if self.loss_mode == "infonce":
            return losses.infonce_loss(
                image_emb,
                text_emb,
                tf.exp(-self.log_inverse_temperature),
                image_ids=image_ids,
            )

        def loss(mode):
            return losses.ranking_loss(
                image_emb, text_emb, self.margin, mode=mode, image_ids=image_ids
            )

        if self.loss_mode != "sum_then_max":
            return loss(self.loss_mode)
        hard = inputs.get("hard_negatives")
        if hard is None:
            return loss("max")
        return tf.cond(
            tf.reduce_any(tf.cast(hard, tf.bool)),
            lambda: loss("max"),
            lambda: loss("sum"),
        )

    def compute_ranking_loss(self, inputs, training=False):
        """The batch's loss (scalar float32): summed hinges, or InfoNCE."""
        outputs = self(inputs, training=training)
        return self._loss(outputs["image_embedding"], outputs["text_embedding"], inputs)

    def train_step(self, data):
        data, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        context = tf.distribute.get_replica_context()
        replicas = context.num_replicas_in_sync if context is not None else 1
        with tf.GradientTape() as tape:
            image_emb = self._train_image_fn(data)
            text_emb = self._train_text(data)
            gathered = {
                key: data[key] for key in ("image_ids", "hard_negatives") if key in data
            }
            if replicas > 1:
                # Negatives span the global batch: every replica sees every
                # replica's embeddings (all_gather is differentiable: the
                # gradient of each copy flows back to the replica that made it).
                image_emb = context.all_gather(image_emb, axis=0)
                text_emb = context.all_gather(text_emb, axis=0)
                # int32 (all_gather sums padded copies: no bool), and a new op
                # in the replica's device scope: a tensor straight from the
                # input pipeline has no device, which multi-worker collectives
                # reject ("destinations can not be empty", TF 2.21).
                gathered = {
                    key: context.all_gather(
                        tf.identity(tf.cast(value, tf.int32)), axis=0
                    )
                    for key, value in gathered.items()
                }
            loss = self._loss(image_emb, text_emb, gathered)
            # Each replica holds the whole global loss; gradients are summed
            # across replicas, so 1/replicas makes them equal one device's.
            scaled_loss = loss / replicas
        variables = self.trainable_variables
        gradients = tape.gradient(scaled_loss, variables)
        if replicas > 1:
            # The global batch's gradient on every replica...
            gradients = context.all_reduce(tf.distribute.ReduceOp.SUM, gradients)
        if self.grad_clip_norm:
            gradients, _ = tf.clip_by_global_norm(gradients, self.grad_clip_norm)
        if replicas > 1:
            # ...divided again, as the optimizer sums across replicas.
            gradients = [g / replicas for g in gradients]
        self._apply(gradients, variables)
        self.loss_tracker.update_state(loss)
        return self._logs(self.loss_tracker.result())

    def trunk_variables(self) -> list:
        """The trainable variables of the CNN (what ``trunk_optimizer`` updates)."""
        backbone = self.image_tower.backbone
        return [] if backbone is None else list(backbone.trainable_variables)

    def _apply(self, gradients, variables) -> None:
        """Applies the step: the CNN's share with ``trunk_optimizer``, if set."""
        if self.trunk_optimizer is None:
            self.optimizer.apply_gradients(zip(gradients, variables))
            return
        trunk = {id(v) for v in self.trunk_variables()}
        pairs = list(zip(gradients, variables))
        self.optimizer.apply_gradients([p for p in pairs if id(p[1]) not in trunk])
        self.trunk_optimizer.apply_gradients([p for p in pairs if id(p[1]) in trunk])

    def test_step(self, data):
        data, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        self.loss_tracker.update_state(self.compute_ranking_loss(data))
        return self._logs(self.loss_tracker.result())

    def get_config(self):
        config = super().get_config()
        config.update(
            image_tower=keras.saving.serialize_keras_object(self.image_tower),
            text_tower=keras.saving.serialize_keras_object(self.text_tower),
            margin=self.margin,
            loss_mode=self.loss_mode,
            mask_same_image=self.mask_same_image,
            text_compute_dtype=self.text_compute_dtype,
            trunk_compute_dtype=self.trunk_compute_dtype,
            jit_compile_text=self.jit_compile_text,
            jit_compile_image=self.jit_compile_image,
            grad_clip_norm=self.grad_clip_norm,
            temperature=self.temperature,
            learn_temperature=self.learn_temperature,
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
