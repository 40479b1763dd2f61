"""Crash-safe output files.

Every output file of the simulator is written to a temporary file in the
target's directory, flushed and fsync'ed, then renamed onto the target with
``os.replace``.  A failure at any point removes the temporary file, so a
reader never sees a half-written image and a previous good file survives.

Rules (see docs/reliability.md):

* Only *regular* files are replaced.  A target that exists and is a character
  device (``/dev/null``) or a FIFO is written to directly, never replaced; a
  FIFO with no reader is refused rather than blocking.  A directory, socket or
  block device is refused.  A regular file that is this process's own standard
  output or error (``-floatfile /dev/stdout > log``) is refused.
* Temporary files are named ``.NAME.nbnumba-PID[-N].tmp`` next to the target.
  Before writing NAME, temporaries of NAME left by a process that no longer
  exists (killed with SIGKILL, power loss) are removed; nothing else is touched.
* :func:`output_set` groups several writes: every file is staged to its
  temporary first and renamed only when all of them were written.  If any
  write fails (or the process is interrupted), every temporary is removed and
  every old file is kept.  SIGINT/SIGTERM are held back during the final
  renames, which take microseconds.

Differences from the C program (which uses plain ``fopen(..., "wb")``):

* the target is replaced, not truncated in place: hard links to the old file
  keep the old contents.  Symbolic links are followed (the file they point to
  is replaced), and an existing target keeps its permission bits; a new file
  gets ``0666 & ~umask`` like ``fopen`` would give it.  A file this user may not
  write is refused, as ``fopen`` refuses it, although the rename would succeed;
  so is another user's link in a sticky folder (the kernel's protected_symlinks).
  The new file takes the old one's group (and, for root, its owner), and a user
  other than root drops set-user-ID and set-group-ID, as a write would.
* a folder on a read-only file system is named as such (os.access said only
  "denied").  A folder that is append-only (``chattr +a``) is refused before the render:
  a file may be added there but not renamed or removed, so the rename would
  fail and leave the temporary behind (``fopen`` would write there).  An
  append-only or immutable file is refused as ``fopen`` refuses it.
* :func:`check_not_input` lets the caller refuse to overwrite one of the run's
  own input files (e.g. ``-intfile`` naming the ``-img`` file).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import itertools
import os
import re
import signal
import stat
import sys
import threading
from typing import Iterable, Iterator, List, Optional, Tuple

from nbnumba.errors import NBError
from nbnumba.io._args import path_name

__all__ = [
    "OutputFileError",
    "check_not_input",
    "check_distinct",
    "check_replaceable",
    "check_writable",
    "folder_refusal",
    "replace_refusal",
    "atomic_write_bytes",
    "atomic_open",
    "output_set",
    "temp_name",
    "remove_stale_temps",
    "is_our_temp",
    "missing_dirs",
    "remove_empty_dirs",
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


def same_file(a: str, b: str) -> bool:
    """One file (its identity: a hard or symbolic link to it counts), or the
    same resolved path when either does not exist."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        pass
    return os.path.normcase(os.path.realpath(a)) == os.path.normcase(os.path.realpath(b))


def check_not_input(path, inputs: Iterable, what: str = "") -> None:
    """Raise :class:`OutputFileError` if ``path`` is one of the ``inputs``.

    Comparison uses the file identity when both exist (so ``./a.img`` and
    ``a.img`` or a symlink to it are recognised), else the resolved paths.
    ``None`` entries in ``inputs`` are ignored.  ``what`` (e.g. ``"-intfile"``)
    is named in the message.
    """
    p = os.fspath(path)
    label = f"{what} " if what else ""
    for inp in inputs:
        if inp is None:
            continue
        q = os.fspath(inp)
        if same_file(p, q):
            raise OutputFileError(
                f"refusing to write {label}'{p}': it is also an input file of this run ('{q}')"
            )


def check_distinct(named: Iterable[Tuple[str, str]]) -> None:
    """Refuse two outputs of one run that are the same file: ``named`` holds
    ``(what, path)`` pairs, e.g. ``("-floatfile", "a.out")``."""
    seen: List[Tuple[str, str]] = []
    for what, path in named:
        p = os.fspath(path)
        if _special_kind(p) == "chr":
            continue            # several outputs may go to /dev/null
        for w0, p0 in seen:
            if same_file(p, p0):
                raise OutputFileError(
                    f"{w0} and {what} both name '{p}': each output needs its own file")
        seen.append((what, p))


