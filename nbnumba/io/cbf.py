"""miniCBF frames (byte-offset compressed, written by fabio) with a Pilatus-style
``# Detector:`` miniheader.

The miniheader gives what a miniCBF reader (fabio, dxtbx, XDS) looks for:
pixel size, detector distance, wavelength, beam centre (pixels, fast then
slow, from the corner of the first pixel), start angle, angle increment and
exposure.  It can only describe a flat detector normal to the beam whose fast
axis is +x and slow axis -y of the imgCIF frame; that is nanoBragg's default
(MOSFLM/ADXV-style) detector.  Other geometries are written with the same
numbers and should be read from the NeXus master instead.

Header convention: ``PILATUS_1.2`` when the image size is a real Pilatus module
tiling (487 x 195 modules with 7/17-pixel gaps), else ``GENERIC_MINI``
(dxtbx's convention for simulated detectors of other sizes: its Pilatus reader
would otherwise try to mask module gaps that do not exist).

Pedestal: nanoBragg adds an ADC offset (``-adc``, default 40 counts) to every
SMV pixel.  Pilatus-style readers (dxtbx's FormatCBFMini, XDS) know no pedestal:
they take pixel values as counts above zero, ``Count_cutoff`` as the overload
and -1 as the underload.  So the CBF pixels are the SMV pixels minus the whole
counts of the pedestal, and ``Count_cutoff`` is 65535 minus that pedestal: a
pixel that saturated the 16-bit SMV range reads exactly ``Count_cutoff``.  The
header says how much was removed (``# Image_type ... pedestal N removed``).

Pixels the run did not render (outside ``-roi``, or zero in ``-mask``) hold 0
in the SMV file, which would read as minus the pedestal here; they are written
as -1, the Pilatus value of a pixel that holds no measurement (what dxtbx and
XDS leave out), and ``# Excluded_pixels`` gives their count.

Files do not depend on the wall clock: the date line is a nominal
2000-01-01T00:00:00 plus ``index * exposure`` seconds.
"""
from __future__ import annotations

import datetime as _dt
import os
import re
import tempfile
from typing import Dict, Optional, Tuple

import numpy as np

from ..errors import InputFileError
from ._args import IOArgumentError, as_image, path_name, readable_name
from .atomic import OutputFileError, atomic_write_bytes
from .frames import NOMINAL_EPOCH, FrameGeometry, FrameInfo

PILATUS_MODULE = (487, 195, 7, 17)   # fast size, slow size, fast gap, slow gap
COUNT_CUTOFF = 65535                 # the pixels are nanoBragg's unsigned 16-bit values


def pedestal_counts(pedestal: float) -> int:
    """Whole counts of the ADC pedestal that the CBF pixels leave out."""
    p = float(pedestal)
    return int(np.floor(p)) if np.isfinite(p) and p > 0 else 0


def is_pilatus_size(fpixels: int, spixels: int) -> bool:
    mf, ms, gf, gs = PILATUS_MODULE
    nf, rf = divmod(int(fpixels), mf)
    ns, rs = divmod(int(spixels), ms)
    return nf >= 1 and ns >= 1 and rf == (nf - 1) * gf and rs == (ns - 1) * gs


#: the value of a pixel the run did not render (Pilatus: no measurement)
EXCLUDED_VALUE = -1


