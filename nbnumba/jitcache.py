"""Compiled-kernel bookkeeping: is the numba cache warm, warm it up, and
which dispatchers exist (for tests that check nothing recompiles).

numba compiles each kernel the first time it runs and keeps the machine code
in its on-disk cache (``__pycache__`` next to the sources, or
``NUMBA_CACHE_DIR``).  The kernels are written so that one compiled
signature serves every feature combination, both precisions and both modes
(default and -c_parity): ``render_rows`` (with the pixel function and the
lattice loops it calls, linked into its cached code).  ``nbnumba --warmup``
compiles it and the small helpers ahead of time.
"""
from __future__ import annotations

import sys
import time

#: rough CPU seconds to compile each kernel variant with a cold cache on a
#: 2-vCPU Xeon (docs/performance.md); the announcement scales nothing, it quotes
COMPILE_SECONDS = {"render_rows": 25}

#: tiny runs that together compile every kernel variant and helper
#: (default and -c_parity, trace, mosaic, noise, statistics, integer image)
WARMUP_ARGV = [
    "-cell 50 50 50 90 90 90 -default_F 10 -N 2 -lambda 1 -distance 50 -detpixels 4 -seed 1 "
    "-mosaic 0.5 -mosaic_dom 2 -trace_pixel 1 1",
    "-cell 50 50 50 90 90 90 -default_F 10 -N 2 -lambda 1 -distance 50 -detpixels 4 -seed 1 "
    "-c_parity -nonoise -trace_pixel 1 1",
]


def _cached(disp, args) -> bool:
    """True when ``disp`` has (in memory or on disk) a compiled version for
    ``args``; True as well when that cannot be determined (no announcement)."""
    try:
        sig = tuple(disp.typeof_pyval(a) for a in args)
        if sig in disp.overloads:
            return True
        cache = disp._cache
        key = cache._index_key(sig, disp.targetctx.codegen())
        return key in cache._cache_file._load_index()
    except Exception:      # numba internals changed: say nothing rather than fail
        return True


def cold_kernels(model) -> list:
    """Names of the image kernels this model's run would have to compile."""
    if model.cfg.device != "cpu":
        return []
    import numpy as np
    from .kernels import cpu as K
    args = model.cpu_kernel_args()
    S, F = model.shape
    disp = K.render_rows
    probe = (model.active, 0, 0, 0) + tuple(args) + (
        np.zeros((S, F), np.float32), np.zeros(S), np.zeros((1, 1), np.int32),
        np.zeros((1, 1), np.uint8), 0, 0, 0)
    return [] if _cached(disp, probe) else [disp.py_func.__name__]


def announce_compile(model, file=None) -> bool:
    """Print "compiling kernels (first run only, ~N s)" on stderr when the
    model's kernel is not in the cache yet; returns whether it printed."""
    cold = cold_kernels(model)
    if not cold:
        return False
    n = sum(COMPILE_SECONDS.get(k, 10) for k in cold)
    print("nbnumba: compiling kernels (first run only, ~%d s; `nbnumba --warmup` does it ahead "
          "of time)" % n, file=file or sys.stderr, flush=True)
    return True


def warmup(file=None) -> int:
    """Compile (or load from the cache) every kernel variant; returns 0."""
    import tempfile
    from .api import simulate_argv
    file = file or sys.stderr
    t0 = time.perf_counter()
    print("nbnumba: compiling kernels into numba's cache (once per install; ~%d s)"
          % (sum(COMPILE_SECONDS.values()) + 5), file=file, flush=True)
    with tempfile.TemporaryDirectory(prefix="nbnumba-warmup-") as d:
        for line in WARMUP_ARGV:
            simulate_argv(line.split(), cwd=d, noprogress=True, progress_meter=False)
    print("nbnumba: kernels ready (%.1f s)" % (time.perf_counter() - t0), file=file, flush=True)
    return 0


def dispatchers() -> list:
    """Every numba dispatcher of nbnumba's kernel modules."""
    from numba.core.registry import CPUDispatcher
    from . import physics, rng
    from .kernels import cpu
    out = []
    for mod in (cpu, physics, rng):
        for v in vars(mod).values():
            if isinstance(v, CPUDispatcher) and v not in out:
                out.append(v)
    return out


def compile_counts() -> dict:
    """{dispatcher name: (signatures, cache misses)} for nbnumba's kernels."""
    out = {}
    for d in dispatchers():
        name = d.py_func.__qualname__
        out[name] = (len(d.overloads), sum(d.stats.cache_misses.values()))
    return out


if __name__ == "__main__":      # python -m nbnumba.jitcache
    sys.exit(warmup())
