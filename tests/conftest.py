"""Test tiers and CI strictness, for every test under tests/.

* **Tiers.** ``pytest`` runs the default tier: unit and small integration
  tests, minutes on a 2-core machine. Tests marked
  ``@pytest.mark.slow(reason="...")`` (real Flickr8k data, subprocess runs of
  the commands, training to a quality bar, browsers, export round trips that
  train a model) are deselected unless ``--run-slow`` is given; every such
  mark must say why in one line (a mark without ``reason`` is a collection
  error). Tests marked ``beam`` (tests/pipelines) need the ``beam`` extra in a
  venv of its own and run only when ``-m`` names them (``pytest -m beam``).
* **CI hides nothing.** Under ``CI=true`` a skipped test fails instead,
  because CI installs every extra and tool the tests use (FAISS, LiteRT, HED,
  GloVe, the Lite weights, torch, Chromium), so a broken install step cannot
  turn green. Only skips whose reason starts with `testing_utils.NOT_HERE`
  (a platform or setting CI does not have by design) stay skips.
* TensorFlow's C++ start-up lines are hidden (``TF_CPP_MIN_LOG_LEVEL=2``).
"""

from __future__ import annotations

import os
import pathlib

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tests import testing_utils  # noqa: E402  (after the environment is set)

# The web tests' index and server (tests/web, tests/trainers/vse_serve_test.py).
pytest_plugins = ["tests.web_fixtures"]

_TESTS = pathlib.Path(__file__).resolve().parent
_SLOW_HELP = (
    "also run the slow tier: real data, subprocess runs of the commands, "
    "training to a quality bar, browsers, export round trips (CI runs it)"
)


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", default=False, help=_SLOW_HELP)


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slow(reason): the slow tier, run with --run-slow; say why"
    )


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def pytest_collection_modifyitems(config, items):
    unexplained = [
        item.nodeid
        for item in items
        if (mark := item.get_closest_marker("slow")) is not None
        and not mark.kwargs.get("reason")
    ]
    if unexplained:
        raise pytest.UsageError(
            "@pytest.mark.slow needs reason=...: " + ", ".join(unexplained[:5])
        )
    if config.getoption("--run-slow"):
        return
    keep = [item for item in items if item.get_closest_marker("slow") is None]
    if len(keep) < len(items):
        config.hook.pytest_deselected(
            items=[item for item in items if item.get_closest_marker("slow")]
        )
        config._vse_tf_slow_deselected = len(items) - len(keep)
        items[:] = keep


def _beam_tier(config) -> bool:
    return "beam" in (config.getoption("markexpr") or "")


def pytest_ignore_collect(collection_path, config):
    """tests/pipelines (the Beam tier) is collected only by ``pytest -m beam``."""
    if collection_path.name == "pipelines" and collection_path.parent == _TESTS:
        return None if _beam_tier(config) else True
    return None


def pytest_report_collectionfinish(config):
    lines = []
    slow = getattr(config, "_vse_tf_slow_deselected", 0)
    if slow:
        lines.append(f"slow tier: {slow} tests not run (add --run-slow)")
    if not _beam_tier(config):
        lines.append("beam tier: not run (pytest -m beam, in the beam venv)")
    return lines


def _strict(report) -> None:
    """Under CI=true, turns a skip that CI should not have into a failure."""
    if not (_in_ci() and report.skipped) or hasattr(report, "wasxfail"):
        return
    reason = str(report.longrepr[-1] if isinstance(report.longrepr, tuple) else "")
    reason = reason.removeprefix("Skipped: ")
    if reason.startswith(testing_utils.NOT_HERE):
        return
    report.outcome = "failed"
    report.longrepr = (
        "CI=true: a skip fails in CI, which installs what the tests need; "
        f"fix the install step in .ci/run. The skip said: {reason}"
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _strict(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    _strict(outcome.get_result())


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory) -> testing_utils.TinyExport:
    """The ``tiny`` preset trained and exported once per session: read it only.

    Shared by the modules that only load, query or re-export it; a test that
    changes a workdir or an export trains its own.
    """
    root = tmp_path_factory.mktemp("tiny_export")
    return testing_utils.TinyExport(*testing_utils.train_and_export_tiny(str(root)))
