"""A self-contained HTML page of search results: query, thumbnails, scores.

With ``embed_images`` every thumbnail is a ``data:`` URI (downscaled JPEG,
or the file itself when it is already small), so the page can be mailed or
moved alone; otherwise images are linked by paths relative to the page's
folder. The page loads nothing else: no scripts, fonts or style sheets.
"""

from __future__ import annotations

import base64
import html
import os
import urllib.parse
from collections.abc import Sequence
from typing import Optional

import numpy as np

from vse_tf import images as images_lib
from vse_tf import io_utils

THUMBNAIL_SIZE = 256
SMALL_FILE_BYTES = 48 * 1024
_MIME = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"BM", "image/bmp"),
)

_STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; background: #fafafa; }
h1 { font-size: 1.2em; font-weight: normal; }
.query { display: flex; gap: 1em; align-items: center; margin-bottom: 1em; }
.query img { max-width: 192px; max-height: 192px; border: 1px solid #ccc; }
.results { display: grid; gap: 1em;
  grid-template-columns: repeat(auto-fill, minmax(200px, 1fr)); }
.results.captions { grid-template-columns: 1fr; }
figure { margin: 0; padding: .5em; background: #fff; border: 1px solid #ddd; }
figure img { display: block; max-width: 100%; max-height: 200px; margin: auto; }
figcaption { font-size: .85em; margin-top: .4em; overflow-wrap: anywhere; }
.rank { font-weight: bold; } .score { color: #555; font-family: monospace; }
.missing { color: #a00; font-size: .85em; }
"""


def _mime(data: bytes) -> Optional[str]:
    for magic, mime in _MIME:
        if data.startswith(magic):
            return mime
    return None


def thumbnail_data_uri(path: str, size: int = THUMBNAIL_SIZE) -> Optional[str]:
    """A ``data:`` URI of the image (at most ``size`` px a side), or None.

    Small files are embedded as they are; others are decoded, downscaled and
    re-encoded as JPEG. Returns None when the file cannot be read or decoded.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return None
    mime = _mime(data)
    if mime is None:
        return None
    if len(data) > SMALL_FILE_BYTES:
        import tensorflow as tf

        try:
            data, mime = images_lib.thumbnail_jpeg(data, size), "image/jpeg"
        except (tf.errors.InvalidArgumentError, ValueError):
            return None
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _image_src(path: str, page_dir: str, embed: bool) -> Optional[str]:
    if embed:
        return thumbnail_data_uri(path)
    if not os.path.exists(path):
        return None
    relative = os.path.relpath(os.path.abspath(path), page_dir)
    return urllib.parse.quote(relative.replace(os.sep, "/"))


def _img(path: str, page_dir: str, embed: bool, alt: str) -> str:
    src = _image_src(path, page_dir, embed)
    if src is None:
        return f'<div class="missing">image unavailable: {html.escape(path)}</div>'
    src, alt = html.escape(src, quote=True), html.escape(alt, quote=True)
    return f'<img src="{src}" alt="{alt}">'


def results_html(
    query: str,
    results: Sequence[tuple[str, float]],
    page_dir: str = ".",
    embed_images: bool = True,
    query_image: Optional[str] = None,
    result_kind: str = "image",
    title: str = "vse_tf search",
) -> str:
    """The page as a string.

    Args:
        query: Query text (for an image query, e.g. its file name).
        results: ``[(image path or caption, score)]``, best first.
        page_dir: Folder the page will live in (relative links start there).
        embed_images: Thumbnails as ``data:`` URIs, else relative links.
        query_image: The query image file, shown as a thumbnail.
        result_kind: ``image`` (results are image paths) or ``caption``.
        title: Page title.

    Returns:
        The HTML document.
    """
    if result_kind not in ("image", "caption"):
        raise ValueError(f"result_kind must be image or caption, got {result_kind!r}")
    page_dir = os.path.abspath(page_dir)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}: {html.escape(query)}</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        '<div class="query">',
    ]
    if query_image is not None:
        parts.append(_img(query_image, page_dir, embed_images, "query image"))
    parts += [
        f'<div>Query: <q class="query-text">{html.escape(query)}</q><br>',
        f"{len(results)} result{'s' if len(results) != 1 else ''}</div></div>",
        f'<div class="results{" captions" if result_kind == "caption" else ""}">',
    ]
    for rank, (item, score) in enumerate(results, start=1):
        label = (
            f'<span class="rank">#{rank}</span> '
            f'<span class="score">{float(np.float32(score)):.4f}</span>'
        )
        if result_kind == "image":
            name = os.path.basename(item)
            parts.append(
                f"<figure>{_img(item, page_dir, embed_images, name)}"
                f'<figcaption>{label} <span class="item">{html.escape(name)}</span>'
                "</figcaption></figure>"
            )
        else:
            parts.append(
                f'<figure><figcaption>{label} <span class="item">'
                f"{html.escape(item)}</span></figcaption></figure>"
            )
    parts += ["</div></body></html>", ""]
    return "\n".join(parts)


def render_results_html(
    query: str,
    results: Sequence[tuple[str, float]],
    output_path: str,
    embed_images: bool = True,
    query_image: Optional[str] = None,
    result_kind: str = "image",
    title: str = "vse_tf search",
) -> str:
    """Writes the results page atomically (see `results_html` for the args).

    Returns:
        ``output_path``.
    """
    folder = os.path.dirname(os.path.abspath(output_path))
    os.makedirs(folder, exist_ok=True)
    page = results_html(
        query, results, folder, embed_images, query_image, result_kind, title
    )
    io_utils.atomic_write_bytes(output_path, page.encode("utf-8"), suffix=".html")
    return output_path
