"""nbnumba-expt: the nanoBragg flags that reproduce a DIALS experiment's geometry.

``python -m nbnumba.expt refined.expt [--experiment I] [--panel P] [--image N]
[--mat-out FILE]`` prints one shell-quoted line of flags (custom vectors in the
experiment list's own lab frame) and writes the crystal as a ``-mat`` file.
:func:`flags_from_expt` is the same translation for Python callers.

The other direction, ``python -m nbnumba.expt --from-flags -o truth.expt --
FLAGS...`` (:func:`expt_from_flags`), writes the ground truth of a simulation
as an experiment list, with the inverse of each convention below (they sit
beside the forward ones: :func:`propagation`, :func:`polar_from_beam`,
:func:`sensor_flags`).

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

from nbnumba.errors import InputFileError, UsageError, did_you_mean, main_args
from nbnumba.io._args import IOArgumentError, path_name, read_bytes
from nbnumba.io.atomic import atomic_write_bytes, check_not_input, check_writable

__all__ = ["flags_from_expt", "translate", "write_mat", "expt_from_flags", "write_expt", "main"]

PROG = "nbnumba-expt"

USAGE = """\
usage: nbnumba-expt EXPT [--experiment I] [--panel P] [--image N] [--mat-out FILE]
       nbnumba-expt --from-flags -o OUT.expt [--images NAME] [--hall SYMBOL] -- FLAGS...

