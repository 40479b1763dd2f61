"""numba kernels for nbnumba.autodiff: a float64 forward image and the adjoint
(vector-Jacobian product) of the default-mode pixel sum.

The forward pass is the production kernel's ``pixel_value`` stored in float64
(the production image is float32, too coarse for gradients).  The adjoint pass
walks the same sub-paths (sub-pixels x sources x (phi, mosaic) cells) and, for
each pixel, contracts the upstream gradient g[s, f] with dI/dtheta for a small
vector theta of kernel-level quantities (layout P_* below).  Inside one
sub-path the derivatives are carried forward (the parameter count is small);
the F-grid gradient is scattered into one buffer per chunk of rows, reduced
on the host, so results do not depend on the thread schedule.

forward_jac runs the same per-pixel function with g = 1 and keeps each
pixel's dI/dtheta, so that the backward of every parameter but the F grid is
contract (a fixed-chunk sum of g dI/dtheta) instead of a second pass.

Every value (lattice factor, structure factor, polarization, solid angle) is
obtained by calling the formula in nbnumba.physics that the forward kernel
calls; their derivatives are the *_grad functions there.

Supported: the default mode (not -c_parity), sensor layers and the
-oversample_thick/_polar/_omega switches included (the forward's corrected
sum: each sub-path weighed by its own factors), and -curved_det;
nbnumba.autodiff checks this before calling.
"""
from __future__ import annotations

import numpy as np

from .. import numba_cache as _numba_cache

_numba_cache.import_numba()     # (a NUMBA_* value numba cannot read: one line)

from numba import njit, prange  # noqa: E402

from ..physics import (SHAPE_GAUSS, capture_fraction, capture_fraction_grad,  # noqa: E402
                       capture_fraction_parallax_grad, forward_scatter, sphere_position,
                       sphere_position_grad, interp_in_range, lattice_factor,
                       lattice_factor_grad, lattice_factor_star_grad, nearest_F, nearest_F_frac,
                       reduce_phase, sincg_near_coeffs, sincg_reduced, sincg_reduced_frac,
                       sincg_reduced_grad_core, sinpi_poly64_x6,
                       polarization_factor, polarization_factor_grad, polarization_kahn_slope,
                       polarization_factor_grad_incident, solid_angle,
                       solid_angle_grad_at, tricubic_F, tricubic_F_grad, unitize)
from . import cpu as K

# ---- kernel-level parameters theta (gradient vector layout) -----------------
# a, b, c: unrotated real-space cell vectors (m); cell j uses R_j a, etc.
# PIX0: lab position of pixel (0, 0)'s corner (m); CLOSE: close distance (m),
# used by the solid angle; LAM: common scale s of every source wavelength
# (lambda_i -> s lambda_i, at s = 1); NA..NC: crystal size in cells;
# FLU: log fluence (the image and the water background scale with fluence).
# KAHN: the Kahn polarization factor (-polar).
# MOS: the mosaic spread (rad); SPIN..SPIN+2: the three components of the
# -spindle_axis vector as given (before it is made a unit vector).  These are
# the per-cell rotation entries: cell j's rotated a, b, c move by a block of
# nine rows of dcells[:, j] per unit of the parameter (forward_jac only; the
# adjoint pass leaves them to its per-cell sums, which the host contracts).
# BEAM..BEAM+2: the three components of the -beam_vector vector as given;
# DIV, DIV+1: the horizontal and vertical divergence ranges (rad); DISP: the
# dispersion (a fraction of lambda0).  These are the per-source entries:
# per unit of the parameter, source s's unit incident vector moves by rows
# 4 q..4 q+2 of dinc[:, s] and its log wavelength by row 4 q + 3 (S =
# (d - inc)/lambda; the polarization factor at the pixel's first source);
# every pass computes them, the CUDA adjoint's too.
# ASTAR..CSTAR: the unrotated reciprocal vectors (1/A) of the gauss shape.
# FDET, SDET: the detector's fast and slow unit vectors (a sub-pixel's
# position is pix0 + Fdet fdet + Sdet sdet + Odet odet, Fdet and Sdet in m,
# Odet the depth of its sensor layer); ODET: the detector normal (the layers'
# direction and the capture fraction's parallax), after the per-cell entries;
# TSTEP, MU: the sensor's layer thickness (m) and attenuation coefficient (1/m).
# (-curved_det's sphere, physics.sphere_position, is made of CLOSE, ODET, FDET
# and SDET.)  theta[:N_HOST] and ODET are what the host derives from the cell
# and the detector.
P_A, P_B, P_C, P_PIX0, P_CLOSE = 0, 3, 6, 9, 12
P_ASTAR, P_BSTAR, P_CSTAR, P_FDET, P_SDET, N_HOST = 13, 16, 19, 22, 25, 28
P_LAM, P_NA, P_NB, P_NC, P_FLU, P_KAHN, P_MOS = 28, 29, 30, 31, 32, 33, 34
P_BEAM, P_DIV, P_DISP, P_SPIN = 35, 38, 40, 41
P_ODET, P_TSTEP, P_MU = 44, 47, 48
N_PAR = 49
#: the entries the CUDA adjoint's per-pixel rows carry (nanobragg.cu's N_PAR):
#: all of them; it leaves the rotation entries (P_MOS, P_SPIN..) 0, for the
#: host to contract from its per-cell sums
N_PAR_DEVICE = N_PAR

# ---- what a pass differentiates (bit mask ``want``) -------------------------
# W_F: scatter dI/dFhkl; W_N: d/dNa..Nc; W_GEO: everything that moves h, k, l or
# the pixel (cell vectors, pix0, detector axes, close distance, wavelength
# scale, the gauss shape's reciprocal vectors); W_POL: d/d(Kahn factor).
# P_FLU is always computed (it costs nothing).
# Without W_N and W_GEO the lattice passes compute values only.
W_F, W_N, W_GEO, W_POL = 1, 2, 4, 8


@njit(cache=True, inline="always", error_model="numpy")
def _v(vecs, row):
    """Row ``row`` of the kernel's vector table as a 3-tuple (see kernels.cpu's V_* rows)."""
    return (vecs[row, 0], vecs[row, 1], vecs[row, 2])


@njit(parallel=True, cache=True, fastmath=False, error_model="numpy")
def render64(active, box, iopt, fopt, vecs, incident, lam, cells, Fhkl, out):
    """Fill out (float64, (S, F)) with the default-mode pixel values.  box:
    (r0, r1, c0, c1), the rows and columns that hold every active pixel (the
    -roi box: a small ROI on a large detector does not scan the frame)."""
    r0, r1, c0, c1 = box[0], box[1], box[2], box[3]
    tbuf = np.zeros((1, K.TRACE_COLS))
    pcells = K.lattice_cells(iopt, cells)     # lanes padded as the image kernel's
    for i in prange(r1 - r0):
        s = r0 + i
        tpos = np.zeros(1, dtype=np.int64)
        info = np.zeros(3, dtype=np.int64)
        work = np.empty((K.N_WORK, pcells.shape[2]), dtype=cells.dtype)
        no_dcells = np.zeros((2, 9, 1), dtype=cells.dtype)    # no deferred lattice
        no_dwork = np.empty((K.N_WORK, 1), dtype=cells.dtype)
        # computed False / -1, not literals: literals would make numba compile another
        # copy of pixel_value beside the image kernel's (tests/test_compile_once.py)
        # (and a signed row: prange's index is unsigned)
        off = tbuf.shape[0] == 0
        no_latch = np.int64(-1)
        row = np.int64(s)
        for f in range(c0, c1):
            if active[s, f] == 0:
                continue
            val, om = K.pixel_value(row, f, off, no_latch, iopt, fopt, vecs, incident, lam, pcells,
                                    Fhkl, work, tbuf, tpos, info, no_dcells, no_dwork)
            out[s, f] = val


@njit(cache=True, fastmath=False, error_model="numpy")
def _nearest_inside(hkls, hmin, hmax, kmin, kmax, lmin, lmax, h0, k0, l0):
    """Does nearest_F read the grid (rather than default_F) at (h0, k0, l0)?"""
    return (hkls > 0 and h0 >= hmin and h0 <= hmax and k0 >= kmin and k0 <= kmax
            and l0 >= lmin and l0 <= lmax)


_V1 = 1     # the cell variant of the default mode (kernels.cpu: variant 1)


