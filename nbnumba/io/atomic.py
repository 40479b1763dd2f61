"""Crash-safe output files.

Every output file of the simulator is written to a temporary file in the
target's directory, flushed and fsync'ed, then renamed onto the target with
``os.replace``.  A failure at any point removes the temporary file, so a
reader never sees a half-written image and a previous good file survives.

Differences from the C program (which uses plain ``fopen(..., "wb")``):

* the target is replaced, not truncated in place: hard links to the old file
  keep the old contents.  Symbolic links are followed (the file they point to
  is replaced), and an existing target keeps its permission bits; a new file
  gets ``0666 & ~umask`` like ``fopen`` would give it.
* :func:`check_not_input` lets the caller refuse to overwrite one of the run's
  own input files (e.g. ``-intfile`` naming the ``-img`` file).
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from typing import Iterable, Iterator

from nbnumba.errors import NBError

__all__ = [
    "OutputFileError",
    "check_not_input",
    "atomic_write_bytes",
    "atomic_open",
]


class OutputFileError(NBError):
    """An output file could not be written; the message names the file."""


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _current_umask() -> int:
    try:
        with open("/proc/self/status", "r", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        pass
    return os.path.normcase(os.path.realpath(a)) == os.path.normcase(os.path.realpath(b))


def check_not_input(path, inputs: Iterable) -> None:
    """Raise :class:`OutputFileError` if ``path`` is one of the ``inputs``.

    Comparison uses the file identity when both exist (so ``./a.img`` and
    ``a.img`` or a symlink to it are recognised), else the resolved paths.
    ``None`` entries in ``inputs`` are ignored.
    """
    p = os.fspath(path)
    for inp in inputs:
        if inp is None:
            continue
        q = os.fspath(inp)
        if _same_file(p, q):
            raise OutputFileError(
                f"refusing to write '{p}': it is also an input file of this run ('{q}')"
            )


def _resolve_target(path: str) -> str:
    # Write through symbolic links, as fopen() would.
    if os.path.islink(path):
        return os.path.realpath(path)
    return path


@contextlib.contextmanager
def atomic_open(path, mode: str = "wb") -> Iterator:
    """Context manager yielding a binary file object that replaces ``path``
    atomically when the ``with`` block ends without an exception.

    On any exception the temporary file is deleted, ``path`` is left as it
    was, and the exception propagates (``OSError`` is converted to
    :class:`OutputFileError` naming ``path``).
    """
    if mode not in ("wb", "w+b", "wb+"):
        raise ValueError(f"atomic_open supports binary write modes only, not {mode!r}")
    shown = os.fspath(path)
    target = _resolve_target(shown)
    directory = os.path.dirname(os.path.abspath(target))
    base = os.path.basename(target)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise OutputFileError(f"cannot write '{shown}': {_describe(exc)}") from None
    try:
        fh = os.fdopen(fd, mode)
    except BaseException:
        os.close(fd)
        _unlink_quietly(tmp)
        raise
    done = False
    try:
        yield fh
        fh.flush()
        os.fsync(fh.fileno())
        try:
            new_mode = stat.S_IMODE(os.stat(target).st_mode)
        except OSError:
            new_mode = 0o666 & ~_current_umask()
        os.fchmod(fh.fileno(), new_mode)
        fh.close()
        os.replace(tmp, target)
        done = True
        _fsync_dir(directory)
    except OSError as exc:
        raise OutputFileError(f"cannot write '{shown}': {_describe(exc)}") from exc
    finally:
        if not fh.closed:
            try:
                fh.close()
            except OSError:
                pass
        if not done:
            _unlink_quietly(tmp)


def _unlink_quietly(name: str) -> None:
    try:
        os.unlink(name)
    except OSError:
        pass


def _fsync_dir(directory: str) -> None:
    try:
        dfd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def atomic_write_bytes(path, data) -> None:
    """Write ``data`` (bytes-like) to ``path`` atomically (see :func:`atomic_open`)."""
    with atomic_open(path, "wb") as fh:
        fh.write(data)
