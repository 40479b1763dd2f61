"""numba CPU kernel: one detector pixel = the sum over sensor layers,
sub-pixels, sources, phi steps and mosaic domains (nanoBragg's sub-paths).

Everything that does not depend on the pixel (rotated cells per phi step and
mosaic domain, source directions and wavelengths) arrives precomputed.  The
per-pixel body, ``_pixel_value``, is shared by the parallel image loop and by the
single-pixel trace (its copy ``_pixel_value_trace`` also records the
intermediate quantities in a buffer): there is no second implementation of the
physics.

The working precision is that of the input arrays (float64 or float32); the
float image is always returned as float32, like nanoBragg's floatimage.bin.
"""
from __future__ import annotations

import types as _pytypes

import numpy as np
from llvmlite import ir

from .. import numba_cache as _numba_cache

_numba_cache.import_numba()     # (before numba's config is read: a NUMBA_* value it cannot read)

from numba import config as _numba_config  # noqa: E402
from numba import njit, types
from numba.core.extending import intrinsic

if _numba_config.DISABLE_JIT:
    # (numba's debugging switch: njit then returns plain functions, and the
    # first intrinsic or .py_func below was an AttributeError traceback)
    from ..errors import ConfigError
    raise ConfigError("NUMBA_DISABLE_JIT is set: nbnumba's kernels use numba intrinsics that do "
                      "not run as plain Python; unset it (nbnumba.reference follows one pixel in "
                      "plain Python, -trace_pixel S F prints the kernel's own steps)")

from ..physics import (capture_fraction, curved_position, dot, forward_scatter, interp_in_range,
                       lattice_factor,
                       like, nearest_F, nearest_F_frac, sphere_position,
                       polarization_factor, sincg_reduced_frac, sincg_reduced_frac3,
                       solid_angle, tricubic_F, unitize)
from .layout import (  # noqa: F401  (re-exported: K.I_* etc.)
    I_OVERSAMPLE, I_THICKSTEPS, I_NSRC, I_NPHI, I_NMOS, I_SHAPE, I_CURVED, I_POINT, I_NOPOLAR,
    I_OS_THICK, I_OS_POLAR, I_OS_OMEGA, I_INTERP, I_HKLS, I_HMIN, I_HMAX, I_KMIN, I_KMAX, I_LMIN,
    I_LMAX, I_CPARITY, I_REDUCED, I_FPIXELS, I_WEIGHTED, N_IOPT, F_PIXEL, F_SUBPIXEL, F_DISTANCE,
    F_CLOSE, F_THICKSTEP, F_MU, F_THICK, F_KAHN, F_DMIN, F_NA, F_NB, F_NC, F_FUDGE, F_DEFAULT_F, F_I_BG,
    F_WATER, F_SCALE, F_STEPS, F_SPOT, N_FOPT, V_FDET, V_SDET, V_ODET, V_PIX0, V_BEAM, V_POLAR,
    V_ASTAR, V_BSTAR, V_CSTAR, N_VECS, EV_GEOM, EV_HKL, EV_LATT, EV_PHI, EV_FCELL, EV_FINAL, EV_SOURCE2,
    TRACE_COLS, BLOCK_MAX_CELLS, block_eligible)

#: LLVM fast-math flags of the hot loops (square crystal, reduced sincg, nearest
#: F): FMA contraction and reassociation (lets the F-lookup/accumulate loop
#: vectorise).  Never 'nnan' or 'ninf': NaN inputs must propagate as in C.
#: Everything nanoBragg.c's float64 arithmetic (-c_parity) runs stays strict.
FAST_MATH = {"contract", "reassoc"}


def _function_attribute(attr, doc):
    """A numba intrinsic that, called first thing in a jitted function, adds
    the LLVM function attribute ``attr`` to that function (llvmlite's
    attribute set lists no string attributes, hence set.add)."""
    @intrinsic
    def mark(typingctx):
        def codegen(context, builder, sig, args):
            set.add(builder.function.attributes, attr)
            return context.get_dummy_value()
        return types.none(), codegen
    mark.__doc__ = doc
    return mark


_prefer_512bit_vectors = _function_attribute('"prefer-vector-width"="512"', """\
Ask LLVM to vectorise the calling function with 512-bit registers.

LLVM's tuning for AVX-512 CPUs prefers 256-bit vectors ("prefer-256-bit"), and
numba can only change that for the whole process (NUMBA_CPU_FEATURES), which
would also change user code and the loops that run slower with zmm.  The
per-function attribute "prefer-vector-width" overrides it for this function
alone.  A no-op where the CPU has no AVX-512.""")

_inline_into_callers = _function_attribute("alwaysinline", """\
Mark the calling function ``alwaysinline`` for LLVM.

Unlike numba's own ``inline="always"`` (which inlines numba IR, so the callee
takes the caller's fast-math flags), LLVM inlines the compiled function as it
is: its instructions keep their own flags and its loops their vectorised form,
so the bits do not change.  What goes is the call: ~30 exploded array
arguments per call of a short loop.""")


@intrinsic
def _args_noalias(typingctx):
    """Mark the calling function's pointer arguments ``noalias`` for LLVM (the
    data pointers of its array arguments, among others): a promise that the
    function never receives one array twice.  It lets LLVM vectorise a loop
    that gathers from one array and stores into another, which it must
    otherwise assume may overlap (no run-time check can cover a gather).
    Kept when LLVM inlines the function (as alias-scope metadata)."""
    def codegen(context, builder, sig, args):
        for a in builder.function.args:
            if isinstance(a.type, ir.PointerType):
                a.add_attribute("noalias")
        return context.get_dummy_value()
    return types.none(), codegen


_never_inline = _function_attribute("noinline", """\
Mark the calling function ``noinline`` for LLVM: a rarely taken path stays a
call, out of its caller's vector loop (where LLVM would otherwise inline it
and try to vectorise it along, at a cost in compile time and nothing gained).""")


@njit(cache=True, _nrt=False, fastmath=False, error_model="numpy")
def _record(tbuf, tpos, ev, vals):
    """Append one trace row; ``vals`` is a tuple of floats (one type, so a
    plain loop iterates it: no literal_unroll, cheap to compile)."""
    r = tpos[0]
    if r < tbuf.shape[0]:
        tbuf[r, 0] = ev
        i = 1
        for v in vals:
            tbuf[r, i] = v
            i += 1
    tpos[0] = r + 1


# ---- per-thread work buffer rows (length = number of (phi, mosaic) cells) ---
# (W_FA + a: axis a's factor of W_H + a; W_T: the lean sum's terms, _lean_terms)
W_H, W_K, W_L, W_F, W_FA, W_FB, W_FC, W_T = range(8)
N_WORK = 8


@njit(cache=True, _nrt=False, fastmath=False, error_model="numpy")
def _hkl(cells, v, j, S0, S1, S2):
    """Fractional Miller indices h = a.S, k = b.S, l = c.S of cell j (variant v).

    Always strict IEEE (no FMA), also when called from the fast-math lattice
    loop (LLVM inlines it and keeps its flags): the lattice factor near its
    zeros amplifies a last-bit change of h about 1e4-fold, so h is computed
    exactly as nanoBragg.c does."""
    return (cells[v, 0, j] * S0 + cells[v, 1, j] * S1 + cells[v, 2, j] * S2,
            cells[v, 3, j] * S0 + cells[v, 4, j] * S1 + cells[v, 5, j] * S2,
            cells[v, 6, j] * S0 + cells[v, 7, j] * S1 + cells[v, 8, j] * S2)


@njit(cache=True, _nrt=False, fastmath=False, error_model="numpy")
def _lean_terms(work, j0, n, Fhkl, hkls, hmin, hmax, kmin, kmax, lmin, lmax, default_F):
    """The default mode's terms F_cell^2 F_latt^2 (nearest F) of columns
    j0 .. j0 + n - 1 of ``work``, into work[W_T, 0 .. n - 1]: each rounded as
    ((F_cell F_cell) F_latt) F_latt, strict IEEE, so a term has the same bits
    wherever it is computed (pixel_value, the block path).  No reduction
    here, so the loop vectorises (hardware gathers for F) without
    reassociation.  Every term is +0, positive or NaN (a product of two
    squares, rounded in that order).  Inlined by LLVM (_inline_into_callers);
    its array arguments are distinct (_args_noalias: the gathers from Fhkl
    cannot meet the stores into work, so no run-time alias check is needed,
    and none could be made for a gather)."""
    _inline_into_callers()
    _args_noalias()
    # unsigned columns: numba then adds no negative-index wraparound, whose
    # per-lane select turned the contiguous row loads into gathers
    u0 = np.uint64(j0)
    for i in range(n):
        ui = np.uint64(i)
        j = u0 + ui
        Fl = work[W_F, j]
        Fc = nearest_F_frac(Fhkl, hkls, hmin, hmax, kmin, kmax, lmin, lmax, work[W_H, j],
                            work[W_K, j], work[W_L, j], default_F)
        work[W_T, ui] = Fc * Fc * Fl * Fl


@njit(cache=True, inline="always", error_model="numpy")
def _tree8(p0, p1, p2, p3, p4, p5, p6, p7):
    """The fixed tree that closes a lean sum: ((p0 + p1) + (p2 + p3)) +
    ((p4 + p5) + (p6 + p7)), p_k the partial sum of the terms i = k mod 8."""
    return ((p0 + p1) + (p2 + p3)) + ((p4 + p5) + (p6 + p7))


