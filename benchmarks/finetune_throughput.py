"""Fine-tuning throughput: the cheap path (cached activations) against images.

Measures, in one process, the images/s of one fine-tuning step of the image
tower (forward and backward of the trained stages, the Adam update; batch as
the ``flickr8k_lite_ft`` preset):

* ``cheap``: `ImageTower.embed_cached` on the activations where fine-tuning
  starts (what the feature cache holds, float16): only the trained stages,
  ``W_emb`` and the loss run each step;
* ``cheap, bf16``: the same step with the trained convolutions' products in
  bfloat16 (``--trunk_compute_dtype=bfloat16``, what ``auto`` picks where
  the CPU has ``avx512_bf16``/``amx_bf16``; `backbone.computing_in`), side
  by side with the float32 one; measured on any CPU, labelled native or
  emulated;
* ``full``: `ImageTower.call` on decoded pixels, as ``--nofine_tune_cached``
  trains: the frozen stages run forward every step too;
* ``torch``: a PyTorch twin of the same network (EfficientNet-Lite from the
  same stage table, `vse_tf.models.efficientnet_lite.VARIANTS`, batch norm
  in eval mode as our ``frozen`` default; or VGG16's 13 convolutions;
  frozen layers without gradients), the same batch and the same loss, on
  pixels, where torch is installed (a benchmark-only dependency);

each on a fixed batch in memory after warm-up (best of ``--num_batches``).
The loss is the sum of hinges (`vse_tf.losses.ranking_loss`) against fixed
random unit text embeddings, so only the image tower is timed (the preset
trains with InfoNCE; either loss is a few ``[B, B]`` operations, a
negligible part of the step). FLOPs per
image are counted from the layer shapes (a multiply-add is 2 FLOPs; the
backward pass of a trained layer counted as twice its forward), and set
against this machine's measured float32 matmul peak.

Prints a table and ratios, then ONE line of JSON (last line) with
``cheap_images_per_s``, ``cheap_bf16_images_per_s``, ``full_images_per_s``,
``torch_images_per_s`` (null without torch), ``cheap_vs_full``,
``cheap_bf16_vs_cheap``, ``bf16_native``, ``full_vs_torch``,
``gflop_per_image_*``, ``peak_gflops_f32`` and ``fraction_of_peak_*``.

Usage:
    python -m benchmarks.finetune_throughput                  # ~3 minutes
    python -m benchmarks.finetune_throughput --fine_tune_from=stage7
    python -m benchmarks.finetune_throughput --backbone=vgg16 \
        --fine_tune_from=block5 --batch_size=128   # the flickr8k recipe's
"""

from __future__ import annotations

import json
import os
import platform
import time

import keras
import numpy as np
import tensorflow as tf
from absl import app, flags

from vse_tf import config as config_lib
from vse_tf import hardware, losses
from vse_tf.models import backbone as backbone_lib
from vse_tf.models import catalog, efficientnet_lite
from vse_tf.models.image_tower import ImageTower

_PRESET = config_lib.get_config("flickr8k_lite_ft")
_BACKBONE = flags.DEFINE_string(
    "backbone", _PRESET.model.backbone, "efficientnet_lite0|1|2 or vgg16."
)
_FINE_TUNE_FROM = flags.DEFINE_string(
    "fine_tune_from", _PRESET.model.fine_tune_from, "Where fine-tuning starts."
)
_BATCH_SIZE = flags.DEFINE_integer(
    "batch_size", _PRESET.train.batch_size, "Images per step."
)
_IMAGE_SIZE = flags.DEFINE_integer(
    "image_size", 0, "0: the variant's native size (224 for vgg16)."
)
_NUM_BATCHES = flags.DEFINE_integer("num_batches", 3, "Timed steps per path.")
_MATMUL_SIZE = flags.DEFINE_integer("matmul_size", 4096, "Peak matmul is N^3.")
_EMBED_DIM = 1024


def _layers(model: keras.Model) -> list:
    found = []
    for layer in model.layers:
        found.extend(_layers(layer) if isinstance(layer, keras.Model) else [layer])
    return found


def forward_flops(model: keras.Model) -> float:
    """Multiply-add FLOPs of one image through ``model``'s convolutions."""
    total = 0.0
    for layer in _layers(model):
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            kh, kw, channels, _ = layer.kernel.shape
            _, h, w, _ = layer.output.shape
            total += 2.0 * h * w * kh * kw * channels
        elif isinstance(layer, keras.layers.Conv2D):
            kh, kw, c_in, c_out = layer.kernel.shape
            _, h, w, _ = layer.output.shape
            total += 2.0 * h * w * kh * kw * c_in * c_out
    return total


def matmul_peak(size: int, repeats: int = 3) -> float:
    """Best GFLOP/s of a float32 ``size^3`` matmul."""
    a = tf.random.normal([size, size])
    matmul = tf.function(tf.matmul)
    matmul(a, a).numpy()
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a, a).numpy()
        best = max(best, 2.0 * size**3 / (time.perf_counter() - start) / 1e9)
    return best


