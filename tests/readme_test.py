"""README's "Use it from Python" block runs as written (paths swapped for tiny ones)."""

import contextlib
import io
import os
import re

import pytest

from tests import testing_utils
from vse_tf.retrieval import index_build, index_lib
from vse_tf.serving import saved_model_lib

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


def test_use_it_from_python_block_runs(tmp_path):
    workdir, data_dir = testing_utils.train_tiny_workdir(str(tmp_path))
    export_dir = saved_model_lib.export_saved_model(workdir, str(tmp_path / "models"))
    images = os.path.join(data_dir, "images")
    index_dir = str(tmp_path / "idx")
    index_build.build_image_index(export_dir, images, index_dir, verbose=0)
    code = _block("Use it from Python")
    for old, new in (
        ('"runs/demo"', repr(workdir)),
        ('"photos/*.jpg"', repr(os.path.join(images, "*.png"))),
        ('"idx/photos"', repr(index_dir)),
    ):
        assert old in code, old
        code = code.replace(old, new)
    scope = {}
    with contextlib.redirect_stdout(io.StringIO()) as out:
        exec(compile(code, "README.md", "exec"), scope)  # noqa: S102
    assert scope["images"].shape == (40, 16) and scope["texts"].shape == (2, 16)
    assert scope["scores"].shape == (2, 40) and len(scope["best"]) == 2
    assert len(scope["hits"]) == 5 and 0 <= scope["metrics"]["rsum"] <= 600
    printed = out.getvalue().split()
    assert printed[0] in index_lib.load_index(index_dir).items
    assert float(printed[-1]) == scope["metrics"]["rsum"]
