"""The embedded demo data set: procedurally drawn, captioned shape images.

`generate_demo_dataset` writes a small captioned-image data set that needs no
download, so that ``python -m trainers.train`` with no data at hand still
trains a meaningful image <-> sentence embedding in a few minutes on a CPU.

Each image shows one, two or three copies of one shape (circle, square,
triangle, star), all of one size (small, large) and one fill (solid, hollow),
on one background pattern (plain, dotted, checkered, horizontal stripes,
vertical stripes). These five attributes are what tells images apart; the
attribute space has 3 * 2 * 2 * 4 * 5 = 240 combinations. Nuisances vary
freely: positions, small rotations, the shape colour (six hues), a light or
dark background shade and the pattern's phase. Edges are anti-aliased by 3x3
supersampling. Every image has 5 distinct captions from a small English
grammar with synonyms and varied templates ("there are two big hollow discs
on a dotted background", "vertical stripes behind a single small filled red
star", ...); every caption names all five attributes, and half of the noun
phrases also name the colour.

Why these attributes: the image tower is a frozen VGG16 trunk from the HED
edge model, global-average pooled after block 5. Linear probes on those
512-d features (64x64 images, 2000 training images) recover size (~0.97),
background pattern (~0.93), fill (~0.92), shape among these four (~0.82) and
count (~0.77), but colour only at ~0.4 among 8 hues and even the background
brightness poorly (the edge-tuned trunk is nearly colour-blind), and
position not at all (pooling discards it). Hearts and crosses were dropped
(confused with circles and stars). A ridge probe from the features to
attribute one-hots gives text->image R@1 of about 58 (and about 63 with
attribute-pair targets) among the 200 test images.

Each split walks through shuffled permutations of the attribute space, so
combinations are balanced within a split and, since the dev and test splits
are no larger than the space, every dev (and every test) image has its own
combination: retrieval among the test images is well posed.

Default sizes (`DEMO_DEFAULTS`), chosen so that extracting VGG16 features for
all images takes well under a minute on 2 CPU cores while the task stays
learnable:

* ``image_size=64``: VGG16 costs about ``(64/224)^2 = 8%`` of a 224x224
  pass (roughly 50-90 images/s on 2 cores); pool5 is a 2x2 grid, averaged.
  96x96 helped the probes only a little, at 2.25x the cost.
* ``num_train=2000, num_dev=200, num_test=200``: 10000 training captions;
  every caption word is seen dozens of times or more (the vocabulary keeps
  words seen >= 4 times), and each combination about 8 times in train.

Layout under ``output_dir``::

    images/{split}_{index:05d}.png   RGB, image_size x image_size
    captions.csv                     header image,caption,split (5 rows/image)
    attributes.csv                   image,split,count,size,fill,shape,...
    README.txt                       what this is
    manifest.json                    the parameters; written last (complete)

The output is a pure function of the arguments: the same arguments give the
same bytes.
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import json
import os
import re
from typing import Optional

import numpy as np

from vse_tf import io_utils

DEMO_VERSION = 1
SPLITS = ("train", "dev", "test")
CAPTIONS_PER_IMAGE = 5
DEMO_DEFAULTS = {
    "num_train": 2000,
    "num_dev": 200,
    "num_test": 200,
    "image_size": 64,
    "seed": 0,
}
_SUPERSAMPLE = 3
_MIN_IMAGE_SIZE = 32

# Attribute values -> words. Synonym lists put the plain word first.
COUNTS = {1: ("one", "a", "a single"), 2: ("two", "a pair of"), 3: ("three",)}
SIZES = {
    "small": ("small", "little", "tiny"),
    "large": ("large", "big", "huge"),
}
# Fraction of the image size used as the shape's radius, by size and count.
_RADIUS = {
    ("small", 1): 0.2,
    ("small", 2): 0.17,
    ("small", 3): 0.15,
    ("large", 1): 0.42,
    ("large", 2): 0.31,
    ("large", 3): 0.27,
}
FILLS = {"solid": ("solid", "filled"), "hollow": ("hollow", "outlined")}
# Singular and plural nouns.
SHAPES = {
    "circle": (("circle", "circles"), ("disc", "discs")),
    "square": (("square", "squares"), ("box", "boxes")),
    "triangle": (("triangle", "triangles"),),
    "star": (("star", "stars"),),
}
# Background patterns -> noun phrases.
BACKGROUNDS = {
    "plain": ("a plain background", "a blank background", "a plain backdrop"),
    "dotted": ("a dotted background", "a spotted backdrop", "a background of dots"),
    "checkered": (
        "a checkered background",
        "a checkered backdrop",
        "a checkerboard background",
    ),
    "horizontal": (
        "horizontal stripes",
        "a background of horizontal stripes",
        "a horizontally striped background",
    ),
    "vertical": (
        "vertical stripes",
        "a background of vertical stripes",
        "a vertically striped background",
    ),
}
# Shape colours: a nuisance attribute, named in some captions only (the
# HED-tuned VGG16 trunk keeps little colour information after block 5).
COLOURS = {
    "red": ((215, 30, 35), ("red",)),
    "orange": ((250, 135, 15), ("orange",)),
    "yellow": ((245, 220, 30), ("yellow",)),
    "green": ((35, 165, 55), ("green",)),
    "blue": ((35, 75, 215), ("blue",)),
    "purple": ((135, 40, 175), ("purple",)),
}
ATTRIBUTE_NAMES = ("count", "size", "fill", "shape", "background")
_COLOUR_MENTION_PROBABILITY = 0.5

_IMAGE_NAME = re.compile(r"^(train|dev|test)_\d{5}\.png$")
_TEMPLATES = (
    "{np} on {bg}",
    "there {be} {np} on {bg}",
    "a picture of {np} on {bg}",
    "an image showing {np} in front of {bg}",
    "{np} drawn on {bg}",
    "{bg} behind {np}",
    "this is {np} against {bg}",
    "a simple drawing of {np} over {bg}",
)


@dataclasses.dataclass(frozen=True)
class DemoAttributes:
    """What one demo image shows.

    Attributes:
        count: Number of shapes (1..3).
        size: A key of `SIZES`.
        fill: A key of `FILLS`.
        shape: A key of `SHAPES`.
        background: A key of `BACKGROUNDS`.
        colour: A key of `COLOURS` (not part of the combination that tells
            images apart).
    """

    count: int
    size: str
    fill: str
    shape: str
    background: str
    colour: str

    def key(self) -> tuple:
        """The distinguishing attribute values, in `ATTRIBUTE_NAMES` order."""
        return tuple(getattr(self, name) for name in ATTRIBUTE_NAMES)


def attribute_space() -> list[tuple]:
    """Every combination of the distinguishing attributes, in a fixed order."""
    return list(itertools.product(COUNTS, SIZES, FILLS, SHAPES, BACKGROUNDS))


def _rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng([seed, *keys])


def sample_attributes(num: int, seed: int, split: str) -> list[DemoAttributes]:
    """The attributes of the images of one split.

    Walks through shuffled permutations of `attribute_space`, so a split no
    larger than the space has no repeated combination. Colours are drawn
    independently.

    Args:
        num: Number of images.
        seed: Data set seed.
        split: One of `SPLITS`.

    Returns:
        ``num`` attribute sets.
    """
    space = attribute_space()
    rng = _rng(seed, SPLITS.index(split), 0)
    order: list[int] = []
    while len(order) < num:
        order.extend(rng.permutation(len(space)).tolist())
    colours = list(COLOURS)
    picks = rng.integers(len(colours), size=num)
    return [
        DemoAttributes(*space[i], colour=colours[c]) for i, c in zip(order[:num], picks)
    ]


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _noun_phrase(attrs: DemoAttributes, rng: np.random.Generator) -> str:
    nouns = SHAPES[attrs.shape]
    words = [
        str(rng.choice(SIZES[attrs.size])),
        str(rng.choice(FILLS[attrs.fill])),
    ]
    if rng.random() < 0.3:
        words.reverse()
    if rng.random() < _COLOUR_MENTION_PROBABILITY:
        words.append(str(rng.choice(COLOURS[attrs.colour][1])))
    words.append(nouns[rng.integers(len(nouns))][0 if attrs.count == 1 else 1])
    det = str(rng.choice(COUNTS[attrs.count]))
    if det == "a":
        det = _article(words[0])
    return " ".join([det, *words])


def describe(attrs: DemoAttributes, rng: np.random.Generator) -> list[str]:
    """`CAPTIONS_PER_IMAGE` different captions for one image.

    Args:
        attrs: What the image shows.
        rng: Random source (word and template choices).

    Returns:
        Distinct captions, each naming every attribute.
    """
    captions: list[str] = []
    templates = rng.permutation(len(_TEMPLATES)).tolist()
    while len(captions) < CAPTIONS_PER_IMAGE:
        template = _TEMPLATES[templates[len(captions) % len(templates)]]
        noun_phrase = _noun_phrase(attrs, rng)
        caption = template.format(
            np=noun_phrase,
            be="are" if attrs.count > 1 and noun_phrase[0] == "t" else "is",
            bg=str(rng.choice(BACKGROUNDS[attrs.background])),
        )
        if caption not in captions:
            captions.append(caption)
    return captions


# --------------------------------------------------------------------------
# Drawing.


def _polygon_mask(x: np.ndarray, y: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """Even-odd point-in-polygon test on coordinate grids."""
    inside = np.zeros(x.shape, dtype=bool)
    count = len(vertices)
    for i in range(count):
        x0, y0 = vertices[i]
        x1, y1 = vertices[(i + 1) % count]
        crosses = (y0 > y) != (y1 > y)
        with np.errstate(divide="ignore", invalid="ignore"):
            x_cross = x0 + (y - y0) * (x1 - x0) / (y1 - y0)
        inside ^= crosses & (x < x_cross)
    return inside


def _star_vertices() -> np.ndarray:
    angles = np.pi / 2 + np.arange(10) * np.pi / 5
    radii = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


_TRIANGLE = np.array([[0.0, 1.0], [-0.9, -0.62], [0.9, -0.62]])
_STAR = _star_vertices()


def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Whether unit-radius shape coordinates (v up) are inside the shape."""
    if shape == "circle":
        return u * u + v * v <= 0.92
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.8
    if shape == "triangle":
        return _polygon_mask(u, v, _TRIANGLE)
    if shape == "star":
        return _polygon_mask(u, v, _STAR)
    if shape == "cross":
        au, av = np.abs(u), np.abs(v)
        return ((au <= 0.3) & (av <= 0.95)) | ((av <= 0.3) & (au <= 0.95))
    if shape == "heart":
        x, y = u * 1.15, v * 1.15 + 0.15
        return (x * x + y * y - 1) ** 3 - x * x * y**3 <= 0
    raise ValueError(f"unknown shape {shape!r}")


