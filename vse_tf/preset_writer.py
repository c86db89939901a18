"""Writing a preset folder (`vse_tf.preset`) from a training workdir, and its card.

`write_preset` writes every file into a fresh sibling folder and renames it
into place last, so a crash leaves no half preset; `model_card` is the
README.md: Hugging Face YAML front matter from the metadata, then prose.
"""

from __future__ import annotations

import csv
import datetime
import json
import logging
import os
import shutil
import tempfile
from typing import Optional

import keras
import tensorflow as tf

from vse_tf import config as config_lib
from vse_tf import errors, hardware, io_utils, preset
from vse_tf import text as text_lib
from vse_tf import workdir as workdir_lib
from vse_tf.preset import (
    CARD_FILE,
    CONFIG_FILE,
    METADATA_FILE,
    PRESET_FORMAT,
    VOCAB_FILE,
    WEIGHTS_FILE,
)


def _shareable_config(config: config_lib.Config) -> dict:
    """The config as JSON values, without paths of the training machine."""
    values = config.to_dict()
    values["data"]["data_dir"] = ""
    values["data"]["cache_dir"] = ""
    model = values["model"]
    named = {
        "vgg_weights": ("imagenet", "none", "hed"),
        "lite_weights": ("pretrained", "none"),
        "glove": ("kumo-6b-50d", "none"),
    }
    for field, names in named.items():
        if model[field] not in names:
            model[field] = "none"  # a file of the training machine
    return values


def _training_seconds(workdir: str) -> Optional[float]:
    path = os.path.join(workdir, "metrics.csv")
    if not os.path.isfile(path):
        return None
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    seconds = [float(row["seconds"]) for row in rows if row.get("seconds")]
    return round(sum(seconds), 1) if seconds else None


_DATASET_NAMES = {
    "flickr8k": "Flickr8k",
    "karpathy": "Flickr30k or COCO (Karpathy splits)",
    "coco": "COCO (Karpathy splits)",
    "demo": "vse_tf's drawn shapes (demo)",
    "csv": "captioned images (CSV)",
    "precomp": "precomputed image features",
}


_TABLE_KEYS = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rsum")


def _recurrence(model: dict) -> str:
    """The text recurrence in words, e.g. ``bidirectional GRU, mean of states``."""
    words = model["text_rnn"].upper()
    if model.get("text_bidirectional"):
        words = f"bidirectional {words}"
    if model.get("text_pooling", "last") == "mean":
        words += ", mean of states"
    return words


def _loss(train: dict) -> str:
    """The loss in words, e.g. ```sum` over in-batch pairs, both directions,
    margin 0.2`` or ``... temperature fixed at 0.07``."""
    loss = train.get("loss")
    if loss == "infonce":
        how = "learnt from" if train.get("learn_temperature", True) else "fixed at"
        return (
            f"`{loss}` (CLIP's symmetric softmax) over in-batch pairs, both "
            f"directions, temperature {how} {train.get('temperature')}"
        )
    return (
        f"`{loss}` over in-batch pairs, both directions, margin {train.get('margin')}"
    )


def _table(metrics: Optional[dict]) -> Optional[dict]:
    if not metrics:
        return None
    table = {key: metrics[key] for key in _TABLE_KEYS if key in metrics}
    for key in ("i2t_medr", "t2i_medr", "num_images"):
        if key in metrics:
            table[key] = metrics[key]
    return table


def make_metadata(
    workdir: str,
    config: config_lib.Config,
    word_dim: int,
    split_sizes: Optional[dict[str, int]] = None,
) -> dict:
    """What ``metadata.json`` holds for the model trained in ``workdir``."""
    dev = preset.read_json(os.path.join(workdir, "metrics_dev.json"))
    test = preset.read_json(os.path.join(workdir, "metrics_test.json"))
    from vse_tf import __version__

    return {
        "format": PRESET_FORMAT,
        "library": "vse_tf",
        "versions": {
            "vse_tf": __version__,
            "keras": keras.__version__,
            "tensorflow": tf.__version__,
        },
        "dataset": {
            "name": config.data.dataset,
            "splits": split_sizes or {},
        },
        "metrics": {"dev": _table(dev), "test": _table(test)},
        "training": {
            "seconds": _training_seconds(workdir),
            "prepare_seconds": (dev or {}).get("prepare_seconds"),
            "machine": {"cpu": hardware.cpu_name(), "cores": os.cpu_count()},
        },
        "shapes": {"word_dim": int(word_dim)},
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds"
        ),
    }


def _yaml_string(text: str) -> str:
    return json.dumps(text)  # a JSON string is a YAML string


