"""d/dh of nanoBragg's unreduced lattice factor sin(N pi h)/sin(pi h), the
square crystal's form for N between integers (autodiff refines N as a real
number), against its Taylor series summed in exact rational arithmetic.

Written as the C writes it, df/dh = pi (N cos(N x) - f cos x) / sin x with
x = pi h: near h = 0 the bracket cancels (relative error ~3 eps / (N x)^2,
all of it by h ~ 1e-9).  tools/fuzz.py device found it: with a 1.5 m source
wavelength every h, k, l is ~1e-10, and the numba and CUDA adjoints gave
misset gradients 1e-4 apart, both wrong.  Where |N h| < SINCG_NEAR the
derivative is now summed as a series (physics.sincg_near_dh); the integer-N
path (sincg_reduced_grad) has its own series since it was written.
"""
from __future__ import annotations

import math
from decimal import Decimal, localcontext
from fractions import Fraction

import numpy as np
import pytest

from nbnumba import physics

#: pi to 50 digits: the reference's pi is exact far below a float64 ulp
PI = "3.14159265358979323846264338327950288419716939937510"
TERMS = 30
NS = (1.5, 2.5, 3.7, 4.6, 7.9, 12.2, 30.5)
EPS = np.finfo(np.float64).eps


def _series(N):
    """Coefficients p_k of sin(N x)/sin(x) = sum_k p_k x^(2k), exactly
    (N a float, taken exactly): the product of sin(N x)/x and x/sin(x)."""
    n = Fraction(N)
    a = [(-1) ** i * n ** (2 * i + 1) / math.factorial(2 * i + 1) for i in range(TERMS)]
    s = [Fraction((-1) ** k, math.factorial(2 * k + 1)) for k in range(TERMS)]
    b = [Fraction(1)]                    # x/sin(x): the inverse of sin(x)/x
    for k in range(1, TERMS):
        b.append(-sum(s[i] * b[k - i] for i in range(1, k + 1)))
    return [sum(a[i] * b[k - i] for i in range(k + 1)) for k in range(TERMS)], b


def _exact_dh(p, h):
    """pi sum_k 2k p_k x^(2k-1), x = pi h, in 50-digit decimals (the p_k
    rounded there once): far below an ulp for |N h| <= 0.5, where the last
    term is below 1e-28 of the sum."""
    with localcontext() as ctx:
        ctx.prec = 50
        pi = Decimal(PI)
        c = [Decimal(2 * k * q.numerator) / Decimal(q.denominator) for k, q in enumerate(p)]
        x = pi * Decimal(float(h))
        t = x * x
        total = Decimal(0)
        for k in range(TERMS - 1, 0, -1):
            total = total * t + c[k]
        return float(pi * x * total)


@pytest.mark.parametrize("N", NS)
def test_unreduced_sincg_dh_to_a_few_ulp(N):
    """Below |N h| = SINCG_NEAR (the series) within 4 ulp (measured: 1.95
    against 50-digit mpmath); above it, the closed form, within 64 (measured:
    45 just above the switch, falling as (N x)^-2)."""
    p, _ = _series(N)
    hs = np.concatenate([np.logspace(-12, math.log10(0.5 / N), 40), -np.logspace(-10, -2, 5)])
    for h in hs:
        want = _exact_dh(p, h)
        got = physics.sincg_grad(float(h), N)[0]
        ulps = abs(got - want) / (EPS * abs(want))
        bound = 4.0 if abs(N * h) < physics.SINCG_NEAR else 64.0
        assert ulps <= bound, (N, h, got, want, ulps)


def test_unreduced_sincg_dh_sign_and_limits():
    """f = sin(N x)/sin(x) peaks at h = 0 for N > 1: df/dh is odd in h,
    negative for small h > 0, and at h = 0 it is 0 (the C's limit f = N,
    with df/dN = 1).  At N = 1, f = 1 and the series gives exactly 0."""
    for N in NS:
        a = physics.sincg_grad(1e-7, N)[0]
        b = physics.sincg_grad(-1e-7, N)[0]
        assert a < 0.0 and a == -b
        assert physics.sincg_grad(0.0, N) == (0.0, 1.0)
    assert physics.sincg_near_dh(1e-3, 1.0) == 0.0


def test_x_over_sin_series_is_exact():
    """physics.X_OVER_SIN_SERIES is x/sin(x)'s Taylor series, each
    coefficient the exact rational rounded to float64."""
    _, b = _series(2.0)
    assert list(physics.X_OVER_SIN_SERIES) == [float(c) for c in b[:len(physics.X_OVER_SIN_SERIES)]]
