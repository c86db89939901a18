"""In-process load test of the SavedModel: 8 threads x 500 mixed requests.

Valid requests must get exactly the single-threaded answer, invalid ones an
``InvalidArgumentError``; nothing may crash, and resident memory must not
grow by more than 200 MB.
"""

from __future__ import annotations

import concurrent.futures
import os
import re
import struct
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from tests import testing_utils
from vse_tf.serving import loader

THREADS = 8
REQUESTS_PER_THREAD = 500
MAX_RSS_GROWTH_MB = 200


def _rss_mb() -> float:
    """Current resident set size of this process, in MB (Linux)."""
    with open("/proc/self/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1)) / 1024


def _requests(data_dir: str) -> list[tuple[str, str, list, bool]]:
    """``(name, signature, items, valid)``: the pool the threads draw from."""
    folder = os.path.join(data_dir, "images")
    pngs = [
        open(os.path.join(folder, name), "rb").read()
        for name in sorted(os.listdir(folder))[:4]
    ]
    decoded = tf.io.decode_png(pngs[0], channels=3)
    jpeg = tf.io.encode_jpeg(decoded).numpy()
    huge_png = pngs[0][:16] + struct.pack(">II", 10000, 10000) + pngs[0][24:]
    return [
        ("text_one", "encode_text", [b"a red square"], True),
        (
            "text_batch",
            "encode_text",
            [b"a blue stripe", b"", "🐶 ünï 日本".encode()],
            True,
        ),
        ("text_punct", "encode_text", [b"?!...", b"the green square is yellow"], True),
        ("text_bad_utf8", "encode_text", [b"a red square", b"\xc3 red"], False),
        ("image_one", "encode_image", [pngs[0]], True),
        ("image_batch", "encode_image", [pngs[1], jpeg, pngs[2]], True),
        ("image_png3", "encode_image", [pngs[3]], True),
        ("image_empty", "encode_image", [b""], False),
        ("image_text", "encode_image", [pngs[0], b"not an image"], False),
        ("image_truncated", "encode_image", [pngs[1][:60]], False),
        ("image_jpeg_header_only", "encode_image", [jpeg[:40]], False),
        ("image_huge_png", "encode_image", [huge_png, pngs[0]], False),
    ]


def _call(signatures, signature: str, items: list) -> np.ndarray:
    key = "text" if signature == "encode_text" else "image_bytes"
    tensor = tf.constant(items, tf.string)
    return signatures[signature](**{key: tensor})["embedding"].numpy()


@pytest.mark.slow(reason="a load test: threads x requests on a trained export")
@pytest.mark.skipif(
    not sys.platform.startswith("linux"),
    reason=testing_utils.NOT_HERE + " RSS is read from /proc (Linux)",
)
def test_threads_get_reference_answers_and_errors(tiny_export):
    export_dir, data_dir = tiny_export.export_dir, tiny_export.data_dir
    loaded = loader.load_saved_model(export_dir)
    signatures = loaded.signatures
    pool = _requests(data_dir)

    # Single-threaded reference (and warm-up: every function traced once).
    reference = {}
    for name, signature, items, valid in pool:
        if valid:
            reference[name] = _call(signatures, signature, items)
        else:
            with pytest.raises(tf.errors.InvalidArgumentError):
                _call(signatures, signature, items)
    rss_before = _rss_mb()

    def worker(seed: int) -> dict:
        rng = np.random.default_rng(seed)
        stats = {"valid": 0, "invalid": 0, "failures": []}
        for _ in range(REQUESTS_PER_THREAD):
            name, signature, items, valid = pool[int(rng.integers(len(pool)))]
            try:
                got = _call(signatures, signature, items)
            except tf.errors.InvalidArgumentError as error:
                if valid:
                    stats["failures"].append(f"{name}: {error.message[:200]}")
                stats["invalid"] += 1
                continue
            except Exception as error:  # anything else is a failure
                stats["failures"].append(f"{name}: {type(error).__name__} {error}")
                continue
            if not valid:
                stats["failures"].append(f"{name}: answered instead of refused")
            elif got.shape != reference[name].shape:
                stats["failures"].append(f"{name}: shape {got.shape}")
            elif np.abs(got - reference[name]).max() > 1e-5:
                diff = np.abs(got - reference[name]).max()
                stats["failures"].append(f"{name}: differs by {diff}")
            stats["valid"] += 1
        return stats

    start = time.time()
    with concurrent.futures.ThreadPoolExecutor(THREADS) as executor:
        results = list(executor.map(worker, range(THREADS)))
    seconds = time.time() - start
    rss_after = _rss_mb()

    failures = [f for r in results for f in r["failures"]]
    valid = sum(r["valid"] for r in results)
    invalid = sum(r["invalid"] for r in results)
    print(
        f"{THREADS} threads x {REQUESTS_PER_THREAD} requests in {seconds:.1f} s: "
        f"{valid} valid answered, {invalid} refused, {len(failures)} failures; "
        f"RSS before {rss_before:.0f} MB, after {rss_after:.0f} MB "
        f"(growth {rss_after - rss_before:+.0f} MB)"
    )
    assert not failures, failures[:10]
    assert valid + invalid == THREADS * REQUESTS_PER_THREAD
    assert valid > 0 and invalid > 0
    assert rss_after - rss_before < MAX_RSS_GROWTH_MB