def miniheader(geom: FrameGeometry, info: FrameInfo, excluded: int = 0) -> str:
    """The ``_array_data.header_contents`` text (lines joined by CR LF);
    excluded: how many pixels hold EXCLUDED_VALUE."""
    bx, by = geom.beam_center_px
    ped = pedestal_counts(info.pedestal)
    t0 = _dt.datetime.fromisoformat(NOMINAL_EPOCH)
    stamp = t0 + _dt.timedelta(seconds=info.index * max(info.exposure, 0.0))
    stamp_text = stamp.strftime("%Y-%m-%dT%H:%M:%S") + ".%03d" % (stamp.microsecond // 1000)
    lines = [
        "# Detector: nbnumba simulated pixel array (nanoBragg model), S/N 0-0000",
        "# %s" % stamp_text,
        "# Pixel_size %.10ge-6 m x %.10ge-6 m" % (geom.pixel_size * 1e6, geom.pixel_size * 1e6),
    ]
    if geom.sensor_thickness > 0:
        lines.append("# Silicon sensor, thickness %.6f m" % geom.sensor_thickness)
    lines += [
        "# Exposure_time %.7f s" % info.exposure,
        "# Exposure_period %.7f s" % info.exposure,
        "# Tau = 0 s",
        "# Count_cutoff %d counts" % (COUNT_CUTOFF - ped),
        "# Wavelength %.10g A" % (geom.wavelength * 1e10),
        "# Detector_distance %.10g m" % geom.distance,
        "# Beam_xy (%.6f, %.6f) pixels" % (bx, by),
        "# Start_angle %.6f deg." % info.phi_start,
        "# Angle_increment %.6f deg." % info.phi_range,
        "# Detector_2theta %.6f deg." % np.degrees(geom.twotheta),
        "# Phi %.6f deg." % info.phi_start,
        "# Image_number %d" % info.number,
        "# Image_type %s, pedestal %d removed" % (
            "noise (Poisson photons)" if info.noise else "noiseless (nanoBragg intfile scaling)", ped),
    ]
    if excluded:
        lines.append("# Excluded_pixels: %d not rendered (-roi, -mask), value %d"
                     % (excluded, EXCLUDED_VALUE))
    return "\r\n".join(lines)


def data_block_file_name(name: str) -> str:
    """The name fabio is given for a file called ``name``: its base name with
    every character that is not printable, non-blank ASCII replaced by ``_``.

    fabio names the CIF data block after the file (``data_<stem>``) and writes
    the CIF text as ASCII: a non-ASCII name (``--prefix é``) was a
    UnicodeEncodeError, and a blank is no part of a CIF block name."""
    base = os.path.basename(name)
    if base in ("", ".", ".."):
        return "image.cbf"
    return "".join(c if "!" <= c <= "~" else "_" for c in base)


def cbf_bytes(name: str, image: np.ndarray, geom: FrameGeometry, info: FrameInfo,
              excluded: Optional[np.ndarray] = None) -> bytes:
    """The complete file, as fabio writes it for a file called ``name``;
    excluded: an (S, F) boolean array of the pixels the run did not render
    (written as EXCLUDED_VALUE), or None.

    fabio only writes to a path (and names the CIF data block after it), so the
    file is written in a private temporary directory, under the ASCII form of
    its base name (:func:`data_block_file_name`), and read back.
    """
    from ..extras import require
    CbfImage = require("fabio.cbfimage", "writing miniCBF").CbfImage
    img = as_image(image, "CBF image")
    if img.ndim != 2 or img.size == 0 or img.dtype.kind not in "ui":
        raise IOArgumentError("CBF image must be a non-empty 2-D array of integers, got "
                              f"{img.dtype} {img.shape}")
    ped = pedestal_counts(info.pedestal)
    if img.dtype.itemsize >= 4 and (int(img.min()) - ped < -(1 << 31) or int(img.max()) >= 1 << 31):
        # (the pixels are stored as int32: wider values would wrap)
        raise IOArgumentError("CBF image values must fit a 32-bit int after the pedestal, "
                              f"got {int(img.min())}..{int(img.max())}")
    convention = "PILATUS_1.2" if is_pilatus_size(geom.fpixels, geom.spixels) else "GENERIC_MINI"
    data = np.ascontiguousarray(img, dtype=np.int32) - ped
    n_excluded = 0
    if excluded is not None:
        excluded = np.asarray(excluded, dtype=bool)
        if excluded.shape != img.shape:
            raise IOArgumentError("CBF excluded-pixel mask must have the image's shape %s, got %s"
                                  % (img.shape, excluded.shape))
        data[excluded] = EXCLUDED_VALUE
        n_excluded = int(np.count_nonzero(excluded))
    header = {"_array_data.header_convention": convention,
              "_array_data.header_contents": miniheader(geom, info, n_excluded)}
    cimg = CbfImage(data=data, header=header)
    with tempfile.TemporaryDirectory(prefix="nbnumba-cbf-") as tmp:
        p = os.path.join(tmp, data_block_file_name(name))
        cimg.write(p)
        with open(p, "rb") as fh:
            return fh.read()


def write_frame(path, image: np.ndarray, geom: FrameGeometry, info: FrameInfo,
                excluded: Optional[np.ndarray] = None) -> None:
    """Write one miniCBF frame atomically (errors name ``path``); excluded: as
    :func:`cbf_bytes`."""
    name = path_name(path)
    try:
        payload = cbf_bytes(name, image, geom, info, excluded)
    except OSError as exc:
        raise OutputFileError("cannot write '%s': %s" % (name, exc.strerror or exc)) from exc
    atomic_write_bytes(path, payload)


_NUM = r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)"


