"""Config -> Model: every array and number the kernel needs, derived in the
order nanoBragg.c derives them (its printed log is collected on the way).

Nothing here loops over pixels.  The kernel receives the packed arrays from
``Model.kernel_args(dtype)``.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field, replace
from typing import List, Optional

import numpy as np

from . import crystal as xtal
from .config import Config
from .errors import ConfigError, InputFileError
from .geometry import Detector, build_detector
from .kernels import layout as K
from .rng import RngState
from .sampling import Steps, ceil_count, resolve_steps
from .sources import Sources, build_sources

R_E_SQR = 7.94079248018965e-30   # Thomson cross-section, m^2
AVOGADRO = 6.02214179e23
WATER_F = 2.57
WATER_MW = 18.0
RTD = 180.0 * (1.0 / math.pi)
MAX_PIXELS = 1 << 28             # refuse detectors beyond ~268 Mpixel
SHAPE_CODES = {"SQUARE": 0, "ROUND": 1, "GAUSS": 2, "TOPHAT": 3}


@dataclass
class Model:
    cfg: Config
    det: Detector
    steps: Steps
    crystal: xtal.Crystal
    sources: Sources
    phis: list
    umats: np.ndarray
    cells: np.ndarray
    Fhkl: np.ndarray
    hkl_bounds: tuple           # (hmin, hmax, kmin, kmax, lmin, lmax)
    hkls: int
    interpolate: int
    oversample: int
    nsteps: int
    fluence: float
    flux: float
    I_bg: float                 # water term of the pixel sum, before r_e^2 * fluence (C: after)
                                # and times the step count (C: not; docs/quirks.md #19)
    seed: int
    active: np.ndarray          # uint8 (S, F): pixels nanoBragg renders (ROI and mask)
    rng: RngState
    used_fdump: bool = False
    log: List[str] = field(default_factory=list)
    fdump_grid: Optional[object] = None
    # filled in by the renderer under -c_parity (single-thread C emulation)
    first_exec_pixel: int = -1
    latch: tuple = (-1, -1)
    # filled in by the renderer in the default mode with -interpolate: pixels
    # with a lookup outside the table's interpolation range (nearest F there)
    interp_fallback: int = 0

    @property
    def shape(self):
        return (self.det.spixels, self.det.fpixels)

    @property
    def roi_box(self):
        """(r0, r1, c0, c1): the rows r0..r1-1 and columns c0..c1-1 of the -roi
        box, clipped to the detector; every active pixel lies inside it (a mask
        only clears pixels)."""
        return roi_box(self.det)

    def cells_soa(self, dtype):
        """Rotated cells as (2, 9, ncell): [variant, (ax ay az bx .. cz), phi*nmos+mos]."""
        v, nphi, nmos = self.cells.shape[:3]
        soa = self.cells.reshape(v, nphi * nmos, 9).transpose(0, 2, 1)
        return np.ascontiguousarray(soa, dtype=dtype)

    def cpu_kernel_args(self):
        """Arguments of the numba kernel for this run's precision.

        The CPU works in float64 throughout; -precision single evaluates the
        lattice sines in float32 and keeps F in float32 (mixed precision, as
        the GPU kernel does): positions, indices and sums stay float64, which
        the float32 accuracy targets need."""
        args = list(self.kernel_args(np.float64))
        if self.cfg.precision == "single":
            args[0][K.I_REDUCED] = 2
            # F rounded to float32 but stored as float64: the kernel promotes F to
            # float64 before any arithmetic, so the bits are those of a float32
            # grid, and both precisions share one compiled signature
            args[6] = args[6].astype(np.float32).astype(np.float64)
        return tuple(args)

    def kernel_args(self, dtype):
        """(iopt, fopt, vecs, incident, lam, cells, Fhkl) in working precision."""
        d, c, st = self.det, self.crystal, self.steps
        iopt = np.zeros(K.N_IOPT, dtype=np.int64)
        iopt[K.I_OVERSAMPLE] = self.oversample
        iopt[K.I_THICKSTEPS] = st.detector_thicksteps
        iopt[K.I_NSRC] = len(self.sources.wavelength)
        iopt[K.I_NPHI] = st.phisteps
        iopt[K.I_NMOS] = st.mosaic_domains
        iopt[K.I_SHAPE] = SHAPE_CODES[self.cfg.xtal_shape]
        # -curved_det: 1 nanoBragg.c's lab-frame sphere (-c_parity), 2 the
        # default mode's (physics.sphere_position; docs/quirks.md #21)
        iopt[K.I_CURVED] = (1 if self.cfg.c_parity else 2) if d.curved else 0
        iopt[K.I_POINT] = int(d.point_pixel)
        iopt[K.I_NOPOLAR] = int(self.cfg.nopolar)
        iopt[K.I_OS_THICK] = int(self.cfg.oversample_thick)
        # nanoBragg.c recomputes the polarization under -oversample_polar even with
        # -nopolar (docs/quirks.md #15): the default mode keeps -nopolar's factor of 1
        iopt[K.I_OS_POLAR] = int(self.cfg.oversample_polar
                                 and (self.cfg.c_parity or not self.cfg.nopolar))
        iopt[K.I_OS_OMEGA] = int(self.cfg.oversample_omega)
        iopt[K.I_INTERP] = int(self.interpolate)
        iopt[K.I_HKLS] = self.hkls
        iopt[K.I_HMIN:K.I_LMAX + 1] = self.hkl_bounds
        iopt[K.I_CPARITY] = int(self.cfg.c_parity)
        # reduced-argument sincg everywhere except where -c_parity asks for the C's
        # arithmetic in float64 (bit-for-bit images)
        iopt[K.I_REDUCED] = int(np.dtype(dtype) == np.float32 or not self.cfg.c_parity)
        iopt[K.I_FPIXELS] = d.fpixels
        iopt[K.I_WEIGHTED] = int(self.sources.weighted)
        fopt = np.zeros(K.N_FOPT)
        fopt[K.F_PIXEL] = d.pixel_size
        fopt[K.F_SUBPIXEL] = d.pixel_size / self.oversample
        fopt[K.F_DISTANCE] = d.distance
        fopt[K.F_CLOSE] = d.close_distance
        fopt[K.F_THICKSTEP] = st.detector_thickstep
        fopt[K.F_MU] = st.detector_mu
        fopt[K.F_THICK] = st.detector_thick
        fopt[K.F_KAHN] = self.cfg.polarization
        fopt[K.F_DMIN] = self.cfg.dmin
        fopt[K.F_NA], fopt[K.F_NB], fopt[K.F_NC] = c.Na, c.Nb, c.Nc
        fopt[K.F_FUDGE] = self.cfg.fudge
        fopt[K.F_DEFAULT_F] = self.cfg.default_F
        fopt[K.F_I_BG] = self.I_bg
        fopt[K.F_WATER] = self.cfg.water_size
        fopt[K.F_SCALE] = R_E_SQR * self.fluence
        fopt[K.F_STEPS] = self.nsteps
        # the gauss/tophat spot's scale: nanoBragg.c's (Na Nb Nc)^2 under
        # -c_parity, else relative to the crystal's size (docs/quirks.md #16)
        fopt[K.F_SPOT] = xtal.spot_scale(self.cfg.c_parity, float(c.Na), float(c.Nb),
                                         float(c.Nc), c.astar, c.bstar, c.cstar)
        vecs = np.zeros((K.N_VECS, 3))
        vecs[K.V_FDET], vecs[K.V_SDET], vecs[K.V_ODET] = d.fdet, d.sdet, d.odet
        vecs[K.V_PIX0], vecs[K.V_BEAM], vecs[K.V_POLAR] = d.pix0, d.beam, d.polar
        vecs[K.V_ASTAR], vecs[K.V_BSTAR], vecs[K.V_CSTAR] = c.astar, c.bstar, c.cstar
        dt = np.dtype(dtype)
        return (iopt, fopt.astype(dt), vecs.astype(dt),
                # per source: the incident unit vector and the factor its terms
                # carry (the kernels' (nsrc, 4) layout)
                np.ascontiguousarray(np.column_stack((self.sources.incident,
                                                      self.sources.intensity)), dtype=dt),
                self.sources.wavelength.astype(dt), self.cells_soa(dt),
                np.ascontiguousarray(self.Fhkl, dtype=dt))


def _resolve(cfg: Config, name: Optional[str]) -> Optional[str]:
    if name is None:
        return None
    if cfg.workdir and not os.path.isabs(name):
        return os.path.join(cfg.workdir, name)
    return name


def _check_finite(cfg: Config):
    for fname in ("distance", "pixel_size", "lambda0", "fluence", "phi0", "detector_rotx",
                  "detector_roty", "detector_rotz", "detector_twotheta", "Na", "Nb", "Nc",
                  "default_F", "polarization", "fudge", "dmin", "exposure", "beamsize"):
        v = getattr(cfg, fname)
        if isinstance(v, float) and not math.isfinite(v):
            raise ConfigError("%s is %r: a finite number is required" % (fname, v))
    for fname in ("fdet_vector", "sdet_vector", "odet_vector", "beam_vector", "polar_vector",
                  "spindle_vector", "twotheta_axis", "pix0_vector"):
        if not all(math.isfinite(x) for x in getattr(cfg, fname)):
            raise ConfigError("%s has a non-finite component" % fname)


def roi_box(det):
    """Model.roi_box of a detector: its -roi (xmin, xmax, ymin, ymax, pixels,
    inclusive) as half-open row and column ranges inside the frame."""
    S, F = det.spixels, det.fpixels
    xmin, xmax, ymin, ymax = det.roi
    r0, c0 = min(max(ymin, 0), S), min(max(xmin, 0), F)
    return r0, max(r0, min(ymax + 1, S)), c0, max(c0, min(xmax + 1, F))


def _frame_of_zeros(shape, touched, sparse_ok):
    """A uint8 (S, F) frame of zeros for the active-pixel mask, of which about
    ``touched`` pixels will be written.  np.zeros clears every byte (0.45 ms for
    a Pilatus frame: a sixth of a 21 x 21 ROI's autodiff set-up); when a small
    -roi box is all that gets written (sparse_ok: no -mask), an anonymous
    mapping gives zeros that the OS fills page by page on first touch.  A whole
    frame written that way would cost a page fault per 4 KiB (7.9 ms against
    0.23), so large boxes keep np.zeros."""
    n = int(shape[0]) * int(shape[1])
    if sparse_ok and n >= (1 << 20) and touched * 8 <= n:
        import mmap
        return np.frombuffer(mmap.mmap(-1, n), dtype=np.uint8).reshape(shape)
    return np.zeros(shape, dtype=np.uint8)


#: the farthest a sensor may reach from the sample (m), close distance plus
#: thickness: the square of a distance past about 1.3e154 m overflows
MAX_SENSOR_REACH = 1e150
#: the largest Miller index a run may reach (2 x the longest cell edge over the
#: shortest wavelength bounds it): past 2**40 a double keeps under 12 bits of an
#: index's fraction, and the lattice factor, a function of that fraction, is
#: rounding noise (-lambda 1e-20 -oversample 1 put every pixel near the peak).
#: A physical run stays far below: 1000 A edges at 0.01 A reach 2e5
MAX_MILLER_REACH = 2.0 ** 40
#: the longest wavelength (m) a -sourcefile line may give: 10000 A, far past
#: any x-ray beam, far below the metres that a wavelength written in Angstrom is
#: read as
MAX_SOURCE_WAVELENGTH = 1e-6


def _sources(cfg: Config, steps, det, points=None) -> Sources:
    """The run's x-ray sources: generated about the beam (divergence and
    dispersion steps; ``points``: see build_sources), or read from
    -sourcefile (checked here)."""
    cols = None
    notes: List[str] = []
    if cfg.sourcefilename is not None:
        from .io.textcols import read_text_columns
        cols = read_text_columns(_resolve(cfg, cfg.sourcefilename), 5)
        if len(cols) == 0:
            raise InputFileError("%s: no sources in file" % cfg.sourcefilename)
        table = np.asarray(cols, dtype=float)
        xyz = table[:, :3]
        at_origin = np.flatnonzero(np.all(xyz == 0.0, axis=1))
        if len(at_origin):
            raise InputFileError("%s: source %d is at 0 0 0, the sample position: it has no "
                                 "direction" % (cfg.sourcefilename, int(at_origin[0]) + 1))
        lam = table[:, 4]
        too_long = np.flatnonzero(lam > MAX_SOURCE_WAVELENGTH)
        if len(too_long):
            # nanoBragg.c reads the column in metres, while its source's header
            # comment says Angstrom: `1.0` meant as 1 A is a 1 m wave, whose
            # every pixel samples hkl ~ 0 (a flat image, in both programs)
            i = int(too_long[0])
            raise InputFileError("%s: source %d has a wavelength of %g m: the fifth column is "
                                 "in metres (1 A = 1e-10 m), and an x-ray wavelength is below "
                                 "%g m" % (cfg.sourcefilename, i + 1, lam[i], MAX_SOURCE_WAVELENGTH))
        if not cfg.c_parity:
            _check_weights(cfg.sourcefilename, table[:, 3])
        ignored = [f for f, v in (("-dispersion", cfg.dispersion > 0.0),
                                  ("-dispsteps", cfg.dispsteps > 0),
                                  ("-hdivrange", cfg.hdivrange > 0.0),
                                  ("-vdivrange", cfg.vdivrange > 0.0),
                                  ("-hdivstep", cfg.hdivstep > 0.0),
                                  ("-vdivstep", cfg.vdivstep > 0.0),
                                  ("-hdivsteps", cfg.hdivsteps > 0),
                                  ("-vdivsteps", cfg.vdivsteps > 0)) if v]
        if ignored:
            # (nanoBragg.c drops them without a word)
            notes.append("WARNING: %s lists the sources: %s ignored"
                         % (cfg.sourcefilename, ", ".join(ignored)))
    # the default mode weighs each source by its relative intensity (the file's
    # fourth column); nanoBragg.c reads it and counts every source once (#20)
    src = build_sources(steps, det.beam, det.polar, det.vert, cfg.lambda0, cfg.round_div, cols,
                        points, weigh=not cfg.c_parity, across=not cfg.c_parity)
    src.log[:0] = notes
    if not cfg.c_parity and cfg.polarization != 0.0 and not cfg.nopolar:
        _check_polar_axis(cfg, det.polar, src)
    return src


#: sin of the angle below which a polarization axis lies along a source's
#: direction: its E-vector, the axis across the ray, is then rounding
POLAR_ALONG = 1e-6


def _check_polar_axis(cfg, axis, src) -> None:
    """Refuse a Kahn factor whose polarization axis lies along the incident
    direction of a source the polarization is taken from (the first, or
    every one with -oversample_polar): the factor's E-vector, axis x incident
    unitized, is then rounding noise, and so is the image (a -sourcefile beam
    along the convention's axis: rotating the experiment moved every pixel by
    up to 2.6x; nanoBragg.c, under -c_parity, does the same)."""
    inc = np.asarray(src.incident, dtype=float)[:, :3]
    used = inc if cfg.oversample_polar else inc[:1]
    a = np.asarray(axis, dtype=float)
    sin_ = np.linalg.norm(np.cross(used, a / np.linalg.norm(a)), axis=1)
    bad = np.flatnonzero(sin_ < POLAR_ALONG)
    if len(bad):
        where = (" (%s)" % cfg.sourcefilename) if cfg.sourcefilename is not None else ""
        raise ConfigError("the polarization axis %s lies along the direction of source %d%s: the "
                          "Kahn factor's E-vector across the ray is undefined there; give a "
                          "-polar_vector across the beam, -polar 0 or -nopolar (-c_parity "
                          "reproduces nanoBragg.c's rounding)"
                          % (" ".join("%.6g" % x for x in a), int(bad[0]) + 1, where))


def _check_weights(name, weights):
    """Refuse -sourcefile weights the default mode cannot weigh sources by
    (a missing column, NaN, means 1): negative or infinite ones, or all 0."""
    for i, w in enumerate(weights):
        if np.isnan(w):
            continue
        if w < 0.0 or not np.isfinite(w):
            raise InputFileError("%s: source %d has relative intensity %g (column 4): it must be "
                                 "finite and not negative" % (name, i + 1, w))
    if np.all(weights == 0.0):
        raise InputFileError("%s: every source has relative intensity 0 (column 4): the image "
                             "would be empty" % name)


def source_set(cfg: Config, steps=None, points=None) -> Sources:
    """cfg's sources, derived as build_model derives them, without the rest of
    the model (nbnumba.autodiff differentiates their incident vectors and
    wavelengths in the beam direction, the divergence ranges and the
    dispersion).  steps: resolve_steps(cfg) when None; points: the
    divergence points to keep (build_sources)."""
    if steps is None:
        steps = resolve_steps(cfg)
    return _sources(cfg, steps, build_detector(cfg, trace=False), points)


def reads_fdump(cfg: Config) -> bool:
    """Whether the run takes its F from the Fdump.bin cache when the file exists:
    no -hkl and no grid given (before falling back to -default_F, as
    nanoBragg.c does)."""
    return not cfg.hklfilename and cfg.hkl_grid is None


def auto_interpolates(Na, Nb, Nc) -> bool:
    """nanoBragg's automatic -interpolate rule: tricubic interpolation of F
    when the crystal is at most 2 cells wide along an axis (its lattice
    transform then spreads far between the nodes)."""
    return Na <= 2 or Nb <= 2 or Nc <= 2


def _auto_interpolation(Na, Nb, Nc, log) -> int:
    if auto_interpolates(Na, Nb, Nc):
        log.append("auto-selected tricubic interpolation of structure factors")
        return 1
    log.append("auto-selected no interpolation")
    return 0


def recommended_oversample(xmax, lambda0, distance, pixel):
    """nanoBragg's automatic -oversample for a crystal xmax (m) across:
    (reciprocal pixel lambda0 * distance / pixel (m), the ratio 3 xmax / it,
    its ceiling).  A reciprocal pixel that underflows (-distance 1e-320) makes
    the ratio infinite: capped as a step count (only an auto-selected
    oversampling reads it, and refuses it); a detector behind the sample
    (refused later) makes it negative, an overflowed geometry NaN: 1."""
    recip_pixel = lambda0 * distance / pixel
    ratio = 3.0 * xmax / recip_pixel if recip_pixel != 0.0 else math.inf
    return recip_pixel, ratio, (ceil_count(ratio) if ratio > 0.0 else 1)


def build_model(cfg: Config) -> Model:
    """Derive everything the kernel needs from a Config (no pixel loops)."""
    from .validate import check_config, check_detector, check_memory, memory_limit
    cfg = check_config(cfg)    # types, signs, impossible geometry: one-line ConfigError
    _check_finite(cfg)
    if cfg.lambda0 <= 0.0:
        raise ConfigError("wavelength must be > 0 (got %g A)" % (cfg.lambda0 * 1e10))
    for n in ("Na", "Nb", "Nc"):
        if getattr(cfg, n) < 0:
            raise ConfigError("-%s must be >= 0" % n)
    if cfg.oversample > 64:
        raise ConfigError("-oversample %d is unreasonably large (max 64)" % cfg.oversample)
    log: List[str] = []

    # ---- fluence and sample clipping (before the geometry, as in C) ----------
    fluence, flux = cfg.fluence, cfg.flux
    sample_y, sample_z = cfg.sample_y, cfg.sample_z
    if flux != 0.0 and cfg.exposure > 0.0 and cfg.beamsize >= 0:
        fluence = flux * cfg.exposure / cfg.beamsize / cfg.beamsize
    # the default mode clips the crystal across the beam once its orientation is
    # known (crystal.beam_clipped_size, docs/quirks.md #30); nanoBragg.c cuts
    # the sizes along b and c here, whatever the beam's direction
    clip_across = cfg.beamsize > 0 and not cfg.c_parity
    if cfg.beamsize >= 0 and not clip_across:
        if cfg.beamsize < sample_y:
            log.append("WARNING: clipping sample (%g m high) with beam (%g m)" % (sample_y, cfg.beamsize))
            sample_y = cfg.beamsize
        if cfg.beamsize < sample_z:
            log.append("WARNING: clipping sample (%g m wide) with beam (%g m)" % (sample_z, cfg.beamsize))
            sample_z = cfg.beamsize
    if cfg.exposure > 0.0:
        flux = fluence / cfg.exposure * cfg.beamsize * cfg.beamsize

    # ---- required inputs --------------------------------------------------
    hklpath = _resolve(cfg, cfg.hklfilename)
    fdump_path = _resolve(cfg, cfg.fdump_path)
    have_fdump = reads_fdump(cfg) and os.path.exists(fdump_path)
    if reads_fdump(cfg) and not have_fdump and cfg.default_F == 0.0:
        raise ConfigError("no structure factors: give -hkl FILE or -default_F F "
                          "(no %s cache found either)" % cfg.fdump_path)
    if cfg.matfilename is None and not cfg.user_cell:
        raise ConfigError("no unit cell: give -cell a b c alpha beta gamma or -mat FILE")
    if cfg.user_cell and cfg.cell_a <= 0.0:
        raise ConfigError("-cell: the a axis must be > 0 (got %g A)" % cfg.cell_a)

    # ---- detector size sanity before anything is allocated ------------------
    det = build_detector(cfg)
    if det.fpixels <= 0 or det.spixels <= 0:
        raise ConfigError("detector has %d x %d pixels: both must be >= 1" % (det.fpixels, det.spixels))
    if det.fpixels * det.spixels > MAX_PIXELS:
        raise ConfigError("detector of %d x %d pixels is too large (limit %d pixels)"
                          % (det.fpixels, det.spixels, MAX_PIXELS))

    steps = resolve_steps(cfg)
    if cfg.oversample_thick and not cfg.c_parity and steps.detector_thick <= 0.0:
        # nanoBragg's capture fraction of a sensor of no depth is 0 in every
        # sub-path under the switch: a blank image (kept under -c_parity)
        raise ConfigError("-oversample_thick needs a sensor: without a thickness (-detector_thick "
                          "> 0, absorption not turned off by -detector_abs inf) every capture "
                          "fraction is 0 and the image blank; give -detector_thick or drop "
                          "-oversample_thick")
    reach = abs(det.close_distance) + steps.detector_thick
    if not cfg.c_parity and reach >= MAX_SENSOR_REACH:
        # a deeper point's squared distance overflows in unitize: a flat detector's
        # image went NaN, the default mode's curved one finite and wrong
        raise ConfigError("-detector_thick %g um: the sensor reaches %.3g m from the sample, "
                          "where a pixel's squared distance overflows double precision (limit "
                          "%g m)" % (steps.detector_thick * 1e6, reach, MAX_SENSOR_REACH))
    # memory of the whole run (sources x steps, cells, log lines), before any is allocated
    nsrc_file = None
    if cfg.sourcefilename is not None:
        try:
            nsrc_file = os.path.getsize(_resolve(cfg, cfg.sourcefilename)) // 6 + 1
        except OSError:
            nsrc_file = 1
    check_memory(cfg, det.fpixels * det.spixels, steps, nsrc_file)
    if steps.phisteps > 100000 or steps.mosaic_domains > 10_000_000:
        raise ConfigError("too many phi steps or mosaic domains requested")
    # the detector's own checks before the crystal, the structure factors and the
    # sources: a run refused for its detector (facing away, an ROI of no pixel)
    # built 1e7 divergence sources first, 2 min and 6.6 GB (tools/fuzz.py cli,
    # seed 271)
    r0, r1, c0, c1 = roi_box(det)
    active = _frame_of_zeros((det.spixels, det.fpixels), (r1 - r0) * (c1 - c0),
                             cfg.mask_image is None)
    active[r0:r1, c0:c1] = 1
    if cfg.mask_image is not None:
        from .interop import as_array
        m = as_array(cfg.mask_image, "numpy")   # numpy, torch or CuPy (DLPack)
        if m.shape != active.shape:
            if cfg.maskfilename is None:     # the API's array (its message said "None: ...")
                raise ConfigError("mask_image is %dx%d pixels (shape %s) but the detector is "
                                  "%dx%d: give an array of shape (%d, %d)"
                                  % (m.shape[1], m.shape[0], tuple(m.shape), det.fpixels,
                                     det.spixels, det.spixels, det.fpixels))
            raise InputFileError("%s: mask is %dx%d pixels but the detector is %dx%d"
                                 % (cfg.maskfilename, m.shape[1], m.shape[0], det.fpixels, det.spixels))
        active[m == 0] = 0
    check_detector(cfg, det, active, (r0, r1, c0, c1))
    log.extend(steps.warnings)
    log.extend(det.log)
    if cfg.fudge != 1.0 and cfg.xtal_shape == "SQUARE":
        # (nanoBragg.c, too, reads -fudge only in the round, gauss and tophat
        # spots' argument; it says nothing)
        log.append("WARNING: -fudge %g is ignored: it scales the round, gauss and tophat spots' "
                   "shape argument (larger, narrower spots), "
                   "and this crystal is square (-square_xtal)" % cfg.fudge)

    interpolate = cfg.interpolate
    if interpolate > 1 and cfg.c_parity:
        # nanoBragg.c decides from the -N counts, before -xtal_size/-sample_* set
        # the crystal's (docs/quirks.md #43); the default mode decides below
        interpolate = _auto_interpolation(cfg.Na, cfg.Nb, cfg.Nc, log)

    # ---- crystal ------------------------------------------------------------
    rng = RngState()
    seed = cfg.seed if cfg.seed is not None else -int(time.time())
    misset_seed = cfg.misset_seed if cfg.misset_seed is not None else seed
    recip = None
    if cfg.matfilename is not None:
        from .io.mat import read_mosflm_mat
        recip = read_mosflm_mat(_resolve(cfg, cfg.matfilename))
        log.append("reading %s" % cfg.matfilename)
        if not cfg.c_parity and not cfg.user_cell:
            # a whole MOSFLM file says which wavelength its matrix carries
            from .io.mat import read_mosflm_cell
            cell_line = read_mosflm_cell(_resolve(cfg, cfg.matfilename))
            if cell_line is not None:
                warn = xtal.mat_cell_line_warning(cfg.matfilename, recip, cell_line, cfg.lambda0)
                if warn is not None:
                    log.append(warn)
    beam_clip = (cfg.beamsize, det.beam) if clip_across else None
    cr = xtal.build_crystal(replace(cfg, sample_y=sample_y, sample_z=sample_z), recip, cfg.lambda0,
                            rng, misset_seed, beam_clip=beam_clip)
    log.extend(cr.log)
    a_m = math.sqrt(sum(x * x for x in cr.a))
    b_m = math.sqrt(sum(x * x for x in cr.b))
    c_m = math.sqrt(sum(x * x for x in cr.c))
    xa, xb, xc = a_m * cr.Na, b_m * cr.Nb, c_m * cr.Nc
    log.append("crystal is %g x %g x %g microns" % (xa * 1e6, xb * 1e6, xc * 1e6))
    if interpolate > 1:
        # the crystal as rendered: its cell counts after the sizes and the beam's cut
        interpolate = _auto_interpolation(cr.Na, cr.Nb, cr.Nc, log)
    xmax = max(xa, xb, xc)
    recip_pixel, ratio, recommended = recommended_oversample(xmax, cfg.lambda0, det.distance,
                                                             det.pixel_size)
    oversample = cfg.oversample
    if oversample <= 0:
        oversample = recommended
        log.append("auto-selected %d-fold oversampling" % oversample)
    if oversample < recommended:
        log.append("WARNING: maximum dimension of sample is %g A" % (xmax * 1e10))
        log.append("         but reciprocal pixel size is %g A" % (recip_pixel * 1e10))
        log.append("         intensity may vary significantly across a pixel!")
        log.append("         recommend -oversample %d to work around this" % recommended)
    if oversample > 64:
        if not math.isfinite(ratio):
            # (the capped count, 4611686018427387904, said nothing of why)
            raise ConfigError("auto-selected oversampling is unbounded: the crystal's size "
                              "over the reciprocal pixel size (lambda x distance / pixel = %g A) "
                              "overflows; check -lambda, -distance and -pixel"
                              % (recip_pixel * 1e10))
        # the count alone hid its cause: a -lambda in metres gives 1e-10 A
        raise ConfigError("auto-selected oversampling of %d is too large: 3 x the crystal's size "
                          "(%g A) over the reciprocal pixel size (lambda x distance / pixel = "
                          "%g A); check -lambda, -distance and -pixel, or give -oversample "
                          "explicitly" % (oversample, xmax * 1e10, recip_pixel * 1e10))
    volume = xa * xb * xc
    log.append("approximate MW = %g" % (volume * 1.2e6 * AVOGADRO / (cr.Na * cr.Nb * cr.Nc)))

    # ---- structure factors ----------------------------------------------------
    used_fdump = False
    grid = cfg.hkl_grid
    if grid is not None:
        # a caller-supplied structure-factor grid (F may be numpy/torch/CuPy)
        from .interop import as_array
        grid = replace(grid, F=as_array(grid.F, "numpy", dtype=np.float64))
        log.append("using the structure-factor grid given through the API")
    elif hklpath is not None:
        from .io.hkl import read_hkl
        log.append("counting entries in %s" % cfg.hklfilename)
        # a NaN or infinite F is refused with its line in the default mode;
        # -c_parity reads it as nanoBragg.c's %lg does (its pixels go NaN)
        grid = read_hkl(hklpath, cfg.default_F, memory=memory_limit(cfg),
                        allow_nonfinite_F=cfg.c_parity, c_second_pass=cfg.c_parity)
        log.extend(getattr(grid, "warnings", []))
        if cfg.default_F != 0.0:
            log.append("initializing to default_F = %g:" % cfg.default_F)
            log.append("done initializing:")
        log.append("re-reading %s" % cfg.hklfilename)
    elif have_fdump:
        from .io.hkl import read_fdump
        grid = read_fdump(fdump_path, memory=memory_limit(cfg),
                          allow_nonfinite_F=cfg.c_parity)   # (as read_hkl above)
        used_fdump = True
        log.append("reading Fs from %s (cache of a previous -hkl run; nanoBragg.c reads it "
                   "silently when -hkl is absent)" % cfg.fdump_path)
    if grid is not None:
        Fhkl = np.ascontiguousarray(grid.F, dtype=np.float64)
        bounds = (grid.h_min, grid.h_max, grid.k_min, grid.k_max, grid.l_min, grid.l_max)
        hkls = int(grid.hkls)
    else:
        Fhkl = np.zeros((1, 1, 1))
        bounds = (0, 0, 0, 0, 0, 0)
        hkls = 0
    if hkls == 0:
        interpolate = 0

    if cfg.stolfilename is not None:
        from .io.textcols import read_text_columns
        log.append("reading %s" % cfg.stolfilename)
        if len(read_text_columns(_resolve(cfg, cfg.stolfilename), 2)) == 0:
            raise InputFileError("%s: no data in input file" % cfg.stolfilename)

    # the depth of each layer's sampled point: its middle in the default mode (#39)
    at = 0.0 if cfg.c_parity else 0.5
    for t in range(steps.detector_thicksteps):
        log.append("thick%d = %g um" % (t, steps.detector_thickstep * (t + at) * 1e6))
    phis = xtal.phi_angles(steps.phi0, steps.phistep, steps.phisteps, steps.phi_offset)
    for t, p in enumerate(phis):
        log.append("phi%d = %g" % (t, p * RTD))

    # ---- sources ----------------------------------------------------------
    src = _sources(cfg, steps, det)
    if len(src.wavelength) == 0:
        raise ConfigError("no x-ray sources survive the divergence settings")
    if np.any(src.wavelength <= 0) or not np.all(np.isfinite(src.wavelength)):
        raise ConfigError("source wavelengths must be finite and > 0")
    if not cfg.c_parity:
        edge = max(float(np.linalg.norm(v)) for v in (cr.a, cr.b, cr.c))
        lam = float(np.min(src.wavelength))
        if not 2.0 * edge / lam < MAX_MILLER_REACH:
            raise ConfigError("the Miller indices would reach %.3g (twice the longest cell edge, "
                              "%g A, over the shortest wavelength, %g A): past %.3g a double "
                              "holds too little of an index's fraction for the lattice factor; "
                              "check -lambda (A) and the -sourcefile wavelengths (m)"
                              % (2.0 * edge / lam, edge * 1e10, lam * 1e10, MAX_MILLER_REACH))
    log.extend(src.log)

    # ---- mosaic domains and rotated cells -------------------------------------
    umats = xtal.mosaic_umats(steps.mosaic_spread, steps.mosaic_domains, rng, cfg.mosaic_seed,
                              c_rules=cfg.c_parity)
    log.append("  created a total of %d mosaic domains" % steps.mosaic_domains)
    cells = xtal.rotated_cells(cr, det.spindle, phis, umats, steps.mosaic_spread, cfg.c_parity)

    nsteps = len(src.wavelength) * steps.mosaic_domains * steps.phisteps * oversample * oversample
    # amorphous (water) background: F_bg^2 times the molecules in a cube of side
    # -water, added to the pixel sum like an F^2 F_latt^2 term, which the kernel then
    # scales by r_e^2 * fluence.  nanoBragg.c puts r_e^2 * fluence into I_bg as well,
    # so its background grows as fluence^2 (docs/quirks.md #14); -c_parity keeps that,
    # in the C's order of multiplications (bit-for-bit images).
    # The default mode's cube is cut across the beam to its width, as the crystal
    # is (#30): the beam crosses water_size of it, over its own area; nanoBragg.c
    # counts the whole cube whatever the beam, so a 10 um beam through 100 um of
    # water lit 100 times the water it crosses (docs/quirks.md #37)
    water_across = cfg.water_size
    if not cfg.c_parity and 0.0 < cfg.beamsize < cfg.water_size:
        water_across = cfg.beamsize
        log.append("WARNING: the beam (%g mm wide) crosses %g mm of water (-water) over its "
                   "own width: the background is of %g x %g x %g mm of water"
                   % (cfg.beamsize * 1e3, cfg.water_size * 1e3, cfg.water_size * 1e3,
                      cfg.beamsize * 1e3, cfg.beamsize * 1e3))
    I_bg = (WATER_F * WATER_F * R_E_SQR * fluence * cfg.water_size * cfg.water_size
            * cfg.water_size * 1e6 * AVOGADRO / WATER_MW) if cfg.c_parity else \
        (WATER_F * WATER_F * cfg.water_size * water_across * water_across
         * 1e6 * AVOGADRO / WATER_MW)
    if not cfg.c_parity:
        # the kernels divide the pixel sum by the step count, the background
        # included, but the background enters it once, not once per sub-path:
        # nanoBragg.c's background falls as 1/steps (a quarter with -oversample 2,
        # a third with 3 phi steps at one angle; docs/quirks.md #19)
        I_bg *= nsteps

    return Model(cfg=cfg, det=det, steps=steps, crystal=cr, sources=src, phis=phis, umats=umats,
                 cells=cells, Fhkl=Fhkl, hkl_bounds=bounds, hkls=hkls, interpolate=interpolate,
                 oversample=oversample, nsteps=nsteps, fluence=fluence, flux=flux, I_bg=I_bg,
                 seed=seed, active=active, rng=rng, used_fdump=used_fdump, log=log,
                 fdump_grid=grid if hklpath is not None else None)

