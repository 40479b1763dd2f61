"""Argument checks shared by the readers and writers of nbnumba.io."""

from __future__ import annotations

import os

import numpy as np

from nbnumba.errors import ArgumentValueError, InputFileError

__all__ = ["IOArgumentError", "path_name", "readable_name", "read_bytes", "as_image"]


class IOArgumentError(ArgumentValueError):
    """An argument of an nbnumba.io reader or writer that no correct file can be
    made of, or read with (a header value that would break the header, an image
    of the wrong kind, a shape that is not two positive sizes); one line that
    names the argument.  A ConfigError, and a ValueError as these checks were
    before they were NBErrors."""


def path_name(path, what: str = "path") -> str:
    """``path`` as a str file name: a str, bytes or os.PathLike, as ``open()``
    takes them (bytes are decoded as the file system does); anything else
    raises :class:`IOArgumentError` naming ``what``."""
    try:
        name = os.fsdecode(os.fspath(path))
    except TypeError:
        raise IOArgumentError("%s must be a file name (str, bytes or os.PathLike), not %s"
                              % (what, type(path).__name__)) from None
    if "\x00" in name:     # (open() raised "ValueError: embedded null byte")
        raise IOArgumentError("%s %r holds a NUL byte, which no file name can hold" % (what, name))
    return name


def _cannot_read(name: str, exc: OSError) -> InputFileError:
    return InputFileError("%s: cannot read: %s" % (name, exc.strerror or exc))


def readable_name(path) -> str:
    """:func:`path_name`, after checking the file can be opened for reading:
    InputFileError naming it otherwise (a library's own message for a missing
    file was a FileNotFoundError, or an AttributeError from deep inside)."""
    name = path_name(path)
    try:
        with open(name, "rb"):
            pass
    except OSError as exc:
        raise _cannot_read(name, exc) from None
    return name


def read_bytes(path) -> tuple:
    """``(name, the file's bytes)``: :func:`path_name`, then the whole file,
    or InputFileError "NAME: cannot read: REASON" (the readers' one message
    for a missing or unreadable file)."""
    name = path_name(path)
    try:
        with open(name, "rb") as fh:
            return name, fh.read()
    except OSError as exc:
        raise _cannot_read(name, exc) from None


def as_image(image, what: str) -> np.ndarray:
    """np.asarray(image), or IOArgumentError naming ``what`` (a tensor that
    requires grad, a CuPy array...: their conversions raise deep inside)."""
    if getattr(image, "requires_grad", False):
        raise IOArgumentError(f"{what} is a tensor that requires grad: pass its "
                              ".detach() (nbnumba does not detach it for you)")
    try:
        return np.asarray(image)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise IOArgumentError(f"{what} cannot be read as a numpy array "
                              f"({type(image).__name__}: {exc})") from None
