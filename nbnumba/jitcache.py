"""Compiled-kernel bookkeeping: is the numba cache warm, warm it up, and
which dispatchers exist (for tests that check nothing recompiles).

numba compiles each kernel the first time it runs and keeps the machine code
in its on-disk cache (``__pycache__`` next to the sources, or
``NUMBA_CACHE_DIR``).  The kernels are written so that one compiled
signature serves every feature combination, both precisions and both modes
(default and -c_parity): ``render_rows`` (with the pixel function and the
lattice loops it calls, linked into its cached code).  The single-pixel trace
has its own copy of the pixel function (``trace_pixel``), compiled only by runs
with -trace_pixel.  On two cores a cold first run splits the work: it compiles
``pixel_value`` (the largest part) while a second process compiles two of
its callees, the block path and the host-side helpers (statistics, integer
and noise images); ``render_rows`` then links them from the cache.  ``nbnumba --warmup``
compiles the image kernel and the helpers ahead of time, and builds the
start-up library (kernels/native.py) meanwhile.
"""
from __future__ import annotations

import functools
import sys
import time

#: rough CPU seconds to compile, cache empty, on a 2-vCPU Xeon (measured:
#: docs/performance.md, "Compile time"): the image kernel, the single-pixel
#: trace (only runs with -trace_pixel compile it) and the host-side helpers
#: (statistics, integer and noise images; compiled in a second process while
#: the image kernel compiles, when there is a second core).  The announcement
#: quotes them, it scales nothing.
COMPILE_SECONDS = {"render_rows": 16, "trace_pixel": 8, "helpers": 3, "library": 5, "split": 8}

