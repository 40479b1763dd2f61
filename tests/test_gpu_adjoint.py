"""The CUDA adjoint kernel (``adjoint_f64`` in nbnumba/kernels/nanobragg.cu),
checked without a GPU through its host C++ build, against the numba adjoint
(``nbnumba.kernels.adjoint.backward``) that tests/test_autodiff.py checks
against finite differences.

Bound: every output of the host build is within REL = 1e-9 of the numba
adjoint's, relative to the output's scale: for the gradient vector gpar, per
component, the sum over pixels of |the pixel's contribution| (the numba
kernel's per-row sums), so that a component whose pixel terms cancel is not
judged against its small net value; for the per-cell sums cacc, the F-grid
gradient and the pixel values, the array's largest magnitude.  Both kernels
evaluate the same physics.py formulas in float64 at the same branch points;
what differs is the order of the sums (the CUDA kernel runs cells outermost
to add each pixel's per-cell sums once, numba runs sub-paths outermost, and
its square-crystal path is compiled with reassociation), and CUDA's or
glibc's sin/cos against numba's; the numba adjoint is also compiled with
reassoc/contract, so its h = a_j . S may be one FMA rounding off ours.  Most
outputs then agree to 1e-14..1e-12 (measured).  The largest differences
are ill-conditioned quantities: d/dN of the lattice factor is ~ pi h / (pi d)
with d = h - rint(h), so an ulp of h moves it by |h| ulp / |d| (measured
1.5e-10 on dI/dNc), and the unreduced sincg's sin(N pi h) takes an argument
whose last bits depend on the association (values 6e-12).  1e-9 fails on any
formula or indexing error (those are O(1)).  A GPU run
(benchmarks/gpu_check.py) adds atomicAdd's run-to-run order, which moves
cacc and gF at the rounding level.
"""
from __future__ import annotations

import re
import sys
import types

import numpy as np
import pytest

from nbnumba import autodiff as AD
from nbnumba.errors import ConfigError
from nbnumba.kernels import adjoint as A
from nbnumba.physics import SINCG_NEAR
from nbnumba.kernels import gpu
from nbnumba.testing.fake_cupy import make_fake_cupy
from test_gpu_source import (SIGNATURES, SOURCES3, SOURCES3_WEIGHTS, _write_hkl,
                             check_launch_args, kernel_signatures)

REL = 1e-9

ADJ_SIGNATURES = kernel_signatures(gpu.source_text(), "NB_DEFINE_ADJOINT")

BASE = ("-cell 70 80 90 85 95 105 -misset 10 20 30 -lambda 1.5 -distance 100 -nonoise -nopgm "
        "-noprogress -detpixels 12 -pixel 0.4 -fluence 1e24")