@njit(cache=True, _nrt=False, fastmath=K.FAST_MATH, error_model="numpy")
def _axes_from_sines(h, k, l, Na, Nb, Nc, cna, cnb, cnc, na, sa, d_a, e_a, nb, sb, d_b, e_b,
                     nc, sc, d_c, e_c):
    """The three axes' unsigned factors and derivatives from their reductions
    (d, e) and sines (n = sin(pi e), s = sin(pi d)), with one division for
    the three axes' 1/sin(pi d), values and derivatives, instead of four:
    (fa, fb, fc, dfa/dh, dfb/dk, dfc/dl, dfa/dNa, dfb/dNb, dfc/dNc, den),
    den = sa sb sc (the product underflows only if all three |d| < ~1e-100).
    Off the lattice planes; _cell_lattice_grad applies the limits.  Inlined
    by LLVM."""
    K._inline_into_callers()
    sab = sa * sb
    den = sab * sc
    r = 1.0 / den
    ia = (sb * sc) * r
    ib = (sa * sc) * r
    ic = sab * r
    fa = na * ia
    fb = nb * ib
    fc = nc * ic
    ga, gNa = sincg_reduced_grad_core(h, Na, cna, fa, d_a, e_a, 1.0, ia)
    gb, gNb = sincg_reduced_grad_core(k, Nb, cnb, fb, d_b, e_b, 1.0, ib)
    gc, gNc = sincg_reduced_grad_core(l, Nc, cnc, fc, d_c, e_c, 1.0, ic)
    return fa, fb, fc, ga, gb, gc, gNa, gNb, gNc, den


@njit(cache=True, _nrt=False, fastmath=K.FAST_MATH, error_model="numpy")
def _cell_lattice_grad(h, k, l, Na, Nb, Nc, cna, cnb, cnc):
    """One cell of the square/reduced fast path: the per-axis lattice factors
    up to their signs (sincg_reduced_frac's unsigned fractions: the forward's
    values up to rounding and sign) and their derivatives with the same signs
    dropped (sincg_reduced_grad_core with sgn 1; cn*: its near-peak
    coefficients per axis).  Returns (fa, fb, fc, dfa/dh, dfb/dk, dfc/dl,
    dfa/dNa, dfb/dNb, dfc/dNc); an axis with N <= 1 has factor 1 and zero
    derivatives, and on a lattice plane (d == 0) an axis has the limits of
    sincg_reduced_grad_from (f = N, df/dh = 0, df/dN = 1).  Every reader
    multiplies a factor by its own derivative or squares it (F_cell^2
    F_latt^2 and its derivatives), and (s f)(s f') = f f' for the sign
    s = +-1, so the parity's integer work is left out (as the image kernel's
    lattice loop leaves it out).  Branch-free, so loops over it vectorise
    like the forward's lattice pass.

    Compiled once, with pixel_grad's flags, and inlined by LLVM into the loops
    that call it (K._inline_into_callers): numba's own inlining
    (inline="always") typed its body, and the six sines in it, once per call
    site, a large part of pixel_grad's cold compile."""
    K._inline_into_callers()
    da = Na > 1
    db = Nb > 1
    dc = Nc > 1
    # (N, 1) for (num, den) where d == 0; a factor of 1 where an axis is off
    na, sa, d_a, e_a, _ = sincg_reduced_frac(h, Na, False, False)
    nb, sb, d_b, e_b, _ = sincg_reduced_frac(k, Nb, False, False)
    nc, sc, d_c, e_c, _ = sincg_reduced_frac(l, Nc, False, False)
    fa, fb, fc, ga, gb, gc, gNa, gNb, gNc, _ = _axes_from_sines(
        h, k, l, Na, Nb, Nc, cna, cnb, cnc, na, sa if da else 1.0, d_a, e_a,
        nb, sb if db else 1.0, d_b, e_b, nc, sc if dc else 1.0, d_c, e_c)
    # the limits on a plane (df/dh there is the series' 0 already)
    fa = na if d_a == 0.0 else fa
    fb = nb if d_b == 0.0 else fb
    fc = nc if d_c == 0.0 else fc
    gNa = gNa if d_a != 0.0 else 1.0
    gNb = gNb if d_b != 0.0 else 1.0
    gNc = gNc if d_c != 0.0 else 1.0
    return (fa if da else 1.0, fb if db else 1.0, fc if dc else 1.0,
            ga if da else 0.0, gb if db else 0.0, gc if dc else 0.0,
            gNa if da else 0.0, gNb if db else 0.0, gNc if dc else 0.0)


@njit(cache=True, _nrt=False, fastmath=K.FAST_MATH, error_model="numpy")
def _cell_lattice_grad_lean(h, k, l, Na, Nb, Nc, cna, cnb, cnc):
    """_cell_lattice_grad's nine values where every N > 1 and the cell is off
    the lattice planes (no d == 0), without the selects of the limit and of
    N <= 1 (about a tenth of the loop's instructions), plus den, the product
    of the three sin(pi d): 0 on a plane (or if it underflows), where the
    caller takes _cell_lattice_grad instead.  The same operations otherwise
    (_axes_from_sines; the six sines interleaved as the image kernel's,
    sinpi_poly64_x6), so the same values.  Inlined by LLVM."""
    K._inline_into_callers()
    d_a, e_a, _ = reduce_phase(h, Na)
    d_b, e_b, _ = reduce_phase(k, Nb)
    d_c, e_c, _ = reduce_phase(l, Nc)
    na, sa, nb, sb, nc, sc = sinpi_poly64_x6(e_a, d_a, e_b, d_b, e_c, d_c)
    return _axes_from_sines(h, k, l, Na, Nb, Nc, cna, cnb, cnc, na, sa, d_a, e_a,
                            nb, sb, d_b, e_b, nc, sc, d_c, e_c)


@njit(cache=True, inline="always", error_model="numpy")
def _square_values(S, cells, work, Na, Nb, Nc):
    """The fast path without derivatives (only F_hkl or fluence is
    differentiated): each cell's F_latt into work[J_FL]."""
    ncell = cells.shape[2]
    S0, S1, S2 = S
    da = Na > 1
    db = Nb > 1
    dc = Nc > 1
    v = np.int64(_V1)
    for j in range(ncell):
        h, k, l = K._hkl(cells, v, j, S0, S1, S2)
        fa = sincg_reduced(h, Na, False) if da else 1.0
        fb = sincg_reduced(k, Nb, False) if db else 1.0
        fc = sincg_reduced(l, Nc, False) if dc else 1.0
        work[J_FL, j] = ((1.0 * fa) * fb) * fc


@njit(cache=True, inline="always", error_model="numpy")
def _square_sum(S, cells, work, Fhkl, hkls, hmin, hmax, kmin, kmax, lmin, lmax, default_F):
    """The sub-path's sum of F_cell^2 F_latt^2 from _square_values' F_latt."""
    ncell = cells.shape[2]
    S0, S1, S2 = S
    v = np.int64(_V1)
    sumT = 0.0
    for j in range(ncell):
        h, k, l = K._hkl(cells, v, j, S0, S1, S2)
        Fl = work[J_FL, j]
        h0 = np.int64(np.ceil(h - 0.5))
        k0 = np.int64(np.ceil(k - 0.5))
        l0 = np.int64(np.ceil(l - 0.5))
        Fc = nearest_F(Fhkl, hkls, hmin, hmax, kmin, kmax, lmin, lmax, h0, k0, l0, default_F)
        FcFl = Fc * Fl
        sumT += FcFl * FcFl
    return sumT


# ---- the square / reduced fast path: per-cell terms, then the pixel's sums --
# (per-thread work rows, one column per lane of the padded cells; the sums'
# loop reads J_T .. J_NC, the F-grid scatter J_FL)
J_T, J_TH, J_TK, J_TL, J_NA, J_NB, J_NC, J_FL, J_H, J_K, J_L, J_F = range(12)
N_JWORK = 12


