"""The CUDA kernel source (nbnumba/kernels/nanobragg.cu), checked without a GPU.

1. nvcc compiles it to PTX for sm_80 and sm_90 with the options CuPy uses for
   each precision (fails, not skips, when nvcc is missing: CI has it), and
   those options are the deliberate ones (no FMA contraction, -ftz as CuPy
   adds it, IEEE float32 division and sqrt).
2. The same file compiled as host C++ (g++ -include cuda_compat.h) and run
   through ctypes reproduces the numba engine on the golden corpus and on
   extra cases the corpus lacks: bit for bit wherever the numba kernel is
   strict IEEE (``gpu.numba_fast_math`` false; always under -c_parity in
   float64): float64 images, per-pixel values before the float32 store,
   device traces, and the float32 kernel against the numba engine's
   ``-precision single`` (which is also within the float32 tolerances of the
   float64 image).  Where the numba kernel takes one of its fast-math
   sections (``cpu.FAST_MATH``: FMA contraction and reassociation in the
   square-crystal reduced-sincg lattice loop, any mode, and in the default
   mode's lean F sum), LLVM fuses operations the CUDA kernel (--fmad=false)
   and its host build (-ffp-contract=off) round separately, and whether it
   does depends on the CPU: there the bounds of ``gpu.FAST_MAX_ULP`` /
   ``gpu.FAST_REL`` apply (derived in nbnumba/kernels/gpu.py: <= 1 float32
   ulp per pixel of the float64 kernel's image and <= 1e-13 relative on its
   double values; <= 55 float32 ulps per pixel of the float32 kernel, whose
   float32 sine polynomial is what the FMAs round differently).
3. The launch path (``gpu.render``) runs against a fake CuPy whose kernels are
   the host build: every launch's arguments are checked against the
   ``extern "C"`` signature parsed from nanobragg.cu (int64 scalars, the dtype
   of each pointer), launches are chunked by rows, and a torch ``out=``
   tensor is written on torch's current stream.
4. Tests marked ``gpu`` run the real thing on a CUDA device (skipped when
   ``gpu.available()`` is False).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import re
import shutil
import sys
import types
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import nbnumba
from nbnumba import api
from nbnumba.errors import ConfigError
from nbnumba.flags import parse_argv
from nbnumba.kernels import cpu as K
from nbnumba.kernels import gpu
from nbnumba.model import build_model
from nbnumba.testing.fake_cupy import make_fake_cupy

F64_MAX_REL = 1e-9          # float64: max |host - numba| / max |numba|
F32_CORR_MIN = 0.99999      # float32 kernel vs the float64 image
F32_REL_MAX = 1e-3          # ... relative error on pixels above 1e-3 of the max
F32_FLOOR = 1e-3
FLIP_BUDGET = 1e-3          # GPU: flipped pixels allowed, as a fraction of the image

#: nvcc builds for sm_80 run every time; those for sm_90 (5 to 7 s each) are long checks
NVCC_ARCHS = ["sm_80", pytest.param("sm_90", marks=pytest.mark.slow)]


# --------------------------------------------------------------------------- cases
class _MetaCase:
    """A golden case read from golden/data/<name>/meta.json (no pyyaml needed)."""

    def __init__(self, d):
        self.name, self.inputs, self.mode, self.args = d["name"], d["inputs"], d["mode"], d["args"]

    def port_argv(self):
        return list(self.args) + (["-c_parity"] if self.mode == "c_parity" else [])


def _golden_cases():
    try:
        from nbnumba.testing import golden
    except Exception:
        return [], None
    try:
        return golden.load_cases(), golden.inputs_dir()
    except ImportError:   # no pyyaml (the GPU machine): the cases' meta.json files
        from benchmarks.gpu_check import golden_cases
        return [_MetaCase(d) for d in golden_cases()], golden.inputs_dir()
    except Exception:     # corpus not there: the extra cases below still run
        return [], None


GOLDEN, GOLDEN_INPUTS = _golden_cases()


def _write_hkl(path: Path, hmax=8, kmax=8, lmax=8, seed=5):
    """A small P1 hkl file (h k l F) generated with numpy."""
    rng = np.random.default_rng(seed)
    lines = []
    for h in range(-hmax, hmax + 1):
        for k in range(-kmax, kmax + 1):
            for l in range(-lmax, lmax + 1):
                lines.append("%d %d %d %.3f" % (h, k, l, 20.0 + 180.0 * rng.random()))
    path.write_text("\n".join(lines) + "\n")


#: a -sourcefile of three sources (x y z weight lambda per line: positions in
#: m, ~10 m up the beam, a few mrad apart; wavelengths in m) with unequal
#: weights, which the default mode weighs each source's terms by (relative
#: intensities 1 3 0.5: factors 2/3, 2, 1/3); -c_parity counts each once
SOURCES3 = ("-10 0.08 0 1 1.5e-10\n"
            "-10 0 -0.12 3 1.45e-10\n"
            "-10 -0.1 0.06 0.5 1.55e-10\n")
SOURCES3_WEIGHTS = (1.0, 3.0, 0.5)

_BASE = "-cell 70 80 90 90 90 90 -misset 10 20 30 -lambda 1.5 -distance 100 -nonoise -nopgm -noprogress"

#: cases the golden corpus does not cover (the corrected -oversample_* path,
#: mosaic x phi, default-mode interpolation fallback, ...).  {hkl} and
#: {hkl_small} are replaced by generated hkl files (|h|,|k|,|l| <= 8 and <= 4:
#: the small one sends the outer pixels out of the interpolation range).
EXTRA_CASES = {
    "x_corrected_all_oversample": _BASE + " -default_F 100 -N 5 -oversample 2 -oversample_thick"
    " -oversample_polar -oversample_omega -polar 0.9 -detector_abs 300 -detector_thick 200"
    " -detector_thicksteps 3 -detpixels 40 -pixel 0.4",
    "x_water_corrected_all": _BASE + " -default_F 100 -N 5 -water 50 -oversample 2 -oversample_thick"
    " -oversample_polar -oversample_omega -polar 0.9 -detector_abs 300 -detector_thick 200"
    " -detector_thicksteps 3 -hdivrange 0.4 -hdivsteps 2 -dmin 2 -detpixels 40 -pixel 0.4",
    "x_corrected_layers_only": _BASE + " -default_F 100 -N 5 -detector_abs 400 -detector_thick 300"
    " -detector_thicksteps 4 -detpixels 48 -pixel 0.3",
    "x_cparity_all_oversample": _BASE + " -default_F 100 -N 5 -oversample 2 -oversample_thick"
    " -oversample_polar -oversample_omega -detector_abs 300 -detector_thick 200"
    " -detector_thicksteps 2 -detpixels 32 -pixel 0.4 -c_parity",
    "x_mosaic_phi": _BASE + " -default_F 100 -N 6 -mosaic 0.6 -mosaic_dom 5 -mosaic_seed 11"
    " -phi 0 -osc 1.5 -phisteps 3 -detpixels 48 -pixel 0.4",
    "x_mosaic_phi_cparity": _BASE + " -default_F 100 -N 6 -mosaic 0.6 -mosaic_dom 4 -mosaic_seed 3"
    " -phi 0 -osc 1.5 -phisteps 3 -detpixels 48 -pixel 0.4 -c_parity",
    "x_interp_fallback_default": _BASE + " -hkl {hkl_small} -interpolate -N 3 -detpixels 64"
    " -pixel 0.3",
    "x_interp_latch_cparity": _BASE + " -hkl {hkl_small} -interpolate -N 3 -detpixels 64"
    " -pixel 0.3 -c_parity",
    "x_interp_latch_mid_cparity": _BASE + " -hkl {hkl_small} -interpolate -N 3 -detpixels 64"
    " -pixel 0.3 -roi 28 36 28 63 -c_parity",
    "x_dmin_first_pixel_cparity": _BASE + " -default_F 100 -N 5 -dmin 9 -phi 0 -osc 1"
    " -phisteps 3 -detpixels 64 -pixel 0.4 -c_parity",
    "x_curved_os_omega": _BASE + " -default_F 100 -N 5 -curved_det -oversample 2"
    " -oversample_omega -detpixels 40 -pixel 0.4",
    "x_point_pixel_curved": _BASE + " -default_F 100 -N 5 -curved_det -point_pixel -detpixels 40"
    " -pixel 0.4",
    # -curved_det in both modes (model.py's I_CURVED): the default mode's sphere
    # (2, physics.sphere_position) with a sensor, whose parallax is then 1 (the
    # sensor faces the sample), a tilted detector; and nanoBragg.c's lab-frame
    # map (1, physics.curved_position) under -c_parity, the golden
    # curved_detector's, here with a sensor too (its parallax d.odet).  Both
    # with -oversample_omega: below the sphere's surface (the second layer,
    # R > close) its solid angle pixel^2/R^2 (obliquity 1) differs from the
    # flat formula's pixel^2 close/R^3, which nanoBragg.c's map keeps
    "x_curved_sensor": _BASE + " -default_F 100 -N 5 -curved_det -detector_thick 100"
    " -detector_abs 50 -detector_thicksteps 2 -oversample 2 -oversample_omega"
    " -detector_rotx 3 -twotheta 4 -water 20 -detpixels 40 -pixel 0.4",
    "x_curved_sensor_cparity": _BASE + " -default_F 100 -N 5 -curved_det -detector_thick 100"
    " -detector_abs 50 -detector_thicksteps 2 -oversample_omega -detector_rotx 3"
    " -detpixels 40 -pixel 0.4 -c_parity",
    "x_div_disp_kahn_roi": _BASE + " -default_F 100 -N 5 -hdivrange 0.4 -vdivrange 0.4"
    " -hdivsteps 2 -vdivsteps 2 -dispersion 1 -dispsteps 3 -polar 0.5 -detpixels 64 -pixel 0.3"
    " -roi 5 50 10 60",
    "x_round_water_cparity": _BASE + " -default_F 100 -N 5 -round_xtal -water 0.2 -detpixels 48"
    " -pixel 0.4 -c_parity",
    "x_gauss_mosaic": _BASE + " -default_F 100 -N 8 -gauss_xtal -mosaic 0.4 -mosaic_dom 3"
    " -mosaic_seed 2 -detpixels 48 -pixel 0.4",
    "x_tophat_phi": _BASE + " -default_F 100 -N 8 -tophat_spots -phi 0 -osc 1 -phisteps 2"
    " -detpixels 48 -pixel 0.4",
    "x_large_N_hkl": _BASE + " -hkl {hkl} -nointerpolate -N 40 -oversample 1 -detpixels 64"
    " -pixel 0.2",
    # every index below 1e-100 (an absurd wavelength): the default mode's
    # forward scattering, S = 0 (physics.forward_scatter), where the three axes'
    # sines multiplied would underflow
    "x_forward_scatter": _BASE + " -default_F 100 -N 5 -lambda 1e107 -detpixels 16 -pixel 0.4",
    # -sourcefile weights (SOURCES3, {src3}): the lean sum of each source times
    # its factor; with -oversample_polar each source's water share weighed too,
    # -dmin cutting some sources of a sub-pixel (their wavelengths differ) and
    # not others; -c_parity ignores the weights (I_WEIGHTED 0).  Little water
    # (0.5 um): more would bury the Bragg terms' weights below a float32 ulp
    "x_sources_weighted": _BASE + " -default_F 100 -N 5 -sourcefile {src3} -mosaic 0.3"
    " -mosaic_dom 2 -mosaic_seed 4 -water 0.5 -detpixels 48 -pixel 0.4",
    "x_sources_weighted_os_polar_water": _BASE + " -default_F 100 -N 5 -sourcefile {src3}"
    " -oversample 2 -oversample_polar -water 0.5 -polar 0.9 -dmin 15 -detpixels 40 -pixel 0.4",
    "x_sources_weights_cparity": _BASE + " -default_F 100 -N 5 -sourcefile {src3} -oversample 2"
    " -oversample_polar -water 50 -detpixels 32 -pixel 0.4 -c_parity",
}

CASE_IDS = [c.name for c in GOLDEN] + sorted(EXTRA_CASES)


def _cfg_for(name: str, workdir: Path):
    """Config of a golden case (its inputs copied into ``workdir``) or an extra case."""
    if name in EXTRA_CASES:
        _write_hkl(workdir / "gen.hkl")
        _write_hkl(workdir / "gen_small.hkl", 4, 4, 4, seed=6)
        (workdir / "src3.txt").write_text(SOURCES3)
        argv = EXTRA_CASES[name].replace("{hkl}", "gen.hkl").replace("{hkl_small}", "gen_small.hkl")
        argv = argv.replace("{src3}", "src3.txt")
        argv = argv.split()
    else:
        case = next(c for c in GOLDEN if c.name == name)
        for fname in case.inputs:
            shutil.copy(GOLDEN_INPUTS / fname, workdir / fname)
        argv = case.port_argv()
    old = os.getcwd()
    os.chdir(workdir)
    try:
        cfg = parse_argv(argv)
    finally:
        os.chdir(old)
    return replace(cfg, workdir=str(workdir))


# --------------------------------------------------------------------------- 1. nvcc
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("arch", NVCC_ARCHS)
def test_nvcc_compiles_ptx(arch, dtype, nvcc_ptx):
    rc, err, ptx = nvcc_ptx(arch, dtype)
    assert rc == 0, "nvcc failed:\n" + err
    assert "warning" not in err.lower(), err
    assert re.search(r"^\.target\s+%s\b" % arch, ptx, re.M), "PTX not for %s" % arch
    for entry in gpu.ENTRY_POINTS.values():
        assert re.search(r"\.entry\s+%s\s*\(" % entry, ptx), "entry %s missing" % entry


@pytest.mark.slow
def test_nvcc_compiles_trace_build(nvcc_ptx):
    """The -DNB_TRACE build (one-thread -trace_pixel launches) adds the trace
    entry points; the render build has none."""
    rc, err, ptx = nvcc_ptx("sm_90", "float64", trace=True)
    assert rc == 0, "nvcc failed:\n" + err
    assert "warning" not in err.lower(), err
    for entry in list(gpu.ENTRY_POINTS.values()) + list(gpu.TRACE_ENTRY_POINTS.values()):
        assert re.search(r"\.entry\s+%s\s*\(" % entry, ptx), "entry %s missing" % entry
    rc, err, plain = nvcc_ptx("sm_90", "float64")
    assert rc == 0 and "render_f64" in plain and "trace_f64" not in plain


def _find_nvrtc():
    cand = [os.environ.get("NB_NVRTC_LIB")]
    try:
        import nvidia.cuda_nvrtc as pkg   # the nvidia-cuda-nvrtc-cu12 wheel (CuPy's NVRTC)
        for p in Path(list(pkg.__path__)[0], "lib").glob("libnvrtc.so*"):
            if "builtins" not in p.name and ".alt." not in p.name:
                cand.append(str(p))
    except Exception:
        pass
    cand.append(ctypes.util.find_library("nvrtc"))
    for c in cand:
        if c:
            try:
                return ctypes.CDLL(c)
            except OSError:
                continue
    return None


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_nvrtc_compiles(dtype):
    """What CuPy does at run time: NVRTC, no host headers (skipped without libnvrtc)."""
    lib = _find_nvrtc()
    if lib is None:
        pytest.skip("libnvrtc not found (set NB_NVRTC_LIB or install nvidia-cuda-nvrtc-cu12)")
    prog = ctypes.c_void_p()
    src = gpu.source_text().encode()
    assert lib.nvrtcCreateProgram(ctypes.byref(prog), src, b"nanobragg.cu", 0, None, None) == 0
    opts = [o.encode() for o in gpu.COMPILE_OPTIONS[dtype] + gpu.CUPY_ADDED_OPTIONS]
    opts.append(b"-arch=compute_80")
    arr = (ctypes.c_char_p * len(opts))(*opts)
    rc = lib.nvrtcCompileProgram(prog, len(opts), arr)
    n = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(prog, ctypes.byref(n))
    log = ctypes.create_string_buffer(n.value)
    lib.nvrtcGetProgramLog(prog, log)
    lib.nvrtcDestroyProgram(ctypes.byref(prog))
    assert rc == 0, log.value.decode(errors="replace")


def test_layout_constants_match_cpu():
    """The #defines of nanobragg.cu name the same slots as cpu.py's constants."""
    src = gpu.source_text()
    defs = dict((m.group(1), int(m.group(2)))
                for m in re.finditer(r"^#define\s+([IFV]_[A-Z0-9_]+|N_[A-Z]+)\s+(\d+)\s*$", src, re.M))
    names = [n for n in dir(K) if re.match(r"^(I|F|V)_[A-Z0-9_]+$|^N_(IOPT|FOPT|VECS)$", n)]
    assert len(names) > 40
    for n in names:
        assert defs.get(n) == getattr(K, n), "%s: nanobragg.cu %s, cpu.py %s" % (n, defs.get(n), getattr(K, n))