#: (extra flags, keyword values for autodiff._Run); <= 16 x 16 pixels each
CASES = {
    "mosaic_phi": ("-default_F 100 -N 6 -mosaic 0.6 -mosaic_dom 3 -mosaic_seed 11 -phi 0"
                   " -osc 1.5 -phisteps 2", {}),
    "sources_dispersion_kahn": ("-default_F 100 -N 5 -hdivrange 0.4 -vdivrange 0.3 -hdivsteps 2"
                                " -vdivsteps 2 -dispersion 1 -dispsteps 3 -polar 0.5", {}),
    "oversample2": ("-default_F 100 -N 5 -oversample 2", {}),
    # N between integers: nanoBragg's unreduced sin(N pi h)/sin(pi h)
    "unreduced_sincg": ("-default_F 100 -N 5", {"N": np.array([5.3, 4.6, 5.0])}),
    # a 1.5 m wavelength: every h, k, l ~ 1e-10, where the unreduced d/dh is
    # a series (physics.sincg_near_dh); its closed form left the two kernels'
    # gradients 1e-4 apart (tools/fuzz.py device)
    "unreduced_sincg_origin": ("-default_F 100 -N 5 -lambda 1.5e10",
                               {"N": np.array([5.3, 4.6, 3.7])}),
    "round": ("-default_F 100 -N 5 -round_xtal", {}),
    "gauss_mosaic": ("-default_F 100 -N 8 -gauss_xtal -mosaic 0.4 -mosaic_dom 2", {}),
    "tophat_phi": ("-default_F 100 -N 8 -tophat_spots -phi 0 -osc 1 -phisteps 2", {}),
    "hkl_nearest": ("-hkl gen.hkl -nointerpolate -N 6 -phi 0 -osc 1 -phisteps 2", {}),
    "hkl_interpolate": ("-hkl gen.hkl -interpolate -N 3 -mosaic 0.3 -mosaic_dom 2", {}),
    # (60 A: BASE's corner pixels, at 48 A, are cut whole, others in part)
    "dmin": ("-default_F 100 -N 5 -dmin 60 -phi 0 -osc 1 -phisteps 2", {}),
    "nopolar_point_pixel": ("-default_F 100 -N 5 -nopolar -point_pixel -water 50", {}),
    "roi": ("-default_F 100 -N 5 -roi 2 9 3 10 -detpixels 16", {}),
    # the beam direction's per-source blocks: divergence and dispersion about a
    # tilted beam, the Kahn factor's slope in the incident vector
    "beam_divergence": ("-default_F 100 -N 5 -beam_vector 1 0 0 -polar 0.6 -hdivrange 0.3 "
                        "-hdivsteps 2 -dispersion 0.1 -dispsteps 2",
                        {"beam_vector": np.array([0.98, 0.05, -0.03])}),
    # the divergence ranges' and the dispersion's per-source blocks (incident
    # vectors; log wavelengths), the vertical range's entry not needed: the
    # host pads its block with zeros (incident_blocks(dense=True))
    "sweeps": ("-default_F 100 -N 5 -polar 0.6 -hdivrange 0.3 -vdivrange 0.2 -hdivsteps 3 "
               "-vdivsteps 2 -dispersion 1 -dispsteps 3",
               {"hdivrange": np.array([0.3]), "dispersion": np.array([1.0])}),
    # sensor layers (the corrected sum: each layer weighed by its first
    # sub-pixel's capture) with water, sub-pixels, mosaic and a tilted detector
    "sensor_layers": ("-default_F 100 -N 5 -detector_thick 300 -detector_thicksteps 3 "
                      "-detector_abs 200 -oversample 2 -water 40 -mosaic 0.4 -mosaic_dom 2 "
                      "-detector_rotx 4 -detector_roty -3 -twotheta 5", {}),
    # one layer: the capture is a per-pixel factor, as polarization and solid angle
    # (the flags' default for a sensor is 2 layers)
    "sensor_one_layer": ("-default_F 100 -N 5 -detector_thick 100 -detector_thicksteps 1 "
                         "-detector_abs 150 -water 20", {}),
    # every switch: each sub-path weighed by its own capture, polarization
    # (its source's incident vector: the horizontal range's block) and solid angle
    "switches": ("-default_F 100 -N 5 -detector_thick 200 -detector_thicksteps 2 -oversample 2 "
                 "-oversample_thick -oversample_polar -oversample_omega -water 30 -polar 0.6 "
                 "-hdivrange 0.3 -hdivsteps 2", {"hdivrange": np.array([0.3])}),
    # -oversample_polar with -dmin cutting sub-paths (and whole pixels: 0), the
    # water still filling the cut ones; interpolated structure factors
    "polar_dmin": ("-hkl gen.hkl -interpolate -N 3 -oversample 2 -oversample_polar -dmin 60 "
                   "-water 50 -detector_thick 100 -detector_thicksteps 2 -phi 0 -osc 1 "
                   "-phisteps 2", {}),
    # a switch without a sensor: the solid angle per sub-pixel
    "omega_only": ("-default_F 100 -N 5 -oversample 3 -oversample_omega -water 20 "
                   "-point_pixel", {}),
    # -curved_det: every position moved onto the default mode's sphere
    # (physics.sphere_position), its derivative mapped back (the sphere's
    # radius, the close distance, and the detector's axes, odet included)
    "curved": ("-default_F 100 -N 5 -curved_det -oversample 2 -polar 0.6 -water 20 "
               "-detector_rotx 3 -twotheta 4", {}),
    # ... with a sensor, the switches and the beam direction's per-source block
    "curved_sensor": ("-default_F 100 -N 5 -curved_det -detector_thick 200 -detector_thicksteps 2 "
                      "-oversample 2 -oversample_polar -oversample_omega -water 30 "
                      "-beam_vector 1 0 0 -hdivrange 0.3 -hdivsteps 2",
                      {"beam_vector": np.array([0.98, 0.05, -0.03])}),
    # -sourcefile weights (test_gpu_source.SOURCES3): every term of a source,
    # and every derivative of it, times the source's factor
    "sources_weighted": ("-default_F 100 -N 5 -sourcefile src3.txt -mosaic 0.3 -mosaic_dom 2 "
                         "-water 0.5 -polar 0.6", {}),
    # ... with -oversample_polar: each source's water share (and its weight's
    # derivative) weighed too, -dmin cutting some sources of a sub-pixel (their
    # wavelengths differ) and not others; sensor layers
    "sources_weighted_os_polar": ("-default_F 100 -N 5 -sourcefile src3.txt -oversample 2 "
                                  "-oversample_polar -water 0.5 -polar 0.6 -dmin 60 "
                                  "-detector_thick 100 -detector_thicksteps 2", {}),
}


def check_args(entry, args):
    """Launch arguments against the signature parsed from nanobragg.cu (the
    render/trace kernels' through test_gpu_source, the adjoint's here)."""
    check_launch_args(entry, args, ADJ_SIGNATURES if entry in ADJ_SIGNATURES else SIGNATURES)


@pytest.fixture(scope="module")
def host(host_build):
    return gpu.HostKernel(host_build[0])


def _run(name, workdir, monkeypatch):
    flags, vals = CASES[name]
    _write_hkl(workdir / "gen.hkl", 6, 6, 6)
    (workdir / "src3.txt").write_text(SOURCES3)
    monkeypatch.chdir(workdir)
    needs = ("F_hkl",) if "-hkl" in flags else ()
    return AD._Run((BASE + " " + flags).split(), dict(vals), needs + tuple(vals), None)


