"""The compiled functions the host code calls on every run, with or without numba.

The numba kernels (:mod:`nbnumba.kernels.cpu`, :mod:`nbnumba.kernels.rng_kernels`)
are the one source of the physics.  A run calls a handful of them from Python:
the image loop (``render_rows``, or ``render_blocks`` for the runs
:func:`kernels.layout.block_eligible` accepts), the statistics and integer image, the noise
image and two rotation draws.  :mod:`nbnumba.kernels.aot` compiles exactly
those entry points, with numba's ahead-of-time compiler, into one extension
module: the *start-up library*.  It is the same numba code, lowered by the same
LLVM for the same CPU name and features with the same flags, so images are bit
for bit those of the JIT (tests/test_aot.py).  A run that finds a library
built for these sources, this interpreter, this CPU and these ``NUMBA_*``
settings loads it in a few milliseconds and never imports numba (which costs
0.2-0.4 s and maps a 180 MB LLVM library); without one, each call goes to the
numba dispatcher (numba's own on-disk cache) as before.

``NBNUMBA_AOT=0`` turns the library off (never used, never built);
``NBNUMBA_CACHE_DIR`` says where it lives (then the only place looked in).
Without it a run loads the library from the package's ``kernels/__pycache__``
when one is there (read-only is fine: an install's owner built it), else from
the folder this user builds in: ``$NUMBA_CACHE_DIR/nbnumba``, else the
package's folder when writable, else ``$XDG_CACHE_HOME/nbnumba`` or
``~/.cache/nbnumba``; when that cannot be written (a HOME of /nonexistent, a
folder of root's), numba's per-user fallback ``$TMPDIR/nbnumba-numba-cache-UID``
(0700, never one another user owns).  ``nbnumba --warmup`` builds it; a CLI
run that had to use the JIT starts a background build
(``NBNUMBA_AOT_AUTOBUILD=0``: no).

Plain Python and numpy only: importing this module never imports numba.
"""
from __future__ import annotations

import hashlib
import os
import sys
import threading

import numpy as np

from .. import numba_cache      # plain Python: its module imports no numba

#: the two image loops' arguments
_IMAGE_LOOP = ("u1:2", "i8", "i8", "i8", "i8:1", "f8:1", "f8:2", "f8:2", "f8:1", "f8:3", "f8:3",
               "f4:2", "f8:1", "i4:2", "u1:2", "i8", "i8", "i8")
#: entry points of the start-up library: name -> (numba module, argument types).
#: Argument codes: "i8"/"f8"/"b1" scalars (int, float, bool), "u1:2" a writable,
#: aligned, C-contiguous ndarray (dtype code : ndim).  These are the types the
#: host code passes (api, crystal); a call with other types goes to numba.
EXPORTS = {
    "render_rows": ("nbnumba.kernels.cpu", _IMAGE_LOOP),
    "render_blocks": ("nbnumba.kernels.cpu", _IMAGE_LOOP),
    "image_stats": ("nbnumba.kernels.cpu", ("f4:2", "u1:2", "i8:1", "b1")),
    "int_image": ("nbnumba.kernels.cpu", ("f4:2", "i8:1", "f8", "f8")),
    "noise_image": ("nbnumba.kernels.rng_kernels", ("f4:2", "i8", "i8:1", "f4:1", "f8", "i8:1",
                                                    "b1")),
    "mosaic_rotation_umat": ("nbnumba.kernels.rng_kernels", ("f8", "i8:1", "i8:1", "b1")),
    "random_orientation_umat": ("nbnumba.kernels.rng_kernels", ("i8:1", "i8:1")),
}

#: sources whose compiled code is in the library (any change: a new key)
_SOURCES = numba_cache.KERNEL_SOURCES + ("kernels/aot.py", "kernels/native.py")
#: NUMBA_* settings that do not change compiled code
_ENV_IGNORED = ("NUMBA_CACHE_DIR", "NUMBA_NUM_THREADS", "NUMBA_THREADING_LAYER")

_PKG = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_LOCK = threading.Lock()
_LOADED = {}          # key -> module or None (tried, absent or unusable)
#: calls served by the library / by numba in this process (tests, probe)
COUNTS = {"aot": 0, "jit": 0}


_JIT_ONLY = [0]      # depth of jit_only() blocks


