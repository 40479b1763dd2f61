"""Exceptions with one-line, user-facing messages (the CLI prints them, exit 2)."""
import contextlib
import sys
import warnings


def did_you_mean(word: str, known) -> str:
    """`` (did you mean X?)`` for the known option closest to a mistyped
    ``word`` (its own lower case first: options are case-sensitive), or ``""``."""
    import difflib
    known = sorted(known)
    close = ([word.lower()] if word.lower() in known and word.lower() != word
             else difflib.get_close_matches(word, known, n=1, cutoff=0.75))
    return " (did you mean %s?)" % close[0] if close else ""


#: the one message for a working directory that was removed
CWD_GONE = ("the working directory no longer exists (it was removed): cd to an existing "
            "directory")


def cwd_gone() -> bool:
    """Whether the working directory was removed (os.getcwd raises): every
    relative path, and some absolute ones (os.path.realpath), is resolved
    against it, and a run there ended in a FileNotFoundError traceback."""
    import os
    try:
        os.getcwd()
    except FileNotFoundError:
        return True
    return False


def working_directory_gone(prog: str) -> bool:
    """cwd_gone(), after one line on stderr naming ``prog`` when it is."""
    if cwd_gone():
        print("%s: error: %s" % (prog, CWD_GONE), file=sys.stderr)
        return True
    return False


def main_args(argv, prog: str):
    """A command's ``main(argv)``: ``sys.argv[1:]`` when argv is None, else
    argv's words as str (validate.argv_words' rules; paths and numbers
    converted).  A call from Python with anything else (a string, whose
    characters were taken for words; a number; bytes words) prints one line
    naming ``prog`` and gives None; so does a working directory that was
    removed (working_directory_gone)."""
    import os
    if working_directory_gone(prog):
        return None
    if argv is None:
        return list(sys.argv[1:])
    from .validate import argv_words
    try:
        words = argv_words(argv)
    except ConfigError as exc:
        print("%s: error: %s" % (prog, exc), file=sys.stderr)
        return None
    # (numpy's str_ printed as np.str_('a'))
    return [os.fsdecode(os.fspath(w)) if isinstance(w, os.PathLike) else str(w) for w in words]


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


class ArgumentValueError(ConfigError, ValueError):
    """A Python argument with the wrong value (size, range): a ConfigError,
    and a ValueError for callers that catch Python's own kind."""


class ArgumentTypeError(ConfigError, TypeError):
    """A Python argument of the wrong kind (dtype, type): a ConfigError, and
    a TypeError for callers that catch Python's own kind."""


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


class PipeSafeStream:
    """A stand-in for sys.stdout/stderr whose reader may go away (``| head``):
    the first BrokenPipeError points the descriptor at /dev/null and the rest
    of the text goes nowhere, as nanoBragg.c's printf fails silently, so the
    run still writes its files.  Any other write error is dropped the same way,
    unless ``fatal`` (an exception class) is given: then it is raised as
    ``fatal("cannot write to standard output: ...")`` from the print that
    failed (every write is flushed for that); ``fatal`` may be any callable
    that makes the exception from the message.  A closed descriptor (``None``)
    takes the text nowhere.  Everything else is the wrapped stream's."""

    def __init__(self, stream, fatal=None):
        self._stream = stream
        self._fatal = fatal
        # (None: Python started with the descriptor closed, ``>&-``: as a reader
        # that left; print(file=None) would write to stdout instead)
        self.gone = stream is None

    def write(self, text):
        if not self.gone:
            try:
                try:
                    self._stream.write(text)
                except UnicodeEncodeError:
                    # a stream whose encoding lacks a character of the text
                    # (PYTHONIOENCODING=ascii: -h's Angstrom sign was a
                    # traceback): escaped, as Python's own stderr writes it
                    enc = getattr(self._stream, "encoding", None) or "ascii"
                    self._stream.write(text.encode(enc, "backslashreplace").decode(enc))
                if self._fatal is not None:
                    self._stream.flush()
            except OSError as exc:
                self._fail(exc)
        return len(text)

    def flush(self):
        if not self.gone:
            try:
                self._stream.flush()
            except OSError as exc:
                self._fail(exc)

    def _fail(self, exc):
        self.gone = True
        import os
        try:    # the stream's unflushed rest would fail again at exit
            null = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(null, self._stream.fileno())
            finally:
                os.close(null)
        except (OSError, ValueError, AttributeError):
            pass
        if self._fatal is not None and not isinstance(exc, BrokenPipeError):
            raise self._fatal("cannot write to standard output: %s"
                              % (exc.strerror or exc)) from None

    def isatty(self):
        try:
            return self._stream.isatty()
        except (OSError, ValueError, AttributeError):
            return False

    def __getattr__(self, name):
        return getattr(self._stream, name)


@contextlib.contextmanager
def quiet_broken_pipes(stdout_error=None):
    """Inside: a closed pipe (or, without ``stdout_error``, any write error) on
    stdout or stderr ends the printing, not the run (PipeSafeStream); with
    ``stdout_error``, stdout's other write errors raise it.  The streams are
    restored on the way out."""
    saved = sys.stdout, sys.stderr
    sys.stdout = PipeSafeStream(sys.stdout, fatal=stdout_error)
    sys.stderr = PipeSafeStream(sys.stderr)
    try:
        yield
    finally:
        for s in (sys.stdout, sys.stderr):
            try:
                s.flush()
            except Exception:       # (reported already, or nowhere to report it)
                pass
        sys.stdout, sys.stderr = saved
