"""Every SavedModel signature answers bad requests with an error, never a crash.

A tiny model is trained, exported and loaded in-process. Each signature gets
malformed inputs; each must raise ``InvalidArgumentError`` with a message
naming the problem, or return the documented finite unit-norm embedding.
"""

from __future__ import annotations

import json
import os
import struct
import sys

import numpy as np
import pytest
import tensorflow as tf

from tests import testing_utils
from vse_tf import images as images_lib
from vse_tf.serving import image_decode, loader

InvalidArgument = tf.errors.InvalidArgumentError


# --- Hand-made images (TensorFlow encodes only JPEG and PNG). ---------------


def make_bmp(pixels: np.ndarray) -> bytes:
    """``uint8 [H, W, 3]`` RGB -> an uncompressed 24-bit bottom-up BMP."""
    height, width, _ = pixels.shape
    row = (3 * width + 3) // 4 * 4
    body = b"".join(
        pixels[y, :, ::-1].astype(np.uint8).tobytes().ljust(row, b"\0")
        for y in range(height - 1, -1, -1)
    )
    header = b"BM" + struct.pack("<IHHI", 54 + len(body), 0, 0, 54)
    info = struct.pack(
        "<IiiHHIIiiII", 40, width, height, 1, 24, 0, len(body), 2835, 2835, 0, 0
    )
    return header + info + body


def _lzw_literal_codes(indices: np.ndarray) -> bytes:
    """GIF LZW data that only uses literal 9-bit codes (clear every 250)."""
    codes = [256]
    for i, value in enumerate(indices.reshape(-1)):
        if i and i % 250 == 0:
            codes.append(256)
        codes.append(int(value))
    codes.append(257)
    out, bits, count = bytearray(), 0, 0
    for code in codes:
        bits |= code << count
        count += 9
        while count >= 8:
            out.append(bits & 0xFF)
            bits >>= 8
            count -= 8
    if count:
        out.append(bits & 0xFF)
    return bytes(out)


def _sub_blocks(data: bytes) -> bytes:
    chunks = [data[i : i + 255] for i in range(0, len(data), 255)]
    return b"".join(bytes([len(c)]) + c for c in chunks) + b"\0"


def make_gif(frames, palette, declared_sizes=None) -> bytes:
    """A GIF89a of ``uint8 [H, W]`` palette-index frames, 256-colour palette.

    ``declared_sizes`` overrides the (width, height) written in each image
    descriptor, to make headers that lie about the size.
    """
    height, width = frames[0].shape
    out = b"GIF89a" + struct.pack("<HHBBB", width, height, 0xF7, 0, 0)
    out += np.asarray(palette, np.uint8).tobytes()
    for k, frame in enumerate(frames):
        w, h = declared_sizes[k] if declared_sizes else frame.shape[::-1]
        out += b"\x2c" + struct.pack("<HHHHB", 0, 0, w, h, 0)
        out += b"\x08" + _sub_blocks(_lzw_literal_codes(frame))
    return out + b"\x3b"


def set_jpeg_size(jpeg: bytes, height: int, width: int) -> bytes:
    """The JPEG with the size in its start-of-frame header replaced."""
    pos = 2
    while jpeg[pos + 1] not in (0xC0, 0xC1, 0xC2):
        pos += 2 + struct.unpack(">H", jpeg[pos + 2 : pos + 4])[0]
    return jpeg[: pos + 5] + struct.pack(">HH", height, width) + jpeg[pos + 9 :]


