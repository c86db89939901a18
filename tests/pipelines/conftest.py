"""The Beam tier: ``pytest -m beam`` in a venv with the `beam` extra.

tests/conftest.py collects this folder only when ``-m`` names ``beam``; every
test here carries the mark.
"""

import pytest


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/pipelines/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.beam)
