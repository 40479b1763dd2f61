"""Compiled-kernel bookkeeping: is the numba cache warm, warm it up, and
which dispatchers exist (for tests that check nothing recompiles).

numba compiles each kernel the first time it runs and keeps the machine code
in its on-disk cache (``__pycache__`` next to the sources, or
``NUMBA_CACHE_DIR``).  The kernels are written so that one compiled
signature serves every feature combination, both precisions and both modes
(default and -c_parity).  There are two image loops: ``render_blocks`` for
the runs ``kernels.layout.block_eligible`` accepts (default mode, few cells
per pixel) and ``render_rows`` for every other run; each links the functions
it calls (the block path, or the pixel function) into its cached code.  The
single-pixel trace has its own copy of the pixel function (``trace_pixel``),
compiled only by runs with -trace_pixel.

On two cores a cold first run splits the work (``_split_compile``): it
compiles the two lattice loops both image loops share, then its own image
loop, while a second process compiles the host-side helpers (statistics,
integer and noise images), says so, and then, detached and at low priority,
the other image loop, so that later runs find both in the cache.
``nbnumba --warmup`` compiles everything ahead of time (split the same way),
then builds the start-up library (kernels/native.py) from numba's cache.
"""
from __future__ import annotations

import functools
import pickle
import sys
import time

#: rough seconds to compile, cache empty, on a 2-vCPU Xeon (docs/performance.md,
#: "Cold first run, fourth split"): each image loop on one core with the lattice
#: loops (render_rows: the pixel function, ~14; render_blocks: the block path,
#: ~10; sums of the per-function times measured there), the single-pixel
#: trace (only runs with -trace_pixel compile it), the host-side helpers and
#: the start-up library; "split_*": a cold first run's wall time on two cores
#: (_split_compile), measured.  The announcement quotes them, it scales nothing.
COMPILE_SECONDS = {"render_rows": 14, "render_blocks": 10, "trace_pixel": 8, "helpers": 3,
                   "library": 5, "split_render_rows": 11, "split_render_blocks": 8}

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
        if not hasattr(cache, "_cache_file"):   # no cache (numba_cache._last_resort_locator)
            return False
        key = cache._index_key(sig, disp.targetctx.codegen())
        return key in cache._cache_file._load_index()
    except (EOFError, pickle.UnpicklingError):
        # a damaged index (numba_cache._load_damaged_as_miss): it compiles again
        return False
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


def _entry_name(args) -> str:
    """The image loop a run with kernel arguments ``args``
    (model.cpu_kernel_args()) calls (native.image_loop)."""
    from .kernels import native
    # -c_parity runs (the only ones with a first pixel or a latch) are never
    # block runs: -1, -1 decides the same
    return native.image_loop(args[0], args[5].shape[2], -1, -1).name


def _entry_probe(model, args):
    """Arguments with the types api passes to the image loops (native.EXPORTS)."""
    import numpy as np
    S, F = model.shape
    return (model.active, -1, -1, -1) + tuple(args) + (
        np.zeros((S, F), np.float32), np.zeros(S), np.zeros((1, 1), np.int32),
        np.zeros((1, 1), np.uint8), 0, 0, 0)


def cold_kernels(model) -> list:
    """Names of the kernels this model's run would have to compile: its image
    loop ("render_rows" or "render_blocks"), the trace (with -trace_pixel),
    "helpers" (statistics, integer and noise images)."""
    if model.cfg.device != "cpu":
        return []
    from .kernels import native
    # the start-up library has the image loops and the helpers (no numba import)
    aot = native.aot_module() is not None
    tracing = getattr(model.cfg, "trace_spixel", -1) >= 0
    if aot and not tracing:
        return []
    from .kernels import cpu as K
    args = model.cpu_kernel_args()
    out = []
    if not aot:
        name = _entry_name(args)
        if not _cached(getattr(K, name), _entry_probe(model, args)):
            out.append(name)
    if tracing:
        probe = (0, 0, False, -1) + tuple(args) + (1,)
        if not _cached(K.trace_pixel, probe):
            out.append("trace_pixel")
    if not aot and not all(_cached(d, a) for d, a in _helper_calls(bool(model.cfg.calculate_noise))):
        out.append("helpers")
    return out


