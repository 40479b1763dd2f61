"""Binary PGM (P5) preview images as nanoBragg writes them.

Header: ``P5\\n<F> <S>\\n# pixels scaled by <pgm_scale %g>\\n255\\n`` then one
byte per pixel, fast index varying fastest.
"""

from __future__ import annotations

import numbers
import re
from typing import Optional, Sequence, Tuple

import numpy as np

from nbnumba.errors import InputFileError
from nbnumba.io._args import IOArgumentError, as_image, path_name, read_bytes
from nbnumba.io.atomic import atomic_open
from nbnumba.io.smv import format_g

__all__ = ["pgm_header", "pgm_bytes_from_float", "write_pgm", "read_pgm"]


def _scale(pgm_scale) -> float:
    """pgm_scale as a float, or IOArgumentError naming it (NaN and inf are kept:
    nanoBragg's arithmetic gives them meaning, 0 and 255 pixels)."""
    if not isinstance(pgm_scale, (str, bytes, complex)):
        try:
            return float(pgm_scale)
        except (TypeError, ValueError, OverflowError):     # (10**400: OverflowError)
            pass
    raise IOArgumentError(f"pgm_scale must be a number, got {pgm_scale!r:.40}")


def pgm_header(fpixels: int, spixels: int, pgm_scale: float) -> bytes:
    """The text nanoBragg puts before the PGM pixels (``%lg`` is ``%g``)."""
    return (
        "P5\n%d %d\n# pixels scaled by %s\n255\n"
        % (int(fpixels), int(spixels), format_g(_scale(pgm_scale)))
    ).encode("ascii")


def _roi_mask(shape: Tuple[int, int], roi) -> Optional[np.ndarray]:
    """True inside ``roi = (xmin, xmax, ymin, ymax)`` (inclusive; x = fast,
    y = slow), as in the C test ``fpixel < roi_xmin || fpixel > roi_xmax ||
    spixel < roi_ymin || spixel > roi_ymax`` -> outside.  ``None`` = whole image."""
    if roi is None:
        return None
    try:
        vals = list(roi)
    except TypeError:
        vals = None
    if (vals is None or len(vals) != 4
            or any(isinstance(v, bool) or not isinstance(v, numbers.Real)
                   or not np.isfinite(v) or int(v) != v for v in vals)):
        raise IOArgumentError(f"roi must be 4 whole numbers (xmin, xmax, ymin, ymax), "
                              f"got {roi!r:.60}")
    xmin, xmax, ymin, ymax = (int(v) for v in vals)
    s, f = shape
    fidx = np.arange(f)
    sidx = np.arange(s)
    fin = (fidx >= xmin) & (fidx <= xmax)
    sin = (sidx >= ymin) & (sidx <= ymax)
    return sin[:, None] & fin[None, :]


def pgm_bytes_from_float(
    float_image: np.ndarray, pgm_scale: float, roi: Optional[Sequence[int]] = None
) -> np.ndarray:
    """8-bit PGM pixels from the float image, with nanoBragg's arithmetic.

    ``test = float_pixel * pgm_scale`` (in double), clipped at 255, then
    C's ``(unsigned char)`` conversion as compiled on x86-64: truncation toward
    zero to a 32-bit int whose low byte is kept (so -1.5 -> 255; NaN and
    values outside the int range -> 0).  Pixels outside ``roi`` stay 0 (the
    C buffer is zero-initialised and never written there).
    """
    img = as_image(float_image, "float image")
    if img.ndim != 2:
        raise IOArgumentError(f"float image must be 2-D (S, F), got shape {img.shape}")
    if img.dtype.kind not in "biuf":
        raise IOArgumentError(f"float image must hold real numbers, got {img.dtype}")
    scale = _scale(pgm_scale)
    # an overflow to inf is clipped at 255 below, as the C's double does:
    # no RuntimeWarning on the user's stderr (-pgmscale 1e308); 0 * inf is
    # NaN, stored as 0 (ok below), as the C's conversion does
    with np.errstate(over="ignore", invalid="ignore"):
        test = img.astype(np.float64) * scale
    test = np.where(test > 255.0, 255.0, test)
    ok = np.isfinite(test) & (test > -2147483649.0) & (test < 2147483648.0)
    t = np.trunc(np.where(ok, test, 0.0)).astype(np.int64)
    t = np.where(ok, t, -(2**31))
    out = (t & 0xFF).astype(np.uint8)
    mask = _roi_mask(img.shape, roi)
    if mask is not None:
        out[~mask] = 0
    return out


def write_pgm(path, image_uint8: np.ndarray, pgm_scale: float) -> None:
    """Write a P5 PGM exactly like nanoBragg (atomically)."""
    name = path_name(path)
    img = as_image(image_uint8, "PGM image")
    if img.ndim != 2 or img.dtype != np.uint8:
        raise IOArgumentError(f"PGM image must be 2-D uint8, got {img.dtype} {img.shape}")
    if img.size == 0:
        raise IOArgumentError(f"PGM image has no pixels (shape {img.shape})")
    s, f = img.shape
    head = pgm_header(f, s, pgm_scale)
    data = np.ascontiguousarray(img)
    with atomic_open(name, "wb") as fh:
        fh.write(head)
        fh.write(memoryview(data).cast("B"))


_PGM_TOKEN = re.compile(rb"(?:\s|#[^\n]*\n)*([0-9]+)")
_SCALE_RE = re.compile(rb"#\s*pixels scaled by\s*(\S+)")


def read_pgm(path) -> Tuple[np.ndarray, Optional[float]]:
    """Read an 8-bit binary PGM.  Returns ``(image uint8 (S, F), pgm_scale)``;
    ``pgm_scale`` comes from nanoBragg's comment line, ``None`` if absent."""
    name, raw = read_bytes(path)
    if not raw.startswith(b"P5"):
        raise InputFileError(f"{name}: not a binary PGM file (no 'P5' magic)")
    pos = 2
    nums = []
    scale = None
    for _ in range(3):
        m = _PGM_TOKEN.match(raw, pos)
        if m is None:
            raise InputFileError(f"{name}: malformed PGM header")
        sm = _SCALE_RE.search(raw, pos, m.start(1))
        if sm is not None:
            try:
                scale = float(sm.group(1))
            except ValueError:
                scale = None
        nums.append(int(m.group(1)))
        pos = m.end()
    width, height, maxval = nums
    if maxval > 255:
        raise InputFileError(f"{name}: only 8-bit PGM supported (maxval {maxval})")
    pos += 1  # the single whitespace byte after maxval
    need = width * height
    have = len(raw) - pos
    if have < need:
        raise InputFileError(
            f"{name}: truncated PGM data: expected {need} bytes, found {have}"
        )
    img = np.frombuffer(raw, dtype=np.uint8, count=need, offset=pos).reshape(height, width)
    return img.copy(), scale