@njit(cache=True, _nrt=False, fastmath=FAST_MATH, error_model="numpy")
def _lean_sum(work, j0, ncell, Fhkl, hkls, hmin, hmax, kmin, kmax, lmin, lmax, default_F):
    """Sum of F_cell^2 F_latt^2 over the cells of one sub-path (nearest F),
    columns j0 .. j0 + ncell - 1 of ``work``: pixel_value's sum in the runs
    that the block path does not take.  Fast-math: the reassociated sum
    vectorises along with the F lookup, in an order LLVM chooses (which the
    block path could not repeat: the runs it takes sum in a fixed order,
    _ordered_lean_sum).  Inlined into its callers by LLVM
    (_inline_into_callers)."""
    _inline_into_callers()
    acc = like(0.0, default_F)
    # an unsigned column: numba then adds no negative-index wraparound, whose
    # per-lane select turned the contiguous row loads into gathers
    u0 = np.uint64(j0)
    for i in range(ncell):
        j = u0 + np.uint64(i)
        Fl = work[W_F, j]
        Fc = nearest_F_frac(Fhkl, hkls, hmin, hmax, kmin, kmax, lmin, lmax, work[W_H, j],
                            work[W_K, j], work[W_L, j], default_F)
        acc += Fc * Fc * Fl * Fl
    return acc


@njit(cache=True, inline="always", error_model="numpy")
def _term_or_zero(work, i, n):
    """work[W_T, i] for i < n, else +0 (the load clamped into the terms)."""
    t = work[W_T, min(i, n - 1)]
    return t if i < n else like(0.0, t)


@njit(cache=True, _nrt=False, fastmath=False, error_model="numpy")
def _ordered_lean_sum(work, j0, ncell, Fhkl, hkls, hmin, hmax, kmin, kmax, lmin, lmax,
                      default_F):
    """_lean_sum in a fixed order, for the runs the block path takes
    (block_eligible): there pixel_value (the autodiff forward, a direct
    render_rows) must give the block path's bits.

    The terms come from _lean_terms; eight partial sums p_k (from +0) of the
    terms i = k mod 8 in ascending i, then _tree8; strict IEEE.  The block
    path forms the same partial sums for many sub-paths at once
    (_column_sums), with vector adds across the sub-paths.  (A term is never
    -0, so adding a partial sum that received no term, +0, changes nothing.)
    A store and a reload per term more than _lean_sum: W2-like runs (50
    cells, 2 x 2 sub-pixels) took 5 to 8 % longer with it.  Inlined into
    its callers by LLVM."""
    _inline_into_callers()
    _lean_terms(work, j0, ncell, Fhkl, hkls, hmin, hmax, kmin, kmax, lmin, lmax, default_F)
    z = like(0.0, default_F)
    p0 = p1 = p2 = p3 = p4 = p5 = p6 = p7 = z
    for i in range(0, ncell, 8):
        # past the last term a partial sum gets +0, which changes nothing
        p0 += work[W_T, i]
        p1 += _term_or_zero(work, i + 1, ncell)
        p2 += _term_or_zero(work, i + 2, ncell)
        p3 += _term_or_zero(work, i + 3, ncell)
        p4 += _term_or_zero(work, i + 4, ncell)
        p5 += _term_or_zero(work, i + 5, ncell)
        p6 += _term_or_zero(work, i + 6, ncell)
        p7 += _term_or_zero(work, i + 7, ncell)
    return _tree8(p0, p1, p2, p3, p4, p5, p6, p7)


@njit(cache=True, _nrt=False, fastmath=False, error_model="numpy")
def _ordered_lean_sum_call(work, j0, ncell, Fhkl, hkls, hmin, hmax, kmin, kmax, lmin, lmax,
                           default_F):
    """_ordered_lean_sum as a call (pixel_value's two sites): pixel_value
    takes it only in the runs render_blocks serves, and inlined twice it
    cost pixel_value's compile about 1 s."""
    _never_inline()
    return _ordered_lean_sum(work, j0, ncell, Fhkl, hkls, hmin, hmax, kmin, kmax, lmin, lmax,
                             default_F)


@njit(cache=True, inline="always", error_model="numpy")
def _store(work, j, h, k, l, F, fa, fb, fc):
    """Record cell j's indices, lattice factor and per-axis factors."""
    work[W_H, j] = h
    work[W_K, j] = k
    work[W_L, j] = l
    work[W_F, j] = F
    work[W_FA, j] = fa
    work[W_FB, j] = fb
    work[W_FC, j] = fc


@njit(cache=True, inline="always", error_model="numpy")
def _axis_in(x, N):
    """An axis's (index, N) as the lattice loop evaluates it: (x, N) where
    N > 1, else (1/2, 1), whose fraction is sin(pi/2) / sin(pi/2) = 1 / 1
    exactly (the polynomials give 1.0 at 1/2, in float64 and float32,
    contracted or not; tests/test_lattice_fraction.py), so the product of
    the three axes is the product of the others, bit for bit: nanoBragg's
    factor 1 for an axis with N <= 1, without a branch.  The index as
    x m + c (m, c = 1, 0 or 0, 1/2; invariant, hoisted out of the loop):
    exact either way."""
    on = N > 1
    m = 1.0 if on else 0.0
    c = 0.0 if on else 0.5
    return x * m + c, (N if on else 1.0)


@njit(cache=True, _nrt=False, fastmath=FAST_MATH, error_model="numpy")
def _axes_fraction(h, k, l, Na, Nb, Nc, f32):
    """One cell's square-crystal factor, one axis after another (an axis with
    N <= 1 at 1/2: _axis_in), through a loop that LLVM unrolls (numba inlines
    the helpers once, not three times: compile time): the product of
    sincg_reduced_frac's unsigned fractions, with its d == 0 limit.
    Compiled once per precision (f32, a constant at each call), with the
    lattice loops' flags, and inlined by LLVM into its three callers (two
    loops and _plane_factor): numba's inline="always" typed it once per call
    site."""
    _inline_into_callers()
    num = 1.0
    den = 1.0
    for a in range(3):
        x, N = _axis_in(h if a == 0 else (k if a == 1 else l),
                        Na if a == 0 else (Nb if a == 1 else Nc))
        n_, d_, _, _, _ = sincg_reduced_frac(x, N, f32, False)
        num = num * n_
        den = den * d_
    return num / den


@njit(cache=True, _nrt=False, fastmath=FAST_MATH, error_model="numpy")
def _plane_factor(h, k, l, Na, Nb, Nc):
    """The float64 loop's factor (_axes_fraction) of a cell on a lattice
    plane, which the fast loop leaves at 0 / 0: the loop's flags and the same
    operations as its lanes (for N > 1, _axis_in gives the index itself), so
    the same bits (tests/test_lattice_fraction.py).  A call, never inlined
    into the loop."""
    _never_inline()
    return _axes_fraction(h, k, l, Na, Nb, Nc, False)


#: False in _lattice_square_fast, True in _lattice_square_fast32 (-precision
#: single's float32 sines): a module constant, so numba prunes the other
#: precision's loops before typing (a literal argument was not pruned)
F32_SINES = False


def _lattice_square(variant, S, cells, work, Na, Nb, Nc):
    """Fractional indices and square-crystal lattice factors (reduced sincg)
    for every (phi, mosaic) cell.  Compiled as ``_lattice_square_fast``:
    FMA contraction and reassociation after h, k, l (which stay exact).

    The factor is stored up to its sign (sincg_reduced_frac's unsigned
    numerators): every reader squares it (the lean sum, pass 2's F^2 F_latt^2,
    where -x times -x is x times x bit for bit), and the parity's integer work
    was ~14 % of this loop.  The trace prints the signed factor: pass 2 gives
    it the sign of the per-axis factors' product (_axis_factors).

    cells: (2, 9, ncell) real-space a, b, c components (m) per cell, SoA so the
    loop is contiguous and branch-free (vectorises).

    Float64 sines with every N > 1 (the common case) take a loop whose body
    is one block: sincg_reduced_frac3 evaluates the six sines' polynomials
    interleaved and leaves out the d == 0 limit, which _plane_factor applies
    afterwards to the cells that need it (a cell on a lattice plane: rare,
    since the padding cells copy a real one and lane_work's spare lanes sit
    at 1/4).  Branches on N > 1 between the axes had split the loop into
    blocks that the core ran one after the other: 1.2 to 1.3x slower per
    cell, the same bits (docs/performance.md, eighth round).  Otherwise, and
    in the float32-sine copy (F32_SINES), the loop evaluates _axes_fraction
    (no branch on N either)."""
    _prefer_512bit_vectors()
    ncell = cells.shape[2]
    if variant >= 0:
        # the cells' indices along S (exact: _hkl); variant -1: the lane paths
        # have stored their lanes' indices in work, and cells only gives
        # their number (lane_buffer)
        S0, S1, S2 = S
        for j in range(ncell):
            h, k, l = _hkl(cells, variant, j, S0, S1, S2)
            work[W_H, j] = h
            work[W_K, j] = k
            work[W_L, j] = l
    if F32_SINES or not (Na > 1 and Nb > 1 and Nc > 1):
        for j in range(ncell):
            work[W_F, j] = _axes_fraction(work[W_H, j], work[W_K, j], work[W_L, j], Na, Nb, Nc,
                                          F32_SINES)
        return
    zero_den = False
    for j in range(ncell):
        num, den = sincg_reduced_frac3(work[W_H, j], work[W_K, j], work[W_L, j], Na, Nb, Nc)
        work[W_F, j] = num / den
        zero_den |= den == 0.0
    if zero_den:
        # a cell on a lattice plane (den == 0 only where d == 0 on an axis;
        # num is 0 there too: a NaN factor, or inf if den underflowed): those
        # cells again, with the limit
        inf = np.inf
        for j in range(ncell):
            if not abs(work[W_F, j]) < inf:
                work[W_F, j] = _plane_factor(work[W_H, j], work[W_K, j], work[W_L, j],
                                             Na, Nb, Nc)


