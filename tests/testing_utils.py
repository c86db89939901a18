"""Small data the tests make for themselves."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import tensorflow as tf

REPO_ROOT = str(Path(__file__).resolve().parents[1])
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


def run_python(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Runs ``python ARGS`` from the repository root, as a user would.

    Returns the finished process (text stdout/stderr captured; not checked).
    """
    return subprocess.run(
        [sys.executable, *args],
        cwd=REPO_ROOT,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
