"""Loading an exported SavedModel: which version folder, and the ops it needs.

`saved_model_lib` writes exports; everything that reads one (the index
encoder, the serving checks, `vse_tf.Embedder`) loads it through here.
"""

from __future__ import annotations

import os

import tensorflow as tf

from vse_tf import errors


def load_saved_model(path: str):
    """Loads an exported version; registers the tensorflow-text ops first."""
    import tensorflow_text  # noqa: F401  (the graph's tokenizer ops)

    return tf.saved_model.load(path)


def resolve_version(path: str) -> str:
    """A version folder: ``path`` itself, or the newest numbered version in it.

    Raises:
        errors.MissingError: when ``path`` holds no SavedModel.
    """
    if os.path.isfile(os.path.join(path, "saved_model.pb")):
        return path
    versions = (
        sorted((int(name) for name in os.listdir(path) if name.isdigit()), reverse=True)
        if os.path.isdir(path)
        else []
    )
    for version in versions:
        candidate = os.path.join(path, str(version))
        if os.path.isfile(os.path.join(candidate, "saved_model.pb")):
            return candidate
    raise errors.MissingError(
        f"{path} is neither a training workdir (config.json) nor an exported "
        "SavedModel (saved_model.pb, or numbered versions holding one); train "
        "with trainers.train or export with export.export_saved_model"
    )