def test_cells_layout_conversion():
    rng = np.random.default_rng(1)
    c5 = rng.random((2, 3, 4, 3, 3))
    soa = c5.reshape(2, 12, 9).transpose(0, 2, 1).copy()
    assert np.array_equal(gpu.cells_aos(soa, 3, 4), c5)
    assert np.array_equal(gpu.cells_aos(c5, 3, 4), c5)
    with pytest.raises(nbnumba.NBError):
        gpu.cells_aos(c5, 4, 3)


# --------------------------------------------------------------------------- signature / options
_C_TO_NUMPY = {"nb_u8": np.uint8, "nb_i64": np.int64, "double": np.float64, "float": np.float32}


def kernel_signatures(src: str, macro: str = "NB_DEFINE_KERNEL"):
    """{entry point: [(numpy dtype, is_pointer, parameter name), ...]} parsed from
    the ``macro`` (NB_DEFINE_KERNEL or NB_DEFINE_TRACE) of nanobragg.cu and its
    instantiations."""
    m = re.search(r"#define %s\((\w+), (\w+), (\w+)\)(.*?)\)\s*\{" % macro, src, re.S)
    assert m, "%s macro not found" % macro
    macro_params = (m.group(2), m.group(3))
    body = m.group(4).replace("\\", " ")
    plist = body[body.index("void NAME(") + len("void NAME("):]
    params = [" ".join(p.split()) for p in plist.split(",")]
    sigs = {}
    for inst in re.finditer(r"^%s\((\w+), (\w+), (\w+)\)\s*$" % macro, src, re.M):
        name, real, fgrid = inst.groups()
        subst = dict(zip(macro_params, (real, fgrid)))
        out = []
        for p in params:
            toks = p.replace("*", " * ").split()
            pointer = "*" in toks
            toks = [t for t in toks if t not in ("const", "__restrict__", "*")]
            ctype, pname = subst.get(toks[0], toks[0]), toks[1]
            out.append((np.dtype(_C_TO_NUMPY[ctype]), pointer, pname))
        sigs[name] = out
    return sigs


