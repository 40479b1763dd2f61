"""The fixed benchmark workloads W1-W5, kept as nanoBragg argument lists.

Every benchmark (pytest-benchmark suite, ``benchmarks.vs_c``, the scaling
plot) builds its command line here, so the definitions live in one place:

* ``W1`` simple: cubic cell, default_F, 1024x1024, one sub-path per pixel.
* ``W2`` heavy: triclinic cell, mosaic, phi, oversample, dispersion
  (3 sources x 10 domains x 5 phi x 2x2 = 600 sub-paths per pixel).
* ``W3`` Pilatus: the real-world case of ``shared/data/supervisor/README.md``
  (2463 x 2527 pixels, 10 phi steps, ``-mat A.mat -hkl scaled.hkl``).  When
  that directory is missing, an A matrix and a P1 HKL file with the same
  cell and index ranges are generated instead.
* ``W4`` interpolation: W2 with ``-N 2 -interpolate`` and a generated P1 HKL
  grid (d >= 2 A, far beyond the ~4.3 A the detector corner reaches, so
  tricubic interpolation never runs out of the grid).
* ``W5`` mosaic sweep: 1024x1024, ``-mosaic 1 -mosaic_dom D``; the GPU issue's
  workload.  On the CPU only D = 1, 10 on a 128x128 detector are run.

Quick mode (env ``NB_BENCH_QUICK=1``) shrinks every detector to at most
128 x 128 pixels: ``-detpixels`` workloads keep the default (centred) beam;
W3 keeps a 128 x 128 window centred on its trace pixel (slow 685, fast 1039)
by moving the beam centre and ``pix0`` by the window offset.

Every command line gets ``-nonoise -nopgm -noprogress`` and writes its files
into a directory the caller gives (never the current directory).
"""
from __future__ import annotations

import math
import os
import re
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

REPO_ROOT = Path(__file__).resolve().parents[1]
#: W3 reference data: ../shared/data/supervisor relative to the repo root
#: (override with env NB_W3_DATA).
SUPERVISOR_DIR = Path(os.environ.get("NB_W3_DATA", str(REPO_ROOT.parent / "shared" / "data" / "supervisor")))
QUICK_PIXELS = 128
COMMON_FLAGS = ["-nonoise", "-nopgm", "-noprogress"]
#: flags only the port understands (stripped from the C command line)
PORT_ONLY_FLAGS = {"-precision": 1, "-threads": 1, "-device": 1, "-c_parity": 0}

W1 = ("-cell 100 100 100 90 90 90 -lambda 6.2 -N 5 -default_F 100 -distance 100 "
      "-detpixels 1024").split()
W2 = ("-cell 70 80 90 85 95 105 -misset 10 5 3 -lambda 1.5 -N 8 -default_F 100 -distance 100 "
      "-detpixels 512 -mosaic 0.5 -mosaic_dom 10 -phi 0.1 -osc 1 -phisteps 5 -oversample 2 "
      "-dispersion 0.2 -dispsteps 3 -seed 1").split()
W3 = ("-mat {mat} -hkl {hkl} -nointerpolate -oversample 1 "
      "-exposure 1 -flux 1e18 -beamsize 1.0 -spindle_axis -1 0 0 "
      "-Xbeam 217.742295 -Ybeam 213.907080 -distance 231.274660 -lambda 0.976800 "
      "-pixel 0.172 -detpixels_x 2463 -detpixels_y 2527 "
      "-odet_vector -0.000088 0.004914 -0.999988 -sdet_vector -0.005998 -0.999970 -0.004913 "
      "-fdet_vector 0.999982 -0.005998 -0.000118 "
      "-pix0_vector_mm -216.336293 215.205512 -230.200866 -beam_vector 0.00051387949 0.0 -0.99999986 "
      "-Na 36 -Nb 47 -Nc 29 -osc 0.1 -phi 0 -phisteps 10 "
      "-detector_rotx 0 -detector_roty 0 -detector_rotz 0 -twotheta 0").split()
W4 = [("2" if i > 0 and W2[i - 1] == "-N" else a) for i, a in enumerate(W2)] + ["-interpolate", "-hkl", "{w4hkl}"]


def w5_args(domains: int) -> List[str]:
    """W5: the GPU issue's mosaic sweep with ``domains`` mosaic domains."""
    return ("-cell 100 100 100 90 90 90 -lambda 1 -N 5 -default_F 100 -distance 100 "
            "-detpixels 1024 -mosaic 1 -mosaic_dom %d" % int(domains)).split()


