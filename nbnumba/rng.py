"""nanoBragg-compatible random numbers.

nanoBragg.c uses the Numerical-Recipes style minimal-standard generator with a
32-entry shuffle table (``ran1``), whose table is a *static* shared by every seed
the program uses (random misset, mosaic domains, noise).  A negative seed
re-initialises the table.  To give identical mosaic domains, random missets and
noise images for the same seeds we keep that state explicitly in a small int64
array and reproduce the float32 arithmetic of the deviates exactly.

State layout (``RngState.buf``, int64[34]): [idum, iy, iv[0..31]].
Gaussian spare deviate: ``RngState.gauss`` float32[2] = [iset, gset].

This module is plain Python (no numba import).  The compiled deviates and the
noise image (ran1, gammln, gaussdev, poidev, mosaic_rotation_umat,
random_orientation_umat, noise_image) are in
:mod:`nbnumba.kernels.rng_kernels`; their names here load it on first use.
Host code calls them through :mod:`nbnumba.kernels.native`, which takes them
from the start-up library when there is one.
"""
from __future__ import annotations

import math

import numpy as np

IA = 16807
IM = 2147483647
AM = 1.0 / IM
IQ = 127773
IR = 2836
NTAB = 32
NDIV = 1 + (IM - 1) // NTAB
RNMX = 1.0 - 1.2e-7
F32 = np.float32


class RngState:
    """Shared ran1 state, as the static variables of nanoBragg.c's ran1/gaussdev."""

    def __init__(self):
        self.buf = np.zeros(2 + NTAB, dtype=np.int64)
        self.gauss = np.zeros(2, dtype=np.float32)


def _ran1(idum_ref, buf):
    """Uniform deviate in (0, 1) as float32.  ``idum_ref`` is a 1-element int64
    array holding the caller's seed variable (C passes ``long *idum``).

    Plain Python, compiled by numba as :func:`ran1`; called as it is
    (:func:`ran1_py`) for the few draws of a run without mosaicity, so that no
    compiled code has to be loaded for them.  Same integer arithmetic, same
    state updates either way."""
    idum = int(idum_ref[0])
    if idum <= 0 or buf[1] == 0:
        # (re)load the shuffle table; a zero seed is promoted to 1
        if -idum < 1:
            idum = 1
        else:
            idum = -idum
        for j in range(NTAB + 7, -1, -1):
            k = idum // IQ
            idum = IA * (idum - k * IQ) - IR * k
            if idum < 0:
                idum += IM
            if j < NTAB:
                buf[2 + j] = idum
        buf[1] = buf[2]
    k = idum // IQ
    idum = IA * (idum - k * IQ) - IR * k
    if idum < 0:
        idum += IM
    j = int(buf[1]) // NDIV
    buf[1] = buf[2 + j]
    buf[2 + j] = idum
    idum_ref[0] = idum
    temp = F32(AM * int(buf[1]))
    if float(temp) > RNMX:
        return F32(RNMX)
    return temp


ran1_py = _ran1


def umat2misset(u):
    """Rotation matrix (9, row-major) -> (rotx, roty, rotz) radians, following the
    re-orthonormalisation of nanoBragg.c's umat2misset."""
    u = np.asarray(u, dtype=float).reshape(3, 3).copy()
    # the C normalises the rows twice (before and after its cross-product repair,
    # which only acts on all-zero rows); both divisions are kept for bit parity
    for _ in range(2):
        for i in range(3):
            m = math.sqrt(u[i, 0] * u[i, 0] + u[i, 1] * u[i, 1] + u[i, 2] * u[i, 2])
            if m > 0:
                u[i] = u[i] / m
    uxx, uxy, uxz = u[0]
    uyx, uyy, uyz = u[1]
    uzx, uzy, uzz = u[2]
    if uzx * uzx < 1.0:
        rotx = math.atan2(uzy, uzz)
        roty = math.atan2(-uzx, math.sqrt(uzy * uzy + uzz * uzz))
        rotz = math.atan2(uyx, uxx)
    else:
        rotx = math.atan2(1, 1) * 4
        roty = math.atan2(1, 1) * 2
        rotz = math.atan2(uxy, -uyy)
    return rotx, roty, rotz


#: compiled functions of kernels/rng_kernels, reachable as rng.<name>
_COMPILED = ("ran1", "gammln", "gaussdev", "poidev", "mosaic_rotation_umat",
             "random_orientation_umat", "noise_image")


def __getattr__(name):
    # PEP 562: rng.noise_image etc. import numba only when asked for
    if name in _COMPILED:
        from .kernels import rng_kernels
        return getattr(rng_kernels, name)
    raise AttributeError("module %r has no attribute %r" % (__name__, name))
