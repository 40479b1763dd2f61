"""nbnumba-expt: the nanoBragg flags that reproduce a DIALS experiment's geometry.

``python -m nbnumba.expt refined.expt [--experiment I] [--panel P] [--image N]
[--mat-out FILE]`` prints one shell-quoted line of flags (custom vectors in the
experiment list's own lab frame) and writes the crystal as a ``-mat`` file.
:func:`flags_from_expt` is the same translation for Python callers.

Conventions, as read in dxtbx's source (``src/dxtbx/model``) and DIALS'
``documentation/conventions.rst``:

* ``beam.direction`` points from the sample to the source (``beam.h``:
  ``get_s0() = -direction / wavelength``), so nanoBragg's ``-beam_vector`` (the
  propagation direction) is ``-direction``.  Wavelength in Angstrom.
* The crystal's setting matrix is ``A = [a; b; c]^-1`` (``crystal.h``: rows
  real_space_a, b, c), so A's columns are a*, b*, c* (1/Angstrom).
* The goniostat rotation is ``R = S R'(phi) F`` (``goniometer.h``;
  conventions.rst "The DXTBX goniometer model"), ``r_phi = S R'(phi) F A h``,
  R' right-handed about the datum axis ``rotation_axis``.  Since
  ``S R'(e, phi) = R'(S e, phi) S``, nanoBragg gets ``-spindle_axis S e`` and the
  crystal ``S F A`` at phi = 0, then ``-phi`` turns it (nanoBragg's rotation is
  right-handed too).  A multi-axis goniometer (``axes``, ``angles``,
  ``scan_axis``) gives ``F = R_{k-1}...R_0`` and ``S = R_{n-1}...R_{k+1}``
  (``multi_axis_goniometer.h``), k the scan axis, angles in degrees.
* Image N starts at ``oscillation[0] + (N - image_range[0]) * width`` degrees
  (``scan.h``: ``get_image_oscillation``); both the legacy ``oscillation``
  pair and the newer ``properties`` table are read.
* A panel's ``fast_axis``, ``slow_axis`` and ``origin`` (mm) are in its
  parent group's frame (``panel.cc`` writes the local frame); with a
  ``hierarchy`` the lab frame is composed as ``virtual_panel.h`` does:
  ``d = [pf ps pn] d_local + parent_origin``.  ``origin`` is the outer corner
  of the first pixel, as nanoBragg's ``-pix0_vector_mm``.
* ``polarization_normal`` is the normal of the plane holding the E vector and
  the beam, ``polarization_fraction`` f the fraction of intensity polarised in
  that plane (DIALS' polarisation factor); that is nanoBragg's ``-polar_vector``
  (``normal x beam``) with the Kahn factor ``-polar 2f - 1``.

nanoBragg models one flat, square-pixelled panel: a multi-panel detector is
rendered one panel at a time (``--panel``).  Beam divergence, crystal
mosaicity and scan-varying models are not translated (a note on stderr says
so); add ``-divergence``, ``-mosaic``/``-mosaic_dom`` and ``-phisteps`` by hand.
"""
from __future__ import annotations

import json
import math
import os
import shlex
import sys
from typing import List, Optional, Tuple

import numpy as np

from nbnumba.errors import InputFileError, NBError, UsageError, quiet_broken_pipes
from nbnumba.io._args import read_bytes
from nbnumba.io.atomic import OutputFileError, atomic_write_bytes, check_not_input

__all__ = ["flags_from_expt", "translate", "write_mat", "main"]

PROG = "nbnumba-expt"

USAGE = """\
usage: nbnumba-expt EXPT [--experiment I] [--panel P] [--image N] [--mat-out FILE]

Print the nanoBragg flags (one shell-quoted line) that reproduce the geometry of
experiment I (default 0) of a DIALS experiment list: beam, panel P (default 0)
as custom vectors in the file's lab frame, the crystal as a -mat file written to
FILE (default: EXPT with the suffix .mat) and, for a rotation scan, the spindle
axis with -phi/-osc of image N (default: the scan's first image).  Stills get
no -phi/-osc.  Notes on what is not translated go to stderr.  Bad input: one
line naming the file and key, exit 2."""