def _numba(run, g, want_F):
    """adjoint.backward's (or backward_sensor's) outputs: (values, gpar rows (S, N_PAR_DEVICE),
    cacc (9, ncell), gF)."""
    # no forward first, on purpose: every jitted helper states its fast-math
    # flags, so compiling them under pixel_grad's reassoc/contract first must not
    # move later numba images off the host build's bits (test_gpu_source; see
    # test_compile_once.test_every_called_kernel_function_sets_fastmath)
    S, F = run.model.shape
    nchunk = max(1, min(S, AD.N_CHUNKS))
    ncell = run.rots.shape[0]
    gpar = np.zeros((S, A.N_PAR))
    gF = np.zeros((nchunk,) + run.model.Fhkl.shape if want_F else (nchunk, 1, 1, 1))
    # every gradient (the CUDA adjoint computes them all)
    want = A.W_N | A.W_GEO | A.W_POL | (A.W_F if want_F else 0)
    cacc = np.zeros((nchunk, 9, ncell))
    val = np.zeros((S, F))
    A.kernels_for(*run.args[:2])[1](run.model.active, run.box, g, *run.args, want, nchunk,
                                    gpar, gF, cacc, val, *run.incident_blocks())
    # the per-cell rotation entries: the adjoint pass leaves them 0 (the host
    # contracts them from cacc), on both sides
    assert not gpar[:, [A.P_MOS, A.P_SPIN, A.P_SPIN + 1, A.P_SPIN + 2]].any()
    return (val, gpar[:, :A.N_PAR_DEVICE], cacc.sum(axis=0),
            (gF.sum(axis=0) if want_F else None))


def _rel(a, b):
    scale = np.abs(b).max()
    return float(np.abs(a - b).max() / (scale if scale > 0 else 1.0))


def _upstream(run):
    rng = np.random.default_rng(7)
    return rng.standard_normal(run.model.shape)


# --------------------------------------------------------------------------- signature
def test_adjoint_signature_parsed():
    assert set(ADJ_SIGNATURES) == {gpu.ADJOINT_ENTRY_POINT}
    sig = ADJ_SIGNATURES[gpu.ADJOINT_ENTRY_POINT]
    assert [p[2] for p in sig] == ["active", "g", "S", "F", "row0", "row1", "mode", "iopt", "fopt",
                                   "vecs", "incident", "lam", "cells", "Fhkl", "gpar", "cacc",
                                   "gF", "val", "dinc", "ninc"]
    assert [p[0] for p in sig if not p[1]] == [np.dtype(np.int64)] * 6
    assert [p[0] for p in sig if p[1]] == ([np.dtype(np.uint8), np.dtype(np.float64),
                                            np.dtype(np.int64)] + [np.dtype(np.float64)] * 11)


def test_adjoint_launch_args_match_signature(tmp_path, monkeypatch):
    run = _run("hkl_interpolate", tmp_path, monkeypatch)
    S, F = run.model.shape
    args = gpu.layout_args(run.args, np.float64)
    active = np.ascontiguousarray(run.model.active, dtype=np.uint8)
    la = gpu.adjoint_launch_args(active, np.zeros((S, F)), S, F, 0, S, gpu.ADJOINT_GRAD_F, args,
                                 np.zeros((S * F, gpu.ADJOINT_N_PAR)), np.zeros((9, 1)),
                                 np.zeros(run.model.Fhkl.shape), np.zeros((S, F)),
                                 *gpu.adjoint_blocks(None))
    check_args(gpu.ADJOINT_ENTRY_POINT, la)
    with pytest.raises(AssertionError):        # a Python int is not the kernel's long long
        check_args(gpu.ADJOINT_ENTRY_POINT, la[:2] + (S,) + la[3:])
    with pytest.raises(AssertionError):        # a float32 F grid is not the kernel's double
        check_args(gpu.ADJOINT_ENTRY_POINT, la[:13] + (la[13].astype(np.float32),) + la[14:])


