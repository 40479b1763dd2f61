"""Request validation shared by the CLI, the API, nbnumba-series and nbnumba-probe.

Everything here runs on the :class:`~nbnumba.config.Config` (plus the
resolved step counts) before any array of the run is allocated, and raises
:class:`~nbnumba.errors.ConfigError` with one line that names the flag.

* :func:`check_config` -- types, finiteness, signs and impossible geometry
  (zero vectors, a cell that cannot exist, an inverted ROI, ...).
* :func:`check_memory` -- the memory a run needs (pixels, sources x steps,
  rotated cells, per-step log lines), refused with the estimate and the limit
  when it exceeds the available memory or ``-max_memory``.
* :func:`memory_limit` / :func:`check_grid_memory` -- the same rule for the
  structure-factor grid, checked from the index ranges before it is allocated.
* :func:`check_image_finite` -- a rendered image with inf/NaN pixels stops the
  run with the term that overflowed.

The rules and the table of refused inputs are in docs/reliability.md.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
import os
import time
from typing import List, Optional

import numpy as np

from .errors import ConfigError
from .flags import FLAGS, INT_MAX

__all__ = ["check_config", "check_memory", "memory_limit", "check_grid_memory",
           "check_image_finite", "format_bytes", "argv_words", "resolve_cwd", "FLOAT32_MAX"]

RTD = 180.0 / math.pi
FLOAT32_MAX = float(np.finfo(np.float32).max)

# the flag that sets each Config field, for messages
_FLAG = {
    "distance": "-distance", "close_distance": "-close_distance", "pixel_size": "-pixel",
    "lambda0": "-lambda", "fluence": "-fluence", "flux": "-flux", "exposure": "-exposure",
    "beamsize": "-beamsize", "Na": "-Na/-N", "Nb": "-Nb/-N", "Nc": "-Nc/-N",
    "default_F": "-default_F", "water_size": "-water", "fudge": "-fudge",
    "polarization": "-polar", "dmin": "-dmin", "dispersion": "-dispersion",
    "hdivrange": "-hdivrange/-divergence", "vdivrange": "-vdivrange/-divergence",
    "hdivstep": "-hdivstep", "vdivstep": "-vdivstep", "dispstep": "-dispstep",
    "detector_thick": "-detector_thick", "detector_thickstep": "-detector_thickstep",
    "detector_mu": "-detector_abs", "mosaic_spread": "-mosaic", "phi0": "-phi",
    "osc": "-osc", "phistep": "-phistep", "sample_x": "-sample_thick",
    "sample_y": "-sample_width", "sample_z": "-sample_height", "density": "-density",
    "molecular_weight": "-MW", "intfile_scale": "-scale", "pgm_scale": "-pgmscale",
    "adc_offset": "-adc", "detsize_f": "-detsize_f", "detsize_s": "-detsize_s",
    "detector_rotx": "-detector_rotx", "detector_roty": "-detector_roty",
    "detector_rotz": "-detector_rotz", "detector_twotheta": "-twotheta",
    "beam_vector": "-beam_vector", "fdet_vector": "-fdet_vector", "sdet_vector": "-sdet_vector",
    "odet_vector": "-odet_vector", "polar_vector": "-polar_vector",
    "spindle_vector": "-spindle_axis", "twotheta_axis": "-twotheta_axis",
    "pix0_vector": "-pix0_vector", "cell_a": "-cell", "cell_b": "-cell", "cell_c": "-cell",
    "cell_alpha": "-cell", "cell_beta": "-cell", "cell_gamma": "-cell",
    "max_memory": "-max_memory", "stol_file_mult": "-stol_file_mult",
}

# NaN means "not given" for these (the C sentinels)
_NAN_OK = {"Xbeam", "Ybeam", "Xclose", "Yclose", "ORGX", "ORGY", "close_distance"}
# +inf is a legal value here (-detector_abs inf)
_INF_OK = {"detector_mu"}


def flag_of(name: str) -> str:
    """The flag that sets Config field ``name``: _FLAG's wording, else the
    flag table's (the flag writing the fewest fields, e.g. -phisteps for
    phisteps, -mosaic_dom for mosaic_domains), else the field's own name."""
    return _FLAG.get(name) or _BY_FIELD.get(name, name)


_BY_FIELD = {}
for _spec in sorted(FLAGS, key=lambda sp: len(sp.fields)):
    for _f in _spec.fields:
        _BY_FIELD.setdefault(_f, _spec.name)


def format_bytes(n: float) -> str:
    for unit, f in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= f:
            return "%.3g %s" % (n / f, unit)
    return "%d bytes" % n


# ---------------------------------------------------------------------------
# API arguments
# ---------------------------------------------------------------------------