#: the background process compiling the helpers (start_helpers / wait_helpers)
_HELPERS = None
#: True once a cold run's second process has taken over the background build
#: of the start-up library (_split_compile): the CLI then starts none itself
LIBRARY_DELEGATED = False


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
    """Wait for the helpers of start_helpers' or _split_compile's second
    process (if any): they are then loaded from the cache instead of compiled
    here (if it failed, they compile here).  A split's second process says
    "helpers" on its stdout and goes on, detached, with the other image loop;
    start_helpers' process ends."""
    global _HELPERS
    p, _HELPERS = _HELPERS, None
    if p is None:
        return
    from .kernels.native import reap_in_background
    try:
        if p.stdout is not None:
            import select
            if select.select([p.stdout], [], [], 120)[0]:
                p.stdout.readline()     # "helpers" (or "": the process ended)
            p.stdout.close()
            reap_in_background(p)       # it goes on with the other image loop, detached
        else:
            p.wait(timeout=120)
    except Exception:                   # never let the second process stop a run
        p.kill()
        reap_in_background(p)


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


def compile_entry(name: str) -> None:
    """Compile (or load) image loop ``name`` ("render_rows" or
    "render_blocks") by running it on _TINY_ARGV's 4x4 model (a block run:
    either loop renders it), with the argument types api passes."""
    from .kernels import cpu as K
    model, args = _tiny_kernel_args()
    probe = list(_entry_probe(model, args))
    probe[-2] = model.shape[0]          # rows 0 .. S - 1, step 1
    probe[-1] = 1
    getattr(K, name)(*probe)


def compile_lattice(float64=True, float32=True) -> None:
    """Compile (or load) the square-crystal lattice loops (float64 and / or
    float32 sines), with the argument types pixel_value and the block path
    pass them: the first thing a cold split run compiles (the float32 one in
    the second process when the run's loop is render_rows), so that each
    image loop finds them in the cache."""
    import numpy as np
    from numba import typeof
    from .kernels import cpu as K
    _, args = _tiny_kernel_args()
    cells = args[5]
    sig = tuple(typeof(a) for a in (0, (0.0, 0.0, 0.0), cells,
                                    np.empty((K.N_WORK, cells.shape[2])), 0.0, 0.0, 0.0))
    if float64:
        K._lattice_square_fast.compile(sig)
    if float32:
        K._lattice_square_fast32.compile(sig)


def compile_block_geometry() -> None:
    """Compile (or load) the block path's per-pixel geometry (about 2 s), with
    the argument types _block_row passes it (compiled, not called)."""
    import numpy as np
    from numba import typeof
    from .kernels import cpu as K
    _, args = _tiny_kernel_args()
    iopt, fopt, vecs, incident, lam = args[:5]
    K._block_geometry.compile(tuple(typeof(a) for a in (
        0, np.zeros(K.BLOCK, np.int64), 0, iopt, fopt, vecs, incident, lam,
        np.empty((K.N_BLOCK, K.BLOCK)), np.zeros((2, K.BLOCK), np.int64))))


def compile_buffers() -> None:
    """Compile (or load) render_rows' buffer builders, lattice_cells,
    lane_buffer and lane_work (about 0.5 to 1 s), with the argument types it
    passes them."""
    from numba import typeof
    from .kernels import cpu as K
    _, args = _tiny_kernel_args()
    iopt, cells = args[0], args[5]
    K.lattice_cells.compile((typeof(iopt), typeof(cells)))
    K.lane_buffer.compile((typeof(0), typeof(cells)))
    K.lane_work.compile((typeof(0), typeof(cells)))


