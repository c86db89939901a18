"""The files a TF Serving deployment reads beside the numbered versions.

`write_serving_files` writes, into the model base path:

* ``models.config``: a ``ModelServerConfig`` (text format) naming the model
  and its base path as the server sees it (``/models/<name>`` in the
  official Docker image), serving the newest version;
* ``batching_parameters.txt``: ``BatchingParameters`` (text format) for
  ``--enable_batching``.

The batching values: requests of the text tower cost well under a
millisecond each and a CPU image request tens of milliseconds (VGG16 at
224: ~70-250 ms per image on 2 cores; EfficientNet-Lite0 ~10 ms), so a
2 ms timeout adds little latency while merging concurrent requests; 32
inputs per batch keep one image batch's activations under ~1 GB for VGG16
at 224; one batch thread per core. ``encode_image`` (encoded bytes) and
the text signatures batch freely; ``encode_image_pixels`` requests must
share one image size to be batched together (TF Serving concatenates
inputs; padding pixels would change them, so it stays off).
"""

from __future__ import annotations

import os

from vse_tf import io_utils

MODELS_CONFIG = "models.config"
BATCHING_FILE = "batching_parameters.txt"


def models_config(model_name: str, base_path: str) -> str:
    """A ``ModelServerConfig`` text proto serving the newest version."""
    return (
        "model_config_list {\n"
        "  config {\n"
        f'    name: "{model_name}"\n'
        f'    base_path: "{base_path}"\n'
        '    model_platform: "tensorflow"\n'
        "    model_version_policy { latest { num_versions: 1 } }\n"
        "  }\n"
        "}\n"
    )


def batching_parameters(
    max_batch_size: int = 32,
    batch_timeout_micros: int = 2000,
    num_batch_threads: int = 0,
    max_enqueued_batches: int = 64,
) -> str:
    """A ``BatchingParameters`` text proto (see the module docstring).

    Args:
        max_batch_size: Inputs merged into one batch at most.
        batch_timeout_micros: How long a request waits for others.
        num_batch_threads: Threads running batches (0 = this machine's cores).
        max_enqueued_batches: Queue length before requests are refused.
    """
    threads = num_batch_threads or os.cpu_count() or 1
    return (
        f"max_batch_size {{ value: {max_batch_size} }}\n"
        f"batch_timeout_micros {{ value: {batch_timeout_micros} }}\n"
        f"max_enqueued_batches {{ value: {max_enqueued_batches} }}\n"
        f"num_batch_threads {{ value: {threads} }}\n"
        "pad_variable_length_inputs: false\n"
    )


def docker_command(output_dir: str, model_name: str) -> str:
    """The ``docker run`` line that serves ``output_dir`` with these files."""
    path = os.path.abspath(output_dir)
    return (
        f"docker run --rm -p 8500:8500 -p 8501:8501 -v {path}:/models/{model_name} "
        f"tensorflow/serving --model_config_file=/models/{model_name}/{MODELS_CONFIG} "
        f"--enable_batching --batching_parameters_file=/models/{model_name}/"
        f"{BATCHING_FILE}"
    )


def write_serving_files(output_dir: str, model_name: str) -> list[str]:
    """Writes both files into the model base path, atomically; returns their paths.

    The base path inside ``models.config`` is ``/models/<model_name>``, where
    `docker_command` mounts ``output_dir``.
    """
    contents = {
        MODELS_CONFIG: models_config(model_name, f"/models/{model_name}"),
        BATCHING_FILE: batching_parameters(),
    }
    written = []
    for name, text in contents.items():
        path = os.path.join(output_dir, name)
        io_utils.atomic_write_text(path, text)
        written.append(path)
    return written