def is_whole(v) -> bool:
    """A whole number, Python's or numpy's (not a bool: True is no count or
    index; numpy's bool is no numbers.Integral already)."""
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def argv_words(argv, name: str = "argv") -> List[str]:
    """``argv`` as a list of words, or ConfigError naming ``name``: a string
    (its characters were taken for words: "unknown flag '-'"), None or a
    number is refused, and so is one word that holds a whole command line."""
    if isinstance(argv, (str, bytes)):
        raise ConfigError("%s: expected a list of arguments (words), got %s: split the command "
                          "line, e.g. shlex.split(line)" % (name, type(argv).__name__))
    try:
        words = list(argv)
    except TypeError:
        raise ConfigError("%s: expected a list of arguments (words), got %s"
                          % (name, type(argv).__name__)) from None
    for i, w in enumerate(words):
        if (not isinstance(w, (str, os.PathLike, numbers.Real))
                or isinstance(w, (bool, np.bool_))):
            raise ConfigError("%s[%d]: expected a word (str), got %s"
                              % (name, i, type(w).__name__))
    if (len(words) == 1 and isinstance(words[0], str) and words[0].startswith("-")
            and len(words[0].split()) > 1):
        raise ConfigError("%s: one word holds the whole command line %r: pass a list of words, "
                          "e.g. shlex.split(line)" % (name, words[0][:40] + "..."
                                                      * (len(words[0]) > 40)))
    return words


def resolve_cwd(cwd) -> Optional[str]:
    """``cwd`` of simulate_argv/simulate_many as an absolute directory (None:
    the process's own), or ConfigError naming cwd.  Absolute, so that a later
    os.chdir elsewhere in the process does not move what it resolves."""
    if cwd is None:
        return None
    if not isinstance(cwd, (str, os.PathLike)) or isinstance(cwd, bytes):
        raise ConfigError("cwd: expected a directory name, got %s" % type(cwd).__name__)
    path = os.fspath(cwd)
    if not os.path.isdir(path):
        raise ConfigError("cwd: %s: %s" % (path, "not a directory" if os.path.exists(path)
                                           else "no such directory"))
    return os.path.abspath(path)


# ---------------------------------------------------------------------------
# the request itself
# ---------------------------------------------------------------------------

def _is_real(v) -> bool:
    t = type(v)
    if t is float or t is int:      # nearly every field: skip the ABC check (~1 us)
        return True
    return isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_))


def _real(name: str, v) -> float:
    """float(v) of a real number, or ConfigError naming the flag for one past
    double range (float(10**400) was an OverflowError traceback)."""
    try:
        return float(v)
    except OverflowError:
        digits = int(abs(int(v)).bit_length() * 0.30103)     # (str() of such an int may be refused)
        raise ConfigError("%s: a number of about 10^%d is beyond double precision's range"
                          % (flag_of(name), digits)) from None


#: integer fields whose default is None (not given)
_OPTIONAL_INTS = ("seed", "misset_seed")


def _check_types(cfg) -> dict:
    """API callers (``Config(...)``, ``dataclasses.replace``, ``overrides=``) can put
    anything in a field: numbers must be real numbers, vectors three of them.
    Returns the fields to store as Python's own types ({name: value}): a numpy
    float32 distance made a float32 comparison with a float64 limit overflow,
    a whole float 2.0 of -phisteps met range(), a switch of 10**30 a C long."""
    defaults = {f.name: f.default for f in dataclasses.fields(cfg)
                if f.default is not dataclasses.MISSING}
    plain = {}
    for name, d in defaults.items():
        v = getattr(cfg, name)
        t = type(v)
        if d is None and name in _OPTIONAL_INTS and v is not None:
            d = 0       # (an array seed reached the jitted generator: a numba TypingError)
        if isinstance(d, bool):
            if not (isinstance(v, (bool, np.bool_)) or (isinstance(v, (int, np.integer)) and v in (0, 1))):
                raise ConfigError("%s: expected true/false, got %r" % (flag_of(name), v))
            if t is not bool:
                plain[name] = bool(v)
        elif isinstance(d, float):
            if not _is_real(v):
                raise ConfigError("%s: expected a number, got %r" % (flag_of(name), v))
            if t is not float:
                plain[name] = _real(name, v)
        elif isinstance(d, int):
            # (finite first: int() of a NaN or an infinity raises); every
            # integer field is a C int, as the flags' range says
            if not (_is_real(v) and math.isfinite(_real(name, v)) and float(v) == int(v)):
                raise ConfigError("%s: expected an integer, got %r" % (flag_of(name), v))
            if abs(int(v)) > INT_MAX:
                raise ConfigError("%s: %r is out of a C int's range (|value| <= %d)"
                                  % (flag_of(name), v, INT_MAX))
            if t is not int:
                plain[name] = int(v)
        elif isinstance(d, tuple) and len(d) == 3 and all(isinstance(x, float) for x in d):
            if not (isinstance(v, (tuple, list, np.ndarray)) and len(v) == 3
                    and all(_is_real(x) for x in v)):
                raise ConfigError("%s: expected 3 numbers (x y z), got %r" % (flag_of(name), v))
            if t is not tuple or any(type(x) is not float for x in v):
                plain[name] = tuple(_real(name, x) for x in v)
        elif isinstance(d, str) and name not in ("stoloutfilename",):
            if not isinstance(v, str):
                raise ConfigError("%s: expected text, got %r" % (flag_of(name), v))
    _check_api_objects(cfg)
    return plain


