"""Small clients for a TF Serving model server (REST and gRPC).

Both clients call the SavedModel signatures of `saved_model_lib`
(``encode_text``: ``text`` -> ``embedding``; ``encode_image``:
``image_bytes`` -> ``embedding``), split large requests into batches, apply a
per-request timeout and raise `ServingError` with the server's own message,
the HTTP status or gRPC code, and the address that failed.

Example:
    client = connect("http://127.0.0.1:8501")          # REST
    client = connect("grpc://127.0.0.1:8500")          # gRPC
    vectors = client.encode_text(["a dog runs on the beach"])   # [1, D]
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from typing import Any, Optional

import numpy as np

DEFAULT_TIMEOUT = 30.0
DEFAULT_BATCH_SIZE = 64
OUTPUT_KEY = "embedding"


class ServingError(RuntimeError):
    """A request to the model server failed.

    Attributes:
        url: The address that was called.
        status: HTTP status (REST) or gRPC status code name; None when the
            server could not be reached.
        message: The server's error message, when it sent one.
    """

    def __init__(
        self,
        description: str,
        url: str,
        status: Optional[Any] = None,
        message: str = "",
    ):
        super().__init__(description)
        self.url = url
        self.status = status
        self.message = message

    @property
    def is_invalid_input(self) -> bool:
        """True when the server rejected the inputs (HTTP 400, INVALID_ARGUMENT)."""
        return self.status in (400, "INVALID_ARGUMENT")


class ServingTimeoutError(ServingError):
    """The server did not answer within the timeout."""


def _batches(items: Sequence[Any], batch_size: int):
    for start in range(0, len(items), batch_size):
        yield items[start : start + batch_size]


def _as_matrix(rows: Any, count: int, where: str) -> np.ndarray:
    matrix = np.asarray(rows, dtype=np.float32)
    if matrix.ndim != 2 or matrix.shape[0] != count:
        raise ServingError(
            f"{where}: expected {count} embeddings, got shape {matrix.shape}",
            where,
        )
    return matrix


class _Client:
    """Batching, timeouts and error reports shared by the REST and gRPC clients.

    Subclasses set `PROTOCOL` and implement `_predict` and `describe`.
    """

    PROTOCOL = ""  # the port a refused connection hints at: "REST" or "gRPC"

    def __init__(self, model_name: str, timeout: float, batch_size: int):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model_name = model_name
        self.timeout = float(timeout)
        self.batch_size = int(batch_size)

    def _timeout_error(self, url: str, **details: Any) -> ServingTimeoutError:
        """The error for a call to ``url`` that outlived the timeout."""
        return ServingTimeoutError(
            f"{url}: no answer within {self.timeout:g} s", url, **details
        )

    def _unreachable_error(self, url: str, reason: str, **details: Any) -> ServingError:
        """The error for a server that refused or dropped the connection."""
        return ServingError(
            f"cannot connect to {url}: {reason} "
            f"(is the model server running, on this {self.PROTOCOL} port?)",
            url,
            **details,
        )

    def _description(self, server: str, version: Optional[str]) -> dict:
        """`describe`'s record: ``{"server", "model_name", "version"}``."""
        return {"server": server, "model_name": self.model_name, "version": version}

    def _predict(self, signature: str, key: str, values: list) -> np.ndarray:
        raise NotImplementedError

    def _encode(self, signature: str, key: str, values: list) -> np.ndarray:
        chunks = [
            self._predict(signature, key, batch)
            for batch in _batches(values, self.batch_size)
        ]
        if not chunks:
            return np.zeros([0, 0], np.float32)
        return np.concatenate(chunks, axis=0)

    def encode_text(self, sentences: Sequence[str]) -> np.ndarray:
        """Raw sentences ``[N]`` -> ``float32 [N, D]`` (``encode_text``)."""
        return self._encode("encode_text", "text", [str(s) for s in sentences])

    def encode_images(self, images: Sequence[bytes]) -> np.ndarray:
        """Encoded image files ``[N]`` (JPEG/PNG/GIF/BMP bytes) -> ``float32 [N, D]``.

        Uses the ``encode_image`` signature (decoding happens on the server).
        """
        return self._encode("encode_image", "image_bytes", [bytes(b) for b in images])

    def describe(self) -> dict:
        """What to record about the model in an index manifest."""
        raise NotImplementedError