@njit(cache=True, _nrt=False, fastmath=K.FAST_MATH, error_model="numpy")
def _store_terms(work, j, Fc, fa, fb, fc, ga, gb, gc, gNa, gNb, gNc):
    """Cell j's row entries from its F and the per-axis factors and
    derivatives: T = (F_cell F_latt)^2, its derivatives in h, k, l and Na,
    Nb, Nc, and F_latt.  Inlined by LLVM."""
    K._inline_into_callers()
    fab = (1.0 * fa) * fb
    Fl = fab * fc
    FcFl = Fc * Fl
    tFl = 2.0 * Fc * FcFl          # dT/dF_latt
    # dT/dx of an axis = tFl times the other two factors times its derivative
    qa = tFl * (fb * fc)
    qb = tFl * (fa * fc)
    qc = tFl * fab
    work[J_T, j] = FcFl * FcFl
    work[J_TH, j] = qa * ga
    work[J_TK, j] = qb * gb
    work[J_TL, j] = qc * gc
    work[J_NA, j] = qa * gNa
    work[J_NB, j] = qb * gNb
    work[J_NC, j] = qc * gNc
    work[J_FL, j] = Fl


@njit(cache=True, _nrt=False, fastmath=K.FAST_MATH, error_model="numpy")
def _jac_terms(S, cells, work, Na, Nb, Nc, cna, cnb, cnc, Fhkl, hkls, hmin, hmax, kmin, kmax,
               lmin, lmax, default_F):
    """The fast path's per-cell terms of one sub-path, every lane of cells
    (the padded lanes of kernels.cpu.lattice_cells included): T = (F_cell
    F_latt)^2, dT/dh, dT/dk, dT/dl and dT/dNa, dT/dNb, dT/dNc into work rows
    J_T .. J_NC, and F_latt (up to its sign) into J_FL for the F-grid
    scatter; the sums follow in _jac_sums and _jac_cell_grad.  A short loop
    stores the indices and F, then the main loop computes the rest: where
    every N > 1 without the limits' selects (_cell_lattice_grad_lean, again
    with them only if a cell lies on a lattice plane).  The loops have
    512-bit vectors where the CPU has them and noalias arguments (the
    gathers from Fhkl cannot meet the stores into work), so LLVM vectorises
    them whole.  (The fused loop they replace kept 16 running sums beside
    the per-cell arithmetic, spilled a third of its instructions and ran
    with 256-bit vectors: docs/autodiff_rounds.md, tenth round.)  Inlined by LLVM."""
    K._inline_into_callers()
    K._args_noalias()
    K._prefer_512bit_vectors()
    ncell = cells.shape[2]
    S0, S1, S2 = S
    v = np.int64(_V1)
    # the indices and the F lookups in a short loop of their own, out of the
    # long loop below (about 280 instructions per 8 cells)
    for j in range(ncell):
        h, k, l = K._hkl(cells, v, j, S0, S1, S2)
        work[J_H, j] = h
        work[J_K, j] = k
        work[J_L, j] = l
        # (without a grid, -default_F alone, no lookup: an 8-lane gather here
        # cost about a tenth of this function's time)
        work[J_F, j] = (nearest_F_frac(Fhkl, hkls, hmin, hmax, kmin, kmax, lmin, lmax, h, k, l,
                                       default_F) if hkls > 0 else default_F)
    if Na > 1 and Nb > 1 and Nc > 1:
        plane = False
        for j in range(ncell):
            fa, fb, fc, ga, gb, gc, gNa, gNb, gNc, den = _cell_lattice_grad_lean(
                work[J_H, j], work[J_K, j], work[J_L, j], Na, Nb, Nc, cna, cnb, cnc)
            plane |= den == 0.0
            _store_terms(work, j, work[J_F, j], fa, fb, fc, ga, gb, gc, gNa, gNb, gNc)
        if not plane:
            return
    # an axis with N <= 1, or a cell on a lattice plane (rare): every cell
    # again, with the limits
    for j in range(ncell):
        h = work[J_H, j]
        k = work[J_K, j]
        l = work[J_L, j]
        fa, fb, fc, ga, gb, gc, gNa, gNb, gNc = _cell_lattice_grad(h, k, l, Na, Nb, Nc,
                                                                   cna, cnb, cnc)
        _store_terms(work, j, work[J_F, j], fa, fb, fc, ga, gb, gc, gNa, gNb, gNc)


@njit(cache=True, _nrt=False, fastmath=K.FAST_MATH, error_model="numpy")
def _jac_sums(cells, work, ncell):
    """The sums over the ncell real cells of one sub-path (the padded lanes
    left out) from _jac_terms' rows: (sum T, gx, gy, gz, dNa, dNb, dNc), with
    (gx, gy, gz) = sum_j dT/dh a_j + dT/dk b_j + dT/dl c_j, the d/dS terms.
    Reassociated sums in an order fixed at compile time.  Inlined by LLVM."""
    K._inline_into_callers()
    K._prefer_512bit_vectors()
    sumT = gx = gy = gz = gNa = gNb = gNc = 0.0
    for j in range(ncell):
        Th = work[J_TH, j]
        Tk = work[J_TK, j]
        Tl = work[J_TL, j]
        sumT += work[J_T, j]
        gNa += work[J_NA, j]
        gNb += work[J_NB, j]
        gNc += work[J_NC, j]
        gx += Th * cells[1, 0, j] + Tk * cells[1, 3, j] + Tl * cells[1, 6, j]
        gy += Th * cells[1, 1, j] + Tk * cells[1, 4, j] + Tl * cells[1, 7, j]
        gz += Th * cells[1, 2, j] + Tk * cells[1, 5, j] + Tl * cells[1, 8, j]
    return sumT, gx, gy, gz, gNa, gNb, gNc


@njit(cache=True, _nrt=False, fastmath=K.FAST_MATH, error_model="numpy")
def _jac_cell_grad(S, rot, work, ncell):
    """The unrotated cell's gradient of one sub-path's sum, contracted over
    its cells from _jac_terms' rows: h_j = a . u_j with u_j = R_j^T S (rot:
    (9, ncell), rot[3 m + n, j] = R_j[n, m]), so d(sum)/da = sum_j dT/dh_j u_j
    (b: dT/dk, c: dT/dl).  Returns d/da (3), d/db (3), d/dc (3).  (The
    adjoint pass collects per-cell sums instead.)  Inlined by LLVM."""
    K._inline_into_callers()
    K._prefer_512bit_vectors()
    S0, S1, S2 = S
    ga0 = ga1 = ga2 = gb0 = gb1 = gb2 = gc0 = gc1 = gc2 = 0.0
    for j in range(ncell):
        Th = work[J_TH, j]
        Tk = work[J_TK, j]
        Tl = work[J_TL, j]
        u0 = rot[0, j] * S0 + rot[1, j] * S1 + rot[2, j] * S2
        u1 = rot[3, j] * S0 + rot[4, j] * S1 + rot[5, j] * S2
        u2 = rot[6, j] * S0 + rot[7, j] * S1 + rot[8, j] * S2
        ga0 += Th * u0
        ga1 += Th * u1
        ga2 += Th * u2
        gb0 += Tk * u0
        gb1 += Tk * u1
        gb2 += Tk * u2
        gc0 += Tl * u0
        gc1 += Tl * u1
        gc2 += Tl * u2
    return ga0, ga1, ga2, gb0, gb1, gb2, gc0, gc1, gc2


@njit(cache=True, _nrt=False, fastmath=K.FAST_MATH, error_model="numpy")
def _mosaic_term(dcells, r, j, S0, S1, S2, Th, Tk, Tl):
    """Cell j's term of one per-cell rotation parameter's derivative: dT/dh
    (da_j . S) + dT/dk (db_j . S) + dT/dl (dc_j . S), with dcells rows r..r+8
    the derivatives of cell j's rotated a, b, c (rows r+0-2, r+3-5, r+6-8)
    per unit of the parameter (h_j = a_j . S).  Inlined by LLVM."""
    K._inline_into_callers()
    return (Th * (dcells[r, j] * S0 + dcells[r + 1, j] * S1 + dcells[r + 2, j] * S2)
            + Tk * (dcells[r + 3, j] * S0 + dcells[r + 4, j] * S1 + dcells[r + 5, j] * S2)
            + Tl * (dcells[r + 6, j] * S0 + dcells[r + 7, j] * S1 + dcells[r + 8, j] * S2))


@njit(cache=True, _nrt=False, fastmath=K.FAST_MATH, error_model="numpy")
def _jac_mosaic(S, dcells, r, work, ncell):
    """One per-cell rotation parameter's derivative of one sub-path's sum over
    its cells (dcells rows r..r+8), from _jac_terms' rows (_mosaic_term).
    Inlined by LLVM."""
    K._inline_into_callers()
    K._prefer_512bit_vectors()
    S0, S1, S2 = S
    m = 0.0
    for j in range(ncell):
        m += _mosaic_term(dcells, r, j, S0, S1, S2, work[J_TH, j], work[J_TK, j], work[J_TL, j])
    return m


