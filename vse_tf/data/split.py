"""The in-memory form of one data split: images, captions and who owns what."""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np


class DataError(ValueError):
    """Malformed input data; the message names the file and, where known, the line.

    Attributes:
        path: The offending file.
        line: 1-based line number, or None when the problem is not tied to a line.
    """

    def __init__(self, path: str, message: str, line: Optional[int] = None):
        self.path = str(path)
        self.line = line
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {message}")


@dataclasses.dataclass(frozen=True)
class CaptionedSplit:
    """Images and their captions for one split.

    Captions are grouped by image in image order: when every image has
    ``k`` captions, captions ``k*i .. k*i+k-1`` belong to image ``i`` (the
    layout the retrieval protocol expects).

    Attributes:
        name: Split name (``train``, ``dev``, ``test``...).
        image_paths: ``[N]`` image file paths (absolute, or relative to the
            data root), or synthetic keys when ``features`` is given.
        captions: ``[M]`` raw caption strings.
        caption_image_index: ``[M]`` int32, index into ``image_paths`` of the
            image each caption describes (non-decreasing).
        features: Optional ``[N, F]`` float32 precomputed image features
            (VSE++ ``*_precomp`` data); when set, no image files are read.
    """

    name: str
    image_paths: list[str]
    captions: list[str]
    caption_image_index: np.ndarray
    features: Optional[np.ndarray] = None

    def __post_init__(self):
        index = np.asarray(self.caption_image_index, dtype=np.int32)
        object.__setattr__(self, "caption_image_index", index)
        if len(index) != len(self.captions):
            raise ValueError(
                f"{len(self.captions)} captions but {len(index)} image indices"
            )
        if len(index) and (index.min() < 0 or index.max() >= len(self.image_paths)):
            raise ValueError("caption_image_index points outside image_paths")
        if len(index) > 1 and np.any(np.diff(index) < 0):
            raise ValueError("captions must be grouped by image in image order")
        if self.features is not None and len(self.features) != len(self.image_paths):
            raise ValueError(
                f"{len(self.features)} feature rows for {len(self.image_paths)} images"
            )

    @property
    def num_images(self) -> int:
        return len(self.image_paths)

    @property
    def num_captions(self) -> int:
        return len(self.captions)

    def captions_per_image(self) -> Optional[int]:
        """The common number of captions per image, or None if it varies."""
        counts = np.bincount(self.caption_image_index, minlength=self.num_images)
        if len(counts) == 0 or np.any(counts != counts[0]):
            return None
        return int(counts[0])

    def take_images(self, count: int) -> CaptionedSplit:
        """The first ``count`` images and their captions (for quick runs)."""
        count = min(count, self.num_images)
        keep = self.caption_image_index < count
        return CaptionedSplit(
            name=self.name,
            image_paths=self.image_paths[:count],
            captions=[c for c, k in zip(self.captions, keep) if k],
            caption_image_index=self.caption_image_index[keep],
            features=None if self.features is None else self.features[:count],
        )


def group_captions(
    name: str,
    pairs: list[tuple[str, str]],
    image_order: Optional[list[str]] = None,
    features: Optional[np.ndarray] = None,
) -> CaptionedSplit:
    """Builds a split from ``(image, caption)`` pairs in any order.

    Args:
        name: Split name.
        pairs: ``(image_path, caption)`` pairs. Captions of one image keep
            their relative order.
        image_order: Image order to use; defaults to first appearance. Images
            listed here with no caption are dropped.
        features: Optional ``[N, F]`` features aligned with ``image_order``.

    Returns:
        The grouped split.
    """
    by_image: dict[str, list[str]] = {}
    for image, caption in pairs:
        by_image.setdefault(image, []).append(caption)
    order = list(by_image) if image_order is None else image_order
    images, captions, index = [], [], []
    keep_rows = []
    for row, image in enumerate(order):
        caps = by_image.get(image)
        if not caps:
            continue
        keep_rows.append(row)
        captions.extend(caps)
        index.extend([len(images)] * len(caps))
        images.append(image)
    if features is not None:
        features = features[keep_rows]
    return CaptionedSplit(name, images, captions, np.asarray(index, np.int32), features)