#: an axis whose length is this far from 1 is refused (dxtbx writes unit axes)
UNIT_TOL = 1e-6
#: rotation matrices: |M M^T - 1| and |det - 1| tolerance
ROT_TOL = 1e-6


class _Ctx:
    """The file name, for messages: ``NAME: key.path: problem``."""

    def __init__(self, name: str):
        self.name = name

    def fail(self, where: str, msg: str) -> InputFileError:
        return InputFileError("%s: %s: %s" % (self.name, where, msg) if where
                              else "%s: %s" % (self.name, msg))


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _get(ctx: _Ctx, d, key, where: str):
    if not isinstance(d, dict):
        raise ctx.fail(where, "expected a JSON object, got %s" % type(d).__name__)
    if key not in d:
        raise ctx.fail(where, "missing key '%s'" % key)
    return d[key]


def _sub(where: str, key) -> str:
    return "%s.%s" % (where, key) if where else str(key)


def _num(ctx, v, where) -> float:
    if not _is_num(v):
        raise ctx.fail(where, "expected a number, got %s" % json.dumps(v)[:40])
    x = float(v)
    if not math.isfinite(x):
        raise ctx.fail(where, "non-finite number %r" % x)
    return x


def _int(ctx, v, where) -> int:
    if not isinstance(v, int) or isinstance(v, bool):
        raise ctx.fail(where, "expected an integer, got %s" % json.dumps(v)[:40])
    return v


def _nums(ctx, v, n, where) -> np.ndarray:
    if not isinstance(v, list) or len(v) != n:
        got = ("a list of %d" % len(v)) if isinstance(v, list) else json.dumps(v)[:40]
        raise ctx.fail(where, "expected a list of %d numbers, got %s" % (n, got))
    return np.array([_num(ctx, x, "%s[%d]" % (where, i)) for i, x in enumerate(v)])


def _unit(ctx, v, where) -> np.ndarray:
    u = _nums(ctx, v, 3, where)
    n = float(np.sqrt(u @ u))
    if n == 0.0:
        raise ctx.fail(where, "degenerate (zero) vector")
    if abs(n - 1.0) > UNIT_TOL:
        raise ctx.fail(where, "not a unit vector (length %.9g)" % n)
    return u / n


def _rotation(ctx, v, where) -> np.ndarray:
    m = _nums(ctx, v, 9, where).reshape(3, 3)     # row-major, as dxtbx's mat3
    if (np.abs(m @ m.T - np.eye(3)).max() > ROT_TOL
            or abs(np.linalg.det(m) - 1.0) > ROT_TOL):
        raise ctx.fail(where, "not a proper rotation matrix (orthonormal, det +1)")
    return m


def _axis_angle(axis: np.ndarray, deg: float) -> np.ndarray:
    """Right-handed rotation matrix about the unit ``axis`` by ``deg`` degrees
    (scitbx's axis_and_angle_as_matrix)."""
    t = math.radians(deg)
    c, s = math.cos(t), math.sin(t)
    x, y, z = axis
    K = np.array([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]])
    return c * np.eye(3) + s * K + (1.0 - c) * np.outer(axis, axis)


def _model(ctx, root, exp, name, index_where, required):
    """The model dict that experiment ``exp`` points to by index (or None)."""
    ref = exp.get(name)
    if ref is None:
        if required:
            raise ctx.fail(index_where, "missing key '%s'" % name)
        return None, ""
    if isinstance(ref, str):
        raise ctx.fail(_sub(index_where, name), "models given by file name are not "
                       "supported; combine them into one experiment list first")
    i = _int(ctx, ref, _sub(index_where, name))
    models = _get(ctx, root, name, "")
    if not isinstance(models, list):
        raise ctx.fail(name, "expected a list of models")
    if not 0 <= i < len(models):
        raise ctx.fail(_sub(index_where, name),
                       "index %d out of range (%d %s models)" % (i, len(models), name))
    where = "%s[%d]" % (name, i)
    if not isinstance(models[i], dict):
        raise ctx.fail(where, "expected a JSON object")
    return models[i], where


