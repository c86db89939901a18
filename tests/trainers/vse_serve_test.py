"""vse-serve's mistakes: one line each, no traceback, before it binds a port."""

from __future__ import annotations

import pytest

from tests import testing_utils

pytestmark = pytest.mark.slow(reason="runs vse-serve as a subprocess")


def _serve(*flags):
    return testing_utils.run_python(
        "-m", "trainers.vse_serve", *flags, "--port=0", user_env=True, timeout=300
    )


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--index=/nonexistent/index"], "no index in /nonexistent/index"),
        (["--index={index}", "--captions={index}"], "takes a caption index"),
        (["--index={index}", "--model=/nonexistent/model"], "/nonexistent/model is"),
    ],
)
def test_mistakes_are_one_line(served, flags, message):
    result = _serve(*(flag.format(index=served["index"]) for flag in flags))
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if message in line]
    assert errors, result.stderr[-2000:]
