"""Detector geometry: conventions, pivots, rotations and the derived beam centres.

Follows nanoBragg.c's order of operations exactly (the order matters for the
last bits of every pixel position).  All lengths in metres, angles in radians.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Tuple

from .errors import ConfigError
from .vecmath import host
from .tracefmt import format_value

# plain-Python vector helpers (same source as the kernel's compiled ones)
dot = host.dot
rotate_axis = host.rotate_axis
rotate_xyz = host.rotate_xyz
unitize = host.unitize
cross = host.cross

Vec3 = Tuple[float, float, float]
DBL_MIN = 2.2250738585072014e-308

# Lab-frame basis of each convention: beam, fdet, sdet, odet, twotheta axis,
# polarization axis, spindle axis (nanoBragg.c's convention table).
_CONVENTION_VECTORS = {
    "ADXV": ((0, 0, 1), (1, 0, 0), (0, -1, 0), (0, 0, 1), (-1, 0, 0), (1, 0, 0), (1, 0, 0)),
    "MOSFLM": ((1, 0, 0), (0, 0, 1), (0, -1, 0), (1, 0, 0), (0, 0, -1), (0, 0, 1), (0, 0, 1)),
    "DENZO": ((1, 0, 0), (0, 0, 1), (0, -1, 0), (1, 0, 0), (0, 0, -1), (0, 0, 1), (0, 0, 1)),
    "XDS": ((0, 0, 1), (1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 0, 0), (1, 0, 0), (1, 0, 0)),
    "DIALS": ((0, 0, 1), (1, 0, 0), (0, 1, 0), (0, 0, 1), (0, 1, 0), (0, 1, 0), (0, 1, 0)),
}


def beam_centre_flags(conv, Fbeam, Sbeam, pixel, detsize_s):
    """(Xbeam, Ybeam) (m) that put the direct beam at (Fbeam, Sbeam) (m from the
    first pixel's corner along fdet, sdet) in convention ``conv``: the inverse
    of build_detector's map from the flags (MOSFLM adds half a pixel, ADXV counts
    Y from the far edge, the others take them as they are)."""
    if conv == "ADXV":
        return Fbeam, detsize_s - Sbeam
    if conv in ("MOSFLM", "DENZO"):
        half = 0.5 if conv == "MOSFLM" else 0.0
        return Sbeam - half * pixel, Fbeam - half * pixel
    return Fbeam, Sbeam


def dials_frame_origin(pix0, beam, polar):
    """pix0 (m) in the DIALS (imgCIF) lab frame, in mm: x along the polarization
    axis made perpendicular to the beam, z against the beam, y = z x x; for
    MOSFLM's frame (beam +x, polarization +z) that is (z, y, -x), nanoBragg.c's
    DIALS_ORIGIN, and the frame nbnumba's NeXus files use (io.frames.lab_to_mcstas
    turned by diag(-1, 1, -1))."""
    from .io.frames import lab_to_mcstas
    M = lab_to_mcstas(beam, polar)
    x, y, z = -M[0], M[1], -M[2]
    return tuple(1000.0 * float(dot(pix0, tuple(float(c) for c in axis))) for axis in (x, y, z))


def _f(v):
    return (float(v[0]), float(v[1]), float(v[2]))


@dataclass
class Detector:
    convention: str
    pivot: str
    fpixels: int
    spixels: int
    pixel_size: float
    detsize_f: float
    detsize_s: float
    fdet: Vec3
    sdet: Vec3
    odet: Vec3
    pix0: Vec3
    beam: Vec3
    polar: Vec3
    spindle: Vec3
    twotheta_axis: Vec3
    vert: Vec3
    distance: float
    close_distance: float
    ratio: float
    Xbeam: float
    Ybeam: float
    Fbeam: float
    Sbeam: float
    Xclose: float
    Yclose: float
    Fclose: float
    Sclose: float
    ORGX: float
    ORGY: float
    dials_origin: Vec3
    twotheta: float
    rotx: float
    roty: float
    rotz: float
    roi: Tuple[int, int, int, int]
    curved: bool
    point_pixel: bool
    xds_incident: Vec3
    log: List[str] = field(default_factory=list)
    # nanoBragg.c's detector-setup trace ("key=value", TRACE_C:key=value in the
    # C), in its order, as lines or functions that format them (see trace)
    trace_items: List[object] = field(default_factory=list)
    #: the default mode kept the side of a non-unit -odet_vector where
    #: nanoBragg.c's fdet x sdet points the other way (docs/quirks.md #18)
    odet_side_kept: bool = False
    tt_axis_scaled: bool = False     # default mode: -twotheta_axis made a unit vector (#23)
    #: nanoBragg.c's distance along the beam (m), from the ratio before the
    #: two-theta swing; ``distance`` is the swung detector's (#31)
    c_distance: float = math.nan

    @property
    def trace(self) -> List[str]:
        """The detector-setup trace lines; -trace_pixel prints them before the
        pixel's own lines."""
        return [x if isinstance(x, str) else x() for x in self.trace_items]