def _special_kind(path: str) -> Optional[str]:
    """None for a regular or absent target, else 'chr', 'fifo' or an error word."""
    try:
        st = os.stat(path)          # follows symlinks: /dev/stdout -> the real thing
    except FileNotFoundError:
        return None
    except OSError:
        return None                 # let the real open report it
    m = st.st_mode
    if stat.S_ISREG(m):
        for fd in (1, 2):
            try:
                sf = os.fstat(fd)
            except OSError:
                continue
            if stat.S_ISREG(sf.st_mode) and (sf.st_dev, sf.st_ino) == (st.st_dev, st.st_ino):
                return "stdio"
        return None
    if stat.S_ISCHR(m):
        return "chr"
    if stat.S_ISFIFO(m):
        return "fifo"
    if stat.S_ISDIR(m):
        return "directory"
    if stat.S_ISSOCK(m):
        return "socket"
    if stat.S_ISBLK(m):
        return "block device"
    return "special file"


def check_writable(path, what: str = "") -> None:
    """Cheap up-front check (before a long render) that ``path`` can be an output:
    its directory exists and the target is not a directory, socket, block
    device or this process's redirected stdout/stderr."""
    shown = os.fspath(path)
    label = f"{what} " if what else ""
    kind = _special_kind(shown)
    if kind in ("chr", "fifo"):
        return
    if kind == "stdio":
        raise OutputFileError(f"refusing to write {label}'{shown}': it is this process's "
                              "redirected standard output or error (a regular file)")
    if kind is not None:
        raise OutputFileError(f"cannot write {label}'{shown}': it is a {kind}, not a file")
    target = _resolve_target(shown)
    directory = _folder_of(target)
    try:
        dst = os.stat(directory)
    except OSError as exc:
        # (os.path.isdir said "No such file or directory" for a folder this
        # user may not enter: EACCES hidden)
        raise OutputFileError(f"cannot write {label}'{shown}': {_describe(exc)}") from None
    if not stat.S_ISDIR(dst.st_mode):
        raise OutputFileError(f"cannot write {label}'{shown}': Not a directory")
    why = folder_refusal(directory)
    if why:
        raise OutputFileError(f"cannot write {label}'{shown}': {why}")
    if not may_access(directory, os.W_OK | os.X_OK):
        raise OutputFileError(f"cannot write {label}'{shown}': Permission denied "
                              f"({_folder_words(directory)})")
    check_replaceable(target, shown, label)


#: check access as open() does, with the effective ids, where the system can
_EFFECTIVE = os.access in os.supports_effective_ids


def may_access(path, mode: int) -> bool:
    """os.access with the effective ids (as open() checks), where the system can."""
    return os.access(path, mode, effective_ids=_EFFECTIVE)


def _folder_words(directory: str) -> str:
    """Why a folder this user may not write stops an output: the new file is
    written beside the old one and renamed onto it."""
    return (f"this user may not write the folder '{directory}', where the output is written "
            "under a temporary name, then renamed into place")


#: chattr(1)'s inode flags (linux/fs.h): FS_IOC_GETFLAGS reads them
_FS_IOC_GETFLAGS = 0x80086601
_FS_IMMUTABLE_FL = 0x10
_FS_APPEND_FL = 0x20


def _inode_flags(path: str) -> int:
    """The chattr flags of ``path``: 0 off Linux, on a file system without them,
    or where the path cannot be opened for reading."""
    if not sys.platform.startswith("linux"):
        return 0
    try:
        import fcntl
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except (ImportError, OSError):
        return 0
    try:
        buf = bytearray(8)      # the kernel writes an int there
        fcntl.ioctl(fd, _FS_IOC_GETFLAGS, buf, True)
        return int.from_bytes(buf[:4], sys.byteorder)
    except OSError:
        return 0
    finally:
        os.close(fd)


def _on_read_only_fs(path: str) -> bool:
    """Whether ``path`` lies on a file system mounted read-only."""
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        return False