#: Config fields that hold a path besides the ``*filename`` ones (None: not given)
_OTHER_PATHS = ("fdump_path", "workdir")


def _check_api_objects(cfg) -> None:
    """The fields that only the API sets to objects (paths, arrays, the F grid,
    the thread count, the shape's name): a wrong kind used to surface as a
    KeyError, TypeError or IndexError from deep in the model."""
    from .model import SHAPE_CODES      # (model imports this module)
    for name in [f.name for f in dataclasses.fields(cfg)
                 if f.name.endswith("filename") or f.name in _OTHER_PATHS]:
        v = getattr(cfg, name)
        if v is not None and not isinstance(v, (str, os.PathLike)):
            raise ConfigError("%s: expected a file name, got %r" % (flag_of(name), v))
    if cfg.xtal_shape not in SHAPE_CODES:
        raise ConfigError("xtal_shape: expected one of %s (-square_xtal, -round_xtal, "
                          "-gauss_xtal, -tophat_spots), got %r"
                          % (", ".join(SHAPE_CODES), cfg.xtal_shape))
    t = cfg.threads
    if t is not None and (not is_whole(t) or t < 1):
        raise ConfigError("-threads: expected a whole number >= 1 (or None for all cores), "
                          "got %r" % (t,))
    if cfg.mask_image is not None:
        from .interop import array_arg_problem, array_kind
        m = cfg.mask_image
        if (isinstance(m, (str, bytes)) or array_kind(m) == "other"
                or len(getattr(m, "shape", ())) != 2):
            why = ("expected a 2-D array (numpy, torch or CuPy; nonzero = active), got %s"
                   % type(m).__name__)
        else:       # (a torch tensor numpy cannot view: a TypeError or ValueError inside)
            why = array_arg_problem(m)
        if why is not None:
            raise ConfigError("mask_image: %s" % why)
    if cfg.hkl_grid is not None:
        _check_hkl_grid(cfg.hkl_grid)
    flags = cfg.sample_pivot_flags
    if not (isinstance(flags, (tuple, list))
            and all(f in ("-ORGX", "-ORGY", "-Xclose", "-Yclose") for f in flags)):
        raise ConfigError("sample_pivot_flags: expected a tuple of -ORGX, -ORGY, -Xclose, "
                          "-Yclose (the parse's record of the flags given), got %r" % (flags,))


_BOUNDS = ("h_min", "h_max", "k_min", "k_max", "l_min", "l_max")


