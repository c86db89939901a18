"""Beam feature extraction against the in-process path, on the same images.

Extracts the features of the first ``--num_images`` images of a data set's
split (default: 500 Flickr8k dev images from ``../shared``, the
``flickr8k`` preset's extraction: HED VGG16 trunk, 224x224,
``pool5_avgmax``, ``auto`` precision) four times, each into an empty cache:

* ``local``: `vse_tf.features.extraction.extract_features_with_report` (what
  ``trainers.extract_features`` runs; TensorFlow uses every core);
* ``beam_fn_api``: the Beam pipeline on the in-process FnApiRunner;
* ``beam_1_worker`` / ``beam_2_workers``: the pipeline on the direct runner
  with ``--direct_running_mode=multi_processing --direct_num_workers=N``
  (worker processes, each loading the backbone once).

First a warm-up (every image file read once, a local extraction of 32
images, so no run pays for a cold disk or the first weights load), then
``--rounds`` rounds of the four runs in turn; each run's best round counts.
Wall time covers the whole call (pipeline start, the driver's bf16 check,
worker start-up and model load, extraction, the manifest), since that is
what a user waits for. Checks that every Beam cache is bit-identical to the
local one. Prints a table, the overhead of each Beam run against local, and
ONE line of JSON (last line).

Usage (in a venv with the beam extra):
    python -m benchmarks.beam_extract                 # ~5 minutes on 2 cores
    python -m benchmarks.beam_extract --num_images=200
"""

from __future__ import annotations

import json
import os
import tempfile
import time

import numpy as np
from absl import app, flags

from vse_tf import config as config_lib
from vse_tf import hardware
from vse_tf.data import datasets
from vse_tf.features import extraction as feature_extraction
from vse_tf.features import settings as feature_settings
from vse_tf.pipelines import extract

_DEFAULT_DATA = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    "..",
    "shared",
    "data",
    "flickr8k",
)
_DATA_DIR = flags.DEFINE_string("data_dir", _DEFAULT_DATA, "Flickr8k root.")
_PRESET = flags.DEFINE_string("preset", "flickr8k", "Config whose extraction runs.")
_SPLIT = flags.DEFINE_string("split", "dev", "Split the images come from.")
_NUM_IMAGES = flags.DEFINE_integer("num_images", 500, "Images extracted per run.")
_ROUNDS = flags.DEFINE_integer(
    "rounds", 2, "Rounds of all four runs, alternated; each run's best is kept."
)


def _run(name, paths, settings, root, **beam):
    cache = os.path.join(root, name)
    start = time.perf_counter()
    if beam:
        report = extract.extract_features_with_report(
            paths, cache_dir=cache, verbose=0, **beam, **settings
        )
    else:
        report = feature_extraction.extract_features_with_report(
            paths, cache_dir=cache, verbose=0, **settings
        )
    return report, time.perf_counter() - start


def main(argv):
    del argv
    config = config_lib.override(
        config_lib.get_config(_PRESET.value),
        dataset="flickr8k",
        data_dir=os.path.abspath(_DATA_DIR.value),
    )
    paths = datasets.load_split(config, _SPLIT.value).image_paths[: _NUM_IMAGES.value]
    settings = feature_settings.extraction_settings(config)
    del settings["cache_dir"]
    runs = [
        ("local", {}),
        ("beam_fn_api", dict(runner="FnApiRunner")),
    ] + [
        (
            f"beam_{n}_worker" + ("s" if n > 1 else ""),
            dict(
                runner="DirectRunner",
                pipeline_options=[
                    "--direct_running_mode=multi_processing",
                    f"--direct_num_workers={n}",
                ],
            ),
        )
        for n in (1, 2)
    ]
    results, reports = {}, {}
    with tempfile.TemporaryDirectory() as root:
        for path in paths:
            with open(path, "rb") as f:
                f.read()
        _run("warmup", paths[:32], settings, root)
        for round_number in range(_ROUNDS.value):
            for name, beam in runs:
                folder = f"{name}-{round_number}"
                reports[name], seconds = _run(folder, paths, settings, root, **beam)
                rate = len(paths) / seconds
                results[name] = max(results.get(name, 0.0), rate)
                print(f"{name:16s} {seconds:7.1f} s  {rate:6.2f} images/s")
    local = reports["local"]
    identical = all(
        np.array_equal(reports[n].features, local.features) for n in reports
    )
    described = (
        f"{settings['backbone']} {settings['weights']} {settings['image_feature']}"
        f" at {settings['image_size']}, {local.used_dtype}"
    )
    print(
        f"\nbest of {_ROUNDS.value} rounds; {len(paths)} images, {described}; "
        f"{os.cpu_count()} cores ({hardware.cpu_name()})"
    )
    for name in results:
        if name != "local":
            print(
                f"{name}: {results[name] / results['local']:.2f}x the local rate "
                f"(overhead {100 * (results['local'] / results[name] - 1):+.0f}% time)"
            )
    print(f"features bit-identical to local: {identical}")
    print(
        json.dumps(
            {
                "num_images": len(paths),
                "rounds": _ROUNDS.value,
                "images_per_s": {k: round(v, 2) for k, v in results.items()},
                "ratio_to_local": {
                    k: round(v / results["local"], 3) for k, v in results.items()
                },
                "used_dtype": local.used_dtype,
                "bit_identical": identical,
                "cores": os.cpu_count(),
                "cpu": hardware.cpu_name(),
            }
        )
    )


if __name__ == "__main__":
    app.run(main)
