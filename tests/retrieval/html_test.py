"""The results page: self-contained, escaped, and every thumbnail loads.

The loading check opens the page in headless Chromium (Debian's
``chromium``); it is skipped, with the reason, where no Chromium is
installed.
"""

from __future__ import annotations

import os
import re
import shutil

import numpy as np
import pytest
import tensorflow as tf

from tests import testing_utils
from vse_tf.retrieval import html as html_lib


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("html")
    testing_utils.write_tiny_captioned_images(
        str(root / "data"), {"train": 4, "dev": 0, "test": 0}
    )
    folder = root / "data" / "images"
    paths = sorted(str(folder / n) for n in os.listdir(folder))
    # A large noisy JPEG (downscaled when embedded) whose name needs quoting.
    noise = np.random.default_rng(0).integers(0, 256, [300, 420, 3], np.uint8)
    big = folder / "big photo #1 (ü).jpg"
    big.write_bytes(tf.io.encode_jpeg(noise, quality=95).numpy())
    assert big.stat().st_size > html_lib.SMALL_FILE_BYTES
    return paths + [str(big)]


def _results(paths):
    return [(p, 0.9 - 0.1 * i) for i, p in enumerate(paths)]


def _srcs(page: str) -> list[str]:
    return re.findall(r'<img src="([^"]*)"', page)


def test_embedded_page_is_self_contained_and_loads(images, tmp_path):
    query = 'a <b>red</b> square & "friends"'
    out = html_lib.render_results_html(
        query, _results(images), str(tmp_path / "r.html"), query_image=images[1]
    )
    assert sorted(os.listdir(tmp_path)) == ["r.html"]  # atomic: no temp left
    page = open(out, encoding="utf-8").read()
    srcs = _srcs(page)
    assert len(srcs) == len(images) + 1  # results + the query thumbnail
    assert all(
        s.startswith(("data:image/png;base64,", "data:image/jpeg;")) for s in srcs
    )
    assert "<script" not in page and "<link" not in page and "url(" not in page
    assert "a &lt;b&gt;red&lt;/b&gt; square &amp; &quot;friends&quot;" in page
    assert "<b>red</b>" not in page
    # The big JPEG was downscaled, not embedded whole.
    big_thumb = srcs[-1]
    assert len(big_thumb) < os.path.getsize(images[-1])
    thumb = tf.io.decode_image(
        tf.io.decode_base64(
            big_thumb.split(",", 1)[1].replace("+", "-").replace("/", "_")
        )
    )
    assert max(thumb.shape[:2]) == html_lib.THUMBNAIL_SIZE
    for rank in range(1, len(images) + 1):
        assert f'<span class="rank">#{rank}</span>' in page
    assert '<span class="score">0.9000</span>' in page
    # Moved alone to another folder, every thumbnail still loads.
    moved = tmp_path / "elsewhere" / "copy.html"
    moved.parent.mkdir()
    shutil.copyfile(out, moved)
    os.remove(out)
    loaded, total = testing_utils.loaded_images(str(moved))
    assert (loaded, total) == (len(images) + 1, len(images) + 1)


def test_linked_page_uses_relative_paths_that_load(images, tmp_path):
    page_path = tmp_path / "pages" / "deep" / "results.html"
    html_lib.render_results_html(
        "a red square", _results(images), str(page_path), embed_images=False
    )
    page = page_path.read_text(encoding="utf-8")
    srcs = _srcs(page)
    assert len(srcs) == len(images)
    assert all(not s.startswith(("/", "file:", "data:")) for s in srcs)
    assert any("%23" in s and "%20" in s for s in srcs)  # '#' and ' ' quoted
    loaded, total = testing_utils.loaded_images(str(page_path))
    assert (loaded, total) == (len(images), len(images))


def test_captions_page_and_missing_images(images, tmp_path):
    results = [("a <script>alert(1)</script> caption", 0.5), ("plain", 0.25)]
    out = str(tmp_path / "c.html")
    html_lib.render_results_html(
        "img_0000.png", results, out, query_image=images[0], result_kind="caption"
    )
    page = open(out, encoding="utf-8").read()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script" not in page
    assert len(_srcs(page)) == 1
    # A result image that vanished gives a note, not a broken image.
    gone = str(tmp_path / "gone.png")
    html_lib.render_results_html("q", [(gone, 1.0)], out)
    page = open(out, encoding="utf-8").read()
    assert _srcs(page) == [] and "image unavailable" in page
    assert sorted(os.listdir(tmp_path)) == ["c.html"]
    with pytest.raises(ValueError, match="result_kind"):
        html_lib.results_html("q", [], result_kind="video")
