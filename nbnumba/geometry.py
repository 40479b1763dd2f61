"""Detector geometry: conventions, pivots, rotations and the derived beam centres.

Follows nanoBragg.c's order of operations exactly (the order matters for the
last bits of every pixel position).  All lengths in metres, angles in radians.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Tuple

from .physics import host

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


def build_detector(cfg) -> Detector:
    """Derive the detector frame from a Config (nanoBragg.c's geometry stage)."""
    log: List[str] = []
    pixel = cfg.pixel_size
    detsize_f, detsize_s = cfg.detsize_f, cfg.detsize_s
    if cfg.fpixels:
        detsize_f = pixel * cfg.fpixels
    if cfg.spixels:
        detsize_s = pixel * cfg.spixels
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
    if omag != 1.0:
        log.append("WARNING: auto-generating odet_vector")
        odet, _ = unitize(cross(fdet, sdet))
    polar, _ = unitize(polar)
    spindle, _ = unitize(spindle)
    vert, _ = unitize(cross(beam, polar))

    rotx, roty, rotz = cfg.detector_rotx, cfg.detector_roty, cfg.detector_rotz
    twotheta = cfg.detector_twotheta
    log.append("%s convention selected." % conv.lower())

    # relationship between the "beam" distance and the "close" distance
    ratio = dot(beam, rotate_xyz(odet, rotx, roty, rotz))
    if ratio == 0.0:
        ratio = DBL_MIN
    close_distance = cfg.close_distance
    if math.isnan(close_distance):
        close_distance = abs(ratio * cfg.distance)
    distance = close_distance / ratio

    pix0 = (0.0, 0.0, 0.0)
    if pivot == "SAMPLE":
        log.append("pivoting detector around sample")
        pix0 = tuple(-Fclose * fdet[i] - Sclose * sdet[i] + close_distance * odet[i] for i in range(3))
        pix0 = rotate_xyz(pix0, rotx, roty, rotz)
        pix0 = rotate_axis(pix0, tt_axis, twotheta)
    fdet = rotate_axis(rotate_xyz(fdet, rotx, roty, rotz), tt_axis, twotheta)
    sdet = rotate_axis(rotate_xyz(sdet, rotx, roty, rotz), tt_axis, twotheta)
    odet = rotate_axis(rotate_xyz(odet, rotx, roty, rotz), tt_axis, twotheta)
    log.append("DETECTOR_FAST_AXIS %.15g %.15g %.15g" % fdet)
    log.append("DETECTOR_SLOW_AXIS %.15g %.15g %.15g" % sdet)
    log.append("DETECTOR_NORMAL_AXIS %.15g %.15g %.15g" % odet)
    if pivot == "BEAM":
        log.append("pivoting detector around direct beam spot")
        pix0 = tuple(-Fbeam * fdet[i] - Sbeam * sdet[i] + distance * beam[i] for i in range(3))

    if cfg.pix0_set and not cfg.c_parity:
        # nanoBragg.c recomputes pix0 from the beam centre and ignores the user's
        # vector (docs/quirks.md); we honour it as the lab-frame position of the
        # first pixel's corner, and derive the beam centres from it below.
        pix0 = _f(cfg.pix0_vector)

    Fclose = -dot(pix0, fdet)
    Sclose = -dot(pix0, sdet)
    close_distance = dot(pix0, odet)
    log.append("DETECTOR_PIX0_VECTOR %.15g %.15g %.15g" % tuple(pix0))
    hit = tuple(close_distance / ratio * beam[i] - pix0[i] for i in range(3))
    Fbeam = dot(fdet, hit)
    Sbeam = dot(sdet, hit)
    distance = close_distance / ratio
    ORGX = Fclose / pixel + 0.5
    ORGY = Sclose / pixel + 0.5
    dials_origin = (1000.0 * dot(pix0, (0.0, 0.0, 1.0)),
                    1000.0 * dot(pix0, (0.0, 1.0, 0.0)),
                    1000.0 * dot(pix0, (-1.0, 0.0, 0.0)))
    xds_incident = (dot(beam, fdet), dot(beam, sdet), dot(beam, odet))
    log.append("XDS incident beam: %g %g %g" % xds_incident)

    return Detector(convention=conv, pivot=pivot, fpixels=fpixels, spixels=spixels,
                    pixel_size=pixel, detsize_f=detsize_f, detsize_s=detsize_s,
                    fdet=fdet, sdet=sdet, odet=odet, pix0=tuple(pix0), beam=beam, polar=polar,
                    spindle=spindle, twotheta_axis=tt_axis, vert=vert, distance=distance,
                    close_distance=close_distance, ratio=ratio, Xbeam=Xbeam, Ybeam=Ybeam,
                    Fbeam=Fbeam, Sbeam=Sbeam, Xclose=Xclose, Yclose=Yclose, Fclose=Fclose,
                    Sclose=Sclose, ORGX=ORGX, ORGY=ORGY, dials_origin=dials_origin,
                    twotheta=twotheta, rotx=rotx, roty=roty, rotz=rotz, roi=tuple(roi),
                    curved=cfg.curved_detector, point_pixel=cfg.point_pixel,
                    xds_incident=xds_incident, log=log)
