"""Bounded-memory image decoding for the serving signatures.

`vse_tf.images.decode_image` (training, evaluation) decodes whatever it is
given at full resolution and casts it to float32: a 10000x10000 JPEG costs
about 1.5 GB before it is resized to the model's input. A model server must
not let one request do that, so the ``encode_image`` signature decodes with
`decode_images` instead:

1. The format is read from the first bytes: JPEG, PNG, GIF or BMP. Anything
   else (empty, text, WebP, JPEG XL...) is refused.
2. The size is read from the header, before anything is decoded: JPEG
   frame and scan headers, PNG ``IHDR``, every GIF image descriptor, the BMP
   info header.
3. An image whose decoded raster fits in ``max_pixels`` (default
   `MAX_IMAGE_PIXELS`, 4096 x 4096) is decoded exactly as in training,
   with ``tf.io.decode_image``, so its embedding is the offline one.
4. A larger single-scan (baseline) JPEG is decoded by libjpeg at 1/2, 1/4 or
   1/8 scale (``tf.io.decode_jpeg(ratio=...)``), the smallest reduction that
   fits; libjpeg then never holds the full-size image.
5. Everything else over the limit is refused with ``InvalidArgumentError``:
   PNG, BMP, progressive or multi-scan JPEG (libjpeg buffers every DCT
   coefficient of those at full size, whatever the scale), JPEGs too large
   even at 1/8 scale, and GIFs whose frames (libgif keeps all of them)
   need more than ``3 * max_pixels`` bytes.

The decoded image is resized straight from uint8 (no full-size float32
copy); an image decoded at full size gives pixels bit-identical to
`vse_tf.images.decode_image`. At most `DECODE_PARALLELISM` images of a
request are decoded at the same time.
Every refusal is an ``InvalidArgumentError`` naming the image and the
problem, e.g. ``image 2: not a JPEG, PNG, GIF or BMP image (11 bytes)``.
Bytes that pass the header checks but are corrupt further on fail in the
decoder itself (e.g. ``Invalid PNG data``), also as ``InvalidArgumentError``.
"""

from __future__ import annotations

import tensorflow as tf

MAX_IMAGE_PIXELS = 4096 * 4096
# Images decoded at once within one request (map_fn parallel iterations):
# a request holds at most this many rasters of at most max_pixels each.
DECODE_PARALLELISM = 2
JPEG_RATIOS = (1, 2, 4, 8)

UNKNOWN, JPEG, PNG, GIF, BMP = range(5)
KIND_NAMES = ("unknown", "JPEG", "PNG", "GIF", "BMP")

# Problems an image can have before decoding (see _problem_message).
_OK, _NOT_AN_IMAGE, _EMPTY, _BAD_HEADER, _TOO_LARGE, _TRUNCATED_DATA = range(6)

# JPEG start-of-frame markers (C4 DHT, C8 JPG and CC DAC are not frames);
# libjpeg streams (no whole-image buffer) only single-scan sequential ones.
_SOF_MARKERS = (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7)
_SOF_MARKERS += (0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF)
_SEQUENTIAL_SOF = (0xC0, 0xC1, 0xC9)
# How the JPEG marker walk and the GIF block walk ended.
_RUNNING, _FOUND_SCAN, _UNPARSED, _TRUNCATED = range(4)
_GIF_OK, _GIF_BAD = 1, 2
# Markers without a length field: TEM and RST0..7.
_STANDALONE = (0x01,) + tuple(range(0xD0, 0xD8))


def _bytes_at(data: tf.Tensor, pos: tf.Tensor, count: int) -> tf.Tensor:
    """``int64 [count]``: ``data[pos:pos + count]``, zero past the end.

    Args:
        data: ``tf.string`` scalar.
        pos: int64 scalar offset, clamped to the length of ``data``.
        count: Number of bytes.
    """
    pos = tf.minimum(tf.cast(pos, tf.int64), tf.cast(tf.strings.length(data), tf.int64))
    chunk = tf.strings.join([tf.strings.substr(data, pos, count), b"\0" * count])
    raw = tf.io.decode_raw(tf.strings.substr(chunk, 0, count), tf.uint8)
    return tf.cast(tf.reshape(raw, [count]), tf.int64)


def _le16(b, i):
    return b[i] + 256 * b[i + 1]


def _be16(b, i):
    return 256 * b[i] + b[i + 1]