@njit(cache=True, _nrt=False, fastmath=False, error_model="numpy")
def _axis_factors(work, j, h, k, l, Na, Nb, Nc, reduced):
    """Cell j's per-axis square-crystal factors, for the trace: the reduced
    sincg's fast loop keeps only their product (one division per cell, not
    three), so they are evaluated again here, each as its own quotient;
    _lattice_general stores them."""
    if reduced == 0:
        return work[W_FA, j], work[W_FB, j], work[W_FC, j]
    f32 = reduced == 2
    one = h * 0 + 1
    na, da, _, _, _ = sincg_reduced_frac(h, Na, f32, True)
    nb, db, _, _, _ = sincg_reduced_frac(k, Nb, f32, True)
    nc, dc, _, _, _ = sincg_reduced_frac(l, Nc, f32, True)
    return (na / da if Na > 1 else one, nb / db if Nb > 1 else one, nc / dc if Nc > 1 else one)


@njit(cache=True, _nrt=False, fastmath=False, error_model="numpy")
def _lattice_general(variant, S, cells, work, shape, Na, Nb, Nc, fudge, spot, astar, bstar,
                     cstar, reduced):
    """Indices and lattice factors for the other shapes and for nanoBragg.c's
    own sincg (-c_parity float64): strict IEEE."""
    ncell = cells.shape[2]
    S0, S1, S2 = S
    one = S0 * 0 + 1
    for j in range(ncell):
        h, k, l = _hkl(cells, variant, j, S0, S1, S2)
        h0 = np.int64(np.ceil(h - 0.5 * one))
        k0 = np.int64(np.ceil(k - 0.5 * one))
        l0 = np.int64(np.ceil(l - 0.5 * one))
        F, fa, fb, fc = lattice_factor(shape, h, k, l, h0, k0, l0, Na, Nb, Nc, fudge, spot,
                                       astar, bstar, cstar, reduced)
        _store(work, j, h, k, l, F, fa, fb, fc)


def _variant(fn, name, **consts):
    """A copy of plain function ``fn`` named ``name`` (so numba gives it its own
    cache file: the index key does not include the compile flags).  ``consts``
    replace module globals in the copy (a snapshot of the module's globals at
    this point, so ``fn`` may use only names defined above its copy): numba
    reads them as compile-time constants and prunes branches on them."""
    glb = fn.__globals__
    if consts:
        glb = dict(glb)
        glb.update(consts)
    new = _pytypes.FunctionType(fn.__code__, glb, name, fn.__defaults__, fn.__closure__)
    new.__qualname__ = name
    new.__module__ = fn.__module__
    new.__doc__ = fn.__doc__
    return new


_JIT = dict(cache=True, error_model="numpy")
# The per-pixel and per-sub-path functions allocate nothing and run with
# numba's reference counting off (``_nrt=False``): otherwise every call
# increments and decrements the shared arrays' reference counts atomically, and
# with several threads those cache lines bounce between cores on every call.
_lattice_square_fast = njit(fastmath=FAST_MATH, _nrt=False, **_JIT)(_variant(_lattice_square, "_lattice_square_fast"))
_lattice_square_fast32 = njit(fastmath=FAST_MATH, _nrt=False, **_JIT)(
    _variant(_lattice_square, "_lattice_square_fast32", F32_SINES=True))


# ---- lanes: several sub-paths' cells in one lattice loop ---------------------
# The block path and pixel_value's deferred lattice store each lane's exact
# Miller indices (_hkl) in rows W_H, W_K, W_L of a work buffer (lane_work) and
# run the lattice loop on them with variant -1 (indices given): the same sine
# loop on the same indices as the sub-path's own loop, so the same factors.
@njit(cache=True, inline="always", error_model="numpy")
def _index_lanes(cells, variant, ncell, S0, S1, S2, lwork, q0):
    """Cells 0 .. ncell - 1 of ``variant`` seen along S: their indices (_hkl,
    exact) into lanes q0 .. q0 + ncell - 1 of lwork."""
    for j in range(ncell):
        h, k, l = _hkl(cells, variant, j, S0, S1, S2)
        lwork[W_H, q0 + j] = h
        lwork[W_K, q0 + j] = k
        lwork[W_L, q0 + j] = l


@njit(cache=True, inline="always", error_model="numpy")
def _index_block(cells, v1, geo, ncol, ncell, lwork):
    """The block path's indices: for the sub-paths c < ncol of
    _block_geometry's columns (their S in geo) and the cells j of variant v1
    (a computed 1), lane j ncol + c of lwork (as _index_lanes; cell-major,
    so that a cell's lanes, and later its terms, are contiguous across the
    sub-paths: _column_sums adds them with vector adds).  Three loops, one
    per index, each through _hkl: a loop that stores one row runs few enough
    run-time alias checks for LLVM to vectorise it (with three rows stored it
    ran scalar; docs/performance.md, sixth round).  The same operations on
    the same values as _index_lanes, so the same bits."""
    for j in range(ncell):
        q0 = j * ncol
        for c in range(ncol):
            lwork[W_H, q0 + c] = _hkl(cells, v1, j, geo[B_S0, c], geo[B_S1, c], geo[B_S2, c])[0]
    for j in range(ncell):
        q0 = j * ncol
        for c in range(ncol):
            lwork[W_K, q0 + c] = _hkl(cells, v1, j, geo[B_S0, c], geo[B_S1, c], geo[B_S2, c])[1]
    for j in range(ncell):
        q0 = j * ncol
        for c in range(ncol):
            lwork[W_L, q0 + c] = _hkl(cells, v1, j, geo[B_S0, c], geo[B_S1, c], geo[B_S2, c])[2]


@njit(cache=True, _nrt=False, fastmath=False, error_model="numpy")
def _column_sums(work, ncol, ncell, part, geo):
    """The lean sums of the block path's sub-paths c < ncol, into
    geo[B_SUM, c]: their terms sit in work[W_T, j ncol + c] (cell-major), and
    each column's sum is _ordered_lean_sum's, operation for operation: partial sums
    part[k, c] (from +0) of the cells j = k mod 8 in ascending j, then
    _tree8.  Each step is one loop over the columns, which vectorises.
    Inlined by LLVM; distinct arrays (_args_noalias)."""
    _inline_into_callers()
    _args_noalias()
    z = like(0.0, part[0, 0])
    for k in range(8):
        for c in range(ncol):
            part[k, c] = z
    for j in range(ncell):
        k = j % 8
        q0 = np.uint64(j * ncol)
        for c in range(ncol):
            part[k, c] += work[W_T, q0 + np.uint64(c)]
    for c in range(ncol):
        geo[B_SUM, c] = _tree8(part[0, c], part[1, c], part[2, c], part[3, c], part[4, c],
                               part[5, c], part[6, c], part[7, c])


@njit(cache=True, inline="always", error_model="numpy")
def _lattice_lanes(lanes, work, reduced, Na, Nb, Nc):
    """Lattice factors of the lanes of work whose indices _index_lanes or
    _index_block stored (_lattice_square_fast with variant -1: as many lanes
    as ``lanes`` (lane_buffer) has; float32 sines when reduced == 2).  Lanes
    past those just stored keep earlier indices (or lane_work's 1/4):
    computed along, never read."""
    z = Na * 0
    S = (z, z, z)       # not read: the indices are given
    # computed, not a literal: a literal makes numba compile the loop a second time
    given = reduced * 0 - 1
    if reduced == 2:
        _lattice_square_fast32(given, S, lanes, work, Na, Nb, Nc)
    else:
        _lattice_square_fast(given, S, lanes, work, Na, Nb, Nc)


# block_eligible (kernels.layout: numba-free, native.render picks the entry
# with it; pixel_value sums in the block path's order where it holds)
_block_eligible = njit(inline="always", **_JIT)(block_eligible)


