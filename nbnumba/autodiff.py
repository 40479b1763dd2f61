"""Differentiable simulation: nanoBragg images as torch tensors with gradients.

::

    import torch
    from nbnumba.autodiff import simulate, structure_factors
    cell = torch.tensor([70., 80., 90., 85., 95., 105.], dtype=torch.float64, requires_grad=True)
    img = simulate(argv, cell=cell)          # (S, F) photons/pixel, with a grad_fn
    img.sum().backward()                     # cell.grad: d(sum)/d(a, b, c (A), angles (deg))

Every keyword overrides the matching flag of ``argv`` (nanoBragg flags) and may
be a torch tensor (float64 or float32, requiring grad or not) or plain numbers:

==============  =====  ==================================================
keyword         size   meaning (units)
==============  =====  ==================================================
cell            6      a, b, c (Angstrom), alpha, beta, gamma (degrees)
misset          3      rotations about x, y, z (degrees), as -misset
distance        1      sample-detector distance (mm), as -distance
beam_center     2      Xbeam, Ybeam (mm)
pix0            3      detector origin (mm, lab frame), as -pix0_vector_mm
                       (which argv must give: the flag picks the convention)
detector_rot    3      detector rotations about x, y, z (degrees), as
                       -detector_rotx/-detector_roty/-detector_rotz
twotheta        1      detector two-theta (degrees), as -twotheta
wavelength      1      Angstrom (all sources scale with it)
mosaic_spread   1      mosaic spread (degrees), as -mosaic
spindle_axis    3      the spindle (phi) axis, as -spindle_axis (which argv
                       must give: the flag picks the CUSTOM convention); any
                       length, made a unit vector as the flag's value is
beam_vector     3      the beam direction, as -beam_vector (which argv must
                       give, as spindle_axis); any length, made a unit vector
hdivrange       1      horizontal divergence range (mrad), as -hdivrange
vdivrange       1      vertical divergence range (mrad), as -vdivrange
dispersion      1      spectral width (percent of the wavelength), as
                       -dispersion (for these three the run's point counts
                       are kept: the derivative is taken between the ranges
                       where a count jumps; with -hdivstep / -vdivstep given
                       the range sets the count, and is refused;
                       docs/autodiff.md)
detector_thick  1      sensor thickness (um), as -detector_thick (the
                       run's layer count is kept)
detector_abs    1      sensor attenuation length (um), as -detector_abs
polarization    1      Kahn polarization factor, as -polar
N               3      Na, Nb, Nc (continuous in the lattice factor)
fluence         1      photons/m^2 (replaces -flux/-exposure/-beamsize)
F_hkl           grid   structure factors, see :func:`structure_factors`
==============  =====  ==================================================

The forward pass is the numba kernel's pixel function in float64; the
backward pass is the adjoint kernel in ``nbnumba.kernels.adjoint``, which
returns dI/dtheta for kernel-level quantities theta (cell vectors, detector
origin and axes, wavelength scale, N, fluence, F grid) contracted with the upstream
gradient.  The host maps the user parameters to theta (see ``_Run``).  With
``-device cuda`` in argv both passes run ``adjoint_f64`` of nanobragg.cu (the
same formulas) through CuPy (``kernels.gpu.adjoint``).  What is and is not
differentiable is in docs/autodiff.md.  torch is imported lazily;
``import nbnumba`` never needs it.
"""
from __future__ import annotations

import copy
import functools
import math
import os
import sys
import threading
from contextlib import contextmanager
from dataclasses import replace

import numpy as np

from .errors import ArgumentTypeError, ArgumentValueError, ConfigError
from .kernels import adjoint as A
from .kernels import cpu as K
from .physics import SHAPE_GAUSS
from .api import PARALLEL_KERNEL_LOCK
# (loaded by .api already; at module level, the host map's ~50 builds per
# backward skip an import statement each)
from . import crystal as xtal
from .geometry import build_detector
from .rng import RngState
from .sampling import SWEEPS, sweep_at

__all__ = ["simulate", "structure_factors", "jacobian", "PARAMETERS"]

#: keyword -> number of values (F_hkl: the grid of structure_factors(argv))
PARAMETERS = {"cell": 6, "misset": 3, "distance": 1, "beam_center": 2, "pix0": 3,
              "detector_rot": 3,
              "twotheta": 1, "wavelength": 1, "mosaic_spread": 1, "spindle_axis": 3,
              "beam_vector": 3, "hdivrange": 1, "vdivrange": 1, "dispersion": 1,
              "detector_thick": 1, "detector_abs": 1,
              "polarization": 1, "N": 3, "fluence": 1, "F_hkl": None}
#: the ones that move the detector (build_detector reads no crystal flag; the
#: beam direction moves the origin and the close distance, as the pivot says)
_DETECTOR = ("distance", "beam_center", "pix0", "detector_rot", "twotheta", "beam_vector")
#: the ones that move the cell or the detector: the host maps them to theta
#: (mosaic_spread and spindle_axis through the rotated cells' derivatives,
#: _Run.mosaic_cells and _Run.spindle_cells)
_GEOMETRIC = ("cell", "misset", "wavelength", "mosaic_spread", "spindle_axis", "hdivrange",
              "vdivrange", "dispersion", "detector_thick", "detector_abs") + _DETECTOR
#: the ones that turn each (phi, mosaic) cell: keyword -> (their theta entries,
#: the _Run method giving the cells' derivatives, 9 rows per entry), in the
#: order of the kernel's blocks (_Run.rotation_cells)
_TURNS_CELLS = {"mosaic_spread": ((A.P_MOS,), "mosaic_cells"),
                "spindle_axis": ((A.P_SPIN, A.P_SPIN + 1, A.P_SPIN + 2), "spindle_cells")}
#: the ones that move each source's incident vector or wavelength: keyword ->
#: their theta entries (the kernel's per-source blocks, _Run.incident_blocks)
_TURNS_SOURCES = {"beam_vector": (A.P_BEAM, A.P_BEAM + 1, A.P_BEAM + 2),
                  "hdivrange": (A.P_DIV,), "vdivrange": (A.P_DIV + 1,),
                  "dispersion": (A.P_DISP,)}
#: the swept ranges: keyword -> (sampling.SWEEPS name, whose range and step
#: fields Config shares, the keyword's unit in the Config's: mrad, percent)
_SWEPT = {"hdivrange": ("hdiv", 1e-3), "vdivrange": ("vdiv", 1e-3), "dispersion": ("disp", 1e-2)}
#: the sensor's keywords: keyword -> their theta entries (the layer thickness
#: and the attenuation coefficient; _Run.chain_matrix maps them)
_SENSOR = {"detector_thick": (A.P_TSTEP, A.P_MU), "detector_abs": (A.P_MU,)}
#: direction keywords: any length, made a unit vector by the run (their host
#: map's steps are relative to the vector's length)
_DIRECTIONS = ("spindle_axis", "beam_vector")
#: keywords that are rotation angles in degrees (host_jacobian reduces them mod 360)
_PERIODIC_DEG = ("misset", "detector_rot", "twotheta")
#: the ones that turn the detector axes (the stored Jacobian keeps their columns)
_TURNS_DETECTOR = ("detector_rot", "twotheta")
#: Richardson steps for the host map's Jacobian, in the keyword's units
#: (relative for lengths and the wavelength, absolute for angles)
_STEP = {"cell": (1e-4, 1e-4, 1e-4, 1e-3, 1e-3, 1e-3), "misset": (1e-3,) * 3,
         "distance": (1e-2,), "beam_center": (1e-2, 1e-2), "pix0": (1e-2,) * 3,
         "wavelength": (1e-5,),
         "detector_rot": (1e-3,) * 3, "twotheta": (1e-3,), "beam_vector": (1e-3,) * 3}
#: row chunks of the adjoint pass, each with its own F-grid and cell buffers:
#: at most N_CHUNKS, and one per CHUNK_ROWS rows of the -roi box (a 21-row box
#: took 8 F-grid buffers, whose zeroing and sum cost more than its F pass)
N_CHUNKS = 8
CHUNK_ROWS = 16
#: largest per-pixel Jacobian the forward keeps (up to N_PAR float64 per active
#: pixel, 18 for a square crystal: 36 MiB at 512^2); above it the backward
#: reruns the adjoint pass instead (docs/autodiff.md, "Performance": the
#: peak-RSS target)
JAC_MAX_BYTES = 128 * 2 ** 20
#: below this many lattice evaluations per pass (active pixels x sub-pixels x
#: sources x cells) the kernels run on the calling thread alone: a 21 x 21 ROI
#: (4,410) took as long on one thread as on two at best, and two threads now
#: and then waited about 4 ms for the second to wake (an OpenMP worker on a
#: 2-vCPU guest; docs/autodiff_rounds.md, "Twelfth round").  The results do not
#: depend on the thread count (fixed chunks)
SMALL_WORK = 8192
_RELATIVE = {"cell": (True, True, True, False, False, False), "wavelength": (True,)}
#: keywords the host map is affine in (pix0 in the distance and the beam centre,
#: for every convention and pivot; pix0 and the close distance in a given
#: -pix0_vector): one central difference is exact up to rounding
_AFFINE = ("distance", "beam_center", "pix0")
#: the theta entries the host derives from the cell and the detector (_Run._host_theta)
_HOST_ROWS = np.r_[0:A.N_HOST, A.P_ODET:A.P_ODET + 3]


