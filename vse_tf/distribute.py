"""`tf.distribute` strategies for training, and who writes files under them.

``strategy`` names (``TrainConfig.strategy``):

* ``one_device``: the first GPU, else the CPU.
* ``mirrored``: every local GPU; without GPUs, every logical CPU device
  (`split_cpu` makes several, which is how the tests run two replicas).
* ``multi_worker``: `tf.distribute.MultiWorkerMirroredStrategy`; each
  worker runs the same command with its own ``TF_CONFIG``.
* ``tpu``: `tf.distribute.TPUStrategy` on the TPU named by ``$TPU_NAME``
  (or the local one).

Each replica embeds its slice of the global batch and `VSEModel.train_step`
all-gathers the embeddings, so negatives always span the global batch and N
replicas compute the same loss and update as one device with that batch.

Under ``multi_worker`` only the chief writes the workdir (checkpoints,
metrics, logs); the other workers save into a scratch folder that is
deleted afterwards (saving is a collective operation, so they must take
part).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Optional

import tensorflow as tf

STRATEGIES = ("one_device", "mirrored", "multi_worker", "tpu")


def split_cpu(count: int) -> None:
    """Splits the CPU into ``count`` logical devices (before TF starts).

    Args:
        count: Number of logical CPU devices.

    Raises:
        RuntimeError: if TensorFlow's devices are already initialised.
    """
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(count)]
    )


def get_strategy(name: str) -> tf.distribute.Strategy:
    """The `tf.distribute.Strategy` called ``name`` (see module docstring).

    Raises:
        ValueError: for an unknown name, or ``multi_worker`` without
            ``TF_CONFIG``.
    """
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; choose from {STRATEGIES}")
    if name == "one_device":
        gpus = tf.config.list_logical_devices("GPU")
        return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
    if name == "mirrored":
        devices = [d.name for d in tf.config.list_logical_devices("GPU")]
        if not devices:
            devices = [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices)
    if name == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise ValueError(
                "strategy multi_worker needs TF_CONFIG (cluster and task) in the "
                "environment of every worker; see README 'Train faster'"
            )
        return tf.distribute.MultiWorkerMirroredStrategy()
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(
        tpu=os.environ.get("TPU_NAME", "")
    )
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


def is_chief(strategy: Optional[tf.distribute.Strategy] = None) -> bool:
    """Whether this process writes the workdir (always, unless multi-worker)."""
    strategy = strategy or tf.distribute.get_strategy()
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return True
    resolver = strategy.cluster_resolver
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type is None:
        return True
    if task_type == "chief":
        return True
    cluster = json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {})
    return task_type == "worker" and task_id == 0 and "chief" not in cluster


class WriteDir:
    """The folder this process writes ``path`` to: itself on the chief.

    Non-chief workers get a scratch folder (removed by `cleanup`), so that
    they can take part in collective saves without touching the workdir.
    """

    def __init__(self, path: str, chief: bool):
        self.chief = chief
        self.path = path if chief else tempfile.mkdtemp(prefix="vse_tf_worker_")

    def join(self, *parts: str) -> str:
        return os.path.join(self.path, *parts)

    def cleanup(self) -> None:
        if not self.chief:
            shutil.rmtree(self.path, ignore_errors=True)