def _place(
    count: int, radius: float, size: int, rng: np.random.Generator
) -> list[tuple[float, float]]:
    """Centres for ``count`` shapes inside the image, apart where possible."""
    low, high = radius, size - radius
    best: list[tuple[float, float]] = []
    best_gap = -np.inf
    for _ in range(200):
        centres = [tuple(rng.uniform(low, high, 2)) for _ in range(count)]
        gap = min(
            (
                np.hypot(a[0] - b[0], a[1] - b[1]) - 2 * radius
                for a, b in itertools.combinations(centres, 2)
            ),
            default=0.0,
        )
        if gap >= 1.0:
            return centres
        if gap > best_gap:
            best, best_gap = centres, gap
    return best


def _background(
    pattern: str, big: int, ss: int, rng: np.random.Generator
) -> np.ndarray:
    """A supersampled ``[big, big, 3]`` background: light or dark, patterned."""
    light = rng.random() < 0.5
    base = rng.uniform(215, 250) if light else rng.uniform(15, 55)
    ink = base + (-1 if light else 1) * rng.uniform(70, 100)
    tint = rng.normal(0, 6, 3)
    canvas = np.empty((big, big, 3), np.float32)
    canvas[:] = np.clip(base + tint, 0, 255)
    if pattern == "plain":
        return canvas
    ys, xs = np.mgrid[0:big, 0:big].astype(np.float32) / ss + 0.5 / ss
    period = rng.uniform(7.0, 9.0)
    if pattern in ("horizontal", "vertical"):
        t = (ys if pattern == "horizontal" else xs) + rng.uniform(0, period)
        mask = np.mod(t, period) < period * 0.4
    elif pattern == "checkered":
        ox, oy = rng.uniform(0, 2 * period, 2)
        cells = np.floor((xs + ox) / period) + np.floor((ys + oy) / period)
        mask = np.mod(cells, 2) == 0
    elif pattern == "dotted":
        ox, oy = rng.uniform(0, period, 2)
        dx = np.mod(xs + ox, period) - period / 2
        dy = np.mod(ys + oy, period) - period / 2
        mask = dx * dx + dy * dy <= (period * 0.22) ** 2
    else:
        raise ValueError(f"unknown background {pattern!r}")
    canvas[mask] = np.clip(ink + tint, 0, 255)
    return canvas