def _frame(ctx, node, where, required=True):
    """(fast, slow, origin) of a panel or group node in its parent's frame."""
    keys = ("fast_axis", "slow_axis", "origin")
    if not required and not any(k in node for k in keys):
        return np.array([1.0, 0, 0]), np.array([0, 1.0, 0]), np.zeros(3)   # dxtbx's default
    f = _unit(ctx, _get(ctx, node, "fast_axis", where), _sub(where, "fast_axis"))
    s = _unit(ctx, _get(ctx, node, "slow_axis", where), _sub(where, "slow_axis"))
    o = _nums(ctx, _get(ctx, node, "origin", where), 3, _sub(where, "origin"))
    if abs(f @ s) > UNIT_TOL:
        raise ctx.fail(where, "fast_axis and slow_axis are not perpendicular "
                       "(cos = %.3g)" % (f @ s))
    return f, s, o


def _compose(parent, local):
    """dxtbx's VirtualPanelFrame.update_global_frame: the local frame carried
    into the lab by the parent's (fast, slow, normal) and origin."""
    pf, ps, po = parent
    P = np.column_stack((pf, ps, np.cross(pf, ps)))
    return P @ local[0], P @ local[1], P @ local[2] + po


def _panel_frames(ctx, det, dwhere) -> Tuple[list, list]:
    """Lab-frame (fast, slow, origin) of every panel, and the panel dicts."""
    panels = _get(ctx, det, "panels", dwhere)
    pwhere = _sub(dwhere, "panels")
    if not isinstance(panels, list) or not panels:
        raise ctx.fail(pwhere, "expected a non-empty list of panels")
    for i, p in enumerate(panels):
        if not isinstance(p, dict):
            raise ctx.fail("%s[%d]" % (pwhere, i), "expected a JSON object")
    hier = det.get("hierarchy")
    if hier is None:
        return [_frame(ctx, p, "%s[%d]" % (pwhere, i)) for i, p in enumerate(panels)], panels
    frames: list = [None] * len(panels)
    ident = (np.array([1.0, 0, 0]), np.array([0, 1.0, 0]), np.zeros(3))

    def walk(node, parent, where, depth):
        if depth > 64:
            raise ctx.fail(where, "hierarchy nested too deeply")
        if not isinstance(node, dict):
            raise ctx.fail(where, "expected a JSON object")
        if "panel" in node:
            i = _int(ctx, node["panel"], _sub(where, "panel"))
            if not 0 <= i < len(panels):
                raise ctx.fail(_sub(where, "panel"), "panel %d out of range (%d panels)"
                               % (i, len(panels)))
            if frames[i] is not None:
                raise ctx.fail(_sub(where, "panel"), "panel %d listed twice" % i)
            frames[i] = _compose(parent, _frame(ctx, panels[i], "%s[%d]" % (pwhere, i)))
            return
        here = _compose(parent, _frame(ctx, node, where, required=False))
        children = node.get("children", [])
        if not isinstance(children, list):
            raise ctx.fail(_sub(where, "children"), "expected a list")
        for j, child in enumerate(children):
            walk(child, here, "%s.children[%d]" % (where, j), depth + 1)

    walk(hier, ident, _sub(dwhere, "hierarchy"), 0)
    missing = [i for i, f in enumerate(frames) if f is None]
    if missing:
        raise ctx.fail(_sub(dwhere, "hierarchy"), "panel %d is not in the hierarchy" % missing[0])
    return frames, panels