@njit(cache=True, _nrt=False, fastmath=K.FAST_MATH, error_model="numpy")
def _incident_term(dinc, q, s, x, y, z):
    """(x, y, z) . d(source s's incident vector)/d(theta[ipar[q]]), from the
    per-source block q of dinc (rows 4 q..4 q+2).  Inlined by LLVM."""
    K._inline_into_callers()
    return x * dinc[4 * q, s] + y * dinc[4 * q + 1, s] + z * dinc[4 * q + 2, s]


@njit(cache=True, _nrt=False, fastmath=K.FAST_MATH, error_model="numpy")
def _source_term(dinc, q, s, gx, gy, gz, gs, lam_s):
    """One sub-path's d(sum of terms)/d(theta[ipar[q]]) through source s:
    (gx, gy, gz) = d/dS and gs = d/d(ln lambda_s) of its terms, with S = (d -
    inc)/lambda_s, so dS/dinc = -1/lambda_s (rows 4 q..4 q+2 of dinc) and the
    log wavelength's row is 4 q + 3.  Inlined by LLVM."""
    K._inline_into_callers()
    return gs * dinc[4 * q + 3, s] - _incident_term(dinc, q, s, gx, gy, gz) / lam_s


@njit(cache=True, _nrt=False, fastmath=K.FAST_MATH, error_model="numpy")
def _add_pos(dsum, c, gp, F, S, t, tstep, odet, cv):
    """dsum += c gp mapped onto theta, gp the derivative of a factor in the
    position pos = pix0 + F fdet + S sdet + t tstep odet where it was
    evaluated (t: its sensor layer), or with cv = (curved, close, pix0,
    fdet, sdet) and curved != 0, in the surface point pix0 + F fdet + S sdet
    at depth t tstep moved onto the sphere (physics.sphere_position).
    Inlined by LLVM."""
    K._inline_into_callers()
    gdepth = 0.0
    if cv[0] != 0:
        # -curved_det: back from the sphere to the surface point and the
        # depth, and the map's own radius (the close distance) and axes
        fdet, sdet, pix0 = cv[3], cv[4], cv[2]
        surf = (F * fdet[0] + S * sdet[0] + pix0[0],
                F * fdet[1] + S * sdet[1] + pix0[1],
                F * fdet[2] + S * sdet[2] + pix0[2])
        gp, gdepth, gclose, god, gf, gs = sphere_position_grad(gp, surf, t * tstep, cv[1],
                                                               odet, fdet, sdet)
        dsum[P_CLOSE] += c * gclose
        for i in range(3):
            dsum[P_ODET + i] += c * god[i]
            dsum[P_SDET + i] += c * gs[i]
            dsum[P_FDET + i] += c * gf[i]
    for i in range(3):
        x = c * gp[i]
        dsum[P_PIX0 + i] += x
        dsum[P_FDET + i] += x * F
        dsum[P_SDET + i] += x * S
    if t > 0.0:
        if cv[0] != 0:
            # the sphere's depth is a radius, which odet does not multiply
            dsum[P_TSTEP] += t * (c * gdepth)
        else:
            # below the first layer: the depth t tstep along odet
            O = t * tstep
            go = 0.0
            for i in range(3):
                x = c * gp[i]
                dsum[P_ODET + i] += x * O
                go += x * odet[i]
            dsum[P_TSTEP] += t * go


@njit(cache=True, _nrt=False, fastmath=K.FAST_MATH, error_model="numpy")
def _add_capture(dsum, c, go, gtau, gmu):
    """dsum += c times the capture fraction's direct derivatives: in the
    detector normal (the parallax; go), the layer thickness and the
    attenuation coefficient.  Inlined by LLVM."""
    K._inline_into_callers()
    for i in range(3):
        dsum[P_ODET + i] += c * go[i]
    dsum[P_TSTEP] += c * gtau
    dsum[P_MU] += c * gmu


@njit(cache=True, _nrt=False, fastmath=K.FAST_MATH, error_model="numpy")
def _weight_polar(dsum, c, dwp, dwpi, dwpk, dinc, ipar, ninc, s, F, S, t, tstep, odet, cv):
    """dsum += c d(polarization weight): in the position (dwp, at F, S, t), the
    Kahn factor (dwpk) and source s's incident vector (dwpi, through the
    per-source blocks).  Inlined by LLVM."""
    K._inline_into_callers()
    _add_pos(dsum, c, dwp, F, S, t, tstep, odet, cv)
    dsum[P_KAHN] += c * dwpk
    for q in range(ninc):
        dsum[ipar[q]] += c * _incident_term(dinc, q, s, dwpi[0], dwpi[1], dwpi[2])


@njit(cache=True, fastmath=False, error_model="numpy")
def _near_table(fopt):
    """(3, 7): sincg_near_coeffs of Na, Nb, Nc (rows; 0 for an axis with
    N <= 1), computed once per pass rather than once per pixel."""
    t = np.zeros((3, 7))
    Ns = (fopt[K.F_NA], fopt[K.F_NB], fopt[K.F_NC])
    for a in range(3):
        if Ns[a] > 1:
            c = sincg_near_coeffs(Ns[a])
            for q in range(7):
                t[a, q] = c[q]
    return t


