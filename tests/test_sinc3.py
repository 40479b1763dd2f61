"""The round crystal's transform, sinc3(x) = 3 (sin x - x cos x) / x^3, and its
derivative, against their Taylor series summed exactly in rational arithmetic.

Near x = 0 (a sub-path at the centre of a node) the closed form cancels: about
6 eps / x^2 of its value, all of it by x ~ 1e-8.  The default mode sums the
series below |x| = 1 (physics.sinc3_accurate, sinc3_dx_over_x; the adjoint
differentiates that); -c_parity keeps the C's closed form.  tools/fuzz.py
gradients found it: a round crystal whose sub-paths all sat at h, k, l ~ 1e-8
gave an N gradient of 130.9 where central differences of the image gave -5.0.
"""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from nbnumba import physics

#: 0, 1e-12 .. 6 (both sides of the switch at 1, past the first zero at 4.49)
XS = np.concatenate([[0.0], np.logspace(-12, math.log10(6.0), 200), -np.logspace(-9, 0.5, 20)])


def _coeff(m):
    """c_m of sinc3 = sum_m c_m x^(2m), exactly."""
    return Fraction((-1) ** m * 3 * (2 * m + 2), math.factorial(2 * m + 3))


def _exact(x, deriv=False):
    """sinc3(x), or (d sinc3/dx)/x, to far below a float64 ulp: the series in
    exact rationals (60 terms: the last is below 1e-60 for |x| <= 6)."""
    t = Fraction(float(x)) ** 2
    total = Fraction(0)
    power = Fraction(1)
    for m in range(60):
        total += (2 * (m + 1) * _coeff(m + 1) if deriv else _coeff(m)) * power
        power *= t
    return float(total)


def test_series_coefficients_are_the_exact_ones():
    assert physics.SINC3_SERIES == tuple(float(_coeff(m)) for m in range(9))
    assert physics.SINC3_DX_SERIES == tuple(float(2 * (m + 1) * _coeff(m + 1)) for m in range(9))
    # the first terms left out, at the switch |x| = 1
    assert abs(float(_coeff(9))) < 1.2e-18
    assert abs(float(20 * _coeff(10))) < 6e-20


def test_sinc3_to_an_ulp_everywhere():
    eps = np.finfo(np.float64).eps
    for x in XS:
        ref = _exact(x)
        assert abs(physics.sinc3_accurate(float(x)) - ref) <= 2 * eps * abs(ref), x


def test_sinc3_derivative_to_a_few_ulp():
    eps = np.finfo(np.float64).eps
    for x in XS:
        ref = _exact(x, deriv=True)
        # above the switch the closed form differences two terms of ~3/x
        tol = (2 if abs(x) < physics.SINC3_SERIES_BELOW else 32) * eps * abs(ref)
        assert abs(physics.sinc3_dx_over_x(float(x)) - ref) <= tol, x


def test_the_closed_form_cancels_near_zero():
    # why the default mode does not use it there (the C's formula, kept for -c_parity)
    assert abs(physics.sinc3(1e-7) - 1.0) > 1e-4
    assert abs(physics.sinc3(1e-3) - _exact(1e-3)) > 1e-12
    assert abs(physics.sinc3_accurate(1e-7) - (1.0 - 1e-15)) <= 2.3e-16   # 1 - x^2/10


@pytest.mark.parametrize("reduced, exact", [(1, True), (2, True), (0, False)])
def test_round_lattice_factor_at_a_node_centre(reduced, exact):
    """F_latt = Na Nb Nc 0.7236... sinc3(pi sqrt(hrad^2)) a hair off the node:
    the default mode (reduced 1, 2) gives the peak value to an ulp, -c_parity
    float64 (reduced 0) the C's closed form."""
    z = np.zeros(3)
    Na, Nb, Nc = 3.0, 4.0, 5.0
    h, k, l = 7.0 + 3e-9, -2.0 - 2e-9, 11.0 + 1e-9
    F = physics.lattice_factor(physics.SHAPE_ROUND, h, k, l, 7, -2, 11, Na, Nb, Nc, 1.0, 0.0,
                               z, z, z, reduced)[0]
    dh, dk, dl = h - 7, k + 2, l - 11         # as the kernel forms them
    x = math.pi * math.sqrt(dh * dh * Na * Na + dk * dk * Nb * Nb + dl * dl * Nc * Nc)
    peak = Na * Nb * Nc * 0.723601254558268
    if exact:
        assert abs(F - peak * _exact(x)) <= 4e-16 * peak
    else:
        assert F == peak * physics.sinc3(x)
        assert abs(F - peak) > 1e-10 * peak