def _scan_angles(ctx, scan, swhere, image):
    """(image number, start angle, width) in degrees for ``image`` (None: first)."""
    ir = _get(ctx, scan, "image_range", swhere)
    if not isinstance(ir, list) or len(ir) != 2:
        raise ctx.fail(_sub(swhere, "image_range"), "expected [first, last]")
    first = _int(ctx, ir[0], _sub(swhere, "image_range") + "[0]")
    last = _int(ctx, ir[1], _sub(swhere, "image_range") + "[1]")
    if last < first:
        raise ctx.fail(_sub(swhere, "image_range"), "last image %d before first %d" % (last, first))
    n = last - first + 1
    if "properties" in scan:
        props = scan["properties"]
        pw = _sub(swhere, "properties")
        osc = _get(ctx, props, "oscillation", pw)
        ow = _sub(pw, "oscillation")
        if not isinstance(osc, list) or len(osc) != n:
            raise ctx.fail(ow, "expected a list of %d start angles (one per image)" % n)
        starts = [_num(ctx, x, "%s[%d]" % (ow, i)) for i, x in enumerate(osc)]
        if n > 1:
            start, width = starts[0], starts[1] - starts[0]
        else:
            w = _get(ctx, props, "oscillation_width", pw)
            if not isinstance(w, list) or len(w) != 1:
                raise ctx.fail(_sub(pw, "oscillation_width"), "expected a list of 1 width")
            start, width = starts[0], _num(ctx, w[0], _sub(pw, "oscillation_width") + "[0]")
    else:
        start, width = _nums(ctx, _get(ctx, scan, "oscillation", swhere), 2,
                             _sub(swhere, "oscillation"))
    if image is None:
        image = first
    if not first <= image <= last:
        raise UsageError("--image %d is outside the scan's image range %d..%d (%s)"
                         % (image, first, last, ctx.name))
    return image, float(start + (image - first) * width), float(width)


def _goniometer(ctx, gon, gwhere):
    """(datum axis e, fixed F, setting S) of a single- or multi-axis goniometer."""
    if all(k in gon for k in ("axes", "angles", "scan_axis")):
        axes, angles = gon["axes"], gon["angles"]
        if not isinstance(axes, list) or not axes:
            raise ctx.fail(_sub(gwhere, "axes"), "expected a non-empty list of axes")
        if not isinstance(angles, list) or len(angles) != len(axes):
            raise ctx.fail(_sub(gwhere, "angles"), "expected %d angles (one per axis)" % len(axes))
        ax = [_unit(ctx, a, "%s.axes[%d]" % (gwhere, i)) for i, a in enumerate(axes)]
        an = [_num(ctx, a, "%s.angles[%d]" % (gwhere, i)) for i, a in enumerate(angles)]
        k = _int(ctx, gon["scan_axis"], _sub(gwhere, "scan_axis"))
        if not 0 <= k < len(ax):
            raise ctx.fail(_sub(gwhere, "scan_axis"), "index %d out of range (%d axes)" % (k, len(ax)))
        F, S = np.eye(3), np.eye(3)
        for i in range(k):
            F = _axis_angle(ax[i], an[i]) @ F
        for i in range(k + 1, len(ax)):
            S = _axis_angle(ax[i], an[i]) @ S
        return ax[k], F, S
    e = _unit(ctx, _get(ctx, gon, "rotation_axis", gwhere), _sub(gwhere, "rotation_axis"))
    F = (_rotation(ctx, gon["fixed_rotation"], _sub(gwhere, "fixed_rotation"))
         if "fixed_rotation" in gon else np.eye(3))
    S = (_rotation(ctx, gon["setting_rotation"], _sub(gwhere, "setting_rotation"))
         if "setting_rotation" in gon else np.eye(3))
    return e, F, S


def _finite_word(a: str) -> bool:
    """False for a word that is an infinite or NaN number."""
    try:
        return math.isfinite(float(a))
    except ValueError:
        return True


def _fmt(x: float) -> str:
    """Shortest text that reads back as the same double."""
    return repr(float(x) + 0.0)           # (+ 0.0: no "-0.0")


def _vec(v) -> List[str]:
    return [_fmt(x) for x in v]


def translate(path, experiment: int = 0, panel: int = 0, image: Optional[int] = None,
              mat_out=None) -> Tuple[List[str], np.ndarray, List[str]]:
    """``(argv, mat, notes)``: :func:`flags_from_expt` plus the notes (one line
    each) on what the flags leave out."""
    with np.errstate(all="ignore"):        # overflows are refused, one line, at the end
        return _translate(path, experiment, panel, image, mat_out)


