"""Runner names and Beam pipeline options, with Beam imported only when used."""

from __future__ import annotations

import json
import shlex
from collections.abc import Collection, Sequence
from typing import Any

from vse_tf import errors, io_utils

LOCAL = "local"
"""Today's in-process path (no Beam): the default."""

RUNNERS = (
    LOCAL,
    "FnApiRunner",
    "DirectRunner",
    "DataflowRunner",
    "FlinkRunner",
    "SparkRunner",
)
"""The values of ``--runner``: ``local`` or a Beam runner's name."""

INSTALL_HINT = (
    'the Beam runners need Apache Beam: pip install -e ".[beam]" (in a venv '
    "of its own: Beam caps protobuf < 7, pyarrow < 26 and numpy < 2.5)"
)


def import_beam() -> Any:
    """``apache_beam``, or a `UserError` saying how to install it."""
    try:
        import apache_beam  # noqa: PLC0415 (optional dependency)
    except ImportError:
        raise errors.UserError(INSTALL_HINT) from None
    return apache_beam


def split_options(pipeline_options: str | Sequence[str] = ()) -> list[str]:
    """Beam's own flags from a string (``"--num_workers=4 --region=x"``) or list."""
    if isinstance(pipeline_options, str):
        return shlex.split(pipeline_options)
    return [str(option) for option in pipeline_options]


def check_runner(runner: str) -> None:
    """Raises `ConfigError` naming the choices unless ``runner`` is one."""
    if runner not in RUNNERS:
        raise errors.ConfigError(
            f"unknown runner {runner!r}; use one of {', '.join(RUNNERS)}"
        )


INPUTS_FILE = "inputs.json"
"""The job's inputs (image paths, captions) as a JSON list, written by the
driver beside the shards and read by each worker once: the job graph then
holds only shard ranges, however many inputs there are."""


def write_inputs(folder: str, inputs: Sequence[str]) -> str:
    """Writes `INPUTS_FILE` into ``folder`` (atomically); returns its path."""
    io_utils.makedirs(folder)
    path = f"{folder.rstrip('/')}/{INPUTS_FILE}"
    io_utils.atomic_write_bytes(path, json.dumps(list(inputs)).encode("utf-8"))
    return path


def read_inputs(path: str) -> list[str]:
    """The inputs `write_inputs` wrote."""
    return json.loads(io_utils.read_bytes(path))


def check_written(
    pending: Collection[int], finished: Collection[int], folder: str, flag: str
) -> None:
    """Raises RuntimeError unless the workers wrote every pending shard.

    Args:
        pending: The shards the pipeline was given.
        finished: Those found complete (verified) after it ran.
        folder: Where they were to be written.
        flag: The command-line flag that names ``folder``, for the message.
    """
    missing = sorted(set(pending) - set(finished))
    if missing:
        raise RuntimeError(
            f"the pipeline finished without shards {missing} of {folder}. If "
            f"the workers run on other machines, {flag} must be a folder they "
            "all write (a shared mount or gs://...); otherwise run the same "
            "command again to compute them"
        )


def make_pipeline(runner: str, pipeline_options: str | Sequence[str] = ()) -> Any:
    """A ``beam.Pipeline`` on ``runner`` with the user's pipeline options.

    Args:
        runner: A Beam runner of `RUNNERS` (not ``local``).
        pipeline_options: Passed to Beam as they are (e.g. Dataflow's
            ``--project``, ``--region``, ``--temp_location``,
            ``--num_workers``, ``--requirements_file``; the direct runner's
            ``--direct_running_mode=multi_processing --direct_num_workers=2``).

    Returns:
        The pipeline (use it as a context manager, or ``run()`` it).
    """
    check_runner(runner)
    if runner == LOCAL:
        raise ValueError("the local runner runs in this process, not in Beam")
    beam = import_beam()
    from apache_beam.options.pipeline_options import PipelineOptions  # noqa: PLC0415

    options = PipelineOptions(split_options(pipeline_options))
    if runner == "FnApiRunner":
        from apache_beam.runners.portability.fn_api_runner import (  # noqa: PLC0415
            FnApiRunner,
        )

        return beam.Pipeline(runner=FnApiRunner(), options=options)
    return beam.Pipeline(runner=runner, options=options)