def _pixel_value(spixel, fpixel, first_exec, latch_sub, iopt, fopt, vecs, incident, lam, cells,
                Fhkl, work, tbuf, tpos, info, dcells, dwork):
    """Photons in one pixel (before float32 storage).

    first_exec: this pixel is the first one a (single-threaded) nanoBragg.c
        would run the phi loop for, which selects the initial-state cell
        variant under -c_parity (phi=0 carry-over defect).
    latch_sub: -c_parity emulation of the global "interpolation off" latch:
        -1 = interpolate normally (per-sub-path fallback to nearest neighbour);
        >= 0 = interpolate only for sub-paths numbered below it; -2 = never.
    info (int64[3], out): [index of first out-of-range interpolation
        sub-path or -1, whether any phi loop ran (0/1), sub-path count].
    tbuf, tpos: the trace buffer and its row count (written only by the
        trace copy, ``_pixel_value_trace``).
    Returns (value, omega_sum over sub-pixels).

    Compiled twice from this one body: ``pixel_value`` with the global
    ``TRACE`` False and ``_pixel_value_trace`` with it True.  numba prunes the
    branches on a constant global before typing, so the image kernel carries
    no trace code (about 2 CPU-s less to compile for every first run), and the
    trace copy is compiled only when a run asks for -trace_pixel.

    Strict IEEE arithmetic, like nanoBragg.c, except the hot loops of the
    default mode (square crystal, reduced sincg): ``_lattice_square_fast``
    and ``_lean_sum`` use FMA contraction and reassociation after the Miller
    indices (which stay exact).  Called, not inlined, by the image loop, so
    it is typed once.  Both precisions share one signature:
    under -precision single (``reduced`` = 2) the lattice loop is the copy
    that evaluates float32 sines, and Fhkl holds float32-rounded values in
    float64 (F is promoted to float64 before any arithmetic either way).
    """
    z = fopt[0] * 0
    one = z + 1
    os = iopt[I_OVERSAMPLE]
    nthick = iopt[I_THICKSTEPS]
    nsrc, nphi, nmos = iopt[I_NSRC], iopt[I_NPHI], iopt[I_NMOS]
    ncell = nphi * nmos
    shape = iopt[I_SHAPE]
    c_parity = iopt[I_CPARITY] != 0
    reduced = iopt[I_REDUCED]   # 0: C's sincg, 1: reduced, 2: reduced with float32 sines
    os_thick, os_polar, os_omega = iopt[I_OS_THICK] != 0, iopt[I_OS_POLAR] != 0, iopt[I_OS_OMEGA] != 0
    interp = iopt[I_INTERP] != 0 and latch_sub != -2
    hkls = iopt[I_HKLS]
    hmin, hmax, kmin, kmax = iopt[I_HMIN], iopt[I_HMAX], iopt[I_KMIN], iopt[I_KMAX]
    lmin, lmax = iopt[I_LMIN], iopt[I_LMAX]
    pixel, subpixel = fopt[F_PIXEL], fopt[F_SUBPIXEL]
    distance, close_distance = fopt[F_DISTANCE], fopt[F_CLOSE]
    thickstep, mu, thick = fopt[F_THICKSTEP], fopt[F_MU], fopt[F_THICK]
    kahn, dmin = fopt[F_KAHN], fopt[F_DMIN]
    Na, Nb, Nc, fudge = fopt[F_NA], fopt[F_NB], fopt[F_NC], fopt[F_FUDGE]
    spot = fopt[F_SPOT]
    default_F, I_bg, water = fopt[F_DEFAULT_F], fopt[F_I_BG], fopt[F_WATER]
    # -sourcefile's relative intensities (incident[:, 3]) weigh each source's
    # terms: the default mode's correction of nanoBragg.c, which counts every
    # source once (docs/quirks.md #20); 0 under -c_parity
    weighted = iopt[I_WEIGHTED] != 0
    # (rows indexed here, not through a helper: a helper called with constant
    # rows would be compiled once per row number)
    fdet = (vecs[V_FDET, 0], vecs[V_FDET, 1], vecs[V_FDET, 2])
    sdet = (vecs[V_SDET, 0], vecs[V_SDET, 1], vecs[V_SDET, 2])
    odet = (vecs[V_ODET, 0], vecs[V_ODET, 1], vecs[V_ODET, 2])
    pix0 = (vecs[V_PIX0, 0], vecs[V_PIX0, 1], vecs[V_PIX0, 2])
    beam = (vecs[V_BEAM, 0], vecs[V_BEAM, 1], vecs[V_BEAM, 2])
    polar_axis = (vecs[V_POLAR, 0], vecs[V_POLAR, 1], vecs[V_POLAR, 2])
    astar = (vecs[V_ASTAR, 0], vecs[V_ASTAR, 1], vecs[V_ASTAR, 2])
    bstar = (vecs[V_BSTAR, 0], vecs[V_BSTAR, 1], vecs[V_BSTAR, 2])
    cstar = (vecs[V_CSTAR, 0], vecs[V_CSTAR, 1], vecs[V_CSTAR, 2])

    # common case without per-sub-path state: the default mode sums each
    # (phi, mosaic) pass in one go (-c_parity keeps the C's order of additions)
    lean = (not c_parity) and (not interp) and (not TRACE) and not (os_thick or os_polar or os_omega)
    # nanoBragg.c's arithmetic is kept exactly unless a corrected formula is needed:
    # several sensor layers without -oversample_thick, or any -oversample_* switch
    corrected = (not c_parity) and (nthick > 1 or os_thick or os_polar or os_omega)
    # deferred lattice (lean sums, square crystal, reduced sincg; the caller
    # passes lane buffers dcells/dwork of os^2 x sources x cells lanes, else
    # one lane): each sub-path's Miller indices go into its lanes of dwork,
    # and one vector loop evaluates every lane's lattice factors after the
    # sub-path loops (see defer_lanes); then the sub-paths' lean sums are
    # added to I in sub-path order, the additions the loop would have made
    defer = lean and (not corrected) and shape == 0 and reduced != 0 and dcells.shape[2] > 1
    # a run the block path takes (render_blocks): its sums in that path's
    # fixed order (_ordered_lean_sum), so that this function gives its bits;
    # the others in _lean_sum's faster order (-c_parity runs, the only ones
    # with a first pixel or a latch, are never lean: -1 for both)
    ordered = lean and _block_eligible(iopt, ncell, ncell * 0 - 1, ncell * 0 - 1)
    nsub = 0

    I = I_bg
    polar = one if iopt[I_NOPOLAR] != 0 else z
    polar_cut = z       # the first sub-path's factor where -dmin cuts it (#24)
    omega_pixel = z
    omega_acc = z
    capture = z
    acc = z            # corrected path: weighted crystal sum
    capsum = z         # corrected path: background weight summed over layers
    variant = 0 if first_exec else 1
    first_oor = -1
    ran_phi = 0
    sub_count = 0
    incident_v = (z, z, z)
    diffracted = (z, z, z)
    Fdet = z
    Sdet = z
    # a sensor layer is sampled at its middle in the default mode (docs/quirks.md
    # #39); nanoBragg.c (-c_parity) takes its front face
    half_layer = z if c_parity else like(0.5, z)
    for thick_tic in range(nthick):
        Odet = (like(thick_tic, z) + half_layer) * thickstep
        capture = z
        if thick == 0.0:
            capture = one
        layer_sum = z
        layer_capture = z
        layer_bg = z       # corrected path: sum of the sub-paths' background weights
        for subS in range(os):
            for subF in range(os):
                Fdet = subpixel * like(fpixel * os + subF, z) + subpixel / like(2.0, z)
                Sdet = subpixel * like(spixel * os + subS, z) + subpixel / like(2.0, z)
                if iopt[I_CURVED] == 2:
                    # the default mode's sphere: detector coordinates become arcs;
                    # the surface point and the layer's depth go in apart (the
                    # depth is a radius: in the flat position it would put its
                    # rounding into the arcs in a turned frame)
                    surf = (Fdet * fdet[0] + Sdet * sdet[0] + pix0[0],
                            Fdet * fdet[1] + Sdet * sdet[1] + pix0[1],
                            Fdet * fdet[2] + Sdet * sdet[2] + pix0[2])
                    v2 = sphere_position(surf, Odet, close_distance, odet, fdet, sdet)
                    pos = (like(v2[0], z), like(v2[1], z), like(v2[2], z))
                else:
                    pos = (Fdet * fdet[0] + Sdet * sdet[0] + Odet * odet[0] + pix0[0],
                           Fdet * fdet[1] + Sdet * sdet[1] + Odet * odet[1] + pix0[1],
                           Fdet * fdet[2] + Sdet * sdet[2] + Odet * odet[2] + pix0[2])
                    if iopt[I_CURVED] == 1:
                        # -c_parity: nanoBragg.c's sphere, the lab y and z as angles
                        v2 = curved_position(pos, distance, beam, sdet, fdet)
                        pos = (like(v2[0], z), like(v2[1], z), like(v2[2], z))
                diffracted, airpath = unitize(pos)
                if os_omega:
                    # (a pixel of the default mode's sphere faces the sample: obliquity 1)
                    # the plane of a layer at depth Odet lies at close + Odet (#42;
                    # nanoBragg.c takes the front plane's close distance)
                    plane = close_distance if c_parity else close_distance + Odet
                    omega_pixel = like(solid_angle(pixel, airpath, airpath if iopt[I_CURVED] == 2
                                                   else plane, iopt[I_POINT] != 0), z)
                elif omega_pixel == 0.0:
                    # the pixel's one solid angle: at its first sub-pixel on the
                    # sensor's face (depth 0, the C's), wherever #39 puts the layer
                    face = airpath
                    if Odet != 0.0:
                        p0 = (Fdet * fdet[0] + Sdet * sdet[0] + pix0[0],
                              Fdet * fdet[1] + Sdet * sdet[1] + pix0[1],
                              Fdet * fdet[2] + Sdet * sdet[2] + pix0[2])
                        if iopt[I_CURVED] == 2:
                            q0 = sphere_position(p0, like(0.0, z), close_distance, odet,
                                                 fdet, sdet)
                            p0 = (like(q0[0], z), like(q0[1], z), like(q0[2], z))
                        _, face = unitize(p0)
                    omega_pixel = like(solid_angle(pixel, face, face if iopt[I_CURVED] == 2
                                                   else close_distance, iopt[I_POINT] != 0), z)
                omega_acc += omega_pixel
                if capture == 0.0 or os_thick:
                    # (on the default mode's sphere the sensor faces the sample)
                    parallax = one if iopt[I_CURVED] == 2 else dot(diffracted, odet)
                    capture = like(capture_fraction(like(thick_tic, z), thickstep, mu, parallax), z)
                if subS == 0 and subF == 0:
                    layer_capture = capture
                # the water background fills the pixel: it takes the mean over the
                # sub-paths of the product of the oversampled factors, as each Bragg
                # term does (fixed factors apply at the end); with -oversample_polar
                # the product is formed per source below
                w = one
                if os_thick:
                    w *= capture
                if os_omega:
                    w *= omega_pixel
                if corrected and not os_polar:
                    layer_bg += w
                for source in range(nsrc):
                    incident_v = (incident[source, 0], incident[source, 1], incident[source, 2])
                    lambda_ = lam[source]
                    w_src = incident[source, 3]
                    S = forward_scatter((diffracted[0] - incident_v[0]) / lambda_,
                                        (diffracted[1] - incident_v[1]) / lambda_,
                                        (diffracted[2] - incident_v[2]) / lambda_,
                                        not c_parity)
                    if TRACE and source == 0:
                        _record(tbuf, tpos, EV_GEOM, (
                            pix0[0], pix0[1], pix0[2], fdet[0], fdet[1], fdet[2],
                            sdet[0], sdet[1], sdet[2], pos[0], pos[1], pos[2], airpath,
                            like(omega_pixel, z), close_distance,
                            # (the obliquity at this sub-path: 1 on the sphere; its
                            # layer's own plane with -oversample_omega, #42)
                            one if iopt[I_CURVED] == 2 else
                            (close_distance + (Odet if os_omega and not c_parity else z)) / airpath,
                            diffracted[0], diffracted[1], diffracted[2],
                            incident_v[0], incident_v[1], incident_v[2], lambda_,
                            S[0], S[1], S[2]))
                    stol = like(0.5, z) * np.sqrt(S[0] * S[0] + S[1] * S[1] + S[2] * S[2])
                    if dmin > 0.0 and stol > 0.0:
                        if dmin > like(0.5, z) / stol:
                            if corrected and os_polar:
                                # -dmin cuts the Bragg term only: water still fills this
                                # sub-path (diffracted is left as it is)
                                pf, dn = polarization_factor(kahn, incident_v, diffracted, polar_axis)
                                layer_bg += w * like(pf, z) * w_src if weighted else w * like(pf, z)
                            elif polar_cut == 0.0 and polar == 0.0 and not c_parity:
                                # a pixel that -dmin cuts whole takes its first
                                # sub-path's factor, which its water keeps
                                # (nanoBragg.c's stays 0: a blank pixel; #24)
                                pf, dn = polarization_factor(kahn, incident_v, diffracted, polar_axis)
                                polar_cut = like(pf, z)
                            continue
                    if polar == 0.0 or os_polar:
                        pf, dn = polarization_factor(kahn, incident_v, diffracted, polar_axis)
                        polar = like(pf, z)
                        diffracted = (like(dn[0], z), like(dn[1], z), like(dn[2], z))
                        if corrected and os_polar:
                            layer_bg += w * polar * w_src if weighted else w * polar
                    ran_phi = 1
                    if defer:
                        # this sub-path's cells into lanes nsub * ncell + j
                        _index_lanes(cells, variant, ncell, S[0], S[1], S[2], dwork, nsub * ncell)
                        nsub += 1
                        continue
                    # pass 1 over (phi, mosaic) cells: Miller indices and lattice
                    # factors (branch-free for the square/reduced case: vectorises)
                    if shape == 0 and reduced != 0:
                        # square crystal, reduced sincg (not nanoBragg.c's float64
                        # arithmetic, so -c_parity reaches it only in single
                        # precision): the hot loop, fast-math after the exact
                        # indices; float32 sines under -precision single (a
                        # constant per compiled copy)
                        if reduced == 2:
                            _lattice_square_fast32(variant, S, cells, work, Na, Nb, Nc)
                        else:
                            _lattice_square_fast(variant, S, cells, work, Na, Nb, Nc)
                    else:
                        _lattice_general(variant, S, cells, work, shape, Na, Nb, Nc, fudge,
                                         spot, astar, bstar, cstar, reduced)
                    if lean:
                        # pass 2, common case: nearest-neighbour F and a plain sum
                        # (no per-sub-path state to keep), branch-light
                        if ordered:
                            acc_s = _ordered_lean_sum_call(work, ncell * 0, ncell, Fhkl, hkls,
                                                           hmin, hmax, kmin, kmax, lmin, lmax,
                                                           default_F)
                        else:
                            acc_s = _lean_sum(work, ncell * 0, ncell, Fhkl, hkls, hmin, hmax,
                                              kmin, kmax, lmin, lmax, default_F)
                        if weighted:
                            acc_s *= w_src
                        if corrected:
                            layer_sum += acc_s
                        else:
                            I += acc_s
                        continue
                    # pass 2: structure factors and accumulation, in C order
                    for j in range(ncell):
                        phi_tic = j // nmos
                        mos = j - phi_tic * nmos
                        h = work[W_H, j]
                        k = work[W_K, j]
                        l = work[W_L, j]
                        F_latt = work[W_F, j]
                        fa_ = fb_ = fc_ = F_latt
                        if TRACE and shape == 0:
                            fa_, fb_, fc_ = _axis_factors(work, j, h, k, l, Na, Nb, Nc, reduced)
                            # the fast loop keeps |F_latt| (its readers square
                            # it); the trace lines print it with its sign
                            if reduced != 0 and np.signbit(F_latt) != np.signbit(fa_ * fb_ * fc_):
                                F_latt = -F_latt
                        h0 = np.int64(np.ceil(h - like(0.5, z)))
                        k0 = np.int64(np.ceil(k - like(0.5, z)))
                        l0 = np.int64(np.ceil(l - like(0.5, z)))
                        if TRACE and source == 0 and mos == 0:
                            if phi_tic == 0:
                                _record(tbuf, tpos, EV_HKL, (
                                    cells[variant, 0, j] * 1e10, cells[variant, 1, j] * 1e10,
                                    cells[variant, 2, j] * 1e10, cells[variant, 3, j] * 1e10,
                                    cells[variant, 4, j] * 1e10, cells[variant, 5, j] * 1e10,
                                    cells[variant, 6, j] * 1e10, cells[variant, 7, j] * 1e10,
                                    cells[variant, 8, j] * 1e10,
                                    astar[0], astar[1], astar[2], bstar[0], bstar[1], bstar[2],
                                    cstar[0], cstar[1], cstar[2], h, k, l,
                                    like(h0, z), like(k0, z), like(l0, z)))
                            if shape == 0:
                                if phi_tic == 0:
                                    _record(tbuf, tpos, EV_LATT, (fa_, fb_, fc_, F_latt))
                                _record(tbuf, tpos, EV_PHI, (like(phi_tic, z), like(variant, z), k,
                                                             fb_, F_latt))
                        if F_latt == 0.0 and water == 0.0:
                            continue
                        # structure factor of the unit cell
                        use_interp = interp and (latch_sub < 0 or sub_count < latch_sub)
                        # (the default mode's range reaches the grid's edge; -c_parity's
                        # is the C's, an index narrower: docs/quirks.md #34)
                        if use_interp and not interp_in_range(h, k, l, hmin, hmax, kmin, kmax,
                                                              lmin, lmax, c_parity):
                            if first_oor < 0:
                                first_oor = sub_count
                            use_interp = False
                        if use_interp:
                            F_cell = tricubic_F(Fhkl, hmin, kmin, lmin, h, k, l)
                        else:
                            F_cell = nearest_F(Fhkl, hkls, hmin, hmax, kmin, kmax, lmin, lmax,
                                               h0, k0, l0, default_F)
                        sub_count += 1
                        if TRACE and source == 0 and mos == 0 and phi_tic == 0:
                            _record(tbuf, tpos, EV_FCELL, (like(F_cell, z),))
                        if TRACE and source == 2 and mos == 0 and phi_tic == 0:
                            # the C's per-source tap (TRACE_C_SOURCE2), every sub-pixel
                            _record(tbuf, tpos, EV_SOURCE2, (like(F_cell, z), like(F_latt, z), like(polar, z),
                                                             like(dot(incident_v, diffracted), z),
                                                             like(lambda_, z)))
                        term = F_cell * F_cell * F_latt * F_latt
                        if weighted:
                            term *= w_src
                        if corrected:
                            if os_thick:
                                term *= capture
                            if os_polar:
                                term *= polar
                            if os_omega:
                                term *= omega_pixel
                            layer_sum += term
                        else:
                            I += term
                            # nanoBragg.c multiplies the running sum (a defect
                            # that only -c_parity reaches: see docs/quirks.md)
                            if os_thick:
                                I *= capture
                            if os_polar:
                                I *= polar
                            if os_omega:
                                I *= omega_pixel
                    if c_parity:
                        variant = 1
        if corrected:
            acc += layer_sum if os_thick else layer_sum * layer_capture
            bg_w = layer_bg / like(os * os * (nsrc if os_polar else 1), z)
            capsum += bg_w if os_thick else bg_w * layer_capture

    if nsub > 0:
        _lattice_lanes(dcells, dwork, reduced, Na, Nb, Nc)
        for u in range(nsub):
            if ordered:
                I += _ordered_lean_sum_call(dwork, u * ncell, ncell, Fhkl, hkls, hmin, hmax, kmin,
                                            kmax, lmin, lmax, default_F)
            else:
                I += _lean_sum(dwork, u * ncell, ncell, Fhkl, hkls, hmin, hmax, kmin, kmax, lmin,
                               lmax, default_F)

    r2f = fopt[F_SCALE]   # r_e^2 * fluence
    steps = fopt[F_STEPS]
    if polar == 0.0 and ran_phi == 0:
        polar = polar_cut   # (z under -c_parity: the C's blank pixel)
    if corrected:
        # (every sub-path cut by -dmin: the water's share still, #24)
        bg = I_bg * capsum
        I = acc + bg
        test = r2f * I / steps
        if not os_polar:
            test *= polar
        if not os_omega:
            test *= omega_pixel
    else:
        test = r2f * I / steps
        if not os_thick:
            test *= capture
        if not os_polar:
            test *= polar
        if not os_omega:
            test *= omega_pixel
    if TRACE:
        _record(tbuf, tpos, EV_FINAL, (
            like(I, z), steps, one if os_thick else z, one if os_polar else z,
            one if os_omega else z, like(capture, z), like(polar, z), like(omega_pixel, z),
            like(dot(incident_v, diffracted), z), like(test, z), like(Fdet, z), like(Sdet, z)))
    info[0] = first_oor
    info[1] = ran_phi
    info[2] = sub_count
    return test, omega_acc