class _Line:
    """A trace line formatted when read (Detector.trace): format_value took
    60 % of build_detector's time, which autodiff's host map calls a few dozen
    times per backward.  fmt's %s take the values (vectors joined by spaces,
    matrices as [row; row]), as they were when the line was recorded.
    A plain class, so a Detector pickles."""

    __slots__ = ("fmt", "vals")

    def __init__(self, fmt, *vals):
        # kept as given: scalars cannot change, and vectors come as tuples of
        # floats (_tvec, _tmat).  Scalars become floats when formatted (a
        # conversion per value here was a third of build_detector's time)
        self.fmt = fmt
        self.vals = vals

    def __call__(self):
        return self.fmt % tuple(_fmt_item(v if isinstance(v, tuple) else float(v))
                                for v in self.vals)


def _fmt_item(v):
    if not isinstance(v, tuple):
        return format_value(v)
    if v and isinstance(v[0], tuple):
        return "; ".join(" ".join(format_value(x) for x in row) for row in v)
    return " ".join(format_value(x) for x in v)


def _tvec(key, v):
    return _Line(key + "=%s", tuple(map(float, v)))


def _tscalar(key, x):
    return _Line(key + "=%s", x)


def _tmat(key, m):
    return _Line(key + "=[%s]", tuple(tuple(map(float, row)) for row in m))


def _rotation_matrices(rotx, roty, rotz):
    """Rx, Ry, Rz and R_total = Rz (Ry Rx), summed in the C's loop order."""
    cx, sx = math.cos(rotx), math.sin(rotx)
    cy, sy = math.cos(roty), math.sin(roty)
    cz, sz = math.cos(rotz), math.sin(rotz)
    Rx = [[1.0, 0.0, 0.0], [0.0, cx, -sx], [0.0, sx, cx]]
    Ry = [[cy, 0.0, sy], [0.0, 1.0, 0.0], [-sy, 0.0, cy]]
    Rz = [[cz, -sz, 0.0], [sz, cz, 0.0], [0.0, 0.0, 1.0]]

    def mul(A, B):
        out = [[0.0] * 3 for _ in range(3)]
        for i in range(3):
            for j in range(3):
                acc = 0.0
                for k in range(3):
                    acc += A[i][k] * B[k][j]
                out[i][j] = acc
        return out
    return Rx, Ry, Rz, mul(Rz, mul(Ry, Rx))