def _int32(b, i, big_endian):
    order = (i, i + 1, i + 2, i + 3) if big_endian else (i + 3, i + 2, i + 1, i)
    value = b[order[0]] * (1 << 24) + b[order[1]] * (1 << 16)
    return value + b[order[2]] * 256 + b[order[3]]


def image_kind(data: tf.Tensor) -> tf.Tensor:
    """``int32`` scalar: `JPEG`, `PNG`, `GIF`, `BMP` or `UNKNOWN`, from magic bytes.

    The same signatures ``tf.io.decode_image`` dispatches on.
    """
    head = tf.strings.substr(data, 0, 8)
    kind = tf.constant(UNKNOWN, tf.int32)
    for magic, value in (
        (b"BM", BMP),
        (b"GIF87a", GIF),
        (b"GIF89a", GIF),
        (b"\x89PNG\r\n\x1a\n", PNG),
        (b"\xff\xd8\xff", JPEG),
    ):
        match = tf.equal(tf.strings.substr(head, 0, len(magic)), magic)
        kind = tf.where(match, value, kind)
    return kind


def _palette_bytes(flags):
    """Size of a GIF colour table announced by a flags byte (0 if none)."""
    size = 3 * tf.bitwise.left_shift(tf.constant(2, tf.int64), flags % 8)
    return tf.where(flags >= 128, size, tf.zeros_like(size))


def _ceil_div(a, b):
    return (a + b - 1) // b


def _jpeg_marker_step(data, length, pos, sof, components, scans, outcome):
    """One step of the JPEG marker walk: reads the marker at ``pos``.

    Args:
        data: ``tf.string`` scalar.
        length: int64 scalar, its length.
        pos: int64 scalar, offset of the marker (``0xFF``, code).
        sof: The start-of-frame marker seen so far (0: none).
        components: Its component count.
        scans: The component count of the first scan (0: none yet).
        outcome: `_RUNNING` so far.

    Returns:
        ``(next_pos, sof, components, scans, outcome)``; ``outcome`` is
        `_FOUND_SCAN`, `_UNPARSED`, `_TRUNCATED` or still `_RUNNING`.
    """
    # (10 bytes at a time, not a copy of the data: the walk is short)
    b = _bytes_at(data, pos, 10)
    marker = b[1]
    is_fill = tf.logical_and(tf.equal(b[0], 0xFF), tf.equal(marker, 0xFF))
    standalone = tf.reduce_any(tf.equal(marker, _STANDALONE))
    is_sof = tf.logical_and(
        tf.reduce_any(tf.equal(marker, _SOF_MARKERS)), tf.equal(sof, 0)
    )
    is_sos = tf.equal(marker, 0xDA)
    broken = tf.logical_or(
        tf.not_equal(b[0], 0xFF), tf.reduce_any(tf.equal(marker, [0xD8, 0xD9]))
    )
    next_pos = tf.where(
        is_fill, pos + 1, tf.where(standalone, pos + 2, pos + 2 + _be16(b, 2))
    )
    sof = tf.where(is_sof, marker, sof)
    components = tf.where(is_sof, b[9], components)
    scans = tf.where(is_sos, b[4], scans)
    outcome = tf.where(
        is_sos,
        _FOUND_SCAN,
        tf.where(
            broken,
            _UNPARSED,
            tf.where(next_pos + 4 > length, _TRUNCATED, _RUNNING),
        ),
    )
    return next_pos, sof, components, scans, outcome


def _walk_jpeg_markers(data, length):
    """``(sof, components, scans, outcome)`` of the markers up to the first scan."""
    zero = tf.constant(0, tf.int64)
    state = (tf.constant(2, tf.int64), zero, zero, zero, _RUNNING)
    _, sof, components, scans, outcome = tf.while_loop(
        lambda *s: tf.equal(s[-1], _RUNNING),
        lambda *s: _jpeg_marker_step(data, length, *s),
        state,
        maximum_iterations=tf.strings.length(data),
    )
    return sof, components, scans, outcome


def _jpeg_ratio_index(height, width, streamed, max_pixels):
    """Index in `JPEG_RATIOS` of the smallest reduction whose raster fits.

    Reduced scales only for ``streamed`` JPEGs; ``len(JPEG_RATIOS)`` when
    nothing fits.
    """
    ratio_index = tf.constant(len(JPEG_RATIOS), tf.int32)
    for index in reversed(range(len(JPEG_RATIOS))):
        ratio = JPEG_RATIOS[index]
        fits = _ceil_div(height, ratio) * _ceil_div(width, ratio) <= max_pixels
        if index > 0:
            fits = tf.logical_and(fits, streamed)
        ratio_index = tf.where(fits, index, ratio_index)
    return ratio_index


