"""The TF Serving SavedModel: signatures, fresh-process parity, warmup, versions."""

import base64
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request

import numpy as np
import pytest
import tensorflow as tf

from tests import testing_utils
from vse_tf import images as images_lib
from vse_tf import workdir as workdir_lib
from vse_tf.serving import loader, saved_model_lib

SENTENCES = ["A red square.", "", "!!!", "a GREEN stripe on black", "ünïcödé 日本 dog"]


@pytest.fixture(scope="module")
def trained(tiny_export):
    workdir, export_dir, data_dir, model = tiny_export
    return workdir, export_dir, model, data_dir


def _pixels(files, size):
    """``float32 [N, size, size, 3]``: the files decoded as training does."""
    return np.stack(
        [images_lib.load_image(tf.constant(p), size).numpy() for p in files]
    )


def _file_bytes(files):
    return tf.constant([open(p, "rb").read() for p in files])


def _image_files(data_dir, count=3):
    folder = os.path.join(data_dir, "images")
    return [os.path.join(folder, n) for n in sorted(os.listdir(folder))[:count]]


def test_version_layout_and_assets(trained):
    workdir, export_dir, _, _ = trained
    base = os.path.dirname(export_dir)
    assert os.path.basename(export_dir) == "1"
    assert sorted(os.listdir(base)) == ["1"], "no temporary folder may remain"
    for name in ("saved_model.pb", "variables", "assets.extra"):
        assert os.path.exists(os.path.join(export_dir, name))
    with open(os.path.join(export_dir, "assets", "vocab.txt")) as f:
        exported_vocab = f.read()
    with open(os.path.join(workdir, "vocab.txt")) as f:
        assert exported_vocab == f.read()


@pytest.mark.slow(reason="exports the tiny model twice more (6 s)")
def test_next_version_and_refusing_to_overwrite(trained, tmp_path):
    workdir, _, _, _ = trained
    base = str(tmp_path / "models")
    os.makedirs(os.path.join(base, "7"))
    path = saved_model_lib.export_saved_model(workdir, base)
    assert path == os.path.join(base, "8")
    with pytest.raises(FileExistsError):
        saved_model_lib.export_saved_model(workdir, base, version=8)
    assert sorted(os.listdir(base)) == ["7", "8"]


_CHILD = r"""
import json, sys
import numpy as np
import tensorflow as tf
import tensorflow_text  # what the model server links
inputs = np.load(sys.argv[2], allow_pickle=True).item()
model = tf.saved_model.load(sys.argv[1])
out = {}
for name, kwargs in inputs.items():
    tensors = {k: tf.constant(v) for k, v in kwargs.items()}
    out[name] = model.signatures[name](**tensors)["embedding"].numpy()
np.save(sys.argv[3], out, allow_pickle=True)
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] == "vse_tf")))
"""