def _torch():
    try:
        import torch
    except ImportError:   # pragma: no cover - exercised only without torch
        raise ImportError("nbnumba.autodiff needs torch: pip install nbnumba[torch]") from None
    return torch


def _parse(argv):
    from .validate import argv_words
    from .flags import parse_argv
    return _with_hkl_grid(parse_argv([str(a) for a in argv_words(argv)]))


#: the structure-factor files read last: (path, default_F) -> (the file's bytes, HKLGrid)
_HKL_MEMO = {}
_HKL_MEMO_SIZE = 4
_HKL_MEMO_LOCK = threading.Lock()


def _with_hkl_grid(cfg):
    """cfg with its -hkl file's grid attached (cfg.hkl_grid, a copy of it per
    call), parsed once while the file's bytes stay the same.  A refinement
    calls simulate() hundreds of times with one -hkl file, and parsing it was
    most of each call's set-up (27 of 37 ms for the Pilatus ROI's generated P1
    file); reading the bytes and comparing them is about a fiftieth of that.
    The comparison is of the whole content, not of a modification time (file
    times step in milliseconds, a rewrite within one step would be missed).
    A file that cannot be read is left to build_model to report."""
    if cfg.hklfilename is None or cfg.hkl_grid is not None:
        return cfg
    from .io._args import read_all
    from .io.hkl import parse_hkl
    from .model import _resolve
    from .validate import memory_limit
    path = _resolve(cfg, cfg.hklfilename)
    try:
        with open(path, "rb") as fh:
            data = read_all(fh, path)   # (-hkl /dev/zero: the OOM killer, before)
    except OSError:
        return cfg
    key = (os.path.abspath(path), repr(float(cfg.default_F)))
    with _HKL_MEMO_LOCK:
        hit = _HKL_MEMO.get(key)
    if hit is None or hit[0] != data:
        grid = parse_hkl(data, os.fspath(path), cfg.default_F,
                         memory=memory_limit(cfg))
        with _HKL_MEMO_LOCK:
            _HKL_MEMO.pop(key, None)
            _HKL_MEMO[key] = (data, grid)
            while len(_HKL_MEMO) > _HKL_MEMO_SIZE:
                _HKL_MEMO.pop(next(iter(_HKL_MEMO)))
    else:
        grid = hit[1]
    return replace(cfg, hkl_grid=replace(grid, F=grid.F.copy(), warnings=list(grid.warnings)))


def _override(cfg, vals):
    """Config with the keyword values (in the keywords' units) applied."""
    kw = {}
    if "cell" in vals:
        a, b, c, al, be, ga = (float(x) for x in vals["cell"])
        kw.update(user_cell=True, cell_a=a, cell_b=b, cell_c=c, cell_alpha=math.radians(al),
                  cell_beta=math.radians(be), cell_gamma=math.radians(ga))
    if "misset" in vals:
        kw.update(misset_mode=1, misset=tuple(math.radians(float(x)) for x in vals["misset"]))
    if "distance" in vals:
        kw["distance"] = float(vals["distance"][0]) * 1e-3
    if "beam_center" in vals:
        kw["Xbeam"], kw["Ybeam"] = (float(x) * 1e-3 for x in vals["beam_center"])
    if "pix0" in vals:
        kw.update(pix0_vector=tuple(float(x) * 1e-3 for x in vals["pix0"]), pix0_set=True)
    if "detector_rot" in vals:
        kw["detector_rotx"], kw["detector_roty"], kw["detector_rotz"] = (
            math.radians(float(x)) for x in vals["detector_rot"])
    if "twotheta" in vals:
        kw["detector_twotheta"] = math.radians(float(vals["twotheta"][0]))
    if "wavelength" in vals:
        kw["lambda0"] = float(vals["wavelength"][0]) * 1e-10
    if "N" in vals:
        kw["Na"], kw["Nb"], kw["Nc"] = (float(x) for x in vals["N"])
    if "mosaic_spread" in vals:
        kw["mosaic_spread"] = math.radians(float(vals["mosaic_spread"][0]))
    if "spindle_axis" in vals:
        kw["spindle_vector"] = tuple(float(x) for x in vals["spindle_axis"])
    if "beam_vector" in vals:
        kw["beam_vector"] = tuple(float(x) for x in vals["beam_vector"])
    for name, (sweep, unit) in _SWEPT.items():
        if name in vals:
            kw[SWEEPS[sweep][0]] = float(vals[name][0]) * unit
    if "detector_thick" in vals:
        kw["detector_thick"] = float(vals["detector_thick"][0]) * 1e-6
    if "detector_abs" in vals:
        # as the flag: mu = 1/length (a length > 0; _check_sensor)
        kw["detector_mu"] = 1.0 / (float(vals["detector_abs"][0]) * 1e-6)
    if "polarization" in vals:
        kw["polarization"] = float(vals["polarization"][0])
    if "fluence" in vals:
        kw.update(fluence=float(vals["fluence"][0]), flux=0.0)
    # a copy with the fields set, as dataclasses.replace(cfg, **kw) gives
    # (Config has no __post_init__ and is not frozen) at a twentieth of its
    # cost: the host map's differences call this ~50 times per backward
    out = copy.copy(cfg)
    for k, v in kw.items():
        setattr(out, k, v)
    return out


def _check_supported(cfg, given, needs_grad):
    """Refuse what the adjoint does not model, naming the flag (never a silent
    zero or detached gradient)."""
    if cfg.c_parity:
        raise ConfigError("nbnumba.autodiff: -c_parity is not supported (the default mode only)")
    if cfg.device not in ("cpu", "cuda", None):
        raise ConfigError("nbnumba.autodiff: unknown -device %s (cpu or cuda)" % cfg.device)
    if "cell" in given and cfg.matfilename is not None:
        raise ConfigError("cell= cannot override -mat: give -cell instead of -mat")
    if "N" in given and (cfg.sample_x > 0 or cfg.sample_y > 0 or cfg.sample_z > 0):
        raise ConfigError("N= cannot override a crystal size given with -xtal_size/-sample_*")
    if "distance" in given and not math.isnan(cfg.close_distance):
        raise ConfigError("distance= cannot override -close_distance")
    if "pix0" in given and not cfg.pix0_set:
        # the flag also selects the CUSTOM convention: the keyword replaces its
        # value only, so the run is the one the flags describe
        raise ConfigError("pix0= replaces the value of -pix0_vector_mm (or -pix0_vector): "
                          "give one of them in argv")
    for name in _DIRECTIONS:
        if name in given and cfg.beam_convention != "CUSTOM":
            # the other conventions fix the vector (nanoBragg.c's table): the keyword
            # replaces the flag's value only, so the run is the one the flags describe
            raise ConfigError("%s= replaces the value of -%s (read in the CUSTOM convention, "
                              "which the flag selects): give it in argv" % (name, name))
    if not needs_grad:
        return
    if (cfg.misset_mode == -1 and cfg.misset_seed is None and cfg.seed is None
            and "misset" not in given):
        # a refiner calls simulate many times: each call would draw another
        # orientation (the C's seed is minus the time in seconds)
        raise ConfigError("-misset random draws a new orientation from the clock in every call "
                          "(the time seed): give -misset_seed (or -seed) with gradients, or "
                          "misset= with the angles")
    if "wavelength" in needs_grad and cfg.sourcefilename is not None:
        raise ConfigError("wavelength= is not differentiable with -sourcefile "
                          "(its wavelengths do not scale with -lambda)")


def _check_sensor(cfg, vals, needs_grad, steps=None):
    """Refuse a sensor keyword value the run cannot use or differentiate and,
    given the run's resolved sampling ``steps``, a sensor keyword that
    requires grad without a sensor."""
    if "detector_thick" in vals:
        x = float(vals["detector_thick"][0])
        if x < 0.0:
            raise ConfigError("detector_thick= is negative (%r um): give a thickness >= 0" % x)
        if x == 0.0 and "detector_thick" in needs_grad:
            raise ConfigError("detector_thick= of 0 cannot be differentiated: the sensor "
                              "vanishes there (every capture fraction becomes 1); pass a "
                              "thickness > 0")
    if "detector_abs" in vals:
        x = float(vals["detector_abs"][0])
        if not x > 0.0:
            raise ConfigError("detector_abs= must be an attenuation length > 0 um (got %r); "
                              "give -detector_abs inf in argv to turn absorption off" % x)
    if steps is not None and any(k in vals for k in _SENSOR):
        if any(k in needs_grad for k in _SENSOR) and not steps.detector_thick > 0.0:
            raise ConfigError("%s= needs a sensor to be differentiated: give -detector_thick "
                              "(or detector_thick=) > 0" % next(k for k in _SENSOR
                                                                 if k in needs_grad))


