"""The VSE++ precomputed-feature reader: ``{split}_ims.npy`` + ``{split}_caps.txt``."""

from __future__ import annotations

import os
from typing import Optional

import numpy as np

from vse_tf.data import validation as v
from vse_tf.data.readers.common import Caption, Image, PathLike, finish
from vse_tf.data.split import CaptionedSplit


def _split_files(data_dir: str, split: str, log: v.ProblemLog) -> tuple[str, str]:
    """``(captions, features)`` paths of the split, ``dev`` also finding ``val``.

    Raises:
        MissingSplitError: When no ``{prefix}_caps.txt`` exists, or its
            ``{prefix}_ims.npy`` does not.
    """
    candidates = {"dev": ("dev", "val"), "val": ("val", "dev")}.get(split, (split,))
    prefix = next(
        (
            p
            for p in candidates
            if os.path.isfile(os.path.join(data_dir, f"{p}_caps.txt"))
        ),
        None,
    )
    if prefix is None:
        log.missing_split(
            os.path.join(data_dir, f"{candidates[0]}_caps.txt"),
            f"caption file not found (tried {', '.join(candidates)})",
        )
    ims_path = os.path.join(data_dir, f"{prefix}_ims.npy")
    if not os.path.isfile(ims_path):
        log.missing_split(ims_path, "feature file not found")
    return os.path.join(data_dir, f"{prefix}_caps.txt"), ims_path


def _captions(caps_path: str, log: v.ProblemLog) -> list[Optional[str]]:
    """One caption per line, None where it is not UTF-8; empty ones logged."""
    captions: list[Optional[str]] = []
    for number, text, valid in v.decode_lines(
        caps_path, v.read_bytes(caps_path, log), log
    ):
        caption, problem = v.clean_caption(text.rstrip("\r\n"))
        if valid and problem is not None:
            log.add(problem[0], caps_path, f"caption: {problem[1]}", number)
        captions.append(caption if valid else None)
    if not captions:
        log.fatal(v.NO_EXAMPLES, caps_path, "no captions")
    return captions


def _load_features(ims_path: str, log: v.ProblemLog) -> np.ndarray:
    """``[N, ...]`` float32 features; fatal ``bad_features`` when unusable."""
    try:
        features = np.load(ims_path, allow_pickle=False)
    except Exception as e:  # np.load raises many types on a bad file
        log.fatal(v.BAD_FEATURES, ims_path, f"cannot load features: {e}")
    if not isinstance(features, np.ndarray):
        if hasattr(features, "close"):
            features.close()
        log.fatal(v.BAD_FEATURES, ims_path, "not a single .npy array")
    if features.dtype.kind not in "biuf":
        log.fatal(
            v.BAD_FEATURES,
            ims_path,
            f"features have dtype {features.dtype}, not numbers",
        )
    if features.ndim < 2:
        log.fatal(
            v.BAD_FEATURES, ims_path, f"expected [N, F] features, got {features.shape}"
        )
    with np.errstate(over="ignore", invalid="ignore"):
        return np.asarray(features, dtype=np.float32)


def _captions_per_image(
    rows: int,
    num_caps: int,
    captions_per_image: int,
    ims_path: str,
    caps_path: str,
    log: v.ProblemLog,
) -> int:
    """Captions per feature row group; fatal when the counts do not fit.

    With one row per caption (``rows == num_caps``) that is
    ``captions_per_image``; otherwise ``num_caps / rows``.
    """
    if rows == num_caps:
        if captions_per_image < 1 or num_caps % captions_per_image:
            log.fatal(
                v.BAD_FEATURES,
                ims_path,
                f"one feature row per caption, but {num_caps} captions are not a "
                f"multiple of captions_per_image={captions_per_image}",
            )
        return captions_per_image
    if rows == 0 or num_caps % rows:
        log.fatal(
            v.BAD_FEATURES,
            ims_path,
            f"{rows} feature rows do not divide {num_caps} captions in {caps_path}",
        )
    return num_caps // rows


def read_precomp(
    data_dir: PathLike,
    split: str,
    captions_per_image: int = 5,
    skip_bad_examples: bool = False,
) -> CaptionedSplit:
    """Reads a VSE++ ``*_precomp`` split (precomputed image features).

    ``{split}_ims.npy`` holds either one feature row per image (then every
    image has ``captions / rows`` captions, which must be a whole number) or
    one row per caption, as in Kiros et al. (then only every
    ``captions_per_image``-th row is kept). Captions are matched to images by
    position, so a bad caption line is left out without shifting the others.

    Args:
        data_dir: Folder holding ``{split}_ims.npy`` and ``{split}_caps.txt``.
        split: Split name; ``dev`` also finds ``val_*`` files (and vice versa).
        captions_per_image: Captions per image, used only when the feature
            file has one row per caption.
        skip_bad_examples: Leave bad captions and feature rows out instead of
            raising; see the `vse_tf.data.readers` docstring.

    Returns:
        The split with ``features`` set; image keys are ``"{split}:{i}"``.

    Raises:
        MissingSplitError: When the split's caption or feature file is absent.
        DataError: Listing every problem: unloadable files and inconsistent
            row and caption counts (fatal); lines that are not UTF-8, empty
            captions and feature rows with NaN or infinity.
    """
    data_dir = os.fspath(data_dir)
    log = v.ProblemLog()
    caps_path, ims_path = _split_files(data_dir, split, log)
    captions = _captions(caps_path, log)
    features = _load_features(ims_path, log)
    rows, num_caps = len(features), len(captions)
    per_image = _captions_per_image(
        rows, num_caps, captions_per_image, ims_path, caps_path, log
    )
    per_caption = rows == num_caps
    if per_caption:
        features = features[::per_image]
    finite = np.isfinite(features.reshape(len(features), -1)).all(axis=1)
    images: list[Image] = []
    for i in range(len(features)):
        image = Image(f"{split}:{i}", ims_path, None, f"feature row {i}")
        if not finite[i]:
            row = i * per_image if per_caption else i
            log.add(
                v.NONFINITE_FEATURES,
                ims_path,
                f"feature row {row} holds NaN or infinite values",
            )
        else:
            for j in range(i * per_image, (i + 1) * per_image):
                if captions[j] is not None:
                    image.captions.append(Caption(captions[j], caps_path, j + 1))
        images.append(image)
    return finish(split, images, log, ims_path, skip_bad_examples, features=features)