SIGNATURES = kernel_signatures(gpu.source_text())
SIGNATURES.update(kernel_signatures(gpu.source_text(), "NB_DEFINE_TRACE"))


def check_launch_args(entry, args, signatures=None):
    """Every argument of a launch has the C type of the kernel's parameter
    (``signatures``: default SIGNATURES)."""
    sig = (SIGNATURES if signatures is None else signatures)[entry]
    assert len(args) == len(sig), (entry, len(args), len(sig))
    for a, (dt, pointer, pname) in zip(args, sig):
        if pointer:
            assert isinstance(a, np.ndarray), (entry, pname, type(a))
            assert a.dtype == dt, "%s: %s is %s, the kernel wants %s" % (entry, pname, a.dtype, dt)
            assert a.flags.c_contiguous, (entry, pname)
        else:
            # CuPy packs a numpy scalar by its dtype; a Python int would not be
            # guaranteed to be the kernel's long long
            assert isinstance(a, np.generic) and a.dtype == dt, (entry, pname, type(a))


def test_kernel_signatures_parsed():
    assert set(SIGNATURES) == set(gpu.ENTRY_POINTS.values()) | set(gpu.TRACE_ENTRY_POINTS.values())
    t64, t32 = SIGNATURES["trace_f64"], SIGNATURES["trace_f32"]
    assert [p[2] for p in t64] == ["s", "f", "first_exec", "latch_sub", "iopt", "fopt", "vecs",
                                   "incident", "lam", "cells", "Fhkl", "tbuf", "tpos", "maxrows",
                                   "value", "omega_sum", "info"]
    assert [(a, b) for a, b in zip(t64, t32) if a != b] == [
        ((np.dtype(np.float64), True, "Fhkl"), (np.dtype(np.float32), True, "Fhkl"))]
    f64, f32 = SIGNATURES["render_f64"], SIGNATURES["render_f32"]
    names = [p[2] for p in f64]
    assert names == ["active", "S", "F", "row0", "row1", "first_pixel", "latch_pixel", "latch_sub",
                     "iopt", "fopt", "vecs", "incident", "lam", "cells", "Fhkl", "out", "omega",
                     "oor", "ran"]
    assert [p[2] for p in f32] == names
    # the only difference between the two kernels: the F grid's element type
    diff = [(a, b) for a, b in zip(f64, f32) if a != b]
    assert diff == [((np.dtype(np.float64), True, "Fhkl"), (np.dtype(np.float32), True, "Fhkl"))]
    assert [p[0] for p in f64 if not p[1]] == [np.dtype(np.int64)] * 7


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_kernel_args_match_signature(dtype, tmp_path):
    """gpu.kernel_args + gpu.launch_args give each parameter its C type
    (also checked on every fake-CuPy launch below)."""
    cfg = _cfg_for("x_interp_latch_mid_cparity", tmp_path)
    m = build_model(cfg)
    S, F = m.shape
    args = gpu.kernel_args(m, dtype)
    active = np.ascontiguousarray(m.active, dtype=np.uint8)
    la = gpu.launch_args(active, S, F, 0, S, 3, -1, -1, args, np.zeros((S, F), np.float32),
                         np.zeros((S, F)), np.full((S, F), -1, np.int64), np.zeros((S, F), np.int64))
    check_launch_args(gpu.ENTRY_POINTS[dtype], la)
    # a wrong type is caught
    bad = la[:1] + (3,) + la[2:]
    with pytest.raises(AssertionError):
        check_launch_args(gpu.ENTRY_POINTS[dtype], bad)
    bad = la[:14] + (la[14].astype(np.float32 if dtype == "float64" else np.float64),) + la[15:]
    with pytest.raises(AssertionError):
        check_launch_args(gpu.ENTRY_POINTS[dtype], bad)