def build_detector(cfg, trace=True) -> Detector:
    """Derive the detector frame from a Config (nanoBragg.c's geometry stage).
    ``trace=False`` records no -trace_pixel lines (Detector.trace is then
    empty): nbnumba.autodiff's host map builds the detector a few times per
    backward and reads only its vectors, and the lines were half of each build."""
    if not cfg.pixel_size > 0.0:        # (every size below is divided by it)
        raise ConfigError("-pixel must be > 0 (got %g mm)" % (cfg.pixel_size * 1000))
    log: List[str] = []
    pixel = cfg.pixel_size
    detsize_f, detsize_s = cfg.detsize_f, cfg.detsize_s
    if cfg.fpixels:
        detsize_f = pixel * cfg.fpixels
    if cfg.spixels:
        detsize_s = pixel * cfg.spixels
    for side, size in (("f", detsize_f), ("s", detsize_s)):
        # (a pixel of 1e308 m times the pixel count: int() of an infinity raises)
        if not math.isfinite(size / pixel):
            # (in m: in mm these sizes may print as inf themselves)
            raise ConfigError("-detsize_%s %g m / -pixel %g m: the detector's size in pixels "
                              "overflows double precision" % (side, size, pixel))
    fpixels = int(math.ceil(detsize_f / pixel - 0.5))
    spixels = int(math.ceil(detsize_s / pixel - 0.5))

    Xbeam, Ybeam = cfg.Xbeam, cfg.Ybeam
    Xclose, Yclose = cfg.Xclose, cfg.Yclose
    Fclose = (cfg.ORGX - 0.5) * pixel if not math.isnan(cfg.ORGX) else math.nan
    Sclose = (cfg.ORGY - 0.5) * pixel if not math.isnan(cfg.ORGY) else math.nan
    if math.isnan(Fclose):
        Fclose = (detsize_f - 0 * pixel) / 2.0
    if math.isnan(Sclose):
        Sclose = (detsize_s + 0 * pixel) / 2.0
    if math.isnan(Xclose):
        Xclose = Fclose
    if math.isnan(Yclose):
        Yclose = Sclose
    Fbeam, Sbeam = Fclose, Sclose

    roi = [cfg.roi_xmin, cfg.roi_xmax, cfg.roi_ymin, cfg.roi_ymax]
    if roi[0] < 0:
        roi[0] = 0
    if roi[1] < 0:
        roi[1] = fpixels
    if roi[2] < 0:
        roi[2] = 0
    if roi[3] < 0:
        roi[3] = spixels

    beam, fdet, sdet, odet = _f(cfg.beam_vector), _f(cfg.fdet_vector), _f(cfg.sdet_vector), _f(cfg.odet_vector)
    tt_axis, polar, spindle = _f(cfg.twotheta_axis), _f(cfg.polar_vector), _f(cfg.spindle_vector)
    pivot = cfg.detector_pivot
    conv = cfg.beam_convention
    if conv in _CONVENTION_VECTORS:
        beam, fdet, sdet, odet, tt_axis, polar, spindle = (_f(v) for v in _CONVENTION_VECTORS[conv])
    if conv == "ADXV":
        if math.isnan(Xbeam):
            Xbeam = (detsize_f + pixel) / 2.0
        if math.isnan(Ybeam):
            Ybeam = (detsize_s - pixel) / 2.0
        Fbeam, Sbeam, pivot = Xbeam, detsize_s - Ybeam, "BEAM"
    elif conv in ("MOSFLM", "DENZO"):
        if math.isnan(Xbeam):
            Xbeam = (detsize_s + pixel) / 2.0
        if math.isnan(Ybeam):
            Ybeam = (detsize_f + pixel) / 2.0
        half = 0.5 if conv == "MOSFLM" else 0.0   # MOSFLM puts pixel centres at +0.5
        Fbeam = Ybeam + half * pixel
        Sbeam = Xbeam + half * pixel
        pivot = "BEAM"
    elif conv in ("XDS", "DIALS"):
        if math.isnan(Xbeam):
            Xbeam = Xclose
        if math.isnan(Ybeam):
            Ybeam = Yclose
        Fbeam, Sbeam, pivot = Xbeam, Ybeam, "SAMPLE"
    else:  # CUSTOM
        if math.isnan(Xbeam):
            Xbeam = Xclose
        if math.isnan(Ybeam):
            Ybeam = Yclose
        Fbeam, Sbeam = Xbeam, Ybeam
        Fclose, Sclose = Xbeam, Ybeam

    beam, _ = unitize(beam)
    fdet, _ = unitize(fdet)
    sdet, _ = unitize(sdet)
    odet_u, omag = unitize(odet)
    odet = odet_u
    odet_side_kept = False
    if omag != 1.0:
        # nanoBragg.c replaces any -odet_vector whose length is not exactly 1 (a
        # unit vector in rounded decimals, a turned frame) by fdet x sdet: in a
        # left-handed frame (ADXV's axes) that faces the other way, and the
        # detector turns its back to the sample.  The default mode keeps the
        # given vector's side of the plane (docs/quirks.md #18).
        log.append("WARNING: auto-generating odet_vector")
        gen, _ = unitize(cross(fdet, sdet))
        if not cfg.c_parity and dot(gen, odet_u) < 0.0:
            gen, odet_side_kept = (-gen[0], -gen[1], -gen[2]), True
        odet = gen
    polar, _ = unitize(polar)
    spindle, _ = unitize(spindle)
    vert, _ = unitize(cross(beam, polar))
    tt_axis_scaled = False
    if not cfg.c_parity and cfg.detector_twotheta != 0.0:
        # nanoBragg.c turns the detector about -twotheta_axis as given, so an
        # axis not of length 1 (0 2 0, 1 1 0) scales and shears the detector's
        # axes (0 2 0 at 10 degrees: fdet 19.4 degrees off, |sdet| 1.0456); the
        # default mode turns about its direction (docs/quirks.md #23)
        tt_u, tmag = unitize(tt_axis)
        if tmag != 1.0:
            tt_axis, tt_axis_scaled = tt_u, True

    rotx, roty, rotz = cfg.detector_rotx, cfg.detector_roty, cfg.detector_rotz
    twotheta = cfg.detector_twotheta
    log.append("%s convention selected." % conv.lower())

    # relationship between the "beam" distance and the "close" distance
    ratio = dot(beam, rotate_xyz(odet, rotx, roty, rotz))
    if ratio == 0.0:
        ratio = DBL_MIN
    # nanoBragg.c takes the ratio before the two-theta swing and uses it again
    # after it, to find the beam spot: the default mode takes it of the final
    # detector there, and where a -close_distance of the BEAM pivot's swung
    # detector becomes a distance along the beam (docs/quirks.md #31)
    final_ratio = ratio
    if not cfg.c_parity and twotheta != 0.0:
        final_ratio = dot(beam, rotate_axis(rotate_xyz(odet, rotx, roty, rotz), tt_axis, twotheta))
        if final_ratio == 0.0:
            final_ratio = DBL_MIN
    close_distance = cfg.close_distance
    if math.isnan(close_distance):
        close_distance = abs(ratio * cfg.distance)
        distance = close_distance / ratio
    else:
        distance = close_distance / (final_ratio if pivot == "BEAM" else ratio)

    keep = trace                # the flag; from here on, trace is the list of lines
    trace: List[object] = []
    angles = (_Line("angles_rad=rotx:%s roty:%s rotz:%s twotheta:%s", rotx, roty, rotz, twotheta)
              if keep else None)
    pix0 = (0.0, 0.0, 0.0)
    if pivot == "SAMPLE":
        log.append("pivoting detector around sample")
        # the C prints Xclose/1000 with Xclose already in metres (its units, kept)
        if keep:
            trace += ["detector_convention=%s" % conv, angles,
                      _Line("beam_center_m=Xclose:%s Yclose:%s pixel_mm:%s",
                            Xclose / 1000.0, Yclose / 1000.0, pixel * 1000.0),
                      _tvec("initial_fdet", fdet), _tvec("initial_sdet", sdet),
                      _tvec("initial_odet", odet),
                      _tscalar("Fclose_m", Fclose), _tscalar("Sclose_m", Sclose),
                      _tscalar("close_distance_m", close_distance), _tscalar("ratio", ratio),
                      _tscalar("distance_m", distance),
                      _tvec("term_fast_before_rot", [-Fclose * x for x in fdet]),
                      _tvec("term_slow_before_rot", [-Sclose * x for x in sdet]),
                      _tvec("term_close_before_rot", [close_distance * x for x in odet])]
        pix0 = tuple(-Fclose * fdet[i] - Sclose * sdet[i] + close_distance * odet[i] for i in range(3))
        pix0_0 = pix0
        pix0 = rotate_xyz(pix0, rotx, roty, rotz)
        pix0_1 = pix0
        pix0 = rotate_axis(pix0, tt_axis, twotheta)
        if keep:
            trace += [_tvec("pix0_before_rotation", pix0_0), _tvec("pix0_after_rotz", pix0_1),
                      _tvec("pix0_after_twotheta", pix0)]
    initial = (fdet, sdet, odet)
    fdet = rotate_xyz(fdet, rotx, roty, rotz)
    sdet = rotate_xyz(sdet, rotx, roty, rotz)
    odet = rotate_xyz(odet, rotx, roty, rotz)
    if keep:
        trace += [_tvec("fdet_after_rotz", fdet), _tvec("sdet_after_rotz", sdet),
                  _tvec("odet_after_rotz", odet)]
    fdet = rotate_axis(fdet, tt_axis, twotheta)
    sdet = rotate_axis(sdet, tt_axis, twotheta)
    odet = rotate_axis(odet, tt_axis, twotheta)
    after_tt = []
    if keep:
        after_tt = [_tvec("twotheta_axis", tt_axis), _tvec("fdet_after_twotheta", fdet),
                    _tvec("sdet_after_twotheta", sdet), _tvec("odet_after_twotheta", odet)]
        trace += after_tt
    log.append("DETECTOR_FAST_AXIS %.15g %.15g %.15g" % fdet)
    log.append("DETECTOR_SLOW_AXIS %.15g %.15g %.15g" % sdet)
    log.append("DETECTOR_NORMAL_AXIS %.15g %.15g %.15g" % odet)
    if pivot == "BEAM":
        log.append("pivoting detector around direct beam spot")
        # nanoBragg.c's BEAM block labels every convention MOSFLM and prints
        # MOSFLM's initial axes; -c_parity prints that, the default the truth
        label, init = conv, initial
        if cfg.c_parity:
            label, init = "MOSFLM", ((0.0, 0.0, 1.0), (0.0, -1.0, 0.0), (1.0, 0.0, 0.0))
        if keep:
            Rx, Ry, Rz, R_total = _rotation_matrices(rotx, roty, rotz)
            trace += ["detector_convention=%s" % label, angles,
                      _Line("beam_center_m=X:%s Y:%s pixel_mm:%s",
                            Xbeam / 1000.0, Ybeam / 1000.0, pixel * 1000.0),
                      _tvec("initial_fdet", init[0]), _tvec("initial_sdet", init[1]),
                      _tvec("initial_odet", init[2]),
                      _tmat("Rx", Rx), _tmat("Ry", Ry), _tmat("Rz", Rz), _tmat("R_total", R_total),
                      # (the C prints the final axes again under the after_rotz keys)
                      _tvec("fdet_after_rotz", fdet), _tvec("sdet_after_rotz", sdet),
                      _tvec("odet_after_rotz", odet)] + after_tt
            trace += ["convention_mapping=Fbeam\u2190Ybeam_mm(+0.5px),Sbeam\u2190Xbeam_mm(+0.5px),"
                      "beam_vec=[1 0 0]",
                      _tscalar("Fbeam_m", Fbeam), _tscalar("Sbeam_m", Sbeam),
                      _tscalar("distance_m", distance),
                      _tvec("term_fast", [-Fbeam * x for x in fdet]),
                      _tvec("term_slow", [-Sbeam * x for x in sdet]),
                      _tvec("term_beam", [distance * x for x in beam])]
        pix0 = tuple(-Fbeam * fdet[i] - Sbeam * sdet[i] + distance * beam[i] for i in range(3))
        if keep:
            trace.append(_tvec("pix0_vector", pix0))

    if cfg.pix0_set and not cfg.c_parity:
        # nanoBragg.c recomputes pix0 from the beam centre and ignores the user's
        # vector (docs/quirks.md); we honour it as the lab-frame position of the
        # first pixel's corner, and derive the beam centres from it below.
        pix0 = _f(cfg.pix0_vector)

    Fclose = -dot(pix0, fdet)
    Sclose = -dot(pix0, sdet)
    close_distance = dot(pix0, odet)
    log.append("DETECTOR_PIX0_VECTOR %.15g %.15g %.15g" % tuple(pix0))
    hit = tuple(close_distance / final_ratio * beam[i] - pix0[i] for i in range(3))
    Fbeam = dot(fdet, hit)
    Sbeam = dot(sdet, hit)
    distance = close_distance / final_ratio
    ORGX = Fclose / pixel + 0.5
    ORGY = Sclose / pixel + 0.5
    dials_origin = (1000.0 * dot(pix0, (0.0, 0.0, 1.0)),
                    1000.0 * dot(pix0, (0.0, 1.0, 0.0)),
                    1000.0 * dot(pix0, (-1.0, 0.0, 0.0)))
    if not cfg.c_parity:
        # nanoBragg.c's header repeats the -Xbeam/-Ybeam it was given (or its
        # defaults), which the XDS and DIALS conventions do not use and a
        # -pix0_vector or a two-theta swing moves; and its DIALS_ORIGIN maps
        # MOSFLM's axes (beam along x).  The default mode writes the beam centre
        # the image has, in the convention's own terms, and the origin in the
        # DIALS frame of this beam and polarization axis (docs/quirks.md #32, #33)
        if conv in ("XDS", "DIALS") and not (math.isnan(cfg.Xbeam) and math.isnan(cfg.Ybeam)):
            log.append("WARNING: -Xbeam/-Ybeam are not used under -%s: its detector pivots "
                       "about the sample, placed by -ORGX/-ORGY or -Xclose/-Yclose; the "
                       "beam meets it at %g, %g mm (fast, slow)"
                       % (conv.lower(), Fbeam * 1000.0, Sbeam * 1000.0))
        if conv in ("MOSFLM", "ADXV", "DENZO") and cfg.sample_pivot_flags:
            # the reverse: these conventions pivot about the beam, whatever -pivot
            # or these flags' own pivot say (docs/quirks.md, "C behaviours kept")
            log.append("WARNING: %s %s not used under -%s: its detector pivots about the "
                       "beam, placed by -Xbeam/-Ybeam; its point nearest the sample is at "
                       "%g, %g mm (fast, slow)"
                       % ("/".join(cfg.sample_pivot_flags),
                          "is" if len(cfg.sample_pivot_flags) == 1 else "are", conv.lower(),
                          Fclose * 1000.0, Sclose * 1000.0))
        Xbeam, Ybeam = beam_centre_flags(conv, Fbeam, Sbeam, pixel, detsize_s)
        dials_origin = dials_frame_origin(pix0, beam, polar)
    xds_incident = (dot(beam, fdet), dot(beam, sdet), dot(beam, odet))
    log.append("XDS incident beam: %g %g %g" % xds_incident)
    return Detector(convention=conv, pivot=pivot, fpixels=fpixels, spixels=spixels,
                    pixel_size=pixel, detsize_f=detsize_f, detsize_s=detsize_s,
                    fdet=fdet, sdet=sdet, odet=odet, pix0=tuple(pix0), beam=beam, polar=polar,
                    spindle=spindle, twotheta_axis=tt_axis, vert=vert, distance=distance,
                    close_distance=close_distance, ratio=final_ratio, Xbeam=Xbeam, Ybeam=Ybeam,
                    Fbeam=Fbeam, Sbeam=Sbeam, Xclose=Xclose, Yclose=Yclose, Fclose=Fclose,
                    Sclose=Sclose, ORGX=ORGX, ORGY=ORGY, dials_origin=dials_origin,
                    twotheta=twotheta, rotx=rotx, roty=roty, rotz=rotz, roi=tuple(roi),
                    curved=cfg.curved_detector, point_pixel=cfg.point_pixel,
                    xds_incident=xds_incident, log=log, trace_items=trace,
                    odet_side_kept=odet_side_kept, tt_axis_scaled=tt_axis_scaled,
                    c_distance=close_distance / ratio)