# miniheader key -> parsed name(s): two numbers, or one (with its type)
_PAIRS = {"Pixel_size": ("pixel_size_fast", "pixel_size_slow"), "Beam_xy": ("beam_x", "beam_y")}
_SINGLES = {"Detector_distance": ("distance", float), "Wavelength": ("wavelength", float),
            "Start_angle": ("start_angle", float), "Angle_increment": ("angle_increment", float),
            "Exposure_time": ("exposure_time", float), "Exposure_period": ("exposure_period", float),
            "Count_cutoff": ("count_cutoff", int)}


def parse_miniheader(text: str, name: Optional[str] = None) -> Dict[str, object]:
    """The numbers of a Pilatus-style miniheader (SI units: m, s; angles in degrees).

    Keys present when found: pixel_size_fast, pixel_size_slow, distance, wavelength
    (Angstrom), beam_x, beam_y (pixels), start_angle, angle_increment,
    exposure_time, exposure_period, count_cutoff, detector, timestamp.

    A number beyond double range (``1e400``) raises :class:`InputFileError`
    naming ``name`` (the file, for :func:`read_frame`) and the line.
    """
    out: Dict[str, object] = {}
    for raw in text.replace("\r", "\n").split("\n"):
        line = raw.strip()
        if not line.startswith("#"):
            continue
        body = line[1:].strip()
        key = body.split(" ", 1)[0].rstrip(":")
        rest = body[len(body.split(" ", 1)[0]):]
        nums = [float(x) for x in re.findall(_NUM, rest)]
        if key == "Detector":
            out["detector"] = rest.strip()
        elif re.match(r"^\d{4}[-/]", body):
            out["timestamp"] = body
        elif (key in _PAIRS and len(nums) >= 2) or (key in _SINGLES and nums):
            used = nums[:2] if key in _PAIRS else nums[:1]
            if not all(np.isfinite(used)):
                # (an overflow to inf; int(inf) for Count_cutoff was an OverflowError)
                shown = line if len(line) <= 80 else line[:77] + "..."
                raise InputFileError("%sminiheader line '%s': %s is beyond double range"
                                     % (name + ": " if name else "", shown, key))
            if key in _PAIRS:
                out[_PAIRS[key][0]], out[_PAIRS[key][1]] = used
            else:
                field, cast = _SINGLES[key]
                out[field] = cast(used[0])
    return out


def read_frame(path) -> Tuple[Dict[str, object], np.ndarray]:
    """(parsed miniheader, int32 (S, F) pixels) via fabio.

    A file that cannot be read, that fabio cannot open, or that is not a CBF
    image raises :class:`InputFileError` naming it."""
    from ..extras import require
    fabio = require("fabio", "reading miniCBF")
    name = readable_name(path)
    try:
        img = fabio.open(name)
        data = img.data
    except Exception as exc:    # fabio's failures on other bytes are of many kinds
        raise InputFileError("%s: not a CBF file fabio can read (%s: %s)"
                             % (name, type(exc).__name__, exc)) from None
    if not isinstance(img, require("fabio.cbfimage", "reading miniCBF").CbfImage):
        raise InputFileError("%s: not a CBF file (fabio reads it as %s)"
                             % (name, type(img).__name__))
    data = np.asarray(data)
    if data.ndim != 2 or data.size == 0:
        raise InputFileError("%s: the CBF holds no 2-D image (shape %s)" % (name, data.shape))
    text = img.header.get("_array_data.header_contents", "")
    meta = parse_miniheader(text, name)
    meta["header_convention"] = img.header.get("_array_data.header_convention")
    return meta, data


__all__ = ["write_frame", "read_frame", "cbf_bytes", "miniheader", "parse_miniheader",
           "is_pilatus_size", "pedestal_counts", "data_block_file_name"]