def render_image(
    attrs: DemoAttributes, image_size: int, rng: np.random.Generator
) -> np.ndarray:
    """Draws one demo image.

    Args:
        attrs: What to draw.
        image_size: Side in pixels.
        rng: Random source (positions, rotations, shades, colour jitter).

    Returns:
        ``uint8 [image_size, image_size, 3]`` RGB.
    """
    ss = _SUPERSAMPLE
    big = image_size * ss
    canvas = _background(attrs.background, big, ss, rng)
    rgb = np.asarray(COLOURS[attrs.colour][0], np.float32) + rng.normal(0, 10, 3)
    rgb = np.clip(rgb, 0, 255)
    radius = _RADIUS[(attrs.size, attrs.count)] * image_size
    radius *= rng.uniform(0.9, 1.1)
    # Outline width of hollow shapes, as a fraction of the radius.
    inner = 1.0 - max(0.25, 2.0 / radius)
    for cx, cy in _place(attrs.count, radius, image_size, rng):
        angle = rng.uniform(-0.3, 0.3)
        r = radius * ss
        x0, x1 = max(int(cx * ss - r) - 1, 0), min(int(cx * ss + r) + 2, big)
        y0, y1 = max(int(cy * ss - r) - 1, 0), min(int(cy * ss + r) + 2, big)
        ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float32) + 0.5
        dx, dy = (xs - cx * ss) / r, (cy * ss - ys) / r
        cos, sin = np.cos(angle), np.sin(angle)
        u, v = cos * dx + sin * dy, -sin * dx + cos * dy
        mask = _shape_mask(attrs.shape, u, v)
        if attrs.fill == "hollow":
            mask &= ~_shape_mask(attrs.shape, u / inner, v / inner)
        canvas[y0:y1, x0:x1][mask] = rgb
    small = canvas.reshape(image_size, ss, image_size, ss, 3).mean(axis=(1, 3))
    return np.clip(np.rint(small), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------
# Records and files.


@dataclasses.dataclass(frozen=True)
class DemoRecord:
    """One demo image: its file name, split, attributes and captions."""

    image: str
    split: str
    index: int
    attributes: DemoAttributes
    captions: tuple[str, ...]


def demo_records(
    num_train: int = DEMO_DEFAULTS["num_train"],
    num_dev: int = DEMO_DEFAULTS["num_dev"],
    num_test: int = DEMO_DEFAULTS["num_test"],
    seed: int = DEMO_DEFAULTS["seed"],
) -> list[DemoRecord]:
    """The images' names, attributes and captions, without drawing them.

    Args:
        num_train: Training images.
        num_dev: Validation images.
        num_test: Test images.
        seed: Data set seed.

    Returns:
        Records in split order (train, dev, test), then image order.
    """
    records = []
    sizes = {"train": num_train, "dev": num_dev, "test": num_test}
    for split_id, split in enumerate(SPLITS):
        for index, attrs in enumerate(sample_attributes(sizes[split], seed, split)):
            captions = describe(attrs, _rng(seed, split_id, 2, index))
            records.append(
                DemoRecord(
                    f"{split}_{index:05d}.png", split, index, attrs, tuple(captions)
                )
            )
    return records


def _encode_png(image: np.ndarray) -> bytes:
    import tensorflow as tf

    return tf.io.encode_png(image).numpy()


def _csv_text(header: list[str], rows: list[list]) -> str:
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


_README = """\
vse_tf demo data set (generated by vse_tf.data.demo.generate_demo_dataset)

Procedurally drawn images of one to three shapes (circle, square, triangle,
star; small or large; solid or hollow; any of six colours) on a plain,
dotted, checkered or striped background: {image_size}x{image_size} RGB PNGs
in images/, with 5 English captions per image in captions.csv (columns
image,caption,split; splits train={num_train}, dev={num_dev},
test={num_test} images; seed={seed}). attributes.csv lists what each image
shows; every caption names the count, size, fill, shape and background.
Within the dev and the test split every image has its own combination of
these.

It exists so that training works with no data at hand; it is not a benchmark
of real-world image understanding. Read it with
vse_tf.data.readers.read_split("csv", "<this folder>", "train").
"""


def _params(
    num_train: int, num_dev: int, num_test: int, image_size: int, seed: int
) -> dict:
    return {
        "version": DEMO_VERSION,
        "num_train": int(num_train),
        "num_dev": int(num_dev),
        "num_test": int(num_test),
        "image_size": int(image_size),
        "seed": int(seed),
    }


def is_complete(output_dir: str, params: Optional[dict] = None) -> bool:
    """Whether ``output_dir`` holds a complete demo set (with ``params``).

    Args:
        output_dir: The data set folder.
        params: Expected manifest parameters; None accepts any.

    Returns:
        True when ``manifest.json`` exists (and matches ``params``).
    """
    path = os.path.join(output_dir, "manifest.json")
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        return False
    return params is None or manifest.get("params") == params


def generate_demo_dataset(
    output_dir: str,
    num_train: int = DEMO_DEFAULTS["num_train"],
    num_dev: int = DEMO_DEFAULTS["num_dev"],
    num_test: int = DEMO_DEFAULTS["num_test"],
    image_size: int = DEMO_DEFAULTS["image_size"],
    seed: int = DEMO_DEFAULTS["seed"],
) -> str:
    """Writes the demo data set (see the module docstring) into ``output_dir``.

    Does nothing when ``output_dir`` already holds a complete set made with
    the same arguments. ``manifest.json`` is written last, atomically, so an
    interrupted run is redone next time.

    Args:
        output_dir: Folder to write into (created if needed).
        num_train: Training images.
        num_dev: Validation images.
        num_test: Test images.
        image_size: Image side in pixels (>= 32, VGG16's minimum).
        seed: Seed; the output is a pure function of the arguments.

    Returns:
        ``output_dir``.

    Raises:
        ValueError: For a split size below 1 or an image size below 32.
    """
    output_dir = os.fspath(output_dir)
    if image_size < _MIN_IMAGE_SIZE:
        raise ValueError(f"image_size must be >= {_MIN_IMAGE_SIZE}, got {image_size}")
    if min(num_train, num_dev, num_test) < 1:
        raise ValueError("every split needs at least one image")
    params = _params(num_train, num_dev, num_test, image_size, seed)
    if is_complete(output_dir, params):
        return output_dir

    manifest_path = os.path.join(output_dir, "manifest.json")
    image_dir = os.path.join(output_dir, "images")
    os.makedirs(image_dir, exist_ok=True)
    if os.path.exists(manifest_path):
        os.remove(manifest_path)
    records = demo_records(num_train, num_dev, num_test, seed)
    names = {r.image for r in records}
    for stale in os.listdir(image_dir):
        if _IMAGE_NAME.match(stale) and stale not in names:
            os.remove(os.path.join(image_dir, stale))

    caption_rows, attribute_rows = [], []
    for record in records:
        split_id = SPLITS.index(record.split)
        image = render_image(
            record.attributes, image_size, _rng(seed, split_id, 1, record.index)
        )
        with open(os.path.join(image_dir, record.image), "wb") as f:
            f.write(_encode_png(image))
        caption_rows.extend([record.image, c, record.split] for c in record.captions)
        attribute_rows.append(
            [
                record.image,
                record.split,
                *record.attributes.key(),
                record.attributes.colour,
            ]
        )
    io_utils.atomic_write_text(
        os.path.join(output_dir, "captions.csv"),
        _csv_text(["image", "caption", "split"], caption_rows),
    )
    io_utils.atomic_write_text(
        os.path.join(output_dir, "attributes.csv"),
        _csv_text(["image", "split", *ATTRIBUTE_NAMES, "colour"], attribute_rows),
    )
    io_utils.atomic_write_text(
        os.path.join(output_dir, "README.txt"), _README.format(**params)
    )
    io_utils.atomic_write_text(
        manifest_path,
        json.dumps({"dataset": "vse_tf-demo", "params": params}, indent=2) + "\n",
    )
    return output_dir


def read_demo_attributes(output_dir: str) -> dict[str, DemoAttributes]:
    """The attributes of every image of a generated demo set.

    Args:
        output_dir: A folder written by `generate_demo_dataset`.

    Returns:
        Image file name -> attributes.
    """
    result = {}
    path = os.path.join(os.fspath(output_dir), "attributes.csv")
    with open(path, encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            result[row["image"]] = DemoAttributes(
                count=int(row["count"]),
                size=row["size"],
                fill=row["fill"],
                shape=row["shape"],
                background=row["background"],
                colour=row["colour"],
            )
    return result
