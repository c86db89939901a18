"""A dual-tower SavedModel for TF Serving, with warmup requests.

Signatures (names and keys are a contract; see the README):

* ``encode_text``: ``text`` tf.string ``[N]`` raw sentences -> ``embedding``
  float32 ``[N, D]`` (tokenised in-graph exactly as in training).
  ``serving_default`` is the same function.
* ``encode_tokens``: ``token_ids`` int32 ``[N, L]`` -> ``embedding``.
* ``encode_image``: ``image_bytes`` tf.string ``[N]`` (JPEG, PNG, GIF or BMP)
  -> ``embedding`` (decode, resize, the CNN's preprocessing in-graph). Decoding is
  bounded (`vse_tf.serving.image_decode`): at most 4096 x 4096 decoded
  pixels per image; larger baseline JPEGs are decoded at 1/2..1/8 scale,
  other larger images refused.
* ``encode_image_pixels``: ``pixels`` float32 ``[N, H, W, 3]`` RGB 0..255,
  any H and W (resized in-graph) -> ``embedding``.
* ``encode_image_features``: ``features`` float32 ``[N, F]`` backbone features
  -> ``embedding`` (the only image signature of models trained on
  precomputed features, which have no CNN; not in an ensemble's export,
  whose members compute different features).
* ``search_images`` (only when exported with an image index): ``text``
  tf.string ``[N]`` -> ``ids`` int32 ``[N, k]``, ``scores`` float32
  ``[N, k]`` (cosine, best first) and ``items`` tf.string ``[N, k]`` (the
  indexed image paths), so TF Serving alone answers a sentence query.

Bad requests (see the README, "When things go wrong") fail with
``InvalidArgumentError`` and a message naming the input, never a crash or a
made-up embedding: a wrong rank or inner size (every signature checks its
input's shape at run time; a scalar ``text`` used to crash the tokenizer op),
text that is not UTF-8, token ids outside ``[0, V)`` or a row of padding only,
NaN or infinite pixels or features, empty, corrupt, unknown-format or too
large images (`vse_tf.serving.image_decode`). An empty batch returns an
empty ``[0, D]`` embedding.

The graph holds tensorflow-text ops: load it only after
``import tensorflow_text`` (`vse_tf.serving.loader.load_saved_model` does
that), as the TF Serving model server does by linking them.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import tempfile
from collections.abc import Sequence
from typing import Optional, Protocol

import keras
import numpy as np
import tensorflow as tf

from vse_tf import images as images_lib
from vse_tf import workdir as workdir_lib
from vse_tf.models.vse_model import VSEModel
from vse_tf.serving import image_decode

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
# Unfinished versions are written to ".tmp-<version>-<pid>-<host>-<random>".
STAGING_PREFIX = ".tmp-"
_STAGING_RE = re.compile(r"\.tmp-\d+-(\d+)-(.*)-[^-]+")


class SearchableIndex(Protocol):
    """What `export_saved_model` embeds for ``search_images``: an image index.

    `vse_tf.retrieval.index_lib.Index` is one; export needs no more of it.
    """

    kind: str
    embeddings: np.ndarray  # [N, D], L2-normalised rows
    items: Sequence[str]  # [N] image paths


def _after(checks: list, tensor: tf.Tensor) -> tf.Tensor:
    """``tensor``, computed only once every op in ``checks`` has passed."""
    with tf.control_dependencies(checks):
        return tf.identity(tensor)


def _first_false(flags: tf.Tensor) -> tf.Tensor:
    """int64 index of the first False in a bool ``[N]`` (N if none)."""
    padded = tf.concat([tf.cast(flags, tf.int32), [0]], axis=0)
    return tf.argmin(padded, output_type=tf.int64)


def check_text(text: tf.Tensor) -> tf.Tensor:
    """Validates a ``text`` input: ``tf.string [N]`` of UTF-8 sentences.

    Args:
        text: The signature input, as fed.

    Returns:
        ``text``, once checked.

    Raises:
        InvalidArgumentError: (when run) if ``text`` is not of rank 1 (a
            scalar used to crash the tokenizer op) or a sentence is not
            valid UTF-8 (``text 3: not valid UTF-8``). Any valid sentence,
            empty or of any length, is accepted.
    """
    text = tf.ensure_shape(text, [None])
    repaired = tf.strings.unicode_transcode(
        text, "UTF-8", "UTF-8", errors="replace", replacement_char=0xFFFD
    )
    valid = tf.equal(repaired, text)
    message = tf.strings.format("text {}: not valid UTF-8", [_first_false(valid)])
    return _after([tf.debugging.Assert(tf.reduce_all(valid), [message])], text)


def check_token_ids(token_ids: tf.Tensor, length: int, vocab_size: int) -> tf.Tensor:
    """Validates a ``token_ids`` input: ``int32 [N, L]``, 0-padded ids.

    Args:
        token_ids: The signature input, as fed.
        length: L, the model's ``max_length``.
        vocab_size: V; ids must be in ``[0, V)``.

    Returns:
        ``token_ids``, once checked.

    Raises:
        InvalidArgumentError: (when run) for another shape, an id outside
            ``[0, V)`` (a gather would fail on CPU but silently read zeros
            on GPU) or a row of padding only (its embedding would be the
            zero vector; the empty sentence is ``[1, 0, ..., 0]``).
    """
    token_ids = tf.ensure_shape(token_ids, [None, length])
    in_range = tf.reduce_all(
        tf.logical_and(token_ids >= 0, token_ids < vocab_size), axis=1
    )
    has_word = tf.reduce_any(tf.not_equal(token_ids, 0), axis=1)
    row = _first_false(in_range)
    range_message = tf.strings.format(
        "token_ids row {}: ids must be in [0, {}), got {}",
        # (a padding row keeps the gather in range when every row is valid)
        [row, vocab_size, tf.gather(tf.pad(token_ids, [[0, 1], [0, 0]]), row)],
        summarize=length,
    )
    empty_message = tf.strings.format(
        "token_ids row {}: no token, only padding (0); the empty sentence is "
        "[1, 0, ..., 0]",
        [_first_false(has_word)],
    )
    checks = [
        tf.debugging.Assert(tf.reduce_all(in_range), [range_message]),
        tf.debugging.Assert(tf.reduce_all(has_word), [empty_message]),
    ]
    return _after(checks, token_ids)


def check_pixels(pixels: tf.Tensor) -> tf.Tensor:
    """Validates a ``pixels`` input: finite ``float32 [N, H, W, 3]``.

    Values outside 0..255 are clipped by the resize, as in training.

    Args:
        pixels: The signature input, as fed.

    Returns:
        ``pixels``, once checked.

    Raises:
        InvalidArgumentError: (when run) for another rank or channel count,
            H or W of 0, or any NaN or infinite value.
    """
    pixels = tf.ensure_shape(pixels, [None, None, None, 3])
    shape = tf.shape(pixels)
    size_message = tf.strings.format(
        "pixels: height and width must be at least 1, got shape {}", [shape]
    )
    has_area = tf.logical_and(shape[1] > 0, shape[2] > 0)
    pixels = _after([tf.debugging.Assert(has_area, [size_message])], pixels)
    return tf.debugging.assert_all_finite(pixels, "pixels: NaN or infinite value")


def check_features(features: tf.Tensor, feature_dim: int) -> tf.Tensor:
    """Validates a ``features`` input: finite ``float32 [N, F]``.

    Args:
        features: The signature input, as fed.
        feature_dim: F.

    Returns:
        ``features``, once checked.

    Raises:
        InvalidArgumentError: (when run) for another shape or any NaN or
            infinite value (it would make the whole embedding NaN).
    """
    features = tf.ensure_shape(features, [None, feature_dim])
    return tf.debugging.assert_all_finite(features, "features: NaN or infinite value")


def _unless_empty(batch: tf.Tensor, fn, dim: int) -> tf.Tensor:
    """``fn(batch)``, or ``float32 [0, dim]`` for an empty batch.

    The CNN's convolutions reject a batch of 0 with an unrelated message.
    """
    return tf.cond(
        tf.shape(batch)[0] > 0,
        lambda: tf.cast(fn(batch), tf.float32),
        lambda: tf.zeros([0, dim], tf.float32),
    )


def build_export_archive(
    model: VSEModel,
    index_embeddings: Optional[np.ndarray] = None,
    index_items: Optional[list[str]] = None,
    search_k: int = 10,
    max_image_pixels: int = image_decode.MAX_IMAGE_PIXELS,
):
    """An ExportArchive with every signature the model can serve.

    Every signature checks its input first (see the module docstring).

    Args:
        model: A trained `VSEModel` (with its image backbone, for the image
            signatures).
        index_embeddings: Optional ``[M, D]`` image-index embeddings (made
            with this model); adds the ``search_images`` signature.
        index_items: ``[M]`` names returned for the index rows (paths).
        search_k: Results per query of ``search_images`` (capped at M).
        max_image_pixels: Largest raster ``encode_image`` decodes per image
            (`vse_tf.serving.image_decode`); larger baseline JPEGs are
            decoded at reduced scale, other larger images refused.

    Returns:
        A ``keras.export.ExportArchive`` ready for ``write_out``.
    """
    archive = keras.export.ExportArchive()
    archive.track(model.text_tower)
    archive.track(model.image_tower)
    _add_text_endpoints(archive, model.text_tower)
    if has_feature_endpoint(model.image_tower):
        _add_feature_endpoint(archive, model.image_tower)
    if index_embeddings is not None:
        _add_search_endpoint(
            archive, model.text_tower, index_embeddings, index_items, search_k
        )
    if model.image_tower.backbone is not None:
        _add_image_endpoints(archive, model.image_tower, max_image_pixels)
    return archive


def _add_text_endpoints(archive, text_tower) -> None:
    """``encode_text`` (sentences) and ``encode_tokens`` (token ids)."""
    length = text_tower.max_length
    vocab_size = len(text_tower.vocabulary)
    archive.add_endpoint(
        "encode_text",
        lambda text: {"embedding": text_tower(check_text(text))},
        input_signature=[tf.TensorSpec([None], tf.string, name="text")],
    )
    archive.add_endpoint(
        "encode_tokens",
        lambda token_ids: {
            "embedding": text_tower.encode_tokens(
                check_token_ids(token_ids, length, vocab_size)
            )
        },
        input_signature=[tf.TensorSpec([None, length], tf.int32, name="token_ids")],
    )


def has_feature_endpoint(image_tower: keras.Model) -> bool:
    """Whether ``encode_image_features`` can serve this tower's embedding.

    Not for an ensemble (no shared feature input) nor for a tower that
    averages each image with its mirror (one view's features do not give
    that embedding).
    """
    return image_tower.feature_dim is not None and not image_tower.flip_average


def _add_feature_endpoint(archive, image_tower) -> None:
    """``encode_image_features``: precomputed CNN features -> embeddings."""
    feature_dim = image_tower.feature_dim
    archive.add_endpoint(
        "encode_image_features",
        lambda features: {
            "embedding": image_tower.embed_features(
                check_features(features, feature_dim)
            )
        },
        input_signature=[
            tf.TensorSpec([None, feature_dim], tf.float32, name="features")
        ],
    )


def _add_image_endpoints(archive, image_tower, max_image_pixels: int) -> None:
    """``encode_image`` (encoded files) and ``encode_image_pixels`` (RGB)."""
    size = image_tower.image_size
    dim = image_tower.embed_dim

    def encode_image(image_bytes):
        image_bytes = tf.ensure_shape(image_bytes, [None])
        pixels = image_decode.decode_images(image_bytes, size, max_image_pixels)
        return {"embedding": _unless_empty(pixels, image_tower, dim)}

    def encode_image_pixels(pixels):
        pixels = images_lib.resize_pixels(check_pixels(pixels), size)
        return {"embedding": _unless_empty(pixels, image_tower, dim)}

    archive.add_endpoint(
        "encode_image",
        encode_image,
        input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")],
    )
    archive.add_endpoint(
        "encode_image_pixels",
        encode_image_pixels,
        input_signature=[
            tf.TensorSpec([None, None, None, 3], tf.float32, name="pixels")
        ],
    )


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
        queries = text_tower(check_text(text))  # [N, D], unit norm
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
    }
    if has_feature_endpoint(model.image_tower):
        feature_dim = model.image_tower.feature_dim
        inputs["encode_image_features"] = {
            "features": np.zeros([1, feature_dim], np.float32)
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


def _host_tag() -> str:
    return re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname()) or "host"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_staging(output_dir: str) -> list[str]:
    """Deletes unfinished versions left by exports that died (e.g. kill -9).

    A staging folder is ``.tmp-<version>-<pid>-<host>-<random>``; it is
    removed only when it was made on this host by a process that no longer
    runs, so a concurrent export (here or on another machine sharing the
    folder) is never disturbed. TF Serving and `next_version` ignore such
    folders anyway (their names are not numbers); this only frees the space.

    Args:
        output_dir: The model base path.

    Returns:
        The paths removed.
    """
    if not os.path.isdir(output_dir):
        return []
    removed = []
    for name in sorted(os.listdir(output_dir)):
        match = _STAGING_RE.fullmatch(name)
        if not match or match.group(2) != _host_tag():
            continue
        pid = int(match.group(1))
        if pid != os.getpid() and not _pid_alive(pid):
            path = os.path.join(output_dir, name)
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _fsync_tree(path: str) -> None:
    """Flushes every file and folder under ``path`` to disk."""
    for root, _, files in os.walk(path):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                os.fsync(f.fileno())
        fd = os.open(root, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def export_saved_model(
    workdir: str | Sequence[str],
    output_dir: str,
    version: Optional[int] = None,
    model_name: str = "vse",
    image_index: Optional[SearchableIndex] = None,
    search_k: int = 10,
    max_image_pixels: int = image_decode.MAX_IMAGE_PIXELS,
) -> str:
    """Exports a trained workdir as version ``N`` of a TF Serving model base.

    The version is written to a staging folder inside ``output_dir``
    (``.tmp-<version>-<pid>-<host>-<random>``), flushed to disk and renamed
    to ``output_dir/N`` only when complete, so a model server that watches
    ``output_dir`` never sees a partial version, even if the export is
    killed. Staging folders of dead exports are deleted first
    (`remove_stale_staging`).

    Args:
        workdir: A training workdir (`vse_tf.train_lib`), or several: their
            ensemble as one model (`vse_tf.models.ensemble`; every signature
            but ``encode_image_features``).
        output_dir: The model base path (holds numbered versions).
        version: Version number; default the next free one.
        model_name: Model name used in the warmup requests.
        image_index: An image index built with this model (a loaded
            `vse_tf.retrieval.index_lib.Index`, or anything with ``kind``,
            ``embeddings [N, D]`` and ``items [N]``) to embed as the
            ``search_images`` signature.
        search_k: Results per ``search_images`` query.
        max_image_pixels: ``encode_image``'s decoding limit per image
            (`build_export_archive`).

    Returns:
        The path of the new version folder.

    Raises:
        FileExistsError: if that version exists already (or appeared while
            this one was written).
        ValueError: if ``image_index`` is not an index of images.
    """
    if image_index is not None and image_index.kind != "image":
        raise ValueError(f"that is a {image_index.kind} index, not one of images")
    workdirs = [workdir] if isinstance(workdir, str) else list(workdir)
    # (an hf:// preset: its snapshot)
    workdirs = [workdir_lib.local_folder(w) for w in workdirs]
    workdir = workdirs[0]  # (the vocabulary: every member's is the same)
    if len(workdirs) == 1:
        _, model = workdir_lib.load_trained_model(workdir)
    else:
        _, model = workdir_lib.load_ensemble(workdirs)
    remove_stale_staging(output_dir)
    version = next_version(output_dir) if version is None else int(version)
    final = os.path.join(output_dir, str(version))
    if os.path.exists(final):
        raise FileExistsError(f"{final} exists; choose another --version")
    os.makedirs(output_dir, exist_ok=True)
    staging = tempfile.mkdtemp(
        prefix=f"{STAGING_PREFIX}{version}-{os.getpid()}-{_host_tag()}-",
        dir=output_dir,
    )
    try:
        export_dir = os.path.join(staging, "model")
        embeddings = items = None
        if image_index is not None:
            embeddings = np.asarray(image_index.embeddings)
            items = list(image_index.items)
        archive = build_export_archive(
            model, embeddings, items, search_k, max_image_pixels
        )
        archive.write_out(export_dir, verbose=False)
        # The vocabulary (id = line number) for clients that tokenise
        # themselves (encode_tokens, the TFLite token-id tower).
        os.makedirs(os.path.join(export_dir, "assets"), exist_ok=True)
        shutil.copyfile(
            os.path.join(workdir, workdir_lib.VOCAB_FILE),
            os.path.join(export_dir, "assets", VOCAB_ASSET),
        )
        records = warmup_records(model, model_name, with_search=image_index is not None)
        os.makedirs(os.path.join(export_dir, "assets.extra"), exist_ok=True)
        with tf.io.TFRecordWriter(os.path.join(export_dir, WARMUP_FILE)) as writer:
            for record in records:
                writer.write(record)
        _fsync_tree(export_dir)
        try:
            os.rename(export_dir, final)
        except OSError as error:  # another export took the number meanwhile
            if os.path.exists(final):
                raise FileExistsError(f"{final} appeared during the export") from error
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final
