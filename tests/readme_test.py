"""The README's "Use it from Python" block runs exactly as written."""

import contextlib
import io
import os
import re

import pytest

from tests import testing_utils
from vse_tf import config as config_lib
from vse_tf import train_lib
from vse_tf.data import demo

pytestmark = pytest.mark.slow(
    reason="trains a model, then runs the README's Python block"
)


def _block(title):
    with open(
        os.path.join(testing_utils.REPO_ROOT, "README.md"), encoding="utf-8"
    ) as f:
        text = f.read()
    section = text[text.index(f"## {title}\n") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_use_it_from_python_block_runs_verbatim(tmp_path, monkeypatch):
    # What the quick start leaves: runs/demo trained on the demo data, drawn
    # into the cache folder (the tiny preset: the same data set, smaller).
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VSE_TF_CACHE", str(tmp_path / "cache"))
    config = config_lib.override(config_lib.get_config("tiny"), cache_dir="")
    train_lib.train_and_evaluate(config, "runs/demo", verbose=0)

    code = _block("Use it from Python")
    scope = {}
    with contextlib.redirect_stdout(io.StringIO()) as out:
        exec(compile(code, "README.md", "exec"), scope)  # noqa: S102

    num_test = len(scope["image_paths"])
    assert num_test == demo.DEMO_DEFAULTS["num_test"]  # the demo's test split
    assert all("/demo/" in path for path in scope["image_paths"])
    dim = config.model.embed_dim
    assert scope["images"].shape == (num_test, dim)
    assert scope["texts"].shape == (2, dim)
    assert scope["scores"].shape == (2, num_test) and len(scope["best"]) == 2
    assert len(scope["hits"]) == 5 and 0 <= scope["metrics"]["rsum"] <= 600
    printed = out.getvalue().split()
    assert printed[0] in scope["image_paths"]
    assert float(printed[-1]) == scope["metrics"]["rsum"]