def _check_hkl_grid(grid) -> None:
    """A caller's structure-factor grid (Config.hkl_grid): the kernel indexes F
    by the bounds without checking, so F must be a finite real 3-D array of
    exactly grid.expected_shape() (a short F was read out of bounds: a wrong
    image, or garbage blamed on the geometry)."""
    from .io.hkl import HKLGrid
    from .interop import array_arg_problem, array_kind, to_numpy
    if not isinstance(grid, HKLGrid):
        raise ConfigError("hkl_grid: expected an nbnumba.io.hkl.HKLGrid (see "
                          "nbnumba.io.hkl.read_hkl), got %s" % type(grid).__name__)
    for name in _BOUNDS + ("hkls",):
        v = getattr(grid, name)
        if not is_whole(v):
            raise ConfigError("hkl_grid.%s: expected an integer, got %r" % (name, v))
        if abs(int(v)) > INT_MAX:
            raise ConfigError("hkl_grid.%s: %d is out of a C int's range (|value| <= %d)"
                              % (name, v, INT_MAX))
    for ax in "hkl":
        lo, hi = int(getattr(grid, ax + "_min")), int(getattr(grid, ax + "_max"))
        if lo > hi:
            raise ConfigError("hkl_grid: %s_min %d > %s_max %d: give min <= max"
                              % (ax, lo, ax, hi))
    if grid.hkls < 1:
        # (the kernel reads hkls = 0 as "no grid": default_F everywhere, silently)
        raise ConfigError("hkl_grid.hkls is %d: with no entries the grid would be ignored "
                          "(default_F everywhere); give the number of structure factors it "
                          "holds (>= 1), as read_hkl does" % grid.hkls)
    F = grid.F
    why = array_arg_problem(F)
    if why is not None:
        raise ConfigError("hkl_grid.F: %s" % why)
    try:
        # a view of numpy and CPU torch arrays (a CuPy array is copied here and
        # again by the model: rare, and small next to a GPU run)
        Fh = to_numpy(F) if array_kind(F) != "other" else np.asarray(F)
    except (TypeError, ValueError, NotImplementedError, RuntimeError, BufferError) as exc:
        raise ConfigError("hkl_grid.F: cannot be read as an array of numbers (%s)"
                          % (str(exc).strip().splitlines() or [""])[0]) from None
    want = tuple(int(n) for n in grid.expected_shape())
    if Fh.ndim != 3 or tuple(Fh.shape) != want:
        raise ConfigError("hkl_grid.F has shape %s, but its bounds h %d..%d, k %d..%d, l %d..%d "
                          "need %s (one entry per index and one padding plane per axis, "
                          "HKLGrid.expected_shape())"
                          % (tuple(Fh.shape), grid.h_min, grid.h_max, grid.k_min, grid.k_max,
                             grid.l_min, grid.l_max, want))
    if Fh.dtype.kind not in "iuf":
        raise ConfigError("hkl_grid.F: expected real numbers (float or integer), got dtype %s%s"
                          % (Fh.dtype, " (|F| or the real part: np.abs(F), F.real)"
                             if Fh.dtype.kind == "c" else ""))
    if Fh.dtype.kind == "f":
        with np.errstate(all="ignore"):
            ok = np.isfinite(Fh)
        if not ok.all():
            i = tuple(int(x) for x in np.argwhere(~ok)[0])
            hkl = (i[0] + grid.h_min, i[1] + grid.k_min, i[2] + grid.l_min)
            raise ConfigError("hkl_grid.F has %d non-finite values (F(%d %d %d) = %r): every "
                              "structure factor must be a finite number"
                              % ((int(ok.size - np.count_nonzero(ok)),) + hkl
                                 + (float(Fh[i]),)))


def _check_finite(cfg) -> None:
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if _is_real(v) and not isinstance(v, int):
            fv = float(v)
            if math.isnan(fv) and f.name in _NAN_OK:
                continue
            if math.isinf(fv) and f.name in _INF_OK:
                continue
            if not math.isfinite(fv):
                raise ConfigError("%s is %r: a finite number is required" % (flag_of(f.name), fv))
        elif isinstance(v, tuple) and len(v) == 3 and all(_is_real(x) for x in v):
            if not all(math.isfinite(float(x)) for x in v):
                raise ConfigError("%s has a non-finite component" % flag_of(f.name))


def _norm(v) -> float:
    return math.sqrt(sum(float(x) * float(x) for x in v))


def _cross(a, b):
    return (a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0])