def _check_sweeps(cfg, vals, needs_grad):
    """Refuse a divergence range or dispersion keyword that the run cannot
    use or differentiate (cfg: with the keywords' values)."""
    for name in _SWEPT:
        if name not in vals:
            continue
        if cfg.sourcefilename is not None:
            raise ConfigError("%s= has no effect with -sourcefile (the file lists the "
                              "sources): leave it out or drop -sourcefile" % name)
        x = float(vals[name][0])
        if x < 0.0:
            raise ConfigError("%s= is negative (%r): give a range >= 0" % (name, x))
        step_flag = SWEEPS[_SWEPT[name][0]][1]
        if name in needs_grad and getattr(cfg, step_flag) > 0.0:
            # a given step makes the count a step function of the range (and
            # nanoBragg.c's points, -c_parity, stay that step apart)
            raise ConfigError("%s= cannot be differentiated with -%s given: the step sets "
                              "how many points the range holds, a step function of it "
                              "(docs/quirks.md #22, #44); give -%s or neither"
                              % (name, step_flag, SWEEPS[_SWEPT[name][0]][2]))
        if x == 0.0 and name in needs_grad:
            # the sweep collapses to one point at 0; with more than one point on
            # the other side (a given count or step, the round cut of the other
            # direction) the image kinks or jumps there
            raise ConfigError("%s= of 0 cannot be differentiated: nanoBragg collapses a zero "
                              "range to one source, and the image is not differentiable "
                              "there; pass a range > 0" % name)


@contextmanager
def _kernel_threads(small):
    """PARALLEL_KERNEL_LOCK held, and numba's threads for this thread's
    parallel kernels set to one while ``small`` (SMALL_WORK), restored after."""
    with PARALLEL_KERNEL_LOCK:
        if not small:
            yield
            return
        import numba
        n = numba.get_num_threads()
        numba.set_num_threads(1)
        try:
            yield
        finally:
            numba.set_num_threads(n)


def _cell_rotations(model):
    """rots[j, m] = R_j e_m: the rotation taking the unrotated cell to cell j
    (phi step x mosaic domain), from crystal.rotated_cells itself, which is
    linear in the cell vectors."""
    from types import SimpleNamespace
    basis = SimpleNamespace(a=(1.0, 0.0, 0.0), b=(0.0, 1.0, 0.0), c=(0.0, 0.0, 1.0))
    st = model.steps
    out = xtal.rotated_cells(basis, model.det.spindle, model.phis, model.umats,
                             st.mosaic_spread, False)
    return np.ascontiguousarray(out[1].reshape(-1, 3, 3))


def _check_values(vals, needs_grad, F_values):
    """ConfigError for keyword values no run can use: a NaN or an infinity (a
    NaN beam_center would otherwise read as -Xbeam/-Ybeam not given, the C's
    sentinel, and silently centre the beam), or a fluence of 0 requiring grad
    (the image is proportional to the fluence, so its derivative is the image
    per unit fluence, which a zero image does not give)."""
    for name, x in vals.items():
        bad = np.flatnonzero(~np.isfinite(x))
        if bad.size:
            raise ConfigError("%s= has a non-finite value (%r at index %d): every keyword "
                              "value must be a finite number" % (name, float(x[bad[0]]),
                                                                 int(bad[0])))
    for name in _DIRECTIONS:
        if name in vals and not np.any(vals[name]):
            raise ConfigError("%s= is the zero vector: give a direction" % name)
    if F_values is not None and not np.all(np.isfinite(F_values)):
        i = tuple(int(v) for v in np.argwhere(~np.isfinite(F_values))[0])
        raise ConfigError("F_hkl= has a non-finite value (%r at grid index %s): every "
                          "structure factor must be a finite number" % (float(F_values[i]), i))
    if "fluence" in needs_grad and float(vals["fluence"][0]) == 0.0:
        raise ConfigError("fluence= of 0 cannot be differentiated: the image is proportional "
                          "to the fluence, and its derivative (the image per unit fluence) "
                          "is not recoverable from a zero image; pass a fluence > 0")


