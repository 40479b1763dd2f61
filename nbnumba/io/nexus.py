"""NeXus/HDF5 output following the NXmx application definition (h5py).

Layout: one small HDF5 file per frame (``<prefix>_%05d.h5``, dataset
``/entry/data/data`` of shape (1, S, F)) plus a master file written when
every frame exists.  The master is a complete NXmx file whose image stack
``/entry/data/data`` (N, S, F) is an HDF5 virtual dataset over the frame files
(relative file names, so the directory can be moved as a whole)::

    /entry                                 NXentry, definition = "NXmx"
      data/data                            NXdata (signal = "data"), virtual (N, S, F)
      instrument/                          NXinstrument
        beam/incident_wavelength           NXbeam, Angstrom
        detector/                          NXdetector
          depends_on -> transformations/det_z
          data                             hard link to /entry/data/data
          pixel_mask                       uint32, bit 8 where -mask or -roi excluded a pixel
          transformations/det_z            translation along the detector normal by the
                                           sample-to-plane distance (mm)
          module/                          NXdetector_module
            data_origin, data_size, data_stride
            module_offset                  translation (mm) from the foot of the normal to
                                           the outer corner of pixel (0, 0) (nanoBragg's pix0);
                                           depends_on det_z
            fast_pixel_direction           pixel size (mm) along fdet; depends_on module_offset
            slow_pixel_direction           pixel size (mm) along sdet; depends_on module_offset
          distance, beam_center_x/y, x/y_pixel_size, count_time, frame_time,
          sensor_material, sensor_thickness, saturation_value, ...
      sample/                              NXsample, depends_on -> transformations/phi
        transformations/phi                rotation (deg), one value per frame (start angle),
                                           vector = spindle axis; phi_end, phi_increment_set
      source/                              NXsource

All vectors are converted from nanoBragg's lab frame to the NeXus McStas frame
with :func:`nbnumba.io.frames.lab_to_mcstas` (beam along +z).  Following the
chain like dxtbx does (``det_z . module_offset`` applied to the origin) gives
the corner of the first pixel, i.e. nanoBragg's ``pix0``; in dxtbx's imgCIF
frame that is nanoBragg's ``DIALS_ORIGIN``.

Files are byte-for-byte reproducible: HDF5 object timestamps are off and
``start_time`` is a nominal date (a simulation has no collection time).
"""
from __future__ import annotations

import datetime as _dt
import io
from typing import Dict, Optional, Sequence

import numpy as np

from ..errors import InputFileError
from ._args import IOArgumentError, as_image, readable_name
from .atomic import atomic_write_bytes
from .frames import NOMINAL_EPOCH, FrameGeometry, FrameInfo, lab_to_mcstas

DET = "/entry/instrument/detector"
SAMPLE = "/entry/sample"


def _h5():
    from ..extras import require
    return require("h5py", "NeXus/HDF5 output")


def _dset(group, name, data, units: Optional[str] = None, **attrs):
    """A dataset without HDF5 modification times (so files are reproducible)."""
    arr = np.asarray(data)
    if arr.dtype.kind == "U":
        ds = group.create_dataset(name, data=str(data), dtype=_h5().string_dtype("utf-8"),
                                  track_times=False)
    else:
        ds = group.create_dataset(name, data=arr, track_times=False)
    if units is not None:
        ds.attrs["units"] = units
    for k, v in attrs.items():
        ds.attrs[k] = v
    if "offset" in attrs:
        ds.attrs["offset_units"] = "mm"
    return ds


def _group(parent, name, nx_class):
    g = parent.create_group(name)
    g.attrs["NX_class"] = nx_class
    return g


def _to_bytes(build) -> bytes:
    h5py = _h5()
    bio = io.BytesIO()
    with h5py.File(bio, "w") as f:
        build(f)
    return bio.getvalue()


# ---------------------------------------------------------------------------
# per-frame files
# ---------------------------------------------------------------------------

