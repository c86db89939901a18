"""What `pip install` puts into site-packages: no generic top-level names.

The entry-point folders `trainers/` and `export/` install as
``vse_tf_trainers`` and ``vse_tf_export`` (pyproject.toml maps them), so a
user's environment gets no top-level ``trainers``, ``export`` or ``tools``.
"""

from __future__ import annotations

import importlib.util
import pathlib
import shutil
import subprocess
import sys
import zipfile

import pytest

from tests import testing_utils

tomllib = pytest.importorskip(
    "tomllib", reason=testing_utils.NOT_HERE + " tomllib needs Python 3.11+"
)

ROOT = pathlib.Path(__file__).resolve().parents[1]
MAPPED = {"vse_tf_trainers": "trainers", "vse_tf_export": "export"}
_NOT_SOURCE = shutil.ignore_patterns("__pycache__", "*.egg-info")


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _library_packages() -> set[str]:
    return {
        ".".join(init.parent.relative_to(ROOT).parts)
        for init in (ROOT / "vse_tf").rglob("__init__.py")
    }


def test_packages_are_the_library_and_the_two_mapped_entry_folders():
    setuptools = _pyproject()["tool"]["setuptools"]
    assert set(setuptools["packages"]) == _library_packages() | set(MAPPED)
    assert setuptools["package-dir"] == MAPPED
    top_level = {name.split(".")[0] for name in setuptools["packages"]}
    assert top_level == {"vse_tf", *MAPPED}


def test_every_console_script_names_a_run_function_of_an_entry_module():
    scripts = _pyproject()["project"]["scripts"]
    assert len(scripts) == 11  # train, extract, evaluate, 4 export, 4 index/search
    for command, target in scripts.items():
        module, function = target.split(":")
        package, name = module.split(".")
        path = ROOT / MAPPED[package] / f"{name}.py"
        assert path.is_file(), f"{command}: {path} missing"
        assert f"def {function}(" in path.read_text(), f"{command}: no {function}()"


def test_installed_names_resolve_to_the_repository_folders():
    # Only where this checkout is pip-installed (editable or not).
    if importlib.util.find_spec("vse_tf_trainers") is None:
        pytest.skip("vse_tf is not pip-installed here: pip install -e .")
    for package, folder in MAPPED.items():
        spec = importlib.util.find_spec(package)
        assert pathlib.Path(spec.origin).name == "__init__.py"
        assert pathlib.Path(spec.origin).parent.name == folder
    for generic in ("tools",):
        assert importlib.util.find_spec(generic) is None, generic


@pytest.mark.slow(reason="builds the wheel")
def test_the_wheel_holds_no_generic_top_level_name(tmp_path):
    """Builds the wheel from a copy of the sources (setuptools writes build/)."""
    source = tmp_path / "src"
    for name in ("vse_tf", "trainers", "export"):
        shutil.copytree(ROOT / name, source / name, ignore=_NOT_SOURCE)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "-q",
            "-w",
            tmp_path,
            source,
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (wheel,) = tmp_path.glob("vse_tf-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names if "/" in name}
    assert {"vse_tf", "vse_tf_trainers", "vse_tf_export"} <= top_level
    assert not top_level & {"trainers", "export", "tools", "tests", "benchmarks"}
    assert "vse_tf_export/export_saved_model.py" in names
    assert "vse_tf_trainers/vse_search.py" in names
