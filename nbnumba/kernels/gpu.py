"""CUDA backend: the pixel kernel of ``nanobragg.cu`` run through CuPy.

``render(model, dtype)`` is what ``api.render_float`` calls for ``-device
cuda``.  It uploads the kernel arguments (:func:`kernel_args`) once, launches
one thread per pixel (blocks of :data:`BLOCK` threads) over bands of rows
(:func:`launch_rows`: no launch is estimated to run longer than
:data:`LAUNCH_BUDGET_S`) and returns CuPy arrays: the float32 image (S, F)
and the solid-angle sums per row, reduced on the device.  Nothing is copied
back to the host; ``Result.to_torch()`` / DLPack hand the image to other GPU
libraries without a copy.  A torch ``out=`` tensor is written on torch's
current CUDA stream (:func:`_stream_for`).

The kernel source is a transcription of ``cpu.pixel_value`` (see the header
of ``nanobragg.cu``).  It is checked without a GPU in two ways (see
``tests/test_gpu_source.py`` and ``docs/gpu.md``):

* ``nvcc -ptx`` must compile it for sm_80 and sm_90 (:func:`nvcc_command`);
* the same file compiled as host C++ (:func:`build_host_library`, with
  ``cuda_compat.h`` force-included) and run through ctypes
  (:class:`HostKernel`) must reproduce the numba engine.

``-c_parity`` is handled like ``api._c_parity_fixups`` does for the numba
engine, with the same extra GPU passes (:func:`run_passes`): the pixel that
first runs a phi loop and the interpolation latch are found on the device and
the image is re-rendered with them.

``trace_pixel`` is ``-trace_pixel`` on the device: a one-thread launch of the
kernel's trace build (``-DNB_TRACE``) that records ``cpu.py``'s trace events.
"""
from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Callable, Optional, Tuple

import numpy as np

from ..errors import ConfigError, NBError
from . import cpu as K

KERNEL_DIR = Path(__file__).resolve().parent
SOURCE = KERNEL_DIR / "nanobragg.cu"
COMPAT_HEADER = KERNEL_DIR / "cuda_compat.h"

#: threads per block (one pixel per thread)
BLOCK = 256

#: kernel entry point per working precision
ENTRY_POINTS = {"float64": "render_f64", "float32": "render_f32"}

#: the adjoint kernel of nbnumba.autodiff (float64 only; built with the
#: float64 options, in the render_f64 module)
ADJOINT_ENTRY_POINT = "adjoint_f64"

#: adjoint_f64's ``mode`` argument
ADJOINT_VALUES, ADJOINT_GRAD, ADJOINT_GRAD_F = 0, 1, 2

#: assumed cost of one adjoint sub-path in forward sub-paths (the derivative
#: formulas, the per-cell sums): sizes the adjoint's row bands only, not a
#: measurement
ADJOINT_COST = 4

#: length of the CUDA adjoint's per-pixel rows (the kernel's N_PAR, checked by
#: HostKernel against kernels/adjoint.py N_PAR_DEVICE): all of theta; the
#: spindle's entries are left 0 there (the host contracts them from cacc)
ADJOINT_N_PAR = 49
#: most per-source blocks the CUDA adjoint takes (nanobragg.cu's NB_MAX_INC):
#: one per entry P_BEAM..P_DISP
ADJOINT_MAX_INC = 6

#: one-thread trace entry points (compiled with TRACE_OPTION, see trace_pixel)
TRACE_ENTRY_POINTS = {"float64": "trace_f64", "float32": "trace_f32"}
TRACE_OPTION = "-DNB_TRACE"

#: NVRTC/nvcc options, the same for both precisions, each chosen on purpose
#: (docs/gpu.md, "Compiler options"; tests/test_gpu_source.py checks them):
#:
#: * ``--fmad=false``: no contraction of a*b+c into an FMA.  Both kernels
#:   perform the numba engine's strict operations one for one (float32 is the
#:   numba engine's -precision single, whose float32 part is a polynomial that
#:   contraction would round differently).  The numba kernel's two fast-math
#:   sections (``cpu.FAST_MATH``) are not reproduced: see
#:   :func:`numba_fast_math` and the tolerances below it.
#: * ``-ftz=true``: CuPy appends it to every compilation anyway (after ours,
#:   and NVRTC honours the last one), so we state it rather than pretend
#:   otherwise.  It flushes float32 denormals only: the kernels' float32
#:   values are the reduced-sincg sines and their quotient, which are
#:   denormal only when a lattice factor is below 1.2e-38 (its square adds
#:   nothing to a float64 sum) or when h lies within 1e-38 of the direct beam.
#: * ``-prec-div=true``, ``-prec-sqrt=true``: IEEE-rounded float32 division
#:   and square root (NVRTC's defaults, stated so that no fast-math switch
#:   can slip in); float64 division and sqrt are always IEEE on the GPU.
COMPILE_OPTIONS = {
    "float64": ("-std=c++17", "--fmad=false", "-ftz=true", "-prec-div=true", "-prec-sqrt=true"),
    "float32": ("-std=c++17", "--fmad=false", "-ftz=true", "-prec-div=true", "-prec-sqrt=true"),
}

