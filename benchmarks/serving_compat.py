"""Which TensorFlow runtimes (TF Serving releases) load our export?

Released TF Serving binaries lag TensorFlow: Serving 2.20 ships the
TensorFlow 2.20 runtime (tensorflow-text 2.20); 2.19 and earlier older
ones. For each runtime asked for, this script builds (once, cached) a
virtualenv with ``tensorflow==X.*`` and ``tensorflow-text==X.*``, then
loads and runs the export there through the C API, exactly as
``python -m export.check_serving`` does with the current runtime, and
compares every output with the current TensorFlow's Python load.

Example:
    python -m benchmarks.serving_compat --model=models/vse --runtimes=2.20,2.19
"""

from __future__ import annotations

import os
import subprocess
import sys

from absl import app, flags

from vse_tf import io_utils
from vse_tf.serving import serving_check

_MODEL = flags.DEFINE_string(
    "model", None, "Export (version or base path).", required=True
)
_RUNTIMES = flags.DEFINE_list(
    "runtimes", ["2.20", "2.19"], "TensorFlow minor versions."
)
_VENV_ROOT = flags.DEFINE_string(
    "venv_root", None, "Where the virtualenvs live (default <cache>/serving_compat)."
)


def runtime_python(version: str, root: str) -> str:
    """The interpreter of a virtualenv with that TensorFlow (built if missing)."""
    venv = os.path.join(root, f"tf{version}")
    python = os.path.join(venv, "bin", "python")
    marker = os.path.join(venv, ".complete")
    if not os.path.exists(marker):
        print(
            f"building {venv} (tensorflow=={version}.*, tensorflow-text=={version}.*)"
        )
        subprocess.run([sys.executable, "-m", "venv", "--clear", venv], check=True)
        subprocess.run(
            [
                python,
                "-m",
                "pip",
                "install",
                "-q",
                f"tensorflow=={version}.*",
                f"tensorflow-text=={version}.*",
            ],
            check=True,
        )
        open(marker, "w").close()
    return python


def main(argv):
    del argv
    root = _VENV_ROOT.value or os.path.join(
        io_utils.default_cache_dir(), "serving_compat"
    )
    rows = []
    for version in _RUNTIMES.value:
        report = serving_check.check_serving(
            _MODEL.value, python_executable=runtime_python(version, root)
        )
        print(report.format())
        ran = sum(r.ok for r in report.results)
        diffs = [r.max_abs_diff for r in report.results if r.max_abs_diff is not None]
        rows.append(
            (
                version,
                report.tensorflow or "?",
                "yes" if not report.error else "no",
                f"{ran}/{len(report.results)}",
                f"{max(diffs):.1e}" if diffs else "-",
                report.error.splitlines()[0][:120] if report.error else "",
            )
        )
    print("\n| runtime | C library | loads | requests ok | max abs diff | error |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    app.run(main)
