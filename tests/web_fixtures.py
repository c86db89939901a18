"""An image index and a caption index of the tiny model, and vse-serve over them.

Fixtures for tests/web and tests/trainers/vse_serve_test.py (a plugin of
tests/conftest.py).
"""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess

import pytest

from vse_tf.retrieval import encoders, index_build


@pytest.fixture(scope="session")
def served(tmp_path_factory, tiny_export):
    """``{"encoder", "export_dir", "images", "index", "captions", "root"}``.

    The index holds the tiny data set's photos (copied to a folder of its
    own) and the caption index their captions.
    """
    root = tmp_path_factory.mktemp("web")
    photos = root / "photos"
    shutil.copytree(os.path.join(tiny_export.data_dir, "images"), photos)
    encoder = encoders.SavedModelEncoder(tiny_export.export_dir)
    index = index_build.build_image_index(
        None, str(photos), str(root / "index"), encoder=encoder, verbose=0
    )
    with open(os.path.join(tiny_export.data_dir, "captions.csv")) as f:
        captions = [row["caption"] for row in csv.DictReader(f)]
    index_build.build_caption_index(
        None, captions, str(root / "captions"), encoder=encoder, verbose=0
    )
    return {
        "encoder": encoder,
        "export_dir": tiny_export.export_dir,
        "photos": str(photos),
        "index": str(root / "index"),
        "items": index.items,
        "captions": str(root / "captions"),
        "caption_texts": captions,
        "root": root,
    }


@pytest.fixture(scope="session")
def server(served):
    """``vse-serve`` in a process of its own over `served`: ``(url, pid)``."""
    from benchmarks import serve_load

    url, process = serve_load.start_server(
        served["index"],
        served["captions"],
        served["export_dir"],
        log_path=str(served["root"] / "serve.log"),
        timeout_s=180,
    )
    yield url, process.pid
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
