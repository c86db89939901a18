"""The export run as TF Serving runs it: C++ loader, tensor names, no TF Python."""

import os

import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import (
    descriptor_pb2,
    descriptor_pool,
    message_factory,
    text_format,
)

from tests import testing_utils
from vse_tf import images as images_lib
from vse_tf.serving import c_api, loader, saved_model_lib, serving_check, serving_config


@pytest.fixture(scope="module")
def exported(tiny_export):
    _, export_dir, _, model = tiny_export
    report = serving_check.check_serving(os.path.dirname(export_dir))
    return export_dir, model, report


def test_every_signature_and_warmup_record_runs_and_matches(exported):
    export_dir, _, report = exported
    assert report.export_dir == export_dir  # the newest version of the base path
    assert report.ok, report.format()
    assert report.python_free
    assert report.tensorflow == tf.__version__
    labels = [r.signature for r in report.results]
    for signature in saved_model_lib.SIGNATURES + ("serving_default",):
        assert signature in labels
    warmup = [label for label in labels if label.startswith("warmup ")]
    with_records = sum(
        1
        for _ in tf.data.TFRecordDataset(
            os.path.join(export_dir, saved_model_lib.WARMUP_FILE)
        )
    )
    assert len(warmup) == with_records == 5


def test_c_api_outputs_equal_the_keras_towers(exported):
    export_dir, model, report = exported
    requests = serving_check.make_requests(export_dir)
    out = report.outputs
    size = model.image_tower.image_size

    def close(label, want):
        got = out[label]["embedding"]
        assert np.max(np.abs(got - np.asarray(want))) <= 1e-5, label

    close("encode_text", model.text_tower(tf.constant(requests["encode_text"]["text"])))
    close("serving_default", out["encode_text"]["embedding"])
    close(
        "encode_tokens",
        model.text_tower.encode_tokens(
            tf.constant(requests["encode_tokens"]["token_ids"])
        ),
    )
    close(
        "encode_image_features",
        model.image_tower.embed_features(
            tf.constant(requests["encode_image_features"]["features"])
        ),
    )
    pixels = requests["encode_image_pixels"]["pixels"]
    close(
        "encode_image_pixels",
        model.image_tower(images_lib.resize_pixels(tf.constant(pixels), size)),
    )
    decoded = tf.stack(
        [
            images_lib.decode_image(b, size)
            for b in requests["encode_image"]["image_bytes"]
        ]
    )
    close("encode_image", model.image_tower(decoded))


def test_signatures_are_read_from_the_protobuf_as_tensorflow_reads_them(exported):
    export_dir, _, _ = exported
    ours = c_api.read_signatures(os.path.join(export_dir, "saved_model.pb"))
    loaded = loader.load_saved_model(export_dir)
    assert set(ours) - {"__saved_model_init_op"} == set(loaded.signatures)
    for name, function in loaded.signatures.items():
        specs = function.structured_input_signature[1]
        assert set(ours[name]["inputs"]) == set(specs)
        for key, spec in specs.items():
            assert ours[name]["inputs"][key]["dtype"] == spec.dtype.as_datatype_enum
            want = [-1 if d is None else d for d in spec.shape.as_list()]
            assert ours[name]["inputs"][key]["shape"] == want
        assert set(ours[name]["outputs"]) == set(function.structured_outputs)


def test_a_server_without_the_text_ops_is_reported_not_crashed(exported):
    export_dir, _, _ = exported
    report = serving_check.check_serving(export_dir, with_text_ops=False)
    assert not report.ok
    assert "Op type not registered 'FastBertNormalize'" in report.error
    assert "did not load" in report.format()


def test_a_signature_that_rejects_its_input_fails_the_check(exported):
    export_dir, _, _ = exported
    bad = {"encode_image_features": {"features": np.full([1, 3], np.nan, np.float32)}}
    report = serving_check.check_serving(export_dir, requests=bad)
    assert not report.ok and len(report.results) == 1
    assert "features" in report.results[0].message


@pytest.mark.slow(reason="runs the command, which loads the export through the C API")
def test_check_serving_command(exported):
    export_dir, _, _ = exported
    ok = testing_utils.run_python("-m", "export.check_serving", export_dir)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "OK: 11 requests ran through the C API and matched." in ok.stdout
    failed = testing_utils.run_python(
        "-m", "export.check_serving", "--notext_ops", export_dir
    )
    assert failed.returncode == 1
    assert "FastBertNormalize" in failed.stdout
    assert failed.stderr.strip().splitlines()[-1].startswith("error: the export")


def _batching_parameters_class():
    """TF Serving's BatchingParameters message (session_bundle_config.proto),
    built from its field numbers: the pip package does not ship it."""
    pool = descriptor_pool.DescriptorPool()
    from google.protobuf import wrappers_pb2

    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    proto = descriptor_pb2.FileDescriptorProto(
        name="batching.proto",
        package="tensorflow.serving",
        dependency=["google/protobuf/wrappers.proto"],
        syntax="proto3",
    )
    message = proto.message_type.add(name="BatchingParameters")
    field = descriptor_pb2.FieldDescriptorProto
    wrapped = (  # (name, number, wrapper type)
        ("max_batch_size", 1, "Int64Value"),
        ("batch_timeout_micros", 2, "Int64Value"),
        ("max_enqueued_batches", 3, "Int64Value"),
        ("num_batch_threads", 4, "Int64Value"),
        ("thread_pool_name", 5, "StringValue"),
    )
    for name, number, wrapper in wrapped:
        message.field.add(
            name=name,
            number=number,
            type=field.TYPE_MESSAGE,
            type_name=f".google.protobuf.{wrapper}",
            label=field.LABEL_OPTIONAL,
        )
    message.field.add(
        name="allowed_batch_sizes",
        number=6,
        type=field.TYPE_INT64,
        label=field.LABEL_REPEATED,
    )
    message.field.add(
        name="pad_variable_length_inputs",
        number=7,
        type=field.TYPE_BOOL,
        label=field.LABEL_OPTIONAL,
    )
    pool.Add(proto)
    return message_factory.GetMessageClass(
        pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters")
    )


def test_serving_files_parse_as_tf_serving_protos(tmp_path):
    from tensorflow_serving.config import model_server_config_pb2

    paths = serving_config.write_serving_files(str(tmp_path), "vse")
    assert [os.path.basename(p) for p in paths] == [
        "models.config",
        "batching_parameters.txt",
    ]
    with open(paths[0]) as f:
        config = text_format.Parse(
            f.read(), model_server_config_pb2.ModelServerConfig()
        )
    (model,) = config.model_config_list.config
    assert (model.name, model.base_path, model.model_platform) == (
        "vse",
        "/models/vse",
        "tensorflow",
    )
    assert model.model_version_policy.latest.num_versions == 1
    with open(paths[1]) as f:
        batching = text_format.Parse(f.read(), _batching_parameters_class()())
    assert batching.max_batch_size.value == 32
    assert batching.batch_timeout_micros.value == 2000
    assert batching.num_batch_threads.value == os.cpu_count()
    command = serving_config.docker_command(str(tmp_path), "vse")
    assert "--batching_parameters_file=/models/vse/batching_parameters.txt" in command
    assert f"-v {tmp_path}:/models/vse" in command