def _jpeg_header(data, max_pixels):
    """Frame size, scan structure and scale of a JPEG (walks its markers)."""
    length = tf.cast(tf.strings.length(data), tf.int64)
    sof, components, scans, outcome = _walk_jpeg_markers(data, length)
    truncated = tf.logical_or(tf.equal(outcome, _TRUNCATED), length < 4)
    # libjpeg's own reading of the frame header (the size it allocates for;
    # it raises InvalidArgumentError on a header it cannot read). Markers
    # this walk could not follow (stray bytes, which libjpeg skips) only
    # cost the image its reduced-scale decoding.
    shape = tf.cond(
        truncated,
        lambda: tf.zeros([3], tf.int64),
        lambda: tf.cast(tf.image.extract_jpeg_shape(data), tf.int64),
    )
    height, width = shape[0], shape[1]
    streamed = tf.logical_and(
        tf.equal(outcome, _FOUND_SCAN) & tf.reduce_any(tf.equal(sof, _SEQUENTIAL_SOF)),
        tf.logical_and(tf.equal(scans, components), components > 0),
    )
    # Smallest ratio whose raster fits; streamed JPEGs only.
    ratio_index = _jpeg_ratio_index(height, width, streamed, max_pixels)
    too_large = ratio_index >= len(JPEG_RATIOS)
    problem = tf.where(truncated, _BAD_HEADER, tf.where(too_large, _TOO_LARGE, _OK))
    return height, width, tf.minimum(ratio_index, len(JPEG_RATIOS) - 1), problem


def _png_header(data, max_pixels):
    b = _bytes_at(data, 0, 24)
    ihdr = tf.reduce_all(tf.equal(b[12:16], list(b"IHDR")))
    width, height = _int32(b, 16, True), _int32(b, 20, True)
    problem = tf.where(
        tf.logical_or(tf.strings.length(data) < 24, tf.logical_not(ihdr)),
        _BAD_HEADER,
        tf.where(width * height > max_pixels, _TOO_LARGE, _OK),
    )
    return height, width, tf.constant(0, tf.int32), problem


def _bmp_header(data, max_pixels):
    b = _bytes_at(data, 0, 32)
    length = tf.cast(tf.strings.length(data), tf.int64)
    offset, width, height = (_int32(b, i, False) for i in (10, 18, 22))
    # Signed 32-bit fields; a negative height means top-down rows.
    width = tf.where(width >= 1 << 31, width - (1 << 32), width)
    height = tf.abs(tf.where(height >= 1 << 31, height - (1 << 32), height))
    row_bytes = (_le16(b, 28) * width + 31) // 32 * 4
    problem = tf.where(
        tf.logical_or(length < 32, width <= 0),
        _BAD_HEADER,
        tf.where(
            width * height > max_pixels,
            _TOO_LARGE,
            tf.where(length < offset + row_bytes * height, _TRUNCATED_DATA, _OK),
        ),
    )
    return height, width, tf.constant(0, tf.int32), problem


def _gif_byte(raw, length, pos):
    """int64 ``raw[pos]``, 0 past the end (``raw``: the GIF as uint8)."""
    value = tf.cast(tf.gather(raw, tf.minimum(pos, length - 1)), tf.int64)
    return tf.where(pos < length, value, tf.zeros_like(value))


def _skip_gif_sub_blocks(data, raw, length, pos):
    """The offset after the chain of data sub-blocks that starts at ``pos``."""

    # A chain of (size byte, data) ends with a size of 0.
    def body(pos, size):
        pos = pos + 1 + size
        return pos, _gif_byte(raw, length, pos)

    end, _ = tf.while_loop(
        lambda pos, size: size > 0,
        body,
        (pos, _gif_byte(raw, length, pos)),
        maximum_iterations=tf.strings.length(data),
    )
    return end + 1