#: False in the image copy of _pixel_value, True in the trace copy
TRACE = False
pixel_value = njit(fastmath=False, _nrt=False, **_JIT)(_variant(_pixel_value, "pixel_value"))
_pixel_value_trace = njit(fastmath=False, _nrt=False, **_JIT)(
    _variant(_pixel_value, "_pixel_value_trace", TRACE=True))


# ---- default mode, few cells per pixel: pixels in blocks ---------------------
#: pixels handled together by the block path (lanes = BLOCK x cells); 32
#: rather than 8 spreads each block's calls and loop set-up over more pixels
#: (W3, 1 thread: 1.00-1.05 against 1.08-1.16 CPU-s; bits unchanged, every
#: lane is computed on its own)
BLOCK = 32
# rows of the per-block geometry buffer (one column per sub-pixel of each
# pixel of the block; B_SUM: the column's lean sum, then the pixel's value)
B_S0, B_S1, B_S2, B_OMEGA, B_CAPTURE, B_POLAR, B_RUN, B_D0, B_D1, B_D2, B_SUM = range(11)
N_BLOCK = 11


def _target_has_avx512() -> bool:
    """Whether numba compiles for a CPU with AVX-512F (the features numba's
    codegen uses: NUMBA_CPU_FEATURES, else the host's)."""
    from numba.core import codegen, config
    feats = config.CPU_FEATURES
    if feats is None:
        feats = codegen.get_host_cpu_features()
    return "+avx512f" in feats.split(",")


