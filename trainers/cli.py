"""What every command line shares: config flags, ``--help``, errors, quiet logs.

Flags are absl's and live only in the entry-point packages (`trainers`,
`export`); the library under `vse_tf/` takes plain arguments.

* `define_config_flags` makes one flag per config field, straight from the
  dataclasses in `vse_tf.config` (name, type, allowed values, and the help
  text of the field's docstring), so a new field reaches every command line
  by being added there. Their defaults are the values of the chosen
  ``--preset``, so ``--help`` shows what a run will use.
* `run` replaces ``absl.app.run``: ``--help`` lists every flag of the
  command in groups and exits 0; a bad flag or a `vse_tf.errors.UserError`
  prints one line and exits 2 (usage) or 1, without a traceback
  (``--verbosity=1`` or ``VSE_TF_TRACEBACK=1`` brings it back); anything
  else is a bug and keeps its traceback.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import textwrap
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from absl import app, flags, logging

from vse_tf import config as config_lib
from vse_tf import errors

FLAGS = flags.FLAGS

GROUP_TITLES = {"data": "Data", "model": "Model", "train": "Training"}
"""``--help`` section of each config section."""

_HELP_ARGS = ("-h", "-?", "--help", "--helpshort", "-help")
_NAMED_WEIGHTS = {"vgg_weights": "imagenet|none|hed|PATH"}

# Flags each group holds, in definition order; filled by the define_* calls.
_GROUPS: dict[str, list[str]] = {}
_CONFIG_FLAGS: list[str] = []


def preset_from_argv(argv: Sequence[str], default: str = "demo") -> str:
    """The ``--preset`` value on a command line (before absl parses it)."""
    for index, arg in enumerate(argv):
        if arg.startswith("--preset="):
            return arg.split("=", 1)[1]
        if arg == "--preset" and index + 1 < len(argv):
            return argv[index + 1]
    return default


def define_config_flags(
    sections: Sequence[str] = ("data", "model", "train"),
    exclude: Sequence[str] = (),
) -> None:
    """Defines ``--preset`` and one flag per field of the named config sections.

    Each flag's default is the field's value in the ``--preset`` found on
    the command line (``demo`` without one), so ``--help`` shows what a run
    will use; `config_from_flags` applies only the flags actually given.

    Args:
        sections: Config sections to expose (``data``, ``model``, ``train``).
        exclude: Field names to leave out.
    """
    preset_name = preset_from_argv(sys.argv)
    if preset_name not in config_lib.PRESETS:
        preset_name = "demo"  # the --preset enum refuses the value with a message
    preset = config_lib.get_config(preset_name)
    flags.DEFINE_enum(
        "preset",
        "demo",
        sorted(config_lib.PRESETS),
        "Named config; every flag below defaults to its value (see vse_tf/config.py).",
    )
    _GROUPS.setdefault("Preset", []).append("preset")
    allowed = config_lib.choices()
    for section in sections:
        cls = config_lib.SECTIONS[section]
        described = config_lib.field_help(cls)
        values = getattr(preset, section)
        for field in dataclasses.fields(cls):
            if field.name in exclude:
                continue
            _define(
                field.name,
                getattr(values, field.name),
                described.get(field.name, ""),
                allowed.get(field.name),
            )
            _GROUPS.setdefault(GROUP_TITLES[section], []).append(field.name)
            _CONFIG_FLAGS.append(field.name)


def _define(name: str, default: Any, help_text: str, allowed) -> None:
    if allowed:
        flags.DEFINE_enum(name, default, list(allowed), help_text)
    elif isinstance(default, bool):
        flags.DEFINE_bool(name, default, help_text)
    elif isinstance(default, int):
        flags.DEFINE_integer(name, default, help_text)
    elif isinstance(default, float):
        flags.DEFINE_float(name, default, help_text)
    else:
        flags.DEFINE_string(name, default, help_text)


def group(title: str, *names: str) -> None:
    """Lists a command's own flags under ``title`` in its ``--help``."""
    _GROUPS.setdefault(title, []).extend(names)