# Reassociation lets LLVM vectorise the per-cell sums; the order is fixed at
# compile time, so results stay independent of the thread count.  No reference
# counting and no allocation (_nrt=False): the callers pass whole arrays plus
# indices, never slices, so a call touches no shared reference count (as the
# forward's pixel_value; docs/performance.md).
def _pixel_grad(spixel, fpixel, g, iopt, fopt, vecs, incident, lam, cells, pcells, Fhkl,
               want, gF, ch, cacc, rot, dcells, dpar, dinc, ipar, cnear, work, dsum):
    """Overwrite dsum (N_PAR,) with g * dI/dtheta of pixel (spixel, fpixel)
    and, with want & W_F, add g * dI/dFhkl to gF[ch] (gF: (chunks,) +
    Fhkl's shape).  Returns the pixel's value (photons; equal to the forward
    kernel's up to rounding).

    The unrotated cell vectors enter through h_j = (R_j a) . S = a . (R_j^T S).
    With rot of shape (9, ncell) (rot[3 m + n, j] = R_j[n, m]) their gradient is
    contracted here into dsum[P_A:P_C + 3].  pcells: the cells with their
    lanes padded (kernels.cpu.lattice_cells), which the square/reduced fast
    path's per-cell loops run over.  With rot of width 0 it is left 0
    there, and cacc[ch] (9, ncell) collects sum g dI/dh_j S per cell instead
    (rows 0-2; k: 3-5, l: 6-8), for the host to apply R_j^T once
    (autodiff._Run.theta_grad).  dcells (9 M, ncell), dpar (M,): rows
    9 m..9 m+8 hold d(cell j's rotated a, b, c)/d(theta[dpar[m]]) for the
    per-cell rotation entries (P_MOS, P_SPIN..P_SPIN + 2), contracted into
    dsum[dpar[m]]; of width 0, those entries are left 0.  dinc (4 Q, nsrc),
    ipar (Q,): rows 4 q..4 q+2 hold d(source s's incident vector)/d(theta[ipar[q]])
    and row 4 q + 3 d(ln lambda_s)/d(theta[ipar[q]]) for the per-source
    entries (P_BEAM..P_DISP), contracted into dsum[ipar[q]] (through S and
    the polarization factor); of width 0 (Q = 0), left 0.  cnear:
    _near_table(fopt), the near-peak coefficients (the same for every
    pixel).  work: (N_JWORK, lanes of pcells) scratch."""
    K._inline_into_callers()
    os = iopt[K.I_OVERSAMPLE]
    nsrc, nphi, nmos = iopt[K.I_NSRC], iopt[K.I_NPHI], iopt[K.I_NMOS]
    ncell = nphi * nmos
    shape = iopt[K.I_SHAPE]
    reduced = iopt[K.I_REDUCED]
    interp = iopt[K.I_INTERP] != 0
    point = iopt[K.I_POINT] != 0
    hkls = iopt[K.I_HKLS]
    hmin, hmax, kmin, kmax = iopt[K.I_HMIN], iopt[K.I_HMAX], iopt[K.I_KMIN], iopt[K.I_KMAX]
    lmin, lmax = iopt[K.I_LMIN], iopt[K.I_LMAX]
    pixel, subpixel = fopt[K.F_PIXEL], fopt[K.F_SUBPIXEL]
    close = fopt[K.F_CLOSE]
    kahn, dmin = fopt[K.F_KAHN], fopt[K.F_DMIN]
    Na, Nb, Nc, fudge = fopt[K.F_NA], fopt[K.F_NB], fopt[K.F_NC], fopt[K.F_FUDGE]
    default_F, I_bg = fopt[K.F_DEFAULT_F], fopt[K.F_I_BG]
    spot = fopt[K.F_SPOT]
    fdet, sdet, pix0 = _v(vecs, K.V_FDET), _v(vecs, K.V_SDET), _v(vecs, K.V_PIX0)
    polar_axis = _v(vecs, K.V_POLAR)
    astar, bstar, cstar = _v(vecs, K.V_ASTAR), _v(vecs, K.V_BSTAR), _v(vecs, K.V_CSTAR)
    C = fopt[K.F_SCALE] / fopt[K.F_STEPS]
    fast = shape == 0 and reduced == 1 and not interp
    want_F = (want & W_F) != 0
    geo = (want & W_GEO) != 0
    deriv = (want & (W_N | W_GEO)) != 0     # else values only
    use_rot = rot.shape[1] > 0
    use_mos = dcells.shape[1] > 0
    nrot = dpar.shape[0]
    ninc = ipar.shape[0]
    v1 = np.int64(_V1)
    # near-peak series coefficients of the per-axis derivatives (fast path),
    # as tuples: loop constants in registers for _jac_terms
    cna = (cnear[0, 0], cnear[0, 1], cnear[0, 2], cnear[0, 3], cnear[0, 4], cnear[0, 5], cnear[0, 6])
    cnb = (cnear[1, 0], cnear[1, 1], cnear[1, 2], cnear[1, 3], cnear[1, 4], cnear[1, 5], cnear[1, 6])
    cnc = (cnear[2, 0], cnear[2, 1], cnear[2, 2], cnear[2, 3], cnear[2, 4], cnear[2, 5], cnear[2, 6])

    # d(sum of terms)/dtheta for this pixel, before the per-pixel factors
    for p in range(N_PAR):
        dsum[p] = 0.0
    sumT = 0.0
    # sensor layers and the -oversample_* switches (kernels.cpu.pixel_value):
    # the "corrected" sum weighs each sub-path by the factors it oversamples
    # (its own capture fraction, polarization, solid angle) and each layer by
    # its capture fraction; the other factors apply once per pixel at the end
    # (constants in pixel_grad, the copy for runs without them: LLVM drops
    # the code that serves them, which cost 7-9% of the Jacobian forward on
    # issue 13's command; _pixel_grad_sensor reads them)
    # (the sensor copy also serves -curved_det: each sub-pixel moved onto the
    # sphere, every position derivative mapped back through _add_pos)
    if SENSOR != 0:
        nthick = iopt[K.I_THICKSTEPS]
        os_thick = iopt[K.I_OS_THICK] != 0
        os_polar = iopt[K.I_OS_POLAR] != 0
        os_omega = iopt[K.I_OS_OMEGA] != 0
        thick = fopt[K.F_THICK]
        curved = iopt[K.I_CURVED]
    else:
        nthick = 1
        os_thick = os_polar = os_omega = False
        thick = 0.0
        curved = np.int64(0)
    cv = (curved, close, pix0, fdet, sdet)
    corrected = nthick > 1 or os_thick or os_polar or os_omega
    thickstep, mu = fopt[K.F_THICKSTEP], fopt[K.F_MU]
    odet = _v(vecs, K.V_ODET)
    want_pol = (want & W_POL) != 0
    wgrad = geo or want_pol     # the weights' derivatives are needed
    # the water background's share of one sub-path (corrected sum)
    bg_sub = I_bg / (os * os)
    bg_src = bg_sub / nsrc
    capsum = 0.0        # corrected sum: the background's weight, as the forward's
    # polarization and solid angle: once per pixel, at its first sub-pixel (and
    # first source that passes -dmin), as the forward kernel computes them
    # (1 where a switch oversamples them instead)
    have_polar = iopt[K.I_NOPOLAR] != 0 or os_polar
    have_cut_polar = False      # polar holds a -dmin-cut sub-path's factor (#24)
    polar = 1.0 if have_polar else 0.0
    dP = (0.0, 0.0, 0.0)
    omega = 1.0 if os_omega else 0.0
    dOm = (0.0, 0.0, 0.0)
    dOmc = 0.0
    # the (Fdet, Sdet, layer) of the sub-pixel where omega and polar were evaluated
    # (their position derivatives reach fdet, sdet and odet through it)
    F_om = S_om = F_po = S_po = 0.0
    t_om = t_po = 0.0
    src_po = 0      # ... and the source (its incident vector's derivatives reach it)
    dPi = (0.0, 0.0, 0.0)   # d polar / d that source's incident vector
    dPk = 0.0       # d polar / d kahn
    zero3 = (0.0, 0.0, 0.0)
    capture = 1.0
    dcap = dcapo = zero3    # d capture / d pos, / d odet (direct) where last computed
    dcapt = dcapm = 0.0     # ... and / d thickstep, / d mu (direct)
    F_c = S_c = 0.0
    # a layer's positions at its middle, depth (t + 1/2) thickstep (the default
    # mode's, docs/quirks.md #39; td: the depth in layers, which _add_pos reads)
    half = 0.5 if SENSOR != 0 and thick != 0.0 else 0.0
    for t in range(nthick):
        tf = t * 1.0
        td = tf + half
        Odet = td * thickstep
        # the forward's capture: 1 without a sensor, else computed at the
        # layer's first sub-pixel (while 0), or at every one (-oversample_thick)
        capture = 1.0 if thick == 0.0 else 0.0
        capL = 0.0          # the layer's capture (its first sub-pixel's)
        dcapL = dcapLo = zero3
        dcapLt = dcapLm = 0.0
        F_L = S_L = 0.0
        LX = 0.0            # the layer's sum of wo Xs (capL's derivative)
        layer_bg = 0.0
        for subS in range(os):
            for subF in range(os):
                Fdet = subpixel * (fpixel * os + subF) + subpixel / 2.0
                Sdet = subpixel * (spixel * os + subS) + subpixel / 2.0
                if curved != 0:
                    # (autodiff runs the default mode only: its sphere, of the
                    # surface point and the layer's depth)
                    pos = sphere_position((Fdet * fdet[0] + Sdet * sdet[0] + pix0[0],
                                           Fdet * fdet[1] + Sdet * sdet[1] + pix0[1],
                                           Fdet * fdet[2] + Sdet * sdet[2] + pix0[2]),
                                          Odet, close, odet, fdet, sdet)
                else:
                    pos = (Fdet * fdet[0] + Sdet * sdet[0] + Odet * odet[0] + pix0[0],
                           Fdet * fdet[1] + Sdet * sdet[1] + Odet * odet[1] + pix0[1],
                           Fdet * fdet[2] + Sdet * sdet[2] + Odet * odet[2] + pix0[2])
                d, R = unitize(pos)
                # (on the sphere each pixel faces the sample: obliquity 1, so its
                # solid angle pixel^2/R^2 varies as a point pixel's, not with close)
                if omega == 0.0:
                    # the pixel's one solid angle: on the sensor's face (depth 0),
                    # as the forward's
                    d0, R0 = d, R
                    if Odet != 0.0:
                        p0 = (Fdet * fdet[0] + Sdet * sdet[0] + pix0[0],
                              Fdet * fdet[1] + Sdet * sdet[1] + pix0[1],
                              Fdet * fdet[2] + Sdet * sdet[2] + pix0[2])
                        if curved != 0:
                            p0 = sphere_position(p0, 0.0, close, odet, fdet, sdet)
                        d0, R0 = unitize(p0)
                    omega = solid_angle(pixel, R0, R0 if curved != 0 else close, point)
                    F_om, S_om, t_om = Fdet, Sdet, 0.0
                    if geo:
                        dOm, dOmc = solid_angle_grad_at(pixel, d0, R0, omega, point or curved != 0)
                wo = 1.0            # this sub-pixel's solid angle (-oversample_omega)
                dwo = zero3
                dwoc = 0.0
                if os_omega:
                    # the layer's own plane, at close + Odet (#42); dwoc is
                    # d wo / d(close + Odet)
                    wo = solid_angle(pixel, R, R if curved != 0 else close + Odet, point)
                    if geo:
                        dwo, dwoc = solid_angle_grad_at(pixel, d, R, wo, point or curved != 0)
                if capture == 0.0 or os_thick:
                    if curved != 0:
                        # the sphere's sensor faces the sample: parallax 1, no
                        # derivative in the position or the normal
                        capture, _, dcapt, dcapm = capture_fraction_parallax_grad(
                            tf, thickstep, mu, 1.0)
                        dcap = dcapo = zero3
                    elif geo:
                        capture, dcap, dcapo, dcapt, dcapm = capture_fraction_grad(
                            tf, thickstep, mu, d, R, odet)
                    else:
                        capture = capture_fraction(tf, thickstep, mu,
                                                   d[0] * odet[0] + d[1] * odet[1]
                                                   + d[2] * odet[2])
                    F_c, S_c = Fdet, Sdet
                if subS == 0 and subF == 0:
                    capL, dcapL, dcapLo, F_L, S_L = capture, dcap, dcapo, Fdet, Sdet
                    dcapLt, dcapLm = dcapt, dcapm
                # this sub-pixel's capture weight (the pixel's capture is a
                # factor at the end when the sum is not corrected)
                wc = capture if os_thick else (capL if corrected else 1.0)
                wos = capture if os_thick else 1.0   # the forward's background weight
                if os_omega:
                    wos *= wo
                if corrected and not os_polar:
                    layer_bg += wos
                Xs = 0.0        # sum over sources of wp T, and the background's share
                for source in range(nsrc):
                    inc = (incident[source, 0], incident[source, 1], incident[source, 2])
                    lam_s = lam[source]
                    # the source's relative intensity (1 unless -sourcefile weighs
                    # the sources: kernels.cpu.pixel_value, docs/quirks.md #20)
                    ws = incident[source, 3]
                    # (autodiff runs the default mode: its forward scattering)
                    S = forward_scatter((d[0] - inc[0]) / lam_s, (d[1] - inc[1]) / lam_s,
                                        (d[2] - inc[2]) / lam_s, True)
                    cut = False
                    if dmin > 0.0:
                        stol = 0.5 * np.sqrt(S[0] * S[0] + S[1] * S[1] + S[2] * S[2])
                        cut = stol > 0.0 and dmin > 0.5 / stol
                    wp = 1.0        # this sub-path's polarization (-oversample_polar)
                    dwp = dwpi = zero3
                    dwpk = 0.0
                    if os_polar:
                        if geo:
                            wp, dwp = polarization_factor_grad(kahn, inc, pos, polar_axis)
                            if ninc > 0:
                                dwpi = polarization_factor_grad_incident(kahn, inc, pos,
                                                                         polar_axis)
                        else:
                            wp, _ = polarization_factor(kahn, inc, pos, polar_axis)
                        if want_pol:
                            dwpk = polarization_kahn_slope(inc, pos, polar_axis)
                        layer_bg += wos * wp * ws
                    # the pixel's factor: its first sub-path that -dmin does not
                    # cut, else (a pixel cut whole, whose water keeps it) its
                    # first sub-path's (kernels.cpu.pixel_value; docs/quirks.md #24)
                    if not have_polar and not (cut and have_cut_polar):
                        if geo:
                            polar, dP = polarization_factor_grad(kahn, inc, pos, polar_axis)
                        else:
                            polar, _ = polarization_factor(kahn, inc, pos, polar_axis)
                        if cut:
                            have_cut_polar = True
                        else:
                            have_polar = True
                        F_po, S_po, t_po = Fdet, Sdet, td
                        src_po = source
                        if geo and ninc > 0:
                            dPi = polarization_factor_grad_incident(kahn, inc, pos, polar_axis)
                        if want_pol:
                            dPk = polarization_kahn_slope(inc, pos, polar_axis)
                    if cut:
                        if os_polar and wgrad:
                            # -dmin cuts the Bragg term only: water still fills it
                            Xs += wp * ws * bg_src
                            _weight_polar(dsum, wc * wo * ws * bg_src, dwp, dwpi, dwpk, dinc,
                                          ipar, ninc, source, Fdet, Sdet, td, thickstep, odet, cv)
                        continue     # a step in the image: no derivative
                    # this sub-path's weight (1 unless the sum is corrected or
                    # the sources are weighed)
                    w = wc * wo * wp * ws
                    cF = g * C * polar * omega * (1.0 if corrected else capture)    # dI/dT
                    cFw = cF * w
                    sT = 0.0     # the sub-path's sum of terms
                    gx = 0.0     # sum_j dT/dh a_j + dT/dk b_j + dT/dl c_j (d/dS)
                    gy = 0.0
                    gz = 0.0
                    gs = 0.0     # d/ds of the wavelength scale: dh/ds = -h
                    gNa = 0.0
                    gNb = 0.0
                    gNc = 0.0
                    if fast and not deriv:
                        _square_values(S, cells, work, Na, Nb, Nc)
                        sT = _square_sum(S, cells, work, Fhkl, hkls, hmin, hmax, kmin, kmax,
                                         lmin, lmax, default_F)
                    elif fast:
                        _jac_terms(S, pcells, work, Na, Nb, Nc, cna, cnb, cnc, Fhkl, hkls, hmin,
                                   hmax, kmin, kmax, lmin, lmax, default_F)
                        sT, gx, gy, gz, gNa, gNb, gNc = _jac_sums(pcells, work, ncell)
                        if w != 1.0:
                            gx *= w
                            gy *= w
                            gz *= w
                            gNa *= w
                            gNb *= w
                            gNc *= w
                        if use_mos:
                            for m in range(nrot):
                                dsum[dpar[m]] += w * _jac_mosaic(S, dcells, 9 * m, work, ncell)
                        if use_rot:
                            ga0, ga1, ga2, gb0, gb1, gb2, gc0, gc1, gc2 = _jac_cell_grad(
                                S, rot, work, ncell)
                            dsum[P_A] += w * ga0
                            dsum[P_A + 1] += w * ga1
                            dsum[P_A + 2] += w * ga2
                            dsum[P_B] += w * gb0
                            dsum[P_B + 1] += w * gb1
                            dsum[P_B + 2] += w * gb2
                            dsum[P_C] += w * gc0
                            dsum[P_C + 1] += w * gc1
                            dsum[P_C + 2] += w * gc2
                        else:
                            # per-cell sums for the unrotated cell (elementwise: vectorises)
                            for j in range(ncell):
                                th = cFw * work[J_TH, j]
                                tk = cFw * work[J_TK, j]
                                tl = cFw * work[J_TL, j]
                                cacc[ch, 0, j] += th * S[0]
                                cacc[ch, 1, j] += th * S[1]
                                cacc[ch, 2, j] += th * S[2]
                                cacc[ch, 3, j] += tk * S[0]
                                cacc[ch, 4, j] += tk * S[1]
                                cacc[ch, 5, j] += tk * S[2]
                                cacc[ch, 6, j] += tl * S[0]
                                cacc[ch, 7, j] += tl * S[1]
                                cacc[ch, 8, j] += tl * S[2]
                    if fast:
                        # h_j = a_j . S exactly, so sum_j (dT/dh h + ...) = S . (gx, gy, gz)
                        gs = -(gx * S[0] + gy * S[1] + gz * S[2])
                        if want_F:
                            for j in range(ncell):
                                h, k, l = K._hkl(cells, v1, j, S[0], S[1], S[2])
                                h0 = np.int64(np.ceil(h - 0.5))
                                k0 = np.int64(np.ceil(k - 0.5))
                                l0 = np.int64(np.ceil(l - 0.5))
                                if _nearest_inside(hkls, hmin, hmax, kmin, kmax, lmin, lmax,
                                                   h0, k0, l0):
                                    Fl = work[J_FL, j]
                                    Fc = nearest_F(Fhkl, hkls, hmin, hmax, kmin, kmax, lmin, lmax,
                                                   h0, k0, l0, default_F)
                                    gF[ch, h0 - hmin, k0 - kmin, l0 - lmin] += cFw * 2.0 * Fc * Fl * Fl
                    for j in range(ncell if not fast else 0):
                        h, k, l = K._hkl(cells, v1, j, S[0], S[1], S[2])
                        h0 = np.int64(np.ceil(h - 0.5))
                        k0 = np.int64(np.ceil(k - 0.5))
                        l0 = np.int64(np.ceil(l - 0.5))
                        dFh = dFk = dFl = dNa = dNb = dNc = 0.0
                        if deriv:
                            Fl, dFh, dFk, dFl, dNa, dNb, dNc = lattice_factor_grad(
                                shape, h, k, l, h0, k0, l0, Na, Nb, Nc, fudge, spot, astar, bstar,
                                cstar, reduced)
                        else:
                            Fl = lattice_factor(shape, h, k, l, h0, k0, l0, Na, Nb, Nc, fudge,
                                                spot, astar, bstar, cstar, reduced)[0]
                        ch_ = ck = cl = 0.0     # nearest neighbour: flat in h, k, l
                        # the default mode's range (autodiff refuses -c_parity)
                        if interp and interp_in_range(h, k, l, hmin, hmax, kmin, kmax, lmin, lmax,
                                                      False):
                            Fc = tricubic_F(Fhkl, hmin, kmin, lmin, h, k, l)
                            if deriv or want_F:
                                ch_, ck, cl = tricubic_F_grad(Fhkl, hmin, kmin, lmin, h, k, l, gF,
                                                              ch, cFw * 2.0 * Fc * Fl * Fl, want_F)
                        else:
                            Fc = nearest_F(Fhkl, hkls, hmin, hmax, kmin, kmax, lmin, lmax,
                                           h0, k0, l0, default_F)
                            if want_F and _nearest_inside(hkls, hmin, hmax, kmin, kmax, lmin, lmax,
                                                          h0, k0, l0):
                                gF[ch, h0 - hmin, k0 - kmin, l0 - lmin] += cFw * 2.0 * Fc * Fl * Fl
                        sT += Fc * Fc * Fl * Fl
                        if not deriv:
                            continue
                        tFl = 2.0 * Fc * Fc * Fl * w
                        tFc = 2.0 * Fc * Fl * Fl * w
                        Th = tFl * dFh + tFc * ch_
                        Tk = tFl * dFk + tFc * ck
                        Tl = tFl * dFl + tFc * cl
                        gx += Th * cells[1, 0, j] + Tk * cells[1, 3, j] + Tl * cells[1, 6, j]
                        gy += Th * cells[1, 1, j] + Tk * cells[1, 4, j] + Tl * cells[1, 7, j]
                        gz += Th * cells[1, 2, j] + Tk * cells[1, 5, j] + Tl * cells[1, 8, j]
                        gs -= Th * h + Tk * k + Tl * l
                        gNa += tFl * dNa
                        gNb += tFl * dNb
                        gNc += tFl * dNc
                        if use_mos:
                            for m in range(nrot):
                                dsum[dpar[m]] += _mosaic_term(dcells, 9 * m, j, S[0], S[1], S[2],
                                                              Th, Tk, Tl)
                        if shape == SHAPE_GAUSS:   # F also depends on astar, bstar, cstar
                            dA, dB, dC = lattice_factor_star_grad(
                                shape, h, k, l, h0, k0, l0, Na, Nb, Nc, fudge, spot, astar, bstar,
                                cstar)
                            for m in range(3):
                                dsum[P_ASTAR + m] += tFl * dA[m]
                                dsum[P_BSTAR + m] += tFl * dB[m]
                                dsum[P_CSTAR + m] += tFl * dC[m]
                        if use_rot:
                            for m in range(3):
                                u = (rot[3 * m, j] * S[0] + rot[3 * m + 1, j] * S[1]
                                     + rot[3 * m + 2, j] * S[2])
                                dsum[P_A + m] += Th * u
                                dsum[P_B + m] += Tk * u
                                dsum[P_C + m] += Tl * u
                        else:
                            cacc[ch, 0, j] += cF * Th * S[0]
                            cacc[ch, 1, j] += cF * Th * S[1]
                            cacc[ch, 2, j] += cF * Th * S[2]
                            cacc[ch, 3, j] += cF * Tk * S[0]
                            cacc[ch, 4, j] += cF * Tk * S[1]
                            cacc[ch, 5, j] += cF * Tk * S[2]
                            cacc[ch, 6, j] += cF * Tl * S[0]
                            cacc[ch, 7, j] += cF * Tl * S[1]
                            cacc[ch, 8, j] += cF * Tl * S[2]
                    sumT += w * sT
                    if corrected and wgrad:
                        Xs += wp * ws * sT
                        if os_polar:
                            Xs += wp * ws * bg_src
                            _weight_polar(dsum, wc * wo * ws * (sT + bg_src), dwp, dwpi, dwpk, dinc,
                                          ipar, ninc, source, Fdet, Sdet, td, thickstep, odet, cv)
                    if deriv:
                        dsum[P_NA] += gNa
                        dsum[P_NB] += gNb
                        dsum[P_NC] += gNc
                        # S = (pos/|pos| - inc)/lam: dS/dpos = (1 - d d^T)/(|pos| lam)
                        gd = gx * d[0] + gy * d[1] + gz * d[2]
                        r = 1.0 / (R * lam_s)
                        # pos = pix0 + Fdet fdet + Sdet sdet + Odet odet: d/dfdet = Fdet d/dpos
                        _add_pos(dsum, 1.0, ((gx - gd * d[0]) * r, (gy - gd * d[1]) * r,
                                             (gz - gd * d[2]) * r), Fdet, Sdet, td, thickstep,
                                 odet, cv)
                        dsum[P_LAM] += gs
                        # the source's incident vector and wavelength
                        for q in range(ninc):
                            dsum[ipar[q]] += _source_term(dinc, q, source, gx, gy, gz, gs, lam_s)
                if corrected and wgrad:
                    if not os_polar:
                        Xs += bg_sub
                    if os_omega and geo:
                        # the sub-pixel's solid angle weighs its sub-paths and background
                        _add_pos(dsum, wc * Xs, dwo, Fdet, Sdet, td, thickstep, odet, cv)
                        dsum[P_CLOSE] += wc * Xs * dwoc
                        dsum[P_TSTEP] += wc * Xs * dwoc * td
                    if os_thick:
                        if geo:
                            _add_pos(dsum, wo * Xs, dcap, Fdet, Sdet, td, thickstep, odet, cv)
                            _add_capture(dsum, wo * Xs, dcapo, dcapt, dcapm)
                    else:
                        LX += wo * Xs
        if corrected:
            if geo and not os_thick:
                # the layer's capture (its first sub-pixel's) weighs all of it
                _add_pos(dsum, LX, dcapL, F_L, S_L, td, thickstep, odet, cv)
                _add_capture(dsum, LX, dcapLo, dcapLt, dcapLm)
            bg_w = layer_bg / (os * os * (nsrc if os_polar else 1))
            capsum += bg_w if os_thick else bg_w * capL
    if corrected:
        # (every sub-path cut by -dmin: the water's share still, #24)
        total = sumT + I_bg * capsum
        capf = 1.0
    else:
        total = I_bg + sumT
        capf = capture      # the forward's capture factor (1 without a sensor)
    po = polar * omega * capf
    gC = g * C
    for p in range(N_PAR):
        dsum[p] = gC * po * dsum[p]
    gT = gC * total
    if SENSOR == 0:
        t_po = t_om = 0.0       # (one layer: a constant for LLVM)
    _add_pos(dsum, gT * omega * capf, dP, F_po, S_po, t_po, thickstep, odet, cv)
    _add_pos(dsum, gT * polar * capf, dOm, F_om, S_om, t_om, thickstep, odet, cv)
    if not corrected and geo:
        # one layer: the capture at the sub-pixel where the forward took it
        _add_pos(dsum, gT * polar * omega, dcap, F_c, S_c, half, thickstep, odet, cv)
        _add_capture(dsum, gT * polar * omega, dcapo, dcapt, dcapm)
    dsum[P_CLOSE] += gT * polar * capf * dOmc
    dsum[P_KAHN] += gT * omega * capf * dPk
    for q in range(ninc):
        dsum[ipar[q]] += gT * omega * capf * _incident_term(dinc, q, src_po, *dPi)
    # test = C P omega (I_bg + sum): only C = r_e^2 fluence ... carries the fluence
    # (the default mode's I_bg does not: docs/quirks.md #14; autodiff refuses -c_parity)
    dsum[P_FLU] += gC * po * total
    return C * po * total


