"""Errors a user can fix, told apart from bugs.

The command-line entry points print a `UserError`'s message as one line (no
traceback) and exit with its ``exit_code``; any other exception is a bug and
keeps its traceback. Library callers catch them like the built-in types they
also are (`ConfigError` is a `ValueError`, `MissingError` a
`FileNotFoundError`).
"""

from __future__ import annotations


class UserError(Exception):
    """A problem in the user's input; the message says what to do.

    Attributes:
        exit_code: What a command exits with (1; 2 for usage errors).
    """

    exit_code = 1


class ConfigError(UserError, ValueError):
    """Flag or config values that are invalid or contradict each other."""

    exit_code = 2


class MissingError(UserError, FileNotFoundError):
    """A file or folder the command needs is not there (data, checkpoint, index)."""


class InputError(UserError, ValueError):
    """An input the user named (an image file, a query) that cannot be used."""
