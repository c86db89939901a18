"""The repository itself: what the README's commands write is never committed."""

import pathlib
import re
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
_OUTPUT_FLAGS = re.compile(r"--(?:output|output_dir|workdir|dir)[= ]([^\s`'\"]+)")


def _readme_output_folders() -> set[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    folders = set()
    for value in _OUTPUT_FLAGS.findall(text):
        if "://" in value or value.startswith(("/", "$", "<", "~")) or value.isupper():
            continue  # URLs, absolute paths, placeholders: not in the checkout
        folders.add(value.strip("/").split("/")[0])
    return folders


def test_the_readme_names_output_folders():
    # Hand-checked, so a regex that finds nothing cannot pass the next test.
    assert {"runs", "models", "indexes", "idx"} <= _readme_output_folders()


def test_every_output_folder_of_the_readme_is_ignored_by_git():
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout with git installed")
    for folder in sorted(_readme_output_folders()):
        probe = f"{folder}/anything.bin"
        ignored = subprocess.run(
            ["git", "check-ignore", "-q", probe], cwd=ROOT, check=False
        )
        assert ignored.returncode == 0, f"{folder}/ is not in .gitignore"