#: 0 in pixel_grad (and the kernels that call it), 1 in the copies for runs
#: with a sensor or an -oversample_* switch (uses_sensor).  An int, not a bool:
#: numba's constants keyed by value took the 1s of a shape tuple, (1, 1, 1, 1),
#: for True in the copy (an LLVM type error)
SENSOR = 0
#: the pixel function of runs without a sensor or switch (SENSOR False) ...
pixel_grad = njit(cache=True, _nrt=False, error_model="numpy",
                  fastmath={"reassoc", "contract"})(K._variant(_pixel_grad, "pixel_grad"))
#: ... and of runs with them: the same body, compiled when such a run first needs it
_pixel_grad_sensor = njit(cache=True, _nrt=False, error_model="numpy",
                          fastmath={"reassoc", "contract"})(
    K._variant(_pixel_grad, "_pixel_grad_sensor", SENSOR=1))


@njit(cache=True, fastmath=False, error_model="numpy")
def uses_sensor(iopt, fopt):
    """Whether a run needs the sensor copies of the kernels (backward_sensor,
    forward_jac_sensor): sensor layers, a sensor thickness, an
    -oversample_thick/_polar/_omega switch, or a curved detector (the other
    code that the plain copies leave out)."""
    return (iopt[K.I_THICKSTEPS] > 1 or iopt[K.I_OS_THICK] != 0 or iopt[K.I_OS_POLAR] != 0
            or iopt[K.I_OS_OMEGA] != 0 or fopt[K.F_THICK] != 0.0 or iopt[K.I_CURVED] != 0)


