"""numba's on-disk cache, made aware of the files a kernel inlines.

numba keys a cached function on a hash of its own source file only.  The
kernels inline formulas from other files (kernels/cpu.py compiles physics.py's
polynomials and vecmath.py's vector algebra into its loops; physics.py
compiles vecmath.py's; rng_kernels.py compiles rng.py's generator), so an edit
of physics.py alone left kernels/cpu.py's cached machine code in place, with
the old formula: a silently wrong image after an upgrade or a ``git pull``
that changed only physics.py (numba writes its cache next to the sources,
where an upgrade that replaces the sources does not remove it).

``install()`` (called by physics.py and kernels/rng_kernels.py, which every
cached kernel imports, before anything is compiled) makes the stamp of every
source file of this package its own hash plus a hash of KERNEL_SOURCES, so
that a change to any of those files recompiles every cached function of the
package; other code's cache entries are left as numba makes them.  It
patches numba's source-stamp method (``numba.core.caching``, present in the
numba versions this package supports); if that method is missing, install()
raises rather than run with a cache that could be stale.
"""
from __future__ import annotations

import hashlib
import os
import re

_PKG = os.path.dirname(os.path.abspath(__file__))


def check_environment() -> None:
    """ConfigError for a NUMBA_NUM_THREADS numba cannot start with, before
    numba is imported (kernels/__init__.py, physics.py, the CLI): 0 or a
    negative count was "ValueError: Number of threads specified must be > 0"
    from ``import numba`` (a traceback; a run on the start-up library took
    the cores instead), a word a multi-line warning and numba's default."""
    v = os.environ.get("NUMBA_NUM_THREADS")
    if v is None or not v.strip():
        return
    try:
        ok = int(v) > 0
    except ValueError:
        ok = False
    if not ok:
        from .errors import ConfigError
        raise ConfigError("NUMBA_NUM_THREADS=%s: numba needs a whole number of threads >= 1; "
                          "unset it (nbnumba then uses every core) or give -threads N" % v)


#: numba's complaint about a NUMBA_* value it cannot read (numba.core.config)
_UNREADABLE_SETTING = re.compile(r"Environment variable '(\w+)' is defined but its associated "
                                 r"value '(.*?)' could not be parsed", re.S)


def import_numba() -> None:
    """``import numba`` (once; the kernel modules call this before importing
    from it).  A NUMBA_* setting numba cannot read (``NUMBA_OPT=x``) made it
    warn with the whole text of a traceback (11 lines), then use its default;
    that warning is now one NBWarning line naming the variable and numba's
    reason (the CLI prints ``nbnumba: warning: ...``).  Other warnings of the
    import pass on as they were."""
    import sys
    if "numba" in sys.modules:
        return
    import warnings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        __import__("numba")
    for w in caught:
        text = str(w.message)
        m = _UNREADABLE_SETTING.match(text)
        if m is None:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
            continue
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        from .errors import NBWarning
        warnings.warn(NBWarning("%s=%s: numba cannot read this value and uses its default (%s)"
                                % (m.group(1), m.group(2), lines[-1])), stacklevel=2)


#: the package's files whose code numba compiles into cached functions of
#: other files (and the kernel modules themselves); the start-up library's
#: key (kernels/native.py) hashes them too
KERNEL_SOURCES = ("physics.py", "vecmath.py", "rng.py", "kernels/layout.py", "kernels/cpu.py",
                  "kernels/adjoint.py", "kernels/rng_kernels.py")

_DIGEST = {}      # files -> ((path, mtime, size), ...), digest


def files_digest(rels) -> bytes:
    """sha256 over the names and contents of the package files ``rels``
    (paths relative to the package; recomputed when one of them changes size
    or modification time)."""
    rels = tuple(rels)
    key = []
    for rel in rels:
        p = os.path.join(_PKG, rel)
        try:
            st = os.stat(p)
            key.append((p, st.st_mtime_ns, st.st_size))
        except OSError:
            key.append((p, None, None))
    key = tuple(key)
    hit = _DIGEST.get(rels)
    if hit is None or hit[0] != key:
        h = hashlib.sha256()
        for p, _, _ in key:
            h.update(p[len(_PKG):].encode())
            try:
                with open(p, "rb") as f:
                    h.update(f.read())
            except OSError:
                h.update(b"<missing>")
        hit = _DIGEST[rels] = (key, h.digest())
    return hit[1]


def sources_digest() -> bytes:
    """files_digest of KERNEL_SOURCES."""
    return files_digest(KERNEL_SOURCES)


