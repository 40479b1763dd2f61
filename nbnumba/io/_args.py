"""Argument checks shared by the readers and writers of nbnumba.io."""

from __future__ import annotations

import os
import stat

import numpy as np

from nbnumba.errors import ArgumentValueError, InputFileError

__all__ = ["IOArgumentError", "path_name", "readable_name", "read_bytes", "read_all", "sha256_file",
           "as_image"]


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


#: the most bytes read from an input that is not a regular file (a pipe, a
#: device), whose size is not known before: -hkl /dev/zero (or -mat, -mask,
#: -sourcefile, -stol) was read until the kernel's OOM killer ended the run,
#: at 23.2 GiB resident of the machine's 23.5 GiB; nanoBragg.c stops at once
#: ("not enough HKL indices")
STREAM_MAX_BYTES = 1 << 30


def read_bytes(path) -> tuple:
    """``(name, the file's bytes)``: :func:`path_name`, then the whole file
    (:func:`read_all`), or InputFileError "NAME: cannot read: REASON" (the
    readers' one message for a missing or unreadable file)."""
    name = path_name(path)
    try:
        with open(name, "rb") as fh:
            return name, read_all(fh, name)
    except OSError as exc:
        raise _cannot_read(name, exc) from None


def read_all(fh, name: str) -> bytes:
    """The rest of the open binary file ``fh`` (named ``name`` in errors).  A
    regular file larger than the memory available, or a stream (pipe, device)
    of more than STREAM_MAX_BYTES, is an InputFileError, the first before it
    is read."""
    st = os.fstat(fh.fileno())
    if stat.S_ISREG(st.st_mode):
        from nbnumba.validate import available_memory, format_bytes
        avail = available_memory()
        if st.st_size > avail:
            raise InputFileError("%s: the file holds %s, more than the %s of memory available "
                                 "to read it" % (name, format_bytes(st.st_size), format_bytes(avail)))
        return fh.read()
    data = fh.read(STREAM_MAX_BYTES + 1)
    if len(data) > STREAM_MAX_BYTES:
        raise InputFileError("%s: more than %d MiB from a stream (not a regular file) and no "
                             "end in sight: an endless device such as /dev/zero?"
                             % (name, STREAM_MAX_BYTES >> 20))
    return data


def sha256_file(path) -> str:
    """The hex sha256 of the file ``path``, read in 1 MiB blocks (OSError as
    open() raises it): the one file hash of the series manifest, the tools'
    checksums and the start-up library's check."""
    import hashlib
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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