#: 512-bit vectors in the lattice loop (``_prefer_512bit_vectors``): 8 doubles
#: per vector, 2 vectors per iteration and an 8-wide vector epilogue
WIDE_VECTORS = _target_has_avx512()
#: the shortest lattice loop that LLVM's vector code runs: measured on the
#: development CPU, an AVX-512 Xeon (docs/performance.md, fifth and seventh
#: rounds): with zmm the vector loop is entered from 16 lanes (15 lanes: 26 ns
#: each, scalar; 16: 6), with ymm (4 doubles x 4 interleaved) from 28; another
#: CPU may differ, which costs speed only, never bits
VECTOR_MIN_LANES = 16 if WIDE_VECTORS else 28
#: pixel_value defers its lattice loops (one loop over every sub-path's cells
#: per pixel) when a sub-path has too few cells to vectorise and the pixel has
#: enough (sub-path, cell) lanes; at most DEFER_MAX_LANES (buffer size)
DEFER_MAX_LANES = 4096


def defer_lanes(iopt, ncell):
    """Lanes of pixel_value's deferred-lattice buffers (os^2 x sources x
    cells, rounded up to LANE_PAD), or 1 (no deferral).  Below VECTOR_MIN_LANES lanes
    the lattice loop runs scalar here, at about 3x the cost of a vector lane
    (docs/performance.md, fifth round): a pixel with several sub-paths of few
    cells each gains by evaluating them in one loop.  Plain Python: numba
    compiles it into render_rows.  Not with weighted sources (the lanes'
    sums are added without their source's factor)."""
    os_ = iopt[I_OVERSAMPLE]
    n = os_ * os_ * iopt[I_NSRC] * ncell
    n = (n + LANE_PAD - 1) // LANE_PAD * LANE_PAD
    ok = (iopt[I_CPARITY] == 0 and iopt[I_INTERP] == 0 and iopt[I_OS_THICK] == 0
          and iopt[I_OS_POLAR] == 0 and iopt[I_OS_OMEGA] == 0 and iopt[I_THICKSTEPS] == 1
          and iopt[I_SHAPE] == 0 and iopt[I_REDUCED] != 0 and iopt[I_WEIGHTED] == 0
          and ncell < VECTOR_MIN_LANES
          and VECTOR_MIN_LANES <= n <= DEFER_MAX_LANES)
    return n if ok else 1


_defer_lanes = njit(inline="always", **_JIT)(defer_lanes)


# the formulas of the per-pixel factors, inlined into _block_geometry's loops
# (same source as the calls in pixel_value): with no calls and no branches
# left in them, LLVM vectorises those loops across the block's pixels
_solid_angle_inline = njit(inline="always", error_model="numpy")(solid_angle.py_func)
_polarization_inline = njit(inline="always", error_model="numpy")(polarization_factor.py_func)