def _translate(path, experiment, panel, image, mat_out):
    name, raw = read_bytes(path)
    ctx = _Ctx(name)
    try:
        root = json.loads(raw.decode("utf-8"),
                          parse_constant=lambda c: float(c))   # NaN/Infinity: refused below
    except (UnicodeDecodeError, ValueError) as exc:
        raise ctx.fail("", "not a JSON experiment list (%s)" % str(exc).splitlines()[0][:80]) from None
    except RecursionError:
        raise ctx.fail("", "not a JSON experiment list (nested too deeply)") from None
    if not isinstance(root, dict):
        raise ctx.fail("", "not a JSON experiment list (top level is not an object)")
    if root.get("__id__", "ExperimentList") != "ExperimentList":
        raise ctx.fail("__id__", "expected 'ExperimentList', got %s" % json.dumps(root["__id__"])[:40])
    exps = _get(ctx, root, "experiment", "")
    if not isinstance(exps, list) or not exps:
        raise ctx.fail("experiment", "expected a non-empty list of experiments")
    if not isinstance(experiment, int) or not 0 <= experiment < len(exps):
        raise UsageError("--experiment %s is out of range: %s holds %d experiment(s)"
                         % (experiment, name, len(exps)))
    exp = exps[experiment]
    ewhere = "experiment[%d]" % experiment
    if not isinstance(exp, dict):
        raise ctx.fail(ewhere, "expected a JSON object")
    notes: List[str] = []

    beam, bw = _model(ctx, root, exp, "beam", ewhere, True)
    det, dw = _model(ctx, root, exp, "detector", ewhere, True)
    xtal, cw = _model(ctx, root, exp, "crystal", ewhere, True)
    gon, gw = _model(ctx, root, exp, "goniometer", ewhere, False)
    scan, sw = _model(ctx, root, exp, "scan", ewhere, False)

    # ---- beam
    lam = _num(ctx, _get(ctx, beam, "wavelength", bw), _sub(bw, "wavelength"))
    if not lam > 0.0:
        raise ctx.fail(_sub(bw, "wavelength"), "must be > 0 (got %g)" % lam)
    direction = _unit(ctx, _get(ctx, beam, "direction", bw), _sub(bw, "direction"))
    b = -direction                       # dxtbx: sample -> source; nanoBragg: propagation
    argv = ["-lambda", _fmt(lam), "-beam_vector", *_vec(b)]
    if "polarization_normal" in beam or "polarization_fraction" in beam:
        pn = _unit(ctx, _get(ctx, beam, "polarization_normal", bw), _sub(bw, "polarization_normal"))
        pf = _num(ctx, _get(ctx, beam, "polarization_fraction", bw), _sub(bw, "polarization_fraction"))
        if not 0.0 <= pf <= 1.0:
            raise ctx.fail(_sub(bw, "polarization_fraction"), "must be in [0, 1] (got %g)" % pf)
        e_vec = np.cross(pn, b)
        n = float(np.sqrt(e_vec @ e_vec))
        if n < 1e-6:
            raise ctx.fail(_sub(bw, "polarization_normal"), "parallel to the beam")
        argv += ["-polar", _fmt(2.0 * pf - 1.0), "-polar_vector", *_vec(e_vec / n)]
    else:
        notes.append("no polarization in the beam model: nanoBragg's default (Kahn factor 0)")
    for key in ("divergence", "sigma_divergence"):
        if key in beam and _num(ctx, beam[key], _sub(bw, key)) != 0.0:
            notes.append("beam %s %g deg not translated (add -divergence by hand)"
                         % (key, beam[key]))
    if "s0_at_scan_points" in beam:
        notes.append("scan-varying beam (s0_at_scan_points) ignored: the static beam is used")

    # ---- detector: one panel, in the lab frame
    frames, panels = _panel_frames(ctx, det, dw)
    if not isinstance(panel, int) or not 0 <= panel < len(panels):
        raise UsageError("--panel %s is out of range: %s %s has %d panel(s)"
                         % (panel, name, dw, len(panels)))
    if len(panels) > 1:
        notes.append("nanoBragg models one flat panel: these flags render panel %d of %d"
                     % (panel, len(panels)))
    pd, pw = panels[panel], "%s.panels[%d]" % (dw, panel)
    f, s, origin = frames[panel]
    o = np.cross(f, s)
    o /= np.sqrt(o @ o)
    size = _get(ctx, pd, "image_size", pw)
    if not isinstance(size, list) or len(size) != 2:
        raise ctx.fail(_sub(pw, "image_size"), "expected [fast, slow] pixel counts")
    nf = _int(ctx, size[0], _sub(pw, "image_size") + "[0]")
    ns = _int(ctx, size[1], _sub(pw, "image_size") + "[1]")
    if nf < 1 or ns < 1:
        raise ctx.fail(_sub(pw, "image_size"), "pixel counts must be >= 1")
    px = _nums(ctx, _get(ctx, pd, "pixel_size", pw), 2, _sub(pw, "pixel_size"))
    if not (px[0] > 0.0 and px[1] > 0.0):
        raise ctx.fail(_sub(pw, "pixel_size"), "must be > 0")
    if abs(px[0] - px[1]) > 1e-9 * px[0]:
        raise ctx.fail(_sub(pw, "pixel_size"), "%g x %g mm: nanoBragg models square pixels"
                       % (px[0], px[1]))
    argv += ["-fdet_vector", *_vec(f), "-sdet_vector", *_vec(s), "-odet_vector", *_vec(o),
             "-pix0_vector_mm", *_vec(origin)]
    # nanoBragg.c ignores -pix0_vector_mm and rebuilds the origin from the beam
    # centre and distance (docs/quirks.md #2): give those too, so -c_parity and
    # the C place the panel where the port does
    ratio = float(b @ o)
    if ratio > 1e-6:
        t = float(origin @ o) / ratio             # sample to the panel plane along the beam
        hit = t * b - origin
        argv += ["-distance", _fmt(t), "-Xbeam", _fmt(hit @ f), "-Ybeam", _fmt(hit @ s)]
    else:
        notes.append("the beam does not cross this panel's plane: only -pix0_vector_mm places "
                     "it (nanoBragg.c and -c_parity ignore that flag)")
    argv += ["-pixel", _fmt(px[0]), "-detpixels_x", str(nf), "-detpixels_y", str(ns)]
    thick = _num(ctx, pd["thickness"], _sub(pw, "thickness")) if "thickness" in pd else 0.0
    mu = _num(ctx, pd["mu"], _sub(pw, "mu")) if "mu" in pd else 0.0
    if thick < 0.0 or mu < 0.0:
        raise ctx.fail(pw, "thickness and mu must be >= 0")
    if thick > 0.0 and mu > 0.0:
        # dxtbx: mm and 1/mm; nanoBragg: sensor thickness and attenuation length in um
        argv += ["-detector_thick", _fmt(thick * 1000.0), "-detector_abs", _fmt(1000.0 / mu)]
    elif thick > 0.0:
        notes.append("panel thickness without mu: no sensor absorption or parallax modelled")

    # ---- crystal and goniometer
    rows = np.array([_nums(ctx, _get(ctx, xtal, k, cw), 3, _sub(cw, k))
                     for k in ("real_space_a", "real_space_b", "real_space_c")])
    lengths = np.sqrt(((rows / np.abs(rows).max(axis=1, initial=1e-300)[:, None]) ** 2).sum(axis=1)) \
        * np.abs(rows).max(axis=1)                 # (scaled: no overflow of 1e200 squared)
    if not (lengths > 0).all() or abs(np.linalg.det(rows / lengths[:, None])) < 1e-9:
        raise ctx.fail(cw, "degenerate cell: real_space_a, b, c are (nearly) coplanar")
    A = np.linalg.inv(rows)              # columns a*, b*, c* (dxtbx's setting matrix)
    for key, what in (("mosaicity", "mosaicity"), ("ML_half_mosaicity_deg", "mosaic model")):
        if xtal.get(key):
            notes.append("crystal %s not translated (add -mosaic/-mosaic_dom by hand)" % what)
    if "A_at_scan_points" in xtal:
        notes.append("scan-varying crystal (A_at_scan_points) ignored: the static A is used")

    rotation = []
    M = A
    if gon is not None:
        e, F, S = _goniometer(ctx, gon, gw)
        if "setting_rotation_at_scan_points" in gon:
            notes.append("scan-varying goniometer ignored: the static setting rotation is used")
        M = S @ F @ A                     # the crystal at phi = 0, lab frame
        if scan is not None:
            img, start, width = _scan_angles(ctx, scan, sw, image)
            rotation = ["-spindle_axis", *_vec(S @ e), "-phi", _fmt(start), "-osc", _fmt(width)]
        elif image is not None:
            raise UsageError("--image: %s %s has no scan" % (name, ewhere))
    else:
        if scan is not None:
            _scan_angles(ctx, scan, sw, image)   # checks --image against its range
            notes.append("no goniometer: rendered as a still (the scan's angles are not used)")
        elif image is not None:
            raise UsageError("--image: %s %s has no scan" % (name, ewhere))
    mat = lam * M                         # MOSFLM -mat: row i = component i of a*, b*, c*, times lambda
    if not np.isfinite(mat).all() or not all(map(_finite_word, argv)):
        raise ctx.fail(ewhere, "the geometry over- or underflows double precision")
    if mat_out is None:
        mat_out = os.path.splitext(name)[0] + ".mat"
    argv += ["-mat", os.fspath(mat_out)] + rotation
    return argv, mat, notes


