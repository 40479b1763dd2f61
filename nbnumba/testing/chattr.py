"""chattr(1) flags and read-only mounts for tests: an append-only or
immutable file or folder, a folder on a read-only file system.

Setting them needs CAP_LINUX_IMMUTABLE (root) and a file system that keeps
them (ext4, xfs, btrfs; not tmpfs before Linux 6.0).  Where this process
cannot, :func:`flagged` makes ``nbnumba.io.atomic``'s flag reader report the
flag instead, so a test checks the refusal either way, and the real ioctl
where the machine allows it.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import sys
from typing import Iterator

from nbnumba.io import atomic

APPEND = atomic._FS_APPEND_FL
IMMUTABLE = atomic._FS_IMMUTABLE_FL
_FS_IOC_SETFLAGS = 0x40086602


def _change(path: str, flag: int, on: bool) -> bool:
    """Set or clear ``flag`` on ``path`` with FS_IOC_SETFLAGS; False where refused."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        buf = bytearray(8)
        fcntl.ioctl(fd, atomic._FS_IOC_GETFLAGS, buf, True)
        flags = int.from_bytes(buf[:4], sys.byteorder)
        flags = flags | flag if on else flags & ~flag
        fcntl.ioctl(fd, _FS_IOC_SETFLAGS, flags.to_bytes(4, sys.byteorder) + bytes(4))
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


@contextlib.contextmanager
def flagged(path, flag: int, monkeypatch) -> Iterator[bool]:
    """``flag`` (APPEND or IMMUTABLE) on ``path`` for the block; yields True when it
    is set on the file system, False when only the flag reader reports it."""
    path = os.fspath(path)
    if _change(path, flag, True):
        try:
            yield True
        finally:
            _change(path, flag, False)
        return
    real = atomic._inode_flags
    target = os.path.realpath(path)

    def reader(p):
        return real(p) | (flag if os.path.realpath(p) == target else 0)

    monkeypatch.setattr(atomic, "_inode_flags", reader)
    try:
        yield False
    finally:
        monkeypatch.setattr(atomic, "_inode_flags", real)


@contextlib.contextmanager
def read_only(folder, monkeypatch) -> Iterator[bool]:
    """An empty read-only file system on ``folder`` (an existing empty folder) for
    the block: a tmpfs mounted there where this process may mount (root with
    CAP_SYS_ADMIN), else ``nbnumba.io.atomic``'s read-only test reports it for
    paths in the folder.  Yields True when the mount is real."""
    folder = os.path.realpath(os.fspath(folder))
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", folder],
                              capture_output=True).returncode == 0
    except OSError:
        done = False
    if done:
        try:
            yield True
        finally:
            subprocess.run(["umount", folder], capture_output=True, check=True)
        return
    real = atomic._on_read_only_fs

    def reader(p):
        p = os.path.realpath(p)
        return real(p) or p == folder or p.startswith(folder + os.sep)

    monkeypatch.setattr(atomic, "_on_read_only_fs", reader)
    try:
        yield False
    finally:
        monkeypatch.setattr(atomic, "_on_read_only_fs", real)
