"""Checks an export the way TF Serving loads it, before it is deployed.

`check_serving` makes real requests for every signature of a SavedModel
version (JPEG and PNG bytes, pixels, features, sentences, token ids;
``search_images`` when present) or replays its warmup file, runs them in a
child process through the C++ loader (`vse_tf.serving.c_api`: no
TensorFlow Python, the tensorflow-text op libraries registered as TF
Serving links them) and compares every output with what the SavedModel's
own Python load gives.

Example:
    python -m export.check_serving models/vse        # newest version
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
from typing import Any, Optional

import numpy as np
import tensorflow as tf

from vse_tf import errors
from vse_tf.serving import c_api, loader, saved_model_lib

SENTENCES = ("a dog runs through the grass", "", "ünïcödé 日本, two red balls!")


@dataclasses.dataclass
class SignatureResult:
    """One signature's outcome.

    Attributes:
        signature: Its name.
        ok: Ran through the C API and matched the Python load.
        max_abs_diff: Largest difference of the numeric outputs (None when
            it did not run).
        shapes: ``{output key: shape}`` from the C API.
        message: What went wrong, or ``""``.
    """

    signature: str
    ok: bool
    max_abs_diff: Optional[float]
    shapes: dict[str, list[int]]
    message: str = ""


@dataclasses.dataclass
class CheckReport:
    """What `check_serving` found.

    Attributes:
        export_dir: The version folder checked.
        tensorflow: Version of the C library that loaded it.
        results: One `SignatureResult` per request.
        error: Why the model did not load at all, or ``""``.
        python_free: The child imported no TensorFlow Python.
        outputs: ``{label: {output key: array}}`` as the C API returned them.
    """

    export_dir: str
    tensorflow: str
    results: list[SignatureResult]
    error: str = ""
    python_free: bool = True
    outputs: dict[str, dict[str, np.ndarray]] = dataclasses.field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.error and bool(self.results) and all(r.ok for r in self.results)

    def format(self) -> str:
        lines = [f"{self.export_dir} (C API, TensorFlow {self.tensorflow or '?'})"]
        if self.error:
            lines.append(f"  did not load: {self.error}")
        for r in self.results:
            if r.ok:
                shapes = ", ".join(f"{k} {v}" for k, v in sorted(r.shapes.items()))
                diff = f"max |diff| {r.max_abs_diff:.2e}"
                lines.append(f"  ok    {r.signature:28s} {shapes}  {diff}")
            else:
                lines.append(f"  FAIL  {r.signature:28s} {r.message}")
        return "\n".join(lines)


# ---------------------------------------------------------------------------
# Requests.


def _vocab_size(export_dir: str) -> int:
    path = os.path.join(export_dir, "assets", "vocab.txt")
    if not os.path.exists(path):
        return 0
    with open(path, encoding="utf-8") as f:
        return sum(1 for _ in f)


def _images(size: int = 40) -> list[np.ndarray]:
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    grid = list(np.meshgrid(ramp, ramp[::-1]))
    gradient = np.stack(grid + [np.full([size, size], 90.0, np.float32)], -1)
    checks = (np.indices([size, size]).sum(0) // 5 % 2 * 200 + 30).astype(np.float32)
    return [gradient, np.repeat(checks[..., None], 3, -1)]


def make_requests(export_dir: str) -> dict[str, dict[str, np.ndarray]]:
    """Real inputs for every serving signature of an export.

    Raises:
        ValueError: for an input this check does not know how to make.
    """
    signatures = c_api.read_signatures(os.path.join(export_dir, "saved_model.pb"))
    images = _images()
    requests: dict[str, dict[str, np.ndarray]] = {}
    for name, spec in sorted(signatures.items()):
        if name.startswith("__"):
            continue  # __saved_model_init_op: run by the loader itself
        inputs = {}
        for key, info in spec["inputs"].items():
            shape = info["shape"] or []
            if key == "text":
                inputs[key] = np.array([s.encode() for s in SENTENCES], dtype=object)
            elif key == "image_bytes":
                inputs[key] = np.array(
                    [
                        tf.io.encode_jpeg(images[0].astype(np.uint8)).numpy(),
                        tf.io.encode_png(images[1].astype(np.uint8)).numpy(),
                    ],
                    dtype=object,
                )
            elif key == "pixels":
                inputs[key] = np.stack(images).astype(np.float32)
            elif key == "features":
                dim = shape[-1]
                inputs[key] = np.random.default_rng(0).normal(size=[2, dim])
                inputs[key] = inputs[key].astype(np.float32)
            elif key == "token_ids":
                # Row 0: three words; row 1: the last word of the vocabulary.
                top = max(_vocab_size(export_dir) - 1, 1)
                ids = np.zeros([2, shape[-1]], np.int32)
                ids[0, :3] = np.minimum([2, 3, 4], top)
                ids[1, 0] = top
                inputs[key] = ids
            else:
                raise ValueError(f"{name}: no request for input {key!r}")
        requests[name] = inputs
    return requests


def warmup_requests(export_dir: str) -> dict[str, dict[str, np.ndarray]]:
    """The requests of the export's warmup file (``assets.extra``)."""
    from tensorflow_serving.apis import prediction_log_pb2

    path = os.path.join(export_dir, saved_model_lib.WARMUP_FILE)
    requests = {}
    for record in tf.data.TFRecordDataset(path):
        log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
        request = log.predict_log.request
        requests[f"warmup {request.model_spec.signature_name}"] = {
            key: tf.make_ndarray(proto) for key, proto in request.inputs.items()
        }
    return requests


