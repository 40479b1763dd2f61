"""MOSFLM orientation matrix files (``-mat``).

nanoBragg reads the first nine numbers as three rows of three: row ``i``
holds component ``i`` (x, y, z) of a*, b* and c*, in that order.  The
numbers still contain the wavelength (the caller divides it out); anything
after the nine numbers (U matrix, cell, ...) is ignored, as in C.
"""

from __future__ import annotations

import numpy as np

from nbnumba.errors import InputFileError
from nbnumba.io._args import read_bytes
from nbnumba.io._cnum import parse_c_number
from nbnumba.io.sniff import misfed_hint

__all__ = ["read_mosflm_mat", "read_mosflm_cell"]


#: a MOSFLM matrix holds reciprocal vectors times the wavelength (~1e-2): anything
#: near 1e100 would overflow the cell volume (a product of three) into inf
MAX_MAT_VALUE = 1e100


def _check_range(name: str, values) -> None:
    for v in values:
        if not (abs(v) < MAX_MAT_VALUE):      # also catches nan/inf
            raise InputFileError(
                f"{name}: orientation-matrix value {v:g} is out of range "
                f"(finite, |value| < {MAX_MAT_VALUE:g} required)")


def read_mosflm_mat(path) -> np.ndarray:
    """Return ``recip`` (3x3 float64) with ``recip[0]`` = a* (x, y, z),
    ``recip[1]`` = b*, ``recip[2]`` = c*, as read from the file (wavelength
    not yet removed).

    Stricter than C (which only calls ``perror`` and keeps going): a
    non-number among the first nine values, or fewer than nine values,
    raises :class:`InputFileError` naming the file and line.
    """
    name, raw = read_bytes(path)
    text = raw.decode("latin-1")
    values = []
    lines = text.split("\n")
    for lineno, line in enumerate(lines, start=1):
        for tok in line.split():
            v = parse_c_number(tok)
            if v is None:
                raise InputFileError(
                    f"{name} line {lineno}: expected a number of the orientation matrix, "
                    f"got '{tok[:40]}'" + misfed_hint(raw, name, "mat")
                )
            values.append(v)
            if len(values) == 9:
                _check_range(name, values)
                # rows of the file are (a*_i, b*_i, c*_i); transpose to vectors
                return np.array(values, dtype=np.float64).reshape(3, 3).T.copy()
    last = len(lines) if lines and lines[-1] != "" else max(len(lines) - 1, 1)
    raise InputFileError(
        f"{name} line {last}: file ends after {len(values)} of the 9 orientation-matrix numbers"
        + misfed_hint(raw, name, "mat")
    )


def read_mosflm_cell(path):
    """The cell line of a whole MOSFLM matrix file, (a, b, c in A, alpha,
    beta, gamma in degrees), or None.  MOSFLM writes the matrix (9 numbers),
    the missetting angles (3), U (9), the cell (6) and the angles again (3);
    nanoBragg.c reads only the matrix, and so does the run.  Only a file whose
    first 27 tokens are all numbers, with positive edges and angles in
    (0, 180), has a cell line here; anything else is None (never an error:
    the rest of the file is not the run's input)."""
    _, raw = read_bytes(path)
    values = []
    for tok in raw.decode("latin-1").split():
        v = parse_c_number(tok)
        if v is None:
            break
        values.append(v)
        if len(values) == 27:
            break
    if len(values) < 27:
        return None
    cell = tuple(values[21:27])
    if all(0.0 < x < 1e6 for x in cell[:3]) and all(0.0 < x < 180.0 for x in cell[3:]):
        return cell
    return None