@njit(cache=True, _nrt=False, fastmath=False, error_model="numpy")
def _block_geometry(s, fs, nb, iopt, fopt, vecs, incident, lam, geo, sub):
    """Per-sub-path factors of pixels (s, fs[b]), b < nb, under the conditions
    of block_eligible: exactly the operations pixel_value performs for each
    sub-pixel (strict IEEE), into column c = b os^2 + subS os + subF of
    geo[B_*, c]: scattering vector S (1/m), solid angle (sr), capture
    fraction, polarization factor (0 where -dmin cuts the sub-path), whether
    the Bragg term is summed (not cut by -dmin), and the diffracted unit
    vector.  (Which sub-path's factors a pixel uses is _block_row's part.)

    Written as loops over the columns without calls or branches (the options
    are tested outside them), which LLVM turns into SIMD code; vector sqrt and
    division round like the scalar ones, so the bits are pixel_value's."""
    z = fopt[0] * 0
    one = z + 1
    os_ = iopt[I_OVERSAMPLE]
    nsub = os_ * os_
    ncol = nb * nsub
    pixel, subpixel = fopt[F_PIXEL], fopt[F_SUBPIXEL]
    close_distance = fopt[F_CLOSE]
    thickstep, mu, thick = fopt[F_THICKSTEP], fopt[F_MU], fopt[F_THICK]
    kahn, dmin = fopt[F_KAHN], fopt[F_DMIN]
    point = iopt[I_POINT] != 0
    nopolar = iopt[I_NOPOLAR] != 0
    forward = iopt[I_CPARITY] == 0     # the default mode's forward_scatter
    fdet = (vecs[V_FDET, 0], vecs[V_FDET, 1], vecs[V_FDET, 2])
    sdet = (vecs[V_SDET, 0], vecs[V_SDET, 1], vecs[V_SDET, 2])
    odet = (vecs[V_ODET, 0], vecs[V_ODET, 1], vecs[V_ODET, 2])
    pix0 = (vecs[V_PIX0, 0], vecs[V_PIX0, 1], vecs[V_PIX0, 2])
    polar_axis = (vecs[V_POLAR, 0], vecs[V_POLAR, 1], vecs[V_POLAR, 2])
    incident_v = (incident[0, 0], incident[0, 1], incident[0, 2])
    lambda_ = lam[0]
    # the layer's middle (the default mode's, docs/quirks.md #39: this path's only)
    Odet = like(0.5, z) * thickstep
    half = subpixel / like(2.0, z)
    # each column's sub-pixel indices (fpixel os + subF, spixel os + subS), as
    # pixel_value forms them, in the scratch array sub (read from geo, which
    # the loop below also writes, that loop ran about 1.7x slower)
    c = 0
    for b in range(nb):
        for subS in range(os_):
            for subF in range(os_):
                sub[0, c] = fs[b] * os_ + subF
                sub[1, c] = s * os_ + subS
                c += 1
    for c in range(ncol):
        Fdet = subpixel * like(sub[0, c], z) + half
        Sdet = subpixel * like(sub[1, c], z) + half
        pos = (Fdet * fdet[0] + Sdet * sdet[0] + Odet * odet[0] + pix0[0],
               Fdet * fdet[1] + Sdet * sdet[1] + Odet * odet[1] + pix0[1],
               Fdet * fdet[2] + Sdet * sdet[2] + Odet * odet[2] + pix0[2])
        diffracted, airpath = unitize(pos)
        geo[B_OMEGA, c] = like(_solid_angle_inline(pixel, airpath, close_distance, point), z)
        S0, S1, S2 = forward_scatter((diffracted[0] - incident_v[0]) / lambda_,
                                     (diffracted[1] - incident_v[1]) / lambda_,
                                     (diffracted[2] - incident_v[2]) / lambda_, forward)
        geo[B_S0, c] = S0
        geo[B_S1, c] = S1
        geo[B_S2, c] = S2
        geo[B_RUN, c] = one
        geo[B_D0, c] = diffracted[0]
        geo[B_D1, c] = diffracted[1]
        geo[B_D2, c] = diffracted[2]
    if Odet != 0.0:
        # the pixel's solid angle on the sensor's face (depth 0), as pixel_value
        for c in range(ncol):
            Fdet = subpixel * like(sub[0, c], z) + half
            Sdet = subpixel * like(sub[1, c], z) + half
            _, face = unitize((Fdet * fdet[0] + Sdet * sdet[0] + pix0[0],
                               Fdet * fdet[1] + Sdet * sdet[1] + pix0[1],
                               Fdet * fdet[2] + Sdet * sdet[2] + pix0[2]))
            geo[B_OMEGA, c] = like(_solid_angle_inline(pixel, face, close_distance, point), z)
    if dmin > 0.0:
        # pixel_value's "dmin > 0 and stol > 0 and dmin > 0.5 / stol", without
        # the short circuit (0.5 / 0 is inf here, and unused); in a loop of
        # its own, so that runs without -dmin skip its square root and
        # division (W3: about 2 % of the run)
        for c in range(ncol):
            S0, S1, S2 = geo[B_S0, c], geo[B_S1, c], geo[B_S2, c]
            stol = like(0.5, z) * np.sqrt(S0 * S0 + S1 * S1 + S2 * S2)
            cut = (stol > 0.0) & (dmin > like(0.5, z) / stol)
            geo[B_RUN, c] = z if cut else one
    if thick != 0.0:
        for c in range(ncol):
            par = geo[B_D0, c] * odet[0] + geo[B_D1, c] * odet[1] + geo[B_D2, c] * odet[2]
            geo[B_CAPTURE, c] = like(capture_fraction(z, thickstep, mu, par), z)
    else:
        for c in range(ncol):
            geo[B_CAPTURE, c] = one
    # the polarization factor of every sub-path, -dmin's cut ones too (a
    # pixel cut whole takes its first sub-path's, as in pixel_value: #24);
    # kahn = 0 (the default) has no psi term: a constant 0.0 lets the inlined
    # formula drop it, branch-free
    if nopolar:
        for c in range(ncol):
            geo[B_POLAR, c] = one
    elif kahn == 0.0:
        for c in range(ncol):
            d = (geo[B_D0, c], geo[B_D1, c], geo[B_D2, c])
            pf, dn = _polarization_inline(0.0, incident_v, d, polar_axis)
            geo[B_POLAR, c] = like(pf, z)
    else:
        for c in range(ncol):
            d = (geo[B_D0, c], geo[B_D1, c], geo[B_D2, c])
            pf, dn = polarization_factor(kahn, incident_v, d, polar_axis)
            geo[B_POLAR, c] = like(pf, z)


@njit(cache=True, _nrt=False, fastmath=False, error_model="numpy")
def _block_row(s, fs, nb, iopt, fopt, vecs, incident, lam, cells, Fhkl, geo, sub, bcells, work,
               out, orow, part):
    """Pixels (s, fs[b]), b < nb, by the block path: pixel_value's value for
    each, stored as float32 into out.  Returns orow (the row's running sum of
    solid angles) plus theirs, added in pixel order.

    The lattice factors of all nb x os^2 x ncell (pixel, sub-pixel, cell)
    lanes come from one call of _lattice_square_fast, the default mode's hot
    loop, with the indices given (variant -1; ``bcells`` from lane_buffer
    gives the lane count): lane q = j ncol + c of work (c: _block_geometry's
    column, j: the cell) gets h, k, l of that sub-path and cell (exact, by
    _hkl: _index_block).  So the block path adds no second copy of the
    vectorised sine loop (nor its compile time).  Then the terms of every
    lane (_lean_terms, one vector loop with gathers) and each column's sum
    (_column_sums: _ordered_lean_sum's order).  The per-pixel factors follow pixel_value's rules: the solid
    angle and the capture fraction of the first sub-pixel where they are
    nonzero, the polarization of the first summed sub-path where it is
    nonzero, and the sub-paths' sums added in sub-pixel order."""
    _block_geometry(s, fs, nb, iopt, fopt, vecs, incident, lam, geo, sub)
    hkls = iopt[I_HKLS]
    hmin, hmax, kmin, kmax = iopt[I_HMIN], iopt[I_HMAX], iopt[I_KMIN], iopt[I_KMAX]
    lmin, lmax = iopt[I_LMIN], iopt[I_LMAX]
    Na, Nb, Nc = fopt[F_NA], fopt[F_NB], fopt[F_NC]
    default_F = fopt[F_DEFAULT_F]
    ncell = cells.shape[2]
    os_ = iopt[I_OVERSAMPLE]
    nsub = os_ * os_
    ncol = nb * nsub
    # computed, not a literal 1: a literal makes numba compile _hkl a second time
    _index_block(cells, nb * 0 + 1, geo, ncol, ncell, work)
    _lattice_lanes(bcells, work, iopt[I_REDUCED], Na, Nb, Nc)
    # (a computed 0, not a literal: one signature of _lean_terms)
    _lean_terms(work, nb * 0, ncol * ncell, Fhkl, hkls, hmin, hmax, kmin, kmax, lmin, lmax,
                default_F)
    _column_sums(work, ncol, ncell, part, geo)
    z = fopt[0] * 0
    I_bg = fopt[F_I_BG]
    r2f = fopt[F_SCALE]
    steps = fopt[F_STEPS]
    nopolar = iopt[I_NOPOLAR] != 0
    if nsub == 1:
        # one sub-pixel per pixel (the common case): its factors as they are,
        # each pixel's value in one loop over the block (it vectorises: the
        # division too), then the stores (the general loop below gives the
        # same bits, but cost the 1-cell README run about 15 %:
        # docs/performance.md, fifth round)
        for b in range(nb):
            I = I_bg + geo[B_SUM, b] if geo[B_RUN, b] != 0.0 else I_bg
            test = r2f * I / steps
            test *= geo[B_CAPTURE, b]
            test *= geo[B_POLAR, b]
            test *= geo[B_OMEGA, b]
            geo[B_SUM, b] = test
        for b in range(nb):
            out[s, fs[b]] = np.float32(geo[B_SUM, b])
            orow += z + geo[B_OMEGA, b]
        return orow
    for b in range(nb):
        I = I_bg
        omega = z
        omega_acc = z
        capture = z
        polar = z + 1 if nopolar else z
        polar0 = z
        ran = False
        for u in range(nsub):
            c = b * nsub + u
            if omega == 0.0:
                omega = geo[B_OMEGA, c]
            omega_acc += omega
            if capture == 0.0:
                capture = geo[B_CAPTURE, c]
            if u == 0:
                polar0 = geo[B_POLAR, c]
            if geo[B_RUN, c] != 0.0:
                ran = True
                if polar == 0.0:
                    polar = geo[B_POLAR, c]
                I += geo[B_SUM, c]
        if not ran:
            # -dmin cut every sub-path: the first one's factor, for the water (#24)
            polar = polar0
        test = r2f * I / steps
        test *= capture
        test *= polar
        test *= omega
        out[s, fs[b]] = np.float32(test)
        orow += omega_acc
    return orow


#: pixel_value's lattice loop runs over the cell lanes rounded up to this
#: multiple when it has at least VECTOR_MIN_LANES of them: its vector loop then
#: ends in a vector epilogue (8 or 4 wide) rather than in up to 7 or 3 scalar
#: cells, each costing 3 to 5 vector lanes (W2: 50 cells, padded to 56 with
#: zmm; with ymm 52 lanes cost about 9 % less than 50).  Shorter loops run
#: scalar whole: padding would only add lanes to them.
LANE_PAD = 8 if WIDE_VECTORS else 4


@njit(cache=True, fastmath=False, error_model="numpy")
def lattice_cells(iopt, cells):
    """The cells (2, 9, ncell) that pixel_value's lattice loop runs over: for
    the square crystal on reduced sincg with at least VECTOR_MIN_LANES cells,
    with copies of the last cell appended up to a multiple of LANE_PAD; else
    cells itself.  The padding lanes' factors are computed and never read
    (the sums run over nphi x nmos cells); a copy of a real cell, not a zero
    one, so that they meet a lattice plane (d == 0, where the loop evaluates
    its cells a second time) only where a real cell does."""
    n = cells.shape[2]
    npad = (n + LANE_PAD - 1) // LANE_PAD * LANE_PAD
    if iopt[I_SHAPE] != 0 or iopt[I_REDUCED] == 0 or n < VECTOR_MIN_LANES or npad == n:
        return cells
    out = np.zeros((cells.shape[0], cells.shape[1], npad), dtype=cells.dtype)
    # element loops, not a slice assignment: that one took ~4 s of cold compile
    for v in range(cells.shape[0]):
        for r in range(cells.shape[1]):
            for j in range(npad):
                out[v, r, j] = cells[v, r, min(j, n - 1)]
    return out


