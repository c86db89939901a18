"""metrics.csv and report.html: hand-checked pieces, then a real run's page."""

import csv
import os
import re

import numpy as np
import pytest

from tests import testing_utils
from vse_tf import report as report_lib


def test_append_epoch_replaces_redone_epochs(tmp_path):
    for epoch, rsum in ((1, 10.0), (2, 20.0), (3, 30.0)):
        report_lib.append_epoch(str(tmp_path), {"epoch": epoch, "rsum": rsum})
    # A resumed run redoes epoch 2: rows 2 and 3 of the crashed run go.
    report_lib.append_epoch(str(tmp_path), {"epoch": 2, "rsum": 25.0, "loss": 1.5})
    with open(tmp_path / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == list(report_lib.COLUMNS)
    assert [(r["epoch"], r["rsum"], r["loss"]) for r in rows] == [
        ("1", "10", ""),
        ("2", "25", "1.5"),
    ]
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]


def test_example_queries_rank_images_by_cosine():
    # Two images; caption 0 (image 0) is closer to image 1 than to image 0.
    image_emb = np.array([[1.0, 0.0], [0.0, 1.0]])
    caption_emb = np.array([[0.6, 0.8]] * 5 + [[0.0, 1.0]] * 5)
    captions = [f"c{i}" for i in range(10)]
    examples = report_lib.example_queries(image_emb, caption_emb, captions, 2, k=2)
    assert examples == [("c0", 0, [1, 0], 2), ("c5", 1, [1, 0], 1)]
    top1 = report_lib.example_queries(image_emb, caption_emb, captions, 2, k=1)
    assert top1[0] == ("c0", 0, [1], 2)


def test_svg_curve_scales_points_into_the_box():
    svg = report_lib.svg_curve([1, 2, 3], [10.0, 30.0, 20.0], "t", 160, 120)
    # x: 50 + (e - 1) / 2 * 100; y: 120 - 30 - (v - 10) / 20 * 66.
    assert 'points="50.0,90.0 100.0,24.0 150.0,57.0"' in svg
    assert ">30<" in svg and ">10<" in svg


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    workdir, _ = testing_utils.train_tiny_workdir(str(root), epochs=2)
    return workdir


def test_training_writes_one_csv_row_per_epoch(workdir):
    rows = report_lib.read_metrics(workdir)
    assert [row["epoch"] for row in rows] == [1.0, 2.0]
    for row in rows:
        assert set(row) == set(report_lib.COLUMNS)
        assert row["learning_rate"] == pytest.approx(1e-3)
        assert row["seconds"] > 0 and row["loss"] > 0
    # The CSV's best epoch is the checkpoint the dev metrics were taken from.
    best = max(rows, key=lambda row: row["rsum"])
    dev = report_lib.results_from_files(workdir)["dev"]
    assert dev["rsum"] == pytest.approx(best["rsum"], abs=0.05)


def test_report_page_has_curves_tables_config_and_loading_images(workdir):
    path = os.path.join(workdir, "report.html")
    with open(path, encoding="utf-8") as f:
        page = f.read()
    assert page.count("<svg") == 2 and "<polyline" in page
    assert "dev R-sum per epoch" in page and "training loss per epoch" in page
    assert "<td>dev</td>" in page and "<td>test</td>" in page
    assert "&quot;embed_dim&quot;: 16" in page
    assert page.count('class="example"') == 4
    # 4 queries x top 5, plus the true image where it is not in the top 5.
    missed = len(re.findall(r"true image not in the top 5", page))
    assert page.count("<figure") == 20 + missed
    assert page.count('class="true"') == 4
    assert not re.search(r'(src|href)="(https?:)?//', page)  # nothing fetched
    loaded, total = testing_utils.loaded_images(path)
    assert total == 20 + missed and loaded == total
