"""What every series frame file records: its geometry and its place in the series.

The writers are :mod:`nbnumba.io.smv` (SMV), :mod:`nbnumba.io.cbf` (miniCBF, fabio)
and :mod:`nbnumba.io.nexus` (NeXus/NXmx, h5py).

Every writer takes the pixels to store (``uint16`` (S, F)) plus a
:class:`FrameGeometry` (the detector, beam and spindle the engine used, in
nanoBragg's lab frame and SI units) and a :class:`FrameInfo` (which frame,
its rotation range and exposure), and writes its file atomically.

Frame geometry comes from a finished simulation (:meth:`FrameGeometry.from_result`)
or, without rendering anything, from a Config (:meth:`FrameGeometry.from_config`);
both give the same numbers because both use :func:`nbnumba.geometry.build_detector`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Tuple

import numpy as np

Vec3 = Tuple[float, float, float]

#: names accepted by ``--format``
FORMATS = ("smv", "cbf", "nexus")
#: file-name extension of each per-frame file
EXTENSIONS = {"smv": ".img", "cbf": ".cbf", "nexus": ".h5"}
#: nominal start of a simulated collection (files must not depend on the wall clock)
NOMINAL_EPOCH = "2000-01-01T00:00:00"


@dataclass(frozen=True)
class FrameGeometry:
    """Detector/beam/goniometer of one simulated frame (nanoBragg lab frame, SI).

    Pixel ``(s, f)`` of the image has its centre at
    ``pix0 + (f + 0.5) * pixel_size * fdet + (s + 0.5) * pixel_size * sdet``:
    ``pix0`` is the outer corner of the first pixel, as in nanoBragg.
    ``Fbeam``/``Sbeam`` are where the direct beam meets the detector plane,
    measured from ``pix0`` along ``fdet``/``sdet``.
    """
    fpixels: int
    spixels: int
    pixel_size: float        # m
    distance: float          # m, sample to beam spot along the beam
    close_distance: float    # m, sample to detector plane along odet
    wavelength: float        # m
    Fbeam: float             # m
    Sbeam: float             # m
    fdet: Vec3
    sdet: Vec3
    odet: Vec3
    pix0: Vec3               # m
    beam: Vec3
    polar: Vec3
    spindle: Vec3
    twotheta: float          # radians
    sensor_thickness: float  # m (0: no sensor absorption model)
    exposure: float          # s

    @property
    def beam_center_px(self) -> Tuple[float, float]:
        """(fast, slow) beam centre in pixels from the corner of the first pixel."""
        return self.Fbeam / self.pixel_size, self.Sbeam / self.pixel_size

    def asdict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_detector(cls, det, cfg) -> "FrameGeometry":
        thick = cfg.detector_thick if cfg.detector_thick > 0 else 0.0
        return cls(
            fpixels=int(det.fpixels), spixels=int(det.spixels), pixel_size=float(det.pixel_size),
            distance=float(det.distance), close_distance=float(det.close_distance),
            wavelength=float(cfg.lambda0), Fbeam=float(det.Fbeam), Sbeam=float(det.Sbeam),
            fdet=_v(det.fdet), sdet=_v(det.sdet), odet=_v(det.odet), pix0=_v(det.pix0),
            beam=_v(det.beam), polar=_v(det.polar), spindle=_v(det.spindle),
            twotheta=float(det.twotheta), sensor_thickness=float(thick),
            exposure=float(cfg.exposure))

    @classmethod
    def from_result(cls, res) -> "FrameGeometry":
        return cls.from_detector(res.model.det, res.model.cfg)

    @classmethod
    def from_config(cls, cfg) -> "FrameGeometry":
        from ..geometry import build_detector
        return cls.from_detector(build_detector(cfg), cfg)


@dataclass(frozen=True)
class FrameInfo:
    """Which frame a file holds and what the spindle did during it."""
    index: int               # 0-based frame index of the series
    number: int              # 1-based image number used in file names
    phi_start: float         # degrees
    phi_range: float         # degrees (oscillation width of this frame)
    exposure: float          # s
    noise: bool              # True: Poisson noise image, False: nanoBragg's int image
    pedestal: float = 0.0    # counts: nanoBragg's ADC offset (-adc) added to every pixel


def _v(x) -> Vec3:
    return (float(x[0]), float(x[1]), float(x[2]))


def _unit(v) -> np.ndarray:
    a = np.asarray(v, dtype=float)
    n = float(np.linalg.norm(a))
    return a / n if n > 0 else a


def lab_to_mcstas(beam, polar) -> np.ndarray:
    """Rotation matrix taking nanoBragg lab vectors to the NeXus McStas frame.

    McStas: +z along the beam (away from the source), +y up, +x = y cross z.
    nanoBragg's polarisation axis (horizontal at a synchrotron) becomes -x, so for
    the default MOSFLM frame (beam +x, polar +z) the map is
    ``(x, y, z)_nb -> (-z, y, x)``.  This matches nanoBragg's own DIALS_ORIGIN
    header (imgCIF/DIALS = diag(-1, 1, -1) . McStas = (z, y, -x)_nb).
    """
    z = _unit(beam)
    p = np.asarray(polar, dtype=float)
    p = p - np.dot(p, z) * z
    if np.linalg.norm(p) < 1e-12:   # polarisation along the beam: pick any perpendicular
        trial = np.array([0.0, 0.0, 1.0]) if abs(z[2]) < 0.9 else np.array([0.0, 1.0, 0.0])
        p = trial - np.dot(trial, z) * z
    x = -_unit(p)
    y = np.cross(z, x)
    return np.vstack([x, y, z])


def parse_formats(values) -> Tuple[str, ...]:
    """``['smv,cbf', 'nexus']`` -> ('smv', 'cbf', 'nexus'); ValueError on unknown names."""
    out = []
    aliases = {"img": "smv", "h5": "nexus", "hdf5": "nexus", "nxmx": "nexus", "minicbf": "cbf"}
    for v in values:
        for name in str(v).split(","):
            name = name.strip().lower()
            if not name:
                continue
            name = aliases.get(name, name)
            if name not in FORMATS:
                raise ValueError("unknown format '%s' (choose from %s)" % (name, ", ".join(FORMATS)))
            if name not in out:
                out.append(name)
    return tuple(out)


def frame_filename(prefix: str, number: int, fmt: str) -> str:
    return "%s_%05d%s" % (prefix, number, EXTENSIONS[fmt])


__all__ = ["FORMATS", "EXTENSIONS", "FrameGeometry", "FrameInfo", "lab_to_mcstas",
           "parse_formats", "frame_filename", "NOMINAL_EPOCH"]