def frame_bytes(image: np.ndarray, info: FrameInfo) -> bytes:
    img = np.ascontiguousarray(as_image(image, "frame image"))
    if img.ndim != 2 or img.size == 0:     # (read_frame refuses an empty frame)
        raise IOArgumentError("frame image must be 2-D (S, F) with pixels, got shape %s"
                              % (img.shape,))

    def build(f):
        f.attrs["default"] = "entry"
        e = _group(f, "entry", "NXentry")
        d = _group(e, "data", "NXdata")
        d.attrs["signal"] = "data"
        ds = _dset(d, "data", img[np.newaxis])
        ds.attrs["image_nr_low"] = np.int32(info.number)
        ds.attrs["image_nr_high"] = np.int32(info.number)
        _dset(e, "frame_index", np.int64(info.index))
        _dset(e, "phi_start", np.float64(info.phi_start), "deg")
        _dset(e, "phi_increment", np.float64(info.phi_range), "deg")
        _dset(e, "image_type", "noise" if info.noise else "int")
    return _to_bytes(build)


def write_frame(path, image: np.ndarray, info: FrameInfo) -> None:
    """Write one frame file atomically (built in memory, then renamed into place)."""
    atomic_write_bytes(path, frame_bytes(image, info))


FRAME_DATA = "entry/data/data"


def read_frame(path) -> np.ndarray:
    """The (S, F) image of one frame file (the first image of its
    ``/entry/data/data`` stack).  A file that cannot be read, is not HDF5, or
    has no such (N >= 1, S, F) dataset raises :class:`InputFileError` naming it."""
    h5py = _h5()
    name = readable_name(path)
    try:
        f = h5py.File(name, "r")
    except OSError as exc:
        raise InputFileError("%s: not an HDF5 file h5py can read (%s)" % (name, exc)) from None
    with f:
        ds = f.get(FRAME_DATA)
        if not isinstance(ds, h5py.Dataset):
            raise InputFileError("%s: no dataset /%s (not an nbnumba NeXus frame)"
                                 % (name, FRAME_DATA))
        if ds.ndim != 3 or ds.shape[0] < 1 or ds.shape[1] < 1 or ds.shape[2] < 1:
            raise InputFileError("%s: /%s has shape %s, expected (N >= 1, S, F)"
                                 % (name, FRAME_DATA, ds.shape))
        try:
            return ds[0]
        except (OSError, ValueError, TypeError) as exc:    # unreadable or unsupported data
            raise InputFileError("%s: cannot read /%s: %s" % (name, FRAME_DATA, exc)) from None


# ---------------------------------------------------------------------------
# master file
# ---------------------------------------------------------------------------

def _virtual_stack(group, name, sources: Sequence[str], shape, dtype):
    """(N, S, F) virtual dataset whose slice i is ``sources[i]:/entry/data/data``.

    Built with the low-level API so the dataset creation property list can
    switch off modification times (h5py's high-level helper leaves them on).
    """
    h5py = _h5()
    from h5py import h5d, h5p, h5s, h5t
    S, F = shape
    n = len(sources)
    dcpl = h5p.create(h5p.DATASET_CREATE)
    dcpl.set_obj_track_times(False)
    dcpl.set_fill_value(np.zeros(1, dtype=dtype))
    vspace = h5s.create_simple((n, S, F))
    for i, src in enumerate(sources):
        sspace = h5s.create_simple((1, S, F))
        vspace.select_hyperslab((i, 0, 0), (1, S, F))
        dcpl.set_virtual(vspace, src.encode("utf-8"), b"/entry/data/data", sspace)
    vspace.select_all()
    tid = h5t.py_create(np.dtype(dtype), logical=1)
    dsid = h5d.create(group.id, name.encode("utf-8"), tid, vspace, dcpl=dcpl)
    return h5py.Dataset(dsid)