def test_theta_layout_matches_kernel(host):
    # HostKernel reads N_PAR and P_LAM back from the library (nb_host_layout)
    assert gpu.ADJOINT_N_PAR == A.N_PAR_DEVICE == A.N_PAR == A.P_MU + 1
    assert A.P_SPIN == A.P_BEAM + gpu.ADJOINT_MAX_INC
    src = gpu.source_text()
    assert "#define NB_MAX_INC %d\n" % gpu.ADJOINT_MAX_INC in src
    for name in ("P_A", "P_B", "P_C", "P_PIX0", "P_CLOSE", "P_ASTAR", "P_BSTAR", "P_CSTAR",
                 "P_LAM", "P_NA", "P_NB", "P_NC", "P_FLU", "P_KAHN", "P_MOS", "P_BEAM",
                 "P_DIV", "P_DISP", "P_ODET", "P_TSTEP", "P_MU"):
        assert ("#define %s %d\n" % (name, getattr(A, name))) in src, name
    # nanoBragg.c's -curved_det map is never differentiated (autodiff runs the
    # default mode, its sphere): its entries are gone from both
    for name in ("P_CDIST", "P_CBEAM"):
        assert not hasattr(A, name) and not re.search(r"\b%s\b" % name, src), name
    assert "#define N_PAR %d\n" % A.N_PAR_DEVICE in src
    assert "#define NB_SINCG_NEAR %r\n" % SINCG_NEAR in src


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_nvcc_compiles_adjoint(arch, nvcc_ptx):
    # the adjoint is in the render_f64 module: the build test_gpu_source checks
    # (its sm_80 build runs every time; this one is a long check: under
    # pytest-xdist it compiled the same module again in another worker)
    rc, err, ptx = nvcc_ptx(arch, "float64")
    assert rc == 0, err
    assert "warning" not in err.lower(), err
    assert ".entry %s(" % gpu.ADJOINT_ENTRY_POINT in ptx.replace(" (", "(")
    # double-precision atomics: the F grid and per-cell sums
    assert "atom.global.add.f64" in ptx


# --------------------------------------------------------------------------- host build vs numba
@pytest.mark.parametrize("name", sorted(CASES))
def test_host_adjoint_matches_numba(name, host, tmp_path, monkeypatch):
    run = _run(name, tmp_path, monkeypatch)
    want_F = "F_hkl" in run.needs_grad
    g = _upstream(run)
    ref_val, ref_rows, ref_cacc, ref_gF = _numba(run, g, want_F)
    args = gpu.layout_args(run.args, np.float64)
    dinc = run.incident_blocks(dense=True)[0]
    val, gpar, cacc, gF = host.adjoint(args, run.model.active, g, want_F, dinc=dinc)
    assert np.abs(ref_val).max() > 0.0
    active = (run.model.active != 0)
    assert np.array_equal(val != 0.0, (ref_val != 0.0))
    assert _rel(val, ref_val) <= REL
    # gpar, per component against the sum of the pixels' |contributions|
    ref = ref_rows.sum(axis=0)
    scale = np.abs(ref_rows).sum(axis=0)
    assert np.all(np.abs(gpar - ref) <= REL * scale), (gpar - ref) / np.where(scale, scale, 1)
    assert np.all(gpar[A.P_A:A.P_C + 3] == 0.0)          # the cell goes through cacc
    assert np.abs(ref[A.P_PIX0:A.P_PIX0 + 3]).max() > 0.0 and ref[A.P_FLU] != 0.0
    for key, entries in AD._TURNS_SOURCES.items():     # the per-source entries
        assert (np.abs(ref[list(entries)]).max() > 0.0) == (key in run.needs_grad), key
    # the sensor's entries (the layer thickness, the attenuation coefficient):
    # nonzero with a sensor only; the detector normal's with a sensor (the
    # layers' direction, the parallax) or -curved_det (the sphere touches the
    # detector plane at close odet: physics.sphere_position)
    sensor = "-detector_thick" in CASES[name][0]
    curved = "-curved_det" in CASES[name][0]
    assert (np.abs(ref[A.P_TSTEP:A.P_MU + 1]).min() > 0.0) == sensor
    assert sensor or not ref[A.P_TSTEP:A.P_MU + 1].any()
    assert (np.abs(ref[A.P_ODET:A.P_ODET + 3]).min() > 0.0) == (sensor or curved)
    assert sensor or curved or not ref[A.P_ODET:A.P_ODET + 3].any()
    gauss = "-gauss_xtal" in CASES[name][0]
    assert (np.abs(ref[A.P_ASTAR:A.P_CSTAR + 3]).max() > 0.0) == gauss
    # the top hat is flat in h, k, l (its edge's delta is left out): no cell gradient
    assert (np.abs(ref_cacc).max() > 0.0) == ("-tophat_spots" not in CASES[name][0])
    assert cacc.shape == ref_cacc.shape and _rel(cacc, ref_cacc) <= REL
    if want_F:
        assert gF.shape == ref_gF.shape and np.abs(ref_gF).max() > 0.0
        assert _rel(gF, ref_gF) <= REL
        assert np.array_equal(gF != 0.0, ref_gF != 0.0)   # the same grid points are reached
    else:
        assert gF is None
    # the forward of -device cuda: values only, every active pixel
    v0, gp0, ca0, gf0 = host.adjoint(args, run.model.active)
    assert gp0 is None and ca0 is None and gf0 is None
    assert np.all(v0[~active] == 0.0)
    assert _rel(v0, run.forward()) <= REL


#: runs whose image splits exactly into per-source images (polarization off
#: or per sub-path, no -dmin: see test_gpu_source.WEIGHT_SPLIT), and so does
#: every gradient of a loss linear in it
ADJ_WEIGHT_SPLIT = {
    "lean": "-default_F 100 -N 5 -nopolar -water 0.5 -mosaic 0.3 -mosaic_dom 2 -phi 0 -osc 1 "
            "-phisteps 2",
    "switches": "-default_F 100 -N 5 -oversample 2 -oversample_polar -oversample_omega "
                "-oversample_thick -water 0.5 -polar 0.6 -detector_thick 100 "
                "-detector_thicksteps 2",
    "interpolate": "-hkl gen.hkl -interpolate -N 3 -nopolar -detector_thick 100 "
                   "-detector_thicksteps 2",
}


