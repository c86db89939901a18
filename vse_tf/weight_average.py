"""An exponential moving average of a model's weights (Polyak averaging).

Training at a high learning rate leaves the weights noisy from step to step;
their running average often scores better than the weights of any one step
(SWA, Izmailov et al. 2018; EMA in CLIP and big_vision fine-tuning; on
Flickr8k 13-27 dev rsum at every epoch before a learning-rate drop,
docs/flickr8k_recipe.md rows F16-F19) and costs one multiply-add per
weight per step. Evaluating and keeping the average instead of the raw
weights turns that into a better model at no training cost beyond the
update.

After its ``t``-th update (``t`` from 1), each shadow ``s`` of a weight ``w``
is::

    d_t = min(decay, (1 + t) / (10 + t))
    s  <- d_t * s + (1 - d_t) * w

the warm-up of `tf.train.ExponentialMovingAverage` (``num_updates``): the
first, poorly trained weights fade within tens of steps. Until ``d_t``
reaches ``decay`` the average spans about the last ninth of the steps so
far (``1 / (1 - d_t) = (10 + t) / 9``); from then on about
``1 / (1 - decay)`` steps (500 at 0.998, from step 4,490).

Example:
    >>> average = WeightAverage(model.trainable_variables, decay=0.999)
    >>> average.update(model.trainable_variables)  # after each step
    >>> average.swap(model.trainable_variables)  # the average in the model
    >>> ...  # evaluate, save
    >>> average.swap(model.trainable_variables)  # the raw weights back
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import tensorflow as tf

# The warm-up of tf.train.ExponentialMovingAverage: d_t <= (1 + t) / (10 + t).
_WARMUP = 10.0


class WeightAverage(tf.Module):
    """Shadow copies of some variables, moved towards them by `update`.

    The shadows are `tf.Variable`s of this module (a checkpoint of it saves
    and restores them and the update count); the averaged variables are
    passed to each call, in the order given at construction, so the module
    holds no second reference to the model's weights.

    Args:
        variables: The variables to average (e.g. a model's
            ``trainable_variables``); the shadows start equal to them.
        decay: The average's decay per update, in ``(0, 1)``.
    """

    def __init__(self, variables: Sequence[tf.Variable], decay: float):
        super().__init__(name="weight_average")
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must be in (0, 1), got {decay}")
        self.decay = float(decay)
        # ONLY_FIRST_REPLICA: under a tf.distribute strategy every replica
        # holds the same weights, so one replica's update is the update.
        aggregation = tf.VariableAggregation.ONLY_FIRST_REPLICA
        self.updates = tf.Variable(
            0, dtype=tf.int64, trainable=False, name="updates", aggregation=aggregation
        )
        self.shadows = [
            tf.Variable(
                tf.convert_to_tensor(v),
                trainable=False,
                name=f"shadow_{i}",
                aggregation=aggregation,
            )
            for i, v in enumerate(variables)
        ]
        self._update = tf.function(self._update_graph)
        self._swap = tf.function(self._swap_graph)

    def update(self, variables: Sequence[tf.Variable]) -> None:
        """One step of the average: each shadow moves towards its variable."""
        self._update(self._tf_variables(variables))

    def swap(self, variables: Sequence[tf.Variable]) -> None:
        """Exchanges the variables' values with the shadows' (its own inverse)."""
        self._swap(self._tf_variables(variables))

    def _tf_variables(self, variables: Sequence[tf.Variable]) -> list[tf.Variable]:
        """The variables as `tf.Variable`s (a tf.function reads a Keras
        variable as a tensor: it could not assign to it)."""
        if len(variables) != len(self.shadows):
            raise ValueError(
                f"{len(variables)} variables given, {len(self.shadows)} averaged"
            )
        # A Keras variable's `value` is its tf.Variable (outside an autocast
        # scope, as in a callback).
        return [v.value if isinstance(v, keras.Variable) else v for v in variables]

    def _update_graph(self, variables):
        self.updates.assign_add(1)
        step = tf.cast(self.updates, tf.float32)
        decay = tf.minimum(self.decay, (1.0 + step) / (_WARMUP + step))
        for shadow, variable in zip(self.shadows, variables):
            value = tf.cast(tf.convert_to_tensor(variable), shadow.dtype)
            shadow.assign(decay * shadow + (1.0 - decay) * value)

    def _swap_graph(self, variables):
        for shadow, variable in zip(self.shadows, variables):
            raw = tf.identity(tf.convert_to_tensor(variable))
            variable.assign(tf.convert_to_tensor(shadow))
            shadow.assign(raw)
