"""What ``vse-serve`` answers, framework-free: searches, thumbnails, limits, reloads.

A `SearchService` holds the model (an `encoders.Encoder`: the SavedModel in
this process, or a TF Serving client) and the index folders it serves. It
watches each index's manifest (the one file an add replaces, last): a grown
or rebuilt index is loaded on the first request after it changed (checked
at most once per ``reload_interval_s``), or at once after `reload` (SIGHUP
in ``vse-serve``); a reload that fails keeps the index that was serving.

Every refusal is an `errors.InputError` (the app's 400) with one sentence,
or `NotFound` (404); nothing a client sends makes another exception.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any, Optional

import numpy as np

from vse_tf import errors
from vse_tf import images as images_lib
from vse_tf.retrieval import ann_index, encoders, index_lib

LOGGER = logging.getLogger(__name__)


class NotFound(errors.UserError):
    """No such result id, or a thumbnail of a file the index does not serve."""


@dataclasses.dataclass(frozen=True)
class Limits:
    """What one request may ask for.

    Attributes:
        max_upload_bytes: Largest request body (an uploaded image).
        max_image_pixels: Largest uploaded image, width x height, read from
            its header before anything decodes it.
        max_k: Most results per query.
        max_query_chars: Longest query sentence.
    """

    max_upload_bytes: int = 16 * 2**20
    max_image_pixels: int = 40_000_000
    max_k: int = 100
    max_query_chars: int = 1000


class WatchedIndex:
    """An index folder, loaded again when its manifest changes.

    Args:
        folder: The index folder.
        load: ``load(folder) -> Index`` (exact, or with its ANN).
        interval_s: Least seconds between two looks at the manifest.
    """

    def __init__(
        self,
        folder: str,
        load: Callable[[str], index_lib.Index],
        interval_s: float = 1.0,
    ):
        self.folder = folder
        self._load, self._interval_s = load, interval_s
        self._lock = threading.Lock()
        self._stamp = self._manifest_stamp()
        self.index = load(folder)
        self.loads = 1
        self._checked = time.monotonic()
        self._forced = False

    def _manifest_stamp(self) -> Optional[tuple[int, int, int]]:
        try:
            stat = os.stat(os.path.join(self.folder, index_lib.MANIFEST_FILE))
        except OSError:
            return None
        return stat.st_ino, stat.st_mtime_ns, stat.st_size

    def reload(self) -> None:
        """Makes the next `current` load the folder again, changed or not."""
        self._forced = True

    def current(self) -> index_lib.Index:
        """The index, loaded again first where its manifest changed."""
        now = time.monotonic()
        if not self._forced and now - self._checked < self._interval_s:
            return self.index
        with self._lock:
            if not self._forced and now - self._checked < self._interval_s:
                return self.index
            self._checked = now
            stamp = self._manifest_stamp()
            if stamp != self._stamp or self._forced:
                self._forced = False
                try:
                    index = self._load(self.folder)
                except Exception as error:  # noqa: BLE001  (keep serving)
                    LOGGER.warning(
                        "kept the index that was serving: %s did not load (%s)",
                        self.folder,
                        error,
                    )
                    return self.index
                self.index, self._stamp = index, stamp
                self.loads += 1
                LOGGER.info("loaded %s: %d items", self.folder, len(index))
        return self.index


class Thumbnails:
    """JPEG thumbnails made on demand, kept in memory (least recently used out).

    Args:
        size: Longest side in pixels.
        max_bytes: Memory the cache may hold.
    """

    def __init__(self, size: int = 256, max_bytes: int = 64 * 2**20):
        self.size, self.max_bytes = size, max_bytes
        self._cache: collections.OrderedDict = collections.OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.made = 0

    def get(self, path: str) -> Optional[bytes]:
        """The thumbnail of an image file, or None where it does not decode."""
        try:
            stat = os.stat(path)
        except OSError:
            return None
        key = (path, stat.st_mtime_ns, stat.st_size)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        data, problem = images_lib.read_checked(path)
        if problem is not None:
            return None
        try:
            jpeg = images_lib.thumbnail_jpeg(data, self.size)
        except Exception:  # noqa: BLE001  (a file that does not decode)
            return None
        with self._lock:
            self.made += 1
            self._cache[key] = jpeg
            self._bytes += len(jpeg)
            while self._bytes > self.max_bytes and len(self._cache) > 1:
                _, old = self._cache.popitem(last=False)
                self._bytes -= len(old)
        return jpeg


def _is_inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _folders(manifest: dict) -> list[str]:
    """The folders the index was built from (its build and every add)."""
    sources = [manifest.get("source")]
    sources += [a.get("source") for a in manifest.get("additions", [])]
    return sorted(
        {os.path.abspath(s) for s in sources if isinstance(s, str) and os.path.isdir(s)}
    )


def served_path(manifest: dict, item: str) -> Optional[str]:
    """The file of an index item that may be shown, or None.

    A file is served only when the item is a local path whose real location
    (symlinks resolved) lies inside the folder it was indexed from: the
    index's source folder that holds it, or, for items from a list file or
    glob, the item's own folder. So a symlink out of those folders is not
    followed.

    Args:
        manifest: The index manifest (``source``, ``additions``).
        item: An image path the index lists.
    """
    if not os.path.isabs(item) or "://" in item:
        return None
    roots = [f for f in _folders(manifest) if _is_inside(item, f)]
    root = max(roots, key=len) if roots else os.path.dirname(item)
    real = os.path.realpath(item)
    if not _is_inside(real, os.path.realpath(root)) or not os.path.isfile(real):
        return None
    return real


def display_name(manifest: dict, item: str) -> str:
    """An image path shortened to its place under the folder it came from."""
    for folder in sorted(_folders(manifest), key=len, reverse=True):
        if _is_inside(item, folder):
            return os.path.relpath(item, folder)
    return os.path.basename(item) if os.path.isabs(item) else item


class SearchService:
    """Searches an image (or caption) index by text, uploaded image or result.

    Args:
        encoder: The model: `encoders.SavedModelEncoder` or a serving client.
        index_dir: The index to search (images, usually).
        captions_dir: Optional caption index: an image query also gets its
            nearest captions.
        ann: Search the approximate index of each folder (``vse-index --ann``).
        limits: What one request may ask for.
        thumbnail_size: Longest side of thumbnails.
        reload_interval_s: Least seconds between two looks at a manifest.

    Raises:
        errors.UserError: if an index was built with another model.
    """

    def __init__(
        self,
        encoder: encoders.Encoder,
        index_dir: str,
        captions_dir: Optional[str] = None,
        ann: bool = False,
        limits: Limits = Limits(),
        thumbnail_size: int = 256,
        reload_interval_s: float = 1.0,
    ):
        self.encoder, self.limits = encoder, limits
        load = ann_index.load_index if ann else index_lib.load_index
        self._fingerprint = encoders.fingerprint(encoder)
        self.images = WatchedIndex(index_dir, load, reload_interval_s)
        self.captions = (
            WatchedIndex(captions_dir, load, reload_interval_s)
            if captions_dir
            else None
        )
        for watched in (self.images, self.captions):
            if watched is not None:
                self._check_model(watched)
        if self.captions is not None and self.captions.index.kind != "caption":
            raise errors.UserError(
                f"{captions_dir} is an index of {self.captions.index.kind}s; "
                "--captions takes a caption index (vse-index --captions=FILE)"
            )
        self.thumbnails = Thumbnails(thumbnail_size)

    def _check_model(self, watched: WatchedIndex) -> None:
        index = watched.index
        recorded = index.manifest.get("fingerprint")
        if encoders.same_model(recorded, self._fingerprint) is False:
            built = index.manifest.get("model") or {}
            raise errors.UserError(
                f"{watched.folder} was built with another model "
                f"({built.get('path') or built.get('server')}): its scores would "
                "be meaningless; serve it with that model or index again"
            )

    def reload(self) -> None:
        """Loads every index again on the next request (SIGHUP)."""
        for watched in (self.images, self.captions):
            if watched is not None:
                watched.reload()

    def info(self) -> dict:
        """What is served: the kind and size of each index, the model."""
        index = self.images.current()
        captions = self.captions.current() if self.captions is not None else None
        return {
            "kind": index.kind,
            "count": len(index),
            "captions": len(captions) if captions is not None else None,
            "dim": index.dim,
            "model": self.encoder.describe(),
            "limits": dataclasses.asdict(self.limits),
        }

    # Queries.

    def _k(self, k: Any) -> int:
        try:
            k = int(k)
        except (TypeError, ValueError):
            raise errors.InputError(f"k must be a whole number, got {k!r}") from None
        if not 1 <= k <= self.limits.max_k:
            raise errors.InputError(
                f"k must be between 1 and {self.limits.max_k}, got {k}"
            )
        return k

    def search_text(self, text: str, k: Any = 12, embedding: bool = False) -> dict:
        """The images (items) nearest a sentence.

        Returns:
            The answer of `answer`, with ``query = {"text": ...}``.
        """
        text = (text or "").strip()
        if not text:
            raise errors.InputError("the query is empty: type a sentence")
        if len(text) > self.limits.max_query_chars:
            raise errors.InputError(
                f"the query has {len(text)} characters; the limit is "
                f"{self.limits.max_query_chars}"
            )
        k = self._k(k)
        query = self.encoder.encode_text([text])
        return self.answer(query, k, {"text": text}, embedding, captions=False)

    def check_upload(self, data: bytes) -> tuple[int, int]:
        """``(height, width)`` of an upload the server will decode.

        Raises:
            errors.InputError: for an empty or too large body, bytes of no
                image format, a truncated file, or too many pixels.
        """
        if len(data) > self.limits.max_upload_bytes:
            raise errors.InputError(
                f"the upload is {len(data) / 2**20:.1f} MiB; the limit is "
                f"{self.limits.max_upload_bytes / 2**20:.0f} MiB"
            )
        problem = images_lib.content_problem(data)
        if problem is not None:
            raise errors.InputError(f"the upload is no usable image: {problem}")
        shape = images_lib.image_shape(data)
        if shape is None:
            raise errors.InputError(
                "the upload is no usable image: its header states no size"
            )
        height, width = shape
        if height * width > self.limits.max_image_pixels:
            raise errors.InputError(
                f"the image is {width}x{height} ({height * width / 1e6:.1f} "
                f"megapixels); the limit is {self.limits.max_image_pixels / 1e6:g} "
                "megapixels: send a smaller copy"
            )
        if height == 0 or width == 0:
            raise errors.InputError(f"the image is {width}x{height}: it has no pixels")
        return shape

    def search_upload(self, data: bytes, k: Any = 12, embedding: bool = False) -> dict:
        """The images nearest an uploaded image, and its nearest captions.

        Raises:
            errors.InputError: see `check_upload`; also for data that does
                not decode.
        """
        k = self._k(k)
        height, width = self.check_upload(data)
        try:
            query = self.encoder.encode_images([data])
        except Exception as error:
            if encoders.is_invalid_input(error):
                reason = images_lib.decode_problem(data) or encoders.short_error(error)
                raise errors.InputError(
                    f"the upload is no usable image: {reason}"
                ) from None
            raise
        described = {"upload": {"bytes": len(data), "width": width, "height": height}}
        return self.answer(query, k, described, embedding, captions=True)

    def search_indexed(
        self, item_id: Any, k: Any = 12, embedding: bool = False
    ) -> dict:
        """The items nearest an indexed item (a clicked result), by its row.

        Raises:
            NotFound: for an id the index does not have.
        """
        k = self._k(k)
        index = self.images.current()
        try:
            row = int(item_id)
        except (TypeError, ValueError):
            raise errors.InputError(f"no result id: {item_id!r}") from None
        if not 0 <= row < len(index):
            raise NotFound(f"the index has no item {row} (it holds {len(index)})")
        query = np.asarray(index.embeddings[row : row + 1], np.float32)
        query /= max(float(np.linalg.norm(query)), 1e-12)  # (float16 rows)
        described = {"id": row, **self._describe(index, row)}
        captions = index.kind == "image"
        return self.answer(query, k, described, embedding, captions=captions)

    def _describe(self, index: index_lib.Index, row: int) -> dict:
        item = index.items[row]
        if index.kind != "image":
            return {"item": item}
        return {
            "item": item,
            "name": display_name(index.manifest, item),
            "thumbnail": f"/thumbnail/{row}",
        }

    def answer(
        self,
        query: np.ndarray,
        k: int,
        described: dict,
        embedding: bool,
        captions: bool,
    ) -> dict:
        """The JSON answer of one query embedding.

        Returns:
            ``{"query", "kind", "count", "results": [{"rank", "id", "item",
            "score", "name", "thumbnail"}], "captions": [...] (an image query
            with a caption index), "embedding": [D] (when asked)}``.
        """
        index = self.images.current()
        answer = {
            "query": described,
            "kind": index.kind,
            "count": len(index),
            "results": self._results(index, query, k),
        }
        if captions and self.captions is not None:
            answer["captions"] = self._results(self.captions.current(), query, k)
        if embedding:
            answer["embedding"] = [round(float(x), 6) for x in np.ravel(query)]
        return answer

    def _results(self, index: index_lib.Index, query: np.ndarray, k: int) -> list:
        scores, ids = index.search(np.asarray(query, np.float32), k)
        return [
            {
                "rank": rank,
                "id": row,
                "score": round(float(score), 4),
                **self._describe(index, row),
            }
            for rank, (score, row) in enumerate(
                zip(scores[0].tolist(), ids[0].tolist()), start=1
            )
            if row >= 0
        ]

    def thumbnail(self, item_id: Any) -> bytes:
        """The JPEG thumbnail of an indexed image, by its row.

        Raises:
            NotFound: for an id the index lacks, a caption index, a file out
                of the indexed folders (a symlink out), or one that no longer
                reads.
        """
        index = self.images.current()
        try:
            row = int(item_id)
        except (TypeError, ValueError):
            raise NotFound(f"no thumbnail {item_id!r}") from None
        if index.kind != "image" or not 0 <= row < len(index):
            raise NotFound(f"no thumbnail {row}")
        path = served_path(index.manifest, index.items[row])
        jpeg = self.thumbnails.get(path) if path is not None else None
        if jpeg is None:
            raise NotFound(f"no thumbnail {row}")
        return jpeg
