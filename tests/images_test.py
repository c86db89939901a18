"""Why an image file is unreadable, decided by content, in one sentence."""

import struct

import numpy as np
import pytest
import tensorflow as tf

from vse_tf import images as images_lib
from vse_tf import io_utils


def _pixels() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, [16, 24, 3]).astype(np.uint8)


def _bmp(width: int = 2, height: int = 2) -> bytes:
    """A 24-bit BMP written by hand: 14-byte file header, 40-byte info header."""
    row = bytes(3 * width) + bytes((4 - 3 * width % 4) % 4)
    pixels = row * height
    size = 54 + len(pixels)
    header = b"BM" + struct.pack("<IHHI", size, 0, 0, 54)
    info = struct.pack(
        "<IiiHHIIiiII", 40, width, height, 1, 24, 0, len(pixels), 0, 0, 0, 0
    )
    return header + info + pixels


@pytest.fixture(scope="module")
def encoded() -> dict[str, bytes]:
    pixels = _pixels()
    return {
        "JPEG": tf.io.encode_jpeg(pixels).numpy(),
        "PNG": tf.io.encode_png(pixels).numpy(),
        # The smallest GIF: 1x1, global palette of 2, one image, trailer 0x3B.
        "GIF": bytes.fromhex(
            "47494638396101000100800000000000ffffff21f90401000000002c00000000"
            "010001000002024401003b"
        ),
        "BMP": _bmp(),
    }


@pytest.mark.parametrize("kind", images_lib.KINDS)
def test_whole_images_of_each_kind_pass(encoded, kind):
    assert images_lib.sniff_kind(encoded[kind]) == kind
    assert images_lib.content_problem(encoded[kind]) is None
    assert images_lib.decode_problem(encoded[kind]) is None


def test_empty_and_other_formats_are_named():
    assert images_lib.content_problem(b"") == "empty (0 bytes)"
    assert images_lib.content_problem(b"%PDF-1.7\n...") == (
        "not a JPEG, PNG, GIF or BMP image (it starts with bytes 25 50 44 46)"
    )


@pytest.mark.parametrize(
    "kind, expected",
    [
        ("JPEG", "no JPEG end-of-image marker"),
        ("PNG", "no PNG IEND chunk"),
        ("GIF", "no GIF trailer"),
    ],
)
def test_a_file_cut_short_says_at_which_byte(encoded, kind, expected):
    cut = encoded[kind][: len(encoded[kind]) - 12]
    assert images_lib.content_problem(cut) == (
        f"truncated at byte {len(cut)} ({expected})"
    )


def test_a_bmp_shorter_than_its_header_says_is_truncated(encoded):
    bmp = encoded["BMP"]
    assert images_lib.content_problem(bmp[:60]) == (
        f"truncated at byte 60 of {len(bmp)}"
    )


def test_jpeg_data_that_does_not_decode(encoded):
    # Whole by its markers (starts with SOI, ends with EOI), garbage between.
    jpeg = encoded["JPEG"]
    broken = jpeg[:2] + b"\xff\x53" + bytes(200) + jpeg[-2:]
    assert images_lib.content_problem(broken) is None
    problem = images_lib.decode_problem(broken)
    assert problem.startswith("a JPEG whose data does not decode (")
    assert "function_node" not in problem and "[Op:" not in problem


def test_unreadable_reason_of_files(tmp_path, encoded, monkeypatch):
    named_txt = tmp_path / "photo.txt"  # a real JPEG: decided by content
    named_txt.write_bytes(encoded["JPEG"])
    assert images_lib.unreadable_reason(str(named_txt)) is None
    assert images_lib.unreadable_reason(str(tmp_path / "no.jpg")) == "no such file"
    assert images_lib.unreadable_reason(str(tmp_path)) == "a folder, not an image file"

    def denied(path):
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(io_utils, "read_bytes", denied)  # root reads every file
    assert images_lib.unreadable_reason(str(named_txt)) == (
        "permission denied: the file cannot be read"
    )


def test_read_checked_returns_the_bytes_of_a_whole_image(tmp_path, encoded):
    path = tmp_path / "a.png"
    path.write_bytes(encoded["PNG"])
    assert images_lib.read_checked(str(path)) == (encoded["PNG"], None)
    path.write_bytes(encoded["PNG"][:40])
    data, problem = images_lib.read_checked(str(path))
    assert data is None and problem == "truncated at byte 40 (no PNG IEND chunk)"