def folder_refusal(directory: str) -> Optional[str]:
    """Why no output can be written into ``directory`` (the words after "cannot
    write 'NAME': "), or None: a file system mounted read-only, an immutable
    folder (``chattr +i``; os.access says only "denied" to both, even to root),
    or an append-only one (``chattr +a``), where a file may be created but not
    renamed or removed: the temporary would be written, then neither renamed
    into place nor removed."""
    if _on_read_only_fs(directory):
        return (f"Read-only file system (the folder '{directory}' is on a file system "
                "mounted read-only)")
    flags = _inode_flags(directory)
    if flags & _FS_IMMUTABLE_FL:
        return (f"Operation not permitted (the folder '{directory}' is immutable (chattr +i): "
                "no file may be added to it, replaced or removed)")
    if flags & _FS_APPEND_FL:
        return (f"Operation not permitted (the folder '{directory}' is append-only (chattr +a): "
                "files may be added to it but not renamed or removed, and each output is "
                "written under a temporary name, then renamed into place)")
    return None


def _may_unlink_others_files() -> bool:
    """CAP_FOWNER in this process's effective set: root may remove another user's
    file from a sticky folder (an ordinary user, or a root that dropped it, may not)."""
    try:
        with open("/proc/self/status", "r", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("CapEff:"):
                    return bool((int(line.split()[1], 16) >> 3) & 1)     # CAP_FOWNER = 3
    except (OSError, ValueError, IndexError):
        pass
    return os.geteuid() == 0


def replace_refusal(target: str) -> Optional[str]:
    """Why this user may not replace the existing regular file ``target`` (the
    words after "cannot write 'NAME': "), or None:

    * a file this user may not write (``chmod a-w``, another user's file in a
      shared folder): the rename needs only the folder's permission, so it
      would replace the file that fopen() refuses (nanoBragg.c then stops with
      "Permission denied"); root may write any file, as with fopen;
    * another user's file in a folder with the sticky bit (as the system's
      temporary folder): the kernel refuses the rename (EPERM), which used to
      come after the render and left the old file's backup link behind, one
      this user may not remove;
    * an append-only or immutable file (``chattr +a``, ``+i``): fopen() and the
      rename are both refused (EPERM), the rename only after the render.
    """
    try:
        st = os.stat(target)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    if _on_read_only_fs(target):
        return "Read-only file system (the file is on a file system mounted read-only)"
    flags = _inode_flags(target)
    if flags & _FS_IMMUTABLE_FL:
        return "Operation not permitted (the file is immutable (chattr +i): it may not be replaced or removed)"
    if flags & _FS_APPEND_FL:
        return ("Operation not permitted (the file is append-only (chattr +a): it may be added to "
                "but not replaced or removed)")
    if not may_access(target, os.W_OK):
        return "Permission denied (the file exists and this user may not write it)"
    euid = os.geteuid() if hasattr(os, "geteuid") else None
    if euid is None or st.st_uid == euid:
        return None
    directory = _folder_of(target)
    try:
        dst = os.stat(directory)
    except OSError:
        return None
    if dst.st_mode & stat.S_ISVTX and dst.st_uid != euid and not _may_unlink_others_files():
        return ("Operation not permitted (the file is another user's, in a folder with the "
                f"sticky bit, '{directory}', where only its owner may replace or remove it)")
    return None


def check_replaceable(target: str, shown: Optional[str] = None, label: str = "") -> None:
    """OutputFileError when :func:`replace_refusal` has a reason.  ``shown``: the
    name the message gives (default ``target``); ``label``: the flag that named
    it (``-floatfile``)."""
    why = replace_refusal(target)
    if why:
        raise OutputFileError(f"cannot write {label}'{target if shown is None else shown}': {why}")


# ---------------------------------------------------------------------------
# temporary file names
# ---------------------------------------------------------------------------

_counter = itertools.count()
_TEMP_RE = re.compile(r"\.(?P<base>.+)\.nbnumba-(?P<pid>[0-9]+)(?:-[0-9]+)?\.tmp\Z")


#: the most bytes temp_name adds to a file name: ``.`` + ``.nbnumba-PID-N.tmp``,
#: with room for a 7-digit pid (Linux's pid_max is at most 4194304) and a
#: 12-digit counter (_temp_base shortens a name that would pass NAME_MAX)
TEMP_NAME_EXTRA = len(".") + len(".nbnumba-") + 7 + len("-") + 12 + len(".tmp")


#: a file name's limit in bytes (NAME_MAX of Linux, macOS and most file systems)
NAME_MAX = 255


def _temp_base(base: str) -> str:
    """``base`` as its temporary names carry it: itself, or for a name too long
    to take the temporary suffix within NAME_MAX, its first bytes, ``~`` and a
    hash of the whole name (a 254-byte -floatfile, which nanoBragg.c writes,
    failed with "File name too long" after the render)."""
    raw = os.fsencode(base)
    if len(raw) + TEMP_NAME_EXTRA <= NAME_MAX:
        return base
    digest = hashlib.sha1(raw).hexdigest()[:16]
    keep = NAME_MAX - TEMP_NAME_EXTRA - 1 - len(digest)
    return os.fsdecode(raw[:keep]) + "~" + digest


def temp_name(base: str) -> str:
    """The temporary name used while writing ``base`` (a file name, no
    directory), at most NAME_MAX bytes when ``base`` is."""
    return f".{_temp_base(base)}.nbnumba-{os.getpid()}-{next(_counter)}.tmp"


def is_our_temp(name: str, base: Optional[str] = None) -> bool:
    """True if ``name`` is a temporary of ours (of ``base`` if given)."""
    m = _TEMP_RE.match(name)
    return bool(m) and (base is None or m.group("base") == _temp_base(base))


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True                 # exists, belongs to someone else
    except OSError:
        return True
    return True


def remove_stale_temps(directory: str, base: Optional[str] = None) -> int:
    """Remove temporaries of ``base`` (or of any name) in ``directory`` whose
    writing process no longer exists; returns how many were removed."""
    try:
        names = os.listdir(directory or ".")
    except OSError:
        return 0
    n = 0
    for name in names:
        m = _TEMP_RE.match(name)
        if not m or (base is not None and m.group("base") != _temp_base(base)):
            continue
        if _pid_alive(int(m.group("pid"))):
            continue
        try:
            full = os.path.join(directory, name)
            if stat.S_ISREG(os.lstat(full).st_mode):
                os.unlink(full)
                n += 1
        except OSError:
            pass
    return n


def _folder_of(path: str) -> str:
    """The folder that holds ``path``, named as ``path`` names it: a relative
    name stays relative.  (Made absolute, the name of a file in a working
    directory deeper than PATH_MAX, 4096 bytes, cannot be opened: its
    outputs failed with "No such file or directory" where fopen() writes.)"""
    return os.path.dirname(path) or os.curdir


def _resolve_target(path: str) -> str:
    # Write through symbolic links, as fopen() would: a dangling link names the
    # file to create, and a loop of links is fopen()'s ELOOP (the non-strict
    # realpath hands back the loop's own name, and the link was replaced).
    if os.path.islink(path):
        _refuse_planted_link(path)
        try:
            return os.path.realpath(path, strict=True)
        except FileNotFoundError:
            return os.path.realpath(path)
        except OSError as e:
            raise OutputFileError("cannot write '%s': %s" % (path, e.strerror or e)) from None
    return path


def _refuse_planted_link(link: str) -> None:
    """Refuse another user's symbolic link in a folder with the sticky bit that
    everyone may write (as the system's temporary folder), unless the folder
    is the link owner's: the rule of Linux's fs.protected_symlinks, on by
    default, by which the kernel refuses fopen() there.  The link is resolved here, in user space, so the
    kernel never saw it: a link another user planted as ``out.bin`` there made
    this user's run replace whatever file of this user's it pointed at."""
    euid = os.geteuid() if hasattr(os, "geteuid") else None
    if euid is None:
        return
    try:
        lst = os.lstat(link)
        dst = os.stat(_folder_of(link))
    except OSError:
        return
    if (dst.st_mode & stat.S_ISVTX and dst.st_mode & stat.S_IWOTH
            and lst.st_uid not in (euid, dst.st_uid)):
        raise OutputFileError(
            "cannot write '%s': Permission denied (a symbolic link of another user's in a "
            "folder with the sticky bit, '%s': it is not followed, as the kernel's "
            "protected_symlinks rule does not follow it)" % (link, _folder_of(link)))


# ---------------------------------------------------------------------------
# output sets
# ---------------------------------------------------------------------------

class _Staged:
    __slots__ = ("shown", "target", "tmp", "kind", "mode")

    def __init__(self, shown, target, tmp, kind, mode):
        self.shown, self.target, self.tmp, self.kind, self.mode = shown, target, tmp, kind, mode


class _OutputSet:
    """Files staged by :func:`atomic_open` while the set is active."""

    def __init__(self):
        self.staged: List[_Staged] = []

    def discard(self) -> None:
        for s in self.staged:
            _unlink_quietly(s.tmp)
        self.staged = []

    def commit(self) -> None:
        """Rename every staged temporary onto its target (special targets get
        the bytes copied).  On a failure the targets already replaced get their
        old contents back (kept as hard links until the end, or as copies on a
        file system without hard links)."""
        backups: List[list] = []      # [target, backup or None (no old file), replaced]
        done: List[_Staged] = []
        current = None
        try:
            # special targets first: they cannot be rolled back, so do them
            # only after every regular rename is known to be possible
            for s in [s for s in self.staged if s.kind is None]:
                current = s
                bak = None
                if os.path.lexists(s.target):
                    bak = os.path.join(_folder_of(s.target),
                                       temp_name(os.path.basename(s.target)))
                    try:
                        os.link(s.target, bak)
                    except OSError:
                        # no hard links here (vfat, exFAT, some network shares):
                        # a copy.  (Without a backup, a failed rename later in the
                        # set deleted this file's new version, its old one gone.)
                        import shutil
                        try:
                            shutil.copy2(s.target, bak)
                        except BaseException:
                            _unlink_quietly(bak)
                            raise
                entry = [s.target, bak, False]
                backups.append(entry)
                os.replace(s.tmp, s.target)
                entry[2] = True
                done.append(s)
            for s in [s for s in self.staged if s.kind is not None]:
                current = s
                _copy_to_special(s.tmp, s.target, s.shown, s.kind)
                _unlink_quietly(s.tmp)
                done.append(s)
        except BaseException as exc:
            for target, bak, replaced in reversed(backups):
                if bak is None:
                    if replaced:
                        _unlink_quietly(target)
                elif replaced:
                    try:
                        os.replace(bak, target)
                    except OSError:
                        _unlink_quietly(bak)
                else:
                    _unlink_quietly(bak)
            for s in self.staged:
                _unlink_quietly(s.tmp)
            self.staged = []
            if isinstance(exc, OSError) and not isinstance(exc, NBError):
                shown = current.shown if current is not None else "?"
                raise OutputFileError("cannot write '%s': %s (no output file was changed)"
                                      % (shown, _describe(exc))) from None
            raise
        for _, bak, _ in backups:
            if bak is not None:
                _unlink_quietly(bak)
        dirs = {_folder_of(s.target) for s in done if s.kind is None}
        for d in dirs:
            _fsync_dir(d)
        self.staged = []


_local = threading.local()


def _active_set() -> Optional[_OutputSet]:
    return getattr(_local, "oset", None)


_HELD = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def _signals_held():
    """Defer SIGINT/SIGTERM (main thread only) over a short critical section; a
    signal that arrived is handed to the previous handler afterwards.  (Blocking
    with pthread_sigmask is not enough: numba's worker threads would still take
    the signal and Python would raise in the main thread mid-section.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: List[int] = []

    def defer(signum, frame):
        pending.append(signum)
    old = {}
    try:
        for sig in _HELD:
            old[sig] = signal.signal(sig, defer)
    except (ValueError, OSError):
        pass
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)
        for sig in pending:
            h = old.get(sig)
            if callable(h):
                h(sig, None)
            elif h == signal.SIG_DFL:
                signal.raise_signal(sig)


@contextlib.contextmanager
def output_set() -> Iterator[_OutputSet]:
    """All-or-nothing group of outputs.

    Inside the ``with`` block every :func:`atomic_open` (and so every writer of
    nbnumba) stages its file; when the block ends normally all files are renamed
    into place, otherwise (exception, KeyboardInterrupt, SIGTERM turned into an
    exception by the caller) every temporary is removed and no target changes.
    Sets do not nest: an inner ``output_set`` joins the outer one.
    """
    outer = _active_set()
    if outer is not None:
        yield outer
        return
    oset = _OutputSet()
    _local.oset = oset
    try:
        try:
            yield oset
        except BaseException:
            oset.discard()
            raise
        _local.oset = None
        with _signals_held():
            oset.commit()
    finally:
        _local.oset = None
        oset.discard()


# ---------------------------------------------------------------------------
# single files
# ---------------------------------------------------------------------------

def _open_special(target: str, shown: str, kind: str):
    if kind == "fifo":
        try:
            fd = os.open(target, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno == errno.ENXIO:
                raise OutputFileError(f"cannot write '{shown}': it is a FIFO with no reader") from None
            raise OutputFileError(f"cannot write '{shown}': {_describe(exc)}") from None
        os.set_blocking(fd, True)
    else:
        try:
            fd = os.open(target, os.O_WRONLY)
        except OSError as exc:
            raise OutputFileError(f"cannot write '{shown}': {_describe(exc)}") from None
    return os.fdopen(fd, "wb")


def _copy_to_special(tmp: str, target: str, shown: str, kind: str) -> None:
    with open(tmp, "rb") as src, _open_special(target, shown, kind) as dst:
        for block in iter(lambda: src.read(1 << 20), b""):
            dst.write(block)


@contextlib.contextmanager
def atomic_open(path, mode: str = "wb") -> Iterator:
    """Context manager yielding a binary file object that replaces ``path``
    atomically when the ``with`` block ends without an exception.

    On any exception the temporary file is deleted, ``path`` is left as it
    was, and the exception propagates (``OSError`` is converted to
    :class:`OutputFileError` naming ``path``).  Inside :func:`output_set` the
    rename waits for the whole set.  Character devices and FIFOs are written
    directly (see the module notes).
    """
    if mode not in ("wb", "w+b", "wb+"):
        raise ValueError(f"atomic_open supports binary write modes only, not {mode!r}")
    shown = path_name(path)     # str, bytes or os.PathLike, as open() takes
    kind = _special_kind(shown)
    if kind == "stdio":
        raise OutputFileError(f"refusing to write '{shown}': it is this process's "
                              "redirected standard output or error (a regular file)")
    if kind in ("directory", "socket", "block device", "special file"):
        raise OutputFileError(f"cannot write '{shown}': it is a {kind}, not a file")
    oset = _active_set()
    if kind is not None and oset is None:
        # character device or FIFO: never replaced, written in place
        fh = _open_special(shown, shown, kind)
        try:
            yield fh
            fh.flush()
        except OSError as exc:
            raise OutputFileError(f"cannot write '{shown}': {_describe(exc)}") from exc
        finally:
            try:
                fh.close()
            except OSError:
                pass
        return
    target = shown if kind is not None else _resolve_target(shown)
    directory = _folder_of(target)
    if kind is not None:
        # stage a special target's bytes in the working directory's temp space
        import tempfile
        directory = tempfile.gettempdir()
    if kind is None:
        why = folder_refusal(directory)
        if why:
            raise OutputFileError(f"cannot write '{shown}': {why}")
        check_replaceable(target, shown)
    base = os.path.basename(target)
    remove_stale_temps(directory, base)
    tmp = os.path.join(directory, temp_name(base))
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        why = _describe(exc)
        if exc.errno == errno.EACCES:
            why += f" ({_folder_words(directory)})"
        raise OutputFileError(f"cannot write '{shown}': {why}") from None
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
        if kind is None:
            try:
                old = os.stat(target)
            except OSError:
                old = None
            if old is None:
                new_mode = 0o666 & ~_current_umask()
            else:
                new_mode = stat.S_IMODE(old.st_mode)
                if hasattr(os, "geteuid") and os.geteuid() != 0:
                    # a write by a user without CAP_FSETID clears set-user-ID and
                    # set-group-ID, as fopen's write into the old file would
                    new_mode &= ~(stat.S_ISUID | stat.S_ISGID)
                try:
                    # the old file's group (a member may give a file its group),
                    # and as root its owner too: fopen() writes into the old
                    # inode, whose owner and group stay
                    os.fchown(fh.fileno(), old.st_uid if os.geteuid() == 0 else -1, old.st_gid)
                except (OSError, AttributeError):
                    pass        # (not a member of the group: the new file keeps ours)
            try:
                os.fchmod(fh.fileno(), new_mode)
            except OSError as exc:
                # a file system whose modes are fixed at mount time refuses it
                # (vfat without "quiet": EPERM when the x bits would change);
                # fopen() would have written there, so the file keeps its
                # mount-given mode, as fopen's would
                if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP,
                                     errno.EINVAL, errno.ENOSYS):
                    raise
        fh.close()
        if oset is not None:
            oset.staged.append(_Staged(shown, target, tmp, kind, mode))
            done = True
        else:
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


def missing_dirs(path) -> List[str]:
    """The folders ``os.makedirs(path)`` would create, deepest first (absolute):
    what a failed run removes again with :func:`remove_empty_dirs`."""
    out: List[str] = []
    path = os.path.abspath(os.fspath(path))
    while path and not os.path.lexists(path):
        out.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return out


def remove_empty_dirs(dirs: Iterable[str]) -> None:
    """Remove ``dirs`` (from :func:`missing_dirs`, deepest first), stopping at
    the first that is not empty (it holds something that is not ours)."""
    for d in dirs:
        try:
            os.rmdir(d)
        except OSError:
            return
