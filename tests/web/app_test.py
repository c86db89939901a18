"""The web app's routes through Starlette's test client: page, API, thumbnails."""

from __future__ import annotations

import re

import numpy as np
import pytest
import tensorflow as tf

pytest.importorskip("starlette", reason='Starlette missing: pip install "vse_tf[web]"')
TestClient = pytest.importorskip(
    "starlette.testclient",
    reason='no HTTP client for Starlette\'s tests: pip install "vse_tf[test]"',
).TestClient

from vse_tf.web import app as web_app  # noqa: E402
from vse_tf.web import service  # noqa: E402


@pytest.fixture(scope="module")
def client(served):
    search = service.SearchService(
        served["encoder"],
        served["index"],
        served["captions"],
        limits=service.Limits(max_upload_bytes=2 * 2**20),
    )
    return TestClient(web_app.create_app(search), raise_server_exceptions=False)


@pytest.fixture(scope="module")
def huge_png():
    """A real 50-megapixel PNG: small as a file (one colour), huge decoded."""
    pixels = tf.zeros([7072, 7072, 3], tf.uint8)
    return tf.io.encode_png(pixels, compression=9).numpy()


def _photo(served, row=0) -> bytes:
    with open(served["items"][row], "rb") as f:
        return f.read()


def test_the_page_loads_nothing_from_elsewhere(client):
    response = client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    page = response.text
    assert 'id="q"' in page and 'type="file"' in page and 'id="results"' in page
    # No scripts, styles, fonts or images from another origin.
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)
    assert "@import" not in page and "url(" not in page
    policy = response.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "connect-src 'self'" in policy


def test_text_search_api(client, served):
    response = client.get("/api/search", params={"q": "a red square", "k": 4})
    assert response.status_code == 200
    body = response.json()
    assert [r["rank"] for r in body["results"]] == [1, 2, 3, 4]
    assert "embedding" not in body
    with_embedding = client.get(
        "/api/search", params={"q": "a red square", "k": 4, "embedding": 1}
    ).json()
    expected = served["encoder"].encode_text(["a red square"])[0]
    np.testing.assert_allclose(with_embedding["embedding"], expected, atol=1e-5)


def test_image_upload_and_result_click(client, served):
    response = client.post("/api/search?k=3", content=_photo(served, 2))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["results"][0]["score"] == pytest.approx(1.0, abs=2e-3)
    assert len(body["captions"]) == 3
    clicked = body["results"][1]["id"]
    again = client.get("/api/search", params={"id": clicked, "k": 3}).json()
    assert again["query"]["id"] == clicked
    assert again["results"][0]["score"] == pytest.approx(1.0, abs=2e-3)


def test_thumbnails(client, served):
    response = client.get("/thumbnail/0")
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/jpeg"
    assert tf.io.decode_jpeg(response.content).shape[2] == 3
    for path in (
        "/thumbnail/100000",
        "/thumbnail/-1",
        "/thumbnail/abc",
        "/thumbnail/..%2F..%2Fetc%2Fpasswd",
        "/thumbnail/%2Fetc%2Fpasswd",
        "/thumbnail/0/../../../etc/passwd",
        "/etc/passwd",
        "/photos/img_0000.png",
    ):
        response = client.get(path)
        assert response.status_code == 404, path
        assert set(response.json()) == {"error"}


def test_bad_requests_get_one_sentence_and_the_server_serves_on(
    client, served, huge_png
):
    photo = _photo(served)
    bad = [
        ("post", "/api/search", b"not an image at all", 400, "not a JPEG, PNG"),
        ("post", "/api/search", photo[:100], 400, "truncated at byte 100"),
        ("post", "/api/search", b"", 400, "empty"),
        ("post", "/api/search", huge_png, 400, "50.0 megapixels"),
        ("post", "/api/search", b"\x89PNG" + b"0" * 3 * 2**20, 413, "2 MiB limit"),
        ("get", "/api/search?q=", None, 400, "the query is empty"),
        ("get", "/api/search?q=dog&k=1000", None, 400, "between 1 and 100"),
        ("get", "/api/search", None, 400, "give q=SENTENCE"),
        ("get", "/api/search?id=99999", None, 404, "has no item"),
        ("delete", "/api/search", None, 405, "method not allowed"),
        ("get", "/no/such/page", None, 404, "no such page"),
    ]
    for method, path, body, status, message in bad:
        kwargs = {"content": body} if body is not None else {}
        response = getattr(client, method)(path, **kwargs)
        assert response.status_code == status, (path, response.text)
        error = response.json()["error"]
        assert message in error and "\n" not in error and "Traceback" not in error
        assert client.get("/api/search?q=a+dog&k=1").status_code == 200


def test_info(client, served):
    info = client.get("/api/info").json()
    assert info["kind"] == "image" and info["count"] == len(served["items"])
    assert info["captions"] == len(served["caption_texts"])
    assert info["limits"]["max_k"] == 100
