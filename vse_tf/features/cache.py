"""The feature cache's keys, folders and manifests (what an entry holds and is).

One folder per (backbone, weights, feature, image size, precision, flip)
key and image list; see `vse_tf.features` for the layout. Nothing here runs
a model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from typing import Any, Optional

import numpy as np

from vse_tf import io_utils, shard_store
from vse_tf.models import backbone as backbone_lib
from vse_tf.models import catalog as backbone_catalog

CACHE_FORMAT = 3


DEFAULT_SHARD_SIZE = 1024


MANIFEST_FILE = "manifest.json"


RESIZE = "bilinear-antialias"


DTYPES = ("mixed_bfloat16", "float32")


STORAGE_DTYPES = ("float16", "float32")
"""How an entry's arrays are stored: features always float32; activations
at a cut float16 when the first batch shows it keeps them (else float32)."""


def storage_dtype(manifest: dict) -> np.dtype:
    """The dtype an entry's shards hold (``storage``; older entries: float32)."""
    return np.dtype(manifest.get("storage") or "float32")


BACKBONE = "keras.applications.VGG16"


_BACKBONE_KEYS = {backbone_catalog.VGG16: BACKBONE}


def cache_key(
    image_feature: str,
    image_size: int,
    weights: str,
    dtype: str,
    flip: bool = False,
    backbone: str = backbone_catalog.VGG16,
    cut: str = "",
) -> dict[str, Any]:
    """What identifies an entry: the CNN, its weights and every setting.

    ``cut`` (a ``fine_tune_from`` point) keys the activations at that layer's
    input instead of the features (stored as float16 where that keeps them,
    see `vse_tf.features.extractor.Extractor`). The pooling ``image_feature``
    names runs after the cut, so it is not part of such a key: runs that
    differ only in the pooling share the activations.
    """
    key = {
        "format": CACHE_FORMAT,
        "backbone": _BACKBONE_KEYS.get(backbone, backbone),
        "weights": backbone_lib.weights_fingerprint(weights, backbone),
        "image_size": image_size,
        "dtype": dtype,
        "resize": RESIZE,
        "preprocessing": backbone_catalog.preprocessing(backbone),
    }
    if flip:  # only then, so the keys of unflipped caches stay as they were
        key["flip"] = "left_right"
    if cut:  # likewise
        key["cut"] = cut
    else:
        key["feature"] = image_feature
    return key


def list_sha256(paths: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(paths).encode()).hexdigest()


def cache_folder(
    image_feature: str,
    image_size: int,
    weights: str,
    paths: Sequence[str],
    dtype: str = "mixed_bfloat16",
    cache_dir: Optional[str] = None,
    flip: bool = False,
    backbone: str = backbone_catalog.VGG16,
) -> str:
    """The cache folder of these images' features (it may not exist yet)."""
    key = cache_key(image_feature, image_size, weights, dtype, flip, backbone)
    paths = [io_utils.absolute(p) for p in paths]
    return folder_for_key(cache_dir or io_utils.default_cache_dir(), key, paths)


def folder_for_key(cache_dir: str, key: dict, paths: Sequence[str]) -> str:
    key_id = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return os.path.join(cache_dir, "features", key_id, list_sha256(paths)[:16])


def weights_sha256(weights: str, backbone: str) -> Optional[str]:
    """sha256 of the weights file, where there is one on this machine.

    None for ``none`` and for ``imagenet`` (Keras's download; its file name is
    version-dependent).
    """
    path = backbone_lib.weights_source(backbone, weights)
    return None if path is None else io_utils.file_sha256(path)


def usable_manifest(
    store: shard_store.ShardStore, key: dict, paths: Sequence[str]
) -> Optional[dict]:
    """The entry's manifest if it is well formed and of these features, else None."""
    manifest = store.read_manifest()
    if manifest is None:
        return None
    well_formed = (
        isinstance(manifest.get("shard_size"), int)
        and manifest["shard_size"] >= 1
        and manifest.get("used_dtype") in (None, *DTYPES)
        and manifest.get("storage") in (None, *STORAGE_DTYPES)
    )
    if not well_formed:
        logging.warning("Malformed %s; extracting again", store.manifest_path)
        return None
    if (
        any(manifest.get(name) != value for name, value in key.items())
        or manifest.get("image_list_sha256") != list_sha256(paths)
        or manifest.get("count") != len(paths)
    ):
        logging.warning("%s belongs to other features; extracting again", store.folder)
        return None
    return manifest


def shard_range(shard: int, shard_size: int, count: int) -> tuple[int, int]:
    """``(start, stop)``: the image indices of shard ``shard``."""
    return shard * shard_size, min((shard + 1) * shard_size, count)


def entry_ok(entry: Any, shard_size: int, count: int) -> bool:
    """Whether a manifest shard entry is well formed and where it belongs."""
    try:
        shard = entry["shard"]
        return (
            (entry["start"], entry["stop"]) == shard_range(shard, shard_size, count)
            and entry["start"] < entry["stop"]
            and entry["file"] == shard_store.shard_file(shard)
            and isinstance(entry["sha256"], str)
            and entry["rows"] == entry["stop"] - entry["start"] - len(entry["skipped"])
            and all(
                entry["start"] <= item["index"] < entry["stop"]
                for item in entry["skipped"]
            )
        )
    except (KeyError, TypeError):
        return False


def new_manifest(
    key: dict,
    weights: str,
    paths: Sequence[str],
    shard_size: int,
    backbone: str,
    feature_dim: Optional[int] = None,
) -> dict:
    """A new entry's manifest; ``feature_dim`` defaults to the feature's F.

    (An entry at a cut has no ``feature`` in its key; it passes ``feature_dim``.)
    """
    return dict(
        key,
        weights_sha256=weights_sha256(weights, backbone),
        feature_dim=feature_dim
        or backbone_catalog.feature_dim(backbone, key["feature"]),
        image_list_sha256=list_sha256(paths),
        count=len(paths),
        first_image=paths[0] if paths else "",
        shard_size=shard_size,
        used_dtype=None,
        bf16_min_cosine=None,
        storage=None,
        shards=[],
        complete=False,
    )


def check_arguments(dtype: str, batch_size: int, shard_size: int) -> None:
    """Raises ValueError for a bad extraction ``dtype``, batch or shard size."""
    if dtype not in DTYPES:
        raise ValueError(f"extract dtype must be one of {DTYPES}, got {dtype}")
    if batch_size < 1 or shard_size < 1:
        raise ValueError(
            f"batch_size and shard_size must be >= 1, got {batch_size}, {shard_size}"
        )