def in_package(path) -> bool:
    """Whether ``path`` is a file of this package."""
    return os.path.abspath(path).startswith(_PKG + os.sep)


def install() -> None:
    """Patch numba's source stamp once per process (see the module text)."""
    from numba.core import caching
    mixin = caching._SourceFileBackedLocatorMixin
    if getattr(mixin.get_source_stamp, "_nbnumba", False):
        return
    original = mixin.get_source_stamp

    def get_source_stamp(self):
        own = original(self)
        path = getattr(self, "_py_file", None)
        if path and in_package(path):
            return (own, sources_digest())
        return own

    get_source_stamp._nbnumba = True
    mixin.get_source_stamp = get_source_stamp
    _load_damaged_as_miss(caching.Cache)
    _save_failure_tolerated(caching.Cache)
    _last_resort_locator(caching)


_PINNED_TEMP_CACHE = []     # temp_cache_dir() fixed for this process (pin_temp_cache_dir)


def temp_cache_dir() -> str:
    """This user's numba cache for the package's kernels when no other place
    is writable (tempfile's directory, e.g. /tmp); the start-up library
    (kernels/native.py) goes there too in that case."""
    if _PINNED_TEMP_CACHE:
        return _PINNED_TEMP_CACHE[0]
    import tempfile
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return os.path.join(tempfile.gettempdir(), "nbnumba-numba-cache-%d" % uid)


class pinned_temp_cache_dir:
    """``with pinned_temp_cache_dir():`` temp_cache_dir() stays what it is
    now, while kernels/aot.py moves tempfile's directory to a private one (so
    that numba's compiler leaves nothing in /tmp): the kernels are still
    found in the cache the runs put them in."""

    def __enter__(self):
        self._outer = bool(_PINNED_TEMP_CACHE)
        if not self._outer:
            _PINNED_TEMP_CACHE.append(temp_cache_dir())
        return _PINNED_TEMP_CACHE[0]

    def __exit__(self, *exc):
        if not self._outer:
            _PINNED_TEMP_CACHE.clear()


def private_dir_problem(path, owner, mode, uid):
    """Why a folder ``path`` with ``owner`` and ``mode`` (os.stat's st_uid,
    st_mode) cannot be user ``uid``'s private cache, or None when it can: it
    must be a folder this user owns that no one else may write (entries are
    unpickled, a library is loaded: a cache another user controls runs their
    code)."""
    import stat
    if not stat.S_ISDIR(mode):
        return "%s is not a folder" % path
    if owner != uid:
        return "%s belongs to another user (uid %d)" % (path, owner)
    if mode & 0o022:
        return "%s may be written by other users (mode %03o)" % (path, mode & 0o777)
    return None


def temp_cache_problem(path=None):
    """Why temp_cache_dir() (or ``path``) cannot serve as this user's cache,
    or None when it can (it exists as a private folder of this user's, or can
    be created).  Creates nothing."""
    try:
        path = path or temp_cache_dir()
    except OSError as exc:      # (gettempdir: no usable temporary directory)
        return "no temporary folder (%s)" % (exc.strerror or exc)
    getuid = getattr(os, "getuid", None)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        parent = os.path.dirname(path)
        if os.path.isdir(parent) and os.access(parent, os.W_OK | os.X_OK):
            return None
        return "%s cannot be created" % path
    except OSError as exc:
        return "%s: %s" % (path, exc.strerror or exc)
    if getuid is None:
        return None
    return private_dir_problem(path, st.st_uid, st.st_mode, getuid())


def _own_private_dir(path) -> bool:
    """Create ``path`` (0700) or accept it when this user owns it and no one
    else may write it: a cache entry is unpickled, so a directory another
    user could fill must not be used."""
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        st = os.stat(path)
    except OSError:
        return False
    getuid = getattr(os, "getuid", None)
    return getuid is None or private_dir_problem(path, st.st_uid, st.st_mode, getuid()) is None