def model_card(config_values: dict, metadata: dict, name: str) -> str:
    """The README.md of a preset: Hugging Face YAML front matter, then prose.

    Args:
        config_values: The preset's ``config.json``.
        metadata: Its ``metadata.json``.
        name: The model's name (the folder's, or the Hub repository's).
    """
    data, model = config_values["data"], config_values["model"]
    dataset = metadata["dataset"]["name"]
    dataset_title = _DATASET_NAMES.get(dataset, dataset)
    tables = metadata["metrics"]
    lines = [
        "---",
        "library_name: vse_tf",
        "license: apache-2.0",
        "language:",
        "- en",
        "tags:",
        "- visual-semantic-embedding",
        "- image-text-retrieval",
        "- tensorflow",
        "- keras",
        f"- {model['backbone']}",
        f"- {model['text_rnn']}",
    ]
    lines += ["datasets:", f"- {dataset}", "metrics:", "- recall"]
    results = []
    for split in ("dev", "test"):
        table = tables.get(split)
        if not table:
            continue
        metrics = [
            (f"{direction} R@{k}", f"{prefix}_r{k}")
            for direction, prefix in (
                ("image-to-text", "i2t"),
                ("text-to-image", "t2i"),
            )
            for k in (1, 5, 10)
        ] + [("rsum", "rsum")]
        results += [
            "  - task:",
            "      type: image-text-retrieval",
            "      name: Image-text retrieval",
            "    dataset:",
            f"      type: {dataset}",
            f"      name: {_yaml_string(dataset_title)}",
            f"      split: {split}",
            "    metrics:",
        ]
        for title, key in metrics:
            if key in table:
                results += [
                    f"    - type: {key}",
                    f"      name: {_yaml_string(title)}",
                    f"      value: {table[key]}",
                ]
    if results:
        lines += ["model-index:", f"- name: {_yaml_string(name)}", "  results:"]
        lines += results
    lines += ["---", ""]
    sizes = metadata["dataset"]["splits"]
    train_images = sizes.get("train")
    minutes = metadata["training"]["seconds"]
    machine = metadata["training"]["machine"]
    lines += [
        f"# {name}",
        "",
        "A visual-semantic embedding (Kiros et al., *Unifying Visual-Semantic "
        "Embeddings with Multimodal Neural Language Models*) trained with "
        "vse_tf (TensorFlow/Keras): images and English "
        f"sentences map into one {model['embed_dim']}-dimensional space where "
        "the cosine says how well a sentence describes an image.",
        "",
        f"- Image tower: {model['backbone']} ({model['image_feature']}) -> "
        f"W_emb -> L2-normalised, {data['image_size']}x{data['image_size']} input"
        + (
            "; each image is embedded with its mirror image and the two "
            "embeddings averaged."
            if model.get("flip_average")
            else "."
        ),
        f"- Text tower: in-graph tokenisation -> word embedding "
        f"({metadata['shapes']['word_dim']}-d, initialised from "
        f"{model['glove']}) -> {_recurrence(model)} -> L2-normalised.",
        f"- Loss: {_loss(config_values['train'])}.",
        "",
        "## Use",
        "",
        "```python",
        "import vse_tf",
        f'embedder = vse_tf.Embedder.from_preset("hf://OWNER/{name}")  '
        "# or a local folder",
        'images = embedder.encode_images(["photo.jpg"])   # [1, D]',
        'texts = embedder.encode_texts(["a dog runs on the beach"])',
        "scores = texts @ images.T                         # cosine",
        "```",
        "",
        "## Training",
        "",
        f"Trained on {dataset_title}"
        + (f" ({train_images:,} training images)" if train_images else "")
        + " with",
        "",
        "```bash",
        training_command(config_values),
        "```",
        "",
        "(the full config is `config.json`; any field of it is a flag of that "
        "command)"
        + (
            f", in {minutes / 60:.1f} minutes of training on {machine['cores']} "
            f"cores ({machine['cpu']})."
            if minutes
            else "."
        ),
        "",
    ]
    for split in ("dev", "test"):
        table = tables.get(split)
        if not table:
            continue
        count = sizes.get(split)
        lines += [
            f"### Retrieval on {split}"
            + (f" ({count:,} images, 5 captions each)" if count else ""),
            "",
            "| direction | R@1 | R@5 | R@10 |",
            "|---|---|---|---|",
        ]
        for title, prefix in (("image -> text", "i2t"), ("text -> image", "t2i")):
            lines.append(
                f"| {title} | {table.get(prefix + '_r1')} | "
                f"{table.get(prefix + '_r5')} | {table.get(prefix + '_r10')} |"
            )
        lines += ["", f"rsum (the six recalls summed): **{table.get('rsum')}**", ""]
    lines += [
        "## Intended use and limits",
        "",
        "For ranking images for English sentences and sentences for images, "
        "in collections like its training data. It learnt from "
        + (f"{train_images:,} " if train_images else "")
        + f"{dataset_title} photos with five English captions each: it knows "
        "everyday scenes of people and animals, a vocabulary of "
        f"{metadata.get('vocabulary_size', 'a few thousand')} words (others "
        "are unknown tokens), and nothing about text in images, counting or "
        "fine-grained categories. Retrieval scores are similarities, not "
        "probabilities. Biases of its captions (who is described how) carry "
        "over; check it on your own data before relying on it.",
        "",
    ]
    return "\n".join(lines)