class _Run:
    """One prepared simulation: the Model at the given values, the kernel
    arguments, and (lazily) the Jacobian of theta w.r.t. the keywords."""

    def __init__(self, argv, vals, needs_grad, F_values, keep_jac=True):
        from .model import build_model
        from .validate import argv_words
        _check_values(vals, needs_grad, F_values)
        # (a list once: an iterator would be used up by the parse, and the
        # -twotheta test below then saw no flags at all)
        argv = [str(a) for a in argv_words(argv)]
        cfg0 = _parse(argv)
        if "twotheta" in vals and "-twotheta" not in [str(a) for a in argv]:
            # as -twotheta appended to argv: it selects the SAMPLE pivot (with
            # -twotheta in argv the keyword replaces its value, argv's pivot stays)
            cfg0 = replace(cfg0, detector_pivot="SAMPLE")
        _check_supported(cfg0, set(vals) | ({"F_hkl"} if F_values is not None else set()),
                         needs_grad)
        _check_sensor(cfg0, vals, needs_grad)
        cfg = _override(cfg0, vals)
        _check_sweeps(cfg, vals, needs_grad)
        model = build_model(cfg)
        _check_sensor(cfg, vals, needs_grad, model.steps)
        # freeze what build_model chose (auto oversample, time seed) so the
        # host map below sees the same run
        self.cfg = replace(cfg, oversample=model.oversample, seed=model.seed)
        self.model = model
        self.vals = vals
        self.needs_grad = needs_grad
        if F_values is not None:
            if model.hkls == 0:
                raise ConfigError("F_hkl= needs a structure-factor file (-hkl): the run uses "
                                  "default_F only")
            if tuple(F_values.shape) != model.Fhkl.shape:
                raise ConfigError("F_hkl has shape %s; this run's grid is %s "
                                  "(see structure_factors(argv))"
                                  % (tuple(F_values.shape), model.Fhkl.shape))
            model.Fhkl = np.ascontiguousarray(F_values, dtype=np.float64)
        self.args = list(model.kernel_args(np.float64))
        c = model.crystal
        if cfg.xtal_shape == "SQUARE" and any(n != math.floor(n) for n in (c.Na, c.Nb, c.Nc)):
            # the reduced-argument sincg assumes an integer N; between integers
            # the lattice factor is sin(N pi h)/sin(pi h) as the C writes it
            # (equal at integers to rounding, so the image is continuous in N)
            self.args[0][K.I_REDUCED] = 0
        if "mosaic_spread" in needs_grad and (model.steps.mosaic_spread <= 0.0
                                              or model.steps.mosaic_domains < 2):
            raise ConfigError("mosaic_spread= needs a spread > 0 and -mosaic_dom >= 2 to be "
                              "differentiated (the domains' rotations are drawn only then)")
        self._rots = None       # the cells' rotations, when a pass needs them (rots)
        self._mosaic_cells = None   # their derivatives in the spread (mosaic_cells)
        self._spindle_cells = None  # ... and in the spindle axis (spindle_cells)
        self._source_blocks = {}    # keyword -> its per-source blocks (source_blocks)
        self._points = None         # the divergence points the run keeps (_source_rows)
        self.recip = None
        if cfg.matfilename is not None:
            from .io.mat import read_mosflm_mat
            from .model import _resolve
            self.recip = read_mosflm_mat(_resolve(cfg, cfg.matfilename))
        self.image = None
        self._jac = {}
        # -device cuda: the forward and the adjoint run nanobragg.cu's
        # adjoint_f64 through CuPy (ConfigError here, one line, without a GPU)
        self.device = cfg.device or "cpu"
        self._gpu_args = None
        if self.device == "cuda":
            from .kernels import gpu
            gpu.require_device()
            self._gpu_args = gpu.layout_args(self.args, np.float64)

        # the forward keeps dI/dtheta per pixel when something besides F_hkl
        # needs grad (and autograd records): the backward is then a contraction
        self.want = self._want(needs_grad)
        # the -roi box, which holds every active pixel: the kernels loop over it
        # (box), the host slices with it (rows, cols)
        r0, r1, c0, c1 = model.roi_box
        self.box = np.array((r0, r1, c0, c1), dtype=np.int64)
        self.rows, self.cols = slice(r0, r1), slice(c0, c1)
        # per row, counted inside the box only (a 21 x 21 ROI of a Pilatus frame:
        # counting the whole frame took longer than rendering the ROI)
        self.row_counts = np.zeros(model.active.shape[0], dtype=np.int64)
        self.row_counts[self.rows] = np.count_nonzero(model.active[self.rows, self.cols], axis=1)
        n_active = int(self.row_counts.sum())
        it = self.args[0]
        self.small = (n_active * it[K.I_OVERSAMPLE] ** 2 * it[K.I_NSRC] * it[K.I_NPHI]
                      * it[K.I_NMOS]) < SMALL_WORK
        self.pixel_jac = None
        self.jac_cols = self._jac_columns(self.want,
                                          it[K.I_SHAPE] == SHAPE_GAUSS,
                                          any(n in needs_grad for n in _TURNS_DETECTOR),
                                          self._rotation_entries(needs_grad)
                                          + self._source_entries(needs_grad)
                                          + self._sensor_entries(needs_grad),
                                          model.steps.detector_thick > 0.0,
                                          bool(cfg.curved_detector))
        self.keep_jac = (keep_jac and self.device == "cpu"
                         and (self.want & (A.W_N | A.W_GEO | A.W_POL)) != 0
                         and n_active * self.jac_cols.size * 8 <= JAC_MAX_BYTES)

    @property
    def rots(self):
        """(ncell, 3, 3) rotation of each (phi, mosaic) cell (_cell_rotations), built on
        first use: a forward without grad does not need them."""
        if self._rots is None:
            self._rots = _cell_rotations(self.model)
        return self._rots

    def _gpu(self, g=None, want_F=False):
        from .kernels import gpu
        # the kernel writes its per-source block q to P_BEAM + q
        dinc = self.incident_blocks(dense=True)[0] if g is not None else None
        return gpu.adjoint(self._gpu_args, self.model.active, g, want_F, dinc=dinc)

    @staticmethod
    def _rotation_entries(needs_grad):
        """The per-cell rotation entries of theta (adjoint.P_MOS, P_SPIN..) of
        the keywords in needs_grad, in the order of rotation_cells' blocks."""
        return [p for k, (ps, _) in _TURNS_CELLS.items() if k in needs_grad for p in ps]

    @staticmethod
    def _sensor_entries(needs_grad):
        """The sensor's entries of theta (adjoint.P_TSTEP, P_MU) that the
        keywords in needs_grad move."""
        return sorted({p for k, ps in _SENSOR.items() if k in needs_grad for p in ps})

    @staticmethod
    def _source_entries(needs_grad):
        """The per-source entries of theta (adjoint.P_BEAM..) of the keywords in
        needs_grad, in the order of incident_blocks' blocks."""
        return [p for k, ps in _TURNS_SOURCES.items() if k in needs_grad for p in ps]

    @staticmethod
    def _jac_columns(want, gauss, turns_detector=False, rotation=(), sensor=False,
                     curved=False):
        """The theta indices the stored Jacobian keeps: those the adjoint can
        make nonzero for want (the reciprocal vectors only for the gauss shape)
        and that a keyword can move (the detector axes only when a rotation
        keyword needs grad, and then the normal too when the sensor has a
        thickness (``sensor``), the per-cell rotation and per-source entries
        ``rotation`` only when their keywords do: _rotation_entries,
        _source_entries; with -curved_det the normal too when the axes turn:
        the sphere is made of the close distance and the three axes)."""
        cols = [A.P_FLU] + list(rotation)
        if want & A.W_POL:
            cols += [A.P_KAHN]
        if want & A.W_N:
            cols += [A.P_NA, A.P_NB, A.P_NC]
        if want & A.W_GEO:
            cols += list(range(A.P_A, A.P_C + 3)) + list(range(A.P_PIX0, A.P_PIX0 + 3))
            cols += [A.P_CLOSE, A.P_LAM]
            if gauss:
                cols += list(range(A.P_ASTAR, A.P_CSTAR + 3))
            if turns_detector:
                cols += list(range(A.P_FDET, A.P_SDET + 3))
                if sensor or curved:
                    cols += list(range(A.P_ODET, A.P_ODET + 3))
        return np.array(sorted(cols), dtype=np.int64)

    @staticmethod
    def _want(needs_grad):
        """The adjoint's bit mask (A.W_*) for the keywords in needs_grad."""
        want = 0
        if "F_hkl" in needs_grad:
            want |= A.W_F
        if "N" in needs_grad:
            want |= A.W_N
        if "polarization" in needs_grad:
            want |= A.W_POL
        if any(n in needs_grad for n in _GEOMETRIC):
            want |= A.W_GEO
        return want

    def _rot(self):
        """rot[3 m + n, j] = R_j[n, m] (adjoint.pixel_grad's layout)."""
        ncell = self.rots.shape[0]
        return np.ascontiguousarray(self.rots.reshape(ncell, 9).T)

    def _check_finite(self, image):
        """ConfigError when the image's -roi box holds inf or NaN (0 outside
        it), naming the term that overflowed (validate.check_image_finite),
        as the CLI refuses such a run: never an image of inf, nor the NaN
        gradients that inf times 0 makes in the backward."""
        box = image[self.rows, self.cols]
        if self.device == "cuda":
            import cupy as cp
            if bool(cp.isfinite(box).all()):
                return
            from .interop import to_numpy
            box = to_numpy(box)
        elif np.isfinite(box).all():
            return
        from .validate import check_image_finite
        check_image_finite(self.model, box, double=True)

    def forward(self):
        """The float64 image: numpy, or a CuPy array with -device cuda."""
        if self.device == "cuda":
            self.image = self._gpu()[0]
            self._check_finite(self.image)
            return self.image
        S, F = self.model.shape
        out = np.zeros((S, F))
        active = self.model.active
        box = self.box
        if self.keep_jac:
            counts = self.row_counts
            rowstart = np.concatenate(([0], np.cumsum(counts)[:-1])).astype(np.int64)
            jac = np.empty((int(counts.sum()), self.jac_cols.size))
            dcells, dpar = self.rotation_cells()
            dinc, ipar = self.incident_blocks()
            with _kernel_threads(self.small):
                A.kernels_for(*self.args[:2])[0](
                    active, box, rowstart, *self.args, self.want, self._rot(), dcells, dpar,
                    dinc, ipar, self.jac_cols, jac, out)
            self.pixel_jac = (rowstart, jac)
        else:
            with _kernel_threads(self.small):    # a prange kernel (see api.PARALLEL_KERNEL_LOCK)
                A.render64(active, box, *self.args, out)
        self._check_finite(out)
        self.image = out
        return out

    def frame(self, g_box):
        """A float64 (S, F) frame of zeros with g_box (the -roi box's values) in
        the box.  numpy allocates the zeros lazily, so only the box's pages are
        touched: the kernels read a frame only at active pixels."""
        out = np.zeros(self.model.shape)
        out[self.rows, self.cols] = g_box
        return out

    def _g64(self, g):
        """g (S, F) as the kernels take it: float64, C-contiguous.  A g of
        another layout (img.sum()'s backward hands over a stride-0 view of ones)
        is copied over the -roi box only (frame): copying a Pilatus-sized frame
        for a 21 x 21 ROI took 9 ms, a third of that case's backward."""
        g = np.asarray(g)
        if g.dtype == np.float64 and g.flags.c_contiguous:
            return g
        return self.frame(g[self.rows, self.cols])

    def theta_grad(self, g):
        """(sum over pixels of g dI/dtheta (N_PAR,), F-grid gradient or None).
        g: (S, F) numpy, or with -device cuda anything cupy.asarray takes (the
        F-grid gradient is then a CuPy array)."""
        S, F = self.model.shape
        want_F = "F_hkl" in self.needs_grad
        if self.device == "cuda":
            from .interop import to_numpy
            _, gpar, cacc, gF = self._gpu(g, want_F)
            G = np.zeros(A.N_PAR)
            # the device's rows (N_PAR_DEVICE) leave the per-cell rotation entries 0
            G[:A.N_PAR_DEVICE] = np.asarray(to_numpy(gpar), dtype=np.float64)
            ncell = self.rots.shape[0]
            self._from_cell_sums(G, np.asarray(to_numpy(cacc), dtype=np.float64)
                                 .reshape(9, ncell))
            return G, gF
        want_F = (self.want & A.W_F) != 0
        g = self._g64(g)
        # a number of row chunks that the -roi box sets (not the thread count):
        # the per-chunk sums, hence the gradients, do not depend on the threads
        nchunk = max(1, min(N_CHUNKS, (self.rows.stop - self.rows.start) // CHUNK_ROWS))
        G = None
        want = self.want
        if self.pixel_jac is not None:
            # every parameter but F_hkl: the forward's Jacobian contracted with g
            rowstart, jac = self.pixel_jac
            part = np.zeros((nchunk, jac.shape[1]))
            with _kernel_threads(self.small):
                A.contract(self.model.active, self.box, g, rowstart, jac, nchunk, part)
            G = np.zeros(A.N_PAR)
            G[self.jac_cols] = part.sum(axis=0)
            if not want_F:
                return G, None
            want = A.W_F      # the F grid's pass needs values only
        gpar = np.zeros((S, A.N_PAR))
        gF = np.zeros((nchunk,) + self.model.Fhkl.shape if want_F else (nchunk, 1, 1, 1))
        ncell = self.rots.shape[0]
        cacc = np.zeros((nchunk, 9, ncell))
        val = np.zeros((S, F))
        with _kernel_threads(self.small):
            A.kernels_for(*self.args[:2])[1](
                self.model.active, self.box, g, *self.args, want, nchunk, gpar, gF, cacc, val,
                *self.incident_blocks())
        if G is None:
            G = gpar.sum(axis=0)
            self._from_cell_sums(G, cacc.sum(axis=0))
        return G, (gF.sum(axis=0) if want_F else None)

    def _host_theta(self, vals, name=None):
        """theta[_HOST_ROWS] = (a, b, c (m), pix0 (m), close distance (m), astar,
        bstar, cstar (1/A), fdet, sdet, odet (unit vectors)) at vals.  With name (the
        keyword being varied), only the part that keyword moves is rebuilt: the
        _DETECTOR keywords move the detector only (build_detector reads no
        cell, misset or wavelength), the others the crystal only
        (build_crystal reads no detector flag); the rest is 0, which a
        difference cancels.  vals: the run's values, name's replaced (self.cfg
        carries the others already, so only name's fields are set)."""
        cfg = _override(self.cfg, vals if name is None else {name: vals[name]})
        det_part = name is None or name in _DETECTOR
        # the wavelength moves the crystal only through a -mat matrix (MOSFLM
        # units carry it): with -cell its column is exactly 0 without a build
        xtal_part = name is None or not (det_part or (name == "wavelength" and self.recip is None))
        theta = np.zeros(_HOST_ROWS.size)
        if det_part:
            det = build_detector(cfg, trace=False)
            theta[A.P_PIX0:A.P_PIX0 + 3] = det.pix0
            theta[A.P_CLOSE] = det.close_distance
            theta[A.P_FDET:A.P_FDET + 3] = det.fdet
            theta[A.P_SDET:A.P_SDET + 3] = det.sdet
            theta[A.N_HOST:A.N_HOST + 3] = det.odet
        if xtal_part:
            misset_seed = cfg.misset_seed if cfg.misset_seed is not None else cfg.seed
            cr = xtal.build_crystal(cfg, self.recip, cfg.lambda0, RngState(), misset_seed,
                                    describe=False)
            theta[A.P_A:A.P_C + 3] = cr.a + cr.b + cr.c
            theta[A.P_ASTAR:A.P_CSTAR + 3] = cr.astar + cr.bstar + cr.cstar
        return theta

    def host_jacobian(self, name):
        """d theta[_HOST_ROWS] / d keyword, (len(_HOST_ROWS), size): Richardson-extrapolated central
        differences of the host's own geometry code (build_detector and
        build_crystal, the one implementation).  The detector origin is affine
        in distance and beam centre, so those columns take one central
        difference and are exact up to rounding;
        the cell, misset and detector-rotation columns carry an O(h^4) error
        (~1e-12 relative)."""
        if name in self._jac:
            return self._jac[name]
        base = np.asarray(self.vals[name], dtype=np.float64)
        if name in _PERIODIC_DEG:
            # the geometry is periodic in each angle: differenced at the angle
            # reduced to [-180, 180] (exact), where its step of 1e-3 degrees is
            # not lost in the rounding of a large one (at 3.6e13 degrees the
            # difference was 0)
            base = np.array([math.remainder(float(x), 360.0) for x in base])
        cols = []
        for i in range(base.size):
            step = _STEP[name][i]
            if _RELATIVE.get(name, (False,) * base.size)[i]:
                step *= abs(base[i]) if base[i] != 0.0 else 1.0
            if name in _DIRECTIONS:
                step *= float(np.linalg.norm(base))

            def at(t):
                v = dict(self.vals)
                x = base.copy()
                x[i] += t
                v[name] = x
                return self._host_theta(v, name)
            if name in _AFFINE:
                cols.append((at(step) - at(-step)) / (2.0 * step))
            else:
                cols.append(_richardson(at, step))
        self._jac[name] = np.stack(cols, axis=1)
        return self._jac[name]

    def mosaic_cells(self):
        """(9, ncell): the derivatives of each cell's rotated a, b, c (rows 0-2,
        3-5, 6-8; m) per radian of mosaic spread.  Cell j = (phi step t, domain
        m) uses U_m Phi_t a, so its a moves by dU_m/dspread Phi_t a.
        crystal.rotated_cells applies dU_m/dspread (_umat_spread_derivatives)
        in place of U_m: it is linear in the matrix, so the cells' derivatives
        come from the one implementation.  The stored Jacobian contracts them
        per pixel (adjoint.P_MOS), _from_cell_sums with the adjoint pass's sums."""
        if self._mosaic_cells is None:
            m = self.model
            dU = _umat_spread_derivatives(m.umats, m.steps.mosaic_spread)
            dcells = xtal.rotated_cells(m.crystal, m.det.spindle, m.phis, dU, 1.0, False)[1]
            self._mosaic_cells = np.ascontiguousarray(dcells.reshape(-1, 9).T)
        return self._mosaic_cells

    def spindle_cells(self):
        """(27, ncell): the derivatives of each cell's rotated a, b, c (rows
        0-8 as mosaic_cells') per unit of each component of the spindle_axis
        vector as given (rows 9 i..9 i + 8: component i), the unit vector that
        build_detector makes of it included: _direction_derivatives of
        crystal.rotated_cells, the rotation the forward applies (the one
        implementation of the phi rotation, as host_jacobian's)."""
        if self._spindle_cells is None:
            m = self.model

            def cells(w):
                axis = tuple(w / np.linalg.norm(w))
                return xtal.rotated_cells(m.crystal, axis, m.phis, m.umats,
                                          m.steps.mosaic_spread, False)[1].reshape(-1, 9).T
            self._spindle_cells = _direction_derivatives(cells, self.vals["spindle_axis"])
        return self._spindle_cells

    def _source_rows(self, cfg, steps):
        """(4, nsrc): the unit incident vectors (rows 0-2, the kernel's
        ``incident``) and the log wavelengths (row 3, less log lambda0) of
        cfg's sources, made by model.source_set (the sources the forward runs
        with) on the sampling ``steps`` with the run's divergence points kept."""
        from .model import source_set
        from .sources import divergence_points
        if self._points is None:
            self._points = divergence_points(self.model.steps, self.cfg.round_div)
        src = source_set(cfg, steps, self._points)
        # log(lambda_s / lambda0): the derivative of log lambda_s, without
        # log(1e-10)'s digits to cancel in the differences
        return np.vstack((src.incident.T, np.log(src.wavelength / self.cfg.lambda0)))

    def source_blocks(self, name):
        """(4 k, nsrc): the per-source blocks of keyword name's k values (rows
        4 i..4 i + 3: value i), the derivatives of _source_rows per unit of the
        value.  beam_vector: per component of the vector as given, the unit
        vector that build_detector makes of it and the divergence's rotations
        about it included (_direction_derivatives).  hdivrange, vdivrange,
        dispersion: per mrad or percent, with the run's point counts and kept
        points (sampling.sweep_at: the step scales with the range; a given
        step is refused, _check_sweeps); Richardson differences at a step of 1e-2 of the value,
        at most 0.1 mrad or 0.01 %: the sources move smoothly on the scale of
        a radian (a relative wavelength of 1), so the step is set by rounding,
        eps / step (a step of 1e-3 of 0.2 mrad left the vertical range's
        column of a fuzz case, a difference of two nearly equal sources' terms,
        off by 3.5e-6 of its largest entry)."""
        if name not in self._source_blocks:
            steps = self.model.steps
            if name == "beam_vector":
                blk = _direction_derivatives(
                    lambda w: self._source_rows(_override(self.cfg, {"beam_vector": w}), steps),
                    self.vals["beam_vector"])
            else:
                sweep, unit = _SWEPT[name]
                x = float(self.vals[name][0])
                blk = _richardson(lambda t: self._source_rows(
                    self.cfg, sweep_at(steps, sweep, (x + t) * unit)), min(1e-2 * x, 1e-4 / unit))
            self._source_blocks[name] = np.ascontiguousarray(blk)
        return self._source_blocks[name]

    def sensor_column(self, name):
        """d(layer thickness (m), mu (1/m)) / d keyword ``name`` (um): Richardson
        differences, at 1e-3 of the value, of sampling.resolve_steps, the rule
        the run's sensor comes from (thickness / layer count; mu = 1/thickness
        without -detector_abs), with the run's layer count held."""
        from .sampling import resolve_steps
        count = self.model.steps.detector_thicksteps
        x = float(self.vals[name][0])

        def at(t):
            cfg = _override(self.cfg, {name: np.array([x + t])})
            cfg.detector_thicksteps = count
            st = resolve_steps(cfg)
            return np.array([st.detector_thickstep, st.detector_mu])
        return _richardson(at, 1e-3 * x)

    def incident_blocks(self, dense=False):
        """(dinc (4 Q, nsrc), ipar (Q,)): the per-source blocks that the
        kernels contract per sub-path for the keywords in needs_grad
        (_source_entries; width 0 when none).  dense: one block per entry
        from P_BEAM to the last one needed, zero for those not needed (the
        CUDA adjoint writes block q to P_BEAM + q)."""
        ipar = np.array(self._source_entries(self.needs_grad), dtype=np.int64)
        if not ipar.size:
            return np.empty((4, 0)), ipar
        blocks = np.concatenate([self.source_blocks(k) for k in _TURNS_SOURCES
                                 if k in self.needs_grad], axis=0)
        if not dense:
            return np.ascontiguousarray(blocks), ipar
        out = np.zeros((4 * (int(ipar[-1]) - A.P_BEAM + 1), blocks.shape[1]))
        for q, p in enumerate(ipar):
            out[4 * (p - A.P_BEAM):4 * (p - A.P_BEAM + 1)] = blocks[4 * q:4 * q + 4]
        return out, np.arange(A.P_BEAM, int(ipar[-1]) + 1, dtype=np.int64)

    def rotation_cells(self):
        """(dcells (9 M, ncell), dpar (M,)): the per-cell rotation blocks that
        forward_jac contracts per pixel for the keywords in needs_grad
        (_rotation_entries; width 0 when none)."""
        dpar = np.array(self._rotation_entries(self.needs_grad), dtype=np.int64)
        blocks = [getattr(self, method)() for k, (_, method) in _TURNS_CELLS.items()
                  if k in self.needs_grad]
        if not blocks:
            return np.empty((9, 0)), dpar
        return np.ascontiguousarray(np.concatenate(blocks, axis=0)), dpar

    def _from_cell_sums(self, G, cell_sums):
        """Fill the theta gradient G's entries that the adjoint pass leaves to
        its per-cell sums cell_sums (9, ncell: sum of g dI/dh_j S, rows 0-2;
        k: 3-5, l: 6-8): the unrotated cell's, h_j = (R_j a) . S so dI/da_m =
        sum_j sum_n R_j[n, m] (sum of g dI/dh_j S_n) with rots[j, m, n] =
        R_j[n, m] (likewise b, c); and the per-cell rotation entries of
        rotation_cells, sum_j (da_j/dp) . (sum of g dI/dh_j S) + (b, k) + (c, l)."""
        ncell = cell_sums.shape[1]
        G[A.P_A:A.P_C + 3] = np.einsum("jmn,qnj->qm", self.rots,
                                       cell_sums.reshape(3, 3, ncell)).reshape(9)
        dcells, dpar = self.rotation_cells()
        if dpar.size:
            G[dpar] = np.einsum("pqj,qj->p", dcells.reshape(dpar.size, 9, ncell), cell_sums)

    def chain_matrix(self, name):
        """d theta / d keyword ``name``, (N_PAR, size): the chain rule from the
        kernel's theta to a keyword (every keyword but F_hkl, whose gradient
        comes from the adjoint pass; the entries of mosaic_spread and
        spindle_axis, P_MOS and P_SPIN.., from the stored Jacobian or the
        adjoint pass's per-cell sums, _from_cell_sums).  The
        backward multiplies it by the theta gradient; jacobian() by the
        stored per-pixel Jacobian."""
        size = PARAMETERS[name]
        M = np.zeros((A.N_PAR, size))
        if name == "N":
            M[A.P_NA:A.P_NC + 1] = np.eye(3)
        elif name == "fluence":
            M[A.P_FLU, 0] = 1.0 / float(self.vals["fluence"][0])
        elif name == "polarization":
            M[A.P_KAHN, 0] = 1.0
        elif name == "mosaic_spread":
            M[A.P_MOS, 0] = math.pi / 180.0      # the kernel's entry is per radian
        elif name == "spindle_axis":
            M[A.P_SPIN:A.P_SPIN + 3] = np.eye(3)
        elif name in _SWEPT:
            # the per-source entry (source_blocks are per unit of the keyword)
            M[_TURNS_SOURCES[name][0], 0] = 1.0
        elif name in _SENSOR:
            M[[A.P_TSTEP, A.P_MU], 0] = self.sensor_column(name)
        else:
            M[_HOST_ROWS] = self.host_jacobian(name)
            if name == "wavelength":
                # every source wavelength is proportional to lambda0
                M[A.P_LAM, 0] = 1.0 / float(self.vals["wavelength"][0])
            elif name == "beam_vector":
                # besides the detector's origin and close distance (the host
                # map): each source's incident vector (the per-source entries)
                M[A.P_BEAM:A.P_BEAM + 3] = np.eye(3)
        return M

    def backward(self, g):
        """Gradients of sum(g * image) w.r.t. each keyword in needs_grad."""
        G, gF = self.theta_grad(g)
        out = {}
        for name in self.needs_grad:
            if name == "F_hkl":
                out[name] = gF
            else:
                with np.errstate(all="ignore"):
                    out[name] = G @ self.chain_matrix(name)
        for name, v in out.items():
            self.check_derivative_finite(name, v)
        return out

    def check_derivative_finite(self, name, v):
        """ConfigError when v, a derivative w.r.t. keyword ``name``, holds inf or
        NaN: a finite image (values near 1e308) whose derivative overflows."""
        if isinstance(v, np.ndarray):
            finite = bool(np.isfinite(v).all())
        else:                               # the F grid's gradient on the GPU
            import cupy as cp
            finite = bool(cp.isfinite(v).all())
        if not finite:
            raise ConfigError("the derivative w.r.t. %s= is not finite: it overflows double "
                              "precision (the image's largest value is %.3g)"
                              % (name, float(abs(self.image).max())))


def _direction_derivatives(f, w):
    """The derivatives of the 2-d array f(w) in each component of the vector w
    (a direction keyword's value, any length), stacked: rows i R..(i + 1) R
    hold d f / d w_i (R = f's rows).  Richardson-extrapolated central
    differences (O(h^4), ~1e-12 relative) at a step of 1e-3 of |w|."""
    w = np.asarray(w, dtype=np.float64)
    h = 1e-3 * float(np.linalg.norm(w))

    def along(i):
        def at(t):
            x = w.copy()
            x[i] += t
            return f(x)
        return at
    blocks = [_richardson(along(i), h) for i in range(w.size)]
    return np.ascontiguousarray(np.concatenate(blocks, axis=0))


def _richardson(at, h):
    """The derivative at 0 of at(t) (an array or a number) by central
    differences at h and 2h, Richardson-extrapolated: O(h^4)."""
    return (8.0 * (at(h) - at(-h)) - (at(2 * h) - at(-2 * h))) / (12.0 * h)


def _umat_spread_derivatives(umats, spread):
    """dU_m/d(spread) (row-major 9 per domain, spread in radians) of the mosaic
    domains' rotations crystal.mosaic_umats drew: U = c I + (1 - c) v v^T + s [v]x,
    a rotation by rot about v with rot proportional to the spread (the draws
    do not depend on it), so dU/dspread = (rot / spread) (-s I + s v v^T + c [v]x).
    v and rot are read back from U (its antisymmetric part is s [v]x, its trace
    1 + 2c).  A domain drawn as the identity (a zero angle) has derivative 0.
    nanoBragg.c rounds the spread and each angle to float32, so the image
    is constant in the spread below a float32 step (~6e-8 relative); this is
    the derivative of the unrounded formula."""
    out = np.zeros_like(umats)
    for m in range(umats.shape[0]):
        U = umats[m].reshape(3, 3)
        sv = 0.5 * np.array([U[2, 1] - U[1, 2], U[0, 2] - U[2, 0], U[1, 0] - U[0, 1]])
        s = float(np.sqrt(sv @ sv))
        if s == 0.0:
            continue            # a zero angle: its derivative is (angle / spread) [v]x = 0
        c = 0.5 * (float(np.trace(U)) - 1.0)
        rot = math.atan2(s, c)
        v = sv / s
        K = np.array([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]])
        dU = -s * np.eye(3) + s * np.outer(v, v) + c * K
        out[m] = (rot / spread) * dU.reshape(9)
    return out


def _is_functorch(torch, t):
    """Whether t is a transform's wrapper (torch.func, or the batched tensors of
    is_grads_batched), which holds no storage for the host code to read."""
    ft = getattr(torch._C, "_functorch", None)
    return any(bool(f(t)) for f in (getattr(ft, "is_functorch_wrapped_tensor", None),
                                    getattr(ft, "is_legacy_batchedtensor", None))
               if f is not None)


def _as_tensor(torch, name, v):
    if isinstance(v, torch.Tensor):
        t = v
    else:       # (text, complex numbers, objects: a ConfigError naming the keyword)
        x = _as_values(name, v)
        # (flat for the vector keywords; F_hkl keeps its grid's shape)
        t = torch.as_tensor(x.reshape(np.shape(v)) if name == "F_hkl" else x)
    if t.layout != torch.strided or t.is_meta:
        # (sparse, mkldnn or meta: torch's own error came from reading the values)
        raise ConfigError("%s=: expected a dense tensor with values, got a %s tensor"
                          % (name, "meta" if t.is_meta else str(t.layout).replace("torch.", "")))
    if _is_functorch(torch, t):
        # a torch.func transform's wrapper has no storage for the host code to read
        raise ConfigError("%s=: nbnumba.autodiff does not work under torch.func transforms "
                          "(grad, vjp, jacrev, jvp, vmap): use loss.backward() or "
                          "torch.autograd.grad, and nbnumba.autodiff.jacobian for the "
                          "per-pixel Jacobian" % name)
    if t.dtype not in (torch.float64, torch.float32):
        # (float16 and bfloat16 too: a gradient in half precision was returned)
        raise ArgumentTypeError("%s= must be a float64 or float32 tensor (got %s)"
                                % (name, t.dtype))
    _check_size(name, t.numel())
    # (a conjugate or negative view, e.g. z.conj().imag: its values as torch
    # shows them; numpy() refuses the bits, and its raw memory has the other sign)
    return t.resolve_conj().resolve_neg()


def _check_size(name, n):
    """ArgumentValueError unless keyword name takes n values (F_hkl: any)."""
    size = PARAMETERS[name]
    if size is not None and n != size:
        raise ArgumentValueError("%s= takes %d value%s (got %d)" % (name, size, "s" * (size > 1), n))


_FUNCTION = None

MSG_SECOND_ORDER = ("nbnumba.autodiff: second derivatives are not implemented (a gradient taken "
                    "with create_graph=True, torch.autograd.functional.hessian): use "
                    "nbnumba.autodiff.jacobian for the Gauss-Newton curvature")
MSG_BATCHED = ("nbnumba.autodiff: batched gradients are not implemented (is_grads_batched=True, "
               "torch.autograd.functional.jacobian(vectorize=True), gradcheck's "
               "check_batched_grad): use nbnumba.autodiff.jacobian for the per-pixel Jacobian")


def _function():
    """The torch.autograd.Function (built on first use: torch is optional)."""
    global _FUNCTION
    if _FUNCTION is None:
        torch = _torch()

        class FirstOrderOnly(torch.autograd.Function):
            """Identity on a gradient that Simulate's backward returned under
            create_graph=True, tied to the tensors it depends on (the keyword
            tensors, the upstream gradient), whose own backward refuses.  The
            adjoint kernels give no second derivatives; without this node the
            gradient would be a constant to autograd, and a Hessian of it
            zero instead of an error."""
            @staticmethod
            def forward(ctx, grad, *depends_on):
                return grad.clone()

            @staticmethod
            def backward(ctx, *unused):
                raise ConfigError(MSG_SECOND_ORDER)

        class Simulate(torch.autograd.Function):
            @staticmethod
            def forward(ctx, run, names, crop, *tensors):
                # the differentiated keywords, for create_graph=True (FirstOrderOnly).
                # Not save_for_backward: the backward reads the values the run
                # copied, so a keyword changed in place after this call does not
                # make its gradient wrong, and needs no version check.
                ctx.anchors = tuple(t for t in tensors if t.requires_grad)
                ctx.run, ctx.names, ctx.crop = run, names, crop
                ctx.meta = [(t.dtype, t.device, t.shape) for t in tensors]
                image = run.forward()
                if crop:
                    # roi_only: the -roi box (numpy or CuPy), contiguous
                    image = image[run.rows, run.cols].copy()
                if isinstance(image, np.ndarray):
                    return torch.from_numpy(image)
                from .interop import to_torch     # -device cuda: CuPy -> torch (DLPack)
                return to_torch(image)

            @staticmethod
            def backward(ctx, gout):
                if _is_functorch(torch, gout):
                    raise ConfigError(MSG_BATCHED)
                run = ctx.run
                depends_on = [t for t in ctx.anchors + (gout,) if t.requires_grad]
                gout = gout.detach()
                # roi_only: the box's gradient into a frame of zeros
                if run.device == "cuda":
                    from .interop import _to_cupy   # stays on the GPU when gout is there
                    if ctx.crop:
                        full = gout.new_zeros(run.model.shape, dtype=torch.float64)
                        full[run.rows, run.cols] = gout
                        gout = full
                    g = _to_cupy(gout.to(torch.float64).contiguous())
                else:
                    g = gout.to("cpu", torch.float64).numpy()
                    if ctx.crop:
                        g = run.frame(g)
                grads = ctx.run.backward(g)
                res = [None, None, None]
                for name, (dt, dev, shp) in zip(ctx.names, ctx.meta):
                    gr = grads.get(name)
                    if gr is None:
                        res.append(None)
                    elif isinstance(gr, np.ndarray):
                        res.append(torch.from_numpy(gr.reshape(shp)).to(dev, dt))
                    else:                          # a CuPy F-grid gradient
                        from .interop import to_torch
                        res.append(to_torch(gr).reshape(shp).to(dev, dt))
                if torch.is_grad_enabled() and depends_on:      # create_graph=True
                    res = [r if r is None else FirstOrderOnly.apply(r, *depends_on) for r in res]
                return tuple(res)

        _FUNCTION = Simulate
    return _FUNCTION


def simulate(argv, cell=None, misset=None, distance=None, beam_center=None, wavelength=None,
             N=None, fluence=None, F_hkl=None, detector_rot=None, twotheta=None,
             mosaic_spread=None, polarization=None, roi_only=False, pix0=None,
             spindle_axis=None, beam_vector=None, hdivrange=None, vdivrange=None,
             dispersion=None, detector_thick=None, detector_abs=None):
    """The (S, F) image (photons/pixel) of the nanoBragg command ``argv`` with
    the given keywords overriding its flags, as a torch tensor whose grad_fn
    reaches every keyword tensor that requires grad.

    roi_only=True returns the -roi box alone, rows ymin..ymax by columns
    xmin..xmax (clipped to the detector): on a small ROI of a large detector
    a loss over it then costs what its pixels cost (slicing the full image
    makes torch build a zero-filled gradient of the whole frame).

    Output dtype: float32 if every keyword given as a tensor is float32, else
    float64 (computed in float64 either way; numbers and arrays do not count);
    device: that of the keyword tensors.
    Raises ConfigError for a configuration whose gradient is not modelled
    when any keyword requires grad (see docs/autodiff.md)."""
    torch = _torch()
    _check_roi_only(roi_only)
    given = dict(cell=cell, misset=misset, distance=distance, beam_center=beam_center,
                 pix0=pix0, detector_rot=detector_rot, twotheta=twotheta, wavelength=wavelength,
                 mosaic_spread=mosaic_spread, spindle_axis=spindle_axis,
                 beam_vector=beam_vector, hdivrange=hdivrange, vdivrange=vdivrange,
                 dispersion=dispersion, detector_thick=detector_thick,
                 detector_abs=detector_abs, polarization=polarization, N=N, fluence=fluence,
                 F_hkl=F_hkl)
    tensors = {k: _as_tensor(torch, k, v) for k, v in given.items() if v is not None}
    vals = {k: t.detach().to("cpu", torch.float64).numpy().reshape(-1)
            for k, t in tensors.items() if k != "F_hkl"}
    F_values = None
    if "F_hkl" in tensors:
        F_values = tensors["F_hkl"].detach().to("cpu", torch.float64).numpy()
    needs_grad = tuple(k for k, t in tensors.items() if t.requires_grad)
    # the caller's tensors decide the image's dtype and device (plain numbers
    # and arrays, read as float64 on the CPU, do not: a float32 cell with
    # distance=100.0 gave float64)
    theirs = [t for k, t in tensors.items() if isinstance(given[k], torch.Tensor)]
    dtypes = {t.dtype for t in theirs}
    devices = {t.device for t in theirs}
    if len(devices) > 1:
        raise ArgumentValueError("keyword tensors are on several devices: %s"
                                 % sorted(map(str, devices)))
    # the per-pixel Jacobian only pays when autograd will call backward
    run = _Run(argv, vals, needs_grad, F_values, keep_jac=torch.is_grad_enabled())
    names = tuple(tensors)
    img = _function().apply(run, names, bool(roi_only), *tensors.values())
    if dtypes == {torch.float32}:
        img = img.to(torch.float32)
        box = img if roi_only else img[run.rows, run.cols]
        if not bool(torch.isfinite(box).all()):
            from .validate import check_image_finite
            check_image_finite(run.model, box.detach().cpu().numpy())   # above 3.4e38
    if devices:
        img = img.to(next(iter(devices)))     # (-device cuda computes on the GPU)
    return img


_simulate = simulate
_DISABLED = None


@functools.wraps(_simulate)
def simulate(*args, **keywords):
    if "torch._dynamo" in sys.modules:
        # torch.compile may be tracing this call: make it a graph break, run
        # eagerly (torch.compiler.disable).  Dynamo cannot trace the host code;
        # tracing into it failed inside numba's dispatcher, at a kernel's first
        # call in a process (an AssertionError about dynamo's exception table,
        # torch 2.13).  Importing dynamo costs 2 s, hence only when loaded.
        global _DISABLED
        if _DISABLED is None:
            import torch
            _DISABLED = torch.compiler.disable(_simulate)
        return _DISABLED(*args, **keywords)
    return _simulate(*args, **keywords)


def structure_factors(argv):
    """(F, ranges): the structure-factor grid this run would use, as a float64
    torch tensor (a copy; pass it, or an optimised version, as F_hkl=), and
    ranges = ((h_min, h_max), (k_min, k_max), (l_min, l_max)).

    The grid is indexed F[h - h_min, k - k_min, l - l_min]; it carries one
    extra padding plane per axis, as nanoBragg's does."""
    torch = _torch()
    from .model import build_model
    model = build_model(_parse(argv))
    if model.hkls == 0:
        raise ConfigError("this run has no structure-factor grid (no -hkl): default_F only")
    h0, h1, k0, k1, l0, l1 = model.hkl_bounds
    return torch.from_numpy(model.Fhkl.copy()), ((h0, h1), (k0, k1), (l0, l1))


#: the keywords jacobian() covers: not the F grid (a column per grid point)
JACOBIAN_PARAMETERS = tuple(k for k in PARAMETERS if k != "F_hkl")


def _check_roi_only(roi_only):
    """ConfigError unless roi_only is a bool ("no" was true)."""
    if not isinstance(roi_only, (bool, np.bool_)):
        raise ConfigError("roi_only=: expected True or False, got %r" % (roi_only,))


def _as_values(name, v):
    """A keyword's value as a flat float64 numpy array (numbers, arrays or
    tensors); anything else (text, complex numbers, objects, booleans) is a
    ConfigError naming the keyword (it was a ValueError or TypeError from numpy)."""
    if hasattr(v, "detach"):
        if v.is_complex() or str(v.dtype) == "torch.bool":
            raise ConfigError("%s=: expected real numbers, got a torch %s tensor"
                              % (name, str(v.dtype).replace("torch.", "")))
        try:
            v = v.detach().to("cpu").double().numpy()
        except (TypeError, RuntimeError, NotImplementedError) as exc:
            raise ConfigError("%s=: cannot read the tensor's values (%s)"
                              % (name, (str(exc).strip().splitlines() or [""])[0])) from None
    try:
        a = np.asarray(v)
    except (TypeError, ValueError):     # (ragged lists)
        raise ConfigError("%s=: expected numbers, got %r" % (name, v)) from None
    if a.dtype.kind not in "iuf":
        raise ConfigError("%s=: expected real numbers, got %r" % (name, v))
    x = a.astype(np.float64).reshape(-1)
    _check_size(name, x.size)
    return x


def jacobian(argv, roi_only=False, **values):
    """The image and its per-pixel Jacobian: (image, J) with image the (S, F)
    float64 photons/pixel of ``argv`` at ``values`` and J[name] the (S, F, size)
    array of d image / d values[name] (per the keyword's units, e.g. photons
    per mm for distance; 0 outside the ROI/mask).  roi_only=True gives both
    over the -roi box alone, as simulate's roi_only (a small ROI of a large
    detector then takes no frame-sized arrays).

    values: keywords of :func:`simulate` (numbers, numpy arrays or tensors),
    each of which is differentiated; not ``F_hkl`` (one column per grid point:
    use simulate and backward).  No torch needed; CPU only.

    This is the stored Jacobian that simulate's backward contracts with the
    upstream gradient (one forward pass, no adjoint pass), mapped to the
    keywords.  It is what Gauss-Newton and Levenberg-Marquardt refiners use:
    with residuals r and weights w per pixel, the normal matrix is
    sum w J_p J_q and the gradient sum w r J_p (docs/autodiff.md, "Per-pixel
    Jacobian").  Memory: 8 bytes x active pixels x (the kernel's stored
    entries + the keywords' values); raises ConfigError above JAC_MAX_BYTES
    (use -roi or a smaller detector)."""
    # None means "not given", as in simulate() (it was a NaN, refused as non-finite)
    values = {k: v for k, v in values.items() if v is not None}
    _check_roi_only(roi_only)
    unknown = sorted(k for k in values if k not in PARAMETERS)
    if unknown:
        raise TypeError("jacobian() got unknown keyword%s %s (known: %s)"
                        % ("s" * (len(unknown) > 1), ", ".join(unknown),
                           ", ".join(JACOBIAN_PARAMETERS)))
    if "F_hkl" in values:
        raise ConfigError("jacobian() does not cover F_hkl= (one column per grid point): "
                          "differentiate it with simulate(...) and backward()")
    if not values:
        raise TypeError("jacobian() needs at least one keyword to differentiate (%s)"
                        % ", ".join(JACOBIAN_PARAMETERS))
    vals = {k: _as_values(k, v) for k, v in values.items()}
    names = tuple(k for k in PARAMETERS if k in vals)
    run = _Run(argv, vals, names, None, keep_jac=True)
    if run.device != "cpu":
        raise ConfigError("jacobian() runs on the CPU: drop -device %s" % run.device)
    active = run.model.active
    n_active = int(run.row_counts.sum())
    sizes = [PARAMETERS[k] for k in names]
    need = n_active * (run.jac_cols.size + sum(sizes)) * 8
    if need > JAC_MAX_BYTES:
        raise ConfigError("the Jacobian of %d pixels x %d values would take %d MiB (limit %d "
                          "MiB): use -roi or a smaller detector"
                          % (n_active, sum(sizes), need >> 20, JAC_MAX_BYTES >> 20))
    run.keep_jac = True         # also for fluence alone (its column is always kept)
    image = run.forward()
    _, jac = run.pixel_jac
    # d theta / d (every keyword value): the backward's chain rule as a matrix
    M = np.concatenate([run.chain_matrix(name) for name in names], axis=1)
    if roi_only:
        # every active pixel lies in the box, so its raster order is the frame's
        active = active[run.rows, run.cols]
        image = image[run.rows, run.cols].copy()
    full = np.zeros(active.shape + (M.shape[1],))
    # jac's rows are the active pixels in raster order, as boolean indexing walks them
    with np.errstate(all="ignore"):
        full[active != 0] = jac @ M[run.jac_cols]
    out, off = {}, 0
    for name, size in zip(names, sizes):
        out[name] = full[:, :, off:off + size]
        run.check_derivative_finite(name, out[name])
        off += size
    return image, out


#: a small run whose forward and backward routes reach every autodiff kernel
_WARMUP_ARGV = ("-cell 70 80 90 85 95 105 -lambda 1.5 -N 4 -default_F 100 -distance 100 "
                "-detpixels 8 -pixel 1 -mosaic 0.3 -mosaic_dom 2 -nonoise -nopgm").split()


def _warmup_runs(sensor=False):
    """The warm-up's two runs: (backward route, Jacobian route); with sensor,
    of a two-layer sensor, whose kernels are the _sensor copies (which also
    serve the -oversample_* switches and -curved_det)."""
    vals = {"cell": np.array([70.0, 80.0, 90.0, 85.0, 95.0, 105.0]), "N": np.array([4.0] * 3)}
    argv = _WARMUP_ARGV + (["-detector_thick", "100", "-detector_thicksteps", "2"]
                           if sensor else [])
    return tuple(_Run(argv, vals, ("cell", "N"), None, keep_jac=keep)
                 for keep in (False, True))


def warmup(file=None) -> int:
    """Compile (or load from numba's cache) the autodiff kernels: the float64
    forward, the forward that keeps the Jacobian, its contraction and the
    adjoint pass, and the last two's copies for sensor layers, the
    -oversample_* switches and -curved_det (about 90 CPU-s the first time,
    then a fraction of a second).  With two cores, a second process
    compiles the float64 forward and then, once this one has compiled the
    adjoint pass (and with it pixel_grad, which both need: this process says
    so on its stdin), the Jacobian forward and the contraction, and once
    this one has compiled the sensor copy of the adjoint pass (a second
    line), the sensor copy of the Jacobian forward.  torch is not needed.
    Returns 0."""
    import os
    import subprocess
    import time
    file = file or sys.stderr
    t0 = time.perf_counter()
    print("nbnumba.autodiff: compiling the adjoint kernels (once per install)", file=file,
          flush=True)
    second = None
    if (os.cpu_count() or 1) >= 2:
        from .kernels.native import python_process
        try:
            second = python_process(["nbnumba.autodiff", "--warmup-second"],
                                    stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE, text=True)
        except OSError:
            second = None
    plain, jac = _warmup_runs()
    s_plain, s_jac = _warmup_runs(sensor=True)
    if second is None:
        plain.forward()
    plain.theta_grad(np.ones(plain.model.shape))        # backward (and pixel_grad)
    if second is not None:
        try:
            second.stdin.write("pixel_grad\n")
            second.stdin.flush()
        except OSError:                 # (gone: its exit status says why, below)
            pass
    s_plain.theta_grad(np.ones(s_plain.model.shape))    # backward_sensor
    err = ""
    if second is not None:
        try:
            err = second.communicate("pixel_grad_sensor\n", timeout=900)[1] or ""
        except Exception as exc:        # never let the second process stop the warm-up
            second.kill()
            second.wait()
            err = str(exc)
    if second is None or second.returncode != 0:
        if second is not None:          # do its part here (and say why)
            print("nbnumba.autodiff: second warm-up process failed: %s"
                  % ((err.strip().splitlines() or ["unknown reason"])[-1]), file=file)
            plain.forward()
        jac.forward()
        jac.theta_grad(np.ones(jac.model.shape))
        s_jac.forward()
    print("nbnumba.autodiff: kernels ready (%.1f s)" % (time.perf_counter() - t0), file=file,
          flush=True)
    return 0


def _warmup_second() -> int:
    """warmup()'s second process: the float64 forward, then (after the line
    on stdin that says pixel_grad is in the cache, or its end) the Jacobian
    forward and the contraction, then (after the line for the sensor copy)
    the sensor copy of the Jacobian forward."""
    plain, jac = _warmup_runs()
    plain.forward()                                     # render64
    sys.stdin.readline()
    jac.forward()                                       # forward_jac
    jac.theta_grad(np.ones(jac.model.shape))            # contract
    sys.stdin.readline()
    _warmup_runs(sensor=True)[1].forward()              # forward_jac_sensor
    return 0


if __name__ == "__main__":
    if sys.argv[1:] == ["--warmup-second"]:
        sys.exit(_warmup_second())
    if sys.argv[1:] in (["-h"], ["--help"]):
        print("usage: python -m nbnumba.autodiff --warmup\n\n"
              "Compile the adjoint kernels into numba's cache ahead of the first gradient "
              "(no torch needed); see docs/autodiff.md.")
        sys.exit(0)
    if sys.argv[1:] != ["--warmup"]:
        print("usage: python -m nbnumba.autodiff --warmup", file=sys.stderr)
        sys.exit(2)
    sys.exit(warmup())
