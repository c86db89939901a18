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


def _gif(width: int, height: int) -> bytes:
    """A GIF header written by hand: signature, then the logical screen size."""
    return b"GIF89a" + struct.pack("<HH", width, height) + b"\x00\x00\x00" + b";"


def test_image_shape_from_the_header(encoded):
    # The _pixels() image is 16 high and 24 wide, in every format.
    for kind in ("JPEG", "PNG"):
        assert images_lib.image_shape(encoded[kind]) == (16, 24), kind
    assert images_lib.image_shape(_bmp(width=5, height=3)) == (3, 5)
    assert images_lib.image_shape(_gif(640, 480)) == (480, 640)
    # A top-down BMP states a negative height.
    top_down = bytearray(_bmp(width=5, height=3))
    top_down[22:26] = struct.pack("<i", -3)
    assert images_lib.image_shape(bytes(top_down)) == (3, 5)


def test_image_shape_of_a_progressive_jpeg_after_other_segments():
    pixels = np.zeros([7, 9, 3], np.uint8)
    jpeg = tf.io.encode_jpeg(pixels, progressive=True, xmp_metadata="x" * 300).numpy()
    assert jpeg[2:4] != b"\xff\xc2"  # segments come before the frame header
    assert images_lib.image_shape(jpeg) == (7, 9)


def test_image_shape_is_none_where_the_header_says_nothing():
    assert images_lib.image_shape(b"") is None
    assert images_lib.image_shape(b"hello") is None
    assert images_lib.image_shape(b"\x89PNG\r\n\x1a\n\x00\x00") is None
    assert images_lib.image_shape(b"\xff\xd8\xff\xe0\x00") is None
    assert images_lib.image_shape(b"\xff\xd8\xff\xda\x00\x08") is None
