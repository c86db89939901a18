"""The embedded demo data set: procedurally drawn, captioned shape images.

`generate_demo_dataset` writes a small captioned-image data set that needs no
download, so that ``python -m trainers.train`` with no data at hand still
trains a meaningful image <-> sentence embedding in a few minutes on a CPU.

Each image shows one, two or three copies of one shape (circle, square,
triangle, star, cross, heart), all of one colour (red, orange, yellow, green,
blue, purple, pink, brown) and one size (small, large), on a plain white,
black or gray background. Objects get random positions, small rotations and
slightly jittered colours; edges are anti-aliased by 3x3 supersampling. Every
image has 5 captions from a small English grammar with synonyms and varied
templates ("two big crimson discs on a dark background", "there is a small
green square against a white backdrop", ...); every caption names all five
attributes (count, size, colour, shape, background), so that test images are
told apart by their captions alone. Positions are never mentioned: the image
tower global-average pools the VGG16 conv features, which discards them.

The attribute space has 3 * 2 * 8 * 6 * 3 = 864 combinations. Each split walks
through shuffled permutations of that space, so combinations are balanced
within a split and, since the dev and test splits are smaller than the space,
every dev (and every test) image has its own combination: retrieval among the
test images is well posed.

Default sizes (`DEMO_DEFAULTS`), chosen so that extracting VGG16 features for
all images takes seconds on 2 CPU cores while the task stays learnable:

* ``image_size=64``: shapes at this size are clear, and VGG16 costs about
  ``(64/224)^2 = 8%`` of a 224x224 pass (pool5 is then a 2x2 grid,
  global-average pooled to 512-d).
* ``num_train=2000, num_dev=200, num_test=200``: 10000 training captions;
  every caption word is seen hundreds of times (the vocabulary keeps words
  seen >= 4 times), and each combination is seen about 2.3 times in train.

Layout under ``output_dir``::

    images/{split}_{index:05d}.png   RGB, image_size x image_size
    captions.csv                     header image,caption,split (5 rows/image)
    attributes.csv                   header image,split,count,size,colour,...
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
    ("small", 1): 0.14,
    ("small", 2): 0.12,
    ("small", 3): 0.11,
    ("large", 1): 0.36,
    ("large", 2): 0.26,
    ("large", 3): 0.22,
}
COLOURS = {
    "red": ((215, 30, 35), ("red", "crimson")),
    "orange": ((250, 135, 15), ("orange",)),
    "yellow": ((245, 220, 30), ("yellow", "golden")),
    "green": ((35, 165, 55), ("green",)),
    "blue": ((35, 75, 215), ("blue",)),
    "purple": ((135, 40, 175), ("purple", "violet")),
    "pink": ((250, 130, 190), ("pink",)),
    "brown": ((120, 70, 30), ("brown",)),
}
# Singular and plural nouns.
SHAPES = {
    "circle": (("circle", "circles"), ("disc", "discs")),
    "square": (("square", "squares"), ("box", "boxes")),
    "triangle": (("triangle", "triangles"),),
    "star": (("star", "stars"),),
    "cross": (("cross", "crosses"),),
    "heart": (("heart", "hearts"),),
}
BACKGROUNDS = {
    "white": (245, ("white", "light")),
    "black": (18, ("black", "dark")),
    "gray": (128, ("gray", "grey")),
}
ATTRIBUTE_NAMES = ("count", "size", "colour", "shape", "background")

_TEMPLATES = (
    "{np} {bg}",
    "there {be} {np} {bg}",
    "a picture of {np} {bg}",
    "an image showing {np} {bg}",
    "{np} drawn {bg}",
    "a {bgword} background with {np} on it",
    "this is {np} {bg}",
    "a simple drawing of {np} {bg}",
)
_BACKGROUND_PHRASES = (
    "on a {bgword} background",
    "against a {bgword} backdrop",
    "in front of a {bgword} background",
    "on a {bgword} backdrop",
)
_IMAGE_NAME = re.compile(r"^(train|dev|test)_\d{5}\.png$")


@dataclasses.dataclass(frozen=True)
class DemoAttributes:
    """What one demo image shows.

    Attributes:
        count: Number of shapes (1..3).
        size: ``small`` or ``large``.
        colour: A key of `COLOURS`.
        shape: A key of `SHAPES`.
        background: A key of `BACKGROUNDS`.
    """

    count: int
    size: str
    colour: str
    shape: str
    background: str

    def as_tuple(self) -> tuple:
        """The attribute values in `ATTRIBUTE_NAMES` order."""
        return tuple(getattr(self, name) for name in ATTRIBUTE_NAMES)


def attribute_space() -> list[DemoAttributes]:
    """Every attribute combination, in a fixed order."""
    return [
        DemoAttributes(*values)
        for values in itertools.product(COUNTS, SIZES, COLOURS, SHAPES, BACKGROUNDS)
    ]


def _rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng([seed, *keys])


def sample_attributes(num: int, seed: int, split: str) -> list[DemoAttributes]:
    """The attributes of the images of one split.

    Walks through shuffled permutations of `attribute_space`, so a split no
    larger than the space has no repeated combination.

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
    return [space[i] for i in order[:num]]


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _noun_phrase(attrs: DemoAttributes, rng: np.random.Generator) -> str:
    size = str(rng.choice(SIZES[attrs.size]))
    colour = str(rng.choice(COLOURS[attrs.colour][1]))
    nouns = SHAPES[attrs.shape]
    noun = nouns[rng.integers(len(nouns))][0 if attrs.count == 1 else 1]
    det = str(rng.choice(COUNTS[attrs.count]))
    adjectives = [size, colour] if rng.random() < 0.75 else [colour, size]
    if det == "a":
        det = _article(adjectives[0])
    return " ".join([det, *adjectives, noun])


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
        bgword = str(rng.choice(BACKGROUNDS[attrs.background][1]))
        phrase = _BACKGROUND_PHRASES[rng.integers(len(_BACKGROUND_PHRASES))]
        caption = template.format(
            np=_noun_phrase(attrs, rng),
            be="is" if attrs.count == 1 else "are",
            bg=phrase.format(bgword=bgword),
            bgword=bgword,
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


def render_image(
    attrs: DemoAttributes, image_size: int, rng: np.random.Generator
) -> np.ndarray:
    """Draws one demo image.

    Args:
        attrs: What to draw.
        image_size: Side in pixels.
        rng: Random source (positions, rotations, colour jitter).

    Returns:
        ``uint8 [image_size, image_size, 3]`` RGB.
    """
    ss = _SUPERSAMPLE
    big = image_size * ss
    grey = BACKGROUNDS[attrs.background][0] + rng.normal(0, 6)
    canvas = np.full((big, big, 3), np.clip(grey, 0, 255), dtype=np.float32)
    rgb = np.asarray(COLOURS[attrs.colour][0], np.float32) + rng.normal(0, 10, 3)
    rgb = np.clip(rgb, 0, 255)
    radius = _RADIUS[(attrs.size, attrs.count)] * image_size
    radius *= rng.uniform(0.9, 1.1)
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


def _write_atomic(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write(text)
    os.replace(tmp, path)


def _csv_text(header: list[str], rows: list[list]) -> str:
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


_README = """\
vse_tf demo data set (generated by vse_tf.data.demo.generate_demo_dataset)

Procedurally drawn images of one to three coloured shapes on a plain
background, {image_size}x{image_size} RGB PNGs in images/, with 5 English
captions per image in captions.csv (columns image,caption,split; splits
train={num_train}, dev={num_dev}, test={num_test} images; seed={seed}).
attributes.csv lists what each image shows (count, size, colour, shape,
background); every caption names all five. Within the dev and the test split
every image has its own attribute combination.

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
            [record.image, record.split, *record.attributes.as_tuple()]
        )
    _write_atomic(
        os.path.join(output_dir, "captions.csv"),
        _csv_text(["image", "caption", "split"], caption_rows),
    )
    _write_atomic(
        os.path.join(output_dir, "attributes.csv"),
        _csv_text(["image", "split", *ATTRIBUTE_NAMES], attribute_rows),
    )
    _write_atomic(os.path.join(output_dir, "README.txt"), _README.format(**params))
    _write_atomic(
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
                int(row["count"]),
                row["size"],
                row["colour"],
                row["shape"],
                row["background"],
            )
    return result
