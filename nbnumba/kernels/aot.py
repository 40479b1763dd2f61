"""Build the start-up library: the host's entry points (``native.EXPORTS``)
compiled ahead of time by numba into one extension module.

Run as ``python -m nbnumba.kernels.aot --key KEY --out DIR`` (by
``nbnumba --warmup`` and, in the background, by a CLI run that had to use the
JIT); see :mod:`nbnumba.kernels.native` for why and how it is used.

What makes its code the JIT's code, bit for bit:

- each entry is a one-line wrapper that calls the numba dispatcher, so every
  kernel function is compiled by its own dispatcher with its own options
  (fastmath, error_model, inlining) exactly as in a JIT run, and its LLVM IR is
  linked into the library;
- the library is lowered for the host CPU *with the host's feature string*, as
  numba's JIT does (numba's AOT default would be a generic CPU);
- the wrappers release the GIL, like the dispatcher's ``nogil=True`` wrapper,
  so the image loop still runs on several threads.

Linking needs the kernels' LLVM IR.  numba's on-disk cache keeps it (each
entry holds the object code and the bitcode its callers link), so a build
run with ``--numba-cache`` takes the kernels from numba's cache: about 6 s
when it is warm, which ``nbnumba --warmup`` makes sure of first (the
library's images are the JIT's bit for bit: tests/test_startup_library.py
builds its library this way).  Without it the build compiles from source in
a private, empty numba cache (about the cost of a first run), so that a
background build never writes into the cache that runs are using.  The
result is written to a temporary name and renamed into place, its sha256
beside it (checked before every load: native._intact); a failed build
leaves a one-line ``.failed`` note so that background builds are not retried
every run.  A folder that cannot be made or written, or that another user
could change, is one line naming it and the remedy (NBNUMBA_CACHE_DIR).

numba's compiler makes temporary folders it does not remove (pycc's
``_gentmpfile`` passes a file object to ``os.remove`` and swallows the
TypeError: two ``tmpXXXX`` folders in the temporary folder per build, holding
``temp.c``/``temp.o``), so the build runs with tempfile's directory (and
TMPDIR, for the C compiler) in a private folder that is removed afterwards:
nothing is left in the temporary folder.
"""
from __future__ import annotations

import os
import sys


def _numba_type(code):
    from numba import from_dtype, types
    scalars = {"i8": types.int64, "f8": types.float64, "b1": types.boolean}
    if code in scalars:
        return scalars[code]
    import numpy as np
    dt, nd = code.split(":")
    return types.Array(from_dtype(np.dtype(dt)), int(nd), "C")


def _patch_pycc():
    """numba.pycc defaults that differ from the JIT: the GIL is held and the
    CPU's features are those of its generic model.  Set both as the JIT does
    (this process only: it exists to build the library)."""
    import numba.pycc.compiler as pcc
    from numba.core import codegen
    from numba.core.compiler import Flags

    class _NoGilFlags(Flags):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            self.release_gil = True
    pcc.Flags = _NoGilFlags
    codegen.AOTCPUCodegen._customize_tm_features = lambda self: self._get_host_cpu_features()


def build(key: str, out_dir: str) -> str:
    """Compile the library for ``key`` into ``out_dir``; returns its path."""
    import importlib
    import shutil
    import tempfile
    from numba.pycc import CC
    from ..io._args import sha256_file
    from . import native
    _patch_pycc()
    name = native.module_name(key)
    cc = CC(name)
    cc.target_cpu = "host"
    cc.verbose = False
    for entry, (modname, codes) in native.EXPORTS.items():
        disp = getattr(importlib.import_module(modname), entry)
        argtypes = tuple(_numba_type(c) for c in codes)
        disp.compile(argtypes)
        restype = disp.overloads[argtypes].signature.return_type
        params = ", ".join("a%d" % i for i in range(len(codes)))
        ns = {"_kernel": disp}
        exec("def %s(%s):\n    return _kernel(%s)\n" % (entry, params, params), ns)
        cc.export(entry, restype(*argtypes))(ns[entry])
    os.makedirs(out_dir, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="nbnumba-aot-", dir=out_dir) as tmp:
        cc.output_dir = tmp
        cc.compile()
        built = os.path.join(tmp, cc.output_file)
        final = os.path.join(out_dir, os.path.basename(native.library_path(key)))
        os.chmod(built, 0o755)
        tmp_lib = final + ".tmp%d" % os.getpid()
        shutil.move(built, tmp_lib)
        # the library's sha256 beside it, checked before every load
        # (native._intact); both on disk before their renames
        digest = sha256_file(tmp_lib)
        with open(tmp_lib, "rb") as fh:
            os.fsync(fh.fileno())
        tmp_sum = native.digest_path(final) + ".tmp%d" % os.getpid()
        with open(tmp_sum, "w") as fh:
            fh.write(digest + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp_sum, native.digest_path(final))
        os.replace(tmp_lib, final)
    return final