def _best_rate(step, batch_size: int, num_batches: int) -> float:
    step()  # trace + warm-up
    step()
    times = []
    for _ in range(num_batches):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return batch_size / min(times)


def _feature(backbone: str) -> str:
    """The pooling of the recipe that trains ``backbone`` (flickr8k, *_lite_ft)."""
    return "pool5_avgmax" if backbone == catalog.VGG16 else "head_avg"


def keras_rates(backbone, fine_tune_from, size, batch_size, num_batches):
    """``(cheap images/s, cheap bf16 images/s, full images/s, tower)``."""
    keras.utils.set_random_seed(0)
    tower = ImageTower(
        embed_dim=_EMBED_DIM,
        image_feature=_feature(backbone),
        image_size=size,
        backbone=backbone,
        vgg_weights="none",
        lite_weights="none",
        feature_norm="batchnorm",
        fine_tune_from=fine_tune_from,
    )
    bottom, _ = backbone_lib.split_backbone(
        tower.backbone, fine_tune_from, _feature(backbone)
    )
    rng = np.random.default_rng(0)
    pixels = tf.constant(rng.uniform(0, 255, (batch_size, size, size, 3)), tf.float32)
    activations = tf.constant(
        np.reshape(bottom(pixels).numpy(), [batch_size, -1]), tf.float16
    )
    text = tf.math.l2_normalize(tf.random.normal([batch_size, _EMBED_DIM]), -1)
    optimizer = keras.optimizers.Adam(1e-4)
    variables = tower.trainable_variables
    optimizer.build(variables)

    trained = backbone_lib.matmul_layers(tower.backbone)

    def make_step(embed, inputs, dtype="float32"):
        @tf.function
        def step():
            with tf.GradientTape() as tape:
                with backbone_lib.computing_in(trained, dtype):
                    embeddings = embed(inputs, training=True)
                loss = losses.ranking_loss(embeddings, text, 0.2)
            optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
            return loss

        return lambda: step().numpy()

    cheap = _best_rate(
        make_step(tower.embed_cached, activations), batch_size, num_batches
    )
    cheap_bf16 = _best_rate(
        make_step(tower.embed_cached, activations, "bfloat16"),
        batch_size,
        num_batches,
    )
    full = _best_rate(make_step(tower, pixels), batch_size, num_batches)
    return cheap, cheap_bf16, full, tower


# ---------------------------------------------------------------------------
# The PyTorch twin (same layers, same sizes; random weights).


def torch_rate(backbone, fine_tune_from, size, batch_size, num_batches):
    """Images/s of the twin's full-image step, or None without torch."""
    try:
        import torch  # noqa: PLC0415 (benchmark-only dependency)
    except ImportError:
        return None
    from torch import nn  # noqa: PLC0415

    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)

    def conv_bn(c_in, c_out, kernel, stride, groups=1, act=True):
        layers = [
            nn.Conv2d(
                c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False
            ),
            nn.BatchNorm2d(c_out, eps=1e-3),
        ]
        return nn.Sequential(*layers, *([nn.ReLU6()] if act else []))

    class MBConv(nn.Module):
        def __init__(self, c_in, stage, stride):
            super().__init__()
            hidden = c_in * stage.expand
            parts = [conv_bn(c_in, hidden, 1, 1)] if stage.expand != 1 else []
            parts += [
                conv_bn(hidden, hidden, stage.kernel, stride, groups=hidden),
                conv_bn(hidden, stage.channels, 1, 1, act=False),
            ]
            self.body = nn.Sequential(*parts)
            self.skip = stride == 1 and c_in == stage.channels

        def forward(self, x):
            y = self.body(x)
            return x + y if self.skip else y

    if backbone == catalog.VGG16:
        named, channels = [], 3
        for block, (repeats, width) in enumerate(
            zip((2, 2, 3, 3, 3), (64, 128, 256, 512, 512)), start=1
        ):
            layers = []
            for _ in range(repeats):
                layers += [nn.Conv2d(channels, width, 3, 1, 1), nn.ReLU()]
                channels = width
            named.append((f"block{block}", nn.Sequential(*layers, nn.MaxPool2d(2))))

        def pool(x):  # pool5_avgmax
            return torch.cat([x.mean((2, 3)), x.amax((2, 3))], 1)

        feature_dim = 2 * channels
    else:
        named = [("stem", conv_bn(3, efficientnet_lite.STEM_CHANNELS, 3, 2))]
        channels = efficientnet_lite.STEM_CHANNELS
        stages = efficientnet_lite.VARIANTS[backbone].stages
        for s, stage in enumerate(stages, start=1):
            for j in range(1, stage.repeats + 1):
                block = MBConv(channels, stage, stage.stride if j == 1 else 1)
                named.append((f"stage{s}_block{j}", block))
                channels = stage.channels
        named.append(("head", conv_bn(channels, efficientnet_lite.HEAD_CHANNELS, 1, 1)))

        def pool(x):  # head_avg
            return x.mean((2, 3))

        feature_dim = efficientnet_lite.HEAD_CHANNELS
    trained = False
    for name, module in named:
        trained = (
            trained or name == fine_tune_from or name.startswith(fine_tune_from + "_")
        )
        module.requires_grad_(trained)
    trunk = nn.Sequential(*(module for _, module in named)).eval()  # frozen BN
    w_emb = nn.Linear(feature_dim, _EMBED_DIM)
    parameters = [
        p for p in [*trunk.parameters(), *w_emb.parameters()] if p.requires_grad
    ]
    optimizer = torch.optim.Adam(parameters, 1e-4)
    pixels = torch.rand(batch_size, 3, size, size) * 2 - 1
    text = nn.functional.normalize(torch.randn(batch_size, _EMBED_DIM), dim=-1)

    def step():
        image = nn.functional.normalize(w_emb(pool(trunk(pixels))), dim=-1)
        scores = image @ text.T
        diagonal = scores.diag()
        hinge_i2t = (0.2 + scores - diagonal[:, None]).clamp(min=0)
        hinge_t2i = (0.2 + scores - diagonal[None, :]).clamp(min=0)
        mask = 1 - torch.eye(batch_size)
        loss = ((hinge_i2t + hinge_t2i) * mask).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return _best_rate(step, batch_size, num_batches)


