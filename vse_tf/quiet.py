"""Imports TensorFlow without its start-up chatter on stderr.

TensorFlow 2.19+ logs through absl's C++ logging before anything can
configure it, so ``TF_CPP_MIN_LOG_LEVEL`` no longer hides the CUDA probes,
oneDNN and CPU-feature notices (tensorflow/tensorflow#100442), and the
first device query logs ``failed call to cuInit`` at ERROR level on a
machine without a GPU. The command-line entry points and ``import
vse_tf``'s lazy names call `import_tensorflow` first.

Some C++ lines come later and cannot be switched off: libjpeg's ``Corrupt
JPEG data`` warnings, ``local_rendezvous`` aborts when a decode fails, the
oneDNN ``DT_BOOL`` notice. `filter_stderr` (the commands start it) drops
those lines at file descriptor 2 and passes everything else on.

A user who sets ``TF_CPP_MIN_LOG_LEVEL`` themselves, or gives a command
``--verbosity=1`` (or more), sees everything again.
"""

from __future__ import annotations

import atexit
import os
import re
import sys
import threading

_USER_LEVEL = "TF_CPP_MIN_LOG_LEVEL" in os.environ
"""Whether the user set the C++ log level (then nothing is hidden)."""

NOISE = re.compile(
    rb"^(?:"
    # C++ absl log lines (no date: "E0000 00:00:<seconds>"; Python absl
    # lines carry the month and day, and pass)
    rb"[IWEF]0000 00:00:\d+\.\d+ +\d+ [\w.]+\.(?:cc|h|cpp):\d+\]"
    rb"|WARNING: All log messages before absl::InitializeLog"
    rb"|Corrupt JPEG data|Premature end of JPEG file|Unsupported marker type"
    rb"|Invalid SOS parameters|Bogus marker length|Suspension not allowed here"
    rb"|\s+\[\[\{\{function_node"  # the op trace under a rendezvous line
    # The TFLite converter on the strings text tower, whose tensorflow-text
    # custom ops are intended (README "Run on a phone")
    rb"|Custom ops: |Details:$|\ttf\.\w+\(|See instructions: \S+/ops_custom"
    rb")"
)
"""Lines of TensorFlow's C++ runtime and of libjpeg that `filter_stderr` drops."""

_filter: dict = {}


def _wants_everything(argv: list[str]) -> bool:
    if _USER_LEVEL:
        return True
    for arg in argv:
        if arg.startswith("--verbosity=") or arg.startswith("-v="):
            value = arg.split("=", 1)[1]
            if value.lstrip("-").isdigit() and int(value) >= 1:
                return True
    return False


def import_tensorflow() -> None:
    """Imports tensorflow (and probes its devices) with fd 2 sent to /dev/null.

    Does nothing when TensorFlow is already imported or when
    ``TF_CPP_MIN_LOG_LEVEL`` is set. Python exceptions are not hidden: they
    are raised after stderr is restored.
    """
    if "tensorflow" in sys.modules or "TF_CPP_MIN_LOG_LEVEL" in os.environ:
        return
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "1"
    sys.stderr.flush()
    saved = os.dup(2)
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    try:
        import tensorflow as tf

        tf.config.list_physical_devices()  # the CUDA probe logs here
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


def _pump(read_end: int, terminal: int) -> None:
    """Copies lines from the pipe to the real stderr, dropping `NOISE`."""
    pending = b""
    while True:
        chunk = os.read(read_end, 65536)
        if not chunk:
            break
        pending += chunk
        *lines, pending = pending.split(b"\n")
        kept = b"".join(line + b"\n" for line in lines if not NOISE.match(line))
        if kept:
            os.write(terminal, kept)
    if pending and not NOISE.match(pending):
        os.write(terminal, pending)
    os.close(read_end)


def filter_stderr(argv: list[str] | None = None) -> bool:
    """Drops TensorFlow's C++ and libjpeg noise from fd 2 for this process.

    fd 2 becomes a pipe that a thread copies to the real stderr, line by
    line, minus lines matching `NOISE`; Python's own stderr (tracebacks,
    one-line errors, warnings) passes unchanged. At exit the real stderr is
    put back and the pipe drained. Nothing happens when the user set
    ``TF_CPP_MIN_LOG_LEVEL`` or ``argv`` asks for ``--verbosity`` >= 1.

    Returns:
        Whether the filter is on.
    """
    if _filter or _wants_everything(list(sys.argv if argv is None else argv)):
        return bool(_filter)
    sys.stderr.flush()
    terminal = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    thread = threading.Thread(
        target=_pump, args=(read_end, terminal), name="vse_tf-stderr", daemon=True
    )
    thread.start()
    _filter.update(terminal=terminal, thread=thread)
    atexit.register(stop_filter)
    return True


def stop_filter() -> None:
    """Puts the real stderr back on fd 2 and writes what the pipe still holds."""
    if not _filter:
        return
    try:
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    os.dup2(_filter["terminal"], 2)  # the pipe's last writer: the pump sees EOF
    _filter["thread"].join(timeout=5)
    os.close(_filter["terminal"])
    _filter.clear()