def test_compile_options_are_deliberate():
    for name, opts in gpu.COMPILE_OPTIONS.items():
        assert "--fmad=false" in opts and not any(o.startswith("--fmad=true") for o in opts), name
        assert "-prec-div=true" in opts and "-prec-sqrt=true" in opts, name
        assert not any("fast" in o for o in opts), name
        # CuPy appends -ftz=true after our options (NVRTC honours the last one):
        # we must not ask for anything else
        ftz = [o for o in opts if o.startswith("-ftz")]
        assert ftz == list(gpu.CUPY_ADDED_OPTIONS), name
    assert gpu.FGRID_DTYPE == {"float64": np.float64, "float32": np.float32}


def _defines(src, prefix):
    """{i: value} of the lines '#define <prefix>_<i> (<value>)' of the source."""
    return dict((int(i), float(v)) for i, v in
                re.findall(r"^#define %s_(\d+) \(([-+0-9.eE]+)\)\s*$" % prefix, src, re.M))


def test_sinpi_coefficients_match_physics():
    """The polynomial sines of nanobragg.cu are physics.SINPI_F64/F32 exactly."""
    from nbnumba import physics
    src = gpu.source_text()
    for tag, ref in (("F64", physics.SINPI_F64), ("F32", physics.SINPI_F32)):
        found = _defines(src, "NB_SINPI_" + tag)
        assert [found.get(i) for i in range(len(ref))] == list(ref), tag
        assert len(found) == len(ref)


def test_sinc3_series_match_physics():
    """The round crystal's series in nanobragg.cu (value and derivative, and
    where they take over) are physics.SINC3_SERIES / SINC3_DX_SERIES exactly."""
    from nbnumba import physics
    src = gpu.source_text()
    for tag, ref in (("SINC3", physics.SINC3_SERIES), ("SINC3_DX", physics.SINC3_DX_SERIES)):
        found = _defines(src, "NB_" + tag)
        assert [found.get(i) for i in range(len(ref))] == list(ref), tag
        assert len(found) == len(ref)
    below = re.findall(r"^#define NB_SINC3_SERIES_BELOW \(([-+0-9.eE]+)\)", src, re.M)
    assert [float(b) for b in below] == [physics.SINC3_SERIES_BELOW]


def test_sphere_sinc_series_match_physics():
    """-curved_det's sphere gradient: sinc_and_slope in nanobragg.cu sums
    physics._sinc_and_slope's Taylor series (and takes it below the same th),
    the same float literals in the same order."""
    import ast
    import inspect
    import textwrap
    from nbnumba import physics
    fn = ast.parse(textwrap.dedent(inspect.getsource(physics._sinc_and_slope.py_func))).body[0]
    consts = [n for stmt in fn.body[1:] for n in ast.walk(stmt)     # (after the docstring)
              if isinstance(n, ast.Constant) and isinstance(n.value, float)]
    ref = [n.value for n in sorted(consts, key=lambda n: (n.lineno, n.col_offset))]
    body = re.search(r"^__device__[^\n]*\bsinc_and_slope\(.*?^}$", gpu.source_text(),
                     re.M | re.S).group(0)
    body = re.sub(r"//[^\n]*", "", body.split("{", 1)[1])
    found = [float(x) for x in re.findall(r"(?<![\w.])\d+\.\d*(?:[eE][-+]?\d+)?", body)]
    assert len(ref) == 18 and ref[0] == 0.1
    assert found == ref


def test_x_over_sin_series_match_physics():
    """The unreduced sincg's near-origin series in nanobragg.cu
    (sincg_near_dh) has physics.X_OVER_SIN_SERIES's coefficients exactly."""
    from nbnumba import physics
    found = _defines(gpu.source_text(), "NB_XSIN")
    ref = physics.X_OVER_SIN_SERIES
    assert [found.get(i) for i in range(len(ref))] == list(ref)
    assert len(found) == len(ref)


def test_numba_fast_math_predicate(tmp_path):
    """gpu.numba_fast_math names exactly the runs whose numba kernel takes a
    fast-math section (those get the FAST_MAX_ULP bound; all others are held
    to bit-equality)."""
    cases = {  # name: (float64 kernel, float32 kernel)
        "x_mosaic_phi_cparity": (False, True),       # -c_parity: C's sincg in f64; f32 sines fused
        "x_round_water_cparity": (False, False),     # round crystal, -c_parity: strict throughout
        "x_mosaic_phi": (True, True),                # default square: lattice loop (and lean sum)
        "x_tophat_phi": (True, True),                # default tophat: the lean sum
        "x_interp_latch_cparity": (False, True),
    }
    for name, want in cases.items():
        m = build_model(_cfg_for(name, tmp_path))
        got = tuple(gpu.numba_fast_math(gpu.kernel_args(m, dt)[0]) for dt in (np.float64, np.float32))
        assert got == want, name
    io = gpu.kernel_args(build_model(_cfg_for("x_tophat_phi", tmp_path)), np.float64)[0]
    assert gpu.numba_fast_math(io, trace=True) is False     # the trace never takes the lean sum
    assert gpu.FAST_MAX_ULP == {"float64": 1, "float32": 55}
    assert gpu.fast_pixel_rel(io) > gpu.FAST_F64_REL


def test_launch_rows():
    # one row is ~F x sub-paths; the budget caps the product
    bands = gpu.launch_rows(100, 50, 4, budget_s=0.1, rate=2000.0)   # 200 sub-paths per launch
    assert bands == [(r, r + 1) for r in range(100)]
    bands = gpu.launch_rows(100, 50, 4, budget_s=0.1, rate=1e5)      # 1e4 -> 50 rows
    assert bands == [(0, 50), (50, 100)]
    bands = gpu.launch_rows(7, 3, 1, budget_s=10, rate=1e9)
    assert bands == [(0, 7)]
    # every row exactly once, estimated time within the budget
    bands = gpu.launch_rows(2527, 2463, 600)
    assert len(bands) > 1 and bands[0][0] == 0 and bands[-1][1] == 2527
    assert all(a[1] == b[0] for a, b in zip(bands, bands[1:]))
    assert all((r1 - r0) * 2463 * 600 / gpu.ASSUMED_SUBPATHS_PER_S <= gpu.LAUNCH_BUDGET_S
               for r0, r1 in bands)


# --------------------------------------------------------------------------- 2. host build
@pytest.fixture(scope="module")
def host(host_build):
    return gpu.HostKernel(host_build[0])


def test_host_build_is_warning_free(host_build):
    # the session's build (tests/conftest.py) ran with -Wall -Wextra
    assert "warning" not in host_build[1], host_build[1]


def test_host_build_failure_is_one_error(tmp_path):
    """A compiler that fails gives NBError naming the host build (the fuzz
    tool's ``device`` target builds through build_host_library)."""
    from nbnumba.errors import NBError
    fake = tmp_path / "cxx"
    fake.write_text("#!/bin/sh\necho 'nanobragg.cu:1: error: no'>&2\nexit 1\n")
    fake.chmod(0o755)
    with pytest.raises(NBError, match=r"^host build of nanobragg.cu failed: nanobragg.cu:1: error: no$"):
        gpu.build_host_library(tmp_path, cxx=str(fake))
    assert not (tmp_path / "libnb_host.so").exists()