def jit_disabled() -> bool:
    """Is numba's debugging switch NUMBA_DISABLE_JIT on?  (Read from the
    environment: numba's own config would import numba.)"""
    return os.environ.get("NUMBA_DISABLE_JIT", "0") not in ("", "0")


def enabled() -> bool:
    """False under NBNUMBA_AOT=0, NUMBA_DISABLE_JIT=1 or inside jit_only()
    (then plain numba)."""
    return (not _JIT_ONLY[0] and os.environ.get("NBNUMBA_AOT", "1") != "0"
            and not jit_disabled())


class jit_only:
    """``with native.jit_only():`` every call goes to numba (``--warmup``
    fills numba's cache this way while the library is being built)."""

    def __enter__(self):
        with _LOCK:
            _JIT_ONLY[0] += 1

    def __exit__(self, *exc):
        with _LOCK:
            _JIT_ONLY[0] -= 1


def package_library_dir() -> str:
    """The package's own library folder (kernels/__pycache__)."""
    return os.path.join(_PKG, "kernels", "__pycache__")


def _uid():
    getuid = getattr(os, "getuid", None)
    return None if getuid is None else getuid()


def safe_folder(owner, mode, uid) -> bool:
    """Whether a folder with ``owner`` and ``mode`` (os.stat's st_uid,
    st_mode) holds files only user ``uid`` or root can replace: owned by one
    of them and writable by no one else, unless sticky (then no one else
    may rename or remove another's file; a file someone else put there is
    theirs, and _trusted refuses it)."""
    import stat
    if uid is None:             # no POSIX ownership to check
        return True
    return owner in (uid, 0) and (not mode & 0o022 or bool(mode & stat.S_ISVTX))


def build_place(path) -> str:
    """Can this process build the library in folder ``path``?  "ok": it is a
    folder safe_folder accepts that this process may write, or it can be
    created (the nearest existing folder on the way is writable); "file": a
    file is on the way (nothing can be written there: no build, not even its
    .failed note, and no word); "denied": not writable, or a folder another
    user could change."""
    d = path
    while not os.path.lexists(d):
        parent = os.path.dirname(d)
        if parent == d:
            return "denied"
        d = parent
    if not os.path.isdir(d):
        return "file"
    if d == path:
        try:
            st = os.stat(d)
        except OSError:
            return "denied"
        if not safe_folder(st.st_uid, st.st_mode, _uid()) and not (
                st.st_uid == _uid() and repairable(path)):
            return "denied"
    if place_refusal(d):
        return "denied"
    return "ok" if os.access(d, os.W_OK | os.X_OK) else "denied"


def place_refusal(d) -> str | None:
    """Why existing folder ``d`` cannot hold a library that loads, or None: the
    build's rename fails in a read-only, append-only or immutable folder
    (io.atomic.folder_refusal), and on a file system mounted noexec (a
    hardened /tmp) the loader may not map the library's code, so every run
    loaded numba and started the build again."""
    from ..io.atomic import folder_refusal     # (not at import: start-up time)
    why = folder_refusal(d)
    if why:
        return why
    try:
        if os.statvfs(d).f_flag & os.ST_NOEXEC:
            return ("the folder '%s' is on a file system mounted noexec, from which a "
                    "library's code may not be loaded" % d)
    except (OSError, AttributeError):
        pass
    return None


def repairable(path) -> bool:
    """Whether the build may take group and other write off folder ``path``
    when it is this user's: a folder nbnumba names for itself (an older
    nbnumba made ``~/.cache/nbnumba`` 0775 under umask 002, and its library
    is not loaded from there), never NBNUMBA_CACHE_DIR, which the user named."""
    d = os.environ.get("NBNUMBA_CACHE_DIR")
    return not d or os.path.abspath(d) != os.path.abspath(path)


def library_dir() -> str:
    """The folder this user builds the start-up library in (see the module
    docstring): NBNUMBA_CACHE_DIR as given, else the first usable place, else
    (none writable) the per-user temporary folder numba's cache falls back to
    (numba_cache.temp_cache_dir), unless another user owns it.  A place below
    a file is kept as it is (build_place: no build, no word)."""
    d = os.environ.get("NBNUMBA_CACHE_DIR")
    if d:
        return d
    d = os.environ.get("NUMBA_CACHE_DIR")
    if d:
        first = os.path.join(d, "nbnumba")
    else:
        here = package_library_dir()
        if build_place(here) == "ok":
            return here
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        first = os.path.join(base, "nbnumba")
    if build_place(first) != "denied":
        return first
    if (numba_cache.temp_cache_problem() is None
            and build_place(numba_cache.temp_cache_dir()) != "denied"):
        return numba_cache.temp_cache_dir()
    return first