@pytest.mark.parametrize("variant", sorted(ADJ_WEIGHT_SPLIT))
def test_host_adjoint_weighted_sources_split(variant, host, tmp_path, monkeypatch):
    """The CUDA adjoint's weights alone (its host build, no numba adjoint):
    for SOURCES3, the values, the per-pixel gradient rows, the per-cell sums
    and the F-grid gradient are the mean over the sources s of w_s times
    those of the run with source s alone (w_s its relative intensity over
    their mean), to 1e-11 of each output's scale; the unweighted mean is
    not."""
    _write_hkl(tmp_path / "gen.hkl", 6, 6, 6)
    lines = SOURCES3.splitlines()
    (tmp_path / "src3.txt").write_text(SOURCES3)
    for i, line in enumerate(lines):
        (tmp_path / ("src_%d.txt" % i)).write_text(line + "\n")
    monkeypatch.chdir(tmp_path)
    flags = (BASE + " " + ADJ_WEIGHT_SPLIT[variant]).split()
    needs = ("F_hkl",) if "-hkl" in flags else ()
    g = np.random.default_rng(5).standard_normal((12, 12))

    def outputs(srcfile, weighted):
        run = AD._Run(flags + ["-sourcefile", srcfile], {}, needs, None)
        args = gpu.layout_args(run.args, np.float64)
        assert args[0][gpu.K.I_WEIGHTED] == int(weighted)
        S, F = run.model.shape
        active = np.ascontiguousarray(run.model.active, dtype=np.uint8)
        ncell = int(args[0][gpu.K.I_NPHI]) * int(args[0][gpu.K.I_NMOS])
        rows = np.zeros((S * F, gpu.ADJOINT_N_PAR))
        cacc = np.zeros((9, ncell))
        gF = np.zeros(run.model.Fhkl.shape if needs else (1,))
        val = np.zeros((S, F))
        host.adjoint_arrays(active, g, 0, S, gpu.ADJOINT_GRAD_F if needs else gpu.ADJOINT_GRAD,
                            args, rows, cacc, gF, val)
        return val, rows, cacc, gF

    both = outputs("src3.txt", True)
    single = [outputs("src_%d.txt" % i, False) for i in range(len(lines))]
    w = np.asarray(SOURCES3_WEIGHTS)
    f = w / w.mean()
    for k, name in enumerate(("values", "gradient rows", "per-cell sums", "F gradient")):
        if k == 3 and not needs:
            continue
        want = sum(f[s] * single[s][k] for s in range(len(f))) / len(f)
        plain = sum(single[s][k] for s in range(len(f))) / len(f)
        scale = sum(f[s] * np.abs(single[s][k]) for s in range(len(f))) / len(f)
        if k == 1:      # per theta entry, the sum over pixels of |contributions|
            scale = np.broadcast_to(scale.sum(axis=0), scale.shape)
        else:
            scale = np.full(scale.shape, scale.max())
        assert scale.max() > 0.0, name
        err = np.abs(both[k] - want)
        assert np.all(err <= 1e-11 * scale), (variant, name,
                                              float((err / np.where(scale, scale, 1)).max()))
        # (measured 7e-4 on the values, whose scale the water sets, 0.2-0.6 elsewhere)
        assert float((np.abs(plain - want) / np.where(scale, scale, 1)).max()) > 1e-4, (variant, name)


def test_host_adjoint_skips_zero_upstream(host, tmp_path, monkeypatch):
    run = _run("oversample2", tmp_path, monkeypatch)
    args = gpu.layout_args(run.args, np.float64)
    g = _upstream(run)
    g[:, ::2] = 0.0
    val, gpar, cacc, _ = host.adjoint(args, run.model.active, g)
    assert np.all(val[:, ::2] == 0.0) and np.all(val[:, 1::2] > 0.0)
    ref_val, ref_rows, ref_cacc, _ = _numba(run, g, False)
    assert np.all(np.abs(gpar - ref_rows.sum(axis=0)) <= REL * np.abs(ref_rows).sum(axis=0))
    assert _rel(cacc, ref_cacc) <= REL


def test_host_adjoint_bands(host, tmp_path, monkeypatch):
    """Row bands: the per-band gpar buffers, zeroed between bands, give the
    one-launch result (the host build adds cacc, gF and values in pixel order
    whatever the bands, so those are identical)."""
    run = _run("hkl_nearest", tmp_path, monkeypatch)
    args = gpu.layout_args(run.args, np.float64)
    g = _upstream(run)
    S, F = run.model.shape
    one = host.adjoint(args, run.model.active, g, True, bands=[(0, S)])
    many = host.adjoint(args, run.model.active, g, True, bands=[(0, 5), (5, 7), (7, S)])
    for a, b in zip(one[:1] + one[2:], many[:1] + many[2:]):
        assert np.array_equal(a, b)
    assert np.allclose(one[1], many[1], rtol=1e-14, atol=0.0)