def test_case_coverage(tmp_path):
    """At least 10 golden cases plus the extras, covering every kernel feature;
    the -sourcefile cases run weighted sources (I_WEIGHTED) in the default
    mode, with the plain lean sum and with -oversample_polar's per-source
    water, and unweighted under -c_parity; -curved_det runs in both modes."""
    assert len(CASE_IDS) >= 10
    if GOLDEN:
        assert len(GOLDEN) >= 10
    weighted = {}
    for name in sorted(EXTRA_CASES):
        if "{src3}" not in EXTRA_CASES[name]:
            continue
        cfg = _cfg_for(name, tmp_path)
        iopt, _, _, incident = gpu.kernel_args(build_model(cfg), np.float64)[:4]
        assert incident.shape == (3, 4), name
        w = np.asarray(SOURCES3_WEIGHTS)
        if cfg.c_parity:
            assert iopt[K.I_WEIGHTED] == 0 and np.all(incident[:, 3] == 1.0), name
        else:
            assert iopt[K.I_WEIGHTED] == 1, name
            assert np.allclose(incident[:, 3], w / w.mean(), rtol=1e-15, atol=0.0), name
        weighted[name] = (bool(iopt[K.I_WEIGHTED]), bool(iopt[K.I_OS_POLAR]),
                          cfg.water_size > 0.0)
    assert (True, False, True) in weighted.values()      # lean sum, per-sub-path water
    assert (True, True, True) in weighted.values()       # per-source polarization and water
    assert (False, True, True) in weighted.values()      # -c_parity: weights ignored
    # -curved_det in both modes (model.py's I_CURVED): nanoBragg.c's map under
    # -c_parity (1) and the default mode's sphere (2), each with and without
    # a sensor (the sphere's parallax is 1); the sphere and the map each with
    # -oversample_omega over several layers (the sphere's obliquity 1 at depth)
    curved = set()
    deep_omega = set()
    for name in sorted(EXTRA_CASES):
        if "-curved_det" not in EXTRA_CASES[name]:
            continue
        cfg = _cfg_for(name, tmp_path)
        iopt = gpu.kernel_args(build_model(cfg), np.float64)[0]
        assert iopt[K.I_CURVED] == (1 if cfg.c_parity else 2), name
        curved.add((int(iopt[K.I_CURVED]), iopt[K.I_THICKSTEPS] > 1))
        if iopt[K.I_THICKSTEPS] > 1 and iopt[K.I_OS_OMEGA]:
            deep_omega.add(int(iopt[K.I_CURVED]))
    assert {(1, True), (2, True), (2, False)} <= curved, curved
    assert deep_omega == {1, 2}, deep_omega


def _corr(a, b):
    a = a.astype(np.float64).ravel()
    b = b.astype(np.float64).ravel()
    a = a - a.mean()
    b = b - b.mean()
    den = np.sqrt(np.dot(a, a) * np.dot(b, b))
    return 1.0 if den == 0 else float(np.dot(a, b) / den)