def config_from_flags(**extra: Any) -> config_lib.Config:
    """The ``--preset`` config with every config flag the user gave applied.

    Args:
        **extra: Further ``field=value`` overrides (``None`` = keep).

    Returns:
        The resolved config (not yet validated; see `config_lib.validate`).
    """
    config = config_lib.get_config(FLAGS.preset)
    return config_lib.override(config, **given_values(_CONFIG_FLAGS), **extra)


def given_config_flags() -> list[str]:
    """The config flags (``--preset`` first) given on the command line."""
    return [name for name in ("preset", *_CONFIG_FLAGS) if FLAGS[name].present]


def given_values(names: Sequence[str]) -> dict[str, Any]:
    """``{name: value}`` of the flags among ``names`` given on the command line."""
    return {name: FLAGS[name].value for name in names if FLAGS[name].present}


def print_config_and_exit(config: config_lib.Config) -> None:
    """``--print_config``: the resolved config as JSON on stdout, exit 0."""
    print(config.to_json())
    sys.exit(0)


def define_print_config() -> flags.FlagHolder:
    holder = flags.DEFINE_bool(
        "print_config", False, "Print the resolved config as JSON and exit."
    )
    group("Output", "print_config")
    return holder


def define_runner_flags() -> tuple[flags.FlagHolder, flags.FlagHolder]:
    """``--runner`` and ``--pipeline_options`` (Beam's own flags pass through).

    Returns:
        Their holders; `pipeline_options` joins the second with whatever
        follows ``--`` on the command line.
    """
    from vse_tf.pipelines import runners  # noqa: PLC0415 (no Beam imported)

    runner = flags.DEFINE_enum(
        "runner",
        runners.LOCAL,
        runners.RUNNERS,
        "local: in this process. A Beam runner: the same job as an Apache Beam "
        'pipeline (pip install -e ".[beam]"), on local processes or a cluster.',
    )
    options = flags.DEFINE_string(
        "pipeline_options",
        "",
        "Beam's own flags for a Beam runner, e.g. '--num_workers=8 "
        "--region=europe-west4' (or give them after --).",
    )
    group("Runner", "runner", "pipeline_options")
    return runner, options


def pipeline_options(holder: flags.FlagHolder, argv: list[str]) -> list[str]:
    """``--pipeline_options`` split like a shell line, then the args after ``--``."""
    from vse_tf.pipelines import runners  # noqa: PLC0415

    return runners.split_options(holder.value) + list(argv[1:])


# ---------------------------------------------------------------------------
# --help.


def help_text(program: str, doc: str, module: str = "__main__") -> str:
    """The grouped ``--help`` page of a command."""
    lines = [f"usage: {program} [flags]", ""]
    if doc:
        lines += [doc.strip(), ""]
    preset = preset_from_argv(sys.argv)
    if "preset" in FLAGS and preset in config_lib.PRESETS:
        lines += [f"Defaults below are those of --preset={preset}.", ""]
    shown = set()
    for title, names in _GROUPS.items():
        names = [n for n in names if n in FLAGS and n not in shown]
        if not names:
            continue
        lines.append(f"{title}:")
        for name in names:
            lines += _describe(FLAGS[name])
            shown.add(name)
        lines.append("")
    # absl files flags of a module run as __main__ under sys.argv[0].
    modules = {module, sys.argv[0]} if module == "__main__" else {module}
    main_flags = [
        flag
        for module_name, module_flags in FLAGS.flags_by_module_dict().items()
        if module_name in modules
        for flag in module_flags
        if flag.name not in shown
    ]
    if main_flags:
        lines.append("Flags:")
        for flag in main_flags:
            lines += _describe(flag)
            shown.add(flag.name)
        lines.append("")
    lines.append(
        "absl's own flags (--verbosity, --flagfile, ...): --helpfull. "
        "--verbosity=1 shows tracebacks."
    )
    return "\n".join(lines) + "\n"


def _describe(flag: flags.Flag) -> list[str]:
    if flag.boolean:
        head = f"  --[no]{flag.name}"
    else:
        head = f"  --{flag.name}"
    default = flag.default
    if isinstance(default, str):
        default = repr(default)
    elif isinstance(default, list):
        default = ",".join(default)
    head += f" (default: {default})"
    body = flag.help or ""
    enum_values = getattr(flag.parser, "enum_values", None)
    if enum_values:
        body = body.removeprefix(f"<{'|'.join(enum_values)}>: ")
        if not all(value in body for value in enum_values):
            body += f" One of: {', '.join(enum_values)}."
    indent = " " * 6
    return [head] + textwrap.wrap(
        body, width=79, initial_indent=indent, subsequent_indent=indent
    )


