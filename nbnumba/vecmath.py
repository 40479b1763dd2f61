"""Plain-Python 3-vector formulas: the one source of each.

The host-side setup (geometry, crystal, sources) calls them as they are, with
float64 ``math`` and the same IEEE operations in the same order as
nanoBragg.c; :mod:`nbnumba.physics` compiles the same functions with numba for
the kernels.  No numba import here: a run whose kernels come from the
start-up library (:mod:`nbnumba.kernels.native`) never loads numba.

Vectors are 3-tuples (x, y, z); angles in radians.
"""
from __future__ import annotations

import math
from types import SimpleNamespace


def _dot(u, v):
    return u[0] * v[0] + u[1] * v[1] + u[2] * v[2]


def _cross(u, v):
    return (u[1] * v[2] - u[2] * v[1],
            u[2] * v[0] - u[0] * v[2],
            u[0] * v[1] - u[1] * v[0])


def _magnitude(u):
    return math.sqrt(u[0] * u[0] + u[1] * u[1] + u[2] * u[2])


def _unitize(u):
    """(unit vector, magnitude); the zero vector maps to itself (as in C)."""
    mag = math.sqrt(u[0] * u[0] + u[1] * u[1] + u[2] * u[2])
    if mag != 0.0:
        return (u[0] / mag, u[1] / mag, u[2] / mag), mag
    z = u[0] * 0
    return (z, z, z), mag


def _scale(u, s):
    return (s * u[0], s * u[1], s * u[2])


def _rotate_axis(v, axis, phi):
    """Rotate v by angle phi (rad) about the unit vector axis (right-handed)."""
    sinphi = math.sin(phi)
    cosphi = math.cos(phi)
    d = (axis[0] * v[0] + axis[1] * v[1] + axis[2] * v[2]) * (1.0 - cosphi)
    return (axis[0] * d + v[0] * cosphi + (-axis[2] * v[1] + axis[1] * v[2]) * sinphi,
            axis[1] * d + v[1] * cosphi + (+axis[2] * v[0] - axis[0] * v[2]) * sinphi,
            axis[2] * d + v[2] * cosphi + (-axis[1] * v[0] + axis[0] * v[1]) * sinphi)


def _rotate_xyz(v, rx, ry, rz):
    """Rotate v about x, then y, then z (radians); zero angles are skipped
    exactly as nanoBragg.c does (which matters for the last bits)."""
    x, y, z = v[0], v[1], v[2]
    if rx != 0:
        c, s = math.cos(rx), math.sin(rx)
        y, z = y * c + z * (-s), y * s + z * c
    if ry != 0:
        c, s = math.cos(ry), math.sin(ry)
        x, z = x * c + y * 0.0 + z * s, x * (-s) + y * 0.0 + z * c
    if rz != 0:
        c, s = math.cos(rz), math.sin(rz)
        x, y = x * c + y * (-s), x * s + y * c
    return (x, y, z)


def _rotate_umat(v, u):
    """Apply a row-major 3x3 matrix (9-array) to v."""
    return (u[0] * v[0] + u[1] * v[1] + u[2] * v[2],
            u[3] * v[0] + u[4] * v[1] + u[5] * v[2],
            u[6] * v[0] + u[7] * v[1] + u[8] * v[2])



#: the plain-Python versions, for host-side setup code
host = SimpleNamespace(dot=_dot, cross=_cross, magnitude=_magnitude, unitize=_unitize,
                       scale=_scale, rotate_axis=_rotate_axis, rotate_xyz=_rotate_xyz,
                       rotate_umat=_rotate_umat)