@pytest.mark.parametrize("name", CASE_IDS)
def test_host_kernel_matches_numba(name, host, tmp_path):
    cfg = _cfg_for(name, tmp_path)
    m_ref = build_model(cfg)
    ref, ref_omega = api.render_float(m_ref, np.float64)
    ref = np.asarray(ref)
    mx = float(np.abs(ref).max())

    # float64: the same operations -> the same image, bit for bit, except
    # where the numba kernel takes a fast-math section (gpu.numba_fast_math):
    # then at most gpu.FAST_MAX_ULP float32 ulps per pixel.  -c_parity float64
    # takes none: always bit for bit.
    m64 = build_model(cfg)
    img64, omega64 = host.render(m64, np.float64)
    io64 = gpu.kernel_args(m64, np.float64)[0]
    if cfg.c_parity:
        assert not gpu.numba_fast_math(io64)
    par = gpu.numba_parity(ref, img64, io64, np.float64)
    diff = float(np.abs(img64.astype(np.float64) - ref).max())
    assert par["ok"], "%s: float64 max diff %.3g of max %.3g, %s" % (name, diff, mx, par)
    # the CPU returns per-row solid-angle sums, the CUDA kernel per-pixel values
    assert float(omega64.sum()) == pytest.approx(float(ref_omega.sum()), rel=1e-12)
    # -c_parity bookkeeping found the same pixels
    assert m64.first_exec_pixel == m_ref.first_exec_pixel
    assert tuple(m64.latch) == tuple(m_ref.latch)

    # per-pixel values before the float32 store, against the numba pixel body
    args = m64.kernel_args(np.float64)
    kargs = gpu.kernel_args(m64, np.float64)
    act = np.flatnonzero(m64.active.ravel())
    io = kargs[0]
    # the numba trace path against the host render path: bit for bit unless the
    # numba kernel takes a fast-math section or the lean sum (which the host
    # render takes in C order per source, and the trace never takes)
    fast = gpu.numba_fast_math(io)
    rel = gpu.fast_pixel_rel(io)
    if len(act):
        order = np.argsort(ref.ravel()[act])
        pick = np.unique(np.concatenate([act[order[-6:]], act[:: max(1, len(act) // 6)]]))
        for p in pick:
            s, f = divmod(int(p), ref.shape[1])
            want = K.trace_pixel(s, f, False, -1, *args, 64)[0]
            got = host.pixel(m64, np.float64, s, f, args=kargs)[0]
            if fast:
                assert abs(got - want) <= rel * abs(want), (name, s, f, got, want)
            else:
                assert got == want, (name, s, f, got, want)

    # float32 kernel = the numba engine's -precision single: bit for bit, or
    # within gpu.FAST_MAX_ULP["float32"] where the numba kernel's float32 sines
    # (square crystal, any mode) or its lean sum are compiled with fast-math
    m32 = build_model(cfg)
    img32, _ = host.render(m32, np.float32)
    assert np.all(np.isfinite(img32))
    m_single = build_model(replace(cfg, precision="single"))
    ref32, _ = api.render_float(m_single)
    par = gpu.numba_parity(np.asarray(ref32), img32, gpu.kernel_args(m32, np.float32)[0], np.float32)
    assert par["ok"], "%s: float32 kernel differs from -precision single: %s" % (name, par)
    # ... and within the float32 tolerances of the float64 image
    c = _corr(img32, ref)
    assert c >= F32_CORR_MIN, "%s: float32 correlation %.8f" % (name, c)
    sel = ref > F32_FLOOR * mx
    if sel.any():
        rel = np.abs(img32[sel].astype(np.float64) - ref[sel]) / ref[sel]
        assert rel.max() <= F32_REL_MAX, "%s: float32 max rel error %.3g" % (name, rel.max())


#: runs whose image splits exactly into per-source images: polarization off
#: or per sub-path (-oversample_polar), no -dmin (a pixel with every sub-path
#: of one source cut has no water in that source's own run).  The lean sum
#: with water per sub-path; per-source water; sensor layers (the corrected
#: lean sum); interpolation (term by term)
WEIGHT_SPLIT = {
    "lean": "-default_F 100 -N 5 -nopolar -water 0.5 -mosaic 0.3 -mosaic_dom 2",
    "os_polar_water": "-default_F 100 -N 5 -oversample 2 -oversample_polar -water 0.5 -polar 0.9",
    "layers": "-default_F 100 -N 5 -nopolar -detector_thick 100 -detector_thicksteps 2"
              " -detector_abs 200 -water 0.5",
    "interpolate": "-hkl gen.hkl -interpolate -N 3 -nopolar",
}


@pytest.mark.parametrize("variant", sorted(WEIGHT_SPLIT))
def test_host_weighted_sources_are_weighted_single_sources(variant, host, tmp_path):
    """The CUDA kernel's weights alone (its host build, no numba image): the
    image of SOURCES3 is the mean over its sources s of w_s times the image
    of the same run with source s alone (w_s its relative intensity over
    their mean; the same -fluence, the water background the same in every
    run), per pixel in float64 to 1e-12, and not the unweighted mean."""
    _write_hkl(tmp_path / "gen.hkl")
    lines = SOURCES3.splitlines()
    (tmp_path / "src3.txt").write_text(SOURCES3)
    for i, line in enumerate(lines):
        (tmp_path / ("src_%d.txt" % i)).write_text(line + "\n")
    flags = _BASE + " -detpixels 24 -pixel 0.4 -fluence 1e29 " + WEIGHT_SPLIT[variant]

    def values(srcfile, weighted):
        old = os.getcwd()
        os.chdir(tmp_path)
        try:
            cfg = parse_argv((flags + " -sourcefile " + srcfile).split())
        finally:
            os.chdir(old)
        m = build_model(replace(cfg, workdir=str(tmp_path)))
        kargs = gpu.kernel_args(m, np.float64)
        assert kargs[0][K.I_WEIGHTED] == int(weighted)
        S, F = m.shape
        out = np.zeros((S, F))
        for s in range(S):
            for f in range(F):
                out[s, f] = host.pixel(m, np.float64, s, f, args=kargs)[0]
        return out

    both = values("src3.txt", True)
    single = np.array([values("src_%d.txt" % i, False) for i in range(len(lines))])
    w = np.asarray(SOURCES3_WEIGHTS)
    want = np.tensordot(w / w.mean(), single, axes=1) / len(w)
    assert np.all(want > 0.0)
    assert np.all(np.abs(both - want) <= 1e-12 * want), float((np.abs(both - want) / want).max())
    # the weights matter here: the unweighted mean is off by a tenth or more of
    # the image's variation (the measured 0.10-0.98; the background varies too)
    plain = single.mean(axis=0)
    assert float(np.abs(both - plain).max()) > 0.02 * float(np.ptp(plain))


# --------------------------------------------------------------------------- trace on the device
def _golden_trace_cases():
    import json
    out = {}
    for c in GOLDEN:
        meta = Path(__file__).resolve().parents[1] / "golden" / "data" / c.name / "meta.json"
        try:
            tp = json.loads(meta.read_text()).get("trace_pixel")
        except OSError:
            continue
        if tp:
            out[c.name] = (int(tp[0]), int(tp[1]))
    return out


TRACE_CASES = _golden_trace_cases()
#: extra cases traced at their brightest pixel (paths the golden traces lack)
TRACE_EXTRA = ["x_corrected_all_oversample", "x_interp_latch_mid_cparity", "x_tophat_phi",
               "x_round_water_cparity", "x_div_disp_kahn_roi", "x_curved_os_omega",
               "x_curved_sensor", "x_curved_sensor_cparity",
               "x_sources_weighted_os_polar_water"]


def test_trace_constants_match_cpu():
    src = gpu.source_text()
    defs = dict((m.group(1), int(m.group(2)))
                for m in re.finditer(r"^#define\s+(EV_[A-Z0-9]+|NB_TRACE_COLS)\s+(\d+)\s*$", src, re.M))
    names = [n for n in dir(K) if re.match(r"^EV_[A-Z0-9]+$", n)]
    assert len(names) >= 6
    for n in names:     # every event cpu.py records must exist in the CUDA trace
        assert defs.get(n) == getattr(K, n), "%s: nanobragg.cu %s, cpu.py %s" % (n, defs.get(n), getattr(K, n))
    assert defs["NB_TRACE_COLS"] == K.TRACE_COLS


def _trace_point(model, s, f):
    """(first_exec, latch_sub) of pixel (s, f) as trace.trace_lines derives them."""
    p = s * model.shape[1] + f
    if not model.cfg.c_parity:
        return False, -1
    first = model.first_exec_pixel
    lp, ls = model.latch
    return p == first, (-1 if lp < 0 or p < lp else (ls if p == lp else -2))


#: trace columns (1-based, after the event code) that hold a lattice factor
#: or a value summed from them: fa, fb, fc, F_latt; fb, F_latt; F_latt; I, test
_FAST_TRACE_COLUMNS = {K.EV_LATT: [1, 2, 3, 4], K.EV_PHI: [4, 5], K.EV_SOURCE2: [2],
                       K.EV_FINAL: [1, 10]}


@pytest.mark.parametrize("name", sorted(TRACE_CASES) + TRACE_EXTRA)
def test_device_trace_matches_numba_trace(name, host, tmp_path):
    """The CUDA kernel's trace build (host C++) records the numba trace's
    events with the same values, bit for bit, in float64 and float32."""
    cfg = _cfg_for(name, tmp_path)
    for precision, dt in (("double", np.float64), ("single", np.float32)):
        model = build_model(replace(cfg, precision=precision))
        img, _ = api.render_float(model)          # -c_parity: sets first pixel and latch
        if name in TRACE_CASES:
            s, f = TRACE_CASES[name]
        else:
            s, f = (int(v) for v in np.unravel_index(int(np.argmax(np.asarray(img))), img.shape))
        first_exec, latch_sub = _trace_point(model, s, f)
        want_val, want_rows, want_n = K.trace_pixel(s, f, first_exec, latch_sub,
                                                    *model.cpu_kernel_args(), 5000)
        got_val, got_rows, got_n = host.trace(model, dt, s, f, first_exec, latch_sub, 5000)
        assert got_n == want_n and got_n > 3, (name, precision, got_n, want_n)
        want_rows = want_rows[:want_n]
        kinds = set(int(e) for e in want_rows[:, 0])
        assert {K.EV_GEOM, K.EV_FINAL} <= kinds
        io = gpu.kernel_args(model, dt)[0]
        if not gpu.numba_fast_math(io, trace=True):
            assert np.array_equal(got_rows, want_rows, equal_nan=True), (name, precision)
            assert got_val == want_val
            assert np.float32(got_val) == np.asarray(img)[s, f]      # the traced pixel is the image's
            continue
        # the numba trace's lattice factors come from its fast-math lattice
        # loop: those columns (and the sums built from them) within the bound
        # of gpu.FAST_REL, every other value bit for bit
        rel = gpu.FAST_REL[np.dtype(dt).name]["term"]
        assert np.array_equal(got_rows[:, 0], want_rows[:, 0])
        loose = np.zeros(want_rows.shape, dtype=bool)
        for ev, cols in _FAST_TRACE_COLUMNS.items():
            loose[np.ix_(want_rows[:, 0] == ev, cols)] = True
        assert np.array_equal(got_rows[~loose], want_rows[~loose], equal_nan=True), (name, precision)
        d = np.abs(got_rows[loose] - want_rows[loose])
        assert np.all(d <= rel * np.abs(want_rows[loose])), (name, precision, float(d.max()))
        assert abs(got_val - want_val) <= rel * abs(want_val), (name, precision, got_val, want_val)
        par = gpu.numba_parity(np.asarray(img)[s, f], np.float32(got_val), io, dt)
        assert par["ok"], (name, precision, par)                    # the traced pixel is the image's


@pytest.mark.parametrize("name", ["phi_zero_carryover", "x_interp_latch_mid_cparity"])
def test_trace_pixel_device_cuda_runs_the_cuda_kernel(name, host, tmp_path, monkeypatch):
    """-trace_pixel with -device cuda: a one-thread launch of the CUDA trace
    kernel (fake CuPy over the host build), and the same TRACE_PY lines."""
    from nbnumba.trace import trace_lines
    if name not in CASE_IDS:
        pytest.skip("golden corpus not available")
    calls = []
    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy(host, calls))
    monkeypatch.setattr(gpu, "_MODULES", {})
    cfg = _cfg_for(name, tmp_path)
    s, f = TRACE_CASES.get(name, (40, 30))   # inside the -roi of the extra case
    cpu_model = build_model(cfg)
    api.render_float(cpu_model)
    want = trace_lines(cpu_model, s, f)
    dev_model = build_model(replace(cfg, device="cuda"))
    api.render_float(dev_model, backend="cuda")
    got = trace_lines(dev_model, s, f)
    assert any(c[0] == "trace_f64" and c[1:3] == (s, f) for c in calls)
    assert got == want and len(got) > 20


# --------------------------------------------------------------------------- errors without CuPy/GPU
def test_cuda_without_cupy_is_a_config_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)     # import cupy -> ImportError
    assert gpu.available() is False
    with pytest.raises(ConfigError) as ei:
        gpu.require_device()
    assert str(ei.value) == "-device cuda: CuPy is not installed (pip install nbnumba[gpu])"
    argv = (_BASE + " -default_F 100 -N 3 -detpixels 8 -device cuda").split()
    with pytest.raises(ConfigError) as ei:
        nbnumba.simulate_argv(argv)
    assert "CuPy is not installed" in str(ei.value)


def test_cuda_without_device_is_a_config_error(monkeypatch):
    def no_device():
        raise RuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected")

    fake = types.ModuleType("cupy")
    fake.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=no_device))
    monkeypatch.setitem(sys.modules, "cupy", fake)
    assert gpu.available() is False
    with pytest.raises(ConfigError) as ei:
        gpu.require_device()
    assert str(ei.value) == "-device cuda: no CUDA device found"
    fake.cuda.runtime.getDeviceCount = lambda: 0
    with pytest.raises(ConfigError, match="no CUDA device found"):
        gpu.require_device()


def _fake_cupy(host, calls, **kw):
    """nbnumba.testing.fake_cupy whose launches are checked against the parsed
    kernel signature and recorded in ``calls``."""
    fake = make_fake_cupy(host, check_args=check_launch_args, **kw)
    fake.calls = calls
    return fake


@pytest.mark.parametrize("name", ["x_interp_latch_mid_cparity", "x_dmin_first_pixel_cparity",
                                  "x_mosaic_phi", "x_corrected_all_oversample",
                                  "x_interp_fallback_default"])
def test_gpu_render_through_fake_cupy(name, host, tmp_path, monkeypatch):
    """gpu.render's uploads, argument types (against the parsed signature),
    row-chunked launches and -c_parity passes, with the launches served by
    the host build."""
    calls = []
    fake = _fake_cupy(host, calls)
    monkeypatch.setitem(sys.modules, "cupy", fake)
    monkeypatch.setattr(gpu, "_MODULES", {})
    cfg = _cfg_for(name, tmp_path)
    m_ref = build_model(cfg)
    ref, ref_omega = api.render_float(m_ref, np.float64)
    S, F = ref.shape
    # small launches: 5 rows each (the budget is expressed in sub-paths)
    per_pixel = gpu.subpaths_per_pixel(gpu.kernel_args(m_ref, np.float64)[0])
    monkeypatch.setenv("NB_CUDA_SUBPATHS_PER_LAUNCH", str(5 * F * per_pixel))
    bands = gpu.launch_rows(S, F, per_pixel)
    assert len(bands) == -(-S // 5)
    m_single = build_model(replace(cfg, precision="single"))
    ref32, _ = api.render_float(m_single)
    for dt in (np.float64, np.float32):
        m = build_model(cfg)
        img, omega = gpu.render(m, dt)
        assert img.dtype == np.float32 and img.shape == ref.shape
        # solid-angle sums come back per row, reduced on the device
        assert omega.shape == (S,) and omega.dtype == np.float64
        assert float(omega.sum()) == pytest.approx(float(ref_omega.sum()), rel=1e-12)
        par = gpu.numba_parity(ref if dt is np.float64 else np.asarray(ref32), img,
                               gpu.kernel_args(m, dt)[0], dt)
        assert par["ok"], (name, dt, par)
        assert m.first_exec_pixel == m_ref.first_exec_pixel
        assert tuple(m.latch) == tuple(m_ref.latch)
        # the default mode's count of pixels whose lookups fell back (run's note)
        assert m.interp_fallback == m_ref.interp_fallback
    assert (m_ref.interp_fallback > 0) == (name == "x_interp_fallback_default")
    # one pass, plus one per -c_parity correction; each pass = one launch per band
    passes = 1 + int(m_ref.first_exec_pixel not in (-1, int(np.flatnonzero(m_ref.active)[0])))
    passes += int(tuple(m_ref.latch) != (-1, -1))
    assert len(calls) == 2 * passes * len(bands)
    for i in range(2 * passes):
        assert [c[4:6] for c in calls[i * len(bands):(i + 1) * len(bands)]] == bands
    if m_ref.latch != (-1, -1):
        assert calls[passes * len(bands) - 1][2:4] == tuple(m_ref.latch)
    # no torch out=: CuPy's current stream, no external stream made
    assert fake.streams_made == [] and all(c[6] == 0 for c in calls)


def test_gpu_torch_out_runs_on_torch_stream(host, tmp_path, monkeypatch):
    """A torch out= tensor: every launch runs on torch's current stream
    (cupy.cuda.ExternalStream around the whole render), and the tensor
    receives the image in place."""
    torch = pytest.importorskip("torch")
    calls = []
    fake = _fake_cupy(host, calls)
    monkeypatch.setitem(sys.modules, "cupy", fake)
    monkeypatch.setattr(gpu, "_MODULES", {})
    asked = []

    def current_stream(device=None):
        asked.append(device)
        return types.SimpleNamespace(cuda_stream=0xBEEF)

    monkeypatch.setattr(torch.cuda, "current_stream", current_stream)
    cfg = _cfg_for("x_mosaic_phi_cparity", tmp_path)
    ref, _ = api.render_float(build_model(cfg), np.float64)
    out = torch.full(ref.shape, 7.0, dtype=torch.float32)   # a CPU tensor stands in for CUDA memory
    img, _ = gpu.render(build_model(cfg), np.float64, out=out)
    assert fake.streams_made == [0xBEEF] and asked == [out.device]
    assert calls and all(c[6] == 0xBEEF for c in calls)
    assert fake.current_stream == [0]                       # the stream context was left
    assert np.array_equal(out.numpy(), ref)                 # filled in place
    assert img.__array_interface__["data"][0] == out.data_ptr()
    # torch on its legacy default stream (pointer 0): CuPy's null stream, no wrapper
    n = len(calls)
    monkeypatch.setattr(torch.cuda, "current_stream",
                        lambda device=None: types.SimpleNamespace(cuda_stream=0))
    gpu.render(build_model(cfg), np.float64, out=out)
    assert fake.streams_made == [0xBEEF] and len(calls) > n
    assert all(c[6] == 0 for c in calls[n:])
    assert np.array_equal(out.numpy(), ref)


def test_gpu_result_stays_on_device_until_asked(host, tmp_path, monkeypatch):
    """-device cuda: simulate() copies nothing to the host; the first use of a
    host product (stats, SMV/PGM/noise images, the writers) copies the image
    once, and the products equal the CPU run's."""
    calls = []
    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy(host, calls))
    monkeypatch.setattr(gpu, "_MODULES", {})
    copies = []
    real_to_host = api.to_host

    def counting_to_host(a):
        copies.append(getattr(a, "shape", None))
        return real_to_host(a)

    monkeypatch.setattr(api, "to_host", counting_to_host)
    argv = (_BASE + " -default_F 100 -N 5 -detpixels 48 -pixel 0.4 -seed 3 -device cuda").split()
    argv.remove("-nonoise")
    argv.remove("-nopgm")
    res = nbnumba.simulate_argv(argv, cwd=tmp_path)
    assert calls and copies == []                    # rendered, nothing copied yet
    image = res.float_image
    stats = res.stats                                # first use: one copy of image (+ omega rows)
    assert copies == [(48, 48), (48,)]
    assert res.int_image is not None and res.noise_image is not None and res.pgm_image is not None
    assert copies == [(48, 48), (48,)] and res.float_image is image
    cpu = nbnumba.simulate_argv(argv[:-2], cwd=tmp_path)
    assert cpu.float_image is not None and np.array_equal(np.asarray(image), cpu.float_image)
    assert stats == cpu.stats
    assert np.array_equal(res.int_image, cpu.int_image)
    assert np.array_equal(res.noise_image, cpu.noise_image)
    assert np.array_equal(res.pgm_image, cpu.pgm_image)
    # a writer triggers it too
    res2 = nbnumba.simulate_argv(argv, cwd=tmp_path)
    n = len(copies)
    written = nbnumba.write_outputs(res2)
    assert len(copies) > n and written


def test_block_size_follows_the_kernel_limit(host, tmp_path, monkeypatch):
    """A kernel that allows fewer threads per block than BLOCK (registers) is
    launched with a smaller block (a multiple of 32), and still covers every pixel."""
    assert gpu.block_size(object()) == gpu.BLOCK
    assert gpu.block_size(types.SimpleNamespace(max_threads_per_block=1024)) == gpu.BLOCK
    assert gpu.block_size(types.SimpleNamespace(max_threads_per_block=200)) == 192
    calls = []
    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy(host, calls, max_threads_per_block=200))
    monkeypatch.setattr(gpu, "_MODULES", {})
    cfg = _cfg_for("x_tophat_phi", tmp_path)
    ref, _ = api.render_float(build_model(cfg), np.float64)
    timing = {}
    img, _ = gpu.render(build_model(cfg), np.float64, timing=timing)
    assert np.array_equal(img, ref)
    assert timing["block"] == 192 and timing["launches"] == len(calls) >= 1
    assert timing["kernel_ms"] >= 0.0