def flags_from_expt(path, experiment: int = 0, panel: int = 0, image: Optional[int] = None,
                    mat_out=None) -> Tuple[List[str], np.ndarray]:
    """nanoBragg flags for one experiment of a DIALS experiment list.

    Returns ``(argv, mat)``: ``argv`` the flags as a list of words, whose
    ``-mat`` names ``mat_out`` (default: ``path`` with the suffix ``.mat``);
    ``mat`` the 3x3 matrix that file must hold (:func:`write_mat`), laid out
    as in the file: row i = component i of a*, b*, c* times the wavelength,
    in the lab frame at the scan's phi = 0.  ``image`` (default: the scan's
    first) picks -phi; a still gets no -phi/-osc.  Bad input raises
    :class:`~nbnumba.errors.InputFileError` naming the file and key, or
    :class:`~nbnumba.errors.UsageError` for an index out of range.
    """
    argv, mat, _ = translate(path, experiment, panel, image, mat_out)
    return argv, mat


def write_mat(path, mat) -> None:
    """Write ``mat`` (3x3, file layout) as a -mat file, atomically; every
    number in the shortest form that reads back as the same double."""
    m = np.asarray(mat, dtype=np.float64).reshape(3, 3)
    text = "".join(" ".join(_fmt(x) for x in row) + "\n" for row in m)
    atomic_write_bytes(path, text.encode("ascii"))