# --------------------------------------------------------------------------- the launch path
def _fake(host, monkeypatch):
    fake = make_fake_cupy(host, check_args=check_args)
    monkeypatch.setitem(sys.modules, "cupy", fake)
    monkeypatch.setattr(gpu, "_MODULES", {})
    return fake


def test_autodiff_device_cuda_through_fake_cupy(host, tmp_path, monkeypatch):
    """simulate(-device cuda): the forward (mode 0) and the backward (mode 2)
    launch adjoint_f64 through CuPy's API (here the fake, served by the host
    build) in row bands, with arguments of the parsed signature's types, and
    give the CPU path's image and gradients."""
    torch = pytest.importorskip("torch")
    fake = _fake(host, monkeypatch)
    _write_hkl(tmp_path / "gen.hkl", 6, 6, 6)
    monkeypatch.chdir(tmp_path)
    # (-spindle_axis and phi steps: the spindle's gradient, from the per-cell sums;
    # -beam_vector, the vertical divergence and the dispersion: the per-source
    # blocks, the horizontal range's padded with zeros)
    argv = (BASE + " -hkl gen.hkl -interpolate -N 4 -mosaic 0.3 -mosaic_dom 2"
            " -phi 0 -osc 1 -phisteps 2 -spindle_axis 0 0 1 -beam_vector 1 0 0"
            " -hdivrange 0.3 -hdivsteps 2 -vdivrange 0.2 -vdivsteps 2 -dispersion 1"
            " -dispsteps 2").split()
    S = 12
    # 3 rows per launch: the budget is counted in sub-paths (ADJOINT_COST each)
    run = AD._Run(argv, {}, (), None)
    per_row = 12 * gpu.ADJOINT_COST * gpu.subpaths_per_pixel(gpu.layout_args(run.args,
                                                                              np.float64)[0])
    monkeypatch.setenv("NB_CUDA_SUBPATHS_PER_LAUNCH", str(3 * per_row))

    def grads(device_flags):
        cell = torch.tensor([70.0, 80.0, 90.0, 85.0, 95.0, 105.0], dtype=torch.float64,
                            requires_grad=True)
        dist = torch.tensor([100.0], dtype=torch.float64, requires_grad=True)
        N = torch.tensor([4.0, 4.0, 4.0], dtype=torch.float64, requires_grad=True)
        # the detector axes (theta) and the per-cell sums (mosaic spread)
        rot = torch.tensor([1.0, -1.0, 0.5], dtype=torch.float64, requires_grad=True)
        mos = torch.tensor([0.3], dtype=torch.float64, requires_grad=True)
        pol = torch.tensor([0.4], dtype=torch.float64, requires_grad=True)
        spin = torch.tensor([0.1, -0.2, 0.97], dtype=torch.float64, requires_grad=True)
        beam = torch.tensor([0.98, 0.05, -0.03], dtype=torch.float64, requires_grad=True)
        vdiv = torch.tensor([0.2], dtype=torch.float64, requires_grad=True)
        disp = torch.tensor([1.0], dtype=torch.float64, requires_grad=True)
        F, _ = AD.structure_factors(argv)
        F.requires_grad_(True)
        img = AD.simulate(argv + device_flags, cell=cell, distance=dist, N=N, F_hkl=F,
                          detector_rot=rot, mosaic_spread=mos, polarization=pol,
                          spindle_axis=spin, beam_vector=beam, vdivrange=vdiv, dispersion=disp)
        w = torch.linspace(-1.0, 2.0, img.numel(), dtype=torch.float64).reshape(img.shape)
        (img * w).sum().backward()
        return img.detach().numpy(), cell.grad.numpy(), dist.grad.numpy(), N.grad.numpy(), \
            F.grad.numpy(), rot.grad.numpy(), mos.grad.numpy(), pol.grad.numpy(), \
            spin.grad.numpy(), beam.grad.numpy(), vdiv.grad.numpy(), disp.grad.numpy()

    ref = grads([])
    assert fake.calls == []
    got = grads(["-device", "cuda"])
    modes = [c[1] for c in fake.calls]
    bands = [(c[4], c[5]) for c in fake.calls]
    assert modes == [gpu.ADJOINT_VALUES] * 4 + [gpu.ADJOINT_GRAD_F] * 4
    assert bands == [(0, 3), (3, 6), (6, 9), (9, 12)] * 2 and S == 12
    assert all(c[0] == gpu.ADJOINT_ENTRY_POINT for c in fake.calls)
    assert _rel(got[0], ref[0]) <= REL
    for a, b in zip(got[1:], ref[1:]):
        assert np.abs(b).max() > 0.0
        assert _rel(a, b) <= REL, (a, b)