# ---- where the CUDA kernel can and cannot reproduce the numba kernel's bits
#
# The numba kernel compiles two sections with LLVM fast-math (cpu.FAST_MATH:
# FMA contraction and reassociation), both only where the arithmetic is not
# nanoBragg.c's: ``_lattice_square_fast`` (square crystal, reduced sincg: the
# reduction e = N d - m and the sine polynomials, after the exact Miller
# indices) and ``_lean_sum`` (the default mode's sum of F^2 F_latt^2 over the
# (phi, mosaic) cells of one sub-path, reordered and vectorised; in the runs the
# block path takes, ``_ordered_lean_sum``: strict IEEE, but in a fixed order of
# eight partial sums, not C's).  Whether LLVM
# emits FMAs there depends on the CPU numba compiles for (fused on a CPU with
# FMA, separately rounded without), so no fixed CUDA arithmetic can equal it;
# the CUDA kernel (built with --fmad=false, and its host build) rounds every
# product and sum separately, in C order.  Everything else, and so every
# -c_parity float64 run, is strict IEEE on both sides: bit for bit.
#
# Bounds where a fast-math section is taken (docs/gpu.md, "The GPU parity
# contract"; tests/test_gpu_source.py and benchmarks/gpu_check.py use them):
#
# * float64 kernel: the sines are float64 polynomials, so a fused rounding
#   moves a lattice factor by a few 1e-16 relative (more only near its zeros,
#   where the term is negligible) and the reordered sum by a few 1e-16; a
#   pixel's double value moves by at most FAST_F64_REL relative (measured
#   1.7e-15 on the golden and extra cases), so its float32 store rounds the
#   other way at most once: FAST_MAX_ULP["float64"] = 1.
# * float32 kernel (-precision single): the two sines are float32 polynomials
#   of 5 Horner steps.  Fused against separately rounded steps, sin(pi x)
#   differs by at most SINE_FMA_UNITS units of 2**-24 relative over
#   |x| <= 1/2 (measured on 5e6 arguments: 3).  One lattice factor
#   fl32(sin(pi e) / sin(pi d)) then differs by at most 2 x 3 (two sines)
#   + 2 (the quotient rounds twice) + 1 (the contracted float64 reduction
#   e = N d - m can move fl32(e) by one ulp) = FAST_F32_FACTOR units, and a
#   term F^2 (fa fb fc)^2 by 6 x that = FAST_F32_TERM units.  A pixel is a
#   sum of such non-negative terms, so its double value moves by at most the
#   same relative amount, and its float32 store adds one rounding step:
#   FAST_MAX_ULP["float32"] = FAST_F32_TERM + 1 float32 ulps (measured: 14).
FAST_F64_REL = 1e-13
SINE_FMA_UNITS = 3
FAST_F32_FACTOR = 2 * SINE_FMA_UNITS + 2 + 1
FAST_F32_TERM = 6 * FAST_F32_FACTOR
#: largest float32-image distance (in float32 ulps, per pixel) from the numba
#: image where :func:`numba_fast_math` is true; 0 (bit for bit) where it is false
FAST_MAX_ULP = {"float64": 1, "float32": FAST_F32_TERM + 1}
#: relative bound on one lattice factor / a lattice-factor product / a pixel
#: sum (trace values) per kernel precision where a fast-math section is taken
FAST_REL = {"float64": {"factor": FAST_F64_REL, "term": FAST_F64_REL},
            "float32": {"factor": FAST_F32_FACTOR * 2.0 ** -24,
                        "term": FAST_F32_TERM * 2.0 ** -24}}


def numba_fast_math(iopt, trace: bool = False) -> bool:
    """Whether the numba kernel, run with kernel options ``iopt`` (as
    :func:`kernel_args` lays them out for the precision: I_REDUCED is 2 for
    float32), takes one of its fast-math sections: the square-crystal lattice
    loop on reduced sincg, or (image only, not the trace) the lean sum.
    Mirrors ``cpu.pixel_value``'s branch conditions.  False: the CUDA kernel
    performs exactly the numba kernel's operations (bit for bit on the host
    build)."""
    c_parity = iopt[K.I_CPARITY] != 0
    lattice = iopt[K.I_SHAPE] == 0 and iopt[K.I_REDUCED] != 0
    lean = (not c_parity and iopt[K.I_INTERP] == 0 and not trace
            and not (iopt[K.I_OS_THICK] or iopt[K.I_OS_POLAR] or iopt[K.I_OS_OMEGA]))
    return bool(lattice or lean)


def fast_pixel_rel(iopt) -> float:
    """Relative bound on a pixel's float64 value (the float64 kernel against
    the numba kernel) where :func:`numba_fast_math` is true: FAST_F64_REL for
    the fused lattice factors plus 2 (n - 1) 2**-53 for the lean sum of the
    n = phi x mosaic cells of a sub-path added in another order (a sum of n
    non-negative terms rounds by at most (n - 1) 2**-53 relative in any order)."""
    n = int(iopt[K.I_NPHI]) * int(iopt[K.I_NMOS])
    return FAST_F64_REL + 2.0 * max(n - 1, 0) * 2.0 ** -53


def float32_ulps(a, b) -> np.ndarray:
    """Per-element distance of two arrays in float32 units in the last place
    (sign-aware; both are rounded to float32 first)."""
    def ordered(x):
        i = np.ascontiguousarray(x, dtype=np.float32).view(np.int32).astype(np.int64)
        return np.where(i < 0, -(i & 0x7FFFFFFF), i)
    return np.abs(ordered(a) - ordered(b))