def _write_requests(requests: dict, folder: str) -> None:
    described: dict[str, dict] = {}
    for label, inputs in requests.items():
        signature = label.removeprefix("warmup ")
        entry = described.setdefault(label, {"signature": signature, "inputs": {}})
        for key, value in inputs.items():
            value = np.asarray(value)
            if value.dtype == object or value.dtype.kind in "SU":
                items = [
                    v if isinstance(v, bytes) else str(v).encode() for v in value.flat
                ]
                entry["inputs"][key] = {
                    "strings": [base64.b64encode(v).decode() for v in items],
                    "shape": list(value.shape),
                }
            else:
                name = f"{len(described)}.{key}.npy"
                np.save(os.path.join(folder, name), value)
                entry["inputs"][key] = {"npy": name}
    with open(os.path.join(folder, "requests.json"), "w") as f:
        json.dump(described, f)


# ---------------------------------------------------------------------------
# The check.


def _python_outputs(export_dir: str, requests: dict) -> dict[str, Any]:
    loaded = loader.load_saved_model(export_dir)
    outputs = {}
    for label, inputs in requests.items():
        function = loaded.signatures[label.removeprefix("warmup ")]
        try:
            result = function(**{k: tf.constant(v) for k, v in inputs.items()})
            outputs[label] = {k: v.numpy() for k, v in result.items()}
        except tf.errors.OpError as error:
            outputs[label] = error.message.splitlines()[0]
    return outputs


def _c_outputs(c_entry: dict, out_dir: str) -> dict[str, np.ndarray]:
    arrays = {}
    for key, value in c_entry.items():
        if key == "error":
            continue
        if "strings" in value:
            items = [base64.b64decode(s) for s in value["strings"]]
            arrays[key] = np.array(items, dtype=object).reshape(value["shape"])
        else:
            arrays[key] = np.load(os.path.join(out_dir, value["npy"]))
    return arrays