def library_dirs() -> list:
    """The folders a run looks in for the library, in order: NBNUMBA_CACHE_DIR
    alone when set, else the package's folder (a library another user, say
    root, built there for everyone), then library_dir()."""
    if os.environ.get("NBNUMBA_CACHE_DIR"):
        return [os.environ["NBNUMBA_CACHE_DIR"]]
    here = package_library_dir()
    mine = library_dir()
    return [here] if mine == here else [here, mine]


def _cpu_identity() -> bytes:
    """The CPU model and instruction-set flags (the library is built for this CPU)."""
    try:
        with open("/proc/cpuinfo", "rb") as fh:
            text = fh.read(1 << 16)
        first = text.split(b"\n\n", 1)[0]
        keep = [ln for ln in first.split(b"\n")
                if ln.startswith((b"vendor_id", b"cpu family", b"model", b"flags"))]
        if keep:
            return b"\n".join(keep)
    except OSError:
        pass
    import platform
    return ("%s %s" % (platform.machine(), platform.processor())).encode()


def _module_stamp(name) -> bytes:
    """Where and when the installed package ``name`` was written (no import)."""
    import importlib.util
    try:
        spec = importlib.util.find_spec(name)
        st = os.stat(spec.origin)
        return ("%s %d %d" % (spec.origin, st.st_size, st.st_mtime_ns)).encode()
    except Exception:
        return b"?"


_KEYS = {}


def library_key() -> str:
    """16 hex digits naming the library for these sources, this interpreter and
    numba/llvmlite install, this CPU and these NUMBA_* settings (computed once
    per process and settings)."""
    env = _numba_env()
    key = _KEYS.get(env)
    if key is None:
        key = _KEYS[env] = _compute_key(env)
    return key


def _numba_env():
    """The sorted NUMBA_* settings that name a library.  Every kernel call
    asks (through aot_module), so this reads os.environ's underlying dict
    and decodes only the matches: os.environ.items() decodes all ~40
    variables, 49 us a call, about 0.5 ms of each autodiff set-up on a
    2-vCPU EPYC.  os.environ writes go through that dict, so a setting
    changed in the process (monkeypatch.setenv) is seen at once."""
    data = getattr(os.environ, "_data", None)
    if not isinstance(data, dict):          # not CPython's os._Environ
        return tuple(sorted((k, v) for k, v in os.environ.items()
                            if k.startswith("NUMBA_") and k not in _ENV_IGNORED))
    out = []
    for k, v in data.items():
        if k[:6] in (b"NUMBA_", "NUMBA_"):
            k = os.fsdecode(k)
            if k not in _ENV_IGNORED:
                out.append((k, os.fsdecode(v)))
    return tuple(sorted(out))


def _compute_key(env) -> str:
    import importlib.machinery
    h = hashlib.sha256()
    h.update(numba_cache.files_digest(_SOURCES))
    h.update(sys.version.encode())
    h.update(importlib.machinery.EXTENSION_SUFFIXES[0].encode())
    h.update(_module_stamp("numba"))
    h.update(_module_stamp("llvmlite"))
    h.update(_cpu_identity())
    h.update(repr(env).encode())
    return h.hexdigest()[:16]


def module_name(key: str) -> str:
    return "_nbnumba_aot_" + key


def library_path(key: str | None = None) -> str:
    import importlib.machinery
    key = key or library_key()
    return os.path.join(library_dir(),
                        module_name(key) + importlib.machinery.EXTENSION_SUFFIXES[0])


#: key -> the (path, size, mtime) of the library files a failed load saw
_MISSED = {}
#: the keys this process started a background build for (at most one each)
_STARTED = set()


