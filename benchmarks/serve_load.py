"""Load test of ``vse-serve`` on loopback: clients x mixed requests, latency, RSS.

Starts ``python -m trainers.vse_serve`` over ``--index`` (and ``--captions``,
``--model``) on a free port of 127.0.0.1, or uses a running server
(``--url``, with ``--pid`` for its memory). Each of ``--clients`` threads
keeps one HTTP/1.1 connection and sends ``--requests`` requests drawn
(seeded) from this mix:

=========  =====  ==========================================================
kind       share  request (expected status)
=========  =====  ==========================================================
text       40 %   ``GET /api/search?q=SENTENCE&k=12`` (200)
image      20 %   ``POST /api/search?k=12``, an indexed photo as body (200)
click      10 %   ``GET /api/search?id=ROW&k=12`` (200)
thumbnail  15 %   ``GET /thumbnail/ROW`` (200)
bad        15 %   not an image, a truncated photo, an empty body, a PNG
                  whose header says 50 megapixels (each 400)
=========  =====  ==========================================================

A failure is any other status, or no answer. After a warm-up of 40
requests (so the first calls' tracing is not counted) the server's resident
memory (``VmRSS``) is read, then sampled every 0.2 s while the clients run.
Prints latency percentiles per kind and overall, requests per second, RSS
before, peak and after, and ONE line of JSON (last line).

Usage:
    python -m benchmarks.serve_load --index=idx/photos --captions=idx/caps
    python -m benchmarks.serve_load --url=http://127.0.0.1:8080 --pid=1234
"""

from __future__ import annotations

import http.client
import json
import os
import random
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
import zlib
from collections.abc import Sequence
from typing import Optional

import numpy as np
from absl import app, flags

from vse_tf import hardware

KINDS = (("text", 40), ("image", 20), ("click", 10), ("thumbnail", 15), ("bad", 15))

SENTENCES = (
    "a dog runs on the grass",
    "two children play in the water",
    "a man rides a bicycle down the street",
    "a black and white dog jumps over a log",
    "people walk through a busy market",
    "a girl in a pink dress climbs the stairs",
    "a red square",
    "a blue circle on a white background",
)


def png_claiming(width: int, height: int) -> bytes:
    """A whole 1-pixel PNG whose header states ``width`` x ``height``."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        return struct.pack(">I", len(data)) + kind + data + crc

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0\0\0\0"))
        + chunk(b"IEND", b"")
    )


def rss_bytes(pid: int) -> Optional[int]:
    """Resident memory of a process (Linux ``/proc``), or None elsewhere."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class _Client:
    """One keep-alive connection; reconnects after the server closed it."""

    def __init__(self, url: str):
        parsed = urllib.parse.urlparse(url)
        self.host, self.port = parsed.hostname, parsed.port or 80
        self.connection: Optional[http.client.HTTPConnection] = None

    def request(self, method: str, path: str, body: Optional[bytes]) -> int:
        for attempt in range(2):
            if self.connection is None:
                self.connection = http.client.HTTPConnection(
                    self.host, self.port, timeout=120
                )
            try:
                headers = {"Content-Type": "application/octet-stream"} if body else {}
                self.connection.request(method, path, body=body, headers=headers)
                response = self.connection.getresponse()
                response.read()
                if response.getheader("connection", "").lower() == "close":
                    self.connection.close()
                    self.connection = None
                return response.status
            except (http.client.HTTPException, OSError):
                self.connection.close()
                self.connection = None
                if attempt == 1:
                    raise
        raise AssertionError("unreachable")


