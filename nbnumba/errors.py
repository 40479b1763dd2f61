"""Exceptions with one-line, user-facing messages (the CLI prints them, exit 2)."""
import contextlib
import sys
import warnings


def one_line(s: str) -> str:
    """s with its non-printable characters escaped (``\\x1c``, ``\\n``): messages
    quote text from input files and flags, which may hold control characters
    (a byte flipped to 0x1c in an HKL file is whitespace to str.split and a
    line break to a terminal)."""
    if s.isprintable():
        return s
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                   for c in s)


class NBError(Exception):
    """Base class: message is a single line meant for the user."""

    exit_code = 2

    def __str__(self) -> str:
        return one_line(super().__str__())


class UsageError(NBError):
    """Bad flag or flag value on the command line."""


class InputFileError(NBError):
    """Malformed or unreadable input file; message names the file (and line)."""


class ConfigError(NBError):
    """A request that cannot be simulated (impossible geometry, sizes, NaN...)."""


class NBWarning(RuntimeWarning):
    """A warning about the user's input that the run goes on with (an SMV header
    that runs past HEADER_BYTES, read as nanoBragg reads it); the CLI,
    nbnumba-series and the tools print it as one line, ``nbnumba: warning:
    ...`` (:func:`warnings_as_lines`)."""


@contextlib.contextmanager
def warnings_as_lines(prog: str):
    """Inside: NBWarnings are printed to stderr as one line, ``prog: warning:
    ...``, like the errors; other warnings keep Python's format (so that an
    unexpected numpy warning still shows where it came from)."""
    with warnings.catch_warnings():
        default = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            if issubclass(category, NBWarning):
                print("%s: warning: %s" % (prog, one_line(str(message))), file=sys.stderr)
            else:
                default(message, category, filename, lineno, file, line)
        warnings.showwarning = show
        yield
