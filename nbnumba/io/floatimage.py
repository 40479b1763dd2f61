"""Raw float images (``-floatfile``): 4-byte floats, native byte order, no
header, fast index varying fastest -- nanoBragg's ``floatimage.bin``."""

from __future__ import annotations

import numbers
import os
from typing import Tuple

import numpy as np

from nbnumba.errors import InputFileError
from nbnumba.io._args import IOArgumentError, as_image, path_name
from nbnumba.io.atomic import atomic_open
from nbnumba.io.smv import format_g

__all__ = ["write_float_image", "read_float_image"]


def write_float_image(path, image: np.ndarray) -> None:
    """Write ``image`` (shape ``(S, F)``) as raw native float32, atomically.

    NaN and infinite pixels are written as they are (a ``-c_parity`` image may
    hold them, as nanoBragg's does).  Refused with :class:`IOArgumentError`:
    an image that is not 2-D or has no pixels, is not real numbers (complex
    values would lose their imaginary part), holds a finite value that float32
    cannot hold (|v| > 3.4e38 would be written as inf), or is a tensor that
    requires grad (pass ``.detach()``)."""
    name = path_name(path)
    img = as_image(image, "float image")
    if img.ndim != 2:
        raise IOArgumentError(f"float image must be 2-D (S, F), got shape {img.shape}")
    if img.size == 0:
        raise IOArgumentError(f"float image has no pixels (shape {img.shape})")
    if img.dtype.kind not in "biuf":
        raise IOArgumentError(f"float image must hold real numbers, got {img.dtype}")
    if img.dtype.kind == "f" and img.dtype.itemsize <= 4:
        data = np.ascontiguousarray(img, dtype=np.float32)
    else:
        with np.errstate(over="ignore"):    # (checked just below)
            data = np.ascontiguousarray(img, dtype=np.float32)
        lost = np.isinf(data) & np.isfinite(img)
        if lost.any():
            s, f = (int(v) for v in np.argwhere(lost)[0])
            raise IOArgumentError(
                f"float image pixel ({s}, {f}) = {format_g(img[s, f])} is beyond float32 "
                "range (|v| <= 3.40282e+38): it would be written as inf")
    with atomic_open(name, "wb") as fh:
        # the array's own buffer: no bytes copy of the image (W3: 25 MB of peak RSS)
        fh.write(memoryview(data).cast("B"))


def _shape(shape) -> Tuple[int, int]:
    """(S, F) as two positive ints, or IOArgumentError naming ``shape``."""
    try:
        s, f = shape
    except (TypeError, ValueError):
        raise IOArgumentError(f"shape must be (S, F), two pixel counts, got {shape!r:.60}") from None
    out = []
    for v in (s, f):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or int(v) < 1:
            raise IOArgumentError(f"shape must be (S, F), two whole pixel counts >= 1, "
                                  f"got {shape!r:.60}")
        out.append(int(v))
    return out[0], out[1]


def read_float_image(path, shape: Tuple[int, int]) -> np.ndarray:
    """Read a raw float32 image of ``shape = (S, F)``; the file size must match."""
    name = path_name(path)
    s, f = _shape(shape)
    need = 4 * s * f
    try:
        size = os.path.getsize(name)
        if size != need:
            raise InputFileError(
                f"{name}: size {size} bytes does not match a {s}x{f} float32 image "
                f"({need} bytes)"
            )
        data = np.fromfile(name, dtype=np.float32, count=s * f)
    except OSError as exc:
        raise InputFileError(f"{name}: cannot read: {exc.strerror or exc}") from None
    if data.size != s * f:      # (the file shrank after its size was read)
        raise InputFileError(f"{name}: size changed while it was read")
    return data.reshape(s, f)