def _check_geometry(cfg) -> None:
    if not cfg.c_parity and not cfg.nopolar and abs(cfg.polarization) > 1.0:
        # (-polar 90 rendered 14 of 256 pixels of negative photons: the factor
        # (1 + cos^2 2t - K cos 2psi sin^2 2t)/2 leaves [0, 1] when |K| > 1)
        raise ConfigError("-polar %g: the Kahn factor is between -1 and 1 (the beam's degree of "
                          "polarization along -polar_vector); beyond it some pixels get negative "
                          "photons (-c_parity renders nanoBragg.c's image)" % cfg.polarization)
    if not cfg.c_parity and cfg.fudge <= 0.0 and cfg.xtal_shape != "SQUARE":
        # (-fudge -1: gauss spots grew as exp(+r^2), up to 9e27 photons; tophat
        # spots filled every pixel; round ones took the root of a negative number)
        raise ConfigError("-fudge %g: the spot-shape scale must be > 0 (%s spots shrink as it "
                          "grows; 0 or less fills reciprocal space or grows without bound)"
                          % (cfg.fudge, cfg.xtal_shape.lower()))
    if cfg.distance <= 0.0:
        raise ConfigError("-distance must be > 0 mm (got %g mm): the detector sits "
                          "downstream of the sample" % (cfg.distance * 1e3))
    if not math.isnan(cfg.close_distance) and cfg.close_distance <= 0.0:
        raise ConfigError("-close_distance must be > 0 mm (got %g mm)" % (cfg.close_distance * 1e3))
    for name in ("beam_vector", "fdet_vector", "sdet_vector", "odet_vector", "polar_vector",
                 "spindle_vector", "twotheta_axis"):
        n = _norm(getattr(cfg, name))
        if n == 0.0:
            raise ConfigError("%s 0 0 0 has no direction: give a non-zero vector" % flag_of(name))
        if not math.isfinite(n):
            # (its unit vector would be NaN or 0: -twotheta_axis 0 1 1e308)
            raise ConfigError("%s %s: its length overflows double precision; give the "
                              "direction with smaller components"
                              % (flag_of(name), " ".join("%g" % x for x in getattr(cfg, name))))
    f, s = cfg.fdet_vector, cfg.sdet_vector
    if _norm(_cross(f, s)) <= 1e-12 * _norm(f) * _norm(s):
        raise ConfigError("-fdet_vector and -sdet_vector are parallel: the detector plane "
                          "is degenerate")
    if cfg.flux != 0.0 and cfg.exposure == 0.0:
        # nanoBragg.c drops the flux without a word and renders at the default
        # fluence (1.26e29 photons/m^2)
        raise ConfigError("-flux needs an -exposure > 0 s (got 0): the fluence is "
                          "flux*exposure/beamsize^2")
    if cfg.flux != 0.0 and cfg.exposure > 0.0 and cfg.beamsize <= 0.0:
        raise ConfigError("-beamsize must be > 0 mm with -flux (got %g mm): the fluence is "
                          "flux*exposure/beamsize^2" % (cfg.beamsize * 1e3))
    if cfg.flux < 0.0 or cfg.fluence < 0.0:
        raise ConfigError("%s must be >= 0" % ("-flux" if cfg.flux < 0.0 else "-fluence"))
    if cfg.exposure < 0.0:
        raise ConfigError("-exposure must be >= 0 s (got %g)" % cfg.exposure)
    for n in ("Na", "Nb", "Nc"):
        # < 1 rather than <= 0: the flags take integers, but autodiff's N= is
        # continuous, and a crystal of less than one cell has no lattice factor
        if getattr(cfg, n) < 1:
            raise ConfigError("%s must be >= 1 unit cell (got %g)" % (flag_of(n), getattr(cfg, n)))
    if cfg.water_size < 0.0:
        raise ConfigError("-water must be >= 0 um (got %g)" % (cfg.water_size * 1e6))
    for n in ("sample_x", "sample_y", "sample_z"):
        if getattr(cfg, n) < 0.0:
            raise ConfigError("%s must be >= 0 mm" % flag_of(n))
    if cfg.user_cell:
        edges = (cfg.cell_a, cfg.cell_b, cfg.cell_c)
        if min(edges) <= 0.0:
            raise ConfigError("-cell: every edge must be > 0 A (got a b c = %g %g %g)" % edges)
        angles = (cfg.cell_alpha, cfg.cell_beta, cfg.cell_gamma)
        deg = tuple(a * RTD for a in angles)
        if min(angles) <= 0.0 or max(deg) >= 180.0:
            raise ConfigError("-cell: angles must lie strictly between 0 and 180 deg "
                              "(got %g %g %g)" % deg)
        ca, cb, cg = (math.cos(a) for a in angles)
        vol2 = 1.0 - ca * ca - cb * cb - cg * cg + 2.0 * ca * cb * cg
        if vol2 <= 1e-12:
            raise ConfigError("-cell: no unit cell has the angles %g %g %g deg (each angle must "
                              "be less than the sum of the other two, and all three less "
                              "than 360 deg)" % deg)
    roi = (cfg.roi_xmin, cfg.roi_xmax, cfg.roi_ymin, cfg.roi_ymax)
    if roi != (-1, -1, -1, -1):
        if cfg.roi_xmin > cfg.roi_xmax or cfg.roi_ymin > cfg.roi_ymax:
            raise ConfigError("-roi %d %d %d %d is inverted: give xmin xmax ymin ymax with "
                              "min <= max" % roi)
        if min(roi) < 0:
            raise ConfigError("-roi %d %d %d %d: pixel indices must be >= 0" % roi)
    if cfg.max_memory < 0.0:
        raise ConfigError("-max_memory must be >= 0 MB (0, the default, is the available memory)")


def check_config(cfg):
    """Refuse a request that is malformed or physically meaningless (ConfigError).
    Returns the Config to run: ``cfg`` itself, or a copy whose numbers, switches
    and vectors an API caller gave as other types (numpy scalars, a whole float
    for a count, 0/1 for a switch, a list for a vector) are Python's own."""
    plain = _check_types(cfg)
    if plain:
        cfg = dataclasses.replace(cfg, **plain)
    _check_finite(cfg)
    _check_geometry(cfg)
    return cfg


def _curved_reach(det, box) -> float:
    """The largest in-plane distance (m) from the detector plane's point
    nearest the sample to the edges of the active pixels' box (r0, r1, c0,
    c1; end exclusive): at a corner, since the distance is convex."""
    f, s, o, p = (np.asarray(v, dtype=float) for v in (det.fdet, det.sdet, det.odet, det.pix0))
    q0 = p - det.close_distance * o
    px = det.pixel_size
    return max(math.hypot(float(q @ f), float(q @ s))
               for q in (q0 + c * px * f + r * px * s
                         for r in (box[0], box[1]) for c in (box[2], box[3])))