def test_autodiff_device_cuda_sensor_through_fake_cupy(host, tmp_path, monkeypatch):
    """Sensor layers, the -oversample_* switches and -curved_det under
    -device cuda: the image and every gradient, the sensor keywords'
    included, are the CPU path's (the numba adjoint's sensor copies, which
    tests/test_autodiff.py holds to finite differences)."""
    torch = pytest.importorskip("torch")
    fake = _fake(host, monkeypatch)
    base = (BASE + " -default_F 100 -N 5 -oversample 2 -water 30 -polar 0.6 -mosaic 0.3"
            " -mosaic_dom 2 -hdivrange 0.3 -hdivsteps 2").split()
    runs = {
        # three layers, each weighed by its capture; -detector_abs given
        "layers": ["-detector_thick", "300", "-detector_thicksteps", "3",
                   "-detector_abs", "200"],
        # every switch; mu = 1/thickness follows the thickness keyword
        "switches": ["-detector_thick", "200", "-detector_thicksteps", "2",
                     "-oversample_thick", "-oversample_polar", "-oversample_omega"],
        # the curved detector, with two layers; -detector_abs given: on the
        # default mode's sphere a layer's depth moves it along its own
        # direction and the parallax is 1, so with mu = 1/thickness (a layer's
        # thickness times mu fixed by the layer count) the image does not
        # depend on the thickness at all (its gradient is rounding noise)
        "curved": ["-curved_det", "-detector_thick", "200", "-detector_thicksteps", "2",
                   "-detector_abs", "200"],
    }

    def grads(argv):
        t = lambda *v: torch.tensor(v, dtype=torch.float64, requires_grad=True)
        kw = dict(cell=t(70.0, 80.0, 90.0, 85.0, 95.0, 105.0), distance=t(100.0),
                  detector_rot=t(1.0, -1.0, 0.5), polarization=t(0.6), mosaic_spread=t(0.3),
                  hdivrange=t(0.3), detector_thick=t(250.0))
        if "-detector_abs" in argv:
            kw["detector_abs"] = t(180.0)
        img = AD.simulate(argv, **kw)
        w = torch.linspace(-1.0, 2.0, img.numel(), dtype=torch.float64).reshape(img.shape)
        (img * w).sum().backward()
        return [img.detach().numpy()] + [v.grad.numpy() for v in kw.values()]

    for name, flags in runs.items():
        ref = grads(base + flags)
        n = len(fake.calls)
        got = grads(base + flags + ["-device", "cuda"])
        assert len(fake.calls) > n, name
        assert _rel(got[0], ref[0]) <= REL, name
        for a, b in zip(got[1:], ref[1:]):
            assert np.abs(b).max() > 0.0, name
            assert _rel(a, b) <= REL, (name, a, b)


def test_autodiff_device_cuda_renders_what_the_cpu_does(host, tmp_path, monkeypatch):
    """The CUDA forward is the adjoint kernel: it models every flag the CPU
    adjoint does (a curved detector, a sensor, the switches), so -device cuda
    gives the CPU's image for each (it used to refuse them)."""
    pytest.importorskip("torch")
    _fake(host, monkeypatch)
    argv = (BASE + " -default_F 100 -N 5").split()
    for flags in ([], ["-curved_det"], ["-detector_thick", "100"], ["-oversample_omega"]):
        ref = AD.simulate(argv + flags).numpy()
        got = AD.simulate(argv + flags + ["-device", "cuda"]).numpy()
        assert ref.max() > 0.0 and _rel(got, ref) <= REL, flags


def test_autodiff_device_cuda_refuses_an_image_of_inf(host, monkeypatch):
    """-device cuda checks the image on the device (cupy.isfinite over the
    -roi box) and refuses an overflowing one with the CPU's message."""
    pytest.importorskip("torch")
    _fake(host, monkeypatch)
    argv = (BASE + " -default_F 100 -N 5 -water 1e308 -device cuda").split()
    with pytest.raises(ConfigError, match=r"the image has 144 non-finite pixels: the water "
                                          r"background .* overflows double precision"):
        AD.simulate(argv)


def test_autodiff_device_cuda_without_gpu(monkeypatch):
    """No CuPy, or no device: the one-line errors of -device cuda."""
    pytest.importorskip("torch")
    argv = (BASE + " -default_F 100 -N 5 -device cuda").split()
    monkeypatch.setitem(sys.modules, "cupy", None)
    with pytest.raises(ConfigError) as ei:
        AD.simulate(argv)
    assert str(ei.value) == gpu.MSG_NO_CUPY
    fake = types.ModuleType("cupy")
    fake.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=lambda: 0))
    monkeypatch.setitem(sys.modules, "cupy", fake)
    with pytest.raises(ConfigError) as ei:
        AD.simulate(argv)
    assert str(ei.value) == gpu.MSG_NO_DEVICE