def compile_pixel_callees() -> None:
    """Compile (or load) the functions pixel_value types last, the general
    lattice factor, the tricubic F and the ordered lean sum (about 1.7 s
    together), with the argument types it passes them (compiled, not called:
    the probe values would index outside the grid)."""
    import numpy as np
    from numba import typeof
    from .kernels import cpu as K
    _, args = _tiny_kernel_args()
    cells, Fhkl = args[5], args[6]
    v3 = (0.0, 0.0, 0.0)
    K._lattice_general.compile(tuple(typeof(a) for a in (
        0, v3, cells, np.empty((K.N_WORK, cells.shape[2])), 0, 1.0, 1.0, 1.0, 1.0, 1.0, v3, v3,
        v3, 0)))
    K.tricubic_F.compile(tuple(typeof(a) for a in (Fhkl, 0, 0, 0, 0.0, 0.0, 0.0)))
    K._ordered_lean_sum_call.compile(tuple(typeof(a) for a in (
        np.empty((K.N_WORK, cells.shape[2])), 0, 0, Fhkl, 0, 0, 0, 0, 0, 0, 0, 1.0)))


def _split_compile(cold, entry) -> None:
    """A cold image loop on two cores.  This process compiles the lattice
    loops (only the float64 one when ``entry`` is render_rows), then (the
    run's call) its image loop ``entry``.  A second process compiles, in this
    order:

    - for render_rows: its buffer builders, the float32-sine lattice loop,
      the general lattice factor and the tricubic F (render_rows reaches the
      first at its start, pixel_value the others later);
    - for render_blocks: the block path's geometry (_block_row reaches it
      after the lattice loops);
    - the helpers, then it says "helpers" (the run's statistics wait for that
      line: wait_helpers);
    - detached from this run and at low priority, the other image loop, so
      that later runs find both in the cache;
    - with ``--build`` (when a CLI run would start a background build of the
      start-up library: LIBRARY_DELEGATED tells it not to), that library,
      linked from numba's cache, now warm (seconds, not a second compile).

    The run finds what the second process compiled in the cache.  If it
    cannot start, the run compiles what it needs itself, as on one core."""
    global _HELPERS, LIBRARY_DELEGATED
    import subprocess
    from .kernels import native
    other = "render_blocks" if entry == "render_rows" else "render_rows"
    build = native.background_build_wanted()
    try:
        p = native.python_process(["nbnumba.jitcache", "--second", other]
                                  + (["--callees"] if entry == "render_rows" else ["--geometry"])
                                  + (["--helpers"] if "helpers" in cold else [])
                                  + (["--build"] if build else []),
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                  start_new_session=True)
    except OSError:
        return
    _HELPERS = p
    LIBRARY_DELEGATED = build
    compile_lattice(float32=entry != "render_rows")


def _second(argv) -> int:
    """python -m nbnumba.jitcache --second ENTRY [--callees | --geometry] [--helpers] [--build]"""
    if argv[:1] != ["--second"] or len(argv) < 2 or argv[1] not in ("render_rows", "render_blocks") \
            or not set(argv[2:]) <= {"--callees", "--geometry", "--helpers", "--build"}:
        return 2
    lock = None
    if "--build" in argv:
        # the build's lock, held while this process compiles (25 s and more on a
        # cold cache): a run meanwhile saw no build and started a full one of its own
        from .kernels import native
        lock = native.take_build_lock() if native.background_build_wanted() else False
        if lock is False:
            argv = [a for a in argv if a != "--build"]
    if "--callees" in argv:
        compile_buffers()               # render_rows reaches them first,
        compile_lattice(float64=False)  # pixel_value this after ~2 s,
        compile_pixel_callees()         # and these last
    if "--geometry" in argv:
        compile_block_geometry()
    if "--helpers" in argv:
        compile_helpers()
    try:
        print("helpers", flush=True)
        sys.stdout.close()
    except OSError:                     # the run has gone: go on
        pass
    import os
    try:
        os.nice(10)                     # the rest is for later runs
    except (AttributeError, OSError):
        pass
    compile_entry(argv[1])
    if "--build" in argv:
        if lock:
            lock.close()                # (the build takes it next)
        if native.background_build_wanted():
            native.start_build(background=True, numba_cache=True)
    return 0


