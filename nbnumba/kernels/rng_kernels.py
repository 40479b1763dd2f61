"""Compiled random deviates and the noise image (numba), nanoBragg.c's ran1
family: see :mod:`nbnumba.rng` for the generator's state and conventions.

float32 arithmetic where the C uses float, so the same seeds give the same
mosaic domains, random missets and noise images.  And double where the C's
libm takes a double: numba evaluates math.exp/log/sqrt of a float32 in float32
(expf, logf), whose last bits can differ from C's exp of the widened value; a
Poisson deviate's accept test then flips now and then (tools/fuzz.py parity,
docs/reliability.md).
"""
from __future__ import annotations

import math

import numpy as np

from .. import numba_cache

numba_cache.import_numba()     # (a NUMBA_* value numba cannot read: one line)

from numba import njit  # noqa: E402

from ..rng import F32, _ran1  # noqa: E402

numba_cache.install()     # cached kernels also depend on the files they inline

ran1 = njit(cache=True, fastmath=False)(_ran1)


@njit(cache=True, fastmath=False)
def gammln(xx):
    """ln Gamma(xx) with float32 argument and result (C: float gammln(float))."""
    x = np.float64(F32(xx))
    y = x
    tmp = x + 5.5
    tmp -= (x + 0.5) * math.log(tmp)
    ser = 1.000000000190015
    ser += 76.18009172947146 / (y + 1.0)
    ser += -86.50532032941677 / (y + 2.0)
    ser += 24.01409824083091 / (y + 3.0)
    ser += -1.231739572450155 / (y + 4.0)
    ser += 0.1208650973866179e-2 / (y + 5.0)
    ser += -0.5395239384953e-5 / (y + 6.0)
    return F32(-tmp + math.log(2.5066282746310005 * ser / x))


@njit(cache=True, fastmath=False)
def gaussdev(idum_ref, buf, gauss):
    """Unit normal deviate (Box-Muller polar form), float32, with the spare kept."""
    if gauss[0] == 0:
        while True:
            v1 = F32(2.0 * ran1(idum_ref, buf) - 1.0)
            v2 = F32(2.0 * ran1(idum_ref, buf) - 1.0)
            rsq = F32(v1 * v1 + v2 * v2)
            if not (rsq >= 1.0 or rsq == 0):
                break
        # C's log and sqrt take doubles; numba's math functions of a float32
        # compute in float32 (expf, logf): widen first, as everywhere below
        r = np.float64(rsq)
        fac = F32(math.sqrt(-2.0 * math.log(r) / r))
        gauss[1] = F32(v1 * fac)
        gauss[0] = 1
        return F32(v2 * fac)
    gauss[0] = 0
    return gauss[1]


@njit(cache=True, fastmath=False)
def poidev(xm, idum_ref, buf, gauss):
    """Poisson deviate with mean ``xm`` (float32 arithmetic as nanoBragg.c)."""
    xm = F32(xm)
    if xm > 1.0e6:
        x = np.float64(xm)
        return F32(x + math.sqrt(x) * np.float64(gaussdev(idum_ref, buf, gauss)))
    if xm < 12.0:
        g = F32(math.exp(-np.float64(xm)))
        em = F32(-1.0)
        t = F32(1.0)
        while True:
            em = F32(em + F32(1.0))
            t = F32(t * ran1(idum_ref, buf))
            if not (t > g):
                break
        return em
    sq = F32(math.sqrt(2.0 * np.float64(xm)))
    alxm = F32(math.log(np.float64(xm)))
    g = F32(F32(xm * alxm) - gammln(xm + 1.0))
    while True:
        while True:
            y = F32(math.tan(math.pi * np.float64(ran1(idum_ref, buf))))
            em = F32(F32(sq * y) + xm)
            if not (em < 0.0):
                break
        em = F32(np.floor(em))   # math.floor would cast NaN to INT64_MIN
        expo = F32(F32(F32(em * alxm) - gammln(em + 1.0)) - g)
        t = F32(0.9 * (1.0 + np.float64(F32(y * y))) * math.exp(np.float64(expo)))
        if not (ran1(idum_ref, buf) > t):
            break
    return em


