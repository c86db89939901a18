"""The TF Serving REST and gRPC clients, against in-process loopback servers.

Both servers answer like TF Serving (REST ``/v1/models/NAME:predict`` with
``{"b64": ...}`` bytes; gRPC ``PredictionService.Predict``) by running the
real exported SavedModel, so request shapes and keys are checked against the
real signatures. Only 127.0.0.1 is used.
"""

from __future__ import annotations

import base64
import contextlib
import http.server
import json
import os
import socket
import threading
import time
from concurrent import futures

import numpy as np
import pytest
import tensorflow as tf

from vse_tf.serving import client as client_lib
from vse_tf.serving import loader


class _Backend:
    """Runs predict requests on the real SavedModel, recording batch sizes."""

    def __init__(self, export_dir: str, delay_model: str = "slow"):
        self.model = loader.load_saved_model(export_dir)
        self.delay_model = delay_model
        self.batch_sizes: list[int] = []
        self.lock = threading.Lock()

    def predict(self, signature: str, inputs: dict) -> np.ndarray:
        if signature not in self.model.signatures:
            raise KeyError(f'Serving signature name: "{signature}" not found')
        fn = self.model.signatures[signature]
        expected = set(fn.structured_input_signature[1])
        if set(inputs) != expected:
            raise ValueError(f"inputs {sorted(inputs)} != {sorted(expected)}")
        with self.lock:
            self.batch_sizes.append(len(next(iter(inputs.values()))))
            out = fn(**{k: tf.constant(v) for k, v in inputs.items()})
        return out["embedding"].numpy()


@contextlib.contextmanager
def fake_rest_server(export_dir: str):
    """Yields ``(url, backend)`` of a TF-Serving-like REST server on 127.0.0.1."""
    backend = _Backend(export_dir)

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _reply(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            try:
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (the timeout test)

        def _model(self) -> tuple[str, str]:
            path = self.path
            if not path.startswith("/v1/models/"):
                return "", ""
            name, _, verb = path[len("/v1/models/") :].partition(":")
            return name.split("/")[0], verb

        def do_GET(self):
            name, _ = self._model()
            if name != "vse":
                self._reply(404, {"error": f"Servable not found for request: {name}"})
                return
            status = {"version": "1", "state": "AVAILABLE"}
            self._reply(200, {"model_version_status": [status]})

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            name, verb = self._model()
            if name == backend.delay_model:
                time.sleep(2.0)
            if name != "vse" or verb != "predict":
                error = f"Servable not found for request: Latest({name})"
                self._reply(404, {"error": error})
                return
            signature = body.get("signature_name", "serving_default")
            fn = backend.model.signatures.get(signature)
            if fn is None:
                message = f'Serving signature name: "{signature}" not found'
                self._reply(400, {"error": message})
                return
            (key,) = fn.structured_input_signature[1]
            values = [
                base64.b64decode(v["b64"]) if isinstance(v, dict) else v
                for v in body["instances"]
            ]
            try:
                out = backend.predict(signature, {key: values})
            except (tf.errors.InvalidArgumentError, ValueError) as error:
                message = getattr(error, "message", str(error))
                self._reply(400, {"error": message})
                return
            self._reply(200, {"predictions": out.tolist()})

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", backend
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@contextlib.contextmanager
def fake_grpc_server(export_dir: str):
    """Yields ``(target, backend)`` of a PredictionService on 127.0.0.1."""
    import grpc
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    backend = _Backend(export_dir)

    class Servicer(prediction_service_pb2_grpc.PredictionServiceServicer):
        def Predict(self, request, context):
            if request.model_spec.name == backend.delay_model:
                time.sleep(2.0)
            if request.model_spec.name != "vse":
                name = request.model_spec.name
                context.abort(
                    grpc.StatusCode.NOT_FOUND,
                    f"Servable not found for request: Latest({name})",
                )
            inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
            try:
                out = backend.predict(request.model_spec.signature_name, inputs)
            except (tf.errors.InvalidArgumentError, ValueError, KeyError) as error:
                context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    getattr(error, "message", str(error)),
                )
            reply = predict_pb2.PredictResponse()
            reply.outputs["embedding"].CopyFrom(tf.make_tensor_proto(out))
            return reply

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        Servicer(), server
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}", backend
    finally:
        server.stop(grace=None).wait(10)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def exported(tiny_export):
    export_dir, data_dir = tiny_export.export_dir, tiny_export.data_dir
    model = loader.load_saved_model(export_dir)
    folder = os.path.join(data_dir, "images")
    files = [os.path.join(folder, n) for n in sorted(os.listdir(folder))[:5]]
    images = [open(p, "rb").read() for p in files]
    sentences = ["a red square", "", "the stripe is blue!", "ünïcödé 日本", "x"]
    want_text = model.signatures["encode_text"](text=tf.constant(sentences))
    want_images = model.signatures["encode_image"](image_bytes=tf.constant(images))
    return {
        "export_dir": export_dir,
        "sentences": sentences,
        "images": images,
        "text": want_text["embedding"].numpy(),
        "image": want_images["embedding"].numpy(),
    }