def numba_parity(ref, got, iopt, dtype) -> dict:
    """How float32 image ``got`` (CUDA kernel, precision ``dtype``) agrees with
    the numba engine's ``ref`` for the run with kernel options ``iopt`` (as
    :func:`kernel_args` gives them for ``dtype``): ``fast_math`` (a fast-math
    section was taken), ``max_ulp``, ``allowed_ulp`` (0 = bit for bit, else
    FAST_MAX_ULP) and ``ok``."""
    name = _dtype_name(dtype)
    fast = numba_fast_math(iopt)
    ref = np.asarray(ref)
    got = np.asarray(got)
    same_nan = np.array_equal(np.isnan(ref), np.isnan(got))
    fin = ~np.isnan(ref)
    ulp = int(float32_ulps(ref[fin], got[fin]).max()) if fin.any() else 0
    allowed = FAST_MAX_ULP[name] if fast else 0
    ok = bool(np.array_equal(ref, got, equal_nan=True)) if not fast else (same_nan and ulp <= allowed)
    return {"fast_math": fast, "max_ulp": ulp, "allowed_ulp": allowed, "ok": ok}


#: options CuPy itself appends to every NVRTC compilation
#: (cupy.cuda.compiler); they are part of COMPILE_OPTIONS already
CUPY_ADDED_OPTIONS = ("-ftz=true",)

#: element type of each kernel's F grid (every other real array is float64)
FGRID_DTYPE = {"float64": np.float64, "float32": np.float32}

#: no single launch should run longer than this (display GPUs kill kernels
#: after a few seconds; 0.1 s keeps a desktop responsive)
LAUNCH_BUDGET_S = 0.1

#: sub-paths per second assumed when sizing launches: an assumed floor for a
#: slow (consumer, float64) GPU, not a measurement; faster GPUs run shorter
#: launches.  NB_CUDA_SUBPATHS_PER_LAUNCH overrides the product.
ASSUMED_SUBPATHS_PER_S = 2.0e9

#: g++ flags of the host build (the kernel source compiled as plain C++)
HOST_CXX_FLAGS = ("-O2", "-std=c++17", "-ffp-contract=off", "-shared", "-fPIC", "-x", "c++")

MSG_NO_CUPY = "-device cuda: CuPy is not installed (pip install nbnumba[gpu])"
MSG_NO_DEVICE = "-device cuda: no CUDA device found"

_MODULES = {}
_LOCK = threading.Lock()


def source_text() -> str:
    """The CUDA source of the pixel kernel."""
    return SOURCE.read_text()


def _dtype_name(dtype) -> str:
    name = np.dtype(dtype).name
    if name not in ENTRY_POINTS:
        raise ConfigError("-device cuda: unsupported working precision %s (float64 or float32)"
                          % name)
    return name


# ------------------------------------------------------------------ CuPy side
def _import_cupy():
    try:
        import cupy  # noqa: F401
    except Exception:
        return None
    return cupy


def available() -> bool:
    """True when CuPy imports and at least one CUDA device is visible.  Never raises."""
    try:
        cp = _import_cupy()
        if cp is None:
            return False
        return int(cp.cuda.runtime.getDeviceCount()) > 0
    except Exception:
        return False


def require_device():
    """The ``cupy`` module, or ConfigError saying why ``-device cuda`` cannot run."""
    cp = _import_cupy()
    if cp is None:
        raise ConfigError(MSG_NO_CUPY)
    try:
        n = int(cp.cuda.runtime.getDeviceCount())
    except Exception:
        n = 0
    if n <= 0:
        raise ConfigError(MSG_NO_DEVICE)
    return cp


def get_kernel(dtype, cp=None, trace: bool = False, entry: Optional[str] = None):
    """The compiled ``render_f64``/``render_f32`` kernel for the current device
    (one NVRTC compilation per precision and device, cached); with ``trace``,
    the ``trace_f64``/``trace_f32`` kernel of a separate build with
    ``-DNB_TRACE`` (the render kernels carry no trace code).  ``entry``:
    another entry point of the same build (:data:`ADJOINT_ENTRY_POINT`)."""
    cp = cp or require_device()
    name = _dtype_name(dtype)
    key = (name, int(cp.cuda.runtime.getDevice()), bool(trace))
    options = COMPILE_OPTIONS[name] + ((TRACE_OPTION,) if trace else ())
    entry = entry or (TRACE_ENTRY_POINTS if trace else ENTRY_POINTS)[name]
    with _LOCK:
        mod = _MODULES.get(key)
        if mod is None:
            mod = cp.RawModule(code=source_text(), options=options)
            _MODULES[key] = mod
        try:
            return mod.get_function(entry)   # NVRTC runs here, once
        except Exception as exc:
            _MODULES.pop(key, None)
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise NBError("-device cuda: compiling %s failed: %s" % (SOURCE.name, first)) from exc


#: length of the iopt vector the CUDA kernel reads: cpu.py's layout plus the
#: F grid's 2nd and 3rd dimensions (see :func:`kernel_args`)
N_IOPT_EXT = K.N_IOPT + 2


def cells_aos(cells, nphi, nmos):
    """Rotated cells in the CUDA kernel's layout ``[variant][phi][mosaic][a|b|c][xyz]``
    (shape (2, nphi, nmos, 3, 3), C order) from either layout the model has
    used: that one, or the numba kernel's structure-of-arrays
    ``(2, 9, nphi*nmos)`` = [variant, (ax ay az bx .. cz), phi*nmos+mos]."""
    cells = np.asarray(cells)
    if cells.ndim == 5:
        out = cells
    elif cells.ndim == 3 and cells.shape[1] == 9:
        out = cells.transpose(0, 2, 1).reshape(cells.shape[0], nphi, nmos, 3, 3)
    else:
        raise NBError("unexpected cells array of shape %s" % (cells.shape,))
    if out.shape != (2, nphi, nmos, 3, 3):
        raise NBError("cells array of shape %s does not match %d phi steps x %d mosaic domains"
                      % (cells.shape, nphi, nmos))
    return np.ascontiguousarray(out)


