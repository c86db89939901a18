"""Tests of the bf16-by-hardware choice."""

from __future__ import annotations

import pytest

from vse_tf import hardware


@pytest.fixture(autouse=True)
def _fresh_detection():
    hardware.native_bfloat16.cache_clear()
    yield
    hardware.native_bfloat16.cache_clear()


@pytest.mark.parametrize(
    "forced,extract,text",
    [("1", "mixed_bfloat16", "bfloat16"), ("0", "float32", "float32")],
)
def test_auto_follows_the_hardware(monkeypatch, forced, extract, text):
    monkeypatch.setenv("VSE_TF_NATIVE_BF16", forced)
    assert hardware.extract_dtype("auto") == extract
    assert hardware.compute_dtype("auto") == text


def test_explicit_values_are_kept(monkeypatch):
    monkeypatch.setenv("VSE_TF_NATIVE_BF16", "0")
    assert hardware.extract_dtype("mixed_bfloat16") == "mixed_bfloat16"
    assert hardware.compute_dtype("bfloat16") == "bfloat16"
    assert hardware.compute_dtype("float32") == "float32"


@pytest.mark.parametrize(
    "flags,native",
    [
        ("fpu avx2 fma avx512f", False),  # AVX2/AVX-512 without bf16
        ("fpu avx2 avx512f avx512_bf16", True),
        ("fpu avx2 amx_bf16 amx_tile", True),
    ],
)
def test_cpu_flags_decide_without_an_accelerator(monkeypatch, flags, native):
    monkeypatch.delenv("VSE_TF_NATIVE_BF16", raising=False)
    monkeypatch.setattr(hardware, "_cpu_flags", lambda: set(flags.split()))
    monkeypatch.setattr(hardware.tf.config, "list_physical_devices", lambda kind: [])
    assert hardware.native_bfloat16() is native


def test_an_accelerator_counts_as_native(monkeypatch):
    monkeypatch.delenv("VSE_TF_NATIVE_BF16", raising=False)
    monkeypatch.setattr(hardware, "_cpu_flags", lambda: set())
    monkeypatch.setattr(
        hardware.tf.config,
        "list_physical_devices",
        lambda kind: ["/gpu:0"] if kind == "GPU" else [],
    )
    assert hardware.native_bfloat16()


def test_reads_proc_cpuinfo_flags_line(tmp_path, monkeypatch):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse avx512_bf16\n")
    real_open = open
    monkeypatch.setattr(
        "builtins.open",
        lambda path, *a, **k: real_open(
            cpuinfo if path == "/proc/cpuinfo" else path, *a, **k
        ),
    )
    assert hardware._cpu_flags() == {"fpu", "sse", "avx512_bf16"}