def master_bytes(frame_files: Sequence[str], geom: FrameGeometry, phi_start: Sequence[float],
                 phi_range: float, noise: bool, dtype=np.uint16,
                 extra_sample: Optional[Dict[str, np.ndarray]] = None,
                 pixel_mask: Optional[np.ndarray] = None) -> bytes:
    """The NXmx master over ``frame_files`` (names relative to the master's directory).

    ``phi_start``: start angle of each frame (deg); ``phi_range``: width of a frame.
    ``extra_sample``: optional per-frame arrays stored under /entry/sample (e.g. the
    misset angles of a serial set), name -> (array, units or None).
    ``pixel_mask``: 0 where a pixel is not simulated (nanoBragg's ``-mask`` and
    ``-roi``: the model's active pixels), stored as
    bit 8 (user-defined) of NXdetector/pixel_mask; all pixels good when None.
    """
    R = lab_to_mcstas(geom.beam, geom.polar)
    fast = R @ np.asarray(geom.fdet)
    slow = R @ np.asarray(geom.sdet)
    normal = R @ np.asarray(geom.odet)
    pix0 = R @ np.asarray(geom.pix0)
    spindle = R @ np.asarray(geom.spindle)
    close_mm = geom.close_distance * 1000.0
    off = pix0 * 1000.0 - close_mm * normal
    off_len = float(np.linalg.norm(off))
    off_vec = off / off_len if off_len > 0 else np.array([1.0, 0.0, 0.0])
    phis = np.asarray(phi_start, dtype=np.float64)
    n = len(frame_files)
    if len(phis) != n:
        raise IOArgumentError("need one phi value per frame (%d != %d)" % (len(phis), n))
    px_mm = geom.pixel_size * 1000.0
    bx, by = geom.beam_center_px

    def build(f):
        f.attrs["default"] = "entry"
        e = _group(f, "entry", "NXentry")
        e.attrs["default"] = "data"
        _dset(e, "definition", "NXmx")
        _dset(e, "start_time", NOMINAL_EPOCH + "Z")
        end = _dt.datetime.fromisoformat(NOMINAL_EPOCH) + _dt.timedelta(
            seconds=n * max(geom.exposure, 0.0))
        _dset(e, "end_time_estimated", end.strftime("%Y-%m-%dT%H:%M:%S") + "Z")
        _dset(e, "program_name", "nbnumba-series")

        d = _group(e, "data", "NXdata")
        d.attrs["signal"] = "data"
        stack = _virtual_stack(d, "data", list(frame_files), (geom.spixels, geom.fpixels), dtype)

        src = _group(e, "source", "NXsource")
        _dset(src, "name", "nbnumba simulated source")
        inst = _group(e, "instrument", "NXinstrument")
        _dset(inst, "name", "nbnumba (nanoBragg model)")
        beam = _group(inst, "beam", "NXbeam")
        _dset(beam, "incident_wavelength", np.float64(geom.wavelength * 1e10), "angstrom")
        _dset(beam, "incident_polarisation_vector", R @ np.asarray(geom.polar))

        det = _group(inst, "detector", "NXdetector")
        _dset(det, "depends_on", DET + "/transformations/det_z")
        det["data"] = stack                     # hard link: the same virtual dataset
        mask = np.zeros((geom.spixels, geom.fpixels), dtype=np.uint32)
        if pixel_mask is not None:
            mask[np.asarray(pixel_mask) == 0] = 1 << 8      # bit 8: user-defined mask
        det.create_dataset("pixel_mask", data=mask, compression="gzip", track_times=False)
        _dset(det, "pixel_mask_applied", np.bool_(False))
        _dset(det, "distance_derived", np.bool_(False))
        _dset(det, "description", "nbnumba simulated pixel array detector")
        _dset(det, "type", "pixel")
        _dset(det, "distance", np.float64(geom.distance * 1000.0), "mm")
        _dset(det, "beam_center_x", np.float64(bx), "pixel")
        _dset(det, "beam_center_y", np.float64(by), "pixel")
        _dset(det, "x_pixel_size", np.float64(geom.pixel_size), "m")
        _dset(det, "y_pixel_size", np.float64(geom.pixel_size), "m")
        _dset(det, "count_time", np.float64(geom.exposure), "s")
        _dset(det, "frame_time", np.float64(geom.exposure), "s")
        _dset(det, "sensor_material", "Si")
        _dset(det, "sensor_thickness", np.float64(geom.sensor_thickness * 1000.0), "mm")
        _dset(det, "saturation_value", np.int64(65535))
        _dset(det, "bit_depth_readout", np.int32(16))
        _dset(det, "image_type", "noise" if noise else "int")
        tr = _group(det, "transformations", "NXtransformations")
        _dset(tr, "det_z", np.float64(close_mm), "mm", transformation_type="translation",
              vector=normal, offset=np.zeros(3), depends_on=".")
        mod = _group(det, "module", "NXdetector_module")
        _dset(mod, "data_origin", np.array([0, 0], dtype=np.int32))
        _dset(mod, "data_size", np.array([geom.spixels, geom.fpixels], dtype=np.int32))
        _dset(mod, "data_stride", np.array([1, 1], dtype=np.int32))
        _dset(mod, "module_offset", np.float64(off_len), "mm", transformation_type="translation",
              vector=off_vec, offset=np.zeros(3), depends_on=DET + "/transformations/det_z")
        _dset(mod, "fast_pixel_direction", np.float64(px_mm), "mm",
              transformation_type="translation", vector=fast, offset=np.zeros(3),
              depends_on=DET + "/module/module_offset")
        _dset(mod, "slow_pixel_direction", np.float64(px_mm), "mm",
              transformation_type="translation", vector=slow, offset=np.zeros(3),
              depends_on=DET + "/module/module_offset")

        smp = _group(e, "sample", "NXsample")
        _dset(smp, "name", "simulated crystal")
        _dset(smp, "depends_on", SAMPLE + "/transformations/phi")
        gt = _group(smp, "transformations", "NXtransformations")
        _dset(gt, "phi", phis, "deg", transformation_type="rotation", vector=spindle,
              offset=np.zeros(3), depends_on=".")
        _dset(gt, "phi_end", phis + float(phi_range), "deg")
        _dset(gt, "phi_increment_set", np.float64(phi_range), "deg")
        for key, (arr, units) in (extra_sample or {}).items():
            _dset(smp, key, np.asarray(arr), units)
    return _to_bytes(build)