def kernel_args(model, dtype):
    """The numba engine's arguments for ``dtype`` laid out for the CUDA kernel.

    float64: ``model.kernel_args(float64)``.  float32: the same with the numba
    engine's -precision single changes (``Model.cpu_kernel_args``): float32
    lattice sines (iopt[I_REDUCED] = 2) and a float32 F grid; everything else
    stays float64.  All arrays C-contiguous (flattened in C order by the
    launch), the incident array (nsrc, 4) as the numba kernel takes it (per
    source the incident unit vector, then the factor its terms carry), the
    cells as ``[variant][phi][mosaic][3][3]`` (:func:`cells_aos`), and iopt
    extended by the F grid's second and third dimensions, which the
    numba kernel takes from the 3-D array's shape but a flat device buffer
    cannot carry."""
    return layout_args(model.kernel_args(np.float64), dtype)


def layout_args(args, dtype):
    """:func:`kernel_args` from the numba kernel's float64 argument tuple
    ``(iopt, fopt, vecs, incident, lam, cells, Fhkl)`` (nbnumba.autodiff
    passes its own: its iopt and F grid may differ from the model's)."""
    name = _dtype_name(dtype)
    iopt, fopt, vecs, incident, lam, cells, Fhkl = args
    iopt = np.array(iopt, dtype=np.int64)
    if name == "float32":
        iopt[K.I_REDUCED] = 2
    Fhkl = np.asarray(Fhkl, dtype=FGRID_DTYPE[name])
    cells = cells_aos(cells, int(iopt[K.I_NPHI]), int(iopt[K.I_NMOS]))
    Fhkl = np.ascontiguousarray(Fhkl)
    if Fhkl.ndim != 3:
        raise NBError("F grid must be 3-D, got shape %s" % (Fhkl.shape,))
    # the kernel reads incident[4 s + 3] (the source's factor): a 3-column
    # array would be read out of step, not refused
    if np.shape(incident) != (int(iopt[K.I_NSRC]), 4):
        raise NBError("incident array of shape %s does not match %d sources x 4 (the incident "
                      "vector and the source's factor)" % (np.shape(incident), int(iopt[K.I_NSRC])))
    ext = np.empty(N_IOPT_EXT, dtype=np.int64)
    ext[:K.N_IOPT] = iopt[:K.N_IOPT]
    ext[K.N_IOPT] = Fhkl.shape[1]
    ext[K.N_IOPT + 1] = Fhkl.shape[2]
    fl = tuple(np.ascontiguousarray(a, dtype=np.float64) for a in (fopt, vecs, incident, lam, cells))
    return (ext,) + fl + (Fhkl,)


def subpaths_per_pixel(iopt) -> int:
    """Sub-paths one pixel sums: oversample^2 x sensor layers x sources x phi x mosaic."""
    os_ = int(iopt[K.I_OVERSAMPLE])
    return max(1, os_ * os_ * int(iopt[K.I_THICKSTEPS]) * int(iopt[K.I_NSRC])
               * int(iopt[K.I_NPHI]) * int(iopt[K.I_NMOS]))


