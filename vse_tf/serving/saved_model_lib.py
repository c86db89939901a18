"""A dual-tower SavedModel for TF Serving, with warmup requests.

Signatures (names and keys are a contract; see the README):

* ``encode_text``: ``text`` tf.string ``[N]`` raw sentences -> ``embedding``
  float32 ``[N, D]`` (tokenised in-graph exactly as in training).
  ``serving_default`` is the same function.
* ``encode_tokens``: ``token_ids`` int32 ``[N, L]`` -> ``embedding``.
* ``encode_image``: ``image_bytes`` tf.string ``[N]`` (JPEG, PNG, GIF or BMP)
  -> ``embedding`` (decode, resize, VGG preprocessing in-graph).
* ``encode_image_pixels``: ``pixels`` float32 ``[N, H, W, 3]`` RGB 0..255,
  any H and W (resized in-graph) -> ``embedding``.
* ``encode_image_features``: ``features`` float32 ``[N, F]`` backbone features
  -> ``embedding`` (the only image signature of models trained on
  precomputed features, which have no CNN).
* ``search_images`` (only when exported with an image index): ``text``
  tf.string ``[N]`` -> ``ids`` int32 ``[N, k]``, ``scores`` float32
  ``[N, k]`` (cosine, best first) and ``items`` tf.string ``[N, k]`` (the
  indexed image paths), so TF Serving alone answers a sentence query.

The graph holds tensorflow-text ops: load it only after
``import tensorflow_text`` (`load_saved_model` does that), as the TF Serving
model server does by linking them.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from typing import Optional

import keras
import numpy as np
import tensorflow as tf

from vse_tf import features as features_lib
from vse_tf import train_lib
from vse_tf.models.vse_model import VSEModel

SIGNATURES = (
    "encode_text",
    "encode_tokens",
    "encode_image",
    "encode_image_pixels",
    "encode_image_features",
)
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
VOCAB_ASSET = "vocab.txt"
WARMUP_SENTENCE = "A dog runs on the beach."


def build_export_archive(
    model: VSEModel,
    index_embeddings: Optional[np.ndarray] = None,
    index_items: Optional[list[str]] = None,
    search_k: int = 10,
):
    """An ExportArchive with every signature the model can serve.

    Args:
        model: A trained `VSEModel` (with its image backbone, for the image
            signatures).
        index_embeddings: Optional ``[M, D]`` image-index embeddings (made
            with this model); adds the ``search_images`` signature.
        index_items: ``[M]`` names returned for the index rows (paths).
        search_k: Results per query of ``search_images`` (capped at M).

    Returns:
        A ``keras.export.ExportArchive`` ready for ``write_out``.
    """
    text_tower, image_tower = model.text_tower, model.image_tower
    length = text_tower.max_length
    archive = keras.export.ExportArchive()
    archive.track(text_tower)
    archive.track(image_tower)

    archive.add_endpoint(
        "encode_text",
        lambda text: {"embedding": text_tower(text)},
        input_signature=[tf.TensorSpec([None], tf.string, name="text")],
    )
    archive.add_endpoint(
        "encode_tokens",
        lambda token_ids: {"embedding": text_tower.encode_tokens(token_ids)},
        input_signature=[tf.TensorSpec([None, length], tf.int32, name="token_ids")],
    )
    archive.add_endpoint(
        "encode_image_features",
        lambda features: {"embedding": image_tower.embed_features(features)},
        input_signature=[
            tf.TensorSpec([None, image_tower.feature_dim], tf.float32, name="features")
        ],
    )
    if index_embeddings is not None:
        _add_search_endpoint(
            archive, text_tower, index_embeddings, index_items, search_k
        )
    if image_tower.backbone is not None:
        size = image_tower.image_size

        def encode_image(image_bytes):
            pixels = tf.map_fn(
                lambda data: features_lib.decode_image(data, size),
                image_bytes,
                fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32),
            )
            return {"embedding": image_tower(pixels)}

        archive.add_endpoint(
            "encode_image",
            encode_image,
            input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")],
        )
        archive.add_endpoint(
            "encode_image_pixels",
            lambda pixels: {
                "embedding": image_tower(features_lib.resize_pixels(pixels, size))
            },
            input_signature=[
                tf.TensorSpec([None, None, None, 3], tf.float32, name="pixels")
            ],
        )
    return archive


def _add_search_endpoint(archive, text_tower, embeddings, items, k):
    embeddings = np.asarray(embeddings)
    if embeddings.ndim != 2 or embeddings.shape[1] != text_tower.embed_dim:
        raise ValueError(
            f"index embeddings have shape {embeddings.shape}; this model "
            f"needs [M, {text_tower.embed_dim}]"
        )
    items = (
        list(items) if items is not None else [str(i) for i in range(len(embeddings))]
    )
    if len(items) != len(embeddings):
        raise ValueError(f"{len(items)} index items for {len(embeddings)} embeddings")
    k = min(int(k), len(embeddings))
    # Variables (not constants) so the index lives in variables/, not the graph.
    index = tf.Variable(embeddings.astype(np.float32), trainable=False, name="index")
    names = tf.Variable(np.array(items, dtype=object), trainable=False, name="items")
    archive.track(index)
    archive.track(names)

    def search_images(text):
        queries = text_tower(text)  # [N, D], unit norm
        scores, ids = tf.math.top_k(tf.matmul(queries, index, transpose_b=True), k)
        return {"ids": ids, "scores": scores, "items": tf.gather(names, ids)}

    archive.add_endpoint(
        "search_images",
        search_images,
        input_signature=[tf.TensorSpec([None], tf.string, name="text")],
    )


def warmup_inputs(model: VSEModel) -> dict[str, dict[str, np.ndarray]]:
    """One small, valid request per signature: ``{signature: {key: value}}``."""
    tokens = model.text_tower.tokenizer(tf.constant([WARMUP_SENTENCE])).numpy()
    inputs = {
        "encode_text": {"text": np.array([WARMUP_SENTENCE.encode()], dtype=object)},
        "encode_tokens": {"token_ids": tokens.astype(np.int32)},
        "encode_image_features": {
            "features": np.zeros([1, model.image_tower.feature_dim], np.float32)
        },
    }
    if model.image_tower.backbone is not None:
        size = model.image_tower.image_size
        grey = np.full([size, size, 3], 128, np.uint8)
        png = tf.io.encode_png(grey).numpy()
        inputs["encode_image"] = {"image_bytes": np.array([png], dtype=object)}
        inputs["encode_image_pixels"] = {"pixels": grey[None].astype(np.float32)}
    return inputs


def warmup_records(
    model: VSEModel, model_name: str = "vse", with_search: bool = False
) -> list[bytes]:
    """Serialized ``PredictionLog`` records, one per signature.

    Raises:
        ImportError: without the ``tensorflow-serving-api`` package.
    """
    try:
        from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2
    except ImportError as error:
        raise ImportError(
            'warmup requests need tensorflow-serving-api: pip install "vse_tf[serving]"'
        ) from error
    requests = warmup_inputs(model)
    if with_search:
        requests["search_images"] = requests["encode_text"]
    records = []
    for signature, inputs in requests.items():
        request = predict_pb2.PredictRequest(
            model_spec=model_pb2.ModelSpec(name=model_name, signature_name=signature)
        )
        for key, value in inputs.items():
            request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
        log = prediction_log_pb2.PredictionLog(
            predict_log=prediction_log_pb2.PredictLog(request=request)
        )
        records.append(log.SerializeToString())
    return records


def next_version(output_dir: str) -> int:
    """1 + the largest numbered version folder in ``output_dir`` (1 if none)."""
    if not os.path.isdir(output_dir):
        return 1
    numbers = [int(n) for n in os.listdir(output_dir) if re.fullmatch(r"\d+", n)]
    return max(numbers, default=0) + 1


def export_saved_model(
    workdir: str,
    output_dir: str,
    version: Optional[int] = None,
    model_name: str = "vse",
    image_index: Optional[str] = None,
    search_k: int = 10,
) -> str:
    """Exports a trained workdir as version ``N`` of a TF Serving model base.

    The version is written to a temporary folder inside ``output_dir`` and
    renamed to ``output_dir/N`` only when complete, so a model server that
    watches ``output_dir`` never sees a partial version.

    Args:
        workdir: A training workdir (`vse_tf.train_lib`).
        output_dir: The model base path (holds numbered versions).
        version: Version number; default the next free one.
        model_name: Model name used in the warmup requests.
        image_index: Optional image index folder (`vse_tf.retrieval`,
            built with this model) to embed as the ``search_images``
            signature.
        search_k: Results per ``search_images`` query.

    Returns:
        The path of the new version folder.

    Raises:
        FileExistsError: if that version exists already.
    """
    config, model = train_lib.load_trained_model(workdir)
    del config
    version = next_version(output_dir) if version is None else int(version)
    final = os.path.join(output_dir, str(version))
    if os.path.exists(final):
        raise FileExistsError(f"{final} exists; choose another --version")
    os.makedirs(output_dir, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=output_dir)
    try:
        export_dir = os.path.join(staging, "model")
        embeddings = items = None
        if image_index:
            from vse_tf.retrieval import index_lib

            index = index_lib.load_index(image_index, mmap_mode=None)
            if index.kind != "image":
                raise ValueError(f"{image_index} is a {index.kind} index, not images")
            embeddings, items = index.embeddings, index.items
        archive = build_export_archive(model, embeddings, items, search_k)
        archive.write_out(export_dir, verbose=False)
        # The vocabulary (id = line number) for clients that tokenise
        # themselves (encode_tokens, the TFLite token-id tower).
        os.makedirs(os.path.join(export_dir, "assets"), exist_ok=True)
        shutil.copyfile(
            os.path.join(workdir, train_lib.VOCAB_FILE),
            os.path.join(export_dir, "assets", VOCAB_ASSET),
        )
        records = warmup_records(model, model_name, with_search=bool(image_index))
        os.makedirs(os.path.join(export_dir, "assets.extra"), exist_ok=True)
        with tf.io.TFRecordWriter(os.path.join(export_dir, WARMUP_FILE)) as writer:
            for record in records:
                writer.write(record)
        os.rename(export_dir, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def load_saved_model(path: str):
    """Loads an exported version; registers the tensorflow-text ops first."""
    import tensorflow_text  # noqa: F401  (the graph's tokenizer ops)

    return tf.saved_model.load(path)