def main(argv):
    del argv
    backbone, point = _BACKBONE.value, _FINE_TUNE_FROM.value
    size = _IMAGE_SIZE.value or (
        224
        if backbone == catalog.VGG16
        else efficientnet_lite.native_image_size(backbone)
    )
    batch, repeats = _BATCH_SIZE.value, _NUM_BATCHES.value
    peak_before = matmul_peak(_MATMUL_SIZE.value)
    cheap, cheap_bf16, full, tower = keras_rates(backbone, point, size, batch, repeats)
    native = hardware.native_bfloat16()
    twin = torch_rate(backbone, point, size, batch, repeats)
    peak = max(peak_before, matmul_peak(_MATMUL_SIZE.value))
    top_flops = forward_flops(tower.trunk_top)
    all_flops = forward_flops(tower.backbone)
    # A trained layer's backward is two products of its forward size (the
    # input's and the weights' gradients); the frozen part runs forward only.
    cheap_flops = 3 * top_flops
    full_flops = (all_flops - top_flops) + 3 * top_flops
    bf16_label = "native" if native else "emulated"
    rows = [("cheap (cached activations)", cheap, cheap_flops)]
    rows.append((f"cheap, bf16 ({bf16_label})", cheap_bf16, cheap_flops))
    rows.append(("full (pixels, whole trunk)", full, full_flops))
    if twin is not None:
        rows.append(("PyTorch twin (pixels)", twin, full_flops))
    print(
        f"{hardware.cpu_name()} ({platform.machine()}), {os.cpu_count()} CPUs; "
        f"{backbone} {size}x{size}, fine-tuned from {point}, batch {batch}; "
        f"float32 matmul peak {peak:.0f} GFLOP/s"
    )
    print(
        f"{'path':<28} {'images/s':>9} {'GFLOP/img':>10} {'GFLOP/s':>8} {'of peak':>8}"
    )
    for name, rate, flops in rows:
        achieved = rate * flops / 1e9
        print(
            f"{name:<28} {rate:9.1f} {flops / 1e9:10.3f} {achieved:8.1f} "
            f"{achieved / peak:8.1%}"
        )
    print(f"cheap / full: {cheap / full:.1f}x")
    print(f"cheap bf16 / cheap float32: {cheap_bf16 / cheap:.2f}x ({bf16_label})")
    if twin is not None:
        print(f"full / PyTorch twin: {full / twin:.2f}x")
    print(
        json.dumps(
            {
                "backbone": backbone,
                "fine_tune_from": point,
                "batch_size": batch,
                "image_size": size,
                "cheap_images_per_s": round(cheap, 1),
                "cheap_bf16_images_per_s": round(cheap_bf16, 1),
                "bf16_native": native,
                "full_images_per_s": round(full, 1),
                "torch_images_per_s": None if twin is None else round(twin, 1),
                "cheap_vs_full": round(cheap / full, 2),
                "cheap_bf16_vs_cheap": round(cheap_bf16 / cheap, 2),
                "full_vs_torch": None if twin is None else round(full / twin, 2),
                "gflop_per_image_cheap": round(cheap_flops / 1e9, 3),
                "gflop_per_image_full": round(full_flops / 1e9, 3),
                "peak_gflops_f32": round(peak, 1),
                "fraction_of_peak_cheap": round(cheap * cheap_flops / 1e9 / peak, 4),
                "fraction_of_peak_full": round(full * full_flops / 1e9 / peak, 4),
                "cpu": hardware.cpu_name(),
            }
        )
    )


if __name__ == "__main__":
    app.run(main)
