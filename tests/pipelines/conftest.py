"""The Beam tier: run with ``pytest -m beam`` where the `beam` extra is installed."""

import pytest


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/pipelines/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.beam)