def _requests(
    rng: random.Random,
    count: int,
    sentences: Sequence[str],
    photos: Sequence[bytes],
    num_items: int,
) -> list[tuple[str, str, str, Optional[bytes], int]]:
    """``(kind, method, path, body, expected status)`` of one client."""
    names = [name for name, _ in KINDS]
    weights = [share for _, share in KINDS]
    bad = [
        b"this is no image at all",
        photos[0][: len(photos[0]) // 2],
        b"",
        png_claiming(7072, 7072),
    ]
    plan = []
    for _ in range(count):
        kind = rng.choices(names, weights)[0]
        if kind == "text":
            query = urllib.parse.urlencode({"q": rng.choice(sentences), "k": 12})
            plan.append((kind, "GET", "/api/search?" + query, None, 200))
        elif kind == "image":
            plan.append((kind, "POST", "/api/search?k=12", rng.choice(photos), 200))
        elif kind == "click":
            row = rng.randrange(num_items)
            plan.append((kind, "GET", f"/api/search?id={row}&k=12", None, 200))
        elif kind == "thumbnail":
            plan.append(
                (kind, "GET", f"/thumbnail/{rng.randrange(num_items)}", None, 200)
            )
        else:
            plan.append((kind, "POST", "/api/search", rng.choice(bad), 400))
    return plan


def run_load(
    url: str,
    pid: Optional[int],
    photos: Sequence[bytes],
    num_items: int,
    sentences: Sequence[str] = SENTENCES,
    clients: int = 8,
    requests_per_client: int = 200,
    seed: int = 0,
) -> dict:
    """Runs the load and returns its figures.

    Args:
        url: The server (``http://127.0.0.1:PORT``).
        pid: Its process id, for RSS (None: not measured).
        photos: Encoded images to upload (indexed photos).
        num_items: Rows of the index (ids for clicks and thumbnails).
        sentences: Text queries.
        clients: Concurrent connections (threads).
        requests_per_client: Requests each.
        seed: Draws the mix.

    Returns:
        ``{"requests", "failures", "failed" (the first 10), "seconds",
        "requests_per_s", "latency_ms": {kind: {"p50", "p95", "max"}},
        "rss_mb": {"before", "peak", "after", "growth"}}``.
    """
    rng = random.Random(seed)
    warm = _Client(url)
    for _, method, path, body, _ in _requests(rng, 40, sentences, photos, num_items):
        warm.request(method, path, body)
    plans = [
        _requests(
            random.Random(seed * 1000 + c),
            requests_per_client,
            sentences,
            photos,
            num_items,
        )
        for c in range(clients)
    ]
    before = rss_bytes(pid) if pid else None
    peak = [before or 0]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.2):
            value = rss_bytes(pid) if pid else None
            if value:
                peak[0] = max(peak[0], value)

    timings: list[list[tuple[str, float]]] = [[] for _ in range(clients)]
    failed: list[str] = []
    lock = threading.Lock()

    def client(number: int) -> None:
        connection = _Client(url)
        for kind, method, path, body, expected in plans[number]:
            start = time.perf_counter()
            try:
                status = connection.request(method, path, body)
            except (http.client.HTTPException, OSError) as error:
                status = f"no answer ({error})"
            timings[number].append((kind, time.perf_counter() - start))
            if status != expected:
                with lock:
                    failed.append(f"{method} {path[:60]}: {status} != {expected}")

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - start
    done.set()
    sampler.join()
    after = rss_bytes(pid) if pid else None
    everything = [t for per_client in timings for t in per_client]
    latency = {}
    for kind in [name for name, _ in KINDS] + ["all"]:
        values = np.array([s for k, s in everything if kind in ("all", k)]) * 1e3
        if len(values):
            latency[kind] = {
                "count": int(len(values)),
                "p50": round(float(np.percentile(values, 50)), 1),
                "p95": round(float(np.percentile(values, 95)), 1),
                "max": round(float(values.max()), 1),
            }
    mb = 2**20
    rss = None
    if before and after:
        peak_value = max(peak[0], after)
        rss = {
            "before": round(before / mb, 1),
            "peak": round(peak_value / mb, 1),
            "after": round(after / mb, 1),
            "growth": round((after - before) / mb, 1),
        }
    return {
        "requests": len(everything),
        "failures": len(failed),
        "failed": failed[:10],
        "seconds": round(seconds, 2),
        "requests_per_s": round(len(everything) / seconds, 1),
        "latency_ms": latency,
        "rss_mb": rss,
    }


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(
    index: str,
    captions: Optional[str] = None,
    model: Optional[str] = None,
    log_path: Optional[str] = None,
    timeout_s: float = 300,
) -> tuple[str, subprocess.Popen]:
    """Starts ``python -m trainers.vse_serve`` on a free loopback port.

    Args:
        index, captions, model: Its ``--index``, ``--captions``, ``--model``.
        log_path: Where its output goes (default: discarded).
        timeout_s: How long it may take to answer ``/api/info``.

    Returns:
        ``(url, process)`` once it answers.

    Raises:
        RuntimeError: if it exits or does not answer in time (with the end
            of its log).
    """
    port = _free_port()
    command = [sys.executable, "-m", "trainers.vse_serve", f"--index={index}"]
    command += [f"--port={port}"]
    if captions:
        command.append(f"--captions={captions}")
    if model:
        command.append(f"--model={model}")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    log = open(log_path or os.devnull, "w")  # noqa: SIM115  (the child's; closed)
    with log:
        process = subprocess.Popen(
            command,
            cwd=root,
            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(url + "/api/info", timeout=5):
                return url, process
        except OSError:
            time.sleep(0.5)
    process.kill()
    output = ""
    if log_path:
        with open(log_path) as f:
            output = f.read()[-3000:]
    raise RuntimeError(f"vse-serve did not start:\n{output}")


_INDEX = flags.DEFINE_string(
    "index", None, "Index folder (its photos are the uploads).", required=True
)
_CAPTIONS = flags.DEFINE_string("captions", None, "Caption index for vse-serve.")
_MODEL = flags.DEFINE_string(
    "model", None, "Model for vse-serve (default: the index's)."
)
_URL = flags.DEFINE_string("url", None, "A running vse-serve instead of starting one.")
_PID = flags.DEFINE_integer("pid", None, "Its process id (for RSS).")
_CLIENTS = flags.DEFINE_integer("clients", 8, "Concurrent connections.")
_REQUESTS = flags.DEFINE_integer("requests", 200, "Requests per client.")
_NUM_PHOTOS = flags.DEFINE_integer("num_photos", 20, "Indexed photos to upload.")


def main(argv: Sequence[str]) -> None:
    del argv
    from vse_tf.retrieval import index_lib

    index = index_lib.load_index(_INDEX.value)
    photos = []
    for item in index.items[: _NUM_PHOTOS.value]:
        with open(item, "rb") as f:
            photos.append(f.read())
    process = None
    url, pid = _URL.value, _PID.value
    if not url:
        url, process = start_server(_INDEX.value, _CAPTIONS.value, _MODEL.value)
        pid = process.pid
    try:
        result = run_load(
            url,
            pid,
            photos,
            len(index),
            clients=_CLIENTS.value,
            requests_per_client=_REQUESTS.value,
        )
    finally:
        if process is not None:
            process.terminate()
            process.wait(timeout=30)
    cpu = hardware.cpu_name()
    print(f"CPU: {cpu}, {os.cpu_count()} cores; index: {len(index)} items")
    print(
        f"{result['requests']} requests "
        f"({_CLIENTS.value} clients x {_REQUESTS.value}), "
        f"{result['failures']} failures, {result['seconds']} s, "
        f"{result['requests_per_s']} requests/s"
    )
    print(f"{'kind':10} {'count':>6} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}")
    for kind, figures in result["latency_ms"].items():
        print(
            f"{kind:10} {figures['count']:6d} {figures['p50']:8.1f} "
            f"{figures['p95']:8.1f} {figures['max']:8.1f}"
        )
    if result["rss_mb"]:
        rss = result["rss_mb"]
        print(
            f"server RSS: {rss['before']} MB after warm-up, peak {rss['peak']} MB, "
            f"{rss['after']} MB after (growth {rss['growth']} MB)"
        )
    for line in result["failed"]:
        print("failed:", line)
    print(json.dumps(dict(result, cpu=hardware.cpu_name(), index_items=len(index))))


if __name__ == "__main__":
    app.run(main)