def _last_resort_locator(caching) -> None:
    """Where numba finds no writable place for a package kernel's cache (a
    read-only install and a read-only home: a container with a read-only
    root file system), its decorator raised RuntimeError "cannot cache
    function '_dot': no locator available", a traceback from the first run.
    Then the kernels are cached in temp_cache_dir(); and when that cannot be
    written either, compiled in every process without a cache (noted in
    SAVE_FAILURES).  numba's own places keep their precedence."""
    impl = getattr(caching, "CacheImpl", None) or getattr(caching, "_CacheImpl")
    if any(getattr(c, "_nbnumba", False) for c in impl._locator_classes):
        return

    class TempDirLocator(caching._SourceFileBackedLocatorMixin, caching._CacheLocator):
        _nbnumba = True

        def __init__(self, py_func, py_file):
            self._py_file = py_file
            self._lineno = py_func.__code__.co_firstlineno
            self._cache_path = os.path.join(temp_cache_dir(),
                                            self.get_suitable_cache_subpath(py_file))

        def get_cache_path(self):
            return self._cache_path

        @classmethod
        def from_function(cls, py_func, py_file):
            try:    # (gettempdir raises when no temporary directory is usable)
                usable = in_package(py_file) and _own_private_dir(temp_cache_dir())
            except OSError:
                usable = False
            return super().from_function(py_func, py_file) if usable else None

    impl._locator_classes = list(impl._locator_classes) + [TempDirLocator]

    from numba.core import dispatcher
    original = dispatcher.Dispatcher.enable_caching
    if getattr(original, "_nbnumba", False):
        return

    def enable_caching(self):
        try:
            original(self)
        except RuntimeError as exc:
            path = getattr(getattr(self.py_func, "__code__", None), "co_filename", "")
            if "no locator available" not in str(exc) or not in_package(path):
                raise
            SAVE_FAILURES.append((None, temp_cache_problem() or "no writable directory"))

    enable_caching._nbnumba = True
    dispatcher.Dispatcher.enable_caching = enable_caching


#: (cache directory, reason) of each of this package's kernels whose compiled
#: code numba could not write to its cache in this process (a full disk, a
#: quota): the run goes on with the code it compiled; save_failure_note()
SAVE_FAILURES: list = []


def _ours(cache) -> bool:
    """Whether numba cache object ``cache`` serves a function of this package."""
    locator = getattr(getattr(cache, "_impl", None), "locator", None)
    path = getattr(locator, "_py_file", None)
    return bool(path) and in_package(path)


def _save_failure_tolerated(cache_cls) -> None:
    """A cache that cannot be written costs the next run a compile, not this
    run: numba's OSError from writing an entry (ENOSPC on a full disk or a
    quota; its temporary file is removed) ended the run in a traceback after
    the compile.  Noted in SAVE_FAILURES; other code's entries are left to
    numba."""
    original = cache_cls.save_overload

    def save_overload(self, sig, data):
        try:
            return original(self, sig, data)
        except OSError as exc:
            if not _ours(self):
                raise
            SAVE_FAILURES.append((str(getattr(self, "_cache_path", "?")),
                                  exc.strerror or type(exc).__name__))
            return None

    save_overload._nbnumba = True
    cache_cls.save_overload = save_overload


def save_failure_note(since: int = 0):
    """One line on the cache entries SAVE_FAILURES holds from index ``since``
    on, or None when there are none."""
    new = SAVE_FAILURES[since:]
    if not new:
        return None
    where, why = new[-1]
    if where is None:           # (_last_resort_locator: no place at all)
        # (the run said "compiling kernels (first run only ...)" before: this
        # line says why not only the first, with the reason the temporary
        # folder was not used when there is one)
        temp = "" if why == "no writable directory" else "; %s, so it is not used" % why
        return ("nbnumba: warning: no writable directory for numba's cache (NUMBA_CACHE_DIR, "
                "the package's __pycache__, ~/.cache, a temporary directory%s): every run "
                "compiles the kernels, not only the first; set NUMBA_CACHE_DIR to a writable "
                "directory" % temp)
    return ("nbnumba: warning: numba's cache could not be written in %s (%s): the next "
            "run compiles the kernels again" % (where, why))


def _load_damaged_as_miss(cache_cls) -> None:
    """A damaged cache entry of this package's kernels is a miss, not a crash.

    numba renames its cache files into place but does not fsync them, so a
    power loss or a killed VM soon after a first compile can leave an index or
    data file empty or cut short (so can an interrupted copy of a shared
    NUMBA_CACHE_DIR); loading one raised pickle's EOFError or UnpicklingError
    from the first kernel call of every later run, a traceback until the user
    found and removed the cache.  Now the function's index is removed and the
    kernel compiled (and cached) again.  Other code's entries are left to
    numba."""
    original = cache_cls.load_overload

    def load_overload(self, sig, target_context):
        try:
            return original(self, sig, target_context)
        except Exception:
            if not _ours(self):
                raise
            index = getattr(getattr(self, "_cache_file", None), "_index_path", None)
            if index:
                try:
                    os.unlink(index)
                except OSError:
                    pass
            return None

    load_overload._nbnumba = True
    cache_cls.load_overload = load_overload
