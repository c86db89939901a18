"""Cross-modal retrieval metrics (Recall@K, median and mean rank) in numpy.

Ranks are 1-based. Ties are counted against the model (pessimistic ranking): the
rank of a true item is ``1 + (number of wrong candidates scoring >= the true
score)``. A collapsed model whose embeddings are all identical therefore gets the
worst possible ranks rather than perfect ones.

Scores are inner products in float32, computed ``batch_size`` queries at a time so
that the full ``[N, N * k]`` score matrix is never held in memory at once.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

METRIC_KEYS = (
    "i2t_r1",
    "i2t_r5",
    "i2t_r10",
    "i2t_medr",
    "i2t_meanr",
    "t2i_r1",
    "t2i_r5",
    "t2i_r10",
    "t2i_medr",
    "t2i_meanr",
    "rsum",
)
COCO_IMAGES = 5000
COCO_FOLD_IMAGES = 1000
COCO_PROTOCOLS = ("1k", "5k")


def _as_matrix(name: str, x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name} must have shape [n, D], got shape {x.shape}")
    x = x.astype(np.float32, copy=False)
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} contains non-finite values")
    return x


def _batch_size(batch_size: int) -> int:
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    return int(batch_size)


def _validate(
    image_emb: np.ndarray, caption_emb: np.ndarray, captions_per_image: int
) -> tuple:
    if int(captions_per_image) != captions_per_image or captions_per_image < 1:
        raise ValueError(
            f"captions_per_image must be a positive integer, got {captions_per_image!r}"
        )
    images = _as_matrix("image_emb", image_emb)
    captions = _as_matrix("caption_emb", caption_emb)
    if images.shape[0] == 0:
        raise ValueError("image_emb is empty")
    if images.shape[1] != captions.shape[1]:
        raise ValueError(
            f"embedding sizes differ: image_emb {images.shape}, "
            f"caption_emb {captions.shape}"
        )
    if captions.shape[0] != images.shape[0] * captions_per_image:
        raise ValueError(
            f"caption_emb must have {captions_per_image} rows per image "
            f"({images.shape[0]} * {captions_per_image} = "
            f"{images.shape[0] * captions_per_image}), got {captions.shape[0]}"
        )
    return images, captions


def _checked_inputs(
    image_emb: np.ndarray,
    caption_emb: np.ndarray,
    captions_per_image: int,
    batch_size: int,
) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Validated ``(images [N, D], captions [N * k, D], k, batch_size)``."""
    images, captions = _validate(image_emb, caption_emb, captions_per_image)
    return images, captions, int(captions_per_image), _batch_size(batch_size)


