"""Deterministic synthetic input files for tests and the golden corpus.

Everything here is generated from fixed seeds with ``numpy.random.default_rng``
so that ``python tools/make_golden.py inputs`` reproduces ``golden/inputs/``
byte for byte.  The file formats are the ones nanoBragg reads:

* ``*.hkl``      -- text lines ``h k l F`` (P1, one line per reflection)
* ``*.mat``      -- MOSFLM orientation ("A") matrix: reciprocal-cell vectors
                    multiplied by the wavelength (i.e. in units of 1/lambda),
                    three rows ``a*_i b*_i c*_i`` for i = x, y, z
* source files   -- text columns ``X Y Z weight lambda`` (lambda in metres)
* SMV (``.img``) -- 512-byte ``{ ... }`` text header, then little-endian
                    unsigned 16-bit pixels, fast index varying fastest
* ``Fdump.bin``  -- nanoBragg's binary structure-factor cache
* stol files     -- text columns ``stol F``

Nothing in this module is copied from nanoBragg; it only writes files in the
layouts the program reads.
"""
from __future__ import annotations

import math
import os
import tempfile
from typing import Iterable, Mapping, Sequence

import numpy as np

__all__ = [
    "cell_vectors",
    "misset_matrix",
    "write_p1_hkl",
    "write_mosflm_mat",
    "write_sourcefile",
    "write_smv",
    "write_smv_mask",
    "write_smv_header_image",
    "write_stol_file",
    "write_fdump",
    "read_hkl_text",
]


