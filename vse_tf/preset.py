"""A trained model as a preset folder to hand to others, with its model card.

A preset is a folder (keras-hub's shape)::

    config.json          the vse_tf config it was trained with (paths of the
                         training machine removed)
    metadata.json        format, vse_tf/Keras/TensorFlow versions, the data
                         set and its split sizes, the dev (and test) tables,
                         training time and machine, the weight shapes
    model.weights.h5     both towers (the CNN included), Keras's HDF5 weights
    vocab.txt            the text tower's vocabulary (its tokenizer's asset)
    README.md            the model card: Hugging Face YAML front matter
                         (library_name: vse_tf, tags, datasets, metrics,
                         model-index), then what it is, how it was trained,
                         its tables, intended use and limits

`vse_tf.preset_writer.write_preset` writes one from a training workdir;
`load_preset` rebuilds the model from a folder or ``hf://owner/name[@rev]``
(through ``huggingface_hub``, the ``hub`` extra, which honours its cache and
``HF_HUB_OFFLINE``).

Loading never unpickles and never runs code from the folder: the weights
come from HDF5 arrays, the config from JSON checked field by field (name,
type) and then as a config from flags is (`vse_tf.config.validate`); a
wrong or hostile field is one sentence naming it; a preset of a newer
format says so.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any, Optional

from vse_tf import config as config_lib
from vse_tf import errors, io_utils, modeling
from vse_tf import text as text_lib

PRESET_FORMAT = 1
"""The layout this vse_tf writes; a preset of a higher one is refused."""

CONFIG_FILE = "config.json"
METADATA_FILE = "metadata.json"
WEIGHTS_FILE = "model.weights.h5"
VOCAB_FILE = "vocab.txt"
CARD_FILE = "README.md"
HF_PREFIX = "hf://"


def names_preset(source: str) -> bool:
    """Whether ``source`` names a preset: ``hf://...`` or a local preset folder."""
    return source.startswith(HF_PREFIX) or is_preset(source)


def is_preset(path: str) -> bool:
    """Whether ``path`` is a local preset folder (metadata and weights)."""
    return os.path.isfile(os.path.join(path, METADATA_FILE)) and os.path.isfile(
        os.path.join(path, WEIGHTS_FILE)
    )


# -- reading -----------------------------------------------------------------


def read_json(path: str) -> Optional[dict]:
    return json.loads(io_utils.read_bytes(path)) if os.path.isfile(path) else None


def resolve(source: str) -> str:
    """A local folder for a preset: ``source`` itself or its Hub snapshot.

    Args:
        source: A folder, or ``hf://owner/name`` / ``hf://owner/name@revision``.

    Raises:
        errors.MissingError: when the folder is no preset or the Hub has none
            (offline: not in the cache).
        errors.UserError: when ``huggingface_hub`` is not installed.
    """
    if not source.startswith(HF_PREFIX):
        if not is_preset(source):
            raise errors.MissingError(
                f"{source} is no preset folder (it needs {METADATA_FILE} and "
                f"{WEIGHTS_FILE}; write one with python -m export.export_preset)"
            )
        return source
    repo, _, revision = source[len(HF_PREFIX) :].partition("@")
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo):
        raise errors.InputError(f"{source}: expected hf://OWNER/NAME[@REVISION]")
    try:
        import huggingface_hub
    except ImportError:
        raise errors.UserError(
            f"{source} needs huggingface_hub: pip install 'vse_tf[hub]'"
        ) from None
    try:
        folder = huggingface_hub.snapshot_download(
            repo_id=repo,
            revision=revision or None,
            allow_patterns=[
                CONFIG_FILE,
                METADATA_FILE,
                WEIGHTS_FILE,
                VOCAB_FILE,
                CARD_FILE,
            ],
        )
    except Exception as error:  # noqa: BLE001  (the hub's many error types)
        offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
        raise errors.MissingError(
            f"{source}: no such preset "
            + ("in the Hugging Face cache (HF_HUB_OFFLINE is set)" if offline else "")
            + f" ({type(error).__name__}: {str(error).splitlines()[0][:200]})"
        ) from None
    if not is_preset(folder):
        raise errors.MissingError(f"{source} holds no vse_tf preset")
    return folder