# --------------------------------------------------------------------------- 3. on a GPU
GPU_CASES = [n for n in ("mosflm_xbeam_misset", "pilatus_scaled", "mosaic_domains_seed",
                         "oversample_thick", "detector_absorption", "curved_detector",
                         "point_pixel", "round_xtal_fudge", "gauss_xtal", "binary_spots",
                         "dispersion_energy", "hkl_interpolate_out_of_range", "dmin_cutoff",
                         "mask", "water_background") if n in CASE_IDS] + sorted(EXTRA_CASES)

needs_gpu = pytest.mark.skipif(not gpu.available(), reason="no CUDA device / CuPy")


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("name", GPU_CASES)
def test_gpu_matches_numba(name, tmp_path):
    import cupy as cp
    cfg = _cfg_for(name, tmp_path)
    m_ref = build_model(cfg)
    ref, _ = api.render_float(m_ref, np.float64)
    mx = float(np.abs(ref).max())
    from nbnumba.tools.compare import parity_contract
    m64 = build_model(cfg)
    img, omega = gpu.render(m64, np.float64)
    assert isinstance(img, cp.ndarray) and img.dtype == cp.float32 and img.shape == ref.shape
    got = cp.asnumpy(img)
    # the GPU parity contract (docs/gpu.md): CUDA's libm differs from glibc by
    # an ulp or so; pixels beyond 1e-6 relative are "flipped" decisions at
    # measure-zero boundaries, which these small images should not contain
    k = parity_contract(ref, got)
    assert k["flipped"] <= FLIP_BUDGET * ref.size, (name, k)
    assert m64.first_exec_pixel == m_ref.first_exec_pixel
    assert tuple(m64.latch) == tuple(m_ref.latch)
    m32 = build_model(cfg)
    img32, _ = gpu.render(m32, np.float32)
    g32 = cp.asnumpy(img32)
    ref32, _ = api.render_float(build_model(replace(cfg, precision="single")))
    k32 = parity_contract(np.asarray(ref32), g32)    # the same arithmetic as -precision single
    assert k32["flipped"] <= FLIP_BUDGET * ref.size, (name, k32)
    assert _corr(g32, ref) >= F32_CORR_MIN
    sel = ref > F32_FLOOR * mx
    if sel.any():
        assert (np.abs(g32[sel] - ref[sel]) / ref[sel]).max() <= F32_REL_MAX