def _backward(active, box, g, iopt, fopt, vecs, incident, lam, cells, Fhkl, want, nchunk,
              gpar, gF, cacc, val, dinc, ipar):
    """Adjoint pass over every active pixel with g != 0.

    want: bit mask of W_F, W_N, W_GEO (what to differentiate; the rest of gpar
    is left 0, except P_FLU).  gpar (S, N_PAR): per-row sums of g dI/dtheta
    (the host adds the rows; rows P_A..P_C + 9 are left 0: see cacc).  gF
    (nchunk, *Fhkl.shape) with want & W_F (else any 4-d shape): one F-grid
    gradient buffer per chunk of the box's rows (box: render64's).  cacc
    (nchunk, 9, ncell): per-chunk per-cell sums (see pixel_grad).  val
    (S, F): the pixel values this pass saw.  dinc, ipar: the per-source
    entries (see pixel_grad; width 0 for none).  ``backward`` serves runs
    without a sensor or switch (uses_sensor) and refuses the others (a
    ValueError), which ``backward_sensor`` serves."""
    if uses_sensor(iopt, fopt) != (SENSOR != 0):
        raise ValueError("adjoint: a run with a sensor or an -oversample_* switch needs the "
                         "_sensor kernels, one without them the plain ones (uses_sensor)")
    r0, r1, c0, c1 = box[0], box[1], box[2], box[3]
    per = (r1 - r0 + nchunk - 1) // nchunk
    cnear = _near_table(fopt)
    pcells = K.lattice_cells(iopt, cells)
    for ch in prange(nchunk):
        work = np.empty((N_JWORK, pcells.shape[2]))
        dsum = np.empty(N_PAR)
        no_rot = np.empty((9, 0))
        no_mos = np.empty((9, 0))
        no_dpar = np.empty(0, dtype=np.int64)
        c = np.int64(ch)
        for s in range(r0 + c * per, min(r1, r0 + (c + 1) * per)):
            row = np.int64(s)
            for f in range(c0, c1):
                if active[s, f] == 0 or g[s, f] == 0.0:
                    continue
                val[s, f] = PIXEL_GRAD(row, f, g[s, f], iopt, fopt, vecs, incident, lam, cells,
                                       pcells, Fhkl, want, gF, c, cacc, no_rot, no_mos, no_dpar,
                                       dinc, ipar, cnear, work, dsum)
                for p in range(N_PAR):
                    gpar[s, p] += dsum[p]


