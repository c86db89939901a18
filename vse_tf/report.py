"""The training record a person reads: ``metrics.csv`` and ``report.html``.

``<workdir>/metrics.csv`` gets one row per finished epoch (rewritten
atomically, so a crash never leaves half a row; a resumed run keeps the
rows of the epochs it does not redo). ``<workdir>/report.html`` is written
at the end of training: the dev R-sum and loss curves (inline SVG), the
final tables, the config, and example text->image queries from dev with
their top-5 images and the true image marked. The page loads nothing from
the network: thumbnails are ``data:`` URIs.
"""

from __future__ import annotations

import csv
import html
import io
import json
import os
from collections.abc import Sequence
from typing import Optional

import numpy as np

from vse_tf import io_utils
from vse_tf.retrieval import html as html_lib

METRICS_CSV = "metrics.csv"
REPORT_HTML = "report.html"
COLUMNS = (
    "epoch",
    "loss",
    "i2t_r1",
    "i2t_r5",
    "i2t_r10",
    "t2i_r1",
    "t2i_r5",
    "t2i_r10",
    "rsum",
    "learning_rate",
    "seconds",
)
"""``metrics.csv`` columns (a contract: scripts read them)."""


def read_metrics(workdir: str) -> list[dict[str, float]]:
    """The rows of ``<workdir>/metrics.csv`` (empty when there is none)."""
    path = os.path.join(workdir, METRICS_CSV)
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8", newline="") as f:
        return [
            {key: float(value) for key, value in row.items() if value != ""}
            for row in csv.DictReader(f)
        ]


def append_epoch(workdir: str, row: dict[str, float]) -> str:
    """Records one epoch in ``metrics.csv``; replaces a row of the same epoch.

    Args:
        workdir: The training workdir.
        row: Values by `COLUMNS` name (``epoch`` required; others optional).

    Returns:
        The CSV path.
    """
    epoch = int(row["epoch"])
    rows = [r for r in read_metrics(workdir) if int(r["epoch"]) < epoch]
    rows.append(row)
    out = io.StringIO()
    writer = csv.DictWriter(out, COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for values in rows:
        writer.writerow(
            {
                key: (int(values[key]) if key == "epoch" else f"{values[key]:.6g}")
                for key in COLUMNS
                if key in values
            }
        )
    path = os.path.join(workdir, METRICS_CSV)
    io_utils.atomic_write_text(path, out.getvalue())
    return path


# ---------------------------------------------------------------------------
# The page.


def svg_curve(
    xs: Sequence[float],
    ys: Sequence[float],
    title: str,
    width: int = 420,
    height: int = 220,
) -> str:
    """A line chart as inline SVG, with min/max labels on both axes."""
    if not xs:
        return f"<p>{html.escape(title)}: no data</p>"
    left, right, top, bottom = 50, 10, 24, 30
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    x_span = (x1 - x0) or 1.0
    y_span = (y1 - y0) or 1.0

    def point(x: float, y: float) -> tuple[float, float]:
        px = left + (x - x0) / x_span * (width - left - right)
        py = height - bottom - (y - y0) / y_span * (height - top - bottom)
        return px, py

    points = " ".join(f"{px:.1f},{py:.1f}" for px, py in map(point, xs, ys))
    dots = "".join(
        f'<circle cx="{px:.1f}" cy="{py:.1f}" r="2.5"/>'
        for px, py in map(point, xs, ys)
    )
    return (
        f'<svg class="curve" xmlns="http://www.w3.org/2000/svg" width="{width}" '
        f'height="{height}" role="img" aria-label="{html.escape(title)}">'
        f'<text x="{left}" y="15" font-size="13">{html.escape(title)}</text>'
        f'<line x1="{left}" y1="{height - bottom}" x2="{width - right}" '
        f'y2="{height - bottom}" stroke="#888"/>'
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{height - bottom}" '
        'stroke="#888"/>'
        f'<text x="{left - 4}" y="{top + 4}" font-size="11" text-anchor="end">'
        f"{y1:.4g}</text>"
        f'<text x="{left - 4}" y="{height - bottom}" font-size="11" '
        f'text-anchor="end">{y0:.4g}</text>'
        f'<text x="{left}" y="{height - 10}" font-size="11">epoch {x0:g}</text>'
        f'<text x="{width - right}" y="{height - 10}" font-size="11" '
        f'text-anchor="end">{x1:g}</text>'
        f'<polyline fill="none" stroke="#1f77b4" stroke-width="2" '
        f'points="{points}"/><g fill="#1f77b4">{dots}</g></svg>'
    )


def _table(results: dict[str, dict]) -> str:
    keys = ("r1", "r5", "r10", "medr")
    head = "".join(f"<th>{d} {k}</th>" for d in ("i2t", "t2i") for k in keys)
    rows = []
    for split, values in results.items():
        cells = "".join(
            f"<td>{values.get(f'{d}_{k}', float('nan')):.1f}</td>"
            for d in ("i2t", "t2i")
            for k in keys
        )
        rows.append(
            f"<tr><td>{html.escape(split)}</td>{cells}"
            f"<td><b>{values.get('rsum', float('nan')):.1f}</b></td></tr>"
        )
    return f"<table><tr><th>split</th>{head}<th>rsum</th></tr>{''.join(rows)}</table>"


def example_queries(
    image_emb: np.ndarray,
    caption_emb: np.ndarray,
    captions: Sequence[str],
    num_queries: int = 4,
    k: int = 5,
    captions_per_image: int = 5,
) -> list[tuple[str, int, list[int], int]]:
    """``(caption, true image, top-k images, true image's rank)`` for a few images.

    The query of each picked image is its first caption; ranks start at 1.

    Args:
        image_emb: ``[N, D]`` unit rows.
        caption_emb: ``[5N, D]`` unit rows (caption ``i`` shows image
            ``i // captions_per_image``).
        captions: The ``5N`` captions.
        num_queries: Queries wanted (images spread over the split).
        k: Results per query.
        captions_per_image: Captions per image in the protocol.
    """
    num_images = len(image_emb)
    if num_images == 0:
        return []
    picks = np.unique(np.linspace(0, num_images - 1, num_queries).astype(int))
    examples = []
    for image in picks.tolist():
        caption = image * captions_per_image
        scores = image_emb @ caption_emb[caption]
        order = np.argsort(-scores, kind="stable")
        rank = int(np.flatnonzero(order == image)[0]) + 1
        examples.append((captions[caption], image, order[:k].tolist(), rank))
    return examples


def _example_html(
    examples: Sequence[tuple[str, int, list[int], int]], image_paths: Sequence[str]
) -> str:
    blocks = []
    for caption, true_image, top, true_rank in examples:
        figures = []
        shown = list(enumerate(top, 1))
        if true_image not in top:  # show where the true image went
            shown.append((true_rank, true_image))
        for rank, image in shown:
            mark = image == true_image
            src = (
                html_lib.thumbnail_data_uri(image_paths[image], 160)
                if image_paths
                else None
            )
            picture = (
                f'<img src="{src}" alt="image {image}">'
                if src
                else f'<span class="missing">image {image}</span>'
            )
            figures.append(
                f'<figure class="{"true" if mark else ""}">{picture}<figcaption>'
                f"#{rank}{' (true image)' if mark else ''}</figcaption></figure>"
            )
        where = "in" if true_image in top else "not in"
        blocks.append(
            f'<div class="example"><p>&ldquo;{html.escape(caption)}&rdquo; '
            f"&mdash; true image {where} the top {len(top)} (rank {true_rank})"
            f'</p><div class="row">{"".join(figures)}</div></div>'
        )
    return "".join(blocks)


_STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; max-width: 70em; }
h1 { font-size: 1.3em; } h2 { font-size: 1.1em; margin-top: 1.5em; }
table { border-collapse: collapse; } td, th { border: 1px solid #ccc;
  padding: .25em .6em; text-align: right; }