@pytest.mark.gpu
@needs_gpu
def test_gpu_result_stays_on_device():
    import cupy as cp
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch without CUDA")
    argv = (_BASE + " -default_F 100 -N 5 -detpixels 64 -pixel 0.4 -device cuda").split()
    res = nbnumba.simulate_argv(argv)
    assert isinstance(res.float_image, cp.ndarray)
    t = res.to_torch()
    assert t.device.type == "cuda"
    assert t.data_ptr() == res.float_image.data.ptr
    t[0, 0] = 12345.0
    assert float(res.float_image[0, 0]) == 12345.0


@pytest.mark.gpu
@needs_gpu
def test_gpu_cupy_torch_roundtrip_and_out():
    import cupy as cp
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch without CUDA")
    a = cp.arange(12, dtype=cp.float32).reshape(3, 4)
    t = torch.from_dlpack(a)
    b = cp.from_dlpack(t)
    assert t.data_ptr() == a.data.ptr == b.data.ptr
    t[1, 1] = -1.0
    assert float(a[1, 1]) == -1.0 and float(b[1, 1]) == -1.0
    # a preallocated torch output receives the image in place
    cfg = parse_argv((_BASE + " -default_F 100 -N 5 -detpixels 32 -pixel 0.5").split())
    model = build_model(cfg)
    out = torch.empty(model.shape, dtype=torch.float32, device="cuda")
    img, _ = gpu.render(model, np.float64, out=out)
    assert img.data.ptr == out.data_ptr()
    ref, _ = api.render_float(build_model(cfg), np.float64)
    assert np.allclose(out.cpu().numpy(), ref, rtol=2.0 ** -22, atol=0)


@pytest.mark.parametrize("name", ["x_interp_latch_mid_cparity", "x_gauss_mosaic"])
def test_gpu_test_bodies_through_fake_cupy(name, host, tmp_path, monkeypatch):
    """The device tests above have never run on a GPU: run the body of
    test_gpu_matches_numba against the fake CuPy so that at least their own
    code (imports, array handling, the contract check) is exercised in CI."""
    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy(host, []))
    monkeypatch.setattr(gpu, "_MODULES", {})
    body = test_gpu_matches_numba.__wrapped__ if hasattr(test_gpu_matches_numba, "__wrapped__") \
        else test_gpu_matches_numba
    body(name, tmp_path)