Print the nanoBragg flags (one shell-quoted line) that reproduce the geometry of
experiment I (default 0) of a DIALS experiment list: beam, panel P (default 0)
as custom vectors in the file's lab frame, the crystal as a -mat file written to
FILE (default: EXPT with the suffix .mat) and, for a rotation scan, the spindle
axis with -phi/-osc of image N (default: the scan's first image).  Stills get
-osc 0 only.  Notes on what is not translated go to stderr.  Bad input: one
line naming the file and key, exit 2.  --from-flags: the other direction, the
ground truth of a simulation as an experiment list (--from-flags -h).
--version prints nbnumba's version and its dependencies'."""

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
    try:
        x = float(v)
    except OverflowError:                 # an integer literal past 1.8e308
        x = math.inf
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
            # dxtbx refuses a scan whose images are not evenly spaced (its
            # oscillation_has_constant_width, 1e-7 deg); image N is then at
            # start + (N - first) * width, whatever the list says
            for i in range(1, n - 1):
                if abs(starts[i + 1] - starts[i] - width) > 1e-7:
                    raise ctx.fail(ow, "images not evenly spaced: %.9g deg from image %d to %d, "
                                   "%.9g deg from %d to %d" % (width, first, first + 1,
                                                               starts[i + 1] - starts[i],
                                                               first + i, first + i + 1))
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


# ---------------------------------------------------------------------------
# the conventions, each with its inverse beside it (expt_from_flags uses the
# inverses; the tests' round trips check each pair)
# ---------------------------------------------------------------------------

def propagation(direction):
    """dxtbx's ``beam.direction`` (sample -> source) -> nanoBragg's
    ``-beam_vector`` (the propagation direction)."""
    return -np.asarray(direction, dtype=np.float64)


def direction_from_propagation(beam):
    """Inverse of :func:`propagation`."""
    return -np.asarray(beam, dtype=np.float64)


def polar_from_beam(normal, fraction, beam):
    """dxtbx's ``polarization_normal`` n and ``polarization_fraction`` f ->
    nanoBragg's ``-polar_vector`` E = n x beam (unit) and Kahn factor 2f - 1;
    E is None where n is parallel to the beam."""
    e_vec = np.cross(normal, beam)
    n = float(np.sqrt(e_vec @ e_vec))
    return (e_vec / n if n >= 1e-6 else None), 2.0 * fraction - 1.0


def beam_polar_from(e_vec, kahn, beam):
    """Inverse of :func:`polar_from_beam`: (n = beam x E (unit), f = (K + 1)/2),
    n None where E is parallel to the beam.  nanoBragg uses only E's part
    normal to the beam (``B_in = E x beam``), so that is all n keeps."""
    n_vec = np.cross(beam, e_vec)
    n = float(np.sqrt(n_vec @ n_vec))
    return (n_vec / n if n >= 1e-6 else None), (kahn + 1.0) / 2.0


def sensor_flags(thickness_mm, mu_per_mm):
    """dxtbx's panel ``thickness`` (mm) and ``mu`` (1/mm) -> nanoBragg's
    ``-detector_thick`` and ``-detector_abs`` (attenuation length), both um."""
    return thickness_mm * 1000.0, 1000.0 / mu_per_mm


def sensor_from_model(thick_m, mu_per_m):
    """nbnumba's sensor (Steps.detector_thick in m, detector_mu in 1/m) ->
    dxtbx's (thickness mm, mu 1/mm): the inverse of :func:`sensor_flags`
    after nanoBragg's own um -> m."""
    return thick_m * 1000.0, mu_per_m / 1000.0


def _finite_word(a: str) -> bool:
    """False for a word that is an infinite or NaN number."""
    try:
        return math.isfinite(float(a))
    except ValueError:
        return True


def _fmt(x: float) -> str:
    """Shortest text that reads back as the same double."""
    return repr(float(x) + 0.0)           # (+ 0.0: no "-0.0")


#: ulp offsets tried by _length_one, nearest first
_NUDGES = sorted(((i, j, k) for i in range(-4, 5) for j in range(-4, 5) for k in range(-4, 5)),
                 key=lambda d: (abs(d[0]) + abs(d[1]) + abs(d[2]), d))


def _length_one(v) -> np.ndarray:
    """Unit vector ``v`` moved by a few ulps so that nanoBragg.c's length,
    sqrt(x*x + y*y + z*z), is exactly 1.0.  The C keeps only such an
    -odet_vector and replaces any other by fdet x sdet (docs/quirks.md #18):
    for a left-handed panel that is the side facing away from the sample."""
    x0 = [float(c) for c in v]
    ulp = [math.ulp(c) for c in x0]
    for d in _NUDGES:
        w = [x0[i] + d[i] * ulp[i] for i in range(3)]
        if math.sqrt(w[0] * w[0] + w[1] * w[1] + w[2] * w[2]) == 1.0:
            return np.array(w)
    return np.asarray(v, dtype=np.float64)


def _vec(v) -> List[str]:
    return [_fmt(x) for x in v]


def translate(path, experiment: int = 0, panel: int = 0, image: Optional[int] = None,
              mat_out=None) -> Tuple[List[str], np.ndarray, List[str]]:
    """``(argv, mat, notes)``: :func:`flags_from_expt` plus the notes (one line
    each) on what the flags leave out."""
    experiment = _index_arg("experiment", experiment)
    panel = _index_arg("panel", panel)
    image = None if image is None else _index_arg("image", image)
    if mat_out is not None:
        mat_out = path_name(mat_out, "mat_out")
    with np.errstate(all="ignore"):        # overflows are refused, one line, at the end
        return _translate(path, experiment, panel, image, mat_out)


def _index_arg(what: str, v) -> int:
    """experiment=/panel=/image= of the API: a whole number (a numpy integer is
    one; True was experiment 1, an array a ValueError from its truth value)."""
    from .validate import is_whole
    if not is_whole(v):
        raise IOArgumentError("%s: expected a whole number, got %r" % (what, v))
    return int(v)


def _image_names(image):
    """expt_from_flags' image=: None, one file name or template, or a list of
    file names -> None or a list of str (a number was a TypeError from list(),
    after the model was built; a bytes name one from json)."""
    if image is None:
        return None
    names = [image] if isinstance(image, (str, os.PathLike)) else image
    if isinstance(names, (bytes, bytearray)) or not hasattr(names, "__iter__"):
        raise UsageError("--images: expected a file name or template (text), or a list of "
                         "file names, got %r" % (image,))
    out = []
    for n in names:
        n = os.fspath(n) if isinstance(n, os.PathLike) else n
        if not isinstance(n, str) or not n or "\x00" in n:
            raise UsageError("--images: expected a file name or template (text), got %r" % (n,))
        out.append(n)
    if not out:
        raise UsageError("--images: expected a file name or template")
    return out


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
    b = propagation(direction)
    argv = ["-lambda", _fmt(lam), "-beam_vector", *_vec(b)]
    if "polarization_normal" in beam or "polarization_fraction" in beam:
        pn = _unit(ctx, _get(ctx, beam, "polarization_normal", bw), _sub(bw, "polarization_normal"))
        pf = _num(ctx, _get(ctx, beam, "polarization_fraction", bw), _sub(bw, "polarization_fraction"))
        if not 0.0 <= pf <= 1.0:
            raise ctx.fail(_sub(bw, "polarization_fraction"), "must be in [0, 1] (got %g)" % pf)
        e_vec, kahn = polar_from_beam(pn, pf, b)
        if e_vec is None:
            raise ctx.fail(_sub(bw, "polarization_normal"), "parallel to the beam")
        argv += ["-polar", _fmt(kahn), "-polar_vector", *_vec(e_vec)]
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
    if float(origin @ o) < 0.0:
        # a left-handed panel (ADXV's axes: fast x slow points away from the
        # sample).  Pixel positions do not depend on the normal, but nanoBragg's
        # solid angle does: its -odet_vector must face the sample
        o = -o
    o = _length_one(o)
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
        if not t > 0.0:
            # (-distance 0 was printed, which nbnumba refuses)
            raise ctx.fail(_sub(pw, "origin"), "the panel's plane passes through the sample "
                           "(distance 0 along the beam)")
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
        t_um, abs_um = sensor_flags(thick, mu)
        argv += ["-detector_thick", _fmt(t_um), "-detector_abs", _fmt(abs_um)]
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
            axis = S @ e
            if width < 0.0:
                # nanoBragg reads -osc < 0 as "not given" (a still); the same
                # sweep about the opposite axis: R(e, phi) = R(-e, -phi)
                axis, start, width = -axis, -start, -width
            rotation = ["-spindle_axis", *_vec(axis), "-phi", _fmt(start), "-osc", _fmt(width)]
        elif image is not None:
            raise UsageError("--image: %s %s has no scan" % (name, ewhere))
    else:
        if scan is not None:
            _scan_angles(ctx, scan, sw, image)   # checks --image against its range
            notes.append("no goniometer: rendered as a still (the scan's angles are not used)")
        elif image is not None:
            raise UsageError("--image: %s %s has no scan" % (name, ewhere))
    if not rotation:
        # a still says so: nanoBragg turns "-phisteps N" without -osc into a
        # 1 degree sweep, and the notes ask for -phisteps to be added by hand
        rotation = ["-osc", "0"]
    mat = lam * M                         # MOSFLM -mat: row i = component i of a*, b*, c*, times lambda
    if not np.isfinite(mat).all() or not all(map(_finite_word, argv)):
        raise ctx.fail(ewhere, "the geometry over- or underflows double precision")
    if mat_out is None:
        mat_out = os.path.splitext(name)[0] + ".mat"
    mat_word = os.fspath(mat_out)
    if mat_word.startswith("-"):
        # nanoBragg's parser takes "-x.mat" for a flag, not -mat's file
        mat_word = os.path.join(os.curdir, mat_word)
    argv += ["-mat", mat_word] + rotation
    _check_renderable(ctx, ewhere, argv, mat)
    return argv, mat, notes


def _scratch_dir():
    """A temporary folder for the checks' scratch files; one line (an
    OutputFileError) when no temporary directory is usable (a read-only root
    file system: gettempdir's FileNotFoundError was a traceback)."""
    import tempfile
    from nbnumba.io.atomic import OutputFileError
    try:
        return tempfile.TemporaryDirectory(prefix="nbnumba-expt-")
    except OSError as exc:
        raise OutputFileError("no temporary directory for the check's scratch files: %s; set "
                              "TMPDIR to a writable directory" % (exc.strerror or exc)) from None


def _check_renderable(ctx, ewhere, argv, mat) -> None:
    """InputFileError when nbnumba refuses the geometry the flags give (an edge
    of 1e308 A, a -mat value past the reader's range, a panel whose pixels'
    squared distance overflows): those flags were printed, exit 0, and the run
    made with them was refused.  The -mat file goes to a scratch folder; F and
    the sampling are fixed, as they are not the experiment list's."""
    import warnings
    from . import parse_argv
    from .errors import NBError
    from .model import build_model
    k = argv.index("-mat")
    with _scratch_dir() as d:
        path = os.path.join(d, "x.mat")
        write_mat(path, mat)
        flags = argv[:k] + ["-mat", path] + argv[k + 2:] + ["-default_F", "1", "-oversample", "1"]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                build_model(parse_argv(flags))
        except NBError as exc:
            msg = str(exc).replace(path, "the crystal's -mat")
            raise ctx.fail(ewhere, "nbnumba cannot render this geometry: %s" % msg) from None


def flags_from_expt(path, experiment: int = 0, panel: int = 0, image: Optional[int] = None,
                    mat_out=None) -> Tuple[List[str], np.ndarray]:
    """nanoBragg flags for one experiment of a DIALS experiment list.

    Returns ``(argv, mat)``: ``argv`` the flags as a list of words, whose
    ``-mat`` names ``mat_out`` (default: ``path`` with the suffix ``.mat``);
    ``mat`` the 3x3 matrix that file must hold (:func:`write_mat`), laid out
    as in the file: row i = component i of a*, b*, c* times the wavelength,
    in the lab frame at the scan's phi = 0.  ``image`` (default: the scan's
    first) picks -phi; a still gets ``-osc 0`` and no -phi.  Bad input raises
    :class:`~nbnumba.errors.InputFileError` naming the file and key, or
    :class:`~nbnumba.errors.UsageError` for an index out of range.
    """
    argv, mat, _ = translate(path, experiment, panel, image, mat_out)
    return argv, mat


def write_mat(path, mat) -> None:
    """Write ``mat`` (3x3, file layout) as a -mat file, atomically; every
    number in the shortest form that reads back as the same double."""
    path = path_name(path)
    try:
        m = np.asarray(mat, dtype=np.float64)
    except (TypeError, ValueError, OverflowError) as exc:
        raise IOArgumentError("mat: expected a 3x3 array of numbers (%s: %s)"
                              % (type(mat).__name__, exc)) from None
    if m.shape not in ((3, 3), (9,)):
        raise IOArgumentError("mat: expected a 3x3 array of finite numbers, got shape %s"
                              % (m.shape,))
    if not np.isfinite(m).all():
        raise IOArgumentError("mat: expected a 3x3 array of finite numbers, got a value %r"
                              % float(m[~np.isfinite(m)][0]))
    m = m.reshape(3, 3)
    text = "".join(" ".join(_fmt(x) for x in row) + "\n" for row in m)
    atomic_write_bytes(path, text.encode("ascii"))


# ---------------------------------------------------------------------------
# the other direction: the ground truth of a simulation as an experiment list
# ---------------------------------------------------------------------------

#: dxtbx's Hall symbol of P 1 (as ``Crystal.to_dict`` writes it)
HALL_P1 = " P 1"
#: the int image is 16-bit SMV (values clipped at 65535); -1 marks no pixel
TRUSTED_RANGE = [-1.0, 65535.0]


def _panel_dict(name, fast, slow, origin, image_size, pixel_mm, thickness, mu, strategy,
                trusted):
    """One ``Panel.to_dict`` (panel.cc), every key it writes."""
    return {"name": name, "type": "SENSOR_PAD" if name else "",
            "fast_axis": [float(x) for x in fast], "slow_axis": [float(x) for x in slow],
            "origin": [float(x) for x in origin], "raw_image_offset": [0, 0],
            "image_size": [int(x) for x in image_size], "pixel_size": [pixel_mm, pixel_mm],
            "trusted_range": list(trusted), "thickness": thickness, "material": "",
            "mu": mu, "identifier": "", "mask": [], "gain": 1.0, "pedestal": 0.0,
            "px_mm_strategy": {"type": strategy}}


def _config(flags, cwd):
    from .config import Config
    if isinstance(flags, Config):
        return flags
    from . import parse_argv
    return parse_argv(flags, cwd=cwd)


def expt_from_flags(flags, image=None, cwd=None, hall: str = HALL_P1,
                    notes: Optional[List[str]] = None) -> dict:
    """The ground truth of the run that nanoBragg ``flags`` (a list of words, or
    a :class:`~nbnumba.config.Config`) render in nbnumba's default mode, as a
    DIALS experiment list (the JSON object ``ExperimentList.to_dict`` writes).

    The geometry comes from nbnumba's own model (:func:`nbnumba.model.build_model`):
    the beam, one flat panel (origin = pix0), the crystal's real-space vectors
    in the lab frame and, unless the run is a still (``-osc`` 0), a goniometer
    about the spindle axis (identity fixed and setting rotations) and a
    one-image scan from ``-phi``/``-osc``; a still's crystal is the one
    rendered, turned by ``-phi``.  ``image``: the image file (a still) or
    template (a rotation, ``#`` for the digits) to name in an imageset, or a
    list of file names (a still); None writes no imageset, as dxtbx does for
    an experiment without one.  ``hall``: the crystal's Hall symbol.  What an
    experiment list cannot hold is appended to ``notes`` (one line each); a
    curved detector is refused (:class:`~nbnumba.errors.ConfigError`).
    """
    with np.errstate(all="ignore"):     # overflows are refused, one line, at the end
        d = _expt_from_flags(flags, image, cwd, hall, notes)
    _check_reads_back(d)
    return d


def _check_reads_back(d: dict) -> None:
    """ConfigError when nbnumba-expt refuses the list ``d`` (written to a scratch
    folder): flags nbnumba renders could give a list no reader takes back, as a
    -lambda 1e308 (a -mat value past the reader's range) or an -fdet_vector
    along the beam (a panel whose plane holds the beam)."""
    from .errors import ConfigError, NBError
    with _scratch_dir() as tmp:
        path = os.path.join(tmp, "truth.expt")
        write_expt(path, d)
        try:
            translate(path, mat_out=os.path.join(tmp, "truth.mat"))
        except NBError as exc:
            raise ConfigError("the experiment list of these flags does not read back: %s"
                              % str(exc).replace(path + ": ", "").replace(path, "the list")) from None


def _expt_from_flags(flags, image, cwd, hall, notes) -> dict:
    from dataclasses import replace
    from .errors import ConfigError
    from .geometry import rotate_axis
    from .model import build_model, reads_fdump
    notes = [] if notes is None else notes
    if not isinstance(notes, list):
        raise IOArgumentError("notes: expected a list (the notes are appended to it), got %s"
                              % type(notes).__name__)
    names = _image_names(image)
    cfg = _config(flags, cwd)
    if cfg.curved_detector:
        raise ConfigError("-curved_det: a curved detector is not one flat panel; an experiment "
                          "list cannot describe it (drop -curved_det)")
    if not isinstance(hall, str) or not hall.strip() or not hall.isprintable():
        raise UsageError("--hall: expected a Hall symbol such as ' P 1', got %r" % (hall,))
    if cfg.c_parity:
        notes.append("-c_parity: the ground truth is that of the default mode (nanoBragg.c "
                     "ignores -pix0_vector and mis-builds some cells: docs/quirks.md)")
        cfg = replace(cfg, c_parity=False)
    if not -1.0 <= cfg.polarization <= 1.0:
        # (f = (K + 1)/2 was written outside [0, 1], which no reader takes back)
        raise ConfigError("-polar %g: a Kahn factor outside [-1, 1] has no polarization "
                          "fraction in an experiment list" % cfg.polarization)
    if reads_fdump(cfg) and cfg.default_F == 0.0:
        # F does not shape the geometry: a run given none still has a truth
        cfg = replace(cfg, default_F=1.0)
    with np.errstate(all="ignore"):
        model = build_model(cfg)
    det, st, src, cr = model.det, model.steps, model.sources, model.crystal

    # ---- beam: the one source nbnumba renders
    if len(src.wavelength) == 1:
        direction = np.asarray(src.direction[0], dtype=np.float64)
        lam = float(src.wavelength[0])
    else:
        direction, lam = direction_from_propagation(det.beam), float(cfg.lambda0)
        notes.append("%d sources (divergence, dispersion or -sourcefile): the beam written is "
                     "the central one (-lambda along the beam vector)" % len(src.wavelength))
    b = propagation(direction)
    pol_normal, pol_fraction = beam_polar_from(np.array(det.polar), float(cfg.polarization), b)
    if pol_normal is None:
        if cfg.polarization != 0.0:
            raise ConfigError("-polar_vector is parallel to the beam: no polarization plane")
        pol_normal = np.cross(b, np.eye(3)[int(np.argmin(np.abs(b)))])   # unpolarised: any
        pol_normal /= np.sqrt(pol_normal @ pol_normal)
    if cfg.nopolar:
        notes.append("-nopolar (no polarization factor at all) has no experiment-list form: "
                     "the beam carries -polar's polarization")
    beam = {"__id__": "MonochromaticBeam", "direction": [float(x) for x in direction],
            "wavelength": lam * 1e10, "divergence": 0.0, "sigma_divergence": 0.0,
            "polarization_normal": [float(x) for x in pol_normal],
            "polarization_fraction": float(pol_fraction), "flux": 0.0, "transmission": 1.0}

    # ---- one flat panel
    cos = float(np.dot(det.fdet, det.sdet))
    if abs(cos) > UNIT_TOL:
        # (a panel with skewed axes was written, which no reader takes back)
        raise ConfigError("-fdet_vector and -sdet_vector are not perpendicular (cos = %.3g): "
                          "a panel of an experiment list has perpendicular axes" % cos)
    thick = mu = 0.0
    if st.detector_thick > 0.0:
        thick, mu = sensor_from_model(st.detector_thick, max(st.detector_mu, 0.0))
    strategy = "ParallaxCorrectedPxMmStrategy" if thick > 0.0 and mu > 0.0 else "SimplePxMmStrategy"
    px_mm = det.pixel_size * 1000.0
    panel = _panel_dict("Panel", det.fdet, det.sdet, np.array(det.pix0) * 1000.0,
                        (det.fpixels, det.spixels), px_mm, thick, mu, strategy, TRUSTED_RANGE)
    root = _panel_dict("", (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 0.0), (0, 0), 0.0,
                       0.0, 0.0, "SimplePxMmStrategy", [0.0, 0.0])
    root["children"] = [{"panel": 0}]
    detector = {"panels": [panel], "hierarchy": root}
    if tuple(det.roi) != (0, det.fpixels, 0, det.spixels):
        notes.append("-roi %d %d %d %d: only that box is rendered; the panel written is the whole "
                     "detector" % tuple(det.roi))
    if cfg.maskfilename or cfg.mask_image is not None:
        notes.append("-mask: masked pixels are not written (no imageset mask file)")
    if det.point_pixel:
        notes.append("-point_pixel (solid angle 1/R^2) has no experiment-list form")
    if cfg.oversample <= 0:
        # the automatic -oversample is sized from the distance along -beam_vector
        # and from -lambda (model.recommended_oversample; nanoBragg.c's distance,
        # taken before -twotheta turns the panel, is not the beam's path:
        # docs/quirks.md #31), and a source file's beam and wavelength are not
        # -beam_vector's and -lambda's.  Flags made from the list give the
        # written beam's path to the panel and its wavelength, and may pick
        # another sampling, which the list cannot hold
        from .model import recommended_oversample
        xmax = max(math.sqrt(sum(x * x for x in v)) * n
                   for v, n in ((cr.a, cr.Na), (cr.b, cr.Nb), (cr.c, cr.Nc)))
        ratio = float(b @ np.asarray(det.odet, dtype=np.float64))
        again = 1                     # the beam misses the panel's plane: no -distance
        if ratio > 1e-6:              # (flags_from_expt's rule for giving -distance)
            path = det.close_distance / ratio
            again = recommended_oversample(xmax, lam, path, det.pixel_size)[2]
        if again != model.oversample:
            notes.append("-oversample %d was auto-selected from nanoBragg's distance and "
                         "wavelength, which flags made from this list do not repeat (they would "
                         "select %d): add -oversample %d to render those"
                         % (model.oversample, again, model.oversample))

    # ---- crystal, goniometer and scan
    rows = [np.array(v, dtype=np.float64) for v in (cr.a, cr.b, cr.c)]
    spindle = np.array(det.spindle, dtype=np.float64)
    rotation = st.osc != 0.0
    if not rotation and st.phi0 != 0.0:
        # a still: the crystal as rendered, at its one phi
        rows = [np.array(rotate_axis(tuple(v), tuple(spindle), st.phi0)) for v in rows]
    crystal = {"__id__": "crystal",
               "real_space_a": [float(x) * 1e10 for x in rows[0]],
               "real_space_b": [float(x) * 1e10 for x in rows[1]],
               "real_space_c": [float(x) * 1e10 for x in rows[2]],
               "space_group_hall_symbol": hall}
    if st.mosaic_spread > 0.0 and st.mosaic_domains > 1:
        notes.append("mosaic spread %g deg in %d domains not written (the crystal is the "
                     "unperturbed one; DIALS' mosaicity is a model of its own)"
                     % (math.degrees(st.mosaic_spread), st.mosaic_domains))
    eye = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    exp = {"__id__": "Experiment", "identifier": "", "beam": 0, "detector": 0}
    root_d = {"__id__": "ExperimentList", "experiment": [exp], "imageset": [], "beam": [beam],
              "detector": [detector], "goniometer": [], "scan": [], "crystal": [crystal],
              "profile": [], "scaling_model": []}
    if rotation:
        exp["goniometer"] = 0
        exp["scan"] = 0
        root_d["goniometer"] = [{"rotation_axis": [float(x) for x in spindle],
                                 "fixed_rotation": list(eye), "setting_rotation": list(eye)}]
        root_d["scan"] = [{"image_range": [1, 1], "batch_offset": 0,
                           "properties": {"epochs": [0.0], "exposure_time": [float(cfg.exposure)],
                                          "oscillation": [math.degrees(st.phi0)],
                                          "oscillation_width": [math.degrees(st.osc)]},
                           "valid_image_ranges": {}}]
    exp["crystal"] = 0
    if names is not None:
        if rotation:
            if len(names) != 1:
                raise UsageError("--images: a rotation scan takes one template (# for digits)")
            iset = {"__id__": "ImageSequence", "template": names[0]}
        else:
            iset = {"__id__": "ImageSet", "images": names}
        iset.update(mask="", gain="", pedestal="", dx="", dy="", params={})
        root_d["imageset"] = [iset]
        exp["imageset"] = 0
    words = json.dumps(root_d, allow_nan=True)
    if "NaN" in words or "Infinity" in words:
        raise ConfigError("the geometry over- or underflows double precision: no experiment list")
    return root_d


def write_expt(path, d) -> None:
    """Write experiment-list dict ``d`` as JSON (dxtbx's indent of 2), atomically."""
    path = path_name(path)
    if not isinstance(d, dict):
        raise IOArgumentError("d: expected an experiment list (a dict, as expt_from_flags "
                              "returns), got %s" % type(d).__name__)
    try:
        text = json.dumps(d, indent=2, allow_nan=False) + "\n"
    except (TypeError, ValueError, RecursionError) as exc:
        # (numpy scalars, NaN: json's own TypeError/ValueError, before any file)
        raise IOArgumentError("d: cannot be written as JSON: %s" % str(exc).splitlines()[0][:120]) from None
    atomic_write_bytes(path, text.encode("ascii"))


FROM_FLAGS_USAGE = """\
usage: nbnumba-expt --from-flags -o OUT.expt [--images NAME ...] [--hall SYMBOL] -- FLAGS...

Write the ground truth of the run that the nanoBragg FLAGS render (nbnumba's
default mode) as a DIALS experiment list: beam, one flat panel, the crystal
in the lab frame at phi = 0 and, for a rotation (-osc > 0), a goniometer
about the spindle axis and a one-image scan.  --images names the image file(s)
(a still) or template (a rotation, # for digits); --hall the space group
(default ' P 1').  Notes on what the list cannot hold go to stderr."""


def _main_from_flags(argv: List[str]) -> int:
    if "--" not in argv:
        raise UsageError("--from-flags: put the nanoBragg flags after '--' (see %s -h)" % PROG)
    k = argv.index("--")
    opts, flags = argv[:k], argv[k + 1:]
    out, images, hall = None, [], HALL_P1
    i = 0
    while i < len(opts):
        key, eq, val = opts[i].partition("=")
        if key in ("-o", "--out", "--images", "--hall"):
            if not eq:
                if i + 1 >= len(opts):
                    raise UsageError("%s needs a value" % key)
                i += 1
                val = opts[i]
            if key in ("-o", "--out", "--images") and (
                    val in ("", "-") or val.partition("=")[0] in ("-o", "--out", "--images",
                                                                  "--hall", "--from-flags")):
                # ('-o -' wrote a file named '-', not to standard output; '-o --hall'
                # one named '--hall': a slip, the option's value left out)
                raise UsageError("%s: expected a file name, got '%s'%s"
                                 % (key, val, " (write ./%s for a file of that name)" % val
                                    if val else ""))
            if key == "--images":
                images.append(val)
            elif key == "--hall":
                hall = val
            else:
                out = val
        elif key != "--from-flags":
            raise UsageError("unknown option '%s'%s (see %s --from-flags -h)"
                             % (opts[i][:40], did_you_mean(key, ("-o", "--out", "--images", "--hall")),
                                PROG))
        i += 1
    if not out:
        raise UsageError("--from-flags: give the output file with -o OUT.expt")
    if not flags:
        raise UsageError("--from-flags: no nanoBragg flags after '--'")
    from . import parse_argv
    from .outputs import input_files
    cfg = parse_argv(flags)
    check_writable(out, "-o")
    check_not_input(out, input_files(cfg) + images, "-o")
    notes: List[str] = []
    d = expt_from_flags(cfg, image=(images[0] if len(images) == 1 else images) or None,
                        hall=hall, notes=notes)
    write_expt(out, d)
    for n in notes:
        print("%s: note: %s" % (PROG, n), file=sys.stderr)
    return 0


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
            raise UsageError("unknown option '%s'%s (see %s -h)"
                             % (a[:40], did_you_mean(key, list(opts) + ["--from-flags"]), PROG))
        elif expt is None:
            expt = a
        else:
            raise UsageError("one experiment list only (got '%s' and '%s')" % (expt[:40], a[:40]))
        i += 1
    if expt is None:
        raise UsageError("no experiment list given (see %s -h)" % PROG)
    return expt, opts


def _main(argv: List[str]) -> int:
    if argv == ["--version"]:
        from .extras import version_line
        print(version_line(PROG))
        return 0
    head = argv[:argv.index("--")] if "--" in argv else argv
    if "--from-flags" in head:
        if any(a in ("-h", "-help", "--help") for a in head):
            print(FROM_FLAGS_USAGE)
            return 0
        return _main_from_flags(argv)
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


def main(argv: Optional[List[str]] = None) -> int:
    """The tools' error policy (tools._common.guarded_main): one line and exit
    2 for a refused request, 130 on Ctrl-C, a closed stdout not an error."""
    from nbnumba.tools._common import guarded_main
    argv = main_args(argv, PROG)
    if argv is None:
        return 2
    return guarded_main(PROG, lambda: _main(argv))


if __name__ == "__main__":
    sys.exit(main())
