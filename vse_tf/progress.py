"""Progress of long work: a bar on a terminal, plain periodic lines elsewhere.

A Keras progress bar redraws one line with ``\\r``; written to a log file or
a CI console it becomes one long blob of escape codes. When stdout is not a
terminal, `bar` and `TrainProgress` print a plain line every
``interval`` seconds (and one at the end) instead.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Optional, TextIO

import keras

DEFAULT_INTERVAL = 30.0
"""Seconds between two plain progress lines."""


def interactive(stream: Optional[TextIO] = None) -> bool:
    """Whether ``stream`` (default stdout) is a terminal."""
    stream = stream or sys.stdout
    return bool(getattr(stream, "isatty", lambda: False)())


def _duration(seconds: float) -> str:
    seconds = int(round(max(seconds, 0)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class PlainProgress:
    """``add(n)`` progress printed as plain lines (the Progbar interface we use).

    Args:
        total: Units of work in all.
        unit_name: What a unit is (``image``).
        label: Printed at the start of each line.
        interval: Seconds between lines.
        stream: Where to print (default stdout).
    """

    def __init__(
        self,
        total: int,
        unit_name: str = "step",
        label: str = "",
        interval: float = DEFAULT_INTERVAL,
        stream: Optional[TextIO] = None,
    ):
        self.total = int(total)
        self.unit_name = unit_name
        self.label = label or f"{unit_name}s"
        self.interval = interval
        self.stream = stream
        self.done = 0
        # The clock runs from the start of the work, so the first batch's
        # time counts (a single batch is not "infinitely fast").
        self._start = time.monotonic()
        self._last = self._start
        self._resumed = 0

    def resume(self, count: int) -> None:
        """Records ``count`` units done by an earlier run: counted, not speed."""
        self.done += int(count)
        self._resumed += int(count)

    def add(self, count: int) -> None:
        """Records ``count`` more units done; prints when a line is due."""
        self.done += int(count)
        now = time.monotonic()
        if self.done >= self.total or now - self._last >= self.interval:
            self._last = now
            self._print(now)

    def _print(self, now: float) -> None:
        elapsed = now - self._start
        fresh = self.done - self._resumed
        rate = fresh / elapsed if elapsed > 0 else 0.0
        line = f"{self.label}: {self.done}/{self.total} {self.unit_name}s"
        if rate > 0:
            line += f", {rate:.1f} {self.unit_name}s/s"
            if self.done < self.total:
                line += f", ETA {_duration((self.total - self.done) / rate)}"
        line += f", {_duration(elapsed)} elapsed"
        print(line, file=self.stream or sys.stdout, flush=True)


class TerminalProgress(keras.utils.Progbar):
    """Keras's redrawn bar, with `PlainProgress.resume` (work of an earlier run)."""

    def resume(self, count: int) -> None:
        if count:
            self.add(count)


def bar(total: int, unit_name: str = "step", label: str = "") -> Any:
    """A Keras progress bar on a terminal, else a `PlainProgress`.

    Both take ``add(n)`` (work done now) and ``resume(n)`` (work an earlier,
    interrupted run did: counted, never taken for speed).
    """
    if interactive():
        return TerminalProgress(total, unit_name=unit_name)
    return PlainProgress(total, unit_name, label)


class TrainProgress(keras.callbacks.Callback):
    """Plain training progress lines: epoch, step, loss, pairs/s, ETA.

    Used instead of Keras's bar when stdout is not a terminal.

    Args:
        steps_per_epoch: Steps in one epoch.
        epochs: Last epoch (for the ETA).
        batch_size: Pairs per step.
        interval: Seconds between lines.
        stream: Where to print (default stdout).
    """

    def __init__(
        self,
        steps_per_epoch: int,
        epochs: int,
        batch_size: int,
        interval: float = DEFAULT_INTERVAL,
        stream: Optional[TextIO] = None,
    ):
        super().__init__()
        self.steps_per_epoch = steps_per_epoch
        self.epochs = epochs
        self.batch_size = batch_size
        self.interval = interval
        self.stream = stream
        self.epoch = 0
        self._steps_done = 0
        self._start = self._last = time.monotonic()

    def on_train_begin(self, logs=None):
        self._start = self._last = time.monotonic()
        self._steps_done = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        self._steps_done += 1
        now = time.monotonic()
        last_step = batch + 1 == self.steps_per_epoch
        if now - self._last < self.interval and not last_step:
            return
        self._last = now
        elapsed = now - self._start
        rate = self._steps_done / elapsed if elapsed > 0 else 0.0
        remaining = (self.epochs - self.epoch) * self.steps_per_epoch - (batch + 1)
        loss = (logs or {}).get("loss")
        line = f"epoch {self.epoch + 1}/{self.epochs} step {batch + 1}/"
        line += f"{self.steps_per_epoch}"
        if loss is not None:
            line += f" loss {float(loss):.4f}"
        if rate > 0:
            line += f", {rate * self.batch_size:.0f} pairs/s"
            line += f", ETA {_duration(remaining / rate)} (training only)"
        print(line, file=self.stream or sys.stdout, flush=True)