def check_detector(cfg, det, active, box) -> None:
    """Checks that need the derived detector: its sensitive face must look at the
    sample, and the ROI must select a pixel.  box: (r0, r1, c0, c1), rows and
    columns that hold every active pixel (model.roi_box), so that only they are
    counted (a Pilatus frame's mask is 6 MB of mostly untouched zero pages)."""
    if (not det.curved or not cfg.c_parity) and det.close_distance <= 0.0:
        # the detector normal points away from the sample: every solid angle, and so
        # every intensity, comes out negative (nanoBragg.c prints such images); the
        # default mode's -curved_det sphere has the close distance as its radius
        # (nanoBragg.c's, under -c_parity, the distance along the beam)
        raise ConfigError("the detector faces away from the sample (its plane lies %.4g mm along "
                          "its normal), so every intensity would be negative: -twotheta %.4g deg "
                          "turns its back to the beam (with the BEAM pivot of -mosflm/-adxv/-denzo); "
                          "use |-twotheta| < 90 deg, a SAMPLE-pivot convention (-xds, -dials) or check "
                          "-odet_vector/-pix0_vector"
                          % (det.close_distance * 1e3, det.twotheta * RTD))
    if det.curved and not cfg.c_parity:
        rho = _curved_reach(det, box)
        if rho > math.pi * det.close_distance:
            # the default mode rolls the plane onto the sphere of radius close
            # about the sample, a point rho from the foot to the arc rho: past
            # pi it wraps over itself, and the arc's angle rho/close multiplies
            # the rounding of close (-pix0_vector 5 45 1e6: 2e5 rad, whose
            # image moved 0.7 % when the same detector was stated turned)
            raise ConfigError(
                "-curved_det: the detector reaches %.4g mm from its point nearest the sample, "
                "%.3g times the half circumference of the sphere of radius %.4g mm (the close "
                "distance) that it is rolled onto, and past that it wraps over itself; bring "
                "-pix0_vector or the beam centre nearer, or drop -curved_det"
                % (rho * 1e3, rho / (math.pi * det.close_distance), det.close_distance * 1e3))
    if cfg.roi_xmin >= 0 and not np.any(active[box[0]:box[1], box[2]:box[3]]):
        raise ConfigError("-roi %d %d %d %d selects no pixel of the %d x %d detector"
                          % (cfg.roi_xmin, cfg.roi_xmax, cfg.roi_ymin, cfg.roi_ymax,
                             det.fpixels, det.spixels))


# ---------------------------------------------------------------------------
# memory
# ---------------------------------------------------------------------------

#: (when, bytes) of the last reading of available_memory
_AVAILABLE = [float("-inf"), 0]
#: seconds a reading stays valid: every build_model asks, and the reading (three
#: files under /proc and /sys) took 90 us, a few % of a small autodiff call's
#: set-up; a refinement loop makes hundreds of calls a second
AVAILABLE_TTL = 0.5
_clock = time.monotonic


def available_memory() -> int:
    """Bytes this process may still allocate (MemAvailable, capped by a cgroup
    limit), read at most every AVAILABLE_TTL seconds."""
    now = _clock()
    when, avail = _AVAILABLE
    if now - when < AVAILABLE_TTL:
        return avail
    avail = _read_available_memory()
    _AVAILABLE[:] = [now, avail]
    return avail


