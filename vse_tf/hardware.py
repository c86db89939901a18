"""What this machine computes natively, to choose precisions by hardware.

bfloat16 pays only where the hardware computes it: on a CPU with
``avx512_bf16`` or ``amx_bf16`` VGG16 runs about twice as fast in bf16,
while on an AVX2-only CPU bf16 VGG16 is no faster and bf16 LSTM matmuls were
28% slower than float32. ``"auto"`` settings are resolved here, once per
process, and the choice is logged.
"""

from __future__ import annotations

import functools
import logging
import os
import platform

import tensorflow as tf

_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
AUTO = "auto"


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_name() -> str:
    """The CPU's model name as ``lscpu`` shows it (``/proc/cpuinfo``), e.g. AMD EPYC."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@functools.cache
def native_bfloat16() -> bool:
    """True where bf16 matmuls are native: a GPU/TPU, or a CPU with bf16 flags.

    ``VSE_TF_NATIVE_BF16=0|1`` overrides the detection.
    """
    forced = os.environ.get("VSE_TF_NATIVE_BF16")
    if forced in ("0", "1"):
        native, why = forced == "1", "VSE_TF_NATIVE_BF16"
    elif tf.config.list_physical_devices("GPU") or tf.config.list_physical_devices(
        "TPU"
    ):
        native, why = True, "an accelerator is present"
    else:
        found = sorted(_cpu_flags() & set(_BF16_CPU_FLAGS))
        native = bool(found)
        why = (
            f"CPU flags {', '.join(found)}"
            if found
            else "the CPU has neither avx512_bf16 nor amx_bf16"
        )
    logging.info("bfloat16 is %s here (%s)", "native" if native else "emulated", why)
    return native


def extract_dtype(value: str) -> str:
    """``auto`` -> ``mixed_bfloat16`` where bf16 is native, else ``float32``."""
    if value != AUTO:
        return value
    return "mixed_bfloat16" if native_bfloat16() else "float32"


def compute_dtype(value: str) -> str:
    """``auto`` -> ``bfloat16`` where bf16 is native, else ``float32``.

    For the training matmuls of the text LSTM and of the fine-tuned CNN
    layers (``text_compute_dtype``, ``trunk_compute_dtype``).
    """
    if value != AUTO:
        return value
    return "bfloat16" if native_bfloat16() else "float32"
