"""Recompute physics.SINPI_F64: a Chebyshev (near-minimax) fit of sin(pi x) / x
as a polynomial of degree 8 in t = x^2 over |x| <= 1/2, and its worst error
when evaluated by float64 Horner, in ulps, on sampled arguments.

    python tools/fit_sinpi.py          # needs mpmath (pip install mpmath)

The kernels evaluate x * P(x^2) (physics.sinpi_poly64, nanobragg.cu's
sinpi_reduced); the fit is in t so that P has no odd powers to waste.
"""
from __future__ import annotations

import math
import sys

import numpy as np


def fit(degree: int = 8, digits: int = 50):
    """(coefficients c0..c_degree as floats, the fit's error bound)."""
    import mpmath as mp
    mp.mp.dps = digits

    def f(t):
        if t == 0:
            return mp.pi
        x = mp.sqrt(t)
        return mp.sin(mp.pi * x) / x

    poly, err = mp.chebyfit(f, [0, mp.mpf(1) / 4], degree + 1, error=True)
    return tuple(float(v) for v in poly[::-1]), float(err)


def worst_ulp(coeffs, samples: int = 20000, seed: int = 0) -> float:
    """Largest |x P(x^2) - sin(pi x)| in ulps of sin(pi x), 0 < x <= 1/2,
    P evaluated by float64 Horner (the reference in 50-digit arithmetic)."""
    import mpmath as mp
    xs = np.concatenate([np.linspace(0.0, 0.5, samples + 1)[1:],
                         np.random.default_rng(seed).uniform(0.0, 0.5, samples)])
    worst = 0.0
    for x in xs:
        x = float(x)
        t = x * x
        p = coeffs[-1]
        for c in coeffs[-2::-1]:
            p = p * t + c
        ref = mp.sin(mp.pi * mp.mpf(x))
        worst = max(worst, abs(float(mp.mpf(x * p) - ref)) / math.ulp(float(ref)))
    return worst


def main(argv=None) -> int:
    coeffs, err = fit()
    print("SINPI_F64 = %r" % (coeffs,))
    print("fit error %.2e; worst float64 Horner error %.2f ulp" % (err, worst_ulp(coeffs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