# --------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------
def _atomic_write(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file + rename."""
    path = os.fspath(path)
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=d)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def cell_vectors(cell: Sequence[float]):
    """Real and reciprocal cell vectors (Angstrom, 1/Angstrom) in a standard frame.

    ``cell`` = (a, b, c, alpha, beta, gamma) with angles in degrees.  The real
    vector a lies along x and b in the x-y plane.  Returns ``(real, recip)``,
    two 3x3 arrays whose *rows* are the vectors (a, b, c) and (a*, b*, c*).
    """
    a, b, c, al, be, ga = (float(v) for v in cell)
    al, be, ga = (math.radians(v) for v in (al, be, ga))
    ca, cb, cg = math.cos(al), math.cos(be), math.cos(ga)
    sg = math.sin(ga)
    av = np.array([a, 0.0, 0.0])
    bv = np.array([b * cg, b * sg, 0.0])
    cx = c * cb
    cy = c * (ca - cb * cg) / sg
    cz = math.sqrt(max(c * c - cx * cx - cy * cy, 0.0))
    cv = np.array([cx, cy, cz])
    real = np.vstack([av, bv, cv])
    vol = float(np.dot(av, np.cross(bv, cv)))
    recip = np.vstack([np.cross(bv, cv), np.cross(cv, av), np.cross(av, bv)]) / vol
    return real, recip


def misset_matrix(angles_deg: Sequence[float]) -> np.ndarray:
    """Rotation applying x, then y, then z rotations (right-handed, degrees)."""
    rx, ry, rz = (math.radians(float(v)) for v in angles_deg)
    cx, sx = math.cos(rx), math.sin(rx)
    cy, sy = math.cos(ry), math.sin(ry)
    cz, sz = math.cos(rz), math.sin(rz)
    Rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    Ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    Rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return Rz @ Ry @ Rx


# --------------------------------------------------------------------------
# structure factors
# --------------------------------------------------------------------------
def write_p1_hkl(
    path: str,
    cell: Sequence[float],
    dmin: float,
    seed: int,
    fmax: float = 1000.0,
    bfactor: float = 20.0,
    include_origin: bool = False,
) -> int:
    """Write synthetic P1 structure factors for every h,k,l with d >= ``dmin``.

    F = fmax * exp(-B / (4 d^2)) * g, with g drawn from a unit-mean gamma
    distribution (shape 2) -- a smooth Wilson-like fall-off times random
    factors.  Reflections are written in h, k, l order as ``'%4d %4d %4d %8.2f'``
    lines.  The 0,0,0 term is left out unless ``include_origin``.  Returns the
    number of reflections written.
    """
    _, recip = cell_vectors(cell)
    a, b, c = (float(v) for v in cell[:3])
    hmax, kmax, lmax = (int(math.floor(x / dmin)) for x in (a, b, c))
    hh, kk, ll = np.meshgrid(
        np.arange(-hmax, hmax + 1),
        np.arange(-kmax, kmax + 1),
        np.arange(-lmax, lmax + 1),
        indexing="ij",
    )
    hkl = np.stack([hh.ravel(), kk.ravel(), ll.ravel()], axis=1)
    svec = hkl @ recip                      # rows: h a* + k b* + l c*
    s2 = np.einsum("ij,ij->i", svec, svec)  # 1/d^2
    keep = s2 <= 1.0 / (dmin * dmin) + 1e-12
    if not include_origin:
        keep &= np.any(hkl != 0, axis=1)
    hkl = hkl[keep]
    s2 = s2[keep]
    rng = np.random.default_rng(seed)
    g = rng.gamma(2.0, 0.5, size=len(hkl))
    F = fmax * np.exp(-bfactor * s2 / 4.0) * g
    F = np.maximum(F, 0.01)
    lines = [
        "%4d %4d %4d %8.2f\n" % (int(h), int(k), int(l), float(f))
        for (h, k, l), f in zip(hkl, F)
    ]
    _atomic_write(path, "".join(lines).encode("ascii"))
    return len(lines)


def read_hkl_text(path: str):
    """Read an ``h k l F`` text file -> (int array (n,3), float array (n,))."""
    rows = []
    with open(path) as fh:
        for line in fh:
            parts = line.split()
            if len(parts) >= 4:
                rows.append((int(parts[0]), int(parts[1]), int(parts[2]), float(parts[3])))
    arr = np.array(rows, dtype=float).reshape(-1, 4)
    return arr[:, :3].astype(int), arr[:, 3]


def write_fdump(path: str, hkl: np.ndarray, F: np.ndarray, default_F: float = 0.0) -> None:
    """Write nanoBragg's ``Fdump.bin`` cache for the given reflections.

    Layout: a text line ``"hmin hmax kmin kmax lmin lmax\\n"`` followed by a
    form feed, then for each of the (h_range+1) x (k_range+1) rows the
    (l_range+1) native doubles of F[h][k][:].  Grid cells without a reflection
    hold ``default_F`` (the extra trailing index in each dimension holds 0,
    as in the reference's own dump).
    """
    hkl = np.asarray(hkl, dtype=int)
    hmin, kmin, lmin = hkl.min(axis=0)
    hmax, kmax, lmax = hkl.max(axis=0)
    hr, kr, lr = hmax - hmin + 1, kmax - kmin + 1, lmax - lmin + 1
    grid = np.zeros((hr + 1, kr + 1, lr + 1), dtype="<f8")
    grid[:hr, :kr, :lr] = default_F
    grid[hkl[:, 0] - hmin, hkl[:, 1] - kmin, hkl[:, 2] - lmin] = F
    head = ("%d %d %d %d %d %d\n\f" % (hmin, hmax, kmin, kmax, lmin, lmax)).encode("ascii")
    _atomic_write(path, head + grid.tobytes(order="C"))


# --------------------------------------------------------------------------
# orientation matrix
# --------------------------------------------------------------------------
def write_mosflm_mat(
    path: str,
    cell: Sequence[float],
    misset_deg: Sequence[float],
    wavelength_A: float,
) -> np.ndarray:
    """Write a MOSFLM A matrix for ``cell`` rotated by ``misset_deg``.

    The matrix columns are the reciprocal vectors a*, b*, c* (1/Angstrom)
    times the wavelength (Angstrom); row i of the file holds the i-th (x, y, z)
    component of a*, b*, c*.  Returns the 3x3 matrix written.
    """
    _, recip = cell_vectors(cell)
    U = misset_matrix(misset_deg)
    rot = (U @ recip.T)            # columns: rotated a*, b*, c*
    A = rot * float(wavelength_A)
    text = "".join(" %15.10f %15.10f %15.10f\n" % tuple(A[i]) for i in range(3))
    _atomic_write(path, text.encode("ascii"))
    return A


# --------------------------------------------------------------------------
# sources, stol
# --------------------------------------------------------------------------
def write_sourcefile(path: str, sources: Iterable[Sequence[float]]) -> None:
    """Write a source list: one ``X Y Z weight lambda_m`` line per source.

    X, Y, Z is the source position (metres, relative to the sample); the
    beam travels from the source towards the sample.
    """
    lines = []
    for src in sources:
        vals = [float(v) for v in src]
        if not 3 <= len(vals) <= 5:
            raise ValueError("a source needs 3 to 5 columns")
        lines.append(" ".join("%.10g" % v for v in vals) + "\n")
    _atomic_write(path, "".join(lines).encode("ascii"))


def write_stol_file(path: str, n: int = 40, stol_max: float = 1.0) -> None:
    """Write a smooth ``stol F`` table (stol in 1/Angstrom)."""
    stol = np.linspace(0.0, stol_max, n)
    F = 2.57 * np.exp(-((stol - 0.3) ** 2) / 0.02) + 1.0 * np.exp(-stol * 3.0)
    lines = ["%.6f %.6f\n" % (s, f) for s, f in zip(stol, F)]
    _atomic_write(path, "".join(lines).encode("ascii"))


# --------------------------------------------------------------------------
# SMV
# --------------------------------------------------------------------------
def _fmt(v) -> str:
    if isinstance(v, float):
        return "%.10g" % v
    return str(v)


def write_smv(path: str, data: np.ndarray, fields: Mapping[str, object]) -> None:
    """Write an SMV file: 512-byte header + little-endian uint16 pixels.

    ``data`` has shape (spixels, fpixels).  ``fields`` are written after the
    fixed HEADER_BYTES/DIM/BYTE_ORDER/TYPE/SIZE1/SIZE2 keys, in the given order.
    """
    data = np.asarray(data)
    if data.ndim != 2:
        raise ValueError("SMV data must be 2-D (slow, fast)")
    s, f = data.shape
    head = "{\nHEADER_BYTES=512;\nDIM=2;\nBYTE_ORDER=little_endian;\nTYPE=unsigned_short;\n"
    head += "SIZE1=%d;\nSIZE2=%d;\n" % (f, s)
    for key, val in fields.items():
        head += "%s=%s;\n" % (key, _fmt(val))
    head += "}\f"
    raw = head.encode("ascii")
    if len(raw) > 512:
        raise ValueError("SMV header longer than 512 bytes")
    raw = raw + b" " * (512 - len(raw))
    body = np.ascontiguousarray(data, dtype="<u2").tobytes(order="C")
    _atomic_write(path, raw + body)


def write_smv_mask(
    path: str,
    fpixels: int,
    spixels: int,
    pixel_mm: float,
    pattern: str = "block_and_stripes",
    header_extras: Mapping[str, object] | None = None,
) -> np.ndarray:
    """Write an SMV mask (1 = use pixel, 0 = skip).  Returns the mask array.

    Patterns: ``block_and_stripes`` (a rectangular hole, every 7th column and
    every 11th row masked), ``checker`` (8x8 checkerboard), ``none`` (all 1).
    """
    m = np.ones((spixels, fpixels), dtype=np.uint16)
    if pattern == "block_and_stripes":
        m[spixels // 4: spixels // 2, fpixels // 3: (2 * fpixels) // 3] = 0
        m[:, ::7] = 0
        m[::11, :] = 0
    elif pattern == "checker":
        ss, ff = np.indices(m.shape)
        m[((ss // 8) + (ff // 8)) % 2 == 1] = 0
    elif pattern != "none":
        raise ValueError("unknown mask pattern %r" % pattern)
    fields = {"PIXEL_SIZE": float(pixel_mm)}
    fields.update(header_extras or {})
    write_smv(path, m, fields)
    return m


def write_smv_header_image(
    path: str,
    fpixels: int,
    spixels: int,
    pixel_mm: float,
    distance_mm: float,
    wavelength_A: float,
    beam_x_mm: float,
    beam_y_mm: float,
    extras: Mapping[str, object] | None = None,
    seed: int = 0,
) -> None:
    """Write an SMV image whose header carries geometry for ``-img``.

    The pixel data are seeded random counts (nanoBragg reads but ignores them).
    """
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 200, size=(spixels, fpixels), dtype=np.uint16)
    fields = {
        "PIXEL_SIZE": float(pixel_mm),
        "DISTANCE": float(distance_mm),
        "WAVELENGTH": float(wavelength_A),
        "BEAM_CENTER_X": float(beam_x_mm),
        "BEAM_CENTER_Y": float(beam_y_mm),
    }
    fields.update(extras or {})
    write_smv(path, data, fields)


def pix0_from_beam(fdet, sdet, beam, Fbeam_mm, Sbeam_mm, distance_mm):
    """pix0 (mm) for a beam-pivot detector: -F*fdet - S*sdet + distance*beam."""
    f = np.asarray(fdet, float)
    s = np.asarray(sdet, float)
    b = np.asarray(beam, float)
    return -Fbeam_mm * f - Sbeam_mm * s + distance_mm * b


def unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=float)
    return v / np.linalg.norm(v)