@pytest.mark.slow(reason="loads the export in a fresh subprocess")
def test_fresh_process_matches_keras_towers(trained, tmp_path):
    _, export_dir, model, data_dir = trained
    files = _image_files(data_dir)
    png_bytes = [open(p, "rb").read() for p in files]
    pixels = _pixels(files, 32)
    jpeg = tf.io.encode_jpeg(tf.cast(pixels[0], tf.uint8)).numpy()
    big = np.random.default_rng(0).uniform(0, 255, [2, 50, 70, 3]).astype(np.float32)
    tokens = model.text_tower.tokenizer(tf.constant(SENTENCES)).numpy()
    feats = np.random.default_rng(1).normal(size=[2, 512]).astype(np.float32)
    inputs = {
        "encode_text": {"text": np.array([s.encode() for s in SENTENCES], object)},
        "serving_default": {"text": np.array([s.encode() for s in SENTENCES], object)},
        "encode_tokens": {"token_ids": tokens},
        "encode_image": {"image_bytes": np.array(png_bytes + [jpeg], object)},
        "encode_image_pixels": {"pixels": big},
        "encode_image_features": {"features": feats},
    }
    np.save(tmp_path / "in.npy", inputs, allow_pickle=True)
    result = testing_utils.run_python(
        "-c", _CHILD, export_dir, str(tmp_path / "in.npy"), str(tmp_path / "out.npy")
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []
    served = np.load(tmp_path / "out.npy", allow_pickle=True).item()

    text_ref = model.text_tower(tf.constant(SENTENCES)).numpy()
    jpeg_pixels = images_lib.decode_image(tf.constant(jpeg), 32).numpy()
    expected = {
        "encode_text": text_ref,
        "serving_default": text_ref,
        "encode_tokens": model.text_tower.encode_tokens(tokens).numpy(),
        "encode_image": model.image_tower(
            np.concatenate([pixels, jpeg_pixels[None]])
        ).numpy(),
        "encode_image_pixels": model.image_tower(
            images_lib.resize_pixels(big, 32)
        ).numpy(),
        "encode_image_features": model.image_tower.embed_features(feats).numpy(),
    }
    for name, want in expected.items():
        got = served[name]
        assert got.shape == want.shape, name
        assert np.abs(got - want).max() <= 1e-5, name
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


@pytest.mark.slow(reason="runs saved_model_cli as a subprocess")
def test_saved_model_cli_lists_the_signatures(trained):
    _, export_dir, _, _ = trained
    result = testing_utils.run_python(
        "-m", "tensorflow.python.tools.saved_model_cli", "show", "--dir", export_dir,
        "--all",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    for name in saved_model_lib.SIGNATURES + ("serving_default",):
        assert f"signature_def['{name}']" in result.stdout, name
    assert "inputs['image_bytes']" in result.stdout
    assert "outputs['embedding']" in result.stdout


def test_warmup_requests_parse_and_replay(trained):
    from tensorflow_serving.apis import prediction_log_pb2

    _, export_dir, model, _ = trained
    loaded = loader.load_saved_model(export_dir)
    path = os.path.join(export_dir, saved_model_lib.WARMUP_FILE)
    seen = set()
    for record in tf.data.TFRecordDataset(path):
        log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
        request = log.predict_log.request
        assert request.model_spec.name == "vse"
        name = request.model_spec.signature_name
        kwargs = {k: tf.constant(tf.make_ndarray(v)) for k, v in request.inputs.items()}
        embedding = loaded.signatures[name](**kwargs)["embedding"].numpy()
        assert embedding.shape == (1, model.text_tower.embed_dim)
        np.testing.assert_allclose(np.linalg.norm(embedding, axis=1), 1.0, atol=1e-5)
        seen.add(name)
    assert seen == set(saved_model_lib.SIGNATURES)


@pytest.mark.slow(reason="runs the export command as a subprocess")
def test_export_script_writes_a_version(trained, tmp_path):
    workdir, _, _, _ = trained
    base = tmp_path / "models"
    result = testing_utils.run_python(
        "-m", "export.export_saved_model", f"--workdir={workdir}",
        f"--output_dir={base}", "--version=3",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    # The version, and beside it what a TF Serving deployment reads.
    assert sorted(os.listdir(base)) == [
        "3",
        "batching_parameters.txt",
        "models.config",
    ]
    assert os.path.exists(base / "3" / "saved_model.pb")
    # The exporter checked the new version through the C API.
    assert "encode_image" in result.stdout and "max |diff|" in result.stdout
    assert "docker run" in result.stdout


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_real_tensorflow_model_server(trained, tmp_path):
    """Talks to a real model server: a local binary, or VSE_TF_SERVING_URL."""
    _, export_dir, model, data_dir = trained
    url = os.environ.get("VSE_TF_SERVING_URL")
    binary = shutil.which("tensorflow_model_server")
    if not url and not binary:
        pytest.skip(
            testing_utils.NOT_HERE + " no TF Serving: tensorflow_model_server "
            "is not on PATH (no registry ships it) and "
            "VSE_TF_SERVING_URL is unset"
        )
    server = None
    if not url:
        base = tmp_path / "base"
        shutil.copytree(os.path.dirname(export_dir), base)
        rest, grpc_port = _free_port(), _free_port()
        server = subprocess.Popen(
            [
                binary,
                f"--port={grpc_port}",
                f"--rest_api_port={rest}",
                "--model_name=vse",
                f"--model_base_path={base}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        url = f"http://127.0.0.1:{rest}/v1/models/vse"
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(url, timeout=2).read()
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(1)
        png = open(_image_files(data_dir, 1)[0], "rb").read()
        for signature, instances, expected in (
            (
                "encode_text",
                ["a red square"],
                model.text_tower(tf.constant(["a red square"])).numpy(),
            ),
            (
                "encode_image",
                [{"b64": base64.b64encode(png).decode()}],
                model.image_tower(
                    images_lib.decode_image(tf.constant(png), 32)[None]
                ).numpy(),
            ),
        ):
            body = json.dumps({"signature_name": signature, "instances": instances})
            request = urllib.request.Request(
                f"{url}:predict", body.encode(), {"Content-Type": "application/json"}
            )
            reply = json.loads(urllib.request.urlopen(request, timeout=30).read())
            got = np.asarray(reply["predictions"], np.float32)
            assert np.abs(got - expected).max() <= 1e-5, signature
        if server is not None:
            import grpc
            from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

            channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            request = predict_pb2.PredictRequest()
            request.model_spec.name = "vse"
            request.model_spec.signature_name = "encode_text"
            request.inputs["text"].CopyFrom(tf.make_tensor_proto(["a red square"]))
            reply = stub.Predict(request, timeout=30)
            got = tf.make_ndarray(reply.outputs["embedding"])
            want = model.text_tower(tf.constant(["a red square"])).numpy()
            assert np.abs(got - want).max() <= 1e-5
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)


@pytest.mark.slow(reason="exports the tiny model with an index (6 s)")
def test_search_images_signature_answers_a_sentence(trained, tmp_path):
    from vse_tf.retrieval import index_build

    workdir, export_dir, model, data_dir = trained
    index = index_build.build_image_index(
        export_dir,
        os.path.join(data_dir, "images"),
        str(tmp_path / "index"),
        dtype="float32",
        verbose=0,
    )
    path = saved_model_lib.export_saved_model(
        workdir,
        str(tmp_path / "models"),
        image_index=index,
        search_k=5,
    )
    loaded = loader.load_saved_model(path)
    assert "search_images" in loaded.signatures
    queries = ["a red square", "a blue stripe"]
    out = loaded.signatures["search_images"](text=tf.constant(queries))
    assert out["ids"].shape == (2, 5)
    expected_scores, expected_ids = index.search(
        model.text_tower(tf.constant(queries)).numpy(), 5
    )
    np.testing.assert_array_equal(out["ids"].numpy(), expected_ids)
    np.testing.assert_allclose(out["scores"].numpy(), expected_scores, atol=1e-5)
    items = [[i.decode() for i in row] for row in out["items"].numpy()]
    assert items == [[index.items[i] for i in row] for row in expected_ids]

    from tensorflow_serving.apis import prediction_log_pb2

    names = {
        prediction_log_pb2.PredictionLog.FromString(
            r.numpy()
        ).predict_log.request.model_spec.signature_name
        for r in tf.data.TFRecordDataset(
            os.path.join(path, saved_model_lib.WARMUP_FILE)
        )
    }
    assert "search_images" in names


@pytest.mark.slow(reason="trains and exports a GRU model")
def test_gru_avgmax_model_exports_and_matches_keras(tmp_path):
    """The other towers (GRU text, avg+max pooled image features, trained with
    mirrored features) export and serve like the default ones."""
    workdir, data_dir = testing_utils.train_tiny_workdir(
        str(tmp_path),
        text_rnn="gru",
        image_feature="pool5_avgmax",
        image_size=64,
        augment_flip=True,
    )
    export_dir = saved_model_lib.export_saved_model(workdir, str(tmp_path / "models"))
    _, model = workdir_lib.load_trained_model(workdir)
    assert model.text_tower.rnn == "gru"
    assert model.image_tower.feature_dim == 1024
    loaded = tf.saved_model.load(export_dir)
    text = loaded.signatures["encode_text"](text=tf.constant(SENTENCES))["embedding"]
    np.testing.assert_allclose(
        text.numpy(), model.text_tower(tf.constant(SENTENCES)).numpy(), atol=1e-5
    )
    files = _image_files(data_dir)
    pixels = _pixels(files, 64)
    images = loaded.signatures["encode_image"](image_bytes=_file_bytes(files))[
        "embedding"
    ]
    np.testing.assert_allclose(
        images.numpy(), model.image_tower(pixels).numpy(), atol=1e-5
    )


@pytest.mark.slow(reason="trains and exports an EfficientNet-Lite model")
def test_efficientnet_lite_model_exports_and_matches_keras(tmp_path):
    """An EfficientNet-Lite image tower serves every image signature like VGG16's."""
    workdir, data_dir = testing_utils.train_tiny_workdir(
        str(tmp_path),
        backbone="efficientnet_lite0",
        lite_weights="none",
        image_feature="head_avgmax",
        image_size=64,
    )
    export_dir = saved_model_lib.export_saved_model(workdir, str(tmp_path / "models"))
    _, model = workdir_lib.load_trained_model(workdir, include_backbone=True)
    assert model.image_tower.backbone_name == "efficientnet_lite0"
    loaded = tf.saved_model.load(export_dir)
    files = _image_files(data_dir)
    pixels = _pixels(files, 64)
    expected = model.image_tower(pixels).numpy()
    from_bytes = loaded.signatures["encode_image"](image_bytes=_file_bytes(files))[
        "embedding"
    ]
    np.testing.assert_allclose(from_bytes.numpy(), expected, atol=1e-5)
    from_pixels = loaded.signatures["encode_image_pixels"](pixels=tf.constant(pixels))
    np.testing.assert_allclose(from_pixels["embedding"].numpy(), expected, atol=1e-5)
    features = model.image_tower.backbone(pixels)
    from_features = loaded.signatures["encode_image_features"](features=features)
    np.testing.assert_allclose(from_features["embedding"].numpy(), expected, atol=1e-5)


@pytest.mark.slow(reason="fine-tunes, exports, checks and converts a tiny model")
@pytest.mark.parametrize(
    "backbone,fine_tune_from",
    [("efficientnet_lite0", "stage7"), ("efficientnet_lite2", "stage6")],
)
def test_fine_tuned_trunk_exports_its_trained_weights(
    tmp_path, backbone, fine_tune_from
):
    """A trunk fine-tuned the cheap way (cached activations) exports like a
    frozen one, and the export carries the fine-tuned weights (Lite2 from
    stage 6 is flickr8k_lite_ft's trunk and cut)."""
    from vse_tf import modeling
    from vse_tf import text as text_lib
    from vse_tf.serving import serving_check

    workdir, data_dir = testing_utils.train_tiny_workdir(
        str(tmp_path),
        backbone=backbone,
        lite_weights="none",
        image_feature="head_avg",
        image_size=64,
        fine_tune_from=fine_tune_from,
        augment_flip=True,
        epochs=2,
        learning_rate=1e-2,
    )
    export_dir = saved_model_lib.export_saved_model(workdir, str(tmp_path / "models"))
    config, model = workdir_lib.load_trained_model(workdir)
    assert model.image_tower.backbone_name == backbone
    files = _image_files(data_dir)
    pixels = _pixels(files, 64)
    trained = model.image_tower(pixels).numpy()
    loaded = tf.saved_model.load(export_dir)
    exported = loaded.signatures["encode_image"](image_bytes=_file_bytes(files))[
        "embedding"
    ].numpy()
    np.testing.assert_allclose(exported, trained, atol=1e-5)

    # The same head on the trunk as it was before training embeds otherwise.
    vocabulary = text_lib.Vocabulary.load(os.path.join(workdir, workdir_lib.VOCAB_FILE))
    pretrained = modeling.build_model(config, vocabulary).image_tower
    pretrained.w_emb.set_weights(model.image_tower.w_emb.get_weights())
    assert model.image_tower.feature_bn is None  # the tiny preset's l2 norm
    before = pretrained(pixels).numpy()
    assert np.abs(before - exported).max() > 1e-3

    report = serving_check.check_serving(export_dir)
    assert report.ok, report.format()

    pytest.importorskip("ai_edge_litert", reason="LiteRT: pip install vse_tf[lite]")
    from vse_tf.serving.tflite import convert, runner

    tflite = convert.convert_image_tower(model.image_tower)
    got = runner.run_tflite(tflite, pixels)
    cosine = (got * trained).sum(1) / np.linalg.norm(got, axis=1)
    assert cosine.min() >= 0.99999, cosine


@pytest.mark.slow(reason="trains a second tiny model, exports and checks both as one")
def test_ensemble_of_two_workdirs_exports_as_one_model(trained, tmp_path):
    """Two models of the same data export as one SavedModel whose scores are
    the mean of their cosines (their unit embeddings side by side / sqrt 2)."""
    from vse_tf import config as config_lib
    from vse_tf import train_lib
    from vse_tf.serving import serving_check

    workdir, _, model, data_dir = trained
    config = config_lib.override(workdir_lib.read_workdir_config(workdir), seed=1)
    second = str(tmp_path / "seed1")
    train_lib.train_and_evaluate(config, second, verbose=0)
    _, other = workdir_lib.load_trained_model(second)
    export_dir = saved_model_lib.export_saved_model(
        [workdir, second], str(tmp_path / "models")
    )
    loaded = tf.saved_model.load(export_dir)
    assert "encode_image_features" not in loaded.signatures
    text = loaded.signatures["encode_text"](text=tf.constant(SENTENCES))["embedding"]
    expected = np.concatenate(
        [m.text_tower(tf.constant(SENTENCES)).numpy() for m in (model, other)], 1
    ) / np.sqrt(2)
    np.testing.assert_allclose(text.numpy(), expected, atol=1e-5)
    files = _image_files(data_dir)
    size = model.image_tower.image_size
    pixels = _pixels(files, size)
    images = loaded.signatures["encode_image"](image_bytes=_file_bytes(files))[
        "embedding"
    ].numpy()
    members = [m.image_tower(pixels).numpy() for m in (model, other)]
    np.testing.assert_allclose(
        images, np.concatenate(members, 1) / np.sqrt(2), atol=1e-5
    )
    report = serving_check.check_serving(export_dir)
    assert report.ok, report.format()


@pytest.mark.slow(reason="exports a second SavedModel and converts a TFLite tower")
def test_flip_averaging_model_exports_both_views(trained, tmp_path):
    """``flip_average``: every image signature (and the TFLite tower) embeds
    the image and its mirror image and averages the two unit embeddings."""
    import shutil

    from vse_tf import config as config_lib
    from vse_tf.serving import serving_check
    from vse_tf.serving.tflite import convert, runner

    workdir, _, model, data_dir = trained
    flipping_dir = str(tmp_path / "flipping")
    shutil.copytree(workdir, flipping_dir)
    config = config_lib.override(
        workdir_lib.read_workdir_config(workdir), flip_average=True
    )
    workdir_lib.write_config(flipping_dir, config)
    export_dir = saved_model_lib.export_saved_model(
        flipping_dir, str(tmp_path / "models")
    )
    loaded = tf.saved_model.load(export_dir)
    # One view's features cannot give the averaged embedding.
    assert "encode_image_features" not in loaded.signatures
    files = _image_files(data_dir)
    pixels = _pixels(files, model.image_tower.image_size)
    one = model.image_tower(pixels).numpy()
    mirror = model.image_tower(pixels[:, :, ::-1]).numpy()
    expected = (one + mirror) / np.linalg.norm(one + mirror, axis=1, keepdims=True)
    got = loaded.signatures["encode_image"](image_bytes=_file_bytes(files))
    np.testing.assert_allclose(got["embedding"].numpy(), expected, atol=1e-5)
    report = serving_check.check_serving(export_dir)
    assert report.ok, report.format()
    _, flipping = workdir_lib.load_trained_model(flipping_dir)
    tflite = runner.run_tflite(
        convert.convert_image_tower(flipping.image_tower), pixels
    )
    cosine = (tflite * expected).sum(1) / np.linalg.norm(tflite, axis=1)
    assert cosine.min() >= 0.99999, cosine
