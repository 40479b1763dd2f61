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

from ..physics import (SHAPE_GAUSS, dot, interp_in_range, lattice_factor_grad,
                       lattice_factor_star_grad, nearest_F,
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


@njit(parallel=True, cache=True, error_model="numpy")
def render64(active, iopt, fopt, vecs, incident, lam, cells, Fhkl, out):
    """Fill out (float64, (S, F)) with the default-mode pixel values."""
    S, F = active.shape
    tbuf = np.zeros((1, K.TRACE_COLS))
    for s in prange(S):
        tpos = np.zeros(1, dtype=np.int64)
        info = np.zeros(3, dtype=np.int64)
        work = np.empty((K.N_WORK, cells.shape[2]), dtype=cells.dtype)
        for f in range(F):
            if active[s, f] == 0:
                continue
            val, om = K.pixel_value(s, f, False, -1, iopt, fopt, vecs, incident, lam, cells,
                                    Fhkl, work, False, tbuf, tpos, info)
            out[s, f] = val


@njit(cache=True, error_model="numpy")
def _nearest_inside(hkls, hmin, hmax, kmin, kmax, lmin, lmax, h0, k0, l0):
    """Does nearest_F read the grid (rather than default_F) at (h0, k0, l0)?"""
    return (hkls > 0 and h0 >= hmin and h0 <= hmax and k0 >= kmin and k0 <= kmax
            and l0 >= lmin and l0 <= lmax)


@njit(cache=True, error_model="numpy")
def pixel_grad(spixel, fpixel, g, iopt, fopt, vecs, incident, lam, cells, rots, Fhkl,
               want_F, gpar, gF):
    """Add g * dI/dtheta of pixel (spixel, fpixel) to gpar (N_PAR,) and, with
    want_F, g * dI/dFhkl to gF (Fhkl's shape).  Returns the pixel's value
    (equal to the forward kernel's up to rounding; tests compare them).

    rots: (ncell, 3, 3) with rots[j, m] = (R_j e_m), so dh_j/da = R_j^T S has
    components rots[j, m] . S."""
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
    fdet, sdet, pix0 = K._v(vecs, K.V_FDET), K._v(vecs, K.V_SDET), K._v(vecs, K.V_PIX0)
    polar_axis = K._v(vecs, K.V_POLAR)
    astar, bstar, cstar = K._v(vecs, K.V_ASTAR), K._v(vecs, K.V_BSTAR), K._v(vecs, K.V_CSTAR)
    C = fopt[K.F_SCALE] / fopt[K.F_STEPS]

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
                cF = g * C * polar * omega    # dI/dT for the F-grid scatter
                gx = 0.0     # sum_j dT/dh a_j + dT/dk b_j + dT/dl c_j (d/dS)
                gy = 0.0
                gz = 0.0
                gs = 0.0     # d/ds of the wavelength scale: dh/ds = -h
                for j in range(ncell):
                    a = (cells[1, 0, j], cells[1, 1, j], cells[1, 2, j])
                    b = (cells[1, 3, j], cells[1, 4, j], cells[1, 5, j])
                    c = (cells[1, 6, j], cells[1, 7, j], cells[1, 8, j])
                    h = dot(a, S)
                    k = dot(b, S)
                    l = dot(c, S)
                    h0 = np.int64(np.ceil(h - 0.5))
                    k0 = np.int64(np.ceil(k - 0.5))
                    l0 = np.int64(np.ceil(l - 0.5))
                    Fl, dFh, dFk, dFl, dNa, dNb, dNc = lattice_factor_grad(
                        shape, h, k, l, h0, k0, l0, Na, Nb, Nc, fudge, astar, bstar, cstar, reduced)
                    tFc = 0.0
                    if interp and interp_in_range(h, k, l, hmin, hmax, kmin, kmax, lmin, lmax):
                        Fc = tricubic_F(Fhkl, hmin, kmin, lmin, h, k, l)
                        tFc = 2.0 * Fc * Fl * Fl
                        ch, ck, cl = tricubic_F_grad(Fhkl, hmin, kmin, lmin, h, k, l, gF,
                                                     cF * tFc, want_F)
                    else:
                        Fc = nearest_F(Fhkl, hkls, hmin, hmax, kmin, kmax, lmin, lmax,
                                       h0, k0, l0, default_F)
                        ch = ck = cl = 0.0     # nearest neighbour: flat in h, k, l
                        if want_F and _nearest_inside(hkls, hmin, hmax, kmin, kmax, lmin, lmax,
                                                      h0, k0, l0):
                            gF[h0 - hmin, k0 - kmin, l0 - lmin] += cF * 2.0 * Fc * Fl * Fl
                    sumT += Fc * Fc * Fl * Fl
                    tFl = 2.0 * Fc * Fc * Fl
                    tFc = 2.0 * Fc * Fl * Fl
                    Th = tFl * dFh + tFc * ch
                    Tk = tFl * dFk + tFc * ck
                    Tl = tFl * dFl + tFc * cl
                    gx += Th * a[0] + Tk * b[0] + Tl * c[0]
                    gy += Th * a[1] + Tk * b[1] + Tl * c[1]
                    gz += Th * a[2] + Tk * b[2] + Tl * c[2]
                    gs -= Th * h + Tk * k + Tl * l
                    if shape == SHAPE_GAUSS:   # gauss: F also depends on astar, bstar, cstar
                        q, v = lattice_factor_star_grad(shape, h, k, l, h0, k0, l0, Na, Nb, Nc,
                                                        fudge, astar, bstar, cstar)
                        for m in range(3):
                            dsum[P_ASTAR + m] += tFl * q * (h - h0) * v[m]
                            dsum[P_BSTAR + m] += tFl * q * (k - k0) * v[m]
                            dsum[P_CSTAR + m] += tFl * q * (l - l0) * v[m]
                    dsum[P_NA] += tFl * dNa
                    dsum[P_NB] += tFl * dNb
                    dsum[P_NC] += tFl * dNc
                    for m in range(3):
                        u = rots[j, m, 0] * S[0] + rots[j, m, 1] * S[1] + rots[j, m, 2] * S[2]
                        dsum[P_A + m] += Th * u
                        dsum[P_B + m] += Tk * u
                        dsum[P_C + m] += Tl * u
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
    # test = C P omega (I_bg + sum): C and I_bg are both proportional to fluence
    gpar[P_FLU] += gC * po * (total + I_bg)
    return C * po * total


@njit(parallel=True, cache=True, error_model="numpy")
def backward(active, g, iopt, fopt, vecs, incident, lam, cells, rots, Fhkl, want_F, nchunk,
             gpar, gF, val):
    """Adjoint pass over every active pixel with g != 0.

    gpar (S, N_PAR): per-row sums of g dI/dtheta (the host adds the rows).
    gF (nchunk, *Fhkl.shape) with want_F (else any shape): one F-grid gradient
    buffer per chunk of rows.  val (S, F): the pixel values this pass saw."""
    S, F = active.shape
    per = (S + nchunk - 1) // nchunk
    for ch in prange(nchunk):
        for s in range(ch * per, min(S, (ch + 1) * per)):
            for f in range(F):
                if active[s, f] == 0 or g[s, f] == 0.0:
                    continue
                val[s, f] = pixel_grad(s, f, g[s, f], iopt, fopt, vecs, incident, lam, cells,
                                       rots, Fhkl, want_F, gpar[s], gF[ch])
