"""vse-serve under load on loopback: 8 clients x 200 mixed requests, 0 failures."""

from __future__ import annotations

import pytest

from benchmarks import serve_load

pytestmark = pytest.mark.slow(
    reason="starts vse-serve and sends it 1,600 requests (about a minute)"
)


def test_eight_clients_of_mixed_requests_and_no_failure(server, served):
    url, pid = server
    photos = []
    for item in served["items"][:10]:
        with open(item, "rb") as f:
            photos.append(f.read())
    result = serve_load.run_load(url, pid, photos, len(served["items"]))
    print(result)  # the figures, for a person reading the log
    assert result["requests"] == 8 * 200
    assert result["failures"] == 0, result["failed"]
    # Every kind was sent, bad uploads included, and was answered.
    assert set(result["latency_ms"]) == {
        "text",
        "image",
        "click",
        "thumbnail",
        "bad",
        "all",
    }
    assert sum(v["count"] for k, v in result["latency_ms"].items() if k != "all") == (
        8 * 200
    )
    # Serving does not leak: memory after the load stays near the warm level
    # (thumbnails are cached, at most 64 MiB).
    if result["rss_mb"] is not None:
        assert result["rss_mb"]["growth"] < 150, result["rss_mb"]


def test_png_claiming_states_the_size_it_is_given():
    from vse_tf import images

    assert images.image_shape(serve_load.png_claiming(7072, 7071)) == (7071, 7072)
