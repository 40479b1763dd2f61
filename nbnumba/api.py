"""Python API: ``simulate(config) -> Result`` and the nanoBragg-style outputs.

Data flow: flags -> Config -> Model (geometry, crystal, sources) -> kernel ->
float image -> statistics, integer/noise/PGM images -> writers.
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np

from .config import Config
from .interop import to_host  # noqa: F401  (also part of this module's API, as before)
from .kernels import native as K
from .model import Model, build_model

RTD = 180.0 * (1.0 / math.pi)

#: Result fields computed on the host from the float image (see Result.ensure_host)
_HOST_FIELDS = frozenset(("stats", "int_image", "noise_image", "pgm_image"))


@dataclass
class Result:
    """Outcome of one simulation.

    float_image: float32 (spixels, fpixels), photons per pixel (floatimage.bin).
    int_image: uint16, nanoBragg's scaled "noiseless" SMV image.
    noise_image: uint16 Poisson image, or None with -nonoise.
    pgm_image: uint8 preview, or None with -nopgm.
    stats: max_I, max_I_x, max_I_y (m, the brightest pixel's last sub-pixel),
        mean, rms, rmsd, intfile_scale, omega_sum (sr); pgm_scale unless -nopgm;
        photons and overloads unless -nonoise.

    With ``-device cuda`` the float image stays on the GPU (a CuPy array) and
    the host products (``stats``, ``int_image``, ``noise_image``,
    ``pgm_image``) are computed on first use, from one copy of the image to
    the host (:meth:`ensure_host`; the writers call it).  Until then nothing
    leaves the device but the per-row solid-angle sums.
    """
    float_image: np.ndarray
    model: Model
    stats: Dict[str, float]
    int_image: Optional[np.ndarray] = None
    noise_image: Optional[np.ndarray] = None
    pgm_image: Optional[np.ndarray] = None
    trace_lines: List[str] = field(default_factory=list)
    log: List[str] = field(default_factory=list)
    #: solid-angle sums while the host products are still to be computed, else None
    _pending: object = field(default=None, repr=False, compare=False)

    def __getattribute__(self, name):
        if name in _HOST_FIELDS and object.__getattribute__(self, "_pending") is not None:
            object.__getattribute__(self, "ensure_host")()
        return object.__getattribute__(self, name)

    def ensure_host(self) -> "Result":
        """Compute the host products (statistics, SMV/PGM/noise images) if they
        are still pending: one copy of the float image to the host."""
        omega = object.__getattribute__(self, "_pending")
        if omega is None:
            return self
        _host_products(self, omega)     # reads no host field: no recursion
        self._pending = None            # only once they all exist (an error leaves it pending)
        return self

    @property
    def shape(self):
        return self.float_image.shape

    # DLPack / torch interop: the float image is a plain numpy array (CPU) or a
    # CuPy array (GPU); both speak DLPack, so torch can share the memory.
    def __dlpack__(self, *args, **kwargs):
        return self.float_image.__dlpack__(*args, **kwargs)

    def __dlpack_device__(self):
        return self.float_image.__dlpack_device__()

    def __array__(self, dtype=None, copy=None):
        """``np.asarray(result)``: the float image (a view on the host, a copy
        of a GPU image), as ``np.from_dlpack(result)`` gives; it was a 0-d
        object array holding the Result."""
        img = self.float_image
        if copy is False and (hasattr(img, "get")
                              or (dtype is not None and np.dtype(dtype) != img.dtype)):
            raise ValueError("Result.__array__: a copy is needed (copy=False was asked)")
        img = to_host(img)
        if dtype is not None and np.dtype(dtype) != img.dtype:
            return img.astype(dtype)
        return img.copy() if copy else img

    def to_torch(self):
        """The float image as a torch tensor sharing this result's memory."""
        from .extras import require
        torch = require("torch", "Result.to_torch()")
        return torch.from_dlpack(self.float_image)


# numba's workqueue threading layer aborts the process when two threads enter a
# parallel (prange) kernel at once, and the omp/tbb layers oversubscribe: calls of
# prange kernels (the autodiff adjoint) hold this lock whatever the layer.  The
# image kernel needs none: it is a GIL-free row function on nbnumba's own thread
# pool (kernels.cpu.render), so simulate() calls from several threads run together.
PARALLEL_KERNEL_LOCK = threading.RLock()

BACKENDS = ("cpu", "cuda")


def _check_backend(backend) -> str:
    from .errors import ConfigError
    # (str first: `in` compared an array elementwise, a ValueError)
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ConfigError("backend must be one of %s, got %r" % ("|".join(BACKENDS), backend))
    return backend


def in_chunks(done: int, total: int) -> None:
    """A progress callback that reports nothing: with it the CPU kernel renders
    the image in row chunks (1/50 of the rows, 16 at least), between which Python runs
    its signal handlers, so Ctrl-C or SIGTERM stops a long run within a chunk
    rather than at the end of the render (the command-line tools pass it)."""


def render_float(model: Model, dtype=None, backend: str = "cpu", progress=None, out=None):
    """Run the pixel kernel; returns (float32 image, solid-angle sums per
    row (on the GPU reduced on the device; only their total is used)).

    dtype: GPU working precision (default from -precision); the CPU kernel
    is always float64 with float32 lattice sines under -precision single.
    out: optional preallocated float32 (S, F) image (numpy, CuPy or torch, on
    the backend's device): filled in place and returned without a copy.

    progress: optional callable(rows_done, rows_total), called between row
    chunks (the CLI's progress bar); None renders in one call."""
    cfg = model.cfg
    if backend == "cuda":
        from .kernels import gpu
        if dtype is None:
            dtype = np.float32 if cfg.precision == "single" else np.float64
        return gpu.render(model, dtype, out=out)
    args = model.cpu_kernel_args()
    S, F = model.shape
    active = model.active
    # the -c_parity emulation needs the first active pixel and per-pixel
    # bookkeeping; the default mode needs neither (no pass over the mask)
    if cfg.c_parity:
        flat = np.flatnonzero(active.ravel())
        first = int(flat[0]) if len(flat) else -1
    else:
        flat, first = None, -1
    if out is None:
        out = np.zeros((S, F), dtype=np.float32)
    else:
        from .interop import as_array_arg
        given = out
        out = as_array_arg(out, "numpy", "out=")
        from .interop import array_kind, data_ptr
        if array_kind(given) == "torch" and out.size and data_ptr(out) != data_ptr(given):
            # a tensor on another device came back as a host copy: the caller's
            # tensor would have been left as it was
            from .errors import ConfigError
            raise ConfigError("out= is a torch tensor on the '%s' device: the cpu backend fills "
                              "a CPU tensor in place (or run with backend='cuda')"
                              % given.device.type)
        if (out.shape != (S, F) or out.dtype != np.float32 or not out.flags.c_contiguous
                or not out.flags.writeable):
            from .errors import ConfigError
            raise ConfigError("out= must be a writable, contiguous float32 array of shape %s"
                              % ((S, F),))
        out[...] = 0.0
    omega = np.zeros(S, dtype=np.float64)          # per-row solid-angle sums
    # per-pixel bookkeeping of out-of-range lookups: the latch (-c_parity), or
    # the count the default mode reports with -interpolate
    bS, bF = (S, F) if cfg.c_parity or model.interpolate else (1, 1)
    oor = np.full((bS, bF), -1, dtype=np.int32)
    ran = np.zeros((bS, bF), dtype=np.uint8)
    first_arg = first if cfg.c_parity else -1
    nt = cfg.threads or None
    if progress is None:
        K.render(active, first_arg, -1, -1, *args, out, omega, oor, ran, threads=nt)
    else:
        # (at least 16 rows: a chunk costs a launch of the kernel's threads,
        # ~50 us, which on a small image would outweigh its rows)
        chunk = max(16, S // 50)
        for r0 in range(0, S, chunk):
            K.render(active, first_arg, -1, -1, *args, out, omega, oor, ran, r0, min(S, r0 + chunk),
                     threads=nt)
            progress(min(S, r0 + chunk), S)
    if cfg.c_parity and len(flat):
        _c_parity_fixups(model, args, active, flat, out, omega, oor, ran)
    elif not cfg.c_parity and model.interpolate:
        model.interp_fallback = int(np.count_nonzero(oor >= 0))
    return out, omega


def _c_parity_fixups(model, args, active, flat, out, omega, oor, ran):
    """Emulate the order-dependent state of a single-threaded nanoBragg.c.

    1. phi=0 carry-over: the pixel that first runs a phi loop uses the
       unrotated cell; if the first active pixel skipped every source (-dmin),
       the honour passes to the next pixel that ran one.
    2. Interpolation latch: after the first out-of-range tricubic lookup
       nanoBragg.c turns interpolation off for every later sub-path.
    """
    S, F = active.shape
    nt = model.cfg.threads or None
    ranflat = ran.ravel()
    runs = flat[ranflat[flat] != 0]
    first_true = int(runs[0]) if len(runs) else -1
    if first_true != int(flat[0]):
        # re-render: the wrong pixel got the first-execution cells
        K.render(active, first_true, -1, -1, *args, out, omega, oor, ran, threads=nt)
    model.first_exec_pixel = first_true
    oorflat = oor.ravel()
    bad = flat[oorflat[flat] >= 0]
    if model.interpolate and len(bad):
        p = int(bad[0])
        model.latch = (p, int(oorflat[p]))
        K.render(active, first_true, p, int(oorflat[p]), *args, out, omega, oor, ran,
                 threads=nt)


def compute_stats(model: Model, img: np.ndarray, omega: np.ndarray) -> Dict[str, float]:
    """nanoBragg's summary statistics over the rendered pixels."""
    det = model.det
    roi = np.array(det.roi, dtype=np.int64)
    c_parity = bool(model.cfg.c_parity)
    max_I, arg, total, sumsq, n, dev, m = K.image_stats(img, model.active, roi, c_parity)
    mx = my = 0.0
    if arg >= 0:
        s, f = divmod(arg, det.fpixels)
        sub = det.pixel_size / model.oversample
        os_ = model.oversample
        # C reports the position of the pixel's last sub-pixel
        mx = sub * (f * os_ + os_ - 1) + sub / 2.0
        my = sub * (s * os_ + os_ - 1) + sub / 2.0
    avg = total / (n if n > 0 else 1)
    if c_parity:
        # nanoBragg.c divides the sum of squares by n - 1: an rms over 2 pixels
        # can exceed the larger of them (docs/quirks.md #35)
        rms = math.sqrt(sumsq / ((n if n > 1 else 2) - 1))
    else:
        rms = math.sqrt(sumsq / n) if n > 0 else 0.0
    rmsd = math.sqrt(dev / ((m if m > 1 else 2) - 1))
    # the solid angle of the detector: nanoBragg.c adds each sub-pixel's omega once
    # per layer and divides by all steps (sources, mosaic, phi too: -c_parity);
    # the default mode averages over the sub-pixels and layers only
    per = model.nsteps if c_parity else model.oversample ** 2 * model.steps.detector_thicksteps
    return dict(max_I=max_I, max_I_x=mx, max_I_y=my, mean=avg, rms=rms, rmsd=rmsd,
                omega_sum=float(np.sum(omega, dtype=np.float64)) / per)


def int_image(model: Model, img: np.ndarray, scale: float) -> np.ndarray:
    """nanoBragg's noiseless SMV pixels: round(float*scale + adc), clipped."""
    return K.int_image(img, np.array(model.det.roi, dtype=np.int64), float(scale),
                       float(model.cfg.adc_offset))


def pgm_image(model: Model, img: np.ndarray, pgm_scale: float) -> np.ndarray:
    from .io.pgm import pgm_bytes_from_float
    return pgm_bytes_from_float(img, pgm_scale, model.det.roi)


def simulate(cfg: Config, backend: Optional[str] = None, progress=None, out=None) -> Result:
    """Render the float image and everything nanoBragg derives from it.

    ``out``: optional preallocated float32 image (numpy/CuPy/torch, shared
    through DLPack without a copy when it lives on the backend's device)."""
    if not isinstance(cfg, Config):
        from .errors import ConfigError
        raise ConfigError("simulate: expected an nbnumba.Config (from nbnumba.parse_argv, or "
                          "Config(...)), got %s%s"
                          % (type(cfg).__name__, "; for flags use nbnumba.simulate_argv"
                             if isinstance(cfg, (list, tuple, str)) else ""))
    _check_out(out)
    _check_progress(progress)
    return run_model(build_model(cfg), backend=backend, progress=progress, out=out)


def _check_progress(progress) -> None:
    """progress= that cannot be called: ConfigError before the render (it was
    "'int' object is not callable" after the first chunk of rows)."""
    if progress is not None and not callable(progress):
        from .errors import ConfigError
        raise ConfigError("progress=: expected a callable(rows_done, rows_total) or None, got %s"
                          % type(progress).__name__)


def _check_out(out) -> None:
    """out= that no backend can fill (text, a torch tensor that requires grad,
    on the meta device, sparse, ...): ConfigError before anything is built.
    Also what would be filled through a copy, leaving the caller's object as
    it was: a list or tuple (numpy made a new array of it), and a torch tensor
    with the negative or conjugate bit set (a view such as ``z.conj().imag``:
    torch reads its memory negated, so it would have shown minus the image)."""
    if out is not None:
        from .errors import ConfigError
        from .interop import array_arg_problem, array_kind
        why = array_arg_problem(out)
        if why is None:
            kind = array_kind(out)
            if kind == "torch":
                if out.is_neg() or out.is_conj():
                    why = ("a torch tensor with the %s bit set (a view such as z.conj().imag), "
                           "which torch reads negated: nbnumba cannot fill it in place; pass a "
                           "plain tensor (torch.empty)"
                           % ("negative" if out.is_neg() else "conjugate"))
            elif kind == "other" and not (
                    hasattr(out, "__array_interface__") or hasattr(out, "__dlpack__")
                    or hasattr(out, "__cuda_array_interface__") or _has_buffer(out)):
                why = ("expected an array that nbnumba can fill in place (numpy, torch or "
                       "CuPy), got %s" % type(out).__name__)
        if why is not None:
            raise ConfigError("out=: %s" % why)


def _has_buffer(obj) -> bool:
    """Does obj export its memory (the buffer protocol: memoryview, array.array)?"""
    try:
        memoryview(obj).release()
    except TypeError:
        return False
    return True


def run_model(model: Model, backend: Optional[str] = None, progress=None, out=None) -> Result:
    """Render a prepared Model (see nbnumba.model.build_model)."""
    if not isinstance(model, Model):
        from .errors import ConfigError
        raise ConfigError("run_model: expected an nbnumba.model.Model (from build_model), got %s"
                          % type(model).__name__)
    _check_out(out)
    _check_progress(progress)
    cfg = model.cfg
    # (None only: False, 0 or "" are no backend's name, and an array has no truth value)
    backend = _check_backend(cfg.device if backend is None else backend)
    from .validate import check_image_finite, check_terms_finite
    check_terms_finite(model)      # F^2 = inf etc.: refuse before a long render
    # the CPU kernel runs on its own thread pool (cfg.threads, see kernels.cpu.render)
    img, omega = render_float(model, backend=backend, progress=progress, out=out)
    if backend == "cuda":
        import cupy as cp
        if not bool(cp.isfinite(img).all()):
            # inf/NaN pixels: stop and name the term that overflowed (nothing is written)
            check_image_finite(model, to_host(img))
    res = Result(float_image=img, model=model, stats={}, log=list(model.log), _pending=omega)
    if backend != "cuda":
        res.ensure_host()
    if cfg.trace_spixel >= 0 and cfg.trace_fpixel >= 0:
        from .trace import trace_lines
        res.trace_lines = trace_lines(model, cfg.trace_spixel, cfg.trace_fpixel)
    return res


def _host_products(res: Result, omega) -> None:
    """Statistics and the integer, PGM and noise images of ``res`` (host side)."""
    from .validate import check_image_finite
    model = res.model
    cfg = model.cfg
    img_host = to_host(res.float_image)
    # inf/NaN pixels: stop and name the term that overflowed (nothing is written)
    check_image_finite(model, img_host)
    # a first run may have started compiling the helpers below in a second
    # process (jitcache.announce_compile): load them from the cache it fills
    from .jitcache import wait_helpers
    wait_helpers()
    stats = compute_stats(model, img_host, to_host(omega))
    scale = cfg.intfile_scale
    if scale <= 0.0:
        scale = 1.0
        if stats["max_I"] > 0.0:
            scale = 55000.0 / stats["max_I"]
    stats["intfile_scale"] = scale
    res.stats = stats
    res.int_image = int_image(model, img_host, scale)
    if cfg.write_pgm:
        pscale = cfg.pgm_scale
        if pscale <= 0.0:
            pscale = scale
            if stats["rmsd"] > 0.0:
                pscale = 250.0 / (5.0 * stats["rmsd"])
        stats["pgm_scale"] = pscale
        res.pgm_image = pgm_image(model, img_host, pscale)
    if cfg.calculate_noise:
        noise, photons, overloads, _ = K.noise_image(
            img_host, model.seed, model.rng.buf, model.rng.gauss, cfg.adc_offset,
            np.array(model.det.roi, dtype=np.int64), bool(cfg.c_parity))
        res.noise_image = noise
        stats["photons"] = photons
        stats["overloads"] = overloads


def apply_overrides(cfg: Config, overrides) -> Config:
    """``dataclasses.replace`` with one-line ConfigErrors: unknown field names and
    values of the wrong type (e.g. ``distance="abc"``) are refused."""
    from dataclasses import fields, replace
    from .errors import ConfigError
    from .validate import check_config
    if not overrides:
        return cfg
    if not isinstance(overrides, dict):
        raise ConfigError("overrides must be a dict of Config fields, got %r" % type(overrides).__name__)
    known = {f.name for f in fields(cfg)}
    for k in overrides:
        if k not in known:
            raise ConfigError("overrides: %r is not a Config field" % (k,))
    return check_config(replace(cfg, **overrides))


def simulate_argv(argv, cwd=None, overrides=None, **more) -> Result:
    """Parse nanoBragg-style flags and simulate; relative paths resolve in ``cwd``
    (without changing the process's working directory: calls from several
    threads with different ``cwd`` are independent).

    ``overrides`` (a dict) and extra keywords replace Config fields after parsing,
    in the Config's units (metres, radians); bad names or types raise ConfigError."""
    from .flags import parse_argv
    from .validate import argv_words, resolve_cwd
    words = argv_words(argv)
    cfg = parse_argv(words, cwd=resolve_cwd(cwd))
    if overrides is not None and not isinstance(overrides, dict):
        from .errors import ConfigError
        raise ConfigError("overrides must be a dict of Config fields, got %s"
                          % type(overrides).__name__)
    both = sorted(set(overrides or {}) & set(more))
    if both:
        # dict(overrides, **more) kept the keyword's value without a word
        from .errors import ConfigError
        raise ConfigError("simulate_argv: %s given both in overrides= and as a keyword"
                          % ", ".join(both))
    cfg = apply_overrides(cfg, dict(overrides or {}, **more))
    return simulate(cfg)