def _gif_block_step(data, raw, length, pos, width, height, total, status):
    """One step of the GIF block walk: reads the block at ``pos``.

    Args:
        data: ``tf.string`` scalar.
        raw: ``uint8 [length]``, the same bytes.
        length: int64 scalar.
        pos: int64 scalar, offset of the block.
        width: Canvas width so far (frames may extend it).
        height: Canvas height so far.
        total: Pixels of all the frames so far.
        status: `_RUNNING` so far.

    Returns:
        ``(next_pos, width, height, total, status)``; ``status`` is
        `_GIF_OK` (trailer, or the data ends after a block), `_GIF_BAD`
        or still `_RUNNING`.
    """
    b = _bytes_at(data, pos, 10)
    # Image descriptor: 0x2C, left, top, width, height (LE 16), flags;
    # then its colour table, the LZW code size byte and data sub-blocks.
    is_image = tf.equal(b[0], 0x2C)
    is_ext = tf.equal(b[0], 0x21)  # 0x21, label, sub-blocks
    frame_w, frame_h = _le16(b, 5), _le16(b, 7)
    width = tf.where(is_image, tf.maximum(width, _le16(b, 1) + frame_w), width)
    height = tf.where(is_image, tf.maximum(height, _le16(b, 3) + frame_h), height)
    total = tf.where(is_image, total + frame_w * frame_h, total)
    blocks = tf.where(is_image, pos + 11 + _palette_bytes(b[9]), pos + 2)
    next_pos = tf.cond(
        tf.logical_or(is_image, is_ext),
        lambda: _skip_gif_sub_blocks(data, raw, length, blocks),
        lambda: pos,
    )
    known = tf.logical_or(is_image, is_ext)
    status = tf.where(
        tf.logical_or(
            tf.equal(b[0], 0x3B),  # the trailer
            tf.logical_and(known, tf.equal(next_pos, length)),  # none: as TF
        ),
        _GIF_OK,
        tf.where(
            tf.logical_and(known, next_pos < length),
            _RUNNING,
            _GIF_BAD,  # unknown block, or data that ends inside a block
        ),
    )
    return next_pos, width, height, total, status


def _gif_header(data, max_pixels):
    """Canvas size and the pixels of all frames (libgif decodes them all)."""
    length = tf.cast(tf.strings.length(data), tf.int64)
    # One copy of the data as numbers: GIF data is walked 256 bytes at a time.
    raw = tf.io.decode_raw(data, tf.uint8)  # at least the 6-byte magic
    screen = _bytes_at(data, 0, 13)
    start = 13 + _palette_bytes(screen[10])
    state = (
        start,
        _le16(screen, 6),
        _le16(screen, 8),
        tf.constant(0, tf.int64),
        tf.where(start < length, _RUNNING, _GIF_BAD),
    )
    _, width, height, total, status = tf.while_loop(
        lambda *s: tf.equal(s[-1], _RUNNING),
        lambda *s: _gif_block_step(data, raw, length, *s),
        state,
        maximum_iterations=tf.strings.length(data),
    )
    # libgif keeps every frame (1 byte a pixel); TF adds an RGB canvas.
    cost = _ceil_div(total + 3 * width * height, 3)
    problem = tf.where(
        tf.not_equal(status, _GIF_OK),
        _BAD_HEADER,
        tf.where(cost > max_pixels, _TOO_LARGE, _OK),
    )
    return height, width, tf.constant(0, tf.int32), problem


