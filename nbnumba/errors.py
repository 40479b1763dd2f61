"""Exceptions with one-line, user-facing messages (the CLI prints them, exit 2)."""


class NBError(Exception):
    """Base class: message is a single line meant for the user."""

    exit_code = 2


class UsageError(NBError):
    """Bad flag or flag value on the command line."""


class InputFileError(NBError):
    """Malformed or unreadable input file; message names the file (and line)."""


class ConfigError(NBError):
    """A request that cannot be simulated (impossible geometry, sizes, NaN...)."""