.curves { display: flex; gap: 1.5em; flex-wrap: wrap; }
.row { display: flex; gap: .6em; flex-wrap: wrap; }
figure { margin: 0; padding: .3em; border: 3px solid #eee; }
figure.true { border-color: #2a2; }
figure img { display: block; width: 120px; height: 120px; object-fit: cover; }
figcaption { font-size: .8em; text-align: center; }
pre { background: #f4f4f4; padding: .8em; overflow-x: auto; font-size: .85em; }
.missing { color: #a00; font-size: .85em; }
"""


def render_report(
    title: str,
    epochs: Sequence[dict[str, float]],
    results: dict[str, dict],
    config_json: str,
    examples: Sequence[tuple[str, int, list[int], int]] = (),
    image_paths: Sequence[str] = (),
    notes: Sequence[str] = (),
) -> str:
    """The report page as one self-contained HTML string."""
    xs = [row["epoch"] for row in epochs]
    curves = svg_curve(
        xs, [row.get("rsum", 0.0) for row in epochs], "dev R-sum per epoch"
    ) + svg_curve(
        [row["epoch"] for row in epochs if "loss" in row],
        [row["loss"] for row in epochs if "loss" in row],
        "training loss per epoch",
    )
    parts = [
        '<!DOCTYPE html><html><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        "".join(f"<p>{html.escape(note)}</p>" for note in notes),
        "<h2>Curves</h2>",
        f'<div class="curves">{curves}</div>',
        "<h2>Retrieval (best dev epoch)</h2>",
        _table(results),
    ]
    if examples:
        parts += [
            "<h2>Example queries (dev): top-5 images per caption</h2>",
            _example_html(examples, image_paths),
        ]
    parts += [
        "<h2>Config</h2>",
        f"<pre>{html.escape(config_json)}</pre>",
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def write_report(
    workdir: str,
    results: dict[str, dict],
    config_json: str,
    examples: Sequence[tuple[str, int, list[int], int]] = (),
    image_paths: Sequence[str] = (),
    title: Optional[str] = None,
    notes: Sequence[str] = (),
) -> str:
    """Writes ``<workdir>/report.html`` atomically; returns its path."""
    page = render_report(
        title or f"vse_tf training report: {os.path.abspath(workdir)}",
        read_metrics(workdir),
        results,
        config_json,
        examples,
        image_paths,
        notes,
    )
    path = os.path.join(workdir, REPORT_HTML)
    io_utils.atomic_write_text(path, page)
    return path


def results_from_files(workdir: str) -> dict[str, dict]:
    """``{split: metrics}`` from the ``metrics_<split>.json`` files of a workdir."""
    results = {}
    for split in ("dev", "test"):
        path = os.path.join(workdir, f"metrics_{split}.json")
        if os.path.exists(path):
            with open(path) as f:
                results[split] = json.load(f)
    return results
