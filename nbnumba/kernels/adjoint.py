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

Every value (lattice factor, structure factor, polarization, solid angle) is
obtained by calling the formula in nbnumba.physics that the forward kernel
calls; their derivatives are the *_grad functions there.

Supported: the default mode (not -c_parity) with capture fraction 1 (no
sensor thickness), a flat detector and no -oversample_thick/_polar/_omega;
nbnumba.autodiff checks this before calling.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..physics import (SHAPE_GAUSS, SINCG_NEAR, interp_in_range, lattice_factor_grad,
                       lattice_factor_star_grad, nearest_F, sincg_reduced, sincg_reduced_grad,
                       sincg_reduced_grad_far,
                       polarization_factor_grad, solid_angle, solid_angle_grad,
                       tricubic_F, tricubic_F_grad, unitize)
from . import cpu as K

# ---- kernel-level parameters theta (gradient vector layout) -----------------
# a, b, c: unrotated real-space cell vectors (m); cell j uses R_j a, etc.
# PIX0: lab position of pixel (0, 0)'s corner (m); CLOSE: close distance (m),
# used by the solid angle; LAM: common scale s of every source wavelength
# (lambda_i -> s lambda_i, at s = 1); NA..NC: crystal size in cells;
# FLU: log fluence (the image and the water background scale with fluence).
# ASTAR..CSTAR: the unrotated reciprocal vectors (1/A) of the gauss shape.
# theta[:N_HOST] is what the host derives from the cell and the detector.
P_A, P_B, P_C, P_PIX0, P_CLOSE = 0, 3, 6, 9, 12
P_ASTAR, P_BSTAR, P_CSTAR, N_HOST = 13, 16, 19, 22
P_LAM, P_NA, P_NB, P_NC, P_FLU = 22, 23, 24, 25, 26
N_PAR = 27


@njit(cache=True, inline="always", error_model="numpy")
def _v(vecs, row):
    """Row ``row`` of the kernel's vector table as a 3-tuple (see kernels.cpu's V_* rows)."""
    return (vecs[row, 0], vecs[row, 1], vecs[row, 2])


@njit(parallel=True, cache=True, fastmath=False, error_model="numpy")
def render64(active, iopt, fopt, vecs, incident, lam, cells, Fhkl, out):
    """Fill out (float64, (S, F)) with the default-mode pixel values."""
    S, F = active.shape
    tbuf = np.zeros((1, K.TRACE_COLS))
    for s in prange(S):
        tpos = np.zeros(1, dtype=np.int64)
        info = np.zeros(3, dtype=np.int64)
        work = np.empty((K.N_WORK, cells.shape[2]), dtype=cells.dtype)
        # computed False / -1, not literals: literals would make numba compile another
        # copy of pixel_value beside the image kernel's (tests/test_compile_once.py)
        # (and a signed row: prange's index is unsigned)
        off = tbuf.shape[0] == 0
        no_latch = np.int64(-1)
        row = np.int64(s)
        for f in range(F):
            if active[s, f] == 0:
                continue
            val, om = K.pixel_value(row, f, off, no_latch, iopt, fopt, vecs, incident, lam, cells,
                                    Fhkl, work, off, tbuf, tpos, info)
            out[s, f] = val


@njit(cache=True, fastmath=False, error_model="numpy")
def _nearest_inside(hkls, hmin, hmax, kmin, kmax, lmin, lmax, h0, k0, l0):
    """Does nearest_F read the grid (rather than default_F) at (h0, k0, l0)?"""
    return (hkls > 0 and h0 >= hmin and h0 <= hmax and k0 >= kmin and k0 <= kmax
            and l0 >= lmin and l0 <= lmax)


# ---- per-thread work rows for the square / reduced fast path ---------------
A_H, A_K, A_L, A_FA, A_FB, A_FC, A_GA, A_GB, A_GC, A_NA, A_NB, A_NC, A_TH, A_TK, A_TL = range(15)
N_AWORK = 15


