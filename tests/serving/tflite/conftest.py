"""Fixtures of the TFLite tests: a tiny trained workdir, its Keras outputs, exports."""

import functools

import numpy as np
import pytest
import tensorflow as tf

from tests import testing_utils
from vse_tf import images as images_lib
from vse_tf import text as text_lib
from vse_tf import workdir as workdir_lib
from vse_tf.data import datasets
from vse_tf.serving.tflite import export as tflite_export


@pytest.fixture(scope="package")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("tflite")
    path, _ = testing_utils.train_tiny_workdir(str(root))
    return path


@pytest.fixture(scope="package")
def reference(workdir):
    """The Keras towers and the test split's inputs and embeddings."""
    config, model = workdir_lib.load_trained_model(workdir, include_backbone=True)
    split = datasets.load_split(config, "test")
    size = config.data.image_size
    images = np.stack(
        [images_lib.load_image(tf.constant(p), size).numpy() for p in split.image_paths]
    )
    tokens = text_lib.encode_captions(model.text_tower.tokenizer, split.captions)
    return {
        "config": config,
        "model": model,
        "images": images,
        "tokens": tokens,
        "captions": list(split.captions),
        "image_emb": model.image_tower(images).numpy(),
        "token_emb": model.text_tower.encode_tokens(tokens).numpy(),
        "caption_emb": model.text_tower(tf.constant(split.captions)).numpy(),
    }


@pytest.fixture(scope="package")
def exported(workdir):
    """``quantize -> (files, manifest)``, converted once per mode."""
    return functools.lru_cache(maxsize=None)(
        lambda quantize: tflite_export.export_tflite(workdir, quantize)
    )
