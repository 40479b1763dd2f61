"""The default mode's sum of F_cell^2 F_latt^2 over a sub-path's cells
(kernels/cpu.py): the F lookup in floating point (physics.nearest_F_frac)
against nearest_F, the fixed order of _ordered_lean_sum against that order
written out in Python, the block path's column sums against it, and the
fast-math _lean_sum against an exact sum."""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from numba import njit

from nbnumba import physics
from nbnumba.kernels import cpu as K

HMIN, HMAX, KMIN, KMAX, LMIN, LMAX = -4, 5, -3, 2, -6, 7


def _grid():
    shape = (HMAX - HMIN + 1, KMAX - KMIN + 1, LMAX - LMIN + 1)
    return np.random.default_rng(5).uniform(1.0, 50.0, size=shape)


@njit(cache=False)
def _both(Fhkl, hkls, h, k, l, default_F):
    """(nearest_F at int64(ceil(x - 1/2)), nearest_F_frac at x) per element."""
    a = np.empty(h.size)
    b = np.empty(h.size)
    for i in range(h.size):
        a[i] = physics.nearest_F(Fhkl, hkls, HMIN, HMAX, KMIN, KMAX, LMIN, LMAX,
                                 np.int64(np.ceil(h[i] - 0.5)), np.int64(np.ceil(k[i] - 0.5)),
                                 np.int64(np.ceil(l[i] - 0.5)), default_F)
        b[i] = physics.nearest_F_frac(Fhkl, hkls, HMIN, HMAX, KMIN, KMAX, LMIN, LMAX, h[i], k[i],
                                      l[i], default_F)
    return a, b


@pytest.mark.parametrize("hkls", [1, 0])
def test_nearest_F_frac_is_nearest_F(hkls):
    """The same F for indices inside, on and beyond every edge of the grid
    (the rounding of half-integers included), and for NaN, infinities and
    indices beyond int64."""
    rng = np.random.default_rng(11)
    n = 20000
    h = rng.uniform(HMIN - 3, HMAX + 3, n)
    k = rng.uniform(KMIN - 3, KMAX + 3, n)
    l = rng.uniform(LMIN - 3, LMAX + 3, n)
    # half-integers and edges exactly
    h[:40] = np.arange(HMIN - 1.5, HMIN - 1.5 + 20, 0.5)
    k[40:80] = np.arange(KMIN - 1.5, KMIN - 1.5 + 20, 0.5)
    l[80:120] = np.arange(LMIN - 1.5, LMIN - 1.5 + 20, 0.5)
    odd = [np.nan, np.inf, -np.inf, 1e19, -1e19, 2.0 ** 63, -2.0 ** 63, 1e300]
    for i, x in enumerate(odd):
        h[200 + i] = x
        k[300 + i] = x
        l[400 + i] = x
    a, b = _both(_grid(), hkls, h, k, l, 7.5)
    assert np.array_equal(a, b)
    inside = (a != 7.5).sum()
    assert (inside > n // 4) if hkls else inside == 0


def _terms_work(ncell, seed=0):
    rng = np.random.default_rng(seed)
    work = np.zeros((K.N_WORK, ncell + 3))
    work[K.W_H, :] = rng.uniform(HMIN - 1, HMAX + 1, ncell + 3)
    work[K.W_K, :] = rng.uniform(KMIN - 1, KMAX + 1, ncell + 3)
    work[K.W_L, :] = rng.uniform(LMIN - 1, LMAX + 1, ncell + 3)
    # lattice factors over many decades: a reordered sum shows in the last bits
    work[K.W_F, :] = rng.uniform(0, 1, ncell + 3) * 10.0 ** rng.uniform(-6, 3, ncell + 3)
    return work


def _ordered_reference(terms):
    """_ordered_lean_sum's documented order, in Python floats."""
    p = [0.0] * 8
    for i, t in enumerate(terms):
        p[i % 8] += t
    return ((p[0] + p[1]) + (p[2] + p[3])) + ((p[4] + p[5]) + (p[6] + p[7]))


@pytest.mark.parametrize("ncell", [1, 3, 7, 8, 9, 10, 16, 23, 50])
def test_ordered_lean_sum_order(ncell):
    """_ordered_lean_sum adds the terms ((F F) Fl) Fl in its documented fixed
    order, bit for bit; the fast-math _lean_sum (any order) agrees to 1e-15
    relative, and both are within 1e-15 of the exact sum of those terms."""
    Fhkl = _grid()
    j0 = 2
    work = _terms_work(ncell)
    args = (Fhkl, 1, HMIN, HMAX, KMIN, KMAX, LMIN, LMAX, 7.5)
    got = K._ordered_lean_sum(work.copy(), j0, ncell, *args)
    fast = K._lean_sum(work.copy(), j0, ncell, *args)
    terms = []
    for j in range(j0, j0 + ncell):
        h0, k0, l0 = (int(math.ceil(work[r, j] - 0.5)) for r in (K.W_H, K.W_K, K.W_L))
        inside = HMIN <= h0 <= HMAX and KMIN <= k0 <= KMAX and LMIN <= l0 <= LMAX
        F = Fhkl[h0 - HMIN, k0 - KMIN, l0 - LMIN] if inside else 7.5
        Fl = work[K.W_F, j]
        terms.append(F * F * Fl * Fl)
    assert got == _ordered_reference(terms)
    exact = float(sum(Fraction(t) for t in terms))
    assert abs(got - exact) <= 1e-15 * exact
    assert abs(fast - exact) <= 1e-15 * exact


@pytest.mark.parametrize("ncol, ncell", [(32, 10), (5, 1), (7, 17), (64, 1), (3, 64)])
def test_column_sums_are_ordered_lean_sums(ncol, ncell):
    """The block path's per-column sums of cell-major terms (_column_sums)
    equal _ordered_lean_sum over each column's own terms, bit for bit."""
    Fhkl = _grid()
    n = ncol * ncell
    work = _terms_work(n, seed=ncol + ncell)
    args = (Fhkl, 1, HMIN, HMAX, KMIN, KMAX, LMIN, LMAX, 7.5)
    K._lean_terms(work, 0, n, *args)
    geo = np.zeros((K.N_BLOCK, ncol))
    part = np.empty((8, ncol))
    K._column_sums(work, ncol, ncell, part, geo)
    for c in range(ncol):
        col = work[:, [j * ncol + c for j in range(ncell)]]
        # the column's cells in pixel order: lattice rows as they were, W_T recomputed
        w = np.zeros((K.N_WORK, ncell))
        w[:] = col
        assert geo[K.B_SUM, c] == K._ordered_lean_sum(w, 0, ncell, *args), c