def read_header(
    data: tf.Tensor, max_pixels: int = MAX_IMAGE_PIXELS
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """What `decode_images` learns about one image before decoding it.

    Args:
        data: ``tf.string`` scalar, encoded image bytes.
        max_pixels: The decoding limit.

    Returns:
        ``(kind, height, width, ratio, problem)``: int32 kind (`JPEG`...),
        int64 full-size height and width, int32 JPEG scale denominator the
        image will be decoded at (1, 2, 4 or 8; 1 for other formats) and an
        int32 problem code (0 when the image may be decoded).

    Raises:
        InvalidArgumentError: (when run) from libjpeg, for a JPEG whose frame
            header cannot be read.
    """
    kind, height, width, ratio_index, problem = _read_header(data, max_pixels)
    ratio = tf.gather(tf.constant(JPEG_RATIOS, tf.int32), ratio_index)
    return kind, height, width, ratio, problem


def _read_header(data, max_pixels):
    kind = image_kind(data)
    none = (
        tf.constant(0, tf.int64),
        tf.constant(0, tf.int64),
        tf.constant(0, tf.int32),
        tf.where(tf.equal(tf.strings.length(data), 0), _EMPTY, _NOT_AN_IMAGE),
    )
    branches = [
        lambda: none,
        lambda: _jpeg_header(data, max_pixels),
        lambda: _png_header(data, max_pixels),
        lambda: _gif_header(data, max_pixels),
        lambda: _bmp_header(data, max_pixels),
    ]
    height, width, ratio_index, problem = tf.switch_case(kind, branches)
    return kind, height, width, ratio_index, tf.cast(problem, tf.int32)


def _problem_message(index, kind, height, width, problem, max_pixels, size):
    name = tf.gather(tf.constant(KIND_NAMES), kind)
    # Why a large image of each kind cannot be decoded with less memory.
    large = tf.gather(
        tf.constant(
            [
                "",
                " even at 1/8 scale (progressive and multi-scan JPEGs: at full size)",
                "",
                " (all frames together)",
                "",
            ]
        ),
        kind,
    )
    size_text = tf.strings.format("{}x{}", [width, height])
    messages = tf.stack(
        [
            tf.constant(""),
            tf.strings.format("not a JPEG, PNG, GIF or BMP image ({} bytes)", [size]),
            tf.constant("empty (0 bytes), not an image"),
            tf.strings.join(
                ["truncated or corrupt ", name, " (headers or block structure)"]
            ),
            tf.strings.join(
                [
                    name,
                    " of ",
                    size_text,
                    " pixels is over the serving limit of ",
                    str(max_pixels),
                    " decoded pixels",
                    large,
                    "; resize it before sending",
                ]
            ),
            tf.strings.join(["truncated ", name, ": pixel data missing"]),
        ]
    )
    where = tf.strings.format("image {}: ", [tf.convert_to_tensor(index)])
    return tf.strings.join([where, tf.gather(messages, problem)])


def decode_image(
    data: tf.Tensor,
    image_size: int,
    index: tf.Tensor | int = 0,
    max_pixels: int = MAX_IMAGE_PIXELS,
) -> tf.Tensor:
    """One encoded image -> ``float32 [S, S, 3]`` RGB in 0..255, bounded.

    Args:
        data: ``tf.string`` scalar: JPEG, PNG, GIF (first frame) or BMP bytes.
        image_size: S.
        index: Position of the image in its request, for error messages.
        max_pixels: Largest decoded raster (see the module docstring).

    Returns:
        ``float32 [S, S, 3]``, identical to `vse_tf.images.decode_image`
        whenever the image is decoded at full size.

    Raises:
        InvalidArgumentError: (when run) for bytes that are not such an
            image, a header that cannot be read, an image over the limit or
            data the decoder rejects.
    """
    kind, height, width, ratio_index, problem = _read_header(data, max_pixels)
    message = _problem_message(
        index, kind, height, width, problem, max_pixels, tf.strings.length(data)
    )
    check = tf.debugging.Assert(tf.equal(problem, _OK), [message], summarize=1)
    with tf.control_dependencies([check]):
        data = tf.identity(data)
    branches = [lambda: tf.io.decode_image(data, channels=3, expand_animations=False)]
    branches += [
        lambda r=r: tf.io.decode_jpeg(data, channels=3, ratio=r)
        for r in JPEG_RATIOS[1:]
    ]
    image = tf.switch_case(ratio_index, branches)
    resized = tf.image.resize(image, [image_size, image_size], antialias=True)
    return tf.ensure_shape(
        tf.clip_by_value(resized, 0.0, 255.0), [image_size, image_size, 3]
    )


def decode_images(
    image_bytes: tf.Tensor,
    image_size: int,
    max_pixels: int = MAX_IMAGE_PIXELS,
) -> tf.Tensor:
    """A batch of encoded images -> ``float32 [N, S, S, 3]``, bounded.

    At most `DECODE_PARALLELISM` images are decoded at the same time, so a
    request holds at most that many rasters of ``max_pixels`` pixels.

    Args:
        image_bytes: ``tf.string [N]``.
        image_size: S.
        max_pixels: Largest decoded raster per image.

    Returns:
        ``float32 [N, S, S, 3]`` RGB in 0..255.
    """
    count = tf.shape(image_bytes, out_type=tf.int64)[0]
    return tf.map_fn(
        lambda item: decode_image(item[1], image_size, item[0], max_pixels),
        (tf.range(count), image_bytes),
        fn_output_signature=tf.TensorSpec([image_size, image_size, 3], tf.float32),
        parallel_iterations=DECODE_PARALLELISM,
    )