# ---------------------------------------------------------------------------
# Running a command.


def quiet_logs() -> None:
    """No TensorFlow Python INFO chatter (checkpoint sharding, retracing).

    The C++ side is quieted where the entry-point packages are imported
    (their ``__init__``), before TensorFlow is.
    """
    import logging as std_logging

    std_logging.getLogger("tensorflow").setLevel(std_logging.ERROR)
    logging.get_absl_handler().addFilter(_drop_tensorflow_info)


def _drop_tensorflow_info(record) -> bool:
    """False for INFO (and retracing WARNING) lines logged by TensorFlow's code.

    TensorFlow logs per-checkpoint ``Sharding callback duration`` lines and
    tf.function retracing notices through absl; our own INFO lines stay.
    """
    path = (getattr(record, "pathname", "") or "").replace("\\", "/")
    if "/tensorflow/" not in path and "/keras/" not in path:
        return True
    if "retracing" in str(record.msg):
        return False
    return record.levelno > 20  # logging.INFO


def _tracebacks_wanted() -> bool:
    if os.environ.get("VSE_TF_TRACEBACK", "") not in ("", "0"):
        return True
    try:
        return FLAGS.verbosity >= 1
    except (flags.Error, AttributeError):
        return False


def fail(message: str, exit_code: int = 1) -> None:
    """Prints ``error: message`` on stderr and exits (no traceback)."""
    sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()
    sys.exit(exit_code)


def _parser(doc: str, program: str, module: str) -> Callable[[list[str]], list[str]]:
    def parse(argv: list[str]) -> list[str]:
        if any(arg in _HELP_ARGS for arg in argv[1:]):
            sys.stdout.write(help_text(program, doc, module))
            sys.exit(0)
        if "--helpfull" in argv[1:]:
            sys.stdout.write(FLAGS.get_help())
            sys.exit(0)
        try:
            return FLAGS(argv)
        except flags.Error as error:
            fail(f"{str(error).rstrip('.')}. See {program} --help.", 2)

    return parse


def run(
    main: Callable[[list[str]], Any],
    doc: str = "",
    program: str = "",
    takes_arguments: bool = False,
) -> None:
    """Runs ``main`` as a command (see the module docstring).

    Args:
        main: ``main(argv)``; ``argv`` holds the arguments absl did not parse.
        doc: What the command does, shown at the top of ``--help`` (the
            entry point's module docstring).
        program: Name in ``usage:`` (default: ``python -m <module>``).
        takes_arguments: ``main`` reads positional arguments (else any is
            refused as a usage error).
    """
    quiet_logs()
    program = program or _program_name()

    def guarded(argv: list[str]) -> Any:
        if len(argv) > 1 and not takes_arguments:
            fail(f"unexpected arguments {argv[1:]}. See {program} --help.", 2)
        try:
            return main(argv)
        except errors.UserError as error:
            _report(error, error.exit_code)
        except app.UsageError as error:
            _report(error, 2)
        except (
            FileNotFoundError,
            FileExistsError,
            NotADirectoryError,
            IsADirectoryError,
            PermissionError,
        ) as error:
            _report(error, 1)
        except KeyboardInterrupt:
            fail("interrupted; rerun the same command to continue", 130)

    app.run(guarded, flags_parser=_parser(doc, program, main.__module__))


def _report(error: BaseException, exit_code: int) -> None:
    if _tracebacks_wanted():
        traceback.print_exc()
    else:
        logging.flush()
    message = str(error)
    if (
        isinstance(error, OSError)
        and error.filename
        and str(error.filename) not in message
    ):
        message = f"{error.filename}: {message}"
    hint = getattr(error, "hint", "")
    fail(message + (f"\n  {hint}" if hint else ""), exit_code)


def _program_name() -> str:
    main_module = sys.modules.get("__main__")
    spec = getattr(main_module, "__spec__", None)
    if spec is not None and spec.name and spec.name != "__main__":
        return f"python -m {spec.name}"
    return os.path.basename(sys.argv[0])