class ServingClient(_Client):
    """TF Serving REST client (``http://host:8501``).

    Args:
        url: ``http://host:port`` or the model URL
            ``http://host:port/v1/models/NAME[/versions/V]``.
        model_name: Model name on the server (ignored when ``url`` names one).
        timeout: Seconds per HTTP request.
        batch_size: Items per request; larger inputs are split.
        version: Optional model version to pin.
    """

    PROTOCOL = "REST"

    def __init__(
        self,
        url: str,
        model_name: str = "vse",
        timeout: float = DEFAULT_TIMEOUT,
        batch_size: int = DEFAULT_BATCH_SIZE,
        version: Optional[int] = None,
    ):
        super().__init__(model_name, timeout, batch_size)
        parsed = urllib.parse.urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(f"not an http(s) URL: {url!r}")
        path = parsed.path.rstrip("/")
        if "/v1/models/" in path:
            self.model_url = f"{parsed.scheme}://{parsed.netloc}{path}"
            self.model_name = path.split("/v1/models/", 1)[1].split("/")[0]
        else:
            self.model_url = f"{parsed.scheme}://{parsed.netloc}/v1/models/{model_name}"
            if version is not None:
                self.model_url += f"/versions/{int(version)}"
        self.url = self.model_url

    def _request(self, url: str, body: Optional[dict] = None) -> dict:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            url, data=data, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                payload = response.read()
        except urllib.error.HTTPError as error:
            raw = error.read().decode("utf-8", "replace")
            try:
                message = str(json.loads(raw).get("error", raw))
            except (ValueError, AttributeError):
                message = raw.strip()
            raise ServingError(
                f"{url}: HTTP {error.code} {error.reason}: {message}",
                url,
                status=error.code,
                message=message,
            ) from None
        except TimeoutError as error:
            raise self._timeout_error(url) from error
        except urllib.error.URLError as error:
            reason = error.reason
            if isinstance(reason, TimeoutError):
                raise self._timeout_error(url) from error
            if isinstance(reason, ConnectionRefusedError):
                raise self._unreachable_error(url, "connection refused") from error
            raise ServingError(f"cannot reach {url}: {reason}", url) from error
        except ConnectionError as error:
            raise ServingError(f"connection to {url} failed: {error}", url) from error
        try:
            return json.loads(payload)
        except ValueError as error:
            raise ServingError(
                f"{url}: the answer is not JSON: {payload[:200]!r}", url
            ) from error

    def _predict(self, signature: str, key: str, values: list) -> np.ndarray:
        if key == "image_bytes":
            instances = [{"b64": base64.b64encode(v).decode("ascii")} for v in values]
        else:
            instances = list(values)
        url = f"{self.model_url}:predict"
        reply = self._request(
            url, {"signature_name": signature, "instances": instances}
        )
        if "predictions" not in reply:
            raise ServingError(f"{url}: no 'predictions' in the answer", url)
        rows = reply["predictions"]
        if rows and isinstance(rows[0], dict):
            rows = [row[OUTPUT_KEY] for row in rows]
        return _as_matrix(rows, len(values), url)

    def status(self) -> dict:
        """The model status (``GET /v1/models/NAME``)."""
        return self._request(self.model_url)

    def describe(self) -> dict:
        """``{"server", "model_name", "version"}`` (version of the AVAILABLE model)."""
        version = None
        try:
            states = self.status().get("model_version_status", [])
            available = [s for s in states if s.get("state") == "AVAILABLE"]
            if available:
                version = str(max(int(s["version"]) for s in available))
        except (ServingError, ValueError, KeyError, TypeError):
            pass
        return self._description(self.model_url, version)


class GrpcServingClient(_Client):
    """TF Serving gRPC client (``host:8500``); needs ``tensorflow-serving-api``.

    Args:
        target: ``host:port`` (a ``grpc://`` prefix is accepted).
        model_name: Model name on the server.
        timeout: Seconds per RPC.
        batch_size: Items per request; larger inputs are split.
        version: Optional model version to pin.
    """

    PROTOCOL = "gRPC"

    def __init__(
        self,
        target: str,
        model_name: str = "vse",
        timeout: float = DEFAULT_TIMEOUT,
        batch_size: int = DEFAULT_BATCH_SIZE,
        version: Optional[int] = None,
    ):
        super().__init__(model_name, timeout, batch_size)
        try:
            import grpc
            from tensorflow_serving.apis import prediction_service_pb2_grpc
        except ImportError as error:
            raise ImportError(
                "the gRPC client needs tensorflow-serving-api: "
                'pip install "vse_tf[serving]"'
            ) from error
        self.target = target.removeprefix("grpc://").rstrip("/")
        self.url = f"grpc://{self.target}"
        self.version = version
        self._grpc = grpc
        self._channel = grpc.insecure_channel(self.target)
        self._stub = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _predict(self, signature: str, key: str, values: list) -> np.ndarray:
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2

        request = predict_pb2.PredictRequest()
        request.model_spec.name = self.model_name
        request.model_spec.signature_name = signature
        if self.version is not None:
            request.model_spec.version.value = int(self.version)
        array = np.array(
            [v if isinstance(v, bytes) else v.encode("utf-8") for v in values], object
        )
        request.inputs[key].CopyFrom(tf.make_tensor_proto(array, dtype=tf.string))
        try:
            reply = self._stub.Predict(request, timeout=self.timeout)
        except self._grpc.RpcError as error:
            raise self._rpc_error(error) from None
        if OUTPUT_KEY not in reply.outputs:
            raise ServingError(
                f"{self.url}: no '{OUTPUT_KEY}' output in the answer "
                f"(got {sorted(reply.outputs)})",
                self.url,
            )
        return _as_matrix(
            tf.make_ndarray(reply.outputs[OUTPUT_KEY]), len(values), self.url
        )

    def _rpc_error(self, error) -> ServingError:
        """The `ServingError` for a failed RPC, with its code name and details."""
        code = error.code()
        details = error.details() or ""
        name = code.name if code is not None else "UNKNOWN"
        if code == self._grpc.StatusCode.DEADLINE_EXCEEDED:
            return self._timeout_error(self.url, status=name, message=details)
        if code == self._grpc.StatusCode.UNAVAILABLE:
            return self._unreachable_error(
                self.url, details, status=name, message=details
            )
        return ServingError(
            f"{self.url}: {name}: {details}", self.url, status=name, message=details
        )

    def describe(self) -> dict:
        """``{"server", "model_name", "version"}`` (version only when pinned)."""
        version = None if self.version is None else str(self.version)
        return self._description(self.url, version)


def connect(url: str, **kwargs) -> _Client:
    """A REST client for ``http(s)://`` URLs, else a gRPC client (``[grpc://]host:port``).

    Args:
        url: Server address.
        **kwargs: ``model_name``, ``timeout``, ``batch_size``, ``version``.

    Returns:
        `ServingClient` or `GrpcServingClient`.
    """
    if url.startswith(("http://", "https://")):
        return ServingClient(url, **kwargs)
    return GrpcServingClient(url, **kwargs)
