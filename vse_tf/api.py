"""The Python API: a trained model as one object, for notebooks and scripts.

Example:
    >>> import vse_tf
    >>> embedder = vse_tf.Embedder.load("runs/demo")          # or models/vse/1
    >>> images = embedder.encode_images(["a.jpg", "b.png"])   # [2, D]
    >>> texts = embedder.encode_texts(["a dog runs on grass"])  # [1, D]
    >>> scores = texts @ images.T                             # cosine [1, 2]
    >>> embedder.evaluate("dev")["rsum"]

Every embedding is L2-normalised, so a dot product is the cosine
similarity the model was trained with.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Optional, Union

import numpy as np
import tensorflow as tf

from vse_tf import errors

ImageInput = Union[str, os.PathLike, bytes, np.ndarray]
"""An image path, the bytes of an encoded image (JPEG/PNG/GIF/BMP), or RGB
pixels ``[H, W, 3]`` (0..255)."""


class Embedder:
    """Encodes images and sentences with a trained model; searches; evaluates.

    Build one with `Embedder.load` (a training workdir, a preset folder or
    ``hf://owner/name``, or an exported SavedModel version folder) or
    `Embedder.from_server` (TF Serving); `save_preset` shares a model.

    Attributes:
        source: What was loaded (a path or a URL).
        config: The training config when loaded from a workdir, else None.
    """

    def __init__(self, backend: Any, source: str, config: Any = None):
        self._backend = backend
        self._dim: Optional[int] = None
        self.source = source
        self.config = config

    # -- construction -----------------------------------------------------

    @classmethod
    def load(cls, path: str) -> Embedder:
        """Loads a training workdir, a preset or an exported SavedModel version.

        Args:
            path: A preset (`from_preset`), a folder written by
                ``trainers.train`` (holds
                ``config.json``), an exported version (holds
                ``saved_model.pb``), or a model base path of numbered
                versions (the newest is used).

        Raises:
            errors.MissingError: when ``path`` is none of these.
        """
        from vse_tf import preset

        path = os.fspath(path)
        if preset.names_preset(path):
            return cls.from_preset(path)
        if os.path.isfile(os.path.join(path, "config.json")):
            return cls.from_workdir(path)
        return cls.from_saved_model(path)

    @classmethod
    def from_preset(cls, source: str) -> Embedder:
        """A preset: a folder or ``hf://owner/name[@revision]`` (`vse_tf.preset`).

        ``hf://`` goes through ``huggingface_hub`` (the ``hub`` extra): its
        cache, and only its cache when ``HF_HUB_OFFLINE=1``.
        """
        from vse_tf import preset

        config, model, _ = preset.load_preset(os.fspath(source))
        return cls(_KerasBackend(model, config), os.fspath(source), config)

    def save_preset(self, output_dir: str, overwrite: bool = False) -> str:
        """Writes this model's preset folder (loaded from a workdir only).

        Returns:
            ``output_dir``.

        Raises:
            errors.UserError: for a model not loaded from a training workdir.
        """
        from vse_tf import preset, preset_writer

        if (
            self.config is None
            or preset.is_preset(self.source)
            or not os.path.isfile(os.path.join(self.source, "config.json"))
        ):
            raise errors.UserError(
                "save_preset needs the training workdir: load it with "
                "Embedder.load(WORKDIR)"
            )
        return preset_writer.write_preset(self.source, output_dir, overwrite=overwrite)

    @classmethod
    def from_workdir(cls, workdir: str) -> Embedder:
        """The best checkpoint of a training workdir (CNN included)."""
        from vse_tf import workdir as workdir_lib

        config, model = workdir_lib.load_trained_model(workdir, include_backbone=True)
        return cls(_KerasBackend(model, config), workdir, config)

    @classmethod
    def from_saved_model(cls, path: str) -> Embedder:
        """An exported SavedModel (a version folder, or the newest version)."""
        from vse_tf.retrieval import encoders as index_encoders
        from vse_tf.serving import loader

        version = loader.resolve_version(path)
        return cls(_EncoderBackend(index_encoders.SavedModelEncoder(version)), version)

    @classmethod
    def from_server(cls, url: str, **client_kwargs: Any) -> Embedder:
        """A model behind TF Serving: ``http://host:8501`` or ``host:8500``.

        Args:
            url: REST or gRPC address.
            **client_kwargs: ``model_name``, ``timeout``, ``batch_size``,
                ``version`` (see `vse_tf.serving.client.connect`).
        """
        from vse_tf.serving import client as client_lib

        return cls(_EncoderBackend(client_lib.connect(url, **client_kwargs)), url)

    # -- encoding ---------------------------------------------------------

    @property
    def dim(self) -> int:
        """D, the size of the joint embedding (read once from the model)."""
        if self._dim is None:
            self._dim = int(self._backend.encode_texts(["a"]).shape[-1])
        return self._dim

    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """Sentences -> ``float32 [N, D]`` unit vectors (``[0, D]`` for none)."""
        if isinstance(texts, str):
            raise TypeError("encode_texts takes a list of sentences; got one str")
        texts = [str(text) for text in texts]
        if not texts:
            return np.zeros([0, self.dim], np.float32)
        rows = [
            self._backend.encode_texts(texts[i : i + batch_size])
            for i in range(0, len(texts), batch_size)
        ]
        return _stack(rows)

    def encode_images(
        self, images: Sequence[ImageInput], batch_size: int = 32
    ) -> np.ndarray:
        """Images -> ``float32 [N, D]`` unit vectors (``[0, D]`` for none).

        Args:
            images: Paths, encoded image bytes, or RGB arrays ``[H, W, 3]``
                (any mix; a single ``[N, H, W, 3]`` array is N images).
            batch_size: Images per model call.

        Raises:
            errors.MissingError: naming a path that does not exist.
            errors.InputError: naming an image that is no readable JPEG,
                PNG, GIF or BMP (empty, truncated, another format), and why.
        """
        if isinstance(images, np.ndarray) and images.ndim == 4:
            images = list(images)
        if isinstance(images, (str, bytes, os.PathLike)):
            raise TypeError("encode_images takes a list of images; got one")
        if len(images) == 0:
            return np.zeros([0, self.dim], np.float32)
        rows = []
        for start in range(0, len(images), batch_size):
            batch = [_as_image(item) for item in images[start : start + batch_size]]
            rows.append(self._backend.encode_images(batch))
        return _stack(rows)

    # -- search and evaluation ----------------------------------------------

    def search(self, query: Union[str, ImageInput], index: Any, k: int = 5) -> list:
        """The ``k`` best entries of an index for a sentence or an image.

        Args:
            query: A sentence (a ``str``, for an image index) or an image
                (a `pathlib.Path`, bytes or pixels, for a caption index).
            index: A folder written by ``vse-index``, or a loaded
                `vse_tf.retrieval.index_lib.Index`.
            k: Results wanted.

        Returns:
            `vse_tf.retrieval.index_lib.Result` tuples, best first.
        """
        from vse_tf.retrieval import index_lib

        if isinstance(index, (str, os.PathLike)):
            index = index_lib.load_index(os.fspath(index))
        if isinstance(query, str):
            vector = self.encode_texts([query])
        else:
            vector = self.encode_images([query])
        return index_lib.search_embedding(index, vector, k)

    def evaluate(
        self,
        split: str = "dev",
        dataset: Optional[str] = None,
        data_dir: Optional[str] = None,
        max_images: int = 0,
        preset: str = "demo",
    ) -> dict[str, float]:
        """The papers' retrieval metrics (R@1/5/10, medr, rsum) on a split.

        Args:
            split: ``dev`` or ``test``.
            dataset: Data set; default: the one trained on (workdir) or the
                ``preset``'s.
            data_dir: Its root; default as ``dataset``.
            max_images: Score only the first N images (0 = all).
            preset: Config the data options come from when the model is an
                export (the demo's images depend on its size and seed).

        Returns:
            ``{i2t_r1, ..., t2i_medr, rsum}``.
        """
        from vse_tf import config as config_lib
        from vse_tf import evaluation

        if isinstance(self._backend, _KerasBackend):
            # The workdir's own path: cached CNN features, metrics JSON written.
            return evaluation.evaluate_workdir(
                self.source,
                split,
                dataset=dataset,
                data_dir=data_dir,
                max_eval_images=max_images or None,
            )
        config = config_lib.get_config(preset)
        config = config_lib.override(
            config,
            dataset=dataset,
            data_dir=data_dir,
            max_eval_images=max_images if max_images else None,
        )
        return evaluation.evaluate_embedder(self, config, split)


class _KerasBackend:
    """A `VSEModel` rebuilt from a workdir."""

    def __init__(self, model: Any, config: Any):
        self.model = model
        self.image_size = config.data.image_size

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        return self.model.text_tower(tf.constant(texts, tf.string)).numpy()

    def encode_images(self, images: list) -> np.ndarray:
        from vse_tf import modeling

        return modeling.embed_images(self.model, images, self.image_size)


class _EncoderBackend:
    """An exported SavedModel or a TF Serving client (it takes image bytes)."""

    def __init__(self, encoder: Any):
        self.encoder = encoder

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        return np.asarray(self.encoder.encode_text(texts), np.float32)

    def encode_images(self, images: list) -> np.ndarray:
        blobs = [
            item
            if isinstance(item, bytes)
            else tf.io.encode_png(
                tf.cast(tf.clip_by_value(item, 0, 255), tf.uint8)
            ).numpy()
            for item in images
        ]
        return np.asarray(self.encoder.encode_images(blobs), np.float32)


def _as_image(item: ImageInput) -> Union[bytes, np.ndarray]:
    from vse_tf import images as images_lib

    if isinstance(item, (str, os.PathLike)):
        path = os.fspath(item)
        if not os.path.exists(path):
            raise errors.MissingError(f"image {path} not found")
        data, problem = images_lib.read_checked(path)
        if problem is not None:
            raise errors.InputError(f"image {path}: {problem}")
        return data
    if isinstance(item, bytes):
        problem = images_lib.content_problem(item)
        if problem is not None:
            raise errors.InputError(f"image bytes: {problem}")
        return item
    array = np.asarray(item)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    if array.ndim != 3 or array.shape[-1] not in (3, 4):
        raise ValueError(f"an image array must be [H, W, 3] RGB; got {array.shape}")
    return array[..., :3].astype(np.float32)


def _stack(rows: list[np.ndarray]) -> np.ndarray:
    if not rows:
        return np.zeros([0, 0], np.float32)
    return np.concatenate(rows).astype(np.float32, copy=False)