def announce_compile(model, file=None) -> bool:
    """Print "compiling kernels (first run only, ~N s)" on stderr when the
    model's kernels are not in the cache yet; returns whether it printed.
    With two cores the compile then runs in two processes: split
    (_split_compile) when the image kernel is cold, else the helpers' compile
    in a second process."""
    cold = cold_kernels(model)
    if not cold:
        return False
    entry = next((k for k in cold if k in ("render_rows", "render_blocks")), None)
    split = entry is not None and _two_cores()
    parallel = not split and "helpers" in cold and len(cold) > 1 and start_helpers()
    if split:
        n = COMPILE_SECONDS["split_" + entry] + (
            COMPILE_SECONDS["trace_pixel"] if "trace_pixel" in cold else 0)
    else:
        n = sum(COMPILE_SECONDS.get(k, 10) for k in cold if not (parallel and k == "helpers"))
    print("nbnumba: compiling kernels (first run only, ~%d s; `nbnumba --warmup` does it ahead "
          "of time)" % n, file=file or sys.stderr, flush=True)
    if split:
        _split_compile(cold, entry)
    return True


def warmup(file=None) -> int:
    """Compile (or load from the cache) both image loops, the helpers and the
    mosaic draws (not the trace: see WARMUP_ARGV) into numba's cache, then
    build the start-up library (kernels.native) from that cache; returns 0 (a
    library that cannot be built is reported; runs then use numba's cache),
    or 1 when numba's cache could not be written (a full disk, a quota).

    On two cores a second process compiles the block path's geometry, the
    helpers and render_blocks while this one compiles the lattice loops and
    render_rows (as a cold run splits: _split_compile); the library build
    then only links what the cache holds (about 6 s)."""
    import subprocess
    import tempfile
    from .api import simulate_argv
    from .kernels import native
    from .kernels.native import python_process
    from . import numba_cache
    file = file or sys.stderr
    t0 = time.perf_counter()
    failures = len(numba_cache.SAVE_FAILURES)
    lib = native.enabled() and native.aot_module() is None
    second = None
    if _two_cores():
        try:
            second = python_process(["nbnumba.jitcache", "--second", "render_blocks",
                                     "--geometry", "--helpers"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        except OSError:
            second = None
    n = (max(COMPILE_SECONDS["render_rows"], COMPILE_SECONDS["render_blocks"]
             + COMPILE_SECONDS["helpers"]) if second is not None else
         COMPILE_SECONDS["render_rows"] + COMPILE_SECONDS["render_blocks"]
         + COMPILE_SECONDS["helpers"]) + (COMPILE_SECONDS["library"] if lib else 0)
    print("nbnumba: compiling kernels (once per install; ~%d s)" % n, file=file, flush=True)
    # numba's cache: what the trace, autodiff and any call the library does not
    # cover use (with the library present, these runs load it, not numba).
    # -c_parity first (render_rows), the second process meanwhile render_blocks.
    compile_lattice()
    with native.jit_only(), tempfile.TemporaryDirectory(prefix="nbnumba-warmup-") as d:
        for line in reversed(WARMUP_ARGV):
            if line is WARMUP_ARGV[0] and second is not None:
                second.wait()           # render_blocks and the helpers: in the cache
            simulate_argv(line.split(), cwd=d, noprogress=True, progress_meter=False)
    note = numba_cache.save_failure_note(failures)
    if note:        # (what --warmup is for did not happen: say so, exit 1)
        print(note.replace("warning: ", "error: ", 1), file=file, flush=True)
        if second is not None:
            second.wait()
        return 1
    if lib:
        try:
            build = native.start_build(numba_cache=True)
            err = build.communicate()[1]
        except OSError as exc:
            err = str(exc)
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


if __name__ == "__main__":      # python -m nbnumba.jitcache [--helpers | --second ENTRY ...]
    if sys.argv[1:] == ["--helpers"]:
        compile_helpers()
        sys.exit(0)
    if sys.argv[1:2] == ["--second"]:
        sys.exit(_second(sys.argv[1:]))
    if sys.argv[1:]:
        # (any other argument, --help too, ran the whole warm-up)
        print("usage: python -m nbnumba.jitcache [--helpers | --second ENTRY ...]\n"
              "(an internal module: `nbnumba --warmup` compiles the kernels ahead of time)",
              file=sys.stdout if sys.argv[1:] in (["-h"], ["--help"]) else sys.stderr)
        sys.exit(0 if sys.argv[1:] in (["-h"], ["--help"]) else 2)
    sys.exit(warmup())