@pytest.fixture(scope="module")
def rest(exported):
    with fake_rest_server(exported["export_dir"]) as server:
        yield server


@pytest.fixture(scope="module")
def grpc_server(exported):
    with fake_grpc_server(exported["export_dir"]) as server:
        yield server


def _clients(rest, grpc_server, **kwargs):
    return {
        "rest": client_lib.ServingClient(rest[0], **kwargs),
        "grpc": client_lib.GrpcServingClient(grpc_server[0], **kwargs),
    }


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_encodings_match_the_saved_model_in_batches(
    exported, rest, grpc_server, protocol
):
    client = _clients(rest, grpc_server, batch_size=2)[protocol]
    backend = {"rest": rest, "grpc": grpc_server}[protocol][1]
    backend.batch_sizes.clear()
    text = client.encode_text(exported["sentences"])
    images = client.encode_images(exported["images"])
    assert backend.batch_sizes == [2, 2, 1, 2, 2, 1]
    assert text.dtype == images.dtype == np.float32
    np.testing.assert_allclose(text, exported["text"], atol=1e-5)
    np.testing.assert_allclose(images, exported["image"], atol=1e-5)
    assert client.encode_text([]).shape[0] == 0


def test_connect_picks_the_protocol(rest, grpc_server):
    assert isinstance(client_lib.connect(rest[0]), client_lib.ServingClient)
    grpc_client = client_lib.connect(f"grpc://{grpc_server[0]}")
    assert isinstance(grpc_client, client_lib.GrpcServingClient)
    assert client_lib.connect(grpc_server[0]).target == grpc_server[0]
    full = client_lib.ServingClient(f"{rest[0]}/v1/models/vse/")
    assert full.model_url == f"{rest[0]}/v1/models/vse"
    described = client_lib.ServingClient(rest[0]).describe()
    assert described == {
        "server": f"{rest[0]}/v1/models/vse",
        "model_name": "vse",
        "version": "1",
    }


def test_rest_errors_surface_status_and_server_message(exported, rest):
    missing = client_lib.ServingClient(rest[0], model_name="nope")
    with pytest.raises(client_lib.ServingError, match="HTTP 404") as info:
        missing.encode_text(["a"])
    assert info.value.status == 404
    assert "Servable not found" in str(info.value)
    assert "/v1/models/nope:predict" in str(info.value)

    bad = client_lib.ServingClient(rest[0])
    with pytest.raises(client_lib.ServingError, match="HTTP 400") as info:
        bad.encode_images([exported["images"][0], b"not an image"])
    assert info.value.is_invalid_input
    assert info.value.message  # the server's own words


def test_grpc_errors_surface_code_and_details(exported, grpc_server):
    missing = client_lib.GrpcServingClient(grpc_server[0], model_name="nope")
    with pytest.raises(client_lib.ServingError, match="NOT_FOUND.*Servable not found"):
        missing.encode_text(["a"])
    bad = client_lib.GrpcServingClient(grpc_server[0])
    with pytest.raises(client_lib.ServingError, match="INVALID_ARGUMENT") as info:
        bad.encode_images([b"not an image"])
    assert info.value.is_invalid_input


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_timeouts(rest, grpc_server, protocol):
    client = _clients(rest, grpc_server, model_name="slow", timeout=0.3)[protocol]
    start = time.monotonic()
    with pytest.raises(client_lib.ServingTimeoutError, match="no answer within 0.3 s"):
        client.encode_text(["a"])
    assert time.monotonic() - start < 1.8


def test_connection_refused_names_the_address():
    port = _closed_port()
    rest = client_lib.ServingClient(f"http://127.0.0.1:{port}", timeout=5)
    with pytest.raises(client_lib.ServingError, match="connection refused") as info:
        rest.encode_text(["a"])
    assert f"127.0.0.1:{port}" in str(info.value)
    grpc_client = client_lib.GrpcServingClient(f"127.0.0.1:{port}", timeout=5)
    with pytest.raises(client_lib.ServingError, match="cannot connect") as info:
        grpc_client.encode_text(["a"])
    assert f"127.0.0.1:{port}" in str(info.value)


def test_invalid_arguments():
    with pytest.raises(ValueError, match="http"):
        client_lib.ServingClient("ftp://127.0.0.1:1")
    with pytest.raises(ValueError, match="batch_size"):
        client_lib.ServingClient("http://127.0.0.1:1", batch_size=0)