def _field_types() -> dict[str, dict[str, type]]:
    sections = {
        "data": config_lib.DataConfig,
        "model": config_lib.ModelConfig,
        "train": config_lib.TrainConfig,
    }
    return {
        section: {f.name: type(getattr(cls(), f.name)) for f in dataclasses.fields(cls)}
        for section, cls in sections.items()
    }


def read_config(values: Any, where: str) -> config_lib.Config:
    """A config from JSON values, checked as a config from flags is.

    Raises:
        errors.ConfigError: naming the first field that is unknown or of the
            wrong type, or the config's problems.
    """
    types = _field_types()
    if not isinstance(values, dict):
        raise errors.ConfigError(f"{where}: the config is not a JSON object")
    for section, fields in values.items():
        if section not in types or not isinstance(fields, dict):
            raise errors.ConfigError(f"{where}: unknown config section {section!r}")
        for name, value in fields.items():
            expected = types[section].get(name)
            if expected is None:
                raise errors.ConfigError(
                    f"{where}: unknown config field {section}.{name}"
                )
            ok = isinstance(value, expected) and not (
                expected is not bool and isinstance(value, bool)
            )
            if (
                expected is float
                and isinstance(value, int)
                and not isinstance(value, bool)
            ):
                ok = True
            if not ok:
                raise errors.ConfigError(
                    f"{where}: config field {section}.{name} must be "
                    f"{expected.__name__}, got {type(value).__name__} {value!r:.60}"
                )
    config = config_lib.Config.from_dict(values)
    # A preset names no data folder (it holds no path of the training
    # machine); everything else is checked as for flags.
    located = dataclasses.replace(config.data, data_dir=config.data.data_dir or "data")
    config_lib.validate(dataclasses.replace(config, data=located), check_paths=False)
    return config


def read_metadata(folder: str) -> dict:
    """The checked ``metadata.json`` of a preset folder.

    Raises:
        errors.UserError: for a preset of a newer format, or another library's.
    """
    metadata = read_json(os.path.join(folder, METADATA_FILE))
    if not isinstance(metadata, dict) or metadata.get("library") != "vse_tf":
        raise errors.UserError(f"{folder} is no vse_tf preset (see its metadata)")
    version = metadata.get("format")
    if not isinstance(version, int) or version > PRESET_FORMAT:
        written = (metadata.get("versions") or {}).get("vse_tf", "a newer vse_tf")
        raise errors.UserError(
            f"{folder} was written by vse_tf {written} (preset format {version}); "
            f"this vse_tf reads format {PRESET_FORMAT}: upgrade vse_tf"
        )
    return metadata


def load_preset(
    source: str, include_backbone: bool = True
) -> tuple[config_lib.Config, Any, dict]:
    """Rebuilds the model of a preset.

    Args:
        source: A preset folder or ``hf://owner/name[@revision]``.
        include_backbone: Build the CNN (to embed image files).

    Returns:
        ``(config, model, metadata)``.
    """
    folder = resolve(source)
    metadata = read_metadata(folder)
    values = read_json(os.path.join(folder, CONFIG_FILE))
    config = read_config(values, os.path.join(folder, CONFIG_FILE))
    # The weights file holds every weight: nothing is read from elsewhere.
    model_config = dataclasses.replace(
        config.model, vgg_weights="none", lite_weights="none", glove="none"
    )
    built = dataclasses.replace(config, model=model_config)
    vocabulary = text_lib.Vocabulary.load(os.path.join(folder, VOCAB_FILE))
    word_dim = (metadata.get("shapes") or {}).get("word_dim")
    model = modeling.build_model(
        built, vocabulary, word_dim=word_dim, include_backbone=include_backbone
    )
    try:
        model.load_weights(os.path.join(folder, WEIGHTS_FILE))
    except (ValueError, OSError) as error:
        raise errors.UserError(
            f"{source}: its weights do not fit its config "
            f"({str(error).splitlines()[0][:200]})"
        ) from None
    return config, model, metadata