def _candidates(key):
    """(path, size, mtime_ns) of the library files for ``key`` that exist now."""
    import importlib.machinery
    name = module_name(key) + importlib.machinery.EXTENSION_SUFFIXES[0]
    out = []
    for d in library_dirs():
        p = os.path.join(d, name)
        try:
            st = os.stat(p)
        except OSError:
            continue
        out.append((p, st.st_size, st.st_mtime_ns))
    return tuple(out)


def look_again() -> None:
    """Forget this process's "no library" for the current key when a library
    file for it has appeared or changed since (another process built it): a
    process that runs many command lines (--batch, --serve, cli.main in a
    loop) kept the numba kernels, and each line started one more build and said
    "building the start-up library in the background (once; ...)" again.
    A stat per folder; the CLI calls it once per command line."""
    if not enabled():
        return
    try:
        key = library_key()
    except OSError:
        return
    if _LOADED.get(key, False) is None and _candidates(key) != _MISSED.get(key, ()):
        with _LOCK:
            _LOADED.pop(key, None)


def aot_module():
    """The loaded start-up library, or None (disabled, not built, unusable)."""
    if not enabled():
        return None
    try:
        key = library_key()
    except OSError:
        return None
    mod = _LOADED.get(key, False)
    if mod is not False:
        return mod
    with _LOCK:
        if key in _LOADED:
            return _LOADED[key]
        import importlib.machinery
        name = module_name(key) + importlib.machinery.EXTENSION_SUFFIXES[0]
        mod = None
        for d in library_dirs():
            mod = load_library(os.path.join(d, name), key)
            if mod is not None:
                break
        if mod is None:
            _MISSED[key] = _candidates(key)
        _LOADED[key] = mod
        return mod