#: tiny runs that together compile what image runs use (default and
#: -c_parity, mosaic, noise, statistics, integer image).  Not the trace: its
#: copy of the pixel function (~8 s) is compiled by the first -trace_pixel run
#: (announced), so the README's set-up command does not pay for it.
WARMUP_ARGV = [
    "-cell 50 50 50 90 90 90 -default_F 10 -N 2 -lambda 1 -distance 50 -detpixels 4 -seed 1 "
    "-mosaic 0.5 -mosaic_dom 2",
    "-cell 50 50 50 90 90 90 -default_F 10 -N 2 -lambda 1 -distance 50 -detpixels 4 -seed 1 "
    "-c_parity -nonoise",
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


def _helper_calls(noise=True):
    """(dispatcher, args) of the host-side helpers, with the argument types
    api._host_products passes (float32 image, uint8 mask, int64 ROI); the
    noise image only with ``noise``."""
    import numpy as np
    from . import rng
    from .kernels import cpu as K
    img = np.ones((4, 4), dtype=np.float32)
    active = np.ones((4, 4), dtype=np.uint8)
    roi = np.array([0, 3, 0, 3], dtype=np.int64)
    st = rng.RngState()
    calls = [(K.image_stats, (img, active, roi, False)), (K.int_image, (img, roi, 1.0, 40.0))]
    if noise:
        calls.append((rng.noise_image, (img, 1, st.buf, st.gauss, 40.0, roi, False)))
    return calls


def compile_helpers() -> None:
    """Compile (or load) the host-side helpers by calling them on a 4x4 image."""
    for disp, args in _helper_calls():
        disp(*args)


def cold_kernels(model) -> list:
    """Names of the kernels this model's run would have to compile: the
    image kernel, the trace (with -trace_pixel), "helpers" (statistics,
    integer and noise images)."""
    if model.cfg.device != "cpu":
        return []
    from .kernels import native
    # the start-up library has the image kernel and the helpers (no numba import)
    aot = native.aot_module() is not None
    tracing = getattr(model.cfg, "trace_spixel", -1) >= 0
    if aot and not tracing:
        return []
    import numpy as np
    from .kernels import cpu as K
    args = model.cpu_kernel_args()
    S, F = model.shape
    out = []
    if not aot:
        disp = K.render_rows
        probe = (model.active, 0, 0, 0) + tuple(args) + (
            np.zeros((S, F), np.float32), np.zeros(S), np.zeros((1, 1), np.int32),
            np.zeros((1, 1), np.uint8), 0, 0, 0)
        if not _cached(disp, probe):
            out.append(disp.py_func.__name__)
    if tracing:
        probe = (0, 0, False, -1) + tuple(args) + (1,)
        if not _cached(K.trace_pixel, probe):
            out.append("trace_pixel")
    if not aot and not all(_cached(d, a) for d, a in _helper_calls(bool(model.cfg.calculate_noise))):
        out.append("helpers")
    return out


#: the background process compiling the helpers (start_helpers / wait_helpers)
_HELPERS = None


def start_helpers() -> bool:
    """Compile the host-side helpers in a second Python process, while this
    one compiles the image kernel (numba compiles one function at a time per
    process).  Only with a second core; the two processes compile disjoint
    sets of cached functions, so their cache writes do not meet.  Returns
    whether it started one."""
    global _HELPERS
    if _HELPERS is not None or not _two_cores():
        return False
    try:
        _HELPERS = _quiet_python(["nbnumba.jitcache", "--helpers"])
    except OSError:
        return False
    return True


def _two_cores() -> bool:
    import os
    return (os.cpu_count() or 1) >= 2


def _quiet_python(args):
    import subprocess
    from .kernels.native import python_process
    return python_process(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_helpers() -> None:
    """Wait for start_helpers' process (if any): the helpers are then loaded
    from the cache instead of compiled here.  If it failed they compile here."""
    global _HELPERS
    p, _HELPERS = _HELPERS, None
    if p is not None:
        try:
            p.wait(timeout=120)
        except Exception:       # never let the helper process stop a run
            p.kill()
        if p.stdout is not None:
            p.stdout.close()


#: a 4x4 run whose model needs no compiled code (no mosaic, no random misset):
#: its kernel arguments have the types every run passes
_TINY_ARGV = "-cell 50 50 50 90 90 90 -default_F 10 -N 2 -lambda 1 -distance 50 -detpixels 4"


@functools.lru_cache(maxsize=1)
def _tiny_kernel_args():
    """(model, kernel args) of _TINY_ARGV (built once per process)."""
    from . import flags
    from .model import build_model
    model = build_model(flags.parse_argv(_TINY_ARGV.split()))
    return model, model.cpu_kernel_args()


def compile_pixel() -> None:
    """Compile (or load) pixel_value, the general per-pixel function, with the
    argument types render_rows passes it."""
    import numpy as np
    from .kernels import cpu as K
    _, args = _tiny_kernel_args()
    cells = args[5]
    K.pixel_value(0, 0, False, -1, *args, np.empty((K.N_WORK, cells.shape[2])),
                  np.zeros((1, K.TRACE_COLS)), np.zeros(1, np.int64), np.zeros(3, np.int64),
                  np.zeros((2, 9, 1)), np.empty((K.N_WORK, 1)))


def compile_block() -> None:
    """Compile (or load) the block path, _block_row, with the argument types
    render_rows passes it."""
    import numpy as np
    from .kernels import cpu as K
    _, args = _tiny_kernel_args()
    nl = K.BLOCK * args[5].shape[2]
    K._block_row(0, np.zeros(K.BLOCK, np.int64), 1, *args, np.empty((K.N_BLOCK, K.BLOCK)),
                 np.zeros((2, K.BLOCK), np.int64), np.zeros((2, 9, nl)), np.empty((K.N_WORK, nl)),
                 np.zeros((4, 4), np.float32), 0.0, np.zeros((1, 9, nl)), np.empty((3, nl)))


def compile_pixel_callees() -> None:
    """Compile (or load) the two functions pixel_value types last, the general
    lattice factor and the tricubic F (about 1.4 s together), with the
    argument types it passes them (compiled, not called: the probe values
    would index outside the grid)."""
    import numpy as np
    from numba import typeof
    from .kernels import cpu as K
    _, args = _tiny_kernel_args()
    cells, Fhkl = args[5], args[6]
    v3 = (0.0, 0.0, 0.0)
    K._lattice_general.compile(tuple(typeof(a) for a in (
        0, v3, cells, np.empty((K.N_WORK, cells.shape[2])), 0, 1.0, 1.0, 1.0, 1.0, v3, v3, v3, 0)))
    K.tricubic_F.compile(tuple(typeof(a) for a in (Fhkl, 0, 0, 0, 0.0, 0.0, 0.0)))


def _split_compile(cold) -> None:
    """A cold image kernel on two cores: this process compiles pixel_value
    (the largest part, ~7 s) while a second one compiles, in this order, the
    two callees pixel_value reaches last (so that it finds them in the cache),
    the block path, and then the helpers.  render_rows links the block path
    from the cache as soon as the second process says it is there; the run's
    statistics wait for the helpers (wait_helpers).  If the second process
    cannot start, the run compiles everything itself, as on one core."""
    global _HELPERS
    import subprocess
    from .kernels.native import python_process
    try:
        p = python_process(["nbnumba.jitcache", "--block"]
                           + (["--helpers"] if "helpers" in cold else []),
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    except OSError:
        return
    _HELPERS = p
    try:
        compile_pixel()
    finally:
        try:
            p.stdout.readline()         # "block": compiled (or the process ended)
        except Exception:               # never let the second process stop a run
            p.kill()


def announce_compile(model, file=None) -> bool:
    """Print "compiling kernels (first run only, ~N s)" on stderr when the
    model's kernels are not in the cache yet; returns whether it printed.
    With two cores the compile then runs in two processes: split
    (_split_compile) when the image kernel is cold, else the helpers' compile
    in a second process."""
    cold = cold_kernels(model)
    if not cold:
        return False
    split = "render_rows" in cold and _two_cores()
    parallel = not split and "helpers" in cold and len(cold) > 1 and start_helpers()
    if split:
        n = COMPILE_SECONDS["split"] + (COMPILE_SECONDS["trace_pixel"] if "trace_pixel" in cold else 0)
    else:
        n = sum(COMPILE_SECONDS.get(k, 10) for k in cold if not (parallel and k == "helpers"))
    print("nbnumba: compiling kernels (first run only, ~%d s; `nbnumba --warmup` does it ahead "
          "of time)" % n, file=file or sys.stderr, flush=True)
    if split:
        _split_compile(cold)
    return True


def warmup(file=None) -> int:
    """Compile (or load from the cache) the image kernel and the helpers
    (not the trace: see WARMUP_ARGV), and build the start-up library
    (kernels.native) in a second process meanwhile; returns 0 (a library that
    cannot be built is reported; runs then use numba's cache)."""
    import tempfile
    from .api import simulate_argv
    from .kernels import native
    file = file or sys.stderr
    t0 = time.perf_counter()
    build = None
    if native.enabled() and native.aot_module() is None:
        try:
            build = native.start_build()
        except OSError as exc:
            print("nbnumba: start-up library not built: %s" % exc, file=file)
    parallel = build is None and start_helpers()
    n = COMPILE_SECONDS["render_rows"] + (0 if parallel else COMPILE_SECONDS["helpers"])
    if build is not None:
        n += COMPILE_SECONDS["library"]
    print("nbnumba: compiling kernels (once per install; ~%d s)" % n, file=file, flush=True)
    # numba's cache: what the trace, autodiff and any call the library does not
    # cover use (with the library present, these runs load it, not numba)
    with native.jit_only(), tempfile.TemporaryDirectory(prefix="nbnumba-warmup-") as d:
        for line in WARMUP_ARGV:
            simulate_argv(line.split(), cwd=d, noprogress=True, progress_meter=False)
    wait_helpers()
    if build is not None:
        err = build.communicate()[1]
        native.forget()
        if native.aot_module() is None:
            print("nbnumba: start-up library not built (runs use numba's cache): %s"
                  % ((err or "").strip().splitlines() or ["unknown reason"])[-1], file=file)
    print("nbnumba: kernels ready (%.1f s)" % (time.perf_counter() - t0), file=file, flush=True)
    return 0


def dispatchers() -> list:
    """Every numba dispatcher of nbnumba's kernel modules."""
    from numba.core.registry import CPUDispatcher
    from . import physics
    from .kernels import cpu, rng_kernels
    out = []
    for mod in (cpu, physics, rng_kernels):
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


if __name__ == "__main__":      # python -m nbnumba.jitcache [--helpers | --block [--helpers]]
    if sys.argv[1:] == ["--helpers"]:
        compile_helpers()
        sys.exit(0)
    if sys.argv[1:2] == ["--block"] and set(sys.argv[2:]) <= {"--helpers"}:
        compile_pixel_callees()
        compile_block()
        print("block", flush=True)
        if sys.argv[2:]:
            compile_helpers()
        sys.exit(0)
    sys.exit(warmup())
