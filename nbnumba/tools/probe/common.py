"""Constants, formatting and file helpers shared by the probe's modules."""
from __future__ import annotations

import json
import math
import os
import re
from typing import List

import numpy as np

from nbnumba.tools._common import ToolError
from nbnumba.tracefmt import format_value


PROG = "nbnumba-probe"
# usage errors exit 2 like the nbnumba CLI; a failed runner is 6
EXIT_OK, EXIT_USAGE, EXIT_RUNNER, EXIT_DIVERGED, EXIT_IO = 0, 2, 6, 3, 5
RTD = 180.0 / math.pi

GEOMETRY_KEYS = {
    "pix0_vector_meters", "pixel_pos_meters", "R_distance_meters", "omega_pixel_sr",
    "close_distance_meters", "obliquity_factor", "diffracted_vec", "scattering_vec_A_inv",
    "polar", "omega_pixel", "cos_2theta",
}

DEFECTS = {
    "PIX0": (
        "C-DESIGN-FLAW-003 / NANO-C-BUG-002 (and NANO-C-BUG-001)",
        "nanoBragg.c ignores -pix0_vector/-pix0_vector_mm (beam pivot): it recomputes the "
        "detector origin pix0 from -Xbeam/-Ybeam (Fbeam/Sbeam) and the beam vector; the port "
        "honours the given vector (in mm for -pix0_vector_mm)",
    ),
    "PHI0": (
        "C-PARITY-001",
        "nanoBragg.c skips the spindle rotation when φ == 0 and reuses the cell rotated for the "
        "last φ step it ran (the previous pixel's last step), so phi_tic=0 uses the last step's "
        "cell and its k_frac equals the last step's; the port rotates by 0 (the unrotated cell)",
    ),
    "PHICENTRE": (
        "docs/quirks.md #28",
        "nanoBragg.c samples each φ step at its start, φ0 + i·step; the port's default mode "
        "centres the points in the oscillation (the steps' midpoints, φ0 + (i + ½)·step), so "
        "the cell of every φ step differs",
    ),
    "CPARITY": (
        "-c_parity",
        "another nanoBragg.c behaviour that the port reproduces only under -c_parity "
        "(see docs/quirks.md)",
    ),
}






def _g(x) -> str:
    """A trace value as the C prints it (tracefmt.format_value); None as a dash."""
    return "—" if x is None else format_value(x)


def _s(x, digits=4) -> str:
    if x is None:
        return "—"
    x = float(x)
    if not math.isfinite(x):
        return _g(x)
    return f"%.{digits}g" % x


def _write(path: str, text: str) -> None:
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(text)
    except OSError as exc:
        raise ToolError(f"cannot write {path}: {exc.strerror or exc}", EXIT_IO) from None


def _json(path: str, obj) -> None:
    _write(path, json.dumps(obj, indent=2, ensure_ascii=False, default=_jsonable) + "\n")


def _jsonable(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, tuple):
        return list(o)
    # (str(o) wrote an object's repr with its address into the bundle:
    # roi_metadata.json's 30 detector trace lines)
    raise TypeError("%s is not a JSON value" % type(o).__name__)


def c_trace_lines(text: str) -> List[str]:
    """The ``TRACE_C:`` / ``TRACE_C_*`` lines of a C stdout (TRACE_CONFIG excluded)."""
    return [ln for ln in text.splitlines() if re.match(r"^TRACE_C(:|_)", ln)]


def _trace_value(trace, name: str):
    """Values of a key, or of ``PHI[phi_tic=T]#n.field`` (a per-φ field) in a parsed Trace."""
    m = re.match(r"^PHI\[phi_tic=(-?\d+)\](?:#(\d+))?\.(\w+)$", name)
    if not m:
        return trace.get(name)
    tic, occ, field = int(m.group(1)), int(m.group(2) or 1), m.group(3)
    seen = 0
    for row in trace.phi:
        if int(row.get("phi_tic", -1)) == tic:
            seen += 1
            if seen == occ:
                return [row[field]] if field in row else None
    return None
