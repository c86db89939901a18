"""vse_tf: visual-semantic embeddings (Kiros et al.) in TensorFlow/Keras.

The notebook surface (imported lazily, so ``import vse_tf`` is instant):

* `Embedder`: load a training workdir, a preset (a folder or
  ``hf://owner/name``), an exported SavedModel or a TF Serving address;
  ``encode_images``, ``encode_texts``, ``search``, ``evaluate``,
  ``save_preset``.
* `Index`: a loaded index (``Index.from_embeddings`` makes one in memory).
* `get_config`, `Config`, `override`: the typed config and its presets.
* `train_and_evaluate`: what ``python -m trainers.train`` runs.

See README "Use it from Python".
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Embedder": ("vse_tf.api", "Embedder"),
    "Index": ("vse_tf.retrieval.index_lib", "Index"),
    "Config": ("vse_tf.config", "Config"),
    "get_config": ("vse_tf.config", "get_config"),
    "override": ("vse_tf.config", "override"),
    "train_and_evaluate": ("vse_tf.train_lib", "train_and_evaluate"),
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'vse_tf' has no attribute {name!r}")
    module, attribute = _EXPORTS[name]
    from vse_tf import quiet

    quiet.import_tensorflow()  # without its start-up lines, as the commands do
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
