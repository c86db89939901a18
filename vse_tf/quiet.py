"""Imports TensorFlow without its start-up chatter on stderr.

TensorFlow 2.19+ logs through absl's C++ logging before anything can
configure it, so ``TF_CPP_MIN_LOG_LEVEL`` no longer hides the CUDA probes,
oneDNN and CPU-feature notices (tensorflow/tensorflow#100442), and the
first device query logs ``failed call to cuInit`` at ERROR level on a
machine without a GPU. The command-line entry points call
`import_tensorflow` first; a user who sets ``TF_CPP_MIN_LOG_LEVEL``
themselves sees everything again.
"""

from __future__ import annotations

import os
import sys


def import_tensorflow() -> None:
    """Imports tensorflow (and probes its devices) with fd 2 sent to /dev/null.

    Does nothing when TensorFlow is already imported or when
    ``TF_CPP_MIN_LOG_LEVEL`` is set. Python exceptions are not hidden: they
    are raised after stderr is restored.
    """
    if "tensorflow" in sys.modules or "TF_CPP_MIN_LOG_LEVEL" in os.environ:
        return
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "1"
    sys.stderr.flush()
    saved = os.dup(2)
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    try:
        import tensorflow as tf

        tf.config.list_physical_devices()  # the CUDA probe logs here
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)