def _blocks(count: int, batch_size: int) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` of each run of ``batch_size`` queries out of ``count``."""
    for start in range(0, count, batch_size):
        yield start, min(start + batch_size, count)


def _block_scores(
    queries: np.ndarray,
    candidates: np.ndarray,
    group: int,
    true_groups: np.ndarray,
    start: int,
    stop: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Queries ``start:stop`` against all candidates.

    Args:
        queries: ``[Q, D]``.
        candidates: ``[G * group, D]``, in ``G`` runs of ``group`` rows.
        group: Rows per candidate run (``k`` captions an image; 1 image).
        true_groups: ``int [Q]``: the run of each query's true candidates.
        start: First query of the block.
        stop: One past its last query.

    Returns:
        ``(scores [b, G * group], true [b, group])``: every candidate's
        score and those of each query's true candidates.
    """
    rows = np.arange(stop - start)
    scores = queries[start:stop] @ candidates.T  # [b, G * group]
    true = scores.reshape(stop - start, -1, group)[rows, true_groups[start:stop]]
    return scores, true


def _block_ranks(scores: np.ndarray, true: np.ndarray) -> np.ndarray:
    """``[b]`` ranks from `_block_scores`: 1 + wrong candidates >= best true."""
    best = true.max(axis=1)  # [b]
    at_least = np.count_nonzero(scores >= best[:, None], axis=1)
    true_at_least = np.count_nonzero(true >= best[:, None], axis=1)
    return at_least - true_at_least + 1


def _ranks(
    queries: np.ndarray,
    candidates: np.ndarray,
    group: int,
    true_groups: np.ndarray,
    batch_size: int,
) -> np.ndarray:
    """``int64 [Q]`` ranks of each query's best true candidate (see `_block_scores`)."""
    ranks = np.empty(queries.shape[0], dtype=np.int64)
    for start, stop in _blocks(queries.shape[0], batch_size):
        scores, true = _block_scores(
            queries, candidates, group, true_groups, start, stop
        )
        ranks[start:stop] = _block_ranks(scores, true)
    return ranks


def i2t_ranks(
    image_emb: np.ndarray,
    caption_emb: np.ndarray,
    captions_per_image: int = 5,
    batch_size: int = 1000,
) -> np.ndarray:
    """1-based image-to-text ranks, pessimistic in ties.

    For image ``i`` the rank is that of its best-scored true caption (captions
    ``k*i .. k*i+k-1``) among all ``N*k`` captions: ``1 +`` the number of wrong
    captions with score ``>=`` the best true score.

    Args:
        image_emb: Image embeddings, shape ``[N, D]``.
        caption_emb: Caption embeddings, shape ``[N * k, D]``.
        captions_per_image: ``k``.
        batch_size: Number of image queries scored at a time.

    Returns:
        int64 array of shape ``[N]``.
    """
    return _i2t_ranks(
        *_checked_inputs(image_emb, caption_emb, captions_per_image, batch_size)
    )


def _i2t_ranks(
    images: np.ndarray, captions: np.ndarray, k: int, batch_size: int
) -> np.ndarray:
    """Each image's ``k`` own captions are its true candidates."""
    return _ranks(images, captions, k, np.arange(images.shape[0]), batch_size)


def t2i_ranks(
    image_emb: np.ndarray,
    caption_emb: np.ndarray,
    captions_per_image: int = 5,
    batch_size: int = 1000,
) -> np.ndarray:
    """1-based text-to-image ranks, pessimistic in ties.

    Caption ``j`` queries all ``N`` images; its one true image is ``j // k``. The
    rank is ``1 +`` the number of wrong images with score ``>=`` the true score.

    Args:
        image_emb: Image embeddings, shape ``[N, D]``.
        caption_emb: Caption embeddings, shape ``[N * k, D]``.
        captions_per_image: ``k``.
        batch_size: Number of caption queries scored at a time.

    Returns:
        int64 array of shape ``[N * k]``.
    """
    return _t2i_ranks(
        *_checked_inputs(image_emb, caption_emb, captions_per_image, batch_size)
    )


def _t2i_ranks(
    images: np.ndarray, captions: np.ndarray, k: int, batch_size: int
) -> np.ndarray:
    """Caption ``j``'s one true candidate is image ``j // k``."""
    return _ranks(captions, images, 1, np.arange(captions.shape[0]) // k, batch_size)


def _both_ranks(
    images: np.ndarray, captions: np.ndarray, k: int, batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """`_i2t_ranks` and `_t2i_ranks` from one pass over the score matrix.

    Each ``[b, N*k]`` block of image rows gives its images' i2t ranks and
    adds to every caption's count of images scoring >= its true image. The
    true caption scores are taken first from the diagonal blocks; if any
    differs (bitwise) from the same entry in the full-width blocks (BLAS
    may round differently for other shapes) the t2i ranks are recomputed
    the two-pass way, so the result is always exactly `_t2i_ranks`.
    """
    n = images.shape[0]
    true_scores = np.empty(n * k, np.float32)
    for start, stop in _blocks(n, batch_size):
        rows = np.arange(stop - start)
        diagonal = images[start:stop] @ captions[start * k : stop * k].T
        true_scores[start * k : stop * k] = diagonal.reshape(
            stop - start, stop - start, k
        )[rows, rows].reshape(-1)
    i2t = np.empty(n, dtype=np.int64)
    t2i = np.zeros(n * k, dtype=np.int64)
    exact = True
    image_ids = np.arange(n)
    for start, stop in _blocks(n, batch_size):
        scores, true = _block_scores(images, captions, k, image_ids, start, stop)
        exact = exact and np.array_equal(
            true.reshape(-1), true_scores[start * k : stop * k]
        )
        i2t[start:stop] = _block_ranks(scores, true)
        if exact:
            # Counts the true image itself once; it stands in for the "1 +".
            t2i += np.count_nonzero(scores >= true_scores[None, :], axis=0)
    if not exact:
        t2i = _t2i_ranks(images, captions, k, batch_size)
    return i2t, t2i


def _summarise(ranks: np.ndarray, prefix: str) -> dict[str, float]:
    out = {
        f"{prefix}_r{top}": float(100.0 * np.mean(ranks <= top)) for top in (1, 5, 10)
    }
    out[f"{prefix}_medr"] = float(np.floor(np.median(ranks)))
    out[f"{prefix}_meanr"] = float(np.mean(ranks))
    return out


def retrieval_metrics(
    image_emb: np.ndarray,
    caption_emb: np.ndarray,
    captions_per_image: int = 5,
    batch_size: int = 1000,
) -> dict[str, float]:
    """Recall@{1,5,10}, median and mean rank in both retrieval directions.

    Captions ``k*i .. k*i+k-1`` belong to image ``i``. Image-to-text (``i2t``)
    ranks each image's best-ranked true caption among all ``N*k`` captions;
    text-to-image (``t2i``) ranks each caption's one true image among ``N``
    images. Ties are counted against the model (see the module docstring), so
    identical embeddings score worst, not best.

    Args:
        image_emb: Image embeddings, shape ``[N, D]`` (cast to float32).
        caption_emb: Caption embeddings, shape ``[N * k, D]`` (cast to float32).
        captions_per_image: ``k``.
        batch_size: Queries scored per matmul chunk; results do not depend on it.

    Returns:
        Dict with keys ``METRIC_KEYS``: recalls in percent, ``*_medr`` =
        floor(median rank), ``*_meanr`` = mean rank, ``rsum`` = sum of the six
        recalls. All values are Python floats.

    Raises:
        ValueError: On malformed shapes, non-finite values or a bad
            ``captions_per_image``.
    """
    i2t, t2i = _both_ranks(
        *_checked_inputs(image_emb, caption_emb, captions_per_image, batch_size)
    )
    out = _summarise(i2t, "i2t")
    out.update(_summarise(t2i, "t2i"))
    out["rsum"] = float(
        sum(out[f"{d}_r{top}"] for d in ("i2t", "t2i") for top in (1, 5, 10))
    )
    return {key: out[key] for key in METRIC_KEYS}


def coco_metrics(
    image_emb: np.ndarray,
    caption_emb: np.ndarray,
    protocol: str = "1k",
    captions_per_image: int = 5,
    batch_size: int = 1000,
) -> dict[str, float]:
    """MS-COCO test-split metrics under the 1K or 5K protocol.

    Args:
        image_emb: Embeddings of the 5,000 test images, shape ``[5000, D]``.
        caption_emb: Caption embeddings, shape ``[5000 * k, D]``.
        protocol: ``"5k"``: ``retrieval_metrics`` over all 5,000 images.
            ``"1k"``: mean of each metric over five contiguous folds of 1,000
            images (with their ``1000 * k`` captions).
        captions_per_image: ``k``.
        batch_size: Queries scored per matmul chunk.

    Returns:
        Dict with keys ``METRIC_KEYS`` (Python floats).

    Raises:
        ValueError: If ``protocol`` is unknown, there are not exactly 5,000
            images, or shapes are otherwise malformed.
    """
    if protocol not in COCO_PROTOCOLS:
        raise ValueError(f"protocol must be one of {COCO_PROTOCOLS}, got {protocol!r}")
    images, captions = _validate(image_emb, caption_emb, captions_per_image)
    if images.shape[0] != COCO_IMAGES:
        raise ValueError(
            f"coco_metrics needs exactly {COCO_IMAGES} images, "
            f"got image_emb of shape {images.shape}"
        )
    if protocol == "5k":
        return retrieval_metrics(images, captions, captions_per_image, batch_size)
    k = captions_per_image
    folds = []
    for start in range(0, COCO_IMAGES, COCO_FOLD_IMAGES):
        stop = start + COCO_FOLD_IMAGES
        folds.append(
            retrieval_metrics(
                images[start:stop], captions[start * k : stop * k], k, batch_size
            )
        )
    return {key: float(np.mean([fold[key] for fold in folds])) for key in METRIC_KEYS}


def format_table(metrics: dict[str, float], title: str) -> str:
    """Renders metrics as a small fixed-width table for terminal output.

    Args:
        metrics: A dict with the keys of ``retrieval_metrics``.
        title: First line of the table.

    Returns:
        Multi-line string (no trailing newline), e.g.::

            COCO 1k
            direction    R@1    R@5   R@10     medr    meanr
            i2t         52.3   80.1   88.9      1.0      4.2
            t2i         40.0   75.5   86.0      2.0      9.8
            rsum       422.8
    """
    header = (
        f"{'direction':<9} {'R@1':>6} {'R@5':>6} {'R@10':>6} {'medr':>8} {'meanr':>8}"
    )
    lines = [title, header]
    for direction in ("i2t", "t2i"):
        lines.append(
            f"{direction:<9} "
            f"{metrics[f'{direction}_r1']:>6.1f} "
            f"{metrics[f'{direction}_r5']:>6.1f} "
            f"{metrics[f'{direction}_r10']:>6.1f} "
            f"{metrics[f'{direction}_medr']:>8.1f} "
            f"{metrics[f'{direction}_meanr']:>8.1f}"
        )
    lines.append(f"{'rsum':<9} {metrics['rsum']:>6.1f}")
    return "\n".join(lines)