@njit(cache=True, inline="always", error_model="numpy")
def _square_pass(S, cells, work, Na, Nb, Nc):
    """Pass 1 of the square/reduced fast path over every (phi, mosaic) cell:
    indices, per-axis lattice factors (sincg_reduced, the forward's values) and
    their derivatives; branch-free, so it vectorises like the forward's
    lattice pass.  Then the few cells near a peak get the accurate derivative."""
    ncell = cells.shape[2]
    S0, S1, S2 = S
    da = Na > 1
    db = Nb > 1
    dc = Nc > 1
    for j in range(ncell):
        h = cells[1, 0, j] * S0 + cells[1, 1, j] * S1 + cells[1, 2, j] * S2
        k = cells[1, 3, j] * S0 + cells[1, 4, j] * S1 + cells[1, 5, j] * S2
        l = cells[1, 6, j] * S0 + cells[1, 7, j] * S1 + cells[1, 8, j] * S2
        work[A_H, j] = h
        work[A_K, j] = k
        work[A_L, j] = l
        fa = sincg_reduced(h, Na, False)
        fb = sincg_reduced(k, Nb, False)
        fc = sincg_reduced(l, Nc, False)
        work[A_FA, j] = fa if da else 1.0
        work[A_FB, j] = fb if db else 1.0
        work[A_FC, j] = fc if dc else 1.0
        ga, gNa = sincg_reduced_grad_far(h, Na, fa)
        gb, gNb = sincg_reduced_grad_far(k, Nb, fb)
        gc, gNc = sincg_reduced_grad_far(l, Nc, fc)
        work[A_GA, j] = ga if da else 0.0
        work[A_GB, j] = gb if db else 0.0
        work[A_GC, j] = gc if dc else 0.0
        work[A_NA, j] = gNa if da else 0.0
        work[A_NB, j] = gNb if db else 0.0
        work[A_NC, j] = gNc if dc else 0.0
    for j in range(ncell):
        for ax in range(3):
            N = Na if ax == 0 else (Nb if ax == 1 else Nc)
            x = work[A_H + ax, j]
            dd = N * (x - np.rint(x))
            if N > 1 and dd != 0.0 and abs(dd) < SINCG_NEAR:
                work[A_GA + ax, j] = sincg_reduced_grad(x, N)[0]


@njit(cache=True, inline="always", error_model="numpy")
def _square_accumulate(work, cells, Fhkl, hkls, hmin, hmax, kmin, kmax, lmin, lmax, default_F,
                       cF):
    """Pass 2 of the fast path (nearest-neighbour F): the sub-path's sum of
    F_cell^2 F_latt^2 and its derivatives, one branch-free loop.  Returns
    (sum, d/dS . (the pixel-position gradient before projection: gx, gy, gz),
    d/dNa, d/dNb, d/dNc); stores cF dT/dh, dT/dk, dT/dl per cell in work."""
    ncell = cells.shape[2]
    sumT = gx = gy = gz = gNa = gNb = gNc = 0.0
    for j in range(ncell):
        fa, fb, fc = work[A_FA, j], work[A_FB, j], work[A_FC, j]
        Fl = ((1.0 * fa) * fb) * fc
        h0 = np.int64(np.ceil(work[A_H, j] - 0.5))
        k0 = np.int64(np.ceil(work[A_K, j] - 0.5))
        l0 = np.int64(np.ceil(work[A_L, j] - 0.5))
        Fc = nearest_F(Fhkl, hkls, hmin, hmax, kmin, kmax, lmin, lmax, h0, k0, l0, default_F)
        FcFl = Fc * Fl
        sumT += FcFl * FcFl
        tFl = 2.0 * Fc * FcFl          # dT/dF_latt
        Th = tFl * work[A_GA, j] * fb * fc
        Tk = tFl * fa * work[A_GB, j] * fc
        Tl = tFl * fa * fb * work[A_GC, j]
        gx += Th * cells[1, 0, j] + Tk * cells[1, 3, j] + Tl * cells[1, 6, j]
        gy += Th * cells[1, 1, j] + Tk * cells[1, 4, j] + Tl * cells[1, 7, j]
        gz += Th * cells[1, 2, j] + Tk * cells[1, 5, j] + Tl * cells[1, 8, j]
        gNa += tFl * work[A_NA, j] * fb * fc
        gNb += tFl * fa * work[A_NB, j] * fc
        gNc += tFl * fa * fb * work[A_NC, j]
        work[A_TH, j] = cF * Th
        work[A_TK, j] = cF * Tk
        work[A_TL, j] = cF * Tl
    return sumT, gx, gy, gz, gNa, gNb, gNc