def load_library(path, key):
    """The start-up library module in file ``path`` (built for ``key``), or
    None when it is missing, untrusted (_trusted), damaged (_intact) or lacks
    an entry point."""
    if not _trusted(path) or not _intact(path):
        return None
    import importlib.util
    try:
        spec = importlib.util.spec_from_file_location(module_name(key), path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    except Exception:       # damaged or foreign file: numba does the work
        return None
    return mod if all(hasattr(mod, n) for n in EXPORTS) else None


def digest_path(path) -> str:
    """The file beside library ``path`` that holds its sha256 (aot.build)."""
    return path + ".sha256"


def _intact(path) -> bool:
    """Whether the library's bytes are the ones its build recorded.  A file
    emptied or cut short (a power loss soon after the build, an interrupted
    copy of a shared cache) must not reach the dynamic loader: mapping a
    truncated library's segments killed the process with SIGBUS.  (About 1 ms
    for the 0.9 MB library, once per process.)"""
    from ..io._args import sha256_file
    try:
        with open(digest_path(path)) as fh:
            want = fh.read(65).strip()
        return sha256_file(path) == want
    except (OSError, UnicodeDecodeError):
        return False


def _trusted(path) -> bool:
    """Load only a library file that exists, is owned by this user (or root)
    and that nobody else may write, in a folder where no one else may replace
    it (safe_folder): loading it runs its code, and a cache directory may be
    shared (NUMBA_CACHE_DIR on a cluster)."""
    try:
        st = os.stat(path)
        folder = os.stat(os.path.dirname(os.path.abspath(path)))
    except OSError:
        return False
    uid = _uid()
    if uid is None:             # no POSIX ownership to check
        return True
    return (st.st_uid in (uid, 0) and not st.st_mode & 0o022
            and safe_folder(folder.st_uid, folder.st_mode, uid))


def forget() -> None:
    """Look for the library again on the next call (tests, after a build)."""
    with _LOCK:
        _LOADED.clear()
        _KEYS.clear()
        _MISSED.clear()
        _STARTED.clear()


def failed_note(key: str | None = None) -> str:
    """The one-line reason the last build for ``key`` failed ('' if none)."""
    path = os.path.join(library_dir(), module_name(key or library_key()) + ".failed")
    try:
        with open(path) as fh:
            return fh.readline().strip()
    except OSError:
        return ""


#: settings that name folders: made absolute for a child that runs elsewhere
_PATH_SETTINGS = ("NUMBA_CACHE_DIR", "NBNUMBA_CACHE_DIR", "XDG_CACHE_HOME", "TMPDIR")


def python_process(args, **popen):
    """``python -m ARGS`` as a subprocess.Popen, with this nbnumba first on
    PYTHONPATH (the child runs the same sources) and stdin from /dev/null
    unless ``popen`` says otherwise; ``popen``: more Popen keywords.

    The child runs in the package's parent folder, not the caller's: a build
    or a compile helper whose run's folder was removed as the run ended (a
    script's temporary folder) failed at its first import ("FileNotFoundError:
    [Errno 2] No such file or directory").  A relative cache setting is made
    absolute for it, so that it still names the caller's folder."""
    import subprocess
    env = dict(os.environ)
    root = os.path.dirname(_PKG)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    try:
        here = os.getcwd()
    except OSError:
        here = None
    for var in _PATH_SETTINGS:
        v = env.get(var)
        if v and here is not None and not os.path.isabs(v):
            env[var] = os.path.join(here, v)
    popen.setdefault("stdin", subprocess.DEVNULL)
    popen.setdefault("cwd", root)
    return subprocess.Popen([sys.executable, "-m"] + list(args), env=env, **popen)


def reap_in_background(proc):
    """Let ``proc`` (a subprocess.Popen) run on after its caller drops it: a
    daemon thread waits for it, so that it is reaped when it ends, and it is
    never garbage-collected while it runs (Popen.__del__ then warns
    "subprocess N is still running", a ResourceWarning that a program
    running nbnumba in process, with warnings shown, would see)."""
    import threading
    threading.Thread(target=proc.wait, name="nbnumba-reaper", daemon=True).start()
    return proc


def start_build(background: bool = False, numba_cache: bool = False):
    """Start building the start-up library in a separate Python process
    (numba's AOT compiler, :mod:`nbnumba.kernels.aot`); returns the Popen.
    ``background``: at low priority, detached from this process, silent (and
    nothing to do if another build holds the lock); else its stderr is a pipe
    (one line on failure) and it waits for a build already under way.
    ``numba_cache``: the build takes the kernels from numba's cache (seconds
    when it is warm: ``nbnumba --warmup`` fills it first) instead of
    compiling them in a private, empty one."""
    import subprocess
    # (python_process runs it in the package's parent folder, not the run's: a
    # background build whose working folder was removed as the run ended failed
    # at its first import, noted for good in .failed)
    args = ["nbnumba.kernels.aot", "--key", library_key(), "--out",
            os.path.abspath(library_dir())]
    if numba_cache:
        args.append("--numba-cache")
    if background:
        _STARTED.add(library_key())
        return reap_in_background(python_process(args + ["--background"],
                                                 stdout=subprocess.DEVNULL,
                                                 stderr=subprocess.DEVNULL,
                                                 start_new_session=True))
    return python_process(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


#: what a user does about a folder that cannot hold the start-up library
REMEDY = "set NBNUMBA_CACHE_DIR to a folder only this user may write"


def prepare_library_dir(out) -> str | None:
    """Make folder ``out`` ready to hold the start-up library; returns the one
    line that says why it cannot, or None.  It is made 0700 when it is the
    per-user temporary folder (numba's cache's too), else 0755 less the umask:
    never group-writable (a group-writable folder's library is not loaded),
    whatever the umask; this user's own
    folder that an older nbnumba made group-writable under umask 002 is
    repaired (:func:`repairable`)."""
    import stat
    try:
        private = os.path.abspath(out) == os.path.abspath(numba_cache.temp_cache_dir())
    except OSError:                     # (no temporary folder at all)
        private = False
    try:
        if not os.path.isdir(out):
            os.makedirs(out, mode=0o700 if private else 0o755, exist_ok=True)
        st = os.stat(out)
        if (not safe_folder(st.st_uid, st.st_mode, _uid())
                and st.st_uid == _uid() and repairable(out)):
            os.chmod(out, stat.S_IMODE(st.st_mode) & ~0o022)
            st = os.stat(out)
    except OSError as exc:
        return ("cannot write the start-up library in %s (%s): %s"
                % (out, exc.strerror or type(exc).__name__, REMEDY))
    if not safe_folder(st.st_uid, st.st_mode, _uid()):
        return ("the start-up library is not built in %s: other users may write that folder, "
                "so a library there is never loaded; %s" % (out, REMEDY))
    why = place_refusal(out)
    if why:
        return "cannot write the start-up library in %s: %s; %s" % (out, why, REMEDY)
    return None


def shared_cache_dir_warning() -> str | None:
    """One warning line when NBNUMBA_CACHE_DIR names a folder other users may
    write (a library someone else could swap runs their code) or one that
    cannot hold a loadable library (place_refusal: noexec, read-only,
    chattr): the library is then neither built nor loaded there, so every run
    loads numba, which said nothing (the folder is the user's choice, not
    repaired)."""
    d = os.environ.get("NBNUMBA_CACHE_DIR")
    if not d or not enabled():
        return None
    try:
        st = os.stat(d)
    except OSError:
        return None
    import stat
    if not stat.S_ISDIR(st.st_mode):
        return None
    if not safe_folder(st.st_uid, st.st_mode, _uid()):
        return ("nbnumba: warning: NBNUMBA_CACHE_DIR=%s may be written by other users, so the "
                "start-up library is neither built nor loaded there and every run loads numba; %s"
                % (d, REMEDY))
    why = place_refusal(d)
    if not why:
        return None
    return ("nbnumba: warning: NBNUMBA_CACHE_DIR=%s cannot hold the start-up library (%s), so "
            "every run loads numba; set NBNUMBA_CACHE_DIR to another folder, one only this user "
            "may write" % (d, why))


def take_build_lock(key: str | None = None):
    """Hold the build lock of ``key`` (the one aot.main takes) for a process
    that will start the build later: a file object holding it (close it to let
    go), False when another process holds it, None when no lock can be had
    here (a folder that cannot hold the library, no flock): the caller goes
    on as it would without one."""
    try:
        import fcntl
    except ImportError:
        return None
    d = library_dir()
    if prepare_library_dir(d):
        return None
    try:
        lock = open(os.path.join(d, module_name(key or library_key()) + ".lock"), "w")
    except OSError:
        return None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        return False
    except OSError:
        lock.close()
        return None
    return lock


def build_running(key: str | None = None) -> bool:
    """Whether a build for ``key`` holds its lock now (aot.main takes it)."""
    try:
        import fcntl
    except ImportError:
        return False
    path = os.path.join(library_dir(), module_name(key or library_key()) + ".lock")
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:     # no flock on this file system (ENOLCK): not known to run
        return False
    finally:
        os.close(fd)
    return False


def background_build_wanted() -> bool:
    """Should a CLI run that used the JIT start a background build?  Not when
    the library is off or present, NBNUMBA_AOT_AUTOBUILD=0, a build for this
    key failed before, or its directory cannot be written."""
    if not enabled() or os.environ.get("NBNUMBA_AOT_AUTOBUILD", "1") == "0":
        return False
    look_again()
    if library_key() in _STARTED:       # (once per process: it may still be running)
        return False
    if aot_module() is not None or failed_note() or build_running():
        return False
    # the nearest existing folder on the way must be one this process may write in;
    # a file on the way (NUMBA_CACHE_DIR=some/file/sub) is no place for it: the build
    # failed at once each time, with no room for its .failed note, and every run said
    # "building the start-up library in the background (once; ...)" again.  Nor is a
    # folder another user could change (its library would never be loaded: a build
    # every run)
    return build_place(library_dir()) == "ok"


def _matcher(code):
    """A predicate: does a Python argument have the type numba's signature
    ``code`` was compiled for (as numba's typeof would type it)?"""
    if code == "i8":
        return lambda x: (type(x) is int) or (type(x) is np.int64)
    if code == "f8":
        return lambda x: type(x) is float or type(x) is np.float64
    if code == "b1":
        return lambda x: type(x) is bool or type(x) is np.bool_
    dt, nd = code.split(":")
    dtype, ndim = np.dtype(dt), int(nd)

    def array(x):
        if type(x) is not np.ndarray or x.dtype != dtype or x.ndim != ndim:
            return False
        fl = x.flags
        return fl.c_contiguous and fl.writeable and fl.aligned
    return array


class Kernel:
    """A host-callable compiled function: the start-up library's entry point
    when there is one and the arguments have its types, else the numba
    dispatcher (imported on first use)."""

    def __init__(self, name):
        self.name = name
        self.module, codes = EXPORTS[name]
        self._match = tuple(_matcher(c) for c in codes)

    def jit(self):
        """The numba dispatcher (imports numba)."""
        import importlib
        return getattr(importlib.import_module(self.module), self.name)

    def __call__(self, *args):
        mod = aot_module()
        if mod is not None and len(args) == len(self._match) and all(
                m(a) for m, a in zip(self._match, args)):
            COUNTS["aot"] += 1
            return getattr(mod, self.name)(*args)
        COUNTS["jit"] += 1
        return self.jit()(*args)

    def __repr__(self):
        return "<nbnumba kernel %s>" % self.name


render_rows = Kernel("render_rows")
render_blocks = Kernel("render_blocks")
image_stats = Kernel("image_stats")
int_image = Kernel("int_image")
noise_image = Kernel("noise_image")
mosaic_rotation_umat = Kernel("mosaic_rotation_umat")
random_orientation_umat = Kernel("random_orientation_umat")


# ---- the image loop on a thread pool -----------------------------------------
_POOLS = {}
_POOL_LOCK = threading.Lock()


def _forget_pools():
    # a forked child (nbnumba.server) inherits the executors but not their
    # threads: work submitted to them would never run
    global _POOL_LOCK
    _POOLS.clear()
    _POOL_LOCK = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pools)


def _pool(n):
    """A lasting thread pool of n workers (threads start once per process)."""
    from concurrent.futures import ThreadPoolExecutor
    with _POOL_LOCK:
        p = _POOLS.get(n)
        if p is None:
            p = _POOLS[n] = ThreadPoolExecutor(max_workers=n, thread_name_prefix="nbnumba")
    return p


def default_threads():
    """Threads for one image when -threads is not given: numba's setting when
    the caller changed it (numba.set_num_threads), else the usable cores."""
    par = sys.modules.get("numba.np.ufunc.parallel")
    if par is not None and getattr(par, "_is_initialized", False):
        import numba
        return max(1, numba.get_num_threads())
    env = os.environ.get("NUMBA_NUM_THREADS")
    if env and env.isdigit() and int(env) > 0:
        return int(env)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def image_loop(iopt, ncell, first_pixel, latch_pixel):
    """The image loop a run uses: render_blocks where block_eligible, else
    render_rows (jitcache compiles the run's own first)."""
    from .layout import block_eligible
    return render_blocks if block_eligible(iopt, ncell, first_pixel, latch_pixel) else render_rows


def render(active, first_pixel, latch_pixel, latch_sub, iopt, fopt, vecs, incident, lam, cells,
           Fhkl, out, omega_out, oor_out, ran_out, row0=0, row1=-1, threads=None):
    """Fill ``out`` (float32, (S, F)) for every active pixel of rows row0..row1-1
    (row1 = -1: to the last row; the caller may render in chunks for progress).

    first_pixel: linear index of the pixel whose phi loop runs first (-1: none).
    latch_pixel/latch_sub: -c_parity interpolation latch (see cpu.pixel_value).
    omega_out: per-row sums of the pixels' solid angles (S,), float64.
    oor_out: per-pixel first out-of-range interpolation sub-path (or -1), int32.
    ran_out: per-pixel flag, 1 if any phi loop ran (uint8).
    oor_out/ran_out are only written when they have the image's shape (pass
    (1, 1) arrays when the -c_parity bookkeeping is not needed).

    threads: worker threads (default :func:`default_threads`); thread t renders
    rows row0 + t, row0 + t + threads, ... (interleaved rows balance the load;
    the kernel runs without the GIL).

    The runs kernels.layout.block_eligible accepts go to render_blocks, the
    others to render_rows (the same values; each one compiled signature for
    every mode and both precisions)."""
    S = active.shape[0]
    r0 = max(0, int(row0))
    r1 = S if row1 < 0 or row1 > S else int(row1)
    n = default_threads() if not threads else int(threads)
    n = max(1, min(n, r1 - r0))
    args = (active, int(first_pixel), int(latch_pixel), int(latch_sub), iopt, fopt, vecs, incident,
            lam, cells, Fhkl, out, omega_out, oor_out, ran_out)
    loop = image_loop(iopt, cells.shape[2], first_pixel, latch_pixel)
    if n == 1:
        loop(*args, r0, r1, 1)
        return
    futs = [_pool(n).submit(loop, *args, r0 + t, r1, n) for t in range(n)]
    for f in futs:
        f.result()