def _compare(
    label: str, c_entry: dict, got: dict[str, np.ndarray], python: Any
) -> SignatureResult:
    """Compares the C API's decoded outputs ``got`` with the Python load's."""
    if "error" in c_entry:
        return SignatureResult(label, False, None, {}, c_entry["error"].splitlines()[0])
    if isinstance(python, str):
        return SignatureResult(label, False, None, {}, f"Python load failed: {python}")
    diff, shapes = 0.0, {}
    for key, want in python.items():
        if key not in got:
            return SignatureResult(label, False, None, shapes, f"output {key} missing")
        value = got[key]
        shapes[key] = list(value.shape)
        if value.dtype == object:
            if value.shape != want.shape or list(value.flat) != list(want.flat):
                return SignatureResult(label, False, None, shapes, f"{key} differs")
            continue
        if value.shape != want.shape:
            return SignatureResult(
                label,
                False,
                None,
                shapes,
                f"{key}: shape {value.shape} != {want.shape}",
            )
        if value.size:
            diff = max(diff, float(np.max(np.abs(value.astype(np.float64) - want))))
    return SignatureResult(label, True, diff, shapes)


def check_serving(
    model_dir: str,
    requests: Optional[dict] = None,
    with_text_ops: bool = True,
    atol: float = 1e-5,
    timeout: float = 600,
    python_executable: Optional[str] = None,
) -> CheckReport:
    """Loads and runs an export through the C API; compares with Python.

    Args:
        model_dir: A version folder, or a base path of numbered versions (the
            newest is checked).
        requests: ``{label: {input key: array}}``; a label is a signature
            name, optionally prefixed ``"warmup "``. Default: `make_requests`
            plus the warmup file's requests.
        with_text_ops: Register the tensorflow-text op libraries (False shows
            what a server without them reports).
        atol: Largest allowed difference from the Python load.
        timeout: Seconds for the child process.
        python_executable: The child's interpreter (default this one): a
            virtualenv with another tensorflow + tensorflow-text checks
            whether that runtime (e.g. an older TF Serving's) loads the
            export. The child finds `vse_tf` through ``PYTHONPATH``.

    Returns:
        A `CheckReport`; ``report.ok`` only when every request ran and
        matched within ``atol``.
    """
    export_dir = loader.resolve_version(model_dir)
    if requests is None:
        requests = make_requests(export_dir)
        if os.path.exists(os.path.join(export_dir, saved_model_lib.WARMUP_FILE)):
            requests.update(warmup_requests(export_dir))
    with tempfile.TemporaryDirectory(prefix="vse-check-serving-") as scratch:
        requests_dir = os.path.join(scratch, "requests")
        out_dir = os.path.join(scratch, "out")
        os.makedirs(requests_dir)
        _write_requests(requests, requests_dir)
        python = python_executable or sys.executable
        command = [python, "-m", "vse_tf.serving.c_api", export_dir]
        command += [requests_dir, out_dir] + (
            [] if with_text_ops else ["--no_text_ops"]
        )
        root = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
        paths = [root] + [p for p in [os.environ.get("PYTHONPATH", "")] if p]
        child = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env=dict(os.environ, PYTHONPATH=os.pathsep.join(paths)),
        )
        report_path = os.path.join(out_dir, "outputs.json")
        if child.returncode != 0 or not os.path.exists(report_path):
            tail = (child.stderr or child.stdout).strip().splitlines()[-3:]
            return CheckReport(
                export_dir, "", [], f"the C API process failed: {' | '.join(tail)}"
            )
        with open(report_path) as f:
            found = json.load(f)
        report = CheckReport(
            export_dir,
            found.get("tensorflow", ""),
            [],
            found.get("error") or "",
            not found.get("imported_tensorflow_python", False),
        )
        if report.error:
            return report
        python = _python_outputs(export_dir, requests)
        for label in requests:
            c_entry = found["signatures"][label]
            report.outputs[label] = _c_outputs(c_entry, out_dir)
            result = _compare(label, c_entry, report.outputs[label], python[label])
            if result.ok and result.max_abs_diff > atol:
                result.ok = False
                result.message = (
                    f"differs from the Python load by {result.max_abs_diff:.2e}"
                )
            report.results.append(result)
    return report


def check_or_raise(model_dir: str) -> CheckReport:
    """`check_serving`, raising `errors.UserError` with the report when it fails."""
    report = check_serving(model_dir)
    if not report.ok:
        raise errors.UserError(
            "the export does not load or run as TF Serving would run it:\n"
            + report.format()
        )
    return report