def _parse(argv: List[str]):
    opts = {"--experiment": 0, "--panel": 0, "--image": None, "--mat-out": None}
    expt = None
    i = 0
    while i < len(argv):
        a = argv[i]
        key, eq, val = a.partition("=")
        if key in opts:
            if not eq:
                if i + 1 >= len(argv):
                    raise UsageError("%s needs a value" % key)
                i += 1
                val = argv[i]
            if key != "--mat-out":
                try:
                    val = int(val)
                except ValueError:
                    raise UsageError("%s expects an integer, got '%s'" % (key, val[:40])) from None
            elif not val:
                raise UsageError("--mat-out needs a file name")
            opts[key] = val
        elif a.startswith("-") and a != "-":
            raise UsageError("unknown option '%s' (see %s -h)" % (a[:40], PROG))
        elif expt is None:
            expt = a
        else:
            raise UsageError("one experiment list only (got '%s' and '%s')" % (expt[:40], a[:40]))
        i += 1
    if expt is None:
        raise UsageError("no experiment list given (see %s -h)" % PROG)
    return expt, opts


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    with quiet_broken_pipes(stdout_error=OutputFileError):
        try:
            if not argv or any(a in ("-h", "-help", "--help") for a in argv):
                print(USAGE)
                return 0 if argv else 2
            expt, o = _parse(argv)
            args, mat, notes = translate(expt, o["--experiment"], o["--panel"], o["--image"],
                                         o["--mat-out"])
            out = args[args.index("-mat") + 1]
            check_not_input(out, [expt], "--mat-out")
            write_mat(out, mat)
            for n in notes:
                print("%s: note: %s" % (PROG, n), file=sys.stderr)
            print(shlex.join(args))
            return 0
        except NBError as exc:
            print("%s: error: %s" % (PROG, exc), file=sys.stderr)
            return exc.exit_code
        except KeyboardInterrupt:
            print("%s: interrupted" % PROG, file=sys.stderr)
            return 130


if __name__ == "__main__":
    sys.exit(main())