def _forward_jac(active, box, rowstart, iopt, fopt, vecs, incident, lam, cells, Fhkl, want, rot,
                 dcells, dpar, dinc, ipar, cols, jac, out):
    """Forward pass that also keeps each pixel's Jacobian: out (S, F) the pixel
    values (float64), jac (n_active, len(cols)) the entries cols of dI/dtheta
    (the theta indices that can be nonzero for this run) of every active pixel
    in raster order (row s starts at jac row rowstart[s]), the unrotated cell's
    columns included (rot: (9, ncell), see pixel_grad), and the per-cell
    rotation entries dpar (the mosaic spread's P_MOS, the spindle's P_SPIN..)
    with dcells (9 len(dpar), ncell) (else width 0), and the per-source
    entries ipar (P_BEAM..P_DISP) with dinc (4 len(ipar), nsrc).  The backward of any
    parameter but F_hkl is then jac^T g (contract).  want: W_N | W_GEO bits
    (W_F is ignored: the F grid's gradient needs g).  box: render64's.
    ``forward_jac`` and ``forward_jac_sensor``: as backward's two copies."""
    if uses_sensor(iopt, fopt) != (SENSOR != 0):
        raise ValueError("adjoint: a run with a sensor or an -oversample_* switch needs the "
                         "_sensor kernels, one without them the plain ones (uses_sensor)")
    r0, r1, c0, c1 = box[0], box[1], box[2], box[3]
    no_gF = np.zeros((1, 1, 1, 1))
    no_cacc = np.zeros((1, 9, 1))
    w = want & ~W_F
    zero = np.int64(0)
    ncol = cols.shape[0]
    cnear = _near_table(fopt)
    pcells = K.lattice_cells(iopt, cells)
    for ii in prange(r1 - r0):
        s = r0 + ii
        work = np.empty((N_JWORK, pcells.shape[2]))
        dsum = np.empty(N_PAR)
        row = np.int64(s)
        i = rowstart[s]
        for f in range(c0, c1):
            if active[s, f] == 0:
                continue
            out[s, f] = PIXEL_GRAD(row, f, 1.0, iopt, fopt, vecs, incident, lam, cells, pcells,
                                   Fhkl, w, no_gF, zero, no_cacc, rot, dcells, dpar, dinc, ipar,
                                   cnear, work, dsum)
            for q in range(ncol):
                jac[i, q] = dsum[cols[q]]
            i += 1


#: the pixel function the plain kernels call (their _sensor copies call
#: _pixel_grad_sensor): each pair is one body compiled twice (cpu._variant)
PIXEL_GRAD = pixel_grad
_PAR = dict(parallel=True, cache=True, fastmath=False, error_model="numpy")
backward = njit(**_PAR)(K._variant(_backward, "backward"))
backward_sensor = njit(**_PAR)(K._variant(_backward, "backward_sensor", SENSOR=1,
                                          PIXEL_GRAD=_pixel_grad_sensor))
forward_jac = njit(**_PAR)(K._variant(_forward_jac, "forward_jac"))
forward_jac_sensor = njit(**_PAR)(K._variant(_forward_jac, "forward_jac_sensor", SENSOR=1,
                                             PIXEL_GRAD=_pixel_grad_sensor))


def kernels_for(iopt, fopt):
    """(forward_jac, backward) of a run: the sensor copies where uses_sensor."""
    if uses_sensor(iopt, fopt):
        return forward_jac_sensor, backward_sensor
    return forward_jac, backward


@njit(parallel=True, cache=True, fastmath=False, error_model="numpy")
def contract(active, box, g, rowstart, jac, nchunk, out):
    """out[c] (jac's width) = sum over the active pixels of chunk c of the
    box's rows (box: render64's) of g[s, f] jac[i] (i: the pixel's jac row,
    see forward_jac).  A fixed number of row chunks, so the host's sum over c
    does not depend on the threads; reads g in place (no gathered copy of a
    large, mostly inactive image)."""
    r0, r1, c0, c1 = box[0], box[1], box[2], box[3]
    per = (r1 - r0 + nchunk - 1) // nchunk
    for ch in prange(nchunk):
        c = np.int64(ch)
        for s in range(r0 + c * per, min(r1, r0 + (c + 1) * per)):
            i = rowstart[s]
            for f in range(c0, c1):
                if active[s, f] == 0:
                    continue
                gi = g[s, f]
                if gi != 0.0:
                    for p in range(jac.shape[1]):
                        out[c, p] += gi * jac[i, p]
                i += 1
