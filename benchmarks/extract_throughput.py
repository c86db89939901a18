"""VGG16 feature-extraction throughput, and how close it gets to this machine's peak.

Measures, in one process:

* images/s of the backbone `vse_tf.features` extracts with
  (`vse_tf.models.backbone.build_vgg16_backbone`, random-init weights: the
  speed does not depend on them) for ``pool5`` and ``fc7`` at 224x224, in
  float32 and in bf16 (``mixed_bfloat16``), on a fixed batch already in
  memory, after warm-up (the best of ``--num_batches`` timed batches);
* the FLOPs per image, counted from the model's own layer shapes
  (``2 * H_out * W_out * k * k * C_in * C_out`` per convolution and
  ``2 * in * out`` per dense layer: a multiply-add is 2 FLOPs; the conv
  trunk is 15.35 G multiply-adds = 30.7 GFLOP at 224; ``fc7`` adds fc6 and
  fc7), hence the achieved GFLOP/s;
* the machine's measured peak: a large square ``tf.matmul`` in float32 and
  in bfloat16 (warm-up, then timed before, between and after the models;
  the best sample);
* the decode + resize rate of the tf.data input pipeline on synthetic
  500x375 JPEGs (Flickr-sized), to show whether decoding keeps up.

Prints a table and ratios, then ONE line of JSON (last line) with
``images_per_s_{pool5,fc7}_{f32,bf16}``, ``gflop_per_image_{pool5,fc7}``,
``peak_gflops_{f32,bf16}``, ``fraction_of_peak`` (bf16 pool5 against the
bf16 matmul peak), ``fraction_of_peak_{pool5_f32,fc7_f32,fc7_bf16}`` and
``decode_images_per_s``.

Usage:
    python -m benchmarks.extract_throughput            # ~2-3 minutes on 2 cores
    python -m benchmarks.extract_throughput --batch_size=64 --num_batches=10
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf
from absl import app, flags

from vse_tf import images as images_lib
from vse_tf.models import backbone as backbone_lib

_HAS_GPU = bool(tf.config.list_physical_devices("GPU"))
_BATCH_SIZE = flags.DEFINE_integer(
    "batch_size", 64 if _HAS_GPU else 8, "Images per VGG16 call."
)
_NUM_BATCHES = flags.DEFINE_integer(
    "num_batches", 10 if _HAS_GPU else 3, "Timed batches per model (after warm-up)."
)
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 224, "Square input size.")
_MATMUL_SIZE = flags.DEFINE_integer("matmul_size", 4096, "Peak matmul is N x N x N.")
_MATMUL_REPEATS = flags.DEFINE_integer(
    "matmul_repeats", 3, "Peak matmuls timed first (one more after each model)."
)
_DECODE_IMAGES = flags.DEFINE_integer(
    "decode_images", 64, "Synthetic JPEGs decoded to time the input pipeline (0: skip)."
)

_PRECISIONS = {"f32": "float32", "bf16": "mixed_bfloat16"}


def _layers(model: keras.Model) -> list:
    found = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            found.extend(_layers(layer))
        else:
            found.append(layer)
    return found


def model_flops(model: keras.Model) -> dict[str, float]:
    """FLOPs of one image through ``model``, from its layer shapes.

    Returns:
        ``{"conv": ..., "dense": ..., "total": ...}`` (multiply-add = 2 FLOPs;
        bias adds, ReLU and pooling, under 0.1%, are not counted).
    """
    conv = dense = 0.0
    for layer in _layers(model):
        if isinstance(layer, keras.layers.Conv2D):
            kh, kw, c_in, c_out = layer.kernel.shape
            _, h_out, w_out, _ = layer.output.shape
            conv += 2.0 * h_out * w_out * kh * kw * c_in * c_out
        elif isinstance(layer, keras.layers.Dense):
            n_in, n_out = layer.kernel.shape
            dense += 2.0 * n_in * n_out
    return {"conv": conv, "dense": dense, "total": conv + dense}


class PeakMeter:
    """Times a large square matmul, in float32 and bfloat16, again and again.

    Sampled before, between and after the model measurements and reduced to
    the best, so a busy spell on a shared machine during one sample does
    not understate the peak the models are compared with.
    """

    def __init__(self, size: int):
        self.size = size
        rng = tf.random.Generator.from_seed(0)
        self._operands = {
            name: [tf.cast(rng.normal([size, size]), dtype) for _ in range(2)]
            for name, dtype in (("f32", tf.float32), ("bf16", tf.bfloat16))
        }
        self._matmul = tf.function(tf.matmul)
        self.samples: dict[str, list[float]] = {name: [] for name in self._operands}
        for a, b in self._operands.values():
            self._matmul(a, b).numpy()  # warm-up

    def sample(self, repeats: int = 1) -> None:
        """Adds ``repeats`` GFLOP/s samples per dtype (2 * size^3 FLOPs each)."""
        for name, (a, b) in self._operands.items():
            for _ in range(repeats):
                start = time.perf_counter()
                self._matmul(a, b).numpy()
                seconds = time.perf_counter() - start
                self.samples[name].append(2.0 * self.size**3 / seconds / 1e9)

    def peak(self, name: str) -> float:
        return max(self.samples[name])


def model_throughput(
    feature: str, dtype: str, batch: tf.Tensor, num_batches: int
) -> tuple[float, float, keras.Model]:
    """``(best images/s, mean images/s, model)`` of one backbone."""
    model = backbone_lib.build_vgg16_backbone(
        feature, int(batch.shape[1]), "none", dtype=dtype
    )
    run = tf.function(lambda x: model(x, training=False))
    run(batch).numpy()  # trace + warm-up
    times = []
    for _ in range(num_batches):
        start = time.perf_counter()
        run(batch).numpy()
        times.append(time.perf_counter() - start)
    size = int(batch.shape[0])
    return size / min(times), size * len(times) / sum(times), model


def decode_throughput(num_images: int, image_size: int) -> float:
    """Images/s of the parallel read + decode + resize pipeline (no model)."""
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as folder:
        paths = []
        base = rng.integers(0, 256, [375 // 15, 500 // 20, 3]).astype(np.uint8)
        for i in range(num_images):
            pixels = np.kron(np.roll(base, i, axis=0), np.ones([15, 20, 1], np.uint8))
            path = os.path.join(folder, f"{i:04d}.jpg")
            tf.io.write_file(path, tf.io.encode_jpeg(pixels, quality=90))
            paths.append(path)
        dataset = images_lib.image_dataset(paths, image_size, 32)
        for _ in dataset:  # warm-up (file cache, tracing)
            pass
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            for images in dataset:
                images.numpy()
            best = min(best, time.perf_counter() - start)
    return num_images / best


def main(argv):
    del argv
    size = _IMAGE_SIZE.value
    batch = tf.random.stateless_uniform(
        [_BATCH_SIZE.value, size, size, 3], seed=[0, 0], minval=0, maxval=255
    )
    devices = [d.device_type for d in tf.config.list_physical_devices()]
    print(
        f"TensorFlow {tf.__version__}, devices {devices}, {os.cpu_count()} CPUs "
        f"({platform.processor() or platform.machine()}); batch {_BATCH_SIZE.value}, "
        f"{_NUM_BATCHES.value} timed batches, {size}x{size}"
    )
    load_before = os.getloadavg()[0]
    meter = PeakMeter(_MATMUL_SIZE.value)
    meter.sample(_MATMUL_REPEATS.value)
    measured, result, flops = [], {}, {}
    for feature in ("pool5", "fc7"):
        for name, dtype in _PRECISIONS.items():
            best, mean, model = model_throughput(
                feature, dtype, batch, _NUM_BATCHES.value
            )
            flops[feature] = model_flops(model)
            measured.append((feature, name, best, mean))
            del model
            keras.backend.clear_session()
            meter.sample()
    peaks = {name: meter.peak(name) for name in _PRECISIONS}
    rows = []
    for feature, name, best, mean in measured:
        gflops = best * flops[feature]["total"] / 1e9
        fraction = gflops / peaks[name]
        rows.append((feature, name, best, mean, gflops, fraction))
        result[f"images_per_s_{feature}_{name}"] = round(best, 3)
        result[f"mean_images_per_s_{feature}_{name}"] = round(mean, 3)
        result[f"gflops_{feature}_{name}"] = round(gflops, 2)
        key = (
            "fraction_of_peak"
            if (feature, name) == ("pool5", "bf16")
            else f"fraction_of_peak_{feature}_{name}"
        )
        result[key] = round(fraction, 4)
    decode = (
        decode_throughput(_DECODE_IMAGES.value, size) if _DECODE_IMAGES.value else None
    )

    print()
    for name, label in (("f32", "float32"), ("bf16", "bfloat16")):
        samples = " ".join(f"{x:.0f}" for x in meter.samples[name])
        print(
            f"peak matmul {_MATMUL_SIZE.value}^3 {label}: {peaks[name]:.1f} GFLOP/s "
            f"(best of {len(meter.samples[name])} samples: {samples})"
        )
    for feature, counted in flops.items():
        print(
            f"{feature}: {counted['total'] / 1e9:.3f} GFLOP/image "
            f"(conv {counted['conv'] / 1e9:.3f} = {counted['conv'] / 2e9:.3f} G "
            f"multiply-adds, dense {counted['dense'] / 1e9:.3f})"
        )
    print()
    header = (
        f"{'feature':<8} {'dtype':<6} {'img/s best':>10} {'img/s mean':>10} "
        f"{'GFLOP/s':>9} {'of peak':>8}"
    )
    print(header)
    for feature, name, best, mean, gflops, fraction in rows:
        print(
            f"{feature:<8} {name:<6} {best:>10.2f} {mean:>10.2f} {gflops:>9.1f} "
            f"{fraction:>8.1%}"
        )
    speedups = {
        feature: result[f"images_per_s_{feature}_bf16"]
        / result[f"images_per_s_{feature}_f32"]
        for feature in flops
    }
    print()
    for feature, ratio in speedups.items():
        print(f"bf16 / float32 speed-up, {feature}: {ratio:.2f}x")
    print(f"bf16 / float32 matmul peak: {peaks['bf16'] / peaks['f32']:.2f}x")
    if decode is not None:
        fastest = max(row[2] for row in rows)
        print(
            f"decode + resize (tf.data, 500x375 JPEG -> {size}x{size}): "
            f"{decode:.1f} images/s = {decode / fastest:.1f}x the fastest model"
        )
    load_after = os.getloadavg()[0]
    print(
        f"Note: a shared machine (1-minute load average {load_before:.1f} before, "
        f"{load_after:.1f} after, on {os.cpu_count()} CPUs): figures vary run to "
        "run; the best of several batches and peak samples is reported, the "
        "mean column shows the spread. A fraction of peak above 100% means the "
        "matmul samples all met busier moments than the best model batch."
    )
    result.update(
        gflop_per_image_pool5=round(flops["pool5"]["total"] / 1e9, 4),
        gflop_per_image_fc7=round(flops["fc7"]["total"] / 1e9, 4),
        peak_gflops_f32=round(peaks["f32"], 2),
        peak_gflops_bf16=round(peaks["bf16"], 2),
        bf16_speedup_pool5=round(speedups["pool5"], 3),
        bf16_speedup_fc7=round(speedups["fc7"], 3),
        decode_images_per_s=None if decode is None else round(decode, 2),
        batch_size=_BATCH_SIZE.value,
        image_size=size,
        device="GPU" if _HAS_GPU else "CPU",
        load_average=[round(load_before, 2), round(load_after, 2)],
    )
    print(json.dumps(result))


if __name__ == "__main__":
    app.run(main)