GPU_MOSAIC_DOMAINS = (1, 10, 100, 1000, 10000)
CPU_MOSAIC_DOMAINS = (1, 10)

# W3 fallback inputs (used only when SUPERVISOR_DIR is missing): the cell of
# the real A.mat (26.75 31.31 33.67 88.69 71.53 68.14) and a resolution that
# gives the same index ranges as scaled.hkl (h -24..24, k -28..28, l -31..30).
W3_CELL = (26.7514, 31.3100, 33.6734, 88.687, 71.529, 68.138)
W3_DMIN = 1.0727
W3_LAMBDA = 0.9768
W3_MISSET = (12.0, -31.0, 47.0)
# W4 HKL grid: W2's cell to d = 2 A (|h| <= 35, |k| <= 40, |l| <= 45).
W4_CELL = (70.0, 80.0, 90.0, 85.0, 95.0, 105.0)
W4_DMIN = 2.0
GEN_VERSION = "v1"      # bump when a generator changes, so caches regenerate


@dataclass(frozen=True)
class Workload:
    name: str
    title: str
    args: Tuple[str, ...]
    #: (slow, fast) pixel kept at the centre of the quick-mode window; None:
    #: shrink -detpixels and keep the default (centred) beam.
    window_centre: Optional[Tuple[int, int]] = None
    #: port flags vs_c adds so that port and C images describe the same
    #: geometry (W3: nanoBragg.c ignores -pix0_vector_mm, C-DESIGN-FLAW-003,
    #: the port honours it unless -c_parity)
    parity_flags: Tuple[str, ...] = ()
    #: detector pixels for quick mode (None: QUICK_PIXELS)
    quick_pixels: Optional[int] = None
    #: skip on the CPU unless in quick mode (kept small)
    cpu_small_only: bool = False


WORKLOADS: Dict[str, Workload] = {
    "W1": Workload("W1", "simple 1024^2, 1 sub-path/pixel", tuple(W1)),
    # W2/W4: nanoBragg.c builds their triclinic cell with other angles (docs/quirks.md #13)
    "W2": Workload("W2", "heavy 512^2, 600 sub-paths/pixel", tuple(W2), parity_flags=("-c_parity",)),
    "W3": Workload("W3", "Pilatus 2463x2527, 10 phi steps", tuple(W3), window_centre=(685, 1039),
                   parity_flags=("-c_parity",)),
    "W4": Workload("W4", "W2 with -N 2 -interpolate (tricubic)", tuple(W4), parity_flags=("-c_parity",)),
}
for _d in GPU_MOSAIC_DOMAINS:
    WORKLOADS["W5-D%d" % _d] = Workload("W5-D%d" % _d, "mosaic sweep 1024^2, %d domains" % _d,
                                        tuple(w5_args(_d)), cpu_small_only=True)
MAIN_WORKLOADS = ("W1", "W2", "W3", "W4")


def is_quick() -> bool:
    """True when env NB_BENCH_QUICK asks for the shrunken (CI) workloads."""
    return os.environ.get("NB_BENCH_QUICK", "").strip().lower() in ("1", "true", "yes", "on")


def get(name: str) -> Workload:
    try:
        return WORKLOADS[name.upper()]
    except KeyError:
        raise KeyError("unknown workload %r (known: %s)" % (name, ", ".join(WORKLOADS))) from None


# ---------------------------------------------------------------------------
# argument-list helpers
# ---------------------------------------------------------------------------
def flag_values(args: Sequence[str], flag: str, n: int = 1) -> Optional[List[str]]:
    """The ``n`` values after the last ``flag`` in ``args`` (None if absent)."""
    args = list(args)
    for i in range(len(args) - 1, -1, -1):
        if args[i] == flag:
            return args[i + 1:i + 1 + n]
    return None


def set_flag(args: Sequence[str], flag: str, values: Sequence[object]) -> List[str]:
    """Replace the values of ``flag`` in place, or append the flag."""
    out = list(args)
    vals = [_fmt(v) for v in values]
    for i, a in enumerate(out):
        if a == flag:
            out[i + 1:i + 1 + len(vals)] = vals
            return out
    return out + [flag] + vals


def strip_flags(args: Sequence[str], flags: Dict[str, int]) -> List[str]:
    """Drop every ``flag`` (with its value count) listed in ``flags``."""
    out, i, args = [], 0, list(args)
    while i < len(args):
        if args[i] in flags:
            i += 1 + flags[args[i]]
            continue
        out.append(args[i])
        i += 1
    return out


