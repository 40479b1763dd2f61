"""Another user's rights, for tests of what an ordinary user may not do.

The test machines run as root, for whom every file is writable and every
folder open, so a test of a permission fault needs an ordinary user's rights:
:func:`as_an_ordinary_user` takes the effective ids of ``nobody`` (65534) for
a block and takes root's back after it.  Run as an ordinary user, it changes
nothing (the rights are already an ordinary user's).

While the block runs, modules that were not imported before may be unreadable
(the interpreter's own library may sit in root's home): import what the code
under test needs before the block.  Files made for the block must lie in a
folder ``nobody`` may enter (``tempfile.mkdtemp()`` chmod 0o777; pytest's
``tmp_path`` is under a 0700 folder).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from typing import Iterator, Sequence

#: uid and gid of ``nobody`` on Linux
NOBODY = 65534


@contextlib.contextmanager
def as_an_ordinary_user(groups: Sequence[int] = ()) -> Iterator[None]:
    """``groups``: the supplementary groups the user is a member of (as root)."""
    if os.geteuid() != 0:
        yield
        return
    saved = os.getgroups()
    os.setgroups(list(groups))
    os.setegid(NOBODY)
    os.seteuid(NOBODY)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)
        os.setgroups(saved)


@contextlib.contextmanager
def open_folder(prefix: str = "nb-user-", mode: int = 0o777) -> Iterator[str]:
    """A new temporary folder (``mode``: anyone may enter and write it) for
    the files such a test makes; removed afterwards, the modes of the folders
    the test closed opened again first."""
    top = tempfile.mkdtemp(prefix=prefix)
    try:
        os.chmod(top, mode)
        yield top
    finally:
        for here, dirs, _ in os.walk(top, topdown=True, onerror=None):
            for d in dirs:
                path = os.path.join(here, d)
                if not os.path.islink(path):
                    try:
                        os.chmod(path, 0o755)
                    except OSError:
                        pass
        shutil.rmtree(top, ignore_errors=True)
