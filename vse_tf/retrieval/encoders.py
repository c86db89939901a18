"""The models that embed index inputs: an exported SavedModel or a TF Serving server.

An `Encoder` turns sentences or encoded image bytes into L2-normalised rows;
`encode_checked` finds the inputs a model rejects, one by one, so one bad
image never stops a build.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from typing import Any, Optional, Protocol

import numpy as np
import tensorflow as tf

from vse_tf import io_utils
from vse_tf.serving import client as client_lib
from vse_tf.serving import loader


class Encoder(Protocol):
    """What builds and queries an index: a local SavedModel or a server client."""

    def encode_text(self, sentences: Sequence[str]) -> np.ndarray:
        """``[N]`` sentences -> ``float32 [N, D]``."""

    def encode_images(self, images: Sequence[bytes]) -> np.ndarray:
        """``[N]`` encoded image files -> ``float32 [N, D]``."""

    def describe(self) -> dict:
        """The model description stored in the manifest."""


class SavedModelEncoder:
    """Runs the exported SavedModel's ``encode_text`` / ``encode_image`` locally.

    Args:
        path: An exported version folder (holds ``saved_model.pb``).
    """

    def __init__(self, path: str):
        self.path = os.path.abspath(path)
        if not os.path.exists(os.path.join(self.path, "saved_model.pb")):
            raise FileNotFoundError(f"no saved_model.pb in {self.path}")
        self._model = loader.load_saved_model(self.path)
        if "encode_image" not in self._model.signatures:
            self._encode_image = None
        else:
            self._encode_image = self._model.signatures["encode_image"]
        self._encode_text = self._model.signatures["encode_text"]

    def encode_text(self, sentences: Sequence[str]) -> np.ndarray:
        text = tf.constant([str(s) for s in sentences], tf.string)
        return self._encode_text(text=text)["embedding"].numpy()

    def encode_images(self, images: Sequence[bytes]) -> np.ndarray:
        if self._encode_image is None:
            raise ValueError(
                f"{self.path} has no encode_image signature (a model trained on "
                "precomputed features has no CNN); it cannot index image files"
            )
        data = tf.constant(list(images), tf.string)
        return self._encode_image(image_bytes=data)["embedding"].numpy()

    def describe(self) -> dict:
        return describe_saved_model(self.path)


class PresetEncoder:
    """Runs a preset's Keras towers (`vse_tf.preset`) in this process.

    Args:
        source: A preset folder or ``hf://owner/name[@revision]``.
    """

    def __init__(self, source: str):
        from vse_tf import preset

        self.source = source
        self._folder = preset.resolve(source)
        config, self._model, _ = preset.load_preset(self._folder)
        self._image_size = config.data.image_size

    def encode_text(self, sentences: Sequence[str]) -> np.ndarray:
        text = tf.constant([str(s) for s in sentences], tf.string)
        return self._model.text_tower(text, training=False).numpy()

    def encode_images(self, images: Sequence[bytes]) -> np.ndarray:
        from vse_tf import modeling

        return modeling.embed_images(self._model, list(images), self._image_size)

    def describe(self) -> dict:
        from vse_tf import preset

        weights = os.path.join(self._folder, preset.WEIGHTS_FILE)
        return {
            "path": self.source,
            "sha256": io_utils.file_sha256(weights),
            "version": None,
            "preset": True,
        }


def describe_saved_model(path: str) -> dict:
    """The manifest's ``model``: path, sha256 of ``saved_model.pb``, version.

    Raises:
        FileNotFoundError: if ``path`` holds no ``saved_model.pb``.
    """
    path = os.path.abspath(path)
    graph = os.path.join(path, "saved_model.pb")
    if not os.path.exists(graph):
        raise FileNotFoundError(f"no saved_model.pb in {path}")
    version = os.path.basename(path)
    return {
        "path": path,
        "sha256": io_utils.file_sha256(graph),
        "version": version if version.isdigit() else None,
    }


def get_encoder(
    model: Optional[str] = None,
    server: Optional[str] = None,
    **client_kwargs: Any,
) -> Encoder:
    """A `SavedModelEncoder` for ``model`` or a serving client for ``server``.

    Args:
        model: Exported SavedModel version folder, or a preset (a folder or
            ``hf://owner/name``).
        server: ``http://host:8501`` (REST) or ``[grpc://]host:8500`` (gRPC).
        **client_kwargs: For the client: ``model_name``, ``timeout``,
            ``batch_size``, ``version``.

    Raises:
        ValueError: unless exactly one of ``model`` and ``server`` is given.
    """
    if bool(model) == bool(server):
        raise ValueError("give exactly one of a SavedModel path and a server URL")
    if model:
        from vse_tf import preset

        if preset.names_preset(model):
            return PresetEncoder(model)
        return SavedModelEncoder(model)
    return client_lib.connect(server, **client_kwargs)


FINGERPRINT_PROBE = "a dog runs across the grass with a red ball in its mouth"
"""The sentence whose embedding identifies the model (`fingerprint`)."""


FINGERPRINT_TOLERANCE = 1e-3
"""Largest difference of two fingerprints of one model (float rounding of
another machine, a server against the local SavedModel)."""


def fingerprint(encoder: Encoder) -> Optional[dict]:
    """What identifies the model by what it does: its embedding of a probe.

    The file hash in `describe` changes when one model is exported again and
    does not cover the weights (they live in ``variables/``); the embedding
    of a fixed sentence is the same wherever and however the model runs, and
    differs between any two trainings.

    Returns:
        ``{"probe": sentence, "text": [D] floats (4 decimals), "sha256"}``
        (``sha256`` of those rounded floats, to name it), or None where the
        encoder cannot embed (a build's stand-in that only describes).
    """
    encode_text = getattr(encoder, "encode_text", None)
    if encode_text is None:
        return None
    vector = np.round(np.asarray(encode_text([FINGERPRINT_PROBE]))[0], 4)
    text = [float(x) for x in vector]
    return {
        "probe": FINGERPRINT_PROBE,
        "text": text,
        "sha256": hashlib.sha256(json.dumps(text).encode()).hexdigest(),
    }


def same_model(recorded: Optional[dict], current: Optional[dict]) -> Optional[bool]:
    """Whether two `fingerprint` s are of one model; None where one is missing."""
    if not recorded or not current or recorded.get("probe") != current.get("probe"):
        return None
    a = np.asarray(recorded.get("text", []), np.float32)
    b = np.asarray(current.get("text", []), np.float32)
    if a.shape != b.shape:
        return False
    return bool(np.max(np.abs(a - b), initial=0.0) <= FINGERPRINT_TOLERANCE)


def is_invalid_input(error: Exception) -> bool:
    if isinstance(error, tf.errors.InvalidArgumentError):
        return True
    return isinstance(error, client_lib.ServingError) and error.is_invalid_input


def encode_checked(
    encode: Callable[[list], np.ndarray], inputs: list
) -> tuple[np.ndarray, list[int], dict[int, str]]:
    """Encodes a batch; when it is rejected, item by item to find the bad ones.

    Returns:
        ``(embeddings [M, D], kept positions [M], {position: error})``.
    """
    try:
        return encode(inputs), list(range(len(inputs))), {}
    except Exception as error:
        if not is_invalid_input(error):
            raise
        if len(inputs) == 1:
            return np.zeros([0, 0], np.float32), [], {0: short_error(error)}
    rows, kept, bad = [], [], {}
    for position, item in enumerate(inputs):
        try:
            rows.append(encode([item]))
            kept.append(position)
        except Exception as error:
            if not is_invalid_input(error):
                raise
            bad[position] = short_error(error)
    embeddings = np.concatenate(rows) if rows else np.zeros([0, 0], np.float32)
    return embeddings, kept, bad


def short_error(error: Exception) -> str:
    message = getattr(error, "message", "") or str(error)
    return (
        message.strip().splitlines()[0][:300]
        if message.strip()
        else type(error).__name__
    )