RNG = np.random.default_rng(0)
PIXELS = RNG.integers(0, 256, [37, 45, 3]).astype(np.uint8)
PALETTE = RNG.integers(0, 256, [256, 3]).astype(np.uint8)
INDICES = RNG.integers(0, 256, [37, 45]).astype(np.uint8)
PNG = tf.io.encode_png(PIXELS).numpy()
JPEG = tf.io.encode_jpeg(PIXELS).numpy()
PROGRESSIVE_JPEG = tf.io.encode_jpeg(PIXELS, progressive=True).numpy()
BMP = make_bmp(PIXELS)
GIF = make_gif([INDICES, INDICES[::-1]], PALETTE)
VALID_IMAGES = {
    "png": PNG,
    "jpeg": JPEG,
    "progressive_jpeg": PROGRESSIVE_JPEG,
    "bmp": BMP,
    "gif": GIF,
    "gif_without_trailer": GIF[:-1],  # tf.io.decode_image accepts it too
}
LIMIT = image_decode.MAX_IMAGE_PIXELS

# (name, bytes, pattern the InvalidArgumentError message must contain).
BAD_IMAGES = [
    ("empty", b"", r"image 1: empty \(0 bytes\)"),
    ("text", b"a red square", r"image 1: not a JPEG, PNG, GIF or BMP image"),
    ("webp", b"RIFF\x10\0\0\0WEBPVP8 \0\0", r"image 1: not a JPEG, PNG, GIF or BMP"),
    ("jpeg_header_only", JPEG[:20], r"image 1: truncated or corrupt JPEG"),
    ("jpeg_truncated", JPEG[: len(JPEG) // 2], r"Invalid JPEG data"),
    ("jpeg_garbage_body", JPEG[:-200] + b"\x00" * 150, r"Invalid JPEG data"),
    (
        "jpeg_60000px_baseline",
        set_jpeg_size(JPEG, 60000, 60000),
        r"image 1: JPEG of 60000x60000 pixels is over the serving limit .* 1/8",
    ),
    (
        "jpeg_10000px_progressive",
        set_jpeg_size(PROGRESSIVE_JPEG, 10000, 10000),
        r"image 1: JPEG of 10000x10000 pixels is over the serving limit",
    ),
    ("png_signature_only", PNG[:8], r"image 1: truncated or corrupt PNG"),
    ("png_truncated", PNG[: len(PNG) // 2], r"Invalid PNG data"),
    ("png_header_then_garbage", PNG[:33] + b"x" * 200, r"PNG"),
    (
        "png_100000px_header",
        PNG[:16] + struct.pack(">II", 100000, 100000) + PNG[24:],
        r"image 1: PNG of 100000x100000 pixels is over the serving limit",
    ),
    (
        "bmp_20000px_header",
        BMP[:18] + struct.pack("<ii", 20000, -20000) + BMP[26:],
        r"image 1: BMP of 20000x20000 pixels is over the serving limit",
    ),
    ("bmp_header_truncated", BMP[:30], r"image 1: truncated or corrupt BMP"),
    ("bmp_pixels_truncated", BMP[:200], r"image 1: truncated BMP: pixel data missing"),
    ("gif_truncated", GIF[: len(GIF) // 2], r"image 1: truncated or corrupt GIF"),
    (
        "gif_60000px_frame",
        make_gif([INDICES], PALETTE, declared_sizes=[(60000, 60000)]),
        r"image 1: GIF of 60000x60000 pixels is over the serving limit",
    ),
    (
        "gif_frames_over_limit",
        make_gif([INDICES] * 3, PALETTE, declared_sizes=[(4000, 4000)] * 3),
        r"image 1: GIF .* \(all frames together\)",
    ),
]

SENTENCES = {
    "empty": "",
    "words": "a red square on black",
    "10000_tokens": " ".join(["red square"] * 5000),
    "one_5000_char_word": "r" * 5000,
    "punctuation_only": "?!.,;:'\"()[]{}—–-…«»",
    "emoji": "🐶🐶 a 😀 red 🎉 square",
    "mixed_scripts": "a red Квадрат 日本 مربع κόκκινο שלום",
    "control_and_nul": "red\x00square\x07\x1b",
    "zero_width": "re\u200bd squ\u00adare",
}
INVALID_UTF8 = {
    "lone_continuation": b"\x80 red",
    "truncated_multibyte": b"red \xc3",
    "overlong_slash": b"\xc0\xaf red",
    "encoded_surrogate": b"\xed\xa0\x80 red",
    "byte_ff": b"\xff\xfe red",
}


@pytest.fixture(scope="module")
def served(tiny_export):
    _, export_dir, _, model = tiny_export
    loaded = loader.load_saved_model(export_dir)
    # The loaded object owns the variables: keep it alive with its signatures.
    return loaded.signatures, model, export_dir, loaded


def _embedding(signatures, name, **inputs) -> np.ndarray:
    return signatures[name](**inputs)["embedding"].numpy()


def _assert_unit(embedding: np.ndarray) -> None:
    assert np.isfinite(embedding).all()
    np.testing.assert_allclose(np.linalg.norm(embedding, axis=1), 1.0, atol=1e-5)


# --- encode_image ----------------------------------------------------------


@pytest.mark.parametrize("name", sorted(VALID_IMAGES))
def test_every_format_matches_the_training_decoder(served, name):
    signatures, model, _, _ = served
    data = VALID_IMAGES[name]
    got = _embedding(signatures, "encode_image", image_bytes=tf.constant([data]))
    pixels = images_lib.decode_image(tf.constant(data), model.image_tower.image_size)
    want = model.image_tower(pixels[None]).numpy()
    assert np.abs(got - want).max() <= 1e-5
    _assert_unit(got)


@pytest.mark.parametrize(
    "data, pattern", [c[1:] for c in BAD_IMAGES], ids=[c[0] for c in BAD_IMAGES]
)
def test_bad_image_bytes_raise_invalid_argument(served, data, pattern):
    signatures, _, _, _ = served
    batch = tf.constant([PNG, data, JPEG])  # the bad image is image 1
    with pytest.raises(InvalidArgument, match=pattern):
        signatures["encode_image"](image_bytes=batch)


def test_random_bytes_behind_image_signatures_never_crash(served):
    """Valid magic bytes + random data, and valid images with bytes flipped.

    Each must raise InvalidArgumentError or give a finite unit embedding
    (libjpeg decodes some damaged JPEGs, with visible artefacts).
    """
    signatures, _, _, _ = served
    rng = np.random.default_rng(1)
    for magic in (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF89a", b"BM"):
        for _ in range(12):
            data = magic + rng.bytes(int(rng.integers(0, 300)))
            with pytest.raises(InvalidArgument):
                signatures["encode_image"](image_bytes=tf.constant([data]))
    outcomes = {"error": 0, "embedding": 0}
    for data in VALID_IMAGES.values():
        for _ in range(12):
            damaged = bytearray(data)
            for position in rng.integers(0, len(data), 4):
                damaged[position] = int(rng.integers(0, 256))
            try:
                embedding = _embedding(
                    signatures,
                    "encode_image",
                    image_bytes=tf.constant([bytes(damaged)]),
                )
            except InvalidArgument:
                outcomes["error"] += 1
                continue
            _assert_unit(embedding)
            outcomes["embedding"] += 1
    print(f"{12 * len(VALID_IMAGES)} damaged images: {outcomes}")


def test_image_shape_and_dtype_errors(served):
    signatures, _, _, _ = served
    encode = signatures["encode_image"]
    with pytest.raises(InvalidArgument, match="Shape of tensor image_bytes"):
        encode(image_bytes=tf.constant(PNG))  # scalar, not [N]
    with pytest.raises(InvalidArgument, match="Shape of tensor image_bytes"):
        encode(image_bytes=tf.constant([[PNG]]))
    with pytest.raises(InvalidArgument, match="string"):
        encode(image_bytes=tf.constant([1.0]))


def test_empty_batches_give_empty_embeddings(served):
    signatures, model, _, _ = served
    dim = model.text_tower.embed_dim
    size = model.image_tower.image_size
    L = model.text_tower.max_length
    inputs = {
        "encode_text": {"text": tf.constant([], tf.string)},
        "serving_default": {"text": tf.constant([], tf.string)},
        "encode_tokens": {"token_ids": tf.zeros([0, L], tf.int32)},
        "encode_image": {"image_bytes": tf.constant([], tf.string)},
        "encode_image_pixels": {"pixels": tf.zeros([0, size, size, 3])},
        "encode_image_features": {
            "features": tf.zeros([0, model.image_tower.feature_dim])
        },
    }
    assert set(inputs) == set(signatures.keys())
    for name, kwargs in inputs.items():
        assert _embedding(signatures, name, **kwargs).shape == (0, dim), name


def test_large_jpeg_is_decoded_at_reduced_scale():
    """Baseline JPEGs over the limit go through libjpeg's 1/2..1/8 scaling."""
    y, x = np.mgrid[0:480, 0:640]
    smooth = np.stack([x * 255 // 640, y * 255 // 480, (x + y) % 256], -1)
    data = tf.constant(tf.io.encode_jpeg(smooth.astype(np.uint8)).numpy())
    limit = 200 * 200  # 640x480 needs 1/4 scale: 160x120
    kind, height, width, ratio, problem = image_decode.read_header(data, limit)
    assert [int(v) for v in (kind, height, width, ratio, problem)] == [
        image_decode.JPEG, 480, 640, 4, 0,
    ]  # fmt: skip
    reduced = image_decode.decode_image(data, 32, max_pixels=limit).numpy()
    full = images_lib.decode_image(data, 32).numpy()
    assert np.abs(reduced - full).mean() < 2.0  # of 255
    progressive = tf.io.encode_jpeg(smooth.astype(np.uint8), progressive=True)
    with pytest.raises(InvalidArgument, match="progressive"):
        image_decode.decode_image(progressive, 32, max_pixels=limit)


_RSS_CHILD = r"""
import json, re, sys
import numpy as np
import tensorflow as tf
from vse_tf import images as images_lib
from vse_tf.serving import loader

def peak_mb():
    status = open("/proc/self/status").read()
    return int(re.search(r"VmHWM:\s+(\d+)", status).group(1)) / 1024

mode, model_dir, path = sys.argv[1:4]
if mode == "make":
    x = tf.cast(tf.range(10000) % 256, tf.uint8)
    image = tf.broadcast_to(x[None, :, None], [10000, 10000, 3])
    tf.io.write_file(path, tf.io.encode_jpeg(image))
    sys.exit(0)
data = tf.constant(open(path, "rb").read())
small = tf.io.encode_jpeg(tf.zeros([40, 40, 3], tf.uint8))
if mode == "signature":
    fn = loader.load_saved_model(model_dir).signatures["encode_image"]
    run = lambda d: fn(image_bytes=tf.reshape(d, [1]))["embedding"]
else:  # what encode_image did before: the training decoder
    run = lambda d: images_lib.decode_image(d, 32)
run(small)  # trace and allocate once
open("/proc/self/clear_refs", "w").write("5")  # reset the peak
before = peak_mb()
out = run(data).numpy()
growth = peak_mb() - before
norm = float(np.linalg.norm(out)) if mode == "signature" else 1.0
finite = bool(np.isfinite(out).all())
print(json.dumps({"growth_mb": growth, "finite": finite, "norm": norm}))
"""


@pytest.mark.slow(reason="subprocesses measure peak RSS on a 10000px image")
@pytest.mark.skipif(
    not sys.platform.startswith("linux"),
    reason=testing_utils.NOT_HERE + " peak RSS is read from /proc (Linux)",
)
def test_10000px_jpeg_peak_memory_is_bounded(served, tmp_path):
    _, _, export_dir, _ = served
    path = str(tmp_path / "big.jpg")
    made = testing_utils.run_python("-c", _RSS_CHILD, "make", export_dir, path)
    assert made.returncode == 0, made.stderr[-2000:]
    growth = {}
    for mode in ("signature", "plain"):
        result = testing_utils.run_python("-c", _RSS_CHILD, mode, export_dir, path)
        assert result.returncode == 0, result.stderr[-2000:]
        report = json.loads(result.stdout.strip().splitlines()[-1])
        assert report["finite"], mode
        assert abs(report["norm"] - 1.0) < 1e-5, mode
        growth[mode] = report["growth_mb"]
    size_mb = os.path.getsize(path) / 2**20
    print(
        f"10000x10000 JPEG ({size_mb:.1f} MB): peak RSS growth "
        f"encode_image {growth['signature']:.0f} MB, "
        f"plain decode_image {growth['plain']:.0f} MB"
    )
    # One raster of at most MAX_IMAGE_PIXELS RGB bytes, plus slack.
    assert growth["signature"] < 3 * LIMIT / 2**20 + 64
    assert growth["plain"] > growth["signature"]


# --- encode_text / serving_default ------------------------------------------


@pytest.mark.parametrize("signature", ["encode_text", "serving_default"])
def test_odd_sentences_give_unit_embeddings(served, signature):
    signatures, model, _, _ = served
    sentences = list(SENTENCES.values())
    got = _embedding(signatures, signature, text=tf.constant(sentences))
    want = model.text_tower(tf.constant(sentences)).numpy()
    assert np.abs(got - want).max() <= 1e-5
    _assert_unit(got)
    # 10,000 tokens: only the first max_length words count.
    words = SENTENCES["10000_tokens"].split()[: model.text_tower.max_length]
    head = _embedding(signatures, signature, text=tf.constant([" ".join(words)]))
    row = list(SENTENCES).index("10000_tokens")
    np.testing.assert_allclose(got[row], head[0], atol=1e-6)


@pytest.mark.parametrize("name", sorted(INVALID_UTF8))
@pytest.mark.parametrize("signature", ["encode_text", "serving_default"])
def test_invalid_utf8_raises(served, signature, name):
    signatures, _, _, _ = served
    text = tf.constant([b"a red square", INVALID_UTF8[name]])
    with pytest.raises(InvalidArgument, match=r"text 1: not valid UTF-8"):
        signatures[signature](text=text)


@pytest.mark.parametrize("signature", ["encode_text", "serving_default"])
def test_text_shape_and_dtype_errors(served, signature):
    """A scalar used to crash the process in the tokenizer op (SIGSEGV)."""
    encode = served[0][signature]
    with pytest.raises(InvalidArgument, match=r"Shape of tensor text \[\]"):
        encode(text=tf.constant("a red square"))
    with pytest.raises(InvalidArgument, match=r"Shape of tensor text \[2,1\]"):
        encode(text=tf.constant([["a"], ["b"]]))
    with pytest.raises(InvalidArgument, match="string"):
        encode(text=tf.constant([1, 2]))


# --- encode_tokens ----------------------------------------------------------


def test_token_ids_out_of_range_or_all_padding_raise(served):
    signatures, model, _, _ = served
    length = model.text_tower.max_length
    vocab = len(model.text_tower.vocabulary)
    good = [2] + [0] * (length - 1)
    for bad_id in (vocab, 100000, -1, -(2**31)):
        ids = tf.constant([good, [bad_id] + [0] * (length - 1)], tf.int32)
        with pytest.raises(
            InvalidArgument, match=rf"token_ids row 1: ids must be in \[0, {vocab}\)"
        ):
            signatures["encode_tokens"](token_ids=ids)
    with pytest.raises(InvalidArgument, match="token_ids row 1: no token"):
        signatures["encode_tokens"](token_ids=tf.constant([good, [0] * length]))


def test_token_ids_valid_and_inner_padding(served):
    signatures, model, _, _ = served
    length = model.text_tower.max_length
    tokens = model.text_tower.tokenizer(tf.constant(list(SENTENCES.values())))
    got = _embedding(signatures, "encode_tokens", token_ids=tokens)
    assert np.abs(got - model.text_tower.encode_tokens(tokens).numpy()).max() <= 1e-5
    _assert_unit(got)
    # Documented: a 0 between ids is padding and is skipped.
    inner = [3, 0, 4] + [0] * (length - 3)
    packed = [3, 4] + [0] * (length - 2)
    out = _embedding(
        signatures, "encode_tokens", token_ids=tf.constant([inner, packed])
    )
    np.testing.assert_allclose(out[0], out[1], atol=1e-6)


def test_token_shape_and_dtype_errors(served):
    signatures, model, _, _ = served
    length = model.text_tower.max_length
    encode = signatures["encode_tokens"]
    for shape in ([length], [1, length - 1], [1, length + 5], [1, 1, length]):
        with pytest.raises(InvalidArgument, match="Shape of tensor token_ids"):
            encode(token_ids=tf.ones(shape, tf.int32))
    with pytest.raises(InvalidArgument, match="int32"):
        encode(token_ids=tf.ones([1, length], tf.int64))


# --- encode_image_pixels ----------------------------------------------------


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_pixels_raise(served, value):
    signatures, _, _, _ = served
    pixels = np.full([2, 20, 30, 3], 100.0, np.float32)
    pixels[1, 5, 7, 2] = value
    with pytest.raises(InvalidArgument, match="pixels: NaN or infinite"):
        signatures["encode_image_pixels"](pixels=tf.constant(pixels))


def test_pixel_shapes(served):
    signatures, model, _, _ = served
    encode = signatures["encode_image_pixels"]
    for shape in ([32, 32, 3], [1, 32, 32, 4], [1, 32, 32, 1], [1, 1, 32, 32, 3]):
        with pytest.raises(InvalidArgument, match="Shape of tensor pixels"):
            encode(pixels=tf.zeros(shape))
    for shape in ([1, 0, 0, 3], [1, 0, 5, 3], [1, 5, 0, 3]):
        with pytest.raises(InvalidArgument, match="at least 1"):
            encode(pixels=tf.zeros(shape))
    with pytest.raises(InvalidArgument, match="float"):
        encode(pixels=tf.zeros([1, 32, 32, 3], tf.uint8))
    # Documented: any H, W >= 1; values outside 0..255 are clipped.
    tiny = _embedding(signatures, "encode_image_pixels", pixels=tf.ones([1, 1, 1, 3]))
    _assert_unit(tiny)
    wild = np.random.default_rng(2).uniform(-500, 800, [2, 16, 24, 3])
    got = _embedding(
        signatures, "encode_image_pixels", pixels=tf.constant(wild, tf.float32)
    )
    resized = images_lib.resize_pixels(wild.astype(np.float32), 32)
    assert float(tf.reduce_min(resized)) >= 0.0
    assert np.abs(got - model.image_tower(resized).numpy()).max() <= 1e-5
    _assert_unit(got)


# --- encode_image_features --------------------------------------------------


def test_features(served):
    signatures, model, _, _ = served
    encode = signatures["encode_image_features"]
    dim = model.image_tower.feature_dim
    bad = np.zeros([2, dim], np.float32)
    bad[1, 3] = np.nan
    with pytest.raises(InvalidArgument, match="features: NaN or infinite"):
        encode(features=tf.constant(bad))
    bad[1, 3] = np.inf
    with pytest.raises(InvalidArgument, match="features: NaN or infinite"):
        encode(features=tf.constant(bad))
    for shape in ([dim], [1, dim - 1], [1, dim, 1]):
        with pytest.raises(InvalidArgument, match="Shape of tensor features"):
            encode(features=tf.zeros(shape))
    # Documented: all-zero features still give a unit embedding (W_emb's bias).
    _assert_unit(_embedding(signatures, "encode_image_features", features=bad[:1]))