def write_preset(
    workdir: str,
    output_dir: str,
    split_sizes: Optional[dict[str, int]] = None,
    overwrite: bool = False,
) -> str:
    """Writes the preset folder of a training workdir's best model.

    Args:
        workdir: A finished training workdir.
        output_dir: The preset folder (must not exist unless ``overwrite``).
        split_sizes: ``{"train": images, "dev": images, ...}`` for the card
            (default: the sizes the workdir's metrics record).
        overwrite: Replace an existing folder.

    Returns:
        ``output_dir``.

    Raises:
        errors.UserError: if ``output_dir`` exists (and not ``overwrite``).
    """
    output_dir = os.path.abspath(output_dir)
    if os.path.exists(output_dir) and not overwrite:
        raise errors.UserError(
            f"{output_dir} exists; choose another folder or pass overwrite"
        )
    config, model = workdir_lib.load_trained_model(workdir, include_backbone=True)
    if split_sizes is None:
        split_sizes = _split_sizes(config)
    vocabulary_path = os.path.join(workdir, workdir_lib.VOCAB_FILE)
    vocabulary = text_lib.Vocabulary.load(vocabulary_path)
    word_dim = int(model.text_tower.word_embedding.output_dim)
    metadata = make_metadata(workdir, config, word_dim, split_sizes)
    metadata["vocabulary_size"] = len(vocabulary.tokens)
    config_values = _shareable_config(config)
    parent = os.path.dirname(output_dir)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".preset-", dir=parent)
    try:
        model.save_weights(os.path.join(staging, WEIGHTS_FILE))
        shutil.copyfile(vocabulary_path, os.path.join(staging, VOCAB_FILE))
        io_utils.atomic_write_json(os.path.join(staging, CONFIG_FILE), config_values)
        io_utils.atomic_write_json(os.path.join(staging, METADATA_FILE), metadata)
        card = model_card(config_values, metadata, os.path.basename(output_dir))
        io_utils.atomic_write_text(os.path.join(staging, CARD_FILE), card)
        os.chmod(staging, 0o777 & ~_umask())
        if os.path.exists(output_dir):
            shutil.rmtree(output_dir)
        os.replace(staging, output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return output_dir


def _split_sizes(config: config_lib.Config) -> dict[str, int]:
    """Images per split of the training data, where the data can be read here."""
    from vse_tf.data import datasets

    sizes = {}
    logging.disable(logging.WARNING)  # (the data's warnings were seen in training)
    try:
        for split in ("train", "dev", "test"):
            try:
                sizes[split] = len(datasets.load_split(config, split).image_paths)
            except Exception:  # noqa: BLE001  (absent split or data: left out)
                continue
    finally:
        logging.disable(logging.NOTSET)
    return sizes


_NOT_FLAGS = {("data", "data_dir"), ("data", "cache_dir"), ("data", "dataset")}


def training_command(config_values: dict) -> str:
    """The ``trainers.train`` command of a config: its closest preset + flags.

    The named preset that differs from ``config_values`` in the fewest
    fields, and a flag for each field that differs (data paths left as
    ``DATA`` and ``RUN``).
    """
    best_name, best_flags = None, None
    for name in sorted(config_lib.PRESETS):
        reference = config_lib.get_config(name).to_dict()
        flags = [
            f"--{field}={value}"
            for section, fields in config_values.items()
            for field, value in sorted(fields.items())
            if (section, field) not in _NOT_FLAGS
            and reference.get(section, {}).get(field) != value
        ]
        if best_flags is None or len(flags) < len(best_flags):
            best_name, best_flags = name, flags
    dataset = config_values["data"]["dataset"]
    parts = [f"--preset={best_name}", f"--dataset={dataset}"]
    if dataset != "demo":
        parts.append("--data_dir=DATA")
    return " ".join(
        ["python -m trainers.train", *parts, *(best_flags or []), "--workdir=RUN"]
    )


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