@njit(cache=True, fastmath=False)
def mosaic_rotation_umat(mosaicity, idum_ref, buf, c_rule=True):
    """Random rotation matrix (row-major 9 doubles) within a ball of angular
    radius ``mosaicity`` (radians): an axis uniform on the sphere and an angle
    from the third deviate r3 (uniform on [-1, 1]).

    The default mode (c_rule False) takes the angle mosaicity |r3|^(1/3), in
    double: rotation vectors uniform in the ball.  nanoBragg.c (c_rule) takes
    mosaicity (1 - r3^2)^(1/3), in float32 (the C's spread is a float), whose
    angles pile up at the edge of the spread: P(angle <= t spread) = 1 -
    sqrt(1 - t^3), a median of 0.908 spread against the ball's 0.794
    (docs/quirks.md #38).  Both draw the same three deviates."""
    r1 = 2.0 * ran1(idum_ref, buf) - 1.0
    r2 = 2.0 * ran1(idum_ref, buf) - 1.0
    r3 = 2.0 * ran1(idum_ref, buf) - 1.0
    xyrad = math.sqrt(1.0 - r2 * r2)
    if c_rule:
        # powf on float arguments, then a float product, as in the C
        mos = F32(mosaicity)
        rot = np.float64(F32(mos * np.power(F32(1.0 - r3 * r3), F32(1.0 / 3.0))))
    else:
        rot = mosaicity * np.cbrt(abs(r3))
    v1 = xyrad * math.sin(math.pi * r1)
    v2 = xyrad * math.cos(math.pi * r1)
    v3 = r2
    c = math.cos(rot)
    t2 = 1.0 - c
    s = math.sin(rot)
    u = np.empty(9)
    u[0] = c + t2 * (v1 * v1)
    u[1] = t2 * v1 * v2 - s * v3
    u[2] = t2 * v1 * v3 + s * v2
    u[3] = t2 * v1 * v2 + s * v3
    u[4] = c + t2 * (v2 * v2)
    u[5] = t2 * v2 * v3 - s * v1
    u[6] = t2 * v1 * v3 - s * v2
    u[7] = t2 * v2 * v3 + s * v1
    u[8] = c + t2 * (v3 * v3)
    return u


@njit(cache=True, fastmath=False)
def random_orientation_umat(idum_ref, buf):
    """Rotation matrix (row-major 9 doubles) uniform on SO(3) (Haar measure),
    from three ran1 deviates: Shoemake's uniform unit quaternion.  It draws as
    many deviates as mosaic_rotation_umat, so later users of the shared ran1
    state see the same sequence as in nanoBragg.c."""
    u1 = np.float64(ran1(idum_ref, buf))
    u2 = np.float64(ran1(idum_ref, buf))
    u3 = np.float64(ran1(idum_ref, buf))
    a = math.sqrt(1.0 - u1)
    b = math.sqrt(u1)
    x = a * math.sin(2.0 * math.pi * u2)
    y = a * math.cos(2.0 * math.pi * u2)
    z = b * math.sin(2.0 * math.pi * u3)
    w = b * math.cos(2.0 * math.pi * u3)
    u = np.empty(9)
    u[0] = 1.0 - 2.0 * (y * y + z * z)
    u[1] = 2.0 * (x * y - z * w)
    u[2] = 2.0 * (x * z + y * w)
    u[3] = 2.0 * (x * y + z * w)
    u[4] = 1.0 - 2.0 * (x * x + z * z)
    u[5] = 2.0 * (y * z - x * w)
    u[6] = 2.0 * (x * z - y * w)
    u[7] = 2.0 * (y * z + x * w)
    u[8] = 1.0 - 2.0 * (x * x + y * y)
    return u


@njit(cache=True, fastmath=False)
def noise_image(float_image, seed, buf, gauss, adc_offset, roi, wrap_negative=False):
    """Poisson noise image as nanoBragg.c writes it (uint16) plus photons and
    overloads.  ``roi`` = (xmin, xmax, ymin, ymax) inclusive; pixels outside keep
    the value 0.  Pixels are visited in raster order (the RNG is sequential).

    The count plus -adc is rounded to the nearest integer, as the noiseless
    int image is, and a negative one (a negative -adc) clamped to 0.
    ``wrap_negative`` (-c_parity) reproduces nanoBragg.c's cast instead:
    truncation, so a fractional -adc of 40.7 adds 40 (docs/quirks.md #26), and
    a negative count goes to a 32-bit int whose low 16 bits are kept (-5 ->
    65531, #12)."""
    S, F = float_image.shape
    out = np.zeros((S, F), dtype=np.uint16)
    idum = np.empty(1, dtype=np.int64)
    idum[0] = seed
    total = 0.0
    overloads = 0
    for s in range(S):
        for f in range(F):
            if f < roi[0] or f > roi[1] or s < roi[2] or s > roi[3]:
                continue
            test = np.float64(poidev(float_image[s, f], idum, buf, gauss))
            total += test
            test += adc_offset
            if test > 65535.0:
                test = 65535.0
                overloads += 1
            if wrap_negative and test >= 0:
                out[s, f] = np.uint16(int(test))
            elif test >= 0:
                out[s, f] = np.uint16(int(math.floor(test + 0.5)))
            elif wrap_negative and test >= -2147483648.0:
                out[s, f] = np.uint16(np.int64(test) & 0xFFFF)
            # else 0: clamped, NaN, or beyond int32 (x86 gives INT_MIN: low bits 0)
    return out, total, overloads, idum[0]