# --------------------------------------------------------------------------- on a GPU
needs_gpu = pytest.mark.skipif(not gpu.available(), reason="no CUDA device / CuPy")


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("name", sorted(CASES))
def test_gpu_adjoint_matches_numba(name, tmp_path, monkeypatch):
    """The real kernel (NVRTC, CUDA's sin/cos, atomicAdd in any order) against
    the numba adjoint, with the host build's bound."""
    import cupy as cp
    run = _run(name, tmp_path, monkeypatch)
    want_F = "F_hkl" in run.needs_grad
    g = _upstream(run)
    ref_val, ref_rows, ref_cacc, ref_gF = _numba(run, g, want_F)
    args = gpu.layout_args(run.args, np.float64)
    dinc = run.incident_blocks(dense=True)[0]
    val, gpar, cacc, gF = (None if x is None else cp.asnumpy(x)
                           for x in gpu.adjoint(args, run.model.active, cp.asarray(g), want_F,
                                                dinc=dinc))
    assert _rel(val, ref_val) <= REL
    assert np.all(np.abs(gpar - ref_rows.sum(axis=0)) <= REL * np.abs(ref_rows).sum(axis=0))
    assert _rel(cacc, ref_cacc) <= REL
    if want_F:
        assert _rel(gF, ref_gF) <= REL
    v0 = cp.asnumpy(gpu.adjoint(args, run.model.active)[0])
    assert _rel(v0, run.forward()) <= REL


@pytest.mark.gpu
@needs_gpu
def test_gpu_autodiff_device_cuda_matches_cpu(tmp_path, monkeypatch):
    """simulate(-device cuda) with CUDA tensors: image and gradients on the GPU,
    equal to the CPU path's to REL."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA")
    _write_hkl(tmp_path / "gen.hkl", 6, 6, 6)
    monkeypatch.chdir(tmp_path)
    argv = (BASE + " -hkl gen.hkl -interpolate -N 4 -mosaic 0.3 -mosaic_dom 2"
            " -phi 0 -osc 1 -phisteps 2 -spindle_axis 0 0 1 -beam_vector 1 0 0"
            " -hdivrange 0.3 -hdivsteps 2 -vdivrange 0.2 -vdivsteps 2 -dispersion 1"
            " -dispsteps 2").split()
    res = {}
    for dev, flags in (("cpu", []), ("cuda", ["-device", "cuda"])):
        cell = torch.tensor([70.0, 80.0, 90.0, 85.0, 95.0, 105.0], dtype=torch.float64,
                            device=dev, requires_grad=True)
        rot = torch.tensor([1.0, -1.0, 0.5], dtype=torch.float64, device=dev, requires_grad=True)
        mos = torch.tensor([0.3], dtype=torch.float64, device=dev, requires_grad=True)
        pol = torch.tensor([0.4], dtype=torch.float64, device=dev, requires_grad=True)
        spin = torch.tensor([0.1, -0.2, 0.97], dtype=torch.float64, device=dev,
                            requires_grad=True)
        beam = torch.tensor([0.98, 0.05, -0.03], dtype=torch.float64, device=dev,
                            requires_grad=True)
        vdiv = torch.tensor([0.2], dtype=torch.float64, device=dev, requires_grad=True)
        disp = torch.tensor([1.0], dtype=torch.float64, device=dev, requires_grad=True)
        F, _ = AD.structure_factors(argv)
        F = F.to(dev).requires_grad_(True)
        img = AD.simulate(argv + flags, cell=cell, F_hkl=F, detector_rot=rot, mosaic_spread=mos,
                          polarization=pol, spindle_axis=spin, beam_vector=beam,
                          vdivrange=vdiv, dispersion=disp)
        assert img.device.type == dev
        (img * img).sum().backward()
        res[dev] = [t.detach().cpu().numpy()
                    for t in (img, cell.grad, F.grad, rot.grad, mos.grad, pol.grad, spin.grad,
                              beam.grad, vdiv.grad, disp.grad)]
    for a, b in zip(res["cuda"], res["cpu"]):
        assert _rel(a, b) <= REL


def test_autodiff_roi_only_device_cuda_through_fake_cupy(host, tmp_path, monkeypatch):
    """roi_only=True with -device cuda (the fake CuPy, served by the host
    build): the box's image and a weighted sum's gradients are the CPU
    path's."""
    torch = pytest.importorskip("torch")
    _fake(host, monkeypatch)
    argv = (BASE + " -default_F 100 -N 4 -mosaic 0.3 -mosaic_dom 2 -roi 2 9 3 10").split()

    def grads(device_flags):
        cell = torch.tensor([70.0, 80.0, 90.0, 85.0, 95.0, 105.0], dtype=torch.float64,
                            requires_grad=True)
        dist = torch.tensor([100.0], dtype=torch.float64, requires_grad=True)
        img = AD.simulate(argv + device_flags, cell=cell, distance=dist, roi_only=True)
        w = torch.linspace(-1.0, 2.0, img.numel(), dtype=torch.float64).reshape(img.shape)
        (img * w).sum().backward()
        return img.detach().numpy(), cell.grad.numpy(), dist.grad.numpy()

    ref = grads([])
    got = grads(["-device", "cuda"])
    assert ref[0].shape == got[0].shape == (8, 8)
    assert _rel(got[0], ref[0]) <= REL
    for a, b in zip(got[1:], ref[1:]):
        assert np.abs(b).max() > 0.0
        assert _rel(a, b) <= REL, (a, b)