def _fmt(v) -> str:
    if isinstance(v, float):
        return "%.10g" % v
    return str(v)


def shrink(args: Sequence[str], n: int = QUICK_PIXELS,
           centre: Optional[Tuple[int, int]] = None, grow: bool = False) -> List[str]:
    """Shrink the detector of ``args`` to at most n x n pixels.

    ``-detpixels N`` becomes ``min(N, n)`` (``n`` with ``grow``; the default
    beam centre follows the detector centre, the pixel size is kept).  With explicit ``-detpixels_x/_y`` the kept window is
    centred on ``centre`` = (slow, fast) pixel (default: detector centre) and
    ``-Xbeam/-Ybeam`` (CUSTOM convention: Fbeam = Xbeam, Sbeam = Ybeam) and
    ``-pix0_vector_mm`` move by the window offset, so the window shows the
    same pixels as the full detector.
    """
    out = list(args)
    dp = flag_values(out, "-detpixels")
    if dp is not None:
        out = set_flag(out, "-detpixels", [n if grow else min(int(float(dp[0])), n)])
    fx, sy = flag_values(out, "-detpixels_x"), flag_values(out, "-detpixels_y")
    if fx is None and sy is None:
        return out
    F = int(float(fx[0])) if fx else int(float(sy[0]))
    S = int(float(sy[0])) if sy else F
    nf, ns = min(F, n), min(S, n)
    cs, cf = centre if centre is not None else (S // 2, F // 2)
    f0 = max(0, min(F - nf, cf - nf // 2))
    s0 = max(0, min(S - ns, cs - ns // 2))
    out = set_flag(out, "-detpixels_x", [nf])
    out = set_flag(out, "-detpixels_y", [ns])
    pix_mm = float(flag_values(out, "-pixel")[0]) if flag_values(out, "-pixel") else 0.1
    xb, yb = flag_values(out, "-Xbeam"), flag_values(out, "-Ybeam")
    if xb is not None:
        out = set_flag(out, "-Xbeam", [float(xb[0]) - f0 * pix_mm])
    if yb is not None:
        out = set_flag(out, "-Ybeam", [float(yb[0]) - s0 * pix_mm])
    p0 = flag_values(out, "-pix0_vector_mm", 3)
    fd, sd = flag_values(out, "-fdet_vector", 3), flag_values(out, "-sdet_vector", 3)
    if p0 is not None and fd is not None and sd is not None:
        new = [float(p0[i]) + (f0 * float(fd[i]) + s0 * float(sd[i])) * pix_mm for i in range(3)]
        out = set_flag(out, "-pix0_vector_mm", new)
    return out


def detector_shape(args: Sequence[str]) -> Tuple[int, int]:
    """(slow, fast) pixel counts the argument list asks for."""
    dp = flag_values(args, "-detpixels")
    f = s = int(float(dp[0])) if dp else 1024
    fx, sy = flag_values(args, "-detpixels_x"), flag_values(args, "-detpixels_y")
    if fx:
        f = int(float(fx[0]))
    if sy:
        s = int(float(sy[0]))
    return s, f


# ---------------------------------------------------------------------------
# input files
# ---------------------------------------------------------------------------
def cache_dir() -> Path:
    """Where generated inputs are kept between runs (env NB_BENCH_CACHE)."""
    d = os.environ.get("NB_BENCH_CACHE")
    p = Path(d) if d else Path(tempfile.gettempdir()) / ("nbnumba-bench-%d" % os.getuid())
    p.mkdir(parents=True, exist_ok=True)
    return p


def _synth():
    try:
        from nbnumba.testing import synth
        if hasattr(synth, "write_p1_hkl") and hasattr(synth, "write_mosflm_mat"):
            return synth
    except Exception:            # pragma: no cover - synth is written by another helper
        pass
    return None


def _recip(cell):
    """Reciprocal vectors (rows a*, b*, c*) of ``cell`` in 1/A (a along x)."""
    import numpy as np
    a, b, c, al, be, ga = (float(x) for x in cell)
    al, be, ga = (math.radians(x) for x in (al, be, ga))
    av = np.array([a, 0.0, 0.0])
    bv = np.array([b * math.cos(ga), b * math.sin(ga), 0.0])
    cx = c * math.cos(be)
    cy = c * (math.cos(al) - math.cos(be) * math.cos(ga)) / math.sin(ga)
    cv = np.array([cx, cy, math.sqrt(max(c * c - cx * cx - cy * cy, 0.0))])
    V = float(np.dot(av, np.cross(bv, cv)))
    return np.array([np.cross(bv, cv) / V, np.cross(cv, av) / V, np.cross(av, bv) / V])


def write_p1_hkl(path, cell, dmin, seed) -> int:
    """P1 ``h k l F`` list for d >= dmin (nbnumba.testing.synth if present)."""
    s = _synth()
    if s is not None:
        return s.write_p1_hkl(str(path), cell, dmin, seed)
    import numpy as np
    recip = _recip(cell)
    lim = [int(math.floor(float(x) / dmin)) for x in cell[:3]]
    g = np.stack(np.meshgrid(*[np.arange(-m, m + 1) for m in lim], indexing="ij"), -1).reshape(-1, 3)
    s2 = ((g @ recip) ** 2).sum(1)
    keep = (s2 <= 1.0 / dmin ** 2 + 1e-12) & np.any(g != 0, axis=1)
    g, s2 = g[keep], s2[keep]
    F = np.maximum(1000.0 * np.exp(-5.0 * s2) * np.random.default_rng(seed).gamma(2.0, 0.5, len(g)), 0.01)
    _atomic_text(path, "".join("%4d %4d %4d %8.2f\n" % (h, k, l, f) for (h, k, l), f in zip(g.tolist(), F.tolist())))
    return len(g)


def write_mosflm_mat(path, cell, misset_deg, wavelength_A) -> None:
    """MOSFLM A matrix (nbnumba.testing.synth if present)."""
    s = _synth()
    if s is not None:
        s.write_mosflm_mat(str(path), cell, misset_deg, wavelength_A)
        return
    import numpy as np
    rx, ry, rz = (math.radians(x) for x in misset_deg)
    Rx = np.array([[1, 0, 0], [0, math.cos(rx), -math.sin(rx)], [0, math.sin(rx), math.cos(rx)]])
    Ry = np.array([[math.cos(ry), 0, math.sin(ry)], [0, 1, 0], [-math.sin(ry), 0, math.cos(ry)]])
    Rz = np.array([[math.cos(rz), -math.sin(rz), 0], [math.sin(rz), math.cos(rz), 0], [0, 0, 1]])
    A = (Rz @ Ry @ Rx @ _recip(cell).T) * float(wavelength_A)
    _atomic_text(path, "".join(" %15.10f %15.10f %15.10f\n" % tuple(A[i]) for i in range(3)))


def _atomic_text(path, text: str) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=str(path.parent))
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def input_files(names: Iterable[str] = ("W3", "W4"), where: Optional[Path] = None) -> Dict[str, str]:
    """Paths for the ``{mat}``, ``{hkl}``, ``{w4hkl}`` placeholders.

    W3 uses the supervisor data when present, else generated stand-ins; W4's
    grid is always generated.  Generated files are cached in ``where``
    (default: :func:`cache_dir`) and reused.
    """
    names = {n.upper() for n in names}
    where = Path(where) if where is not None else cache_dir()
    out: Dict[str, str] = {}
    if "W3" in names:
        mat, hkl = SUPERVISOR_DIR / "A.mat", SUPERVISOR_DIR / "scaled.hkl"
        if mat.is_file() and hkl.is_file():
            out["mat"], out["hkl"] = str(mat), str(hkl)
        else:
            gmat = where / ("w3_A_%s.mat" % GEN_VERSION)
            ghkl = where / ("w3_p1_%s.hkl" % GEN_VERSION)
            if not gmat.is_file():
                write_mosflm_mat(gmat, W3_CELL, W3_MISSET, W3_LAMBDA)
            if not ghkl.is_file() or ghkl.stat().st_size == 0:
                write_p1_hkl(ghkl, W3_CELL, W3_DMIN, 3)
            out["mat"], out["hkl"] = str(gmat), str(ghkl)
    if "W4" in names:
        g4 = where / ("w4_p1_%s.hkl" % GEN_VERSION)
        if not g4.is_file() or g4.stat().st_size == 0:
            write_p1_hkl(g4, W4_CELL, W4_DMIN, 4)
        out["w4hkl"] = str(g4)
    return out


def w3_data_source() -> str:
    """'supervisor' when the real W3 files are used, else 'generated'."""
    ok = (SUPERVISOR_DIR / "A.mat").is_file() and (SUPERVISOR_DIR / "scaled.hkl").is_file()
    return "supervisor" if ok else "generated"


# ---------------------------------------------------------------------------
# command lines
# ---------------------------------------------------------------------------
def argv(name: str, outdir, *, quick: Optional[bool] = None, precision: Optional[str] = None,
         threads: Optional[int] = None, for_c: bool = False, extra: Sequence[str] = (),
         pixels: Optional[int] = None, files: Optional[Dict[str, str]] = None) -> List[str]:
    """The full command line (without the program) of workload ``name``.

    outdir: directory for floatimage/intimage (use a fresh one per run: both
        programs read a stale Fdump.bin from the working directory).
    quick: shrink to <= 128x128 (default: env NB_BENCH_QUICK).
    pixels: detector of pixels x pixels (overrides quick; ``-detpixels``
        workloads may also grow, explicit ``-detpixels_x/_y`` only shrink).
    precision, threads: port flags (-precision, -threads); left out for C.
    for_c: drop every port-only flag (also from ``extra``).
    """
    wl = get(name)
    if quick is None:
        quick = is_quick()
    args = list(wl.args)
    if any("{" in a for a in args):
        f = files if files is not None else input_files([name.upper()[:2]])
        args = [a.format(**f) if "{" in a else a for a in args]
    n = pixels if pixels is not None else ((wl.quick_pixels or QUICK_PIXELS) if quick else None)
    if n is not None:
        args = shrink(args, n, wl.window_centre, grow=pixels is not None)
    outdir = Path(outdir)
    args += COMMON_FLAGS + ["-floatfile", str(outdir / "float.bin"), "-intfile", str(outdir / "int.img")]
    if not for_c:
        if precision:
            args += ["-precision", precision]
        if threads:
            args += ["-threads", str(int(threads))]
    args += list(extra)
    if for_c:
        args = strip_flags(args, PORT_ONLY_FLAGS)
    return args


# ---------------------------------------------------------------------------
# run information from a program's stdout
# ---------------------------------------------------------------------------
_RX = {
    "pixels": re.compile(r"\((\d+)x(\d+) pixels\)"),
    "sources": re.compile(r"^\s*(\d+) sources\s*$", re.M),
    "mosaic": re.compile(r"^\s*(\d+) mosaic domains", re.M),
    "phisteps": re.compile(r"^\s*(\d+) phi steps", re.M),
    "oversample": re.compile(r"^\s*(\d+)x(\d+) pixel oversample steps", re.M),
    "thicksteps": re.compile(r"sensor is \S+ m thick in (\d+) layers"),
}


def parse_run_info(stdout: str) -> Dict[str, int]:
    """Pixels and sub-path counts from nanoBragg's (or the port's) summary.

    steps = sources x mosaic domains x phi steps x oversample^2 (nanoBragg's
    own ``steps``; detector thickness layers are reported separately), and
    subpaths = pixels x steps.  Keys that cannot be found are left out.
    """
    info: Dict[str, int] = {}
    m = _RX["pixels"].search(stdout)
    if m:
        info["fpixels"], info["spixels"] = int(m.group(1)), int(m.group(2))
        info["pixels"] = info["fpixels"] * info["spixels"]
    for key in ("sources", "mosaic", "phisteps", "thicksteps"):
        m = _RX[key].search(stdout)
        if m:
            info[key] = int(m.group(1))
    m = _RX["oversample"].search(stdout)
    if m:
        info["oversample"] = int(m.group(1))
    if all(k in info for k in ("sources", "mosaic", "phisteps", "oversample")):
        info["steps"] = info["sources"] * info["mosaic"] * info["phisteps"] * info["oversample"] ** 2
        if "pixels" in info:
            info["subpaths"] = info["pixels"] * info["steps"]
    return info


# ---------------------------------------------------------------------------
# in-process model (kernel-level benchmarks)
# ---------------------------------------------------------------------------
def build_model_for(args: Sequence[str], workdir):
    """Parse ``args`` as if run in ``workdir`` and build the nbnumba Model."""
    from nbnumba.flags import parse_argv
    from nbnumba.model import build_model
    old = os.getcwd()
    os.chdir(str(workdir))
    try:
        cfg = parse_argv(list(args))
        cfg = replace(cfg, workdir=str(workdir))
        return build_model(cfg)
    finally:
        os.chdir(old)


def model_subpaths(model) -> int:
    """pixels x steps for an in-process model (ROI/mask pixels only)."""
    return int(model.active.sum()) * int(model.nsteps)


def set_threads(n: Optional[int]) -> int:
    """Set numba's thread count (capped at NUMBA_NUM_THREADS); returns it."""
    import numba
    if n:
        numba.set_num_threads(max(1, min(int(n), numba.config.NUMBA_NUM_THREADS)))
    return numba.get_num_threads()