def launch_rows(S: int, F: int, subpaths: int, budget_s: float = None, rate: float = None):
    """Row bands ``[(row0, row1), ...]`` covering 0..S, each small enough that
    one launch is estimated (at ``rate`` sub-paths/s) to take at most
    ``budget_s`` seconds; at least one row per launch."""
    budget_s = LAUNCH_BUDGET_S if budget_s is None else budget_s
    rate = ASSUMED_SUBPATHS_PER_S if rate is None else rate
    env = os.environ.get("NB_CUDA_SUBPATHS_PER_LAUNCH")
    cap = float(env) if env else budget_s * rate
    per_row = max(1, int(F)) * max(1, int(subpaths))
    rows = max(1, int(cap // per_row))
    return [(r, min(int(S), r + rows)) for r in range(0, int(S), rows)]


def launch_args(active, S, F, row0, row1, first_pixel, latch_pixel, latch_sub, dev_args, out,
                omega, oor, ran):
    """The exact argument tuple of one ``render_f64``/``render_f32`` launch:
    scalars as ``np.int64`` (the kernel's ``long long``; CuPy packs a numpy
    scalar by its dtype), arrays as given.  See the kernel's signature in
    nanobragg.cu; tests/test_gpu_source.py checks each type against it."""
    ints = tuple(np.int64(v) for v in (S, F, row0, row1, first_pixel, latch_pixel, latch_sub))
    return (active,) + ints + tuple(dev_args) + (out, omega, oor, ran)

def run_passes(model, launch: Callable[[int, int, int], None], active, oor, ran, xp) -> None:
    """Render with ``launch(first_pixel, latch_pixel, latch_sub)`` and, under
    ``-c_parity``, repeat it the way ``api._c_parity_fixups`` does.

    ``active``/``oor``/``ran`` are the arrays the launches read and fill, in the
    array module ``xp`` (numpy or cupy); only a few scalars leave the device.
    Sets ``model.first_exec_pixel`` and ``model.latch`` like the CPU path.
    """
    host_active = np.asarray(model.active).ravel()
    first = int(np.argmax(host_active != 0)) if host_active.any() else -1
    c_parity = bool(model.cfg.c_parity)
    launch(first if c_parity else -1, -1, -1)
    if not c_parity and model.interpolate:
        model.interp_fallback = int((oor.ravel() >= 0).sum())
    if not c_parity or first < 0:
        return
    act = active.ravel() != 0
    # 1. phi=0 carry-over: the first pixel that really ran a phi loop
    runs = xp.flatnonzero(act & (ran.ravel() != 0))
    first_true = int(runs[0]) if runs.size else -1
    if first_true != first:
        launch(first_true, -1, -1)
    model.first_exec_pixel = first_true
    # 2. interpolation latch after the first out-of-range tricubic lookup
    oorflat = oor.ravel()
    bad = xp.flatnonzero(act & (oorflat >= 0))
    if model.interpolate and bad.size:
        p = int(bad[0])
        sub = int(oorflat[p])
        model.latch = (p, sub)
        launch(first_true, p, sub)


def adjoint_launch_args(active, g, S, F, row0, row1, mode, dev_args, gpar, cacc, gF, val,
                        dinc, ninc):
    """The exact argument tuple of one ``adjoint_f64`` launch (scalars as
    ``np.int64``; see the kernel's signature in nanobragg.cu, checked by
    tests/test_gpu_adjoint.py).  dinc (4 ninc, nsrc): the per-source blocks
    (:func:`adjoint_blocks`)."""
    ints = tuple(np.int64(v) for v in (S, F, row0, row1, mode))
    return (active, g) + ints + tuple(dev_args) + (gpar, cacc, gF, val, dinc, np.int64(ninc))


def adjoint_blocks(dinc):
    """(dinc as a C-contiguous float64 array with at least one element, ninc):
    the kernel's per-source blocks from autodiff's (4 Q, nsrc) array, block q
    for theta entry P_BEAM + q (None or width 0: none)."""
    if dinc is None or dinc.size == 0:
        return np.zeros(1), 0
    ninc = dinc.shape[0] // 4
    if ninc > ADJOINT_MAX_INC:
        raise ValueError("at most %d per-source blocks (got %d)" % (ADJOINT_MAX_INC, ninc))
    return np.ascontiguousarray(dinc, dtype=np.float64), ninc


def adjoint_bands(args, S: int, F: int):
    """Row bands of the adjoint's launches: :func:`launch_rows` with each
    sub-path counted :data:`ADJOINT_COST` times."""
    return launch_rows(S, F, ADJOINT_COST * subpaths_per_pixel(args[0]))


def adjoint_pass(launch: Callable, xp, args, S: int, F: int, mode: int, bands):
    """Drive ``adjoint_f64`` over row ``bands`` and reduce its outputs.

    ``launch(row0, row1, gpar, cacc, gF, val)`` runs one band (``args`` from
    :func:`layout_args`, float64, already where ``launch`` needs them; only
    iopt and the F grid's shape are read here).  Returns ``(val (S, F),
    gpar (N_PAR,), cacc (9, ncell), gF (the F grid's shape, or None unless
    mode is ADJOINT_GRAD_F))`` as ``xp`` arrays; gpar and cacc are None in
    mode ADJOINT_VALUES.  The per-pixel gpar rows of a band are summed on the
    device, and the bands added in order: deterministic.  cacc and gF are
    atomicAdd sums in the kernel (see nanobragg.cu: not bitwise reproducible
    from run to run on a GPU)."""
    iopt = np.asarray(args[0])
    ncell = int(iopt[K.I_NPHI]) * int(iopt[K.I_NMOS])
    fshape = tuple(args[-1].shape)
    grad = mode != ADJOINT_VALUES
    val = xp.zeros((S, F), dtype=xp.float64)
    cacc = xp.zeros((9, ncell), dtype=xp.float64)
    gF = xp.zeros(fshape if mode == ADJOINT_GRAD_F else (1,), dtype=xp.float64)
    rows = max(r1 - r0 for r0, r1 in bands) if grad else 1
    # one band's per-pixel rows at a time (the kernel writes the rows of the
    # pixels it visits; the others must read 0)
    buf = xp.zeros((rows * F if grad else 1, ADJOINT_N_PAR), dtype=xp.float64)
    gpar = xp.zeros(ADJOINT_N_PAR, dtype=xp.float64) if grad else None
    for row0, row1 in bands:
        view = buf[:(row1 - row0) * F] if grad else buf
        if grad:
            view.fill(0.0)
        launch(row0, row1, view, cacc, gF, val)
        if grad:
            gpar = gpar + view.sum(axis=0)
    return (val, gpar, cacc if grad else None,
            gF if mode == ADJOINT_GRAD_F else None)


def _stream_for(out, cp):
    """The stream a render must run on: torch's current CUDA stream of the
    ``out`` tensor's device when ``out`` is a torch tensor (wrapped with
    ``cupy.cuda.ExternalStream``, so torch work queued before and after the
    render is ordered with it), else None (CuPy's current stream)."""
    if out is None or type(out).__module__.split(".")[0] != "torch":
        return None
    import torch
    ptr = int(torch.cuda.current_stream(out.device).cuda_stream)
    if ptr == 0:
        # torch's legacy default stream is CUDA's null stream: CuPy's own
        null = getattr(getattr(cp.cuda, "Stream", None), "null", None)
        if null is not None:
            return null
    return cp.cuda.ExternalStream(ptr)


class _NullContext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def block_size(kernel) -> int:
    """Threads per block: :data:`BLOCK`, or fewer (a multiple of 32) when the
    compiled kernel's registers allow fewer threads per block on this device
    (``RawKernel.max_threads_per_block``; a launch above it would fail)."""
    limit = getattr(kernel, "max_threads_per_block", None)
    try:
        limit = int(limit)
    except (TypeError, ValueError):
        return BLOCK
    if limit >= BLOCK:
        return BLOCK
    return max(32, limit - limit % 32)


def render(model, dtype=None, out=None, timing=None):
    """Render ``model`` on the current CUDA device.

    Returns ``(image, omega_rows)``: CuPy arrays, the image float32 (S, F)
    (photons per pixel, as ``floatimage.bin``), the solid-angle sums per row
    float64 (S,), reduced on the device like the numba engine's.
    ``out``: optional preallocated C-contiguous float32 (S, F) device array
    (a CuPy array or a torch CUDA tensor) that receives the image in place;
    the returned image is a CuPy view of it.  With a torch tensor, all the
    work runs on torch's current stream.
    ``timing``: optional dict; receives ``kernel_ms`` (CUDA-event time of all
    launches, synchronised), ``max_launch_ms`` (the longest launch),
    ``launches``, ``bands`` and ``block``.
    Raises ConfigError when CuPy or a device is missing.
    """
    cp = require_device()
    if dtype is None:
        dtype = np.float32 if getattr(model.cfg, "precision", "double") == "single" else np.float64
    name = _dtype_name(dtype)
    dt = np.dtype(name)
    kernel = get_kernel(dt, cp)
    S, F = model.shape
    host_args = kernel_args(model, dt)
    bands = launch_rows(S, F, subpaths_per_pixel(host_args[0]))
    stream = _stream_for(out, cp)
    with (stream if stream is not None else _NullContext()):
        dev_args = tuple(cp.asarray(a) for a in host_args)
        active = cp.asarray(np.ascontiguousarray(model.active, dtype=np.uint8))
        if out is None:
            image = cp.zeros((S, F), dtype=cp.float32)
        else:
            from ..interop import as_array, data_ptr
            image = as_array(out, like=cp.empty(0, dtype=cp.float32))
            if (image.shape != (S, F) or image.dtype != cp.float32 or not image.flags.c_contiguous
                    or data_ptr(image) != data_ptr(out)):
                raise ConfigError("out= must be a C-contiguous float32 CUDA array of shape (%d, %d)"
                                  % (S, F))
            image.fill(0)
        omega = cp.zeros((S, F), dtype=cp.float64)
        oor = cp.full((S, F), -1, dtype=cp.int64)
        ran = cp.zeros((S, F), dtype=cp.int64)

        block = block_size(kernel)
        events = []

        def launch(first_pixel, latch_pixel, latch_sub):
            for row0, row1 in bands:
                grid = ((row1 - row0) * F + block - 1) // block
                if timing is not None:
                    events.append((cp.cuda.Event(), cp.cuda.Event()))
                    events[-1][0].record()
                kernel((grid,), (block,), launch_args(active, S, F, row0, row1, first_pixel,
                                                      latch_pixel, latch_sub, dev_args, image,
                                                      omega, oor, ran))
                if timing is not None:
                    events[-1][1].record()

        run_passes(model, launch, active, oor, ran, cp)
        omega_rows = omega.sum(axis=1)
        if timing is not None:
            events[-1][1].synchronize()
            per_launch = [float(cp.cuda.get_elapsed_time(a, b)) for a, b in events]
            timing["kernel_ms"] = float(sum(per_launch))
            timing["max_launch_ms"] = max(per_launch)
            timing["launches"] = len(events)
            timing["bands"] = len(bands)
            timing["block"] = block
    return image, omega_rows


def trace_pixel(model, dtype, s: int, f: int, first_exec: bool, latch_sub: int, maxrows: int):
    """-trace_pixel on the GPU: pixel (s, f) rendered by the CUDA kernel itself
    in a one-thread launch that records cpu.py's trace events.

    Returns ``(value, rows, nrows)`` like ``cpu.trace_pixel``: the pixel value
    before the float32 store, the first ``min(nrows, maxrows)`` rows of
    ``[event, values...]`` (numpy, (n, TRACE_COLS)) and the number of events."""
    cp = require_device()
    if dtype is None:
        dtype = np.float32 if getattr(model.cfg, "precision", "double") == "single" else np.float64
    dt = np.dtype(_dtype_name(dtype))
    kernel = get_kernel(dt, cp, trace=True)
    dev_args = tuple(cp.asarray(a) for a in kernel_args(model, dt))
    tbuf = cp.zeros(max(1, int(maxrows)) * K.TRACE_COLS, dtype=cp.float64)
    tpos = cp.zeros(1, dtype=cp.int64)
    value = cp.zeros(1, dtype=cp.float64)
    omega = cp.zeros(1, dtype=cp.float64)
    info = cp.zeros(3, dtype=cp.int64)
    kernel((1,), (1,), (np.int64(s), np.int64(f), np.int64(bool(first_exec)), np.int64(latch_sub))
           + dev_args + (tbuf, tpos, np.int64(maxrows), value, omega, info))
    n = int(tpos[0])
    rows = tbuf[:min(n, int(maxrows)) * K.TRACE_COLS].reshape(-1, K.TRACE_COLS)
    to_np = getattr(cp, "asnumpy", np.asarray)
    return float(value[0]), to_np(rows), n


def adjoint(args, active, g=None, want_F: bool = False, timing=None, dinc=None):
    """The CUDA adjoint of nbnumba.autodiff on the current device.

    ``args``: :func:`layout_args` of the autodiff run (float64, host arrays);
    ``active``: (S, F) mask; ``g``: the upstream gradient (S, F), a CuPy
    array or anything ``cupy.asarray`` takes, or None for values only (the
    forward pass); ``dinc``: the per-source blocks (4 Q, nsrc) of the
    theta entries P_BEAM..P_BEAM + Q - 1 (:func:`adjoint_blocks`; None: none).  Returns
    :func:`adjoint_pass`'s tuple as CuPy arrays.
    ``timing``: optional dict, receives ``kernel_ms`` (CUDA events, all
    launches) and ``launches``.  ConfigError when CuPy or a device is missing."""
    cp = require_device()
    kernel = get_kernel(np.float64, cp, entry=ADJOINT_ENTRY_POINT)
    active = np.ascontiguousarray(active, dtype=np.uint8)
    S, F = active.shape
    dev_args = tuple(cp.asarray(a) for a in args)
    dinc, ninc = adjoint_blocks(dinc)
    d_dinc = cp.asarray(dinc)
    d_active = cp.asarray(active)
    if g is None:
        mode = ADJOINT_VALUES
        d_g = cp.zeros(1, dtype=cp.float64)
    else:
        mode = ADJOINT_GRAD_F if want_F else ADJOINT_GRAD
        d_g = cp.asarray(g, dtype=cp.float64).reshape(S, F)
        if not d_g.flags.c_contiguous:
            d_g = d_g.copy()
    block = block_size(kernel)
    events = []

    def launch(row0, row1, gpar, cacc, gF, val):
        grid = ((row1 - row0) * F + block - 1) // block
        if timing is not None:
            events.append((cp.cuda.Event(), cp.cuda.Event()))
            events[-1][0].record()
        kernel((grid,), (block,), adjoint_launch_args(d_active, d_g, S, F, row0, row1, mode,
                                                      dev_args, gpar, cacc, gF, val, d_dinc,
                                                      ninc))
        if timing is not None:
            events[-1][1].record()

    out = adjoint_pass(launch, cp, args, S, F, mode, adjoint_bands(args, S, F))
    if timing is not None:
        events[-1][1].synchronize()
        timing["kernel_ms"] = float(sum(cp.cuda.get_elapsed_time(a, b) for a, b in events))
        timing["launches"] = len(events)
    return out


# ------------------------------------------------------------------ build helpers
def nvcc_command(arch: str, dtype, output: os.PathLike, nvcc: str = "nvcc", ptx: bool = True,
                 trace: bool = False):
    """nvcc command line compiling the kernel source with the options CuPy
    compiles it with for ``dtype`` (``arch`` like ``"sm_80"``); ``trace``: the
    trace build (:data:`TRACE_OPTION`)."""
    name = _dtype_name(dtype)
    return ([nvcc, "-ptx" if ptx else "-cubin", "-arch=%s" % arch]
            + list(COMPILE_OPTIONS[name])
            + [o for o in CUPY_ADDED_OPTIONS if o not in COMPILE_OPTIONS[name]]
            + ([TRACE_OPTION] if trace else [])
            + [str(SOURCE), "-o", str(output)])


def host_build_command(output: os.PathLike, cxx: str = "g++"):
    """g++ command line building the kernel source as a host shared library."""
    return ([cxx] + list(HOST_CXX_FLAGS)
            + ["-include", str(COMPAT_HEADER), str(SOURCE), "-o", str(output)])


def build_host_library(dest_dir: os.PathLike, cxx: Optional[str] = None) -> Path:
    """Compile ``nanobragg.cu`` as host C++ into ``dest_dir/libnb_host.so``.

    For verification only (a temporary directory at test time; the library is
    never shipped).  Raises NBError when no compiler is found or it fails.
    """
    cxx = cxx or os.environ.get("CXX") or shutil.which("g++")
    if not cxx:
        raise NBError("no C++ compiler found (g++ or $CXX) for the host build of nanobragg.cu")
    output = Path(dest_dir) / "libnb_host.so"
    proc = subprocess.run(host_build_command(output, cxx), capture_output=True, text=True)
    if proc.returncode != 0:
        raise NBError("host build of nanobragg.cu failed: %s" % proc.stderr.strip().replace("\n", " | "))
    return output


_P = ctypes.c_void_p
_I = ctypes.c_longlong


def _ptr(a: np.ndarray):
    return ctypes.c_void_p(a.ctypes.data)


class HostKernel:
    """The CUDA kernel source compiled for the CPU (see :func:`build_host_library`).

    ``render(model, dtype)`` has the contract of :func:`render` but works on
    numpy arrays, with the same ``-c_parity`` passes; ``pixel(...)`` evaluates
    one pixel and returns the value in the working precision (before the
    float32 store), like ``cpu.trace_pixel``.
    """

    def __init__(self, path: os.PathLike):
        self.path = Path(path)
        self.lib = ctypes.CDLL(str(self.path))
        render_types = [_P, _I, _I, _I, _I, _I, _I, _I] + [_P] * 11
        pixel_types = [_I, _I, ctypes.c_int, _I] + [_P] * 10
        self._render = {}
        self._pixel = {}
        for name, suffix in (("float64", "f64"), ("float32", "f32")):
            fn = getattr(self.lib, "nb_host_render_" + suffix)
            fn.argtypes = render_types
            fn.restype = ctypes.c_int
            self._render[name] = fn
            fn = getattr(self.lib, "nb_host_pixel_" + suffix)
            fn.argtypes = pixel_types
            fn.restype = None
            self._pixel[name] = fn
        trace_types = [_I, _I, _I, _I] + [_P] * 9 + [_I] + [_P] * 3
        self._trace = {}
        for name, entry in TRACE_ENTRY_POINTS.items():
            fn = getattr(self.lib, entry)
            fn.argtypes = trace_types
            fn.restype = None
            self._trace[name] = fn
        self._adjoint = self.lib.nb_host_adjoint_f64
        self._adjoint.argtypes = [_P, _P, _I, _I, _I, _I, _I] + [_P] * 12 + [_I]
        self._adjoint.restype = ctypes.c_int
        layout = np.zeros(8, dtype=np.int64)
        self.lib.nb_host_layout.argtypes = [_P]
        self.lib.nb_host_layout(_ptr(layout))
        from . import adjoint as A
        expected = (N_IOPT_EXT, K.N_FOPT, K.N_VECS, BLOCK, A.N_PAR_DEVICE, A.P_LAM)
        if tuple(int(v) for v in layout[:6]) != expected or A.N_PAR_DEVICE != ADJOINT_N_PAR:
            raise NBError("nanobragg.cu option layout %s does not match cpu.py/adjoint.py %s"
                          % (tuple(layout[:6]), expected))

    def adjoint_arrays(self, active, g, row0, row1, mode, args, gpar, cacc, gF, val, dinc=None):
        """One raw ``adjoint_f64`` launch over rows row0..row1-1 (numpy arrays,
        C-contiguous; ``args`` from :func:`layout_args`; ``dinc``: as
        :func:`adjoint`'s)."""
        S, F = active.shape
        dinc, ninc = adjoint_blocks(dinc)
        for a in (active, g, gpar, cacc, gF, val) + tuple(args):
            if not a.flags.c_contiguous:
                raise ValueError("host kernel arrays must be C-contiguous")
        self._adjoint(_ptr(active), _ptr(g), S, F, row0, row1, mode, *(_ptr(a) for a in args),
                      _ptr(gpar), _ptr(cacc), _ptr(gF), _ptr(val), _ptr(dinc), ninc)

    def adjoint(self, args, active, g=None, want_F: bool = False, bands=None, dinc=None):
        """:func:`adjoint` on the host: the same outputs as numpy arrays
        (``bands``: the row bands, default :func:`adjoint_bands`)."""
        active = np.ascontiguousarray(active, dtype=np.uint8)
        S, F = active.shape
        if g is None:
            mode, g = ADJOINT_VALUES, np.zeros(1)
        else:
            mode = ADJOINT_GRAD_F if want_F else ADJOINT_GRAD
            g = np.ascontiguousarray(g, dtype=np.float64).reshape(S, F)

        def launch(row0, row1, gpar, cacc, gF, val):
            self.adjoint_arrays(active, g, row0, row1, mode, args, gpar, cacc, gF, val, dinc)

        return adjoint_pass(launch, np, args, S, F, mode,
                            adjoint_bands(args, S, F) if bands is None else bands)

    def launch_arrays(self, dtype, active, first_pixel, latch_pixel, latch_sub, args, out, omega,
                      oor, ran, row0=0, row1=None):
        """One raw launch over rows row0..row1-1 (default: all; ``args`` from
        :func:`kernel_args`)."""
        name = _dtype_name(dtype)
        S, F = active.shape
        row1 = S if row1 is None else row1
        for a in (active, out, omega, oor, ran) + tuple(args):
            if not a.flags.c_contiguous:
                raise ValueError("host kernel arrays must be C-contiguous")
        self._render[name](_ptr(active), S, F, row0, row1, first_pixel, latch_pixel, latch_sub,
                           *(_ptr(a) for a in args), _ptr(out), _ptr(omega), _ptr(oor), _ptr(ran))

    def render(self, model, dtype=np.float64):
        """(float32 image, per-pixel omega) as numpy arrays, ``-c_parity`` passes
        included (one launch over all rows per pass)."""
        dt = np.dtype(_dtype_name(dtype))
        args = kernel_args(model, dt)
        S, F = model.shape
        active = np.ascontiguousarray(model.active, dtype=np.uint8)
        out = np.zeros((S, F), dtype=np.float32)
        omega = np.zeros((S, F), dtype=np.float64)
        oor = np.full((S, F), -1, dtype=np.int64)
        ran = np.zeros((S, F), dtype=np.int64)

        def launch(first_pixel, latch_pixel, latch_sub):
            self.launch_arrays(dt, active, first_pixel, latch_pixel, latch_sub, args, out, omega,
                               oor, ran)

        run_passes(model, launch, active, oor, ran, np)
        return out, omega

    def trace(self, model, dtype, s: int, f: int, first_exec: bool = False, latch_sub: int = -1,
              maxrows: int = 200000):
        """The trace kernel on the host: ``(value, rows, nrows)`` like
        ``cpu.trace_pixel`` and :func:`trace_pixel`."""
        dt = np.dtype(_dtype_name(dtype))
        args = kernel_args(model, dt)
        tbuf = np.zeros((max(1, maxrows), K.TRACE_COLS))
        tpos = np.zeros(1, dtype=np.int64)
        val = np.zeros(1)
        om = np.zeros(1)
        info = np.zeros(3, dtype=np.int64)
        self._trace[dt.name](s, f, int(bool(first_exec)), latch_sub, *(_ptr(a) for a in args),
                             _ptr(tbuf), _ptr(tpos), maxrows, _ptr(val), _ptr(om), _ptr(info))
        n = int(tpos[0])
        return float(val[0]), tbuf[:min(n, maxrows)], n

    def pixel(self, model, dtype, s: int, f: int, first_exec: bool = False, latch_sub: int = -1,
              args=None) -> Tuple[float, float, np.ndarray]:
        """One pixel: (value before the float32 store, as float64; omega_sum;
        info[3] = first out-of-range sub-path, ran, sub-paths).
        ``args``: a cached ``kernel_args(model, dtype)`` to skip rebuilding it."""
        dt = np.dtype(_dtype_name(dtype))
        if args is None:
            args = kernel_args(model, dt)
        val = np.zeros(1, dtype=np.float64)   # the kernel's accumulator type
        om = np.zeros(1, dtype=np.float64)
        info = np.zeros(3, dtype=np.int64)
        self._pixel[dt.name](s, f, int(bool(first_exec)), latch_sub, *(_ptr(a) for a in args),
                             _ptr(val), _ptr(om), _ptr(info))
        return val[0], om[0], info