# reassociation lets LLVM vectorise the per-cell sums; the order is fixed at
# compile time, so results stay independent of the thread count
@njit(cache=True, error_model="numpy", fastmath={"reassoc", "contract"})
def pixel_grad(spixel, fpixel, g, iopt, fopt, vecs, incident, lam, cells, Fhkl,
               want_F, gpar, gF, cacc, work):
    """Add g * dI/dtheta of pixel (spixel, fpixel) to gpar (N_PAR,) and, with
    want_F, g * dI/dFhkl to gF (Fhkl's shape).  Returns the pixel's value
    (equal to the forward kernel's up to rounding).

    The unrotated cell vectors enter through h_j = (R_j a) . S = a . (R_j^T S):
    instead of rotating per sub-path, cacc (9, ncell) collects
    sum g dI/dh_j S (rows 0-2; k: 3-5, l: 6-8) per cell, and the host applies
    R_j^T once (autodiff._Run.theta_grad).  work: (N_AWORK, ncell) scratch."""
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
    fdet, sdet, pix0 = _v(vecs, K.V_FDET), _v(vecs, K.V_SDET), _v(vecs, K.V_PIX0)
    polar_axis = _v(vecs, K.V_POLAR)
    astar, bstar, cstar = _v(vecs, K.V_ASTAR), _v(vecs, K.V_BSTAR), _v(vecs, K.V_CSTAR)
    C = fopt[K.F_SCALE] / fopt[K.F_STEPS]
    fast = shape == 0 and reduced == 1 and not interp

    # d(sum of terms)/dtheta for this pixel, before the per-pixel factors
    dsum = np.zeros(N_PAR)
    sumT = 0.0
    # polarization and solid angle: once per pixel, at its first sub-pixel (and
    # first source that passes -dmin), as the forward kernel computes them
    have_polar = iopt[K.I_NOPOLAR] != 0
    polar = 1.0 if have_polar else 0.0
    dP = (0.0, 0.0, 0.0)
    omega = 0.0
    dOm = (0.0, 0.0, 0.0)
    dOmc = 0.0
    for subS in range(os):
        for subF in range(os):
            Fdet = subpixel * (fpixel * os + subF) + subpixel / 2.0
            Sdet = subpixel * (spixel * os + subS) + subpixel / 2.0
            pos = (Fdet * fdet[0] + Sdet * sdet[0] + pix0[0],
                   Fdet * fdet[1] + Sdet * sdet[1] + pix0[1],
                   Fdet * fdet[2] + Sdet * sdet[2] + pix0[2])
            d, R = unitize(pos)
            if omega == 0.0:
                omega = solid_angle(pixel, R, close, point)
                dOm, dOmc = solid_angle_grad(pixel, pos, close, point)
            for source in range(nsrc):
                inc = (incident[source, 0], incident[source, 1], incident[source, 2])
                lam_s = lam[source]
                S = ((d[0] - inc[0]) / lam_s, (d[1] - inc[1]) / lam_s, (d[2] - inc[2]) / lam_s)
                stol = 0.5 * np.sqrt(S[0] * S[0] + S[1] * S[1] + S[2] * S[2])
                if dmin > 0.0 and stol > 0.0:
                    if dmin > 0.5 / stol:
                        continue     # a step in the image: no derivative
                if not have_polar:
                    polar, dP = polarization_factor_grad(kahn, inc, pos, polar_axis)
                    have_polar = True
                cF = g * C * polar * omega    # dI/dT
                gx = 0.0     # sum_j dT/dh a_j + dT/dk b_j + dT/dl c_j (d/dS)
                gy = 0.0
                gz = 0.0
                gs = 0.0     # d/ds of the wavelength scale: dh/ds = -h
                gNa = 0.0
                gNb = 0.0
                gNc = 0.0
                if fast:
                    _square_pass(S, cells, work, Na, Nb, Nc)
                    sT, gx, gy, gz, gNa, gNb, gNc = _square_accumulate(
                        work, cells, Fhkl, hkls, hmin, hmax, kmin, kmax, lmin, lmax, default_F, cF)
                    sumT += sT
                    # h_j = a_j . S exactly, so sum_j (dT/dh h + ...) = S . (gx, gy, gz)
                    gs = -(gx * S[0] + gy * S[1] + gz * S[2])
                    if want_F:
                        for j in range(ncell):
                            h0 = np.int64(np.ceil(work[A_H, j] - 0.5))
                            k0 = np.int64(np.ceil(work[A_K, j] - 0.5))
                            l0 = np.int64(np.ceil(work[A_L, j] - 0.5))
                            if _nearest_inside(hkls, hmin, hmax, kmin, kmax, lmin, lmax,
                                               h0, k0, l0):
                                Fl = ((1.0 * work[A_FA, j]) * work[A_FB, j]) * work[A_FC, j]
                                Fc = nearest_F(Fhkl, hkls, hmin, hmax, kmin, kmax, lmin, lmax,
                                               h0, k0, l0, default_F)
                                gF[h0 - hmin, k0 - kmin, l0 - lmin] += cF * 2.0 * Fc * Fl * Fl
                for j in range(ncell if not fast else 0):
                    h = cells[1, 0, j] * S[0] + cells[1, 1, j] * S[1] + cells[1, 2, j] * S[2]
                    k = cells[1, 3, j] * S[0] + cells[1, 4, j] * S[1] + cells[1, 5, j] * S[2]
                    l = cells[1, 6, j] * S[0] + cells[1, 7, j] * S[1] + cells[1, 8, j] * S[2]
                    h0 = np.int64(np.ceil(h - 0.5))
                    k0 = np.int64(np.ceil(k - 0.5))
                    l0 = np.int64(np.ceil(l - 0.5))
                    Fl, dFh, dFk, dFl, dNa, dNb, dNc = lattice_factor_grad(
                        shape, h, k, l, h0, k0, l0, Na, Nb, Nc, fudge, astar, bstar, cstar, reduced)
                    ch = ck = cl = 0.0     # nearest neighbour: flat in h, k, l
                    if interp and interp_in_range(h, k, l, hmin, hmax, kmin, kmax, lmin, lmax):
                        Fc = tricubic_F(Fhkl, hmin, kmin, lmin, h, k, l)
                        ch, ck, cl = tricubic_F_grad(Fhkl, hmin, kmin, lmin, h, k, l, gF,
                                                     cF * 2.0 * Fc * Fl * Fl, want_F)
                    else:
                        Fc = nearest_F(Fhkl, hkls, hmin, hmax, kmin, kmax, lmin, lmax,
                                       h0, k0, l0, default_F)
                        if want_F and _nearest_inside(hkls, hmin, hmax, kmin, kmax, lmin, lmax,
                                                      h0, k0, l0):
                            gF[h0 - hmin, k0 - kmin, l0 - lmin] += cF * 2.0 * Fc * Fl * Fl
                    sumT += Fc * Fc * Fl * Fl
                    tFl = 2.0 * Fc * Fc * Fl
                    tFc = 2.0 * Fc * Fl * Fl
                    Th = tFl * dFh + tFc * ch
                    Tk = tFl * dFk + tFc * ck
                    Tl = tFl * dFl + tFc * cl
                    gx += Th * cells[1, 0, j] + Tk * cells[1, 3, j] + Tl * cells[1, 6, j]
                    gy += Th * cells[1, 1, j] + Tk * cells[1, 4, j] + Tl * cells[1, 7, j]
                    gz += Th * cells[1, 2, j] + Tk * cells[1, 5, j] + Tl * cells[1, 8, j]
                    gs -= Th * h + Tk * k + Tl * l
                    gNa += tFl * dNa
                    gNb += tFl * dNb
                    gNc += tFl * dNc
                    if shape == SHAPE_GAUSS:   # F also depends on astar, bstar, cstar
                        q, v = lattice_factor_star_grad(shape, h, k, l, h0, k0, l0, Na, Nb, Nc,
                                                        fudge, astar, bstar, cstar)
                        for m in range(3):
                            dsum[P_ASTAR + m] += tFl * q * (h - h0) * v[m]
                            dsum[P_BSTAR + m] += tFl * q * (k - k0) * v[m]
                            dsum[P_CSTAR + m] += tFl * q * (l - l0) * v[m]
                    work[A_TH, j] = cF * Th
                    work[A_TK, j] = cF * Tk
                    work[A_TL, j] = cF * Tl
                # per-cell sums for the unrotated cell (elementwise: vectorises)
                for j in range(ncell):
                    th, tk, tl = work[A_TH, j], work[A_TK, j], work[A_TL, j]
                    cacc[0, j] += th * S[0]
                    cacc[1, j] += th * S[1]
                    cacc[2, j] += th * S[2]
                    cacc[3, j] += tk * S[0]
                    cacc[4, j] += tk * S[1]
                    cacc[5, j] += tk * S[2]
                    cacc[6, j] += tl * S[0]
                    cacc[7, j] += tl * S[1]
                    cacc[8, j] += tl * S[2]
                dsum[P_NA] += gNa
                dsum[P_NB] += gNb
                dsum[P_NC] += gNc
                # S = (pos/|pos| - inc)/lam: dS/dpos = (1 - d d^T)/(|pos| lam)
                gd = gx * d[0] + gy * d[1] + gz * d[2]
                r = 1.0 / (R * lam_s)
                dsum[P_PIX0] += (gx - gd * d[0]) * r
                dsum[P_PIX0 + 1] += (gy - gd * d[1]) * r
                dsum[P_PIX0 + 2] += (gz - gd * d[2]) * r
                dsum[P_LAM] += gs
    total = I_bg + sumT
    po = polar * omega
    gC = g * C
    for p in range(N_PAR):
        gpar[p] += gC * po * dsum[p]
    for i in range(3):
        gpar[P_PIX0 + i] += gC * total * (dP[i] * omega + polar * dOm[i])
    gpar[P_CLOSE] += gC * total * polar * dOmc
    # test = C P omega (I_bg + sum): only C = r_e^2 fluence ... carries the fluence
    # (the default mode's I_bg does not: docs/quirks.md #14; autodiff refuses -c_parity)
    gpar[P_FLU] += gC * po * total
    return C * po * total


@njit(parallel=True, cache=True, fastmath=False, error_model="numpy")
def backward(active, g, iopt, fopt, vecs, incident, lam, cells, Fhkl, want_F, nchunk,
             gpar, gF, cacc, val):
    """Adjoint pass over every active pixel with g != 0.

    gpar (S, N_PAR): per-row sums of g dI/dtheta (the host adds the rows;
    rows P_A..P_C + 9 are left 0: see cacc).  gF (nchunk, *Fhkl.shape) with
    want_F (else any shape): one F-grid gradient buffer per chunk of rows.
    cacc (nchunk, 9, ncell): per-chunk per-cell sums (see pixel_grad).
    val (S, F): the pixel values this pass saw."""
    S, F = active.shape
    per = (S + nchunk - 1) // nchunk
    for ch in prange(nchunk):
        work = np.empty((N_AWORK, cells.shape[2]))
        for s in range(ch * per, min(S, (ch + 1) * per)):
            for f in range(F):
                if active[s, f] == 0 or g[s, f] == 0.0:
                    continue
                val[s, f] = pixel_grad(s, f, g[s, f], iopt, fopt, vecs, incident, lam, cells,
                                       Fhkl, want_F, gpar[s], gF[ch], cacc[ch], work)