def write_master(path, frame_files: Sequence[str], geom: FrameGeometry,
                 phi_start: Sequence[float], phi_range: float, noise: bool,
                 dtype=np.uint16, extra_sample=None, pixel_mask=None) -> None:
    """Write the NXmx master atomically; ``frame_files`` relative to its directory."""
    atomic_write_bytes(path, master_bytes(frame_files, geom, phi_start, phi_range, noise,
                                          dtype=dtype, extra_sample=extra_sample,
                                          pixel_mask=pixel_mask))


def pixel_position(f, fast_px: float, slow_px: float) -> np.ndarray:
    """McStas position (mm) of the pixel coordinate (fast_px, slow_px), counted from
    the outer corner of pixel (0, 0), read back from an open master file ``f`` by
    following its depends_on chain (translations only, as written here)."""
    mod = f[DET + "/module"]

    def chain(path):
        out = []
        while path and path != ".":
            ds = f[path]
            out.append(ds)
            path = ds.attrs["depends_on"]
            if isinstance(path, bytes):
                path = path.decode()
        return out

    def matrix(ds):
        A = np.identity(4)
        v = np.asarray(ds.attrs["vector"], dtype=float)
        A[:3, 3] = float(np.asarray(ds[()]).ravel()[0]) * v + np.asarray(ds.attrs.get("offset", np.zeros(3)))
        return A

    T = np.identity(4)
    for ds in reversed(chain(mod["fast_pixel_direction"].attrs["depends_on"])):
        T = T @ matrix(ds)
    origin = T[:3, 3]
    fv = np.asarray(mod["fast_pixel_direction"].attrs["vector"], dtype=float)
    sv = np.asarray(mod["slow_pixel_direction"].attrs["vector"], dtype=float)
    px_f = float(mod["fast_pixel_direction"][()])
    px_s = float(mod["slow_pixel_direction"][()])
    return origin + fast_px * px_f * fv + slow_px * px_s * sv


__all__ = ["write_frame", "read_frame", "frame_bytes", "write_master", "master_bytes",
           "pixel_position"]