def _read_available_memory() -> int:
    avail = None
    try:
        with open("/proc/meminfo", "r", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        pass
    if avail is None:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            avail = 1 << 34
    for p in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(p) as fh:
                txt = fh.read().strip()
            if txt and txt != "max":
                lim = int(txt)
                if 0 < lim < avail:
                    avail = lim
        except (OSError, ValueError):
            pass
    return avail


def memory_limit(cfg=None):
    """(bytes, description) of the memory a run may use: ``-max_memory`` if
    given, else the machine's available memory."""
    mm = getattr(cfg, "max_memory", 0.0) if cfg is not None else 0.0
    if mm and mm > 0:
        return float(mm), "the -max_memory limit of %s" % format_bytes(mm)
    a = available_memory()
    return float(a), "the %s of memory available" % format_bytes(a)


# rough per-item costs (bytes), deliberately on the high side: Python objects,
# log lines and the kernel's own copies all count
_B_PIXEL = 40          # float image, out-of-range map, masks, int/noise/PGM images, write buffers
_B_SOURCE = 420        # position tuple, weight, wavelength, log line, direction, kernel copies
_B_DIV = 260           # one divergence grid point: offset tuple and its log line
_B_DISP = 160          # one wavelength step: value and its log line
_B_LOGLINE = 110       # one per-step log line (thickness layer, phi step)
_B_CELL = 2 * 9 * 8 * 3 + 72   # rotated cells (2 variants, 3 copies) + a mosaic matrix
_B_GRID = 24           # one structure factor: grid, cache bytes, header join
_BASE = 200e6          # interpreter, numba and the compiled kernel


def estimate(cfg, det_pixels: int, steps, nsources_file: Optional[int] = None):
    """[(bytes, what)] of the big allocations of a run, before any is made."""
    items = [(float(det_pixels) * _B_PIXEL, "a %d-pixel detector" % det_pixels)]
    if nsources_file is not None:
        items.append((float(nsources_file) * _B_SOURCE, "%d sources from -sourcefile" % nsources_file))
    else:
        hv = float(steps.hdivsteps) * float(steps.vdivsteps)
        nsrc = hv * float(steps.dispsteps)
        items.append((hv * _B_DIV + steps.dispsteps * _B_DISP + nsrc * _B_SOURCE,
                      "%.6g sources (%d x %d divergence x %d dispersion steps; "
                      "-hdivsteps/-vdivsteps/-dispsteps)"
                      % (nsrc, steps.hdivsteps, steps.vdivsteps, steps.dispsteps)))
    items.append((float(steps.detector_thicksteps) * _B_LOGLINE,
                  "%d sensor layers (-detector_thicksteps)" % steps.detector_thicksteps))
    ncell = float(steps.phisteps) * float(steps.mosaic_domains)
    items.append((ncell * _B_CELL + steps.phisteps * _B_LOGLINE,
                  "%.6g rotated cells (%d phi steps x %d mosaic domains)"
                  % (ncell, steps.phisteps, steps.mosaic_domains)))
    return items


def check_memory(cfg, det_pixels: int, steps, nsources_file: Optional[int] = None) -> None:
    """Refuse (ConfigError) a run whose estimated memory exceeds the limit."""
    items = estimate(cfg, det_pixels, steps, nsources_file)
    total = _BASE + sum(b for b, _ in items)
    limit, what = memory_limit(cfg)
    if total > limit:
        b, biggest = max(items)
        if b < _BASE:
            b, biggest = _BASE, "the interpreter, numba and the compiled kernel"
        raise ConfigError("this run needs about %s of memory, more than %s; the largest "
                          "part is %s for %s (reduce it, or raise -max_memory MB)"
                          % (format_bytes(total), what, format_bytes(b), biggest))


def check_grid_memory(name: str, n_elements: int, limit) -> None:
    """Refuse a structure-factor grid of ``n_elements`` doubles beyond ``limit``
    = (bytes, description); called with the index ranges, before allocation."""
    if limit is None:
        return
    if (not isinstance(limit, (tuple, list)) or len(limit) != 2
            or isinstance(limit[0], (bool, np.bool_)) or not isinstance(limit[0], numbers.Real)
            or not isinstance(limit[1], str)):
        # (an API caller's memory=: a TypeError or IndexError from the comparison)
        from .errors import ConfigError
        raise ConfigError("memory: expected (bytes, description) such as (2**30, '1 GiB'), "
                          "got %r" % (limit,))
    need = float(n_elements) * _B_GRID + _BASE
    if need > limit[0]:
        from .errors import InputFileError
        raise InputFileError("%s: the Miller index ranges need a %.6g-entry structure-factor "
                             "grid, about %s of memory, more than %s"
                             % (name, n_elements, format_bytes(need), limit[1]))


# ---------------------------------------------------------------------------
# the rendered image
# ---------------------------------------------------------------------------

def _log10(x: float) -> float:
    x = abs(float(x))
    if x == 0.0:
        return -math.inf
    if math.isinf(x):
        return math.inf
    return math.log10(x)


def _F_source(model) -> str:
    cfg = model.cfg
    if cfg.hklfilename:
        return "-hkl %s" % cfg.hklfilename
    if getattr(model, "used_fdump", False):
        return "the %s cache" % cfg.fdump_path
    if cfg.hkl_grid is not None:
        return "hkl_grid"
    return "the grid"


def _F_scan(model):
    """(largest |F| among the grid's finite entries, number of non-finite
    entries, (h, k, l, F) of the first of them or None).  No warning: nanmax of
    an all-NaN grid printed "All-NaN slice encountered", which np.errstate does
    not silence, and gave NaN (the message then read "F^2 = 1enan")."""
    F = np.asarray(model.Fhkl)
    if F.size == 0 or getattr(model, "hkls", 1) == 0:
        return 0.0, 0, None          # (no grid: the kernel uses default_F alone)
    with np.errstate(all="ignore"):
        lo, hi = float(F.min()), float(F.max())
        if math.isfinite(lo) and math.isfinite(hi):
            return max(abs(lo), abs(hi)), 0, None
        ok = np.isfinite(F)
        bad = int(F.size - np.count_nonzero(ok))
        fmax = float(np.max(np.abs(F[ok]))) if bad < F.size else 0.0
    i = tuple(int(x) for x in np.argwhere(~ok)[0])
    b = getattr(model, "hkl_bounds", (0, 0, 0, 0, 0, 0))
    return fmax, bad, (i[0] + b[0], i[1] + b[2], i[2] + b[4], float(F[i]))


def _F_not_finite(model, bad, first) -> str:
    return ("%d of the %d structure factors of %s are not finite (F(%d %d %d) = %r)"
            % ((bad, np.asarray(model.Fhkl).size, _F_source(model)) + first))


def overflow_terms(model, scan=None):
    """[(log10 of the term's largest value, description)] of the factors of a pixel's
    intensity: |F|^2, the lattice factor (Na Nb Nc)^2, r_e^2 * fluence, water.
    ``scan``: the grid's :func:`_F_scan` when the caller has it (one pass)."""
    cfg = model.cfg
    fmax = max((scan or _F_scan(model))[0], abs(float(cfg.default_F)))
    lattice = float(model.crystal.Na) * float(model.crystal.Nb) * float(model.crystal.Nc)
    src = ("-hkl" if cfg.hklfilename else "structure factors") if fmax != abs(cfg.default_F) else "-default_F"
    terms = [
        (2 * _log10(fmax), "the structure factor (%s %.3g: F^2 = 1e%.0f)" % (src, fmax, 2 * _log10(fmax))),
        (2 * _log10(lattice), "the lattice factor ((Na Nb Nc)^2 = %.3g)" % (lattice * lattice)),
        (_log10(model.fluence) + _log10(7.94079248018965e-30),
         "the fluence (%s %.3g photons/m^2: r_e^2 * fluence = %.3g)"
         % ("-flux/-exposure/-beamsize" if cfg.flux else "-fluence", model.fluence,
            model.fluence * 7.94079248018965e-30)),
    ]
    kahn = abs(float(cfg.polarization))
    if kahn > 1.0:
        # the factor 0.5 (1 + cos^2 - K cos(2 psi) sin^2) grows with |K|
        terms.append((_log10(kahn), "the polarization (-polar %g)" % cfg.polarization))
    if model.I_bg:
        # F_water^2 times the molecules (under -c_parity also times r_e^2 fluence, as in C)
        terms.append((_log10(model.I_bg), "the water background (-water %g um: I_bg = %.3g)"
                      % (cfg.water_size * 1e6, model.I_bg)))
    return terms


def check_terms_finite(model) -> None:
    """Before rendering: refuse when one intensity term alone overflows double
    precision (no render can give a finite image then)."""
    scan = _F_scan(model)
    _, bad, first = scan
    if bad and not model.cfg.c_parity:
        # (-c_parity reads a NaN or infinite F as nanoBragg.c does: the pixels
        # that use it go non-finite, and check_image_finite names it then)
        raise ConfigError("%s: every structure factor must be a finite number"
                          % _F_not_finite(model, bad, first))
    lg, what = max(overflow_terms(model, scan))
    if lg > 308:
        raise ConfigError("the image cannot be finite: %s overflows double precision" % what)


def check_image_finite(model, img, double: bool = False) -> None:
    """Raise ConfigError if the image holds inf or NaN, naming the term that
    overflowed (float64 products, or the image's limit: float32's 3.4e38, or
    with ``double`` a float64 image's 1.8e308, as nbnumba.autodiff returns)."""
    a = np.asarray(img)
    with np.errstate(all="ignore"):
        bad = int(a.size - np.count_nonzero(np.isfinite(a)))
    if bad == 0:
        return
    scan = _F_scan(model)
    terms = overflow_terms(model, scan)
    total = sum(t for t, _ in terms if t != -math.inf)
    lg, what = max(terms)
    limit, limit_text = (308.0, "1.8e308") if double else (38.0, "3.4e38")
    _, nbad, first = scan
    if nbad:
        why = ("%s, and the pixels that use them cannot be"
               % _F_not_finite(model, nbad, first))
    elif lg > 308:
        why = "%s overflows double precision" % what
    elif total < limit:
        # no product of these terms reaches the image's limit: the NaN or inf
        # came from elsewhere (-pixel 1e-320, a vector of 1e200, mu = inf)
        why = ("no intensity term overflows (their product is about 1e%.0f), so a value of "
               "the geometry under- or overflows double precision: check the detector's "
               "vectors and pixel size, -pix0_vector, the beam centre, -distance, the "
               "sources and -detector_abs" % total)
    else:
        why = ("the product of the intensity terms (about 1e%.0f) exceeds the %s image's "
               "limit of %s; the largest term is %s"
               % (total, "float64" if double else "float", limit_text, what))
    raise ConfigError("the image has %d non-finite pixels: %s" % (bad, why))