@njit(cache=True, fastmath=False, error_model="numpy")
def lane_buffer(nlane, dtype_like):
    """The lane paths' ``cells`` argument of the lattice loop (variant -1,
    indices given in work): an array of the cells' type whose shape[2] is
    the number of lanes, (1, 1, nlane); its values are never read."""
    return np.zeros((1, 1, nlane), dtype=dtype_like.dtype)


@njit(cache=True, fastmath=False, error_model="numpy")
def lane_work(nlane, dtype_like):
    """A work buffer (N_WORK, nlane) for _index_lanes / _index_block: every
    lane's indices h = k = l = 1/4 to begin with.  Lanes a pixel or block
    leaves unused are computed along: a quarter from a lattice plane, never
    d == 0 (which would send the lattice loop to its second pass)."""
    out = np.zeros((N_WORK, nlane), dtype=dtype_like.dtype)
    for q in range(nlane):
        out[W_H, q] = 0.25
        out[W_K, q] = 0.25
        out[W_L, q] = 0.25
    return out


@njit(nogil=True, fastmath=False, **_JIT)
def render_rows(active, first_pixel, latch_pixel, latch_sub, iopt, fopt, vecs, incident, lam,
                cells, Fhkl, out, omega_out, oor_out, ran_out, row0, row1, rstep):
    """Image loop over rows row0, row0 + rstep, ... < row1, pixel by pixel
    (pixel_value: every mode and feature), single-threaded and without the
    GIL (:func:`render` runs it on a thread pool, or render_blocks where
    block_eligible)."""
    S, F = active.shape
    # per-pixel -c_parity bookkeeping only when the caller passes full-size arrays
    keep = oor_out.shape[0] == S and oor_out.shape[1] == F
    tbuf = np.zeros((1, TRACE_COLS))
    tpos = np.zeros(1, dtype=np.int64)
    info = np.zeros(3, dtype=np.int64)
    nd = _defer_lanes(iopt, cells.shape[2])
    cells = lattice_cells(iopt, cells)
    work = np.empty((N_WORK, cells.shape[2]), dtype=cells.dtype)
    dcells = lane_buffer(nd, cells)
    dwork = lane_work(nd, cells)
    for s in range(row0, row1, rstep):
        # the row's solid-angle sum in a local, stored once: omega_out's entries
        # of neighbouring rows share cache lines, and the threads take
        # alternate rows (a store per pixel made them contend for those lines)
        orow = omega_out[s] * 0.0
        for f in range(F):
            if active[s, f] == 0:
                continue
            p = s * F + f
            ls = -1
            if latch_pixel >= 0:
                if p > latch_pixel:
                    ls = -2
                elif p == latch_pixel:
                    ls = latch_sub
            val, om = pixel_value(s, f, p == first_pixel, ls, iopt, fopt, vecs, incident, lam,
                                  cells, Fhkl, work, tbuf, tpos, info, dcells, dwork)
            out[s, f] = np.float32(val)
            orow += om
            if keep:
                oor_out[s, f] = info[0]
                ran_out[s, f] = info[1]
        omega_out[s] = orow


@njit(nogil=True, fastmath=False, **_JIT)
def render_blocks(active, first_pixel, latch_pixel, latch_sub, iopt, fopt, vecs, incident, lam,
                  cells, Fhkl, out, omega_out, oor_out, ran_out, row0, row1, rstep):
    """render_rows' image loop for the runs block_eligible accepts: each row's
    active pixels BLOCK at a time (_block_row), the same values bit for bit.
    Its own entry point, so that neither entry links the other's code: a cold
    run compiles the one its image needs while a second process compiles the
    other (jitcache).  Same arguments as render_rows (oor_out and ran_out
    untouched: the block path is default mode only); raises on a run that
    block_eligible refuses."""
    S, F = active.shape
    ncell = cells.shape[2]
    if not _block_eligible(iopt, ncell, first_pixel, latch_pixel):
        raise ValueError("render_blocks: not a block-path run (see block_eligible)")
    nsub = iopt[I_OVERSAMPLE] * iopt[I_OVERSAMPLE]
    geo = np.empty((N_BLOCK, BLOCK * nsub), dtype=cells.dtype)
    sub = np.empty((2, BLOCK * nsub), dtype=np.int64)
    fs = np.empty(BLOCK, dtype=np.int64)
    nlane = BLOCK * nsub * ncell
    bwork = lane_work(nlane, cells)
    bcells = lane_buffer(nlane, cells)
    part = np.empty((8, BLOCK * nsub), dtype=cells.dtype)     # _column_sums' partial sums
    for s in range(row0, row1, rstep):
        orow = omega_out[s] * 0.0       # as render_rows: one store per row
        # the active pixels of the row, BLOCK at a time (nb is a computed 0:
        # a literal 0 would make numba compile _block_row twice)
        nb = s * 0
        for f in range(F):
            if active[s, f] == 0:
                continue
            fs[nb] = f
            nb += 1
            if nb == BLOCK:
                orow = _block_row(s, fs, nb, iopt, fopt, vecs, incident, lam, cells, Fhkl, geo,
                                  sub, bcells, bwork, out, orow, part)
                nb = s * 0
        if nb > 0:
            orow = _block_row(s, fs, nb, iopt, fopt, vecs, incident, lam, cells, Fhkl, geo, sub,
                              bcells, bwork, out, orow, part)
        omega_out[s] = orow


@njit(fastmath=False, **_JIT)
def trace_pixel(s, f, first_exec, latch_sub, iopt, fopt, vecs, incident, lam, cells, Fhkl, maxrows):
    """Run one pixel with tracing on; returns (value, rows, nrows).  Uses the
    trace copy of the pixel function: compiled (once) by the first run that
    asks for a trace, never by image-only runs."""
    tbuf = np.zeros((maxrows, TRACE_COLS))
    tpos = np.zeros(1, dtype=np.int64)
    info = np.zeros(3, dtype=np.int64)
    work = np.empty((N_WORK, cells.shape[2]), dtype=cells.dtype)
    val, om = _pixel_value_trace(s, f, first_exec, latch_sub, iopt, fopt, vecs, incident, lam,
                                 cells, Fhkl, work, tbuf, tpos, info, np.zeros((2, 9, 1)),
                                 np.empty((N_WORK, 1)))
    return val, tbuf, tpos[0]


# the host-side entry (thread pool over render_rows or render_blocks, from the start-up library
# or numba) lives in native; re-exported here for callers of cpu.render
from .native import default_threads, render  # noqa: E402,F401


def kernel_dispatchers():
    """Every numba dispatcher of this module (for warm-up and cache checks)."""
    from numba.core.registry import CPUDispatcher
    return [v for v in globals().values() if isinstance(v, CPUDispatcher)]


@njit(cache=True, fastmath=False, error_model="numpy")
def image_stats(img, active, roi, c_rules=False):
    """nanoBragg's statistics in one pass, without float64 copies of the image.

    Returns (max_I, argmax (linear, first in raster order; -1 if none > 0),
    sum, sum of squares, count) over active pixels, then the sum of squared
    deviations from their mean and its count, over the same pixels.

    c_rules (-c_parity): nanoBragg.c squares each pixel in float32
    (float*float), which flushes squares below ~1e-45 to zero (docs/quirks.md
    #11), and takes the deviations over the whole ROI, masked pixels (0)
    included, about the mean of the unmasked ones (#27)."""
    S, F = img.shape
    max_I = 0.0
    arg = -1
    total = 0.0
    sumsq = 0.0
    n = 0
    for s in range(S):
        for f in range(F):
            if active[s, f] == 0:
                continue
            v = np.float64(img[s, f])
            if v > max_I:
                max_I = v
                arg = s * F + f
            total += v
            if c_rules:
                sumsq += np.float64(img[s, f] * img[s, f])
            else:
                sumsq += v * v
            n += 1
    avg = total / (n if n > 0 else 1)
    dev = 0.0
    m = 0
    for s in range(max(roi[2], 0), min(roi[3] + 1, S)):
        for f in range(max(roi[0], 0), min(roi[1] + 1, F)):
            if active[s, f] == 0 and not c_rules:
                continue
            t = np.float64(img[s, f]) - avg
            dev += t * t
            m += 1
    return max_I, arg, total, sumsq, n, dev, m


@njit(cache=True, fastmath=False, error_model="numpy")
def int_image(img, roi, scale, adc):
    """nanoBragg's noiseless SMV pixels: floorf(float*scale + adc + 0.5), clipped
    to 0..65535, ROI only (the sum is rounded to float before the floor)."""
    S, F = img.shape
    out = np.zeros((S, F), dtype=np.uint16)
    for s in range(max(roi[2], 0), min(roi[3] + 1, S)):
        for f in range(max(roi[0], 0), min(roi[1] + 1, F)):
            t = np.float64(img[s, f]) * scale + adc
            if t > 65535.0:
                t = 65535.0
            if not t >= 0.0:     # negative, or NaN: never cast a non-finite value
                t = 0.0
            out[s, f] = np.uint16(np.floor(np.float32(t + 0.5)))
    return out