def _prune(out_dir, keep):
    """Remove libraries of older keys (sources changed) after a day."""
    import time
    now = time.time()
    for fn in os.listdir(out_dir):
        if fn.startswith("_nbnumba_aot_") and not fn.startswith(keep):
            p = os.path.join(out_dir, fn)
            try:
                if now - os.stat(p).st_mtime > 86400:
                    os.unlink(p)
            except OSError:
                pass


def main(argv=None) -> int:
    import argparse
    import fcntl
    p = argparse.ArgumentParser(prog="python -m nbnumba.kernels.aot",
                                description="build nbnumba's start-up library (native.py)")
    p.add_argument("--key", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--background", action="store_true",
                   help="low priority; give up at once if another build holds the lock")
    p.add_argument("--numba-cache", action="store_true",
                   help="take the kernels from numba's cache (NUMBA_CACHE_DIR) instead of "
                        "compiling them in a private, empty one")
    a = p.parse_args(argv)
    import shutil
    import tempfile
    from . import native
    from .. import numba_cache
    base = os.path.join(a.out, native.module_name(a.key))
    final = os.path.join(a.out, os.path.basename(native.library_path(a.key)))
    why = native.prepare_library_dir(a.out)
    if why:
        print(why, file=sys.stderr)
        return 1
    try:
        lock = open(base + ".lock", "w")
    except OSError as exc:
        print("cannot write the start-up library in %s (%s): %s"
              % (a.out, exc.strerror or type(exc).__name__, native.REMEDY), file=sys.stderr)
        return 1
    if a.background:
        try:
            os.nice(10)
        except OSError:
            pass
    with lock:
        try:                                    # one build per key at a time
            fcntl.flock(lock, fcntl.LOCK_EX | (fcntl.LOCK_NB if a.background else 0))
        except BlockingIOError:
            return 0
        except OSError:
            # a file system without flock (ENOLCK on some NFS homes): build
            # unlocked (the result is renamed into place) rather than never
            pass
        if native.load_library(final, a.key) is not None:
            return 0
        # (a file that does not load, e.g. emptied by a power loss, is built
        # again: it was kept, and every run fell back to the JIT and said it
        # was building the library in the background)
        # a private, empty numba cache unless told otherwise (see the module
        # docstring), set before numba is imported
        cache = None if a.numba_cache else tempfile.mkdtemp(prefix="nbnumba-aot-cache-")
        if cache is not None:
            os.environ["NUMBA_CACHE_DIR"] = cache
        # a private temporary folder for numba's compiler (module docstring);
        # numba's per-user fallback cache stays where the runs put it
        pin = numba_cache.pinned_temp_cache_dir()
        pin.__enter__()
        saved = tempfile.tempdir, os.environ.get("TMPDIR")
        try:
            scratch = tempfile.mkdtemp(prefix="nbnumba-aot-tmp-")
        except OSError:                 # (no temporary folder: numba fails as before)
            scratch = None
        if scratch is not None:
            tempfile.tempdir = os.environ["TMPDIR"] = scratch
        try:
            build(a.key, a.out)
        except Exception as exc:                # noted once; the JIT keeps working
            msg = ("%s: %s" % (type(exc).__name__, exc)).splitlines()[0][:300]
            with open(base + ".failed", "w") as fh:
                fh.write(msg + "\n")
            print("nbnumba: start-up library not built: %s" % msg, file=sys.stderr)
            return 1
        finally:
            tempfile.tempdir = saved[0]
            if saved[1] is None:
                os.environ.pop("TMPDIR", None)
            else:
                os.environ["TMPDIR"] = saved[1]
            pin.__exit__()
            if scratch is not None:
                shutil.rmtree(scratch, ignore_errors=True)
            if cache is not None:
                shutil.rmtree(cache, ignore_errors=True)
        try:
            os.unlink(base + ".failed")
        except OSError:
            pass
        _prune(a.out, native.module_name(a.key))
    return 0


if __name__ == "__main__":
    sys.exit(main())
