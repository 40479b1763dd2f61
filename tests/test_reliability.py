"""Reliability (issue 10): no data lost, no nonsense accepted, every failure a clean error.

Each refusal is checked the same way: exit status 2, one line on stderr that names
the flag or file, no traceback, the old outputs byte-identical and no temporary
file left behind.  Special files are a FIFO and a symlink to a character device
created inside the test's own directory (nothing under /dev is touched).
"""
import os
import random
import signal
import stat
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

import nbnumba
from nbnumba import cli
from nbnumba.errors import ConfigError, NBError
from nbnumba.io import atomic as A
from nbnumba.testing import synth

REPO = Path(__file__).resolve().parents[1]
BASE = ["-cell", "100", "100", "100", "90", "90", "90", "-lambda", "6.2", "-N", "5",
        "-default_F", "100", "-distance", "100", "-detpixels", "8", "-seed", "1"]
OUTS = ("floatimage.bin", "intimage.img", "image.pgm", "noiseimage.img")


def env():
    return dict(os.environ, PYTHONPATH=str(REPO))


@pytest.fixture
def work(tmp_path, monkeypatch):
    """A directory holding old outputs (recognisable bytes) and small inputs."""
    monkeypatch.chdir(tmp_path)
    for n in OUTS:
        (tmp_path / n).write_bytes(b"OLD " + n.encode() * 3)
    (tmp_path / "x.hkl").write_text("0 0 0 10\n1 1 1 20\n-1 2 3 30\n")
    return tmp_path


def snapshot(d):
    return {p.name: p.read_bytes() for p in sorted(Path(d).iterdir())
            if p.is_file() and not p.is_symlink() and not stat.S_ISFIFO(p.lstat().st_mode)}


def temps(d):
    return [n for n in os.listdir(d) if n.endswith(".tmp")]


def refused(args, capsys, needle, d):
    """Run the CLI in-process: exit 2, one stderr line naming ``needle``, nothing changed."""
    before = snapshot(d)
    rc = cli.main(list(args))
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2, err
    assert len(lines) == 1, err
    assert needle in lines[0], lines[0]
    assert "Traceback" not in err
    assert snapshot(d) == before
    assert temps(d) == []
    return lines[0]


# ---------------------------------------------------------------------------
# nonsense refused before anything is computed
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("extra, needle", [
    (["-distance", "0"], "-distance"),
    (["-distance", "-100"], "-distance"),
    (["-beam_vector", "0", "0", "0"], "-beam_vector"),
    (["-fdet_vector", "0", "0", "0"], "-fdet_vector"),
    (["-beamsize", "0", "-flux", "1e12", "-exposure", "1"], "-beamsize"),
    (["-detpixels", "0"], "-detpixels"),
    (["-detpixels_x", "0"], "-detpixels_x"),
    (["-N", "0"], "-N"),
    (["-Na", "0"], "-Na"),
    (["-roi", "10", "5", "0", "3"], "-roi"),
    (["-roi", "100", "200", "100", "200"], "-roi"),
    (["-detpixels", "\uff11\uff10\uff10"], "-detpixels"),      # fullwidth digits
    (["-distance", "\uff11\uff10\uff10"], "-distance"),
    (["-twotheta", "179"], "-twotheta"),
    (["-cell", "100", "0", "100", "90", "90", "90"], "-cell"),
    (["-cell", "100", "-5", "100", "90", "90", "90"], "-cell"),
    (["-cell", "100", "100", "100", "0", "0", "0"], "-cell"),
    (["-cell", "100", "100", "100", "170", "170", "170"], "-cell"),
    (["-floatfile", "a.out", "-intfile", "a.out"], "-intfile"),
    (["-intfile", "no_such_dir/x.img"], "no_such_dir/x.img"),
    (["-noisefile", "no_such_dir/n.img"], "no_such_dir/n.img"),
    (["-max_memory", "-5"], "-max_memory"),
    # extreme values that passed the flag checks and then raised inside the
    # model build (a traceback): ceil of an infinite cell count, a reciprocal
    # pixel that underflows to 0, a cell whose vectors under/overflow
    (["-xtal_size", "1e308"], "-xtal_size"),
    (["-sample_x", "1e308"], "-sample_x"),
    (["-distance", "1e-320"], "auto-selected oversampling is unbounded"),
    (["-pixel", "1e308"], "auto-selected oversampling is unbounded"),
    # a sensor so deep that a pixel's squared distance overflows: the flat
    # detector's image went NaN, the curved one's finite and wrong (fuzz seed 168)
    (["-detector_thick", "1e200", "-curved_det"], "-detector_thick 1e+200 um: the sensor "
                                                  "reaches 1e+194 m from the sample"),
    (["-detector_thick", "1e200"], "overflows double precision (limit 1e+150 m)"),
    # a wavelength given in metres: the message names the sizes behind the count
    (["-lambda", "1e-10"], "oversampling of 15000000000 is too large: 3 x the crystal's size "
                           "(500 A) over the reciprocal pixel size (lambda x distance / pixel = "
                           "1e-07 A); check -lambda"),
    (["-cell", "1e-300", "1", "1", "90", "90", "90"], "-cell 1e-300 1 1 A"),
    (["-cell", "1e300", "1", "1", "90", "90", "90"], "-cell 1e+300 1 1 A"),
    # the product of the edges is finite, twice it (the volume's first factor)
    # is not (tools/fuzz.py cli, seed 96: a ZeroDivisionError)
    (["-cell", "1", "1", "1e308", "90", "90", "90"], "-cell 1 1 1e+308 A"),
    (["-c_parity", "-cell", "1", "1", "9e307", "90", "90", "60"], "-cell 1 1 9e+307 A"),
    # two edges whose product overflows while twice the three's is finite: a* = inf and
    # sin(gamma*) = 0 (tools/fuzz.py autodiff, seed 232: a ZeroDivisionError)
    (["-cell", "0.001", "2", "1e308", "90", "90", "0.001"], "-cell 0.001 2 1e+308 A"),
    (["-c_parity", "-cell", "0.001", "2", "1e308", "90", "90", "0.001"], "-cell 0.001 2 1e+308 A"),
    # edges whose product underflows (tools/fuzz.py, seed 14)
    (["-cell", "1e-6", "1e-320", "1e-320", "90", "90", "100"], "-cell 1e-06 9.99989e-321"),
    (["-c_parity", "-cell", "1e-6", "1e-320", "1e-320", "90", "90", "100"], "-cell 1e-06"),
    (["-energy", "0"], "-energy must be > 0 eV"),       # was a ZeroDivisionError
    # a range over a step that underflows: an infinite step count (tools/fuzz.py
    # found these; ceil of it raised), now refused by the memory rule
    (["-hdivrange", "10", "-hdivstep", "1e-320"], "sources (4611686018427387904 x 1 divergence"),
    (["-osc", "10", "-phistep", "1e-320"], "rotated cells (4611686018427387904 phi steps"),
    # a direction whose length overflows: its unit vector was NaN, and the run
    # ended in a traceback (tools/fuzz.py) or a wrong explanation
    (["-twotheta_axis", "0.001", "100", "1e308", "-twotheta", "0.5"],
     "-twotheta_axis 0.001 100 1e+308: its length overflows"),
    (["-fdet_vector", "1e200", "0", "0"], "-fdet_vector 1e+200 0 0: its length overflows"),
])
def test_nonsense_refused(work, capsys, extra, needle):
    refused(BASE + extra, capsys, needle, work)


def test_cells_of_extreme_edges_and_angles_are_refused_or_finite():
    """Edges from 1e-320 to 1.7e308 A and angles from 1e-300 to 179.9999999999 deg, drawn
    at random: the model is built with finite real and reciprocal vectors, or refused with
    an NBError; never another exception.  (Two edges whose product overflows, b c = inf
    while 2 a b c is finite, were a ZeroDivisionError: tools/fuzz.py autodiff, seed 232;
    this draw found that cell, and also a b c sin(gamma*) underflowing to 0.)"""
    from nbnumba.flags import parse_argv
    from nbnumba.model import build_model
    rng = random.Random(7)
    mags = [1e-320, 1e-300, 1e-200, 1e-150, 1e-6, 1e-3, 1, 10, 1e3, 1e150, 1e200, 1e300,
            1e307, 1e308, 1.7e308]
    angles = [1e-300, 1e-10, 0.001, 1, 60, 89.999, 90, 120, 179.999, 179.9999999999]
    built = 0
    for _ in range(3000):
        edges = [rng.uniform(1, 1000) if rng.random() < 0.5 else
                 rng.choice(mags) * (rng.uniform(0.5, 2) if rng.random() < 0.8 else 1)
                 for _ in range(3)]
        argv = (["-cell"] + ["%.17g" % e for e in edges]
                + ["%.17g" % rng.choice(angles) for _ in range(3)]
                + ["-default_F", "1", "-detpixels", "4", "-N", "1"])
        if rng.random() < 0.3:
            argv.append("-c_parity")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                xtal = build_model(parse_argv(argv)).crystal
        except NBError:
            continue
        vecs = np.array([xtal.a, xtal.b, xtal.c, xtal.astar, xtal.bstar, xtal.cstar], dtype=float)
        assert np.all(np.isfinite(vecs)) and np.all(np.abs(vecs).sum(axis=1) > 0), argv
        built += 1
    assert built > 100      # (not all refusals)


def test_curved_detector_that_wraps_its_sphere_refused(work, capsys):
    """The default mode's -curved_det rolls the detector plane onto the sphere
    of radius close about the sample, a point rho from the plane's foot to the
    arc rho (docs/quirks.md #21).  Past half the circumference the surface
    wraps over itself, and the arc's angle rho/close multiplies the rounding of
    close: -pix0_vector 5 45 1e6 (the plane 5 m from the sample, the pixels
    1e6 m along it, 2e5 rad of arc) gave an image that moved 0.7 % when the
    same detector was stated in a turned frame (tools/fuzz.py metamorphic,
    seed 65).  Refused in one line; -c_parity (nanoBragg.c's lab-frame map)
    and a detector within the half circumference run."""
    line = refused(BASE + ["-curved_det", "-pix0_vector", "5", "45", "1e6", "-detector_rotx", "3"],
                   capsys, "-curved_det: the detector reaches 1e+09 mm", work)
    assert "6.37e+04 times the half circumference" in line, line
    # 8 pixels of 0.1 mm at 100 mm: 0.57 mm of 314 mm
    assert cli.main(BASE + ["-curved_det", "-nonoise", "-nopgm"]) == 0
    # 1 mm pixels at 100 mm: the corners of 440 pixels reach 312.5 mm (< 100 pi),
    # of 450 pixels 319.6 mm; a -roi in the middle of the larger one runs
    wide = BASE + ["-curved_det", "-pixel", "1", "-oversample", "1", "-nonoise", "-nopgm",
                   "-N", "1"]
    refused(wide + ["-detpixels", "450"], capsys, "reaches 319.6 mm", work)
    assert cli.main(wide + ["-detpixels", "440"]) == 0
    assert cli.main(wide + ["-detpixels", "450", "-roi", "200", "250", "200", "250"]) == 0
    os.mkdir(work / "c")
    os.chdir(work / "c")        # (-c_parity writes intimage.img here)
    assert cli.main(BASE + ["-curved_det", "-pix0_vector", "5", "45", "1e6", "-c_parity",
                            "-nonoise", "-nopgm"]) == 0


def _fuzz_tool():
    import importlib.util
    spec = importlib.util.spec_from_file_location("fuzz_tool", REPO / "tools" / "fuzz.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_every_numeric_flag_at_extreme_values_exits_0_or_2(tmp_path, monkeypatch):
    """Each float, int, vector and -detector_abs flag given +-1e308, +-1e-320, 0
    and -1 (ints: 0 and -1; +-1e30 and 1e-30 found nothing more): a run or one error
    line, never a traceback or a numpy warning (tools/fuzz.py's run_cli).  The
    sweep found six tracebacks (ceil of inf, a reciprocal pixel of 0, a cell
    under/overflowing, 1/(1e-320 um), 12398.42/0 eV) and a warning; the
    sample counts stay small (the memory rule's own tests cover counts)."""
    from nbnumba.flags import FLAGS
    fz = _fuzz_tool()
    monkeypatch.chdir(tmp_path)
    base = ["-cell", "70", "80", "90", "85", "95", "105", "-lambda", "1.5", "-N", "3",
            "-default_F", "100", "-distance", "100", "-detpixels", "8", "-nopgm",
            "-noprogress", "-floatfile", "f.bin"]
    counts = {"-detpixels", "-detpixels_x", "-detpixels_y", "-detpixels_f", "-detpixels_s",
              "-oversample", "-phisteps", "-mosaic_dom", "-dispsteps", "-divsteps",
              "-hdivsteps", "-vdivsteps", "-detector_thicksteps", "-thicksteps"}
    values = ["1e308", "-1e308", "1e-320", "-1e-320", "0", "-1"]
    failures, runs = [], 0
    for spec in FLAGS:
        if spec.kind not in ("float", "int", "vec3", "abs") or spec.name in counts:
            continue
        for v in values:
            if spec.kind == "int" and ("e" in v or "." in v):
                continue
            extra = [v, "0.3", "0.5"] if spec.kind == "vec3" else [v] * spec.nargs
            rc, why = fz.run_cli(base + [spec.name] + extra)
            runs += 1
            if why is not None:
                failures.append((spec.name, v, why))
    assert runs >= 400          # (more as flags are added)
    assert not failures, failures


def test_fuzz_tool_runs_clean_and_reports_a_failure(tmp_path, monkeypatch, capsys):
    """tools/fuzz.py (random command lines, for long runs): 40 drawn CLI runs
    end in exit 0; with cli.main made to raise on one flag, the runs that
    draw it are reported and the exit status is 1."""
    fz = _fuzz_tool()
    monkeypatch.chdir(tmp_path)
    assert fz.main(["cli", "--seed", "3", "--runs", "40"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("cli, seed 3: exit 0 ") and last.endswith("fail 0"), last
    real = cli.main

    def broken(args):
        if "-mosaic" in args:
            raise ZeroDivisionError("injected")
        return real(args)
    monkeypatch.setattr(cli, "main", broken)
    assert fz.main(["cli", "--seed", "3", "--runs", "60"]) == 1
    out = capsys.readouterr().out.strip().splitlines()
    fails = [ln for ln in out if ln.startswith("FAIL")]
    assert fails and all("-mosaic" in ln and "ZeroDivisionError: injected" in ln for ln in fails)
    assert out[-1].endswith("fail %d" % len(fails))
    assert fz.main(["cli", "--runs", "0"]) == 2


def test_fuzz_autodiff_target_runs_clean(tmp_path, monkeypatch, capsys):
    """tools/fuzz.py autodiff: 4 drawn calls end in exit 0, none failing."""
    pytest.importorskip("torch")
    fz = _fuzz_tool()
    monkeypatch.chdir(tmp_path)
    assert fz.main(["autodiff", "--seed", "3", "--runs", "4"]) == 0
    assert capsys.readouterr().out.strip().endswith("fail 0")


@pytest.mark.parametrize("target", ["autodiff", "gradients", "device"])
def test_fuzz_targets_that_need_torch_say_so_without_it(target, tmp_path, monkeypatch, capsys):
    """Without torch (the README's first command installs none) these targets
    stopped in a ModuleNotFoundError traceback, and the test suite with them;
    now one line and exit status 2."""
    fz = _fuzz_tool()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "torch", None)     # import torch -> ImportError
    assert fz.main([target, "--seed", "3", "--runs", "1"]) == 2
    cap = capsys.readouterr()
    assert cap.out == ""
    assert cap.err.splitlines() == ["tools/fuzz.py: %s needs torch, an optional extra "
                                    "(pip install 'nbnumba[torch]')" % target]


def test_fuzz_heavy_weighs_the_sweep_keywords(monkeypatch):
    """tools/fuzz.py's heavy() weighs a line with the keywords' sampling
    ranges: a given -hdivstep is 2 sources alone, and range/step cells under
    hdivrange= (here 40 under a bound of 1000 sub-paths on 100 pixels; a
    step of 1e-6 mrad under hdivrange=0.4 is 400 000 sources)."""
    fz = _fuzz_tool()
    monkeypatch.setattr(fz, "MAX_SUBPATHS", 1000)
    argv = fz.AD_BASE + ["-hdivstep", "0.01", "-default_F", "100", "-oversample", "1"]
    fz.heavy(argv)
    fz.heavy(argv, {"vdivrange": [0.4]})
    with pytest.raises(fz.Heavy, match="4000 sub-paths"):
        fz.heavy(argv, {"hdivrange": [0.4]})


def test_fuzz_heavy_declines_a_huge_source_grid_before_building_it(tmp_path, monkeypatch):
    """tools/fuzz.py's heavy() bounds a line's sub-paths from its step counts
    first: a 3000 x 3000 divergence grid on 8 x 8 pixels is declined without
    building the model (building it took 124 s and 4.5 GiB); the bound never
    exceeds the count of the built model (ROI, mask, source file, small
    -round_div grids, sensor layers, oversampling)."""
    import numpy as np
    from nbnumba import model as nb_model
    from nbnumba.flags import parse_argv
    from nbnumba.kernels import gpu
    fz = _fuzz_tool()
    monkeypatch.chdir(tmp_path)
    base = ["-cell", "50", "50", "50", "90", "90", "90", "-N", "2", "-default_F", "10",
            "-detpixels", "8", "-distance", "100"]
    (tmp_path / "s.txt").write_text("0 0 1 1 1e-10\n0 0.01 1 1 1e-10\n")
    lines = [[], ["-roi", "2", "4", "3", "6"], ["-sourcefile", "s.txt", "-mosaic", "1", "-mosaic_dom", "3"],
             ["-hdivrange", "0.3", "-hdivsteps", "2", "-vdivrange", "0.3", "-vdivsteps", "2"],
             ["-hdivrange", "0.3", "-hdivsteps", "3", "-vdivrange", "0.2", "-vdivsteps", "31", "-c_parity"],
             ["-divergence", "0.4", "-divsteps", "9", "-dispersion", "5", "-dispsteps", "3",
              "-oversample", "2", "-detector_thick", "100", "-detector_thicksteps", "3"],
             ["-hdivrange", "1", "-hdivsteps", "64", "-square_div", "-phi", "0", "-osc", "1", "-phisteps", "3"]]
    for extra in lines:
        cfg = parse_argv(base + extra)
        m = nb_model.build_model(cfg)
        n = gpu.subpaths_per_pixel(gpu.kernel_args(m, np.float64)[0]) * int(np.count_nonzero(m.active))
        floor = fz._subpaths_floor(cfg)
        assert 0 < floor <= n, (extra, floor, n)

    def unbuilt(cfg):
        raise AssertionError("the model was built")
    monkeypatch.setattr(nb_model, "build_model", unbuilt)
    huge = base + ["-hdivrange", "1", "-hdivsteps", "3000", "-vdivrange", "1", "-vdivsteps", "3000"]
    with pytest.raises(fz.Heavy, match="at least 1.44e"):
        fz.heavy(huge)


def test_fuzz_gradients_agree_and_a_wrong_one_is_reported(tmp_path, monkeypatch, capsys):
    """tools/fuzz.py gradients: 4 drawn cases agree with central differences
    and with jacobian() (2 of them with a three-layer sensor, one of which
    differentiates detector_thick); with distance's chain-rule column off by
    1e-5, or jacobian()'s distance column off by 1e-7, the two cases that
    differentiate distance (one through the sensor) are reported and the exit
    status is 1."""
    pytest.importorskip("torch")
    from nbnumba import autodiff
    fz = _fuzz_tool()
    monkeypatch.chdir(tmp_path)
    assert fz.main(["gradients", "--seed", "583", "--runs", "4"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("gradients, seed 583: agree 4,") and last.endswith("fail 0"), last
    real = autodiff._Run.chain_matrix

    def off(self, name):
        return real(self, name) * (1.0 + 1e-5) if name == "distance" else real(self, name)
    monkeypatch.setattr(autodiff._Run, "chain_matrix", off)
    assert fz.main(["gradients", "--seed", "583", "--runs", "4"]) == 1
    out = capsys.readouterr().out.strip().splitlines()
    fails = [ln for ln in out if ln.startswith("FAIL")]
    assert len(fails) == 2 and all(":: distance: " in ln for ln in fails), fails
    assert sum("-detector_thicksteps 3" in ln for ln in fails) == 1, fails
    # and jacobian() off by 1e-7 against the backward
    monkeypatch.setattr(autodiff._Run, "chain_matrix", real)
    real_jac = autodiff.jacobian

    def jac_off(argv, roi_only=False, **values):
        img, J = real_jac(argv, roi_only, **values)
        if "distance" in J:
            J["distance"] = J["distance"] * (1.0 + 1e-7)
        return img, J
    monkeypatch.setattr(autodiff, "jacobian", jac_off)
    assert fz.main(["gradients", "--seed", "583", "--runs", "4"]) == 1
    fails = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("FAIL")]
    assert len(fails) == 2 and all(":: distance: jacobian() gives " in ln for ln in fails), fails



def test_fuzz_gradients_weighs_the_loss_rounding_it_measures(monkeypatch, tmp_path):
    """tools/fuzz.py gradients, seed 173: with -curved_det, 6 x 6 sub-pixels,
    2 phi steps and 4 divergence sources the weighted loss moves by about
    2.6e-11 (7 times the 2e-15 sum |w I| it assumed) under vdivrange changes
    of 5e-9; at the step 0.001 that rounding put the extrapolation 2.3e-6 off
    a right backward, reported as a mismatch.  The rounding is now measured
    before a mismatch is reported (grad_weigh): 'flat' there, while the
    backward's vdivrange column off by 1e-5 is still a mismatch."""
    pytest.importorskip("torch")
    from nbnumba import autodiff
    fz = _fuzz_tool()
    monkeypatch.chdir(tmp_path)
    argv = fz.AD_BASE + ("-spindle_axis 0.1 0.2 1 -phi 0 -osc 1 -phisteps 2 -misset random "
                         "-misset_seed 7 -default_F 100 -curved_det").split()
    vals = {"vdivrange": [0.16502614037995433], "hdivrange": [0.47781672586232127],
            "polarization": [0.46960103093187483],
            "beam_center": [4.7656948445520735, 5.851031363578583]}
    names = ["vdivrange", "hdivrange", "polarization", "beam_center"]

    def rng():              # the fuzzer's stream at that case: seed 173, 391145 words on
        r = random.Random(173)
        for _ in range(391145):
            r.getrandbits(32)
        return r
    res = fz.grad_check(argv, vals, names, rng())
    assert res["vdivrange"] in ("flat", "agree"), res
    assert res["polarization"] == res["beam_center"] == "agree", res
    real = autodiff._Run.chain_matrix

    def off(self, name):
        return real(self, name) * (1.0 + 1e-5) if name == "vdivrange" else real(self, name)
    monkeypatch.setattr(autodiff._Run, "chain_matrix", off)
    res = fz.grad_check(argv, vals, ["vdivrange"] + names[1:], rng())
    assert res["vdivrange"].startswith("-0.0196589"), res
    assert res["polarization"] == "agree", res


def test_fuzz_grad_weigh_measures_the_rounding_and_keeps_a_real_mismatch():
    """tools/fuzz.py's grad_weigh on a loss a q + c q^3 whose values at the
    step 0.001's points are off by seed 173's rounding (2e-11 to 6e-11,
    against an assumed 3.5e-12), the base point's by 1.3e-11: the right slope
    is 'flat', slopes 1e-5 and 1e-4 off are mismatches that name the rounding
    measured (2.6e-11); with the base point exact (no rounding to measure) the
    right slope stays a mismatch, and without any offset it agrees."""
    fz = _fuzz_tool()
    steps = fz.GRAD_STEPS["vdivrange"]
    a, c, h = 0.02, 6e-4, steps[1][0]
    rounding = {h: -5.6e-11, h / 2: -4e-11, h / 4: -2e-11, 0.0: -1.3e-11}

    def loss(offsets):
        return lambda q: a * q + c * q ** 3 + offsets.get(q, 0.0)
    assert fz.grad_weigh(loss(rounding), a, steps, 3.5e-12) == "flat"
    for off in (1e-5, 1e-4):
        wrong = fz.grad_weigh(loss(rounding), a * (1 + off), steps, 3.5e-12)
        assert wrong.startswith("%.12g against 0.01999996 (" % (a * (1 + off))), wrong
        assert wrong.endswith("(the loss's rounding measured 2.6e-11, not 3.5e-12)"), wrong
    base_exact = {q: d for q, d in rounding.items() if q}
    assert fz.grad_weigh(loss(base_exact), a, steps, 3.5e-12).startswith(
        "0.02 against 0.01999996 (2.0e-06 at step 0.001")
    assert fz.grad_weigh(loss({}), a, steps, 3.5e-12) == "agree"

_FAKE_C = """#!%(python)s
# stands in for nanoBragg.c: the port's CLI under -c_parity, then (MODE) an
# image made wrong, or a failed run
import sys
sys.path.insert(0, %(repo)r)
from nbnumba import cli
rc = cli.main(sys.argv[1:] + ["-c_parity"])
if %(flip)r:
    b = bytearray(open(%(flip)r, "rb").read())
    b[%(at)d] ^= 1
    open(%(flip)r, "wb").write(bytes(b))
sys.exit(%(rc)d if %(rc)d else rc)
"""


def _fake_c(path, flip="", at=0, rc=0):
    path.write_text(_FAKE_C % dict(python=sys.executable, repo=str(REPO), flip=flip, at=at,
                                   rc=rc))
    path.chmod(0o755)
    return str(path)


def test_fuzz_parity_against_a_stand_in_for_c(tmp_path, monkeypatch, capsys):
    """tools/fuzz.py parity (random lines against $NB_C_BIN under
    -c_parity), with the port's own CLI standing in for nanoBragg.c: 4 drawn
    lines are bit-identical in every image or refused; a float pixel's low
    bit flipped, a noise pixel's (on a line whose SMV header runs past its
    512 bytes) and a C run that exits 3 are each reported; without
    NB_C_BIN the target stops with one line and exit status 2."""
    import io
    fz = _fuzz_tool()
    monkeypatch.chdir(tmp_path)
    fz._inputs(tmp_path)
    out = io.StringIO()
    counts = fz.fuzz_parity(5, 4, out, c_bin=_fake_c(tmp_path / "same"))
    assert counts["fail"] == 0 and counts["exact"] >= 2, (counts, out.getvalue())
    argv = fz.PARITY_BASE + ["-mosaic", "0.5", "-mosaic_dom", "3", "-default_F", "100"]
    what, text = fz.parity_check(argv, _fake_c(tmp_path / "same"))
    assert (what, text) == ("exact", "")
    what, text = fz.parity_check(argv, _fake_c(tmp_path / "flip", "f.bin", 4 * 37))
    assert what == "differ" and text.startswith("float image: 1 of 400 pixels differ"), text
    # a detector axis whose header text runs past HEADER_BYTES=512 (quirk #9)
    tilted = fz.PARITY_BASE + ["-fdet_vector", "-1", "90", "5", "-default_F", "100"]
    assert fz.parity_check(tilted, _fake_c(tmp_path / "same")) == ("exact", "")
    what, text = fz.parity_check(tilted, _fake_c(tmp_path / "noise", "n.img", -1))
    assert what == "differ" and text.startswith("noise image: 1 of 400 pixels differ"), text
    what, text = fz.parity_check(argv, _fake_c(tmp_path / "fail", rc=3))
    assert what == "c failed" and text.startswith("exit 3"), text
    monkeypatch.delenv("NB_C_BIN", raising=False)
    assert fz.main(["parity", "--runs", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["tools/fuzz.py: parity needs NB_C_BIN, the nanoBragg program (not set)"]
    assert fz.main(["parity", "--pixels", "0"]) == 2
    assert capsys.readouterr().err.strip() == "tools/fuzz.py: --pixels must be 1 to 1024"
    # --pixels: the same 10 mm detector, and a mask of that size
    fz._mask(tmp_path, 7)
    assert (tmp_path / "m.img").stat().st_size == 512 + 2 * 49
    assert fz._parity_base(40)[fz.PARITY_BASE.index("-pixel") + 1] == "0.25"


def test_fuzz_files_keeps_the_promise_and_a_split_error_line_is_reported(tmp_path, monkeypatch):
    """tools/fuzz.py files: 200 runs on mutated input files exit 0 with a
    finite image or 2 with one error line; with NBError's messages no longer
    escaped (nbnumba.errors.one_line made the identity), the lines whose
    quoted text holds a control character are reported."""
    import io
    import nbnumba.errors as E
    fz = _fuzz_tool()
    monkeypatch.chdir(tmp_path)
    fz._inputs(tmp_path)
    out = io.StringIO()
    counts = fz.fuzz_files(2, 200, out)
    assert counts["fail"] == 0 and counts["exit 0"] > 50 and counts["exit 2"] > 50, out.getvalue()
    monkeypatch.setattr(E, "one_line", lambda s: s)
    out = io.StringIO()
    counts = fz.fuzz_files(2, 200, out)
    assert counts["fail"] >= 2, counts
    assert all(ln.startswith("FAIL ") and "exit 2: nbnumba: error: " in ln
               for ln in out.getvalue().splitlines() if ln.startswith("FAIL")), out.getvalue()


def test_fuzz_reference_agrees_and_a_wrong_kernel_is_reported(tmp_path, monkeypatch, capsys):
    """tools/fuzz.py reference: 10 drawn default-mode lines (2 to 6 features)
    agree with nbnumba.reference by nbnumba.testing.refcheck.compare (the
    check of tests/test_reference.py); with the kernel's float64 pixels off by
    1e-9 both lines of a shorter run are reported, one line each, and the
    exit status is 1."""
    from nbnumba.testing import refcheck
    fz = _fuzz_tool()
    monkeypatch.chdir(tmp_path)
    assert fz.main(["reference", "--seed", "3", "--runs", "10"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("reference, seed 3: agree 10,") and last.endswith("fail 0"), last
    real = refcheck.kernel64
    monkeypatch.setattr(refcheck, "kernel64", lambda cfg: real(cfg) * (1.0 + 1e-9))
    assert fz.main(["reference", "--seed", "3", "--runs", "2"]) == 1
    out = capsys.readouterr().out.strip().splitlines()
    fails = [ln for ln in out if ln.startswith("FAIL")]
    assert len(fails) == 2 and all(" :: float64 pixel (" in ln for ln in fails), out
    assert out[-1].endswith("fail 2"), out[-1]


def test_fuzz_reference_weighs_every_pixel_outside_the_bound(monkeypatch):
    """tools/fuzz.py reference, seed 136: -dials -lambda 1 with a pix0 vector
    puts more pixels outside compare()'s 1e-12 bound than refcheck weighs by
    default (SLACK_PIXELS), each within a fraction of the reference's own
    spread there.  The target weighs them all ('conditioned'; it failed the
    first pixel past the cap before), restores the cap, and still reports
    the same line with the kernel 1e-10 off."""
    import numpy as np
    from nbnumba import reference as ref
    from nbnumba.flags import parse_argv
    from nbnumba.testing import refcheck
    fz = _fuzz_tool()
    argv = fz.REF_BASE + ("-oversample 2 -pix0_vector 0.05 -0.001847 0.0003636 "
                          "-dials -lambda 1").split()
    cfg = parse_argv(list(argv))
    r, k = ref.image(cfg), refcheck.kernel64(cfg)
    outside = np.abs(k - r) > refcheck.REL * np.abs(r) + refcheck.FLOOR * np.abs(r).max()
    assert np.count_nonzero(outside) > refcheck.SLACK_PIXELS
    cap = refcheck.SLACK_PIXELS
    assert fz.reference_check(argv) == ("conditioned", "")
    assert refcheck.SLACK_PIXELS == cap
    real = refcheck.kernel64
    monkeypatch.setattr(refcheck, "kernel64", lambda c: real(c) * (1.0 + 1e-10))
    what, text = fz.reference_check(argv)
    assert what == "fail" and text.startswith("float64 pixel ("), text


def test_fuzz_reference_float32_pixel_within_rounding_of_an_accepted_kernel(monkeypatch):
    """tools/fuzz.py reference, seed 356: -point_pixel with a tilted beam puts
    pixel (0, 2)'s float64 kernel value 1.17e-7 off the reference, accepted
    within the reference's own spread there (1.0e-6); the float32 image is that
    value correctly rounded, yet 9.6e-8 off the reference, past compare()'s
    6.1e-8 (the target failed it).  The target passes a float32 pixel within
    float32 rounding of the kernel's float64 value ('conditioned'), and still
    fails the line with the float32 image 1e-6 off."""
    import numpy as np
    import nbnumba
    from nbnumba import reference as ref
    from nbnumba.flags import parse_argv
    from nbnumba.testing import refcheck
    fz = _fuzz_tool()
    argv = fz.REF_BASE + ("-oversample 1 -beam_vector 1 -0.02504 -0.04973 -point_pixel "
                          "-Na 2 -Nb 3 -Nc 4").split()
    cfg = parse_argv(list(argv))
    r, k = ref.image(cfg), refcheck.kernel64(cfg)
    img = np.asarray(nbnumba.simulate(cfg).float_image, dtype=np.float64)
    assert abs(k[0, 2] - r[0, 2]) > 1e-7 * r[0, 2]           # accepted, by the spread
    assert img[0, 2] == np.float32(k[0, 2])                  # correctly rounded kernel
    assert abs(img[0, 2] - r[0, 2]) > refcheck.REL32 * r[0, 2]
    assert refcheck.compare(cfg, nonzero=False, slack=lambda s, f: 1e-6)[1].startswith(
        "float32 pixel (0, 2)")
    assert fz.reference_check(argv) == ("conditioned", "")
    real = nbnumba.simulate

    class Off:
        def __init__(self, res):
            self.float_image = np.asarray(res.float_image) * np.float32(1 + 1e-6)
    monkeypatch.setattr(nbnumba, "simulate", lambda c, *a, **kw: Off(real(c, *a, **kw)))
    what, text = fz.reference_check(argv)
    assert what == "fail" and text.startswith("float32 pixel ("), text


def test_fuzz_modes_agree_and_a_wrong_kernel_is_reported(tmp_path, monkeypatch, capsys):
    """tools/fuzz.py modes: 12 drawn lines run in the default mode and under
    -c_parity agree wherever nbnumba.quirks.c_differences announces nothing;
    the C's lattice function at a node (-adxv -sourcefile s2.txt on 20 x 20
    pixels: l within 1e-14 of 60) counts as 'numerics'; with the default mode's image off by
    1e-4 the unannounced lines fail (one line each: the worst pixel, both
    values, c_differences) and the exit status is 1; with its solid-angle sum
    doubled, the statistics fail."""
    from nbnumba import api
    fz = _fuzz_tool()
    monkeypatch.chdir(tmp_path)
    assert fz.main(["modes", "--seed", "6", "--runs", "12", "--pixels", "10"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("modes, seed 6: agree ") and last.endswith("fail 0"), last
    agree = int(last.split("agree ")[1].split(",")[0])
    # (5 of the 12 at 9683af0: 6 announced, #22 one of them, and one refused)
    assert agree >= 5, last
    fz._inputs(tmp_path)
    base = fz._parity_base(20) + ["-nonoise", "-nopgm", "-default_F", "100"]
    base[base.index("-cell") + 1:base.index("-cell") + 7] = fz.MODES_CELL
    # (pixel (10, 10) of the 20 x 20 run: C 13.6158552, default 14.1178255)
    assert fz.modes_check(base + ["-adxv", "-sourcefile", "s2.txt"]) == ("numerics", "")
    real = api.render_float

    def off(model, *a, **k):
        img, omega = real(model, *a, **k)
        return (img if model.cfg.c_parity else img * np.float32(1.0001)), omega
    monkeypatch.setattr(api, "render_float", off)
    assert fz.main(["modes", "--seed", "6", "--runs", "12", "--pixels", "10"]) == 1
    out = capsys.readouterr().out.strip().splitlines()
    fails = [ln for ln in out if ln.startswith("FAIL")]
    # (a line whose image is all zeros, or all below the bound's floor, agrees still)
    assert len(fails) >= agree - 1 and all(" :: pixel (" in ln and "c_differences []" in ln
                                           for ln in fails), out
    assert out[-1].endswith("fail %d" % len(fails)), out[-1]

    def omega2(model, *a, **k):
        img, omega = real(model, *a, **k)
        return img, (omega if model.cfg.c_parity else 2.0 * omega)
    monkeypatch.setattr(api, "render_float", omega2)
    what, text = fz.modes_check(base)
    assert what == "fail" and text.startswith("stats: omega_sum "), text


def test_fuzz_modes_ignores_the_default_parses_record_of_sample_pivot_flags(tmp_path, monkeypatch):
    """The default-mode parse records the -ORGX/-ORGY/-Xclose/-Yclose flags a
    line gives (Config.sample_pivot_flags, for a warning under a BEAM-pivot
    convention); the -c_parity parse leaves it empty.  It is no setting that
    the two modes read differently: seed 157 counted 193 such lines 'fail'
    (-ORGX 8 -ORGY 12 -xds among them).  A setting that does differ between
    the parses, with no note, is still reported."""
    import nbnumba.flags as flags
    fz = _fuzz_tool()
    monkeypatch.chdir(tmp_path)
    base = fz._parity_base(10) + ["-nonoise", "-nopgm", "-default_F", "100"]
    i = base.index("-cell") + 1
    base[i:i + 6] = fz.MODES_CELL
    for extra in (["-ORGX", "8", "-ORGY", "12", "-xds"],
                  ["-misset", "10", "20", "30", "-adxv", "-Yclose", "0.001"]):
        d = flags.parse_argv(base + extra)
        c = flags.parse_argv(base + extra + ["-c_parity"])
        assert d.sample_pivot_flags and not c.sample_pivot_flags, extra
        assert fz.modes_check(base + extra) == ("agree", ""), extra
    real = flags.parse_argv

    def threads_read_otherwise(argv, *a, **k):
        cfg = real(argv, *a, **k)
        if "-c_parity" in argv:
            cfg.threads = 1         # (the image does not depend on it)
        return cfg
    monkeypatch.setattr(flags, "parse_argv", threads_read_otherwise)
    assert fz.modes_check(base + ["-xds"]) == (
        "fail", "options read differently with no note (#5): threads")


def test_fuzz_metamorphic_holds_and_a_broken_relation_is_reported(tmp_path, monkeypatch, capsys):
    """tools/fuzz.py metamorphic: 8 drawn default-mode lines (8 x 8 pixels) keep
    every relation bit for bit (a -roi sub-box, a random -mask, -threads,
    doubled fluence, doubled default_F, the wavelength with the crystal's
    lengths doubled, the detector's lengths doubled) and, to 1e-5, the model's
    geometry as explicit vectors, turned or not; with the -roi runs' images
    shifted one pixel along the fast axis the lines fail on 'roi', one line
    each (the worst pixel, both values), and the exit status is 1; a
    doubled-fluence image one ulp off at one pixel fails 'fluence', a doubled
    detector's image 1.5 times too bright fails 'detector', and a turned
    experiment whose beam was left as it was fails 'rotation'."""
    from nbnumba import api
    fz = _fuzz_tool()
    monkeypatch.chdir(tmp_path)
    args = ["metamorphic", "--seed", "6", "--runs", "8", "--pixels", "8"]
    assert fz.main(args) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("metamorphic, seed 6: run ") and last.endswith("fail 0"), last
    ran = int(last.split("run ")[1].split(",")[0])
    assert ran >= 5 and "roi exact %d," % ran in last and "threads exact %d," % ran in last, last
    real = api.simulate_argv

    def shifted(argv, *a, **k):
        res = real(argv, *a, **k)
        if list(argv)[-5:-4] == ["-roi"]:
            res.float_image = np.roll(res.float_image, 1, axis=1)
        return res
    monkeypatch.setattr(api, "simulate_argv", shifted)
    assert fz.main(args) == 1
    out = capsys.readouterr().out.strip().splitlines()
    fails = [ln for ln in out if ln.startswith("FAIL")]
    assert len(fails) == ran and all(" :: roi: -roi " in ln and ": pixel (" in ln
                                     and " against " in ln for ln in fails), out
    assert "roi fail %d," % ran in out[-1] and out[-1].endswith("fail %d" % ran), out[-1]

    def off(argv, *a, **k):
        res = real(argv, *a, **k)
        if list(argv)[-2:-1] == ["-fluence"]:
            img = res.float_image
            s, f = np.unravel_index(np.argmax(img), img.shape)
            img[s, f] = np.nextafter(img[s, f], np.float32(np.inf))
        return res
    def broken():       # (the last line, the FAIL lines) of a run that must fail
        assert fz.main(args) == 1
        out = capsys.readouterr().out.strip().splitlines()
        return out[-1], [ln for ln in out if ln.startswith("FAIL")]
    monkeypatch.setattr(api, "simulate_argv", off)
    _, fails = broken()
    assert fails and all(" :: fluence: -fluence 2x: pixel (" in ln and "1 of 64 pixels" in ln
                         for ln in fails), fails

    def far(argv, *a, **k):         # the doubled detector's run, its image not kept
        res = real(argv, *a, **k)
        argv = list(argv)
        if "-distance" in argv and argv[argv.index("-distance") + 1] == "200":
            res.float_image = res.float_image * np.float32(1.5)
        return res
    monkeypatch.setattr(api, "simulate_argv", far)
    _, fails = broken()
    assert fails and all(" :: detector: detector 2x: pixel (" in ln for ln in fails), fails
    monkeypatch.setattr(api, "simulate_argv", real)
    whole = fz._vectors_line

    def unturned_beam(argv, m, turn, cwd):     # every vector turned but the beam's
        line = whole(argv, m, turn, cwd)
        i = line.index("-beam_vector")
        line[i + 1:i + 4] = ["%.17g" % x for x in m.det.beam]
        return line
    monkeypatch.setattr(fz, "_vectors_line", unturned_beam)
    last, fails = broken()
    assert fails and all(" :: rotation: rotation: pixel (" in ln for ln in fails), fails
    assert "vectors fail 0," in last, last



def test_fuzz_metamorphic_phi_split_sees_the_background_over_the_steps(tmp_path, monkeypatch):
    """tools/fuzz.py metamorphic's 'phi_split': the mean of a line's phi steps rendered
    one by one is its image, water background included; under -c_parity, whose
    background falls as 1/steps (docs/quirks.md #19), the relation fails."""
    import random
    fz = _fuzz_tool()
    monkeypatch.chdir(tmp_path)
    base = fz._parity_base(8) + ["-nonoise", "-nopgm", "-default_F", "100", "-water", "100",
                                 "-phi", "0", "-osc", "1", "-phisteps", "3"]
    for extra, want in (([], "close"), (["-c_parity"], "fail")):
        what, rels = fz.metamorphic_check(base + extra, random.Random(1), cwd=str(tmp_path))
        split = [r for r in rels if r[0] == "phi_split"]
        assert what == "run" and split and split[0][1] == want, rels


def test_fuzz_metamorphic_source_split_sees_the_weights(tmp_path, monkeypatch):
    """tools/fuzz.py metamorphic's 'source_split': a line's sources (here a
    horizontal divergence points times a dispersion sweep) restated as a -sourcefile with
    drawn relative intensities give the weighted mean of each source alone,
    water background included; -c_parity, which counts every source once
    (docs/quirks.md #20), fails the relation."""
    import random
    fz = _fuzz_tool()
    monkeypatch.chdir(tmp_path)
    base = fz._parity_base(8) + ["-nonoise", "-nopgm", "-default_F", "100", "-water", "5",
                                 "-hdivrange", "2", "-hdivsteps", "2", "-dispersion", "10",
                                 "-dispsteps", "2", "-square_div"]
    for extra, want in (([], "close"), (["-c_parity"], "fail")):
        what, rels = fz.metamorphic_check(base + extra, random.Random(1), cwd=str(tmp_path))
        split = [r for r in rels if r[0] == "source_split"]
        assert what == "run" and split and split[0][1] == want, rels


def test_fuzz_metamorphic_source_split_skips_a_wavelength_a_source_file_refuses(tmp_path,
                                                                                monkeypatch):
    """-energy 1e-6 (eV) is a 1.24 m wave, which the command line takes; the
    same wavelength in a -sourcefile's fifth column (metres) is refused as
    Angstrom written there (past 1e-6 m).  'source_split' restates the line's
    sources as a file, so it skips such a line rather than failing it (seed
    158: -dispersion 0.1 -dispsteps 2 -energy 1e-6); 1e4 eV is still split."""
    import random
    fz = _fuzz_tool()
    monkeypatch.chdir(tmp_path)
    base = fz._parity_base(8) + ["-nonoise", "-nopgm", "-default_F", "100",
                                 "-dispersion", "0.1", "-dispsteps", "2"]
    for energy, want in (("1e-6", "skipped"), ("1e4", "close")):
        what, rels = fz.metamorphic_check(base + ["-energy", energy], random.Random(1),
                                          cwd=str(tmp_path))
        split = [r for r in rels if r[0] == "source_split"]
        assert what == "run" and split and split[0][1] == want, (energy, rels)
    with open(tmp_path / "long.txt", "w") as f:
        f.write("-10 0 0 1 1.24e-6\n-10 0.01 0 1 1.24e-6\n")
    assert cli.main(base + ["-sourcefile", "long.txt", "-floatfile", "f.bin"]) == 2


def test_fuzz_metamorphic_vectors_skip_a_matrix_the_mat_reader_refuses(tmp_path, monkeypatch):
    """The 'vectors' and 'rotation' relations state the crystal as a MOSFLM
    matrix, A* times the wavelength.  -lambda 1e308 (with one cell per axis,
    -samplesize 1e-320, the line runs) puts it near 1e306, beyond the -mat
    reader's 1e100: the relations are skipped, not failed as a related run
    refused (tools/fuzz.py metamorphic, seed 51)."""
    import random
    fz = _fuzz_tool()
    monkeypatch.chdir(tmp_path)
    base = fz._parity_base(8) + ["-nonoise", "-nopgm", "-default_F", "100", "-nopolar",
                                 "-lambda", "1e308", "-samplesize", "1e-320"]
    what, rels = fz.metamorphic_check(base, random.Random(1), cwd=str(tmp_path))
    got = {r[0]: r[1:] for r in rels}
    assert what == "run", rels
    for rel in ("vectors", "rotation"):
        assert got[rel] == ("skipped", "the crystal's matrix A* lambda outside the -mat "
                                       "reader's range"), rels
    # an ordinary wavelength keeps both relations
    what, rels = fz.metamorphic_check(base[:-4] + ["-N", "1"], random.Random(1),
                                      cwd=str(tmp_path))
    got = {r[0]: r[1] for r in rels}
    assert what == "run" and got["vectors"] == got["rotation"] == "close", rels


def test_fuzz_metamorphic_vectors_skip_a_dmin_that_keeps_only_s_zero(tmp_path, monkeypatch):
    """-dmin 1e20 keeps only the sub-paths whose scattering vector is exactly 0:
    here the centre of a sub-pixel of pixel (17, 17) on the beam (33 pixels of
    0.5 mm).  A turned frame gives S ~ 1e-16 there, which the cut removes (0
    against 156 photons: tools/fuzz.py metamorphic, seed 64), so 'vectors'
    and 'rotation' are skipped; at -dmin 1e10 the cut is far above the
    rounding and both relations hold."""
    import random
    fz = _fuzz_tool()
    monkeypatch.chdir(tmp_path)
    base = fz._parity_base(33) + ["-nonoise", "-nopgm", "-default_F", "100", "-pixel", "0.5"]
    for dmin, want in (("1e20", "skipped"), ("1e10", "close")):
        what, rels = fz.metamorphic_check(base + ["-dmin", dmin], random.Random(0),
                                          cwd=str(tmp_path))
        got = {r[0]: r[1:] for r in rels}
        assert what == "run" and got["vectors"][0] == got["rotation"][0] == want, rels
    assert got["vectors"] == ("close", "")
    cfg = nbnumba.parse_argv(base + ["-dmin", "1e20"])
    from nbnumba.model import build_model
    assert fz._vectors_skip(cfg, build_model(cfg), "rotation") == (
        "-dmin keeps only sub-paths at S = 0 exactly")


def test_fuzz_metamorphic_curved_detector_is_made_of_its_vectors(tmp_path, monkeypatch):
    """The default mode's -curved_det sphere (docs/quirks.md #21) is made of the
    detector's vectors: restated as vectors, and turned by a random rotation,
    a tilted XDS line renders the same image ('vectors', 'rotation' close);
    nanoBragg's lab-frame map, under -c_parity, is no function of them
    (skipped there)."""
    import random
    fz = _fuzz_tool()
    monkeypatch.chdir(tmp_path)
    base = fz._parity_base(8) + ["-nonoise", "-nopgm", "-default_F", "100", "-curved_det",
                                 "-xds", "-twotheta", "8", "-detector_rotx", "3",
                                 "-detector_thick", "100", "-thicksteps", "2"]
    what, rels = fz.metamorphic_check(base, random.Random(2), cwd=str(tmp_path))
    got = {r[0]: r[1] for r in rels}
    assert what == "run" and got["vectors"] == got["rotation"] == "close", rels
    from nbnumba.model import build_model
    cfg = nbnumba.parse_argv(base + ["-c_parity"])
    assert fz._vectors_skip(cfg, build_model(cfg), "vectors").startswith(
        "-curved_det under -c_parity")



def test_fuzz_metamorphic_detector_doubles_an_implied_sensor_thickness(tmp_path, monkeypatch):
    """A layer count with a negative -detector_thick (not given) takes a 0.5 um
    sensor (nanoBragg.c's), a length no flag of the line states: the doubled
    line doubled -detector_abs over the same 0.5 um and halved the image
    (tools/fuzz.py metamorphic, seed 178, 'detector' failed).  The doubled
    line now states the thickness, 1 um, and the relation holds bit for bit."""
    fz = _fuzz_tool()
    monkeypatch.chdir(tmp_path)
    base = fz._parity_base(8) + ["-nonoise", "-nopgm", "-default_F", "100"]
    line = base + ["-detector_abs", "300", "-detector_thicksteps", "1", "-detector_thick", "-1"]
    from nbnumba.model import build_model
    assert build_model(nbnumba.parse_argv(line)).steps.detector_thick == 0.5e-6
    what, rels = fz.metamorphic_check(line, random.Random(0), cwd=str(tmp_path))
    got = {r[0]: r[1:] for r in rels}
    assert what == "run" and got["detector"] == ("exact", ""), rels


def test_fuzz_metamorphic_rotation_skips_a_single_drawn_mosaic_domain(tmp_path, monkeypatch):
    """The default mode draws every mosaic domain in the lab frame, a single
    one too (docs/quirks.md #29): -mosaic 0.5 -mosaic_dom 1 is a crystal
    turned by it, which a turned frame does not turn ('rotation' failed,
    396 of 400 pixels: tools/fuzz.py metamorphic, seed 178).  'rotation' is
    skipped there ('vectors', in the same frame, still holds); under
    -c_parity the one domain is the identity, and without a spread every
    domain is, so neither is skipped."""
    fz = _fuzz_tool()
    monkeypatch.chdir(tmp_path)
    base = fz._parity_base(8) + ["-nonoise", "-nopgm", "-default_F", "100"]
    i = base.index("-cell") + 1
    base[i:i + 6] = ["70", "80", "90", "90", "90", "90"]  # (-c_parity's own cell, dual too)
    line = base + ["-mosaic", "0.5", "-mosaic_dom", "1"]
    what, rels = fz.metamorphic_check(line, random.Random(0), cwd=str(tmp_path))
    got = {r[0]: r[1:] for r in rels}
    assert what == "run" and got["vectors"] == ("close", ""), rels
    assert got["rotation"] == ("skipped", "mosaic domains: drawn in the lab frame"), rels
    from nbnumba.model import build_model
    for extra in (["-c_parity"], ["-mosaic", "0"]):
        cfg = nbnumba.parse_argv(line + extra)
        assert fz._vectors_skip(cfg, build_model(cfg), "rotation") is None, extra


def test_fuzz_modes_omega_sum_takes_the_subnormal_rounding(tmp_path, monkeypatch):
    """At -close_distance 1e-320 every solid angle is subnormal; the default
    mode divides the sum by 9 sub-pixels, -c_parity by 18 steps (two
    divergence sources; docs/quirks.md #10), and 18/9 of the second quotient
    lay one step of 2^-1074 off the first (tools/fuzz.py modes, seed 177: a
    'fail' on omega_sum 1.65e-318).  Each division rounds by half a step
    there, which the check now allows; a sum two steps beyond it is reported."""
    from nbnumba import api
    fz = _fuzz_tool()
    monkeypatch.chdir(tmp_path)
    base = fz._parity_base(20) + ["-nonoise", "-nopgm"]
    i = base.index("-cell") + 1
    base[i:i + 6] = fz.MODES_CELL
    line = base + ["-oversample", "3", "-close_distance", "1e-320", "-hdivstep", "3",
                   "-default_F", "100"]
    assert fz.modes_check(line) == ("agree", "")
    rd, rc = api.simulate_argv(line), api.simulate_argv(line + ["-c_parity"])
    assert 0.0 < rd.stats["omega_sum"] < 2.0 ** -1022 and rc.model.nsteps == 18
    assert fz.modes_stats_check(rd, rc) == []
    rd.stats["omega_sum"] += 4 * 2.0 ** -1074      # (the bound: 2 steps)
    assert [t.split(" (")[0] for t in fz.modes_stats_check(rd, rc)] == [
        "omega_sum %.12g against %.12g" % (rd.stats["omega_sum"],
                                           rc.stats["omega_sum"] * 18 / 9)]

def test_curved_detector_deep_sensor_same_in_a_turned_frame(tmp_path, monkeypatch):
    """The default mode's -curved_det moves a sensor layer's point outward
    along its ray by the layer's depth (physics.sphere_position takes the
    surface point and the depth apart): with the default mu = 1/thickness
    the image does not depend on the thickness, stated in the lab frame or in
    a turned one (tools/fuzz.py's 'rotation' relation, META_CLOSE_REL).  When
    the depth went into the flat position, its offsets along fdet and sdet
    carried eps times the depth in a turned frame: with -misset 180 0 0.5, 2
    layers and 16 pixels, -detector_thick 1e15 moved pixels by 6.7e-4 of their
    value, 1e18 by 1.9 times it and 1e100 by 1.2e4 times it (tools/fuzz.py
    metamorphic, seed 168)."""
    import random
    fz = _fuzz_tool()
    monkeypatch.chdir(tmp_path)
    base = fz._parity_base(16)
    i = base.index("-cell") + 1
    base[i:i + 6] = fz.MODES_CELL
    base += ["-nonoise", "-nopgm", "-default_F", "100", "-curved_det", "-nopolar",
             "-misset", "180", "0", "0.5", "-detector_thicksteps", "2"]
    thin = nbnumba.simulate_argv(base + ["-detector_thick", "1000"], cwd=str(tmp_path))
    want = np.asarray(thin.float_image, dtype=np.float64)
    assert np.isfinite(want).all() and want.max() > 100.0, want.max()
    turn = fz._random_rotation(random.Random(0))
    for thick in ("1000", "1e15", "1e18", "1e100"):
        argv = base + ["-detector_thick", thick]
        full = nbnumba.simulate_argv(argv, cwd=str(tmp_path))
        got = np.asarray(full.float_image, dtype=np.float64)
        assert fz._meta_close(got, want, "thickness") == ("close", ""), thick
        line = fz._vectors_line(argv, full.model, turn, str(tmp_path))
        turned = np.asarray(nbnumba.simulate_argv(line, cwd=str(tmp_path)).float_image,
                            dtype=np.float64)
        assert fz._meta_close(turned, got, "rotation") == ("close", ""), thick


def _gpu_gradients_off_by(real_gpu, rel):
    """autodiff._Run._gpu whose backward results (the image's gradient terms)
    are scaled by 1 + rel: a GPU adjoint that is off, for device_check to catch."""
    def off(self, g=None, want_F=False):
        res = real_gpu(self, g, want_F)
        if g is None:
            return res
        return (res[0], res[1] * (1.0 + rel), res[2] * (1.0 + rel)) + tuple(res[3:])
    return off


def test_fuzz_device_agrees_and_a_wrong_kernel_is_reported(tmp_path, monkeypatch, host_build):
    """tools/fuzz.py device: on 8 drawn lines the CUDA source's host build
    gives numba's images (float64 and float32), pixel values and, through the
    fake CuPy, autodiff's image and gradients; a host image off by 1e-5, GPU
    gradients off by 1e-7 and float64 pixel values off by 1e-11 are reported;
    the fake CuPy is gone afterwards."""
    pytest.importorskip("torch")
    import io
    from nbnumba import autodiff
    from nbnumba.kernels import gpu
    fz = _fuzz_tool()
    monkeypatch.chdir(tmp_path)
    fz._inputs(tmp_path)
    host = gpu.HostKernel(host_build[0])
    had_cupy = "cupy" in sys.modules
    out = io.StringIO()
    counts = fz.fuzz_device(1, 8, out, host)
    assert counts["fail"] == 0 and counts["agree"] >= 5, (counts, out.getvalue())
    assert ("cupy" in sys.modules) == had_cupy
    real_gpu = autodiff._Run._gpu
    monkeypatch.setattr(autodiff._Run, "_gpu", _gpu_gradients_off_by(real_gpu, 1e-7))
    out = io.StringIO()
    counts = fz.fuzz_device(1, 8, out, host)
    fails = [ln for ln in out.getvalue().splitlines() if ln.startswith("FAIL")]
    # (the lines that autodiff accepts: the others have no gradients to compare)
    assert counts["fail"] == len(fails) >= 2, (counts, out.getvalue())
    assert all("image" not in ln.split(" :: ")[1] for ln in fails), fails
    monkeypatch.setattr(autodiff._Run, "_gpu", real_gpu)
    real_render = host.render
    monkeypatch.setattr(host, "render", lambda m, dt=np.float64: (
        lambda r: (r[0] * np.float32(1.0 + 1e-5), r[1]))(real_render(m, dt)))
    out = io.StringIO()
    counts = fz.fuzz_device(1, 8, out, host)
    fails = [ln for ln in out.getvalue().splitlines() if ln.startswith("FAIL")]
    assert counts["fail"] == len(fails) >= 5, (counts, out.getvalue())
    assert all("float64 image" in ln and "float32 image" in ln for ln in fails), fails
    # a float64 pixel value off by 1e-11, below the float32 image's resolution
    monkeypatch.setattr(host, "render", real_render)
    real_pixel = host.pixel
    monkeypatch.setattr(host, "pixel", lambda *a, **k: (
        lambda r: (r[0] * (1.0 + 1e-11),) + tuple(r[1:]))(real_pixel(*a, **k)))
    out = io.StringIO()
    counts = fz.fuzz_device(1, 8, out, host)
    fails = [ln for ln in out.getvalue().splitlines() if ln.startswith("FAIL")]
    assert counts["fail"] == len(fails) >= 5, (counts, out.getvalue())
    assert all(":: pixel (" in ln and "image" not in ln for ln in fails), fails



def test_fuzz_device_at_a_lattice_pole_weighs_the_cpu_own_spread(tmp_path, monkeypatch,
                                                                 host_build):
    """tools/fuzz.py device, seed 299: with N between integers one sub-path
    lies 5e-8 from a pole of sin(N pi h)/sin(pi h); that pixel, 3e8 times the
    median, moves 6.8e-8 per ulp of -lambda on the CPU alone, and the device's
    h a few ulps off gave 1.36e-7, past DEVICE_POLE_REL (a 'fail' before).
    The CPU's own spread under DEVICE_SPREAD_ULPS ulps of the wavelength
    clears it; GPU gradients off by 1e-5 are still reported."""
    pytest.importorskip("torch")
    from nbnumba import autodiff
    from nbnumba.kernels import gpu
    from nbnumba.testing.fake_cupy import make_fake_cupy
    fz = _fuzz_tool()
    monkeypatch.chdir(tmp_path)
    fz._inputs(tmp_path)
    host = gpu.HostKernel(host_build[0])
    monkeypatch.setitem(sys.modules, "cupy", make_fake_cupy(host))
    gpu._MODULES.clear()
    argv = list(fz.AD_BASE) + (
        "-mosaic 0.4 -mosaic_dom 4 -mosaic_seed 5 -denzo -precision single -misset random "
        "-misset_seed 7 -divergence 0.2 -divsteps 2 -spindle_axis 0.1 0.2 1 -phi 0 -osc 1 "
        "-phisteps 2 -default_F 100").split()
    vals = {"vdivrange": [0.2688487738322392],
            "N": [3.6971219993869076, 3.592944858692088, 3.7159870205422916]}
    try:
        assert fz.device_check(argv, vals, list(vals), host, random.Random(0)) == {}
        monkeypatch.setattr(autodiff._Run, "_gpu", _gpu_gradients_off_by(autodiff._Run._gpu, 1e-5))
        bad = fz.device_check(argv, vals, list(vals), host, random.Random(0))
        assert "N" in bad and "vdivrange" in bad and "autodiff image" not in bad, bad
    finally:
        gpu._MODULES.clear()


def test_mat_at_a_vanishing_wavelength_one_line_no_warning(work, capsys):
    # the MOSFLM matrix is scaled by 1/lambda: -energy 1e308 overflowed its
    # cross products with a numpy RuntimeWarning before the clean error
    # (tools/fuzz.py, seed 10)
    (work / "a.mat").write_text("0.0142 0 0\n0 0.0125 0\n0 0 0.0111\n0 0 0\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        refused(BASE + ["-mat", "a.mat", "-energy", "1e308"], capsys,
                "the -mat matrix at a wavelength of 1.23984e-304 A under- or overflows", work)
    assert not caught, [str(w.message) for w in caught]


def test_detector_abs_that_underflows_is_an_infinite_mu():
    # as the C's 1/(v*1e-6): 1e-320 um underflows to 0 m, whose inverse was a
    # ZeroDivisionError in the flag parser
    import math
    import nbnumba
    assert nbnumba.parse_argv(BASE + ["-detector_abs", "1e-320"]).detector_mu == math.inf
    assert nbnumba.parse_argv(BASE + ["-detector_abs", "50"]).detector_mu == 1.0 / 50e-6


def test_twotheta_179_explains_the_negative_image(work, capsys):
    line = refused(BASE + ["-twotheta", "179"], capsys, "faces away from the sample", work)
    assert "negative" in line


def test_source_at_origin_refused(work, capsys):
    (work / "src.txt").write_text("-10 0 0 1 6.2e-10\n0 0 0 1 6.2e-10\n")
    refused(BASE + ["-sourcefile", "src.txt"], capsys, "src.txt: source 2", work)


def test_mat_with_huge_values_is_one_clean_line(work, capsys):
    (work / "big.mat").write_text("1e300 0 0\n0 1e300 0\n0 0 1e300\n")
    args = [a for a in BASE]
    i = args.index("-cell")
    del args[i:i + 7]
    with _no_warnings():
        refused(args + ["-mat", "big.mat"], capsys, "big.mat", work)


class _no_warnings:
    def __enter__(self):
        import warnings
        self.cm = warnings.catch_warnings(record=True)
        self.rec = self.cm.__enter__()
        warnings.simplefilter("always")

    def __exit__(self, *exc):
        self.cm.__exit__(*exc)
        assert not self.rec, [str(w.message) for w in self.rec]
        return False


# ---------------------------------------------------------------------------
# data loss: inputs, the Fdump.bin cache, special files
# ---------------------------------------------------------------------------

def test_hkl_named_like_the_fdump_cache_is_not_overwritten(work, capsys):
    (work / "Fdump.bin").write_bytes((work / "x.hkl").read_bytes())
    refused(BASE + ["-hkl", "Fdump.bin"], capsys, "Fdump.bin", work)


def test_mat_named_like_the_fdump_cache_is_not_overwritten(work, capsys):
    (work / "Fdump.bin").write_text("0.01 0 0\n0 0.01 0\n0 0 0.01\n")
    args = BASE[7:] + ["-mat", "Fdump.bin", "-hkl", "x.hkl"]
    refused(args, capsys, "Fdump.bin", work)


def test_output_named_like_the_fdump_cache_refused(work, capsys):
    refused(BASE + ["-hkl", "x.hkl", "-floatfile", "Fdump.bin"], capsys, "Fdump.bin", work)



@pytest.mark.parametrize("flag", ["-intfile", "-floatfile"])
def test_output_over_the_fdump_cache_that_the_run_reads_is_refused(work, capsys, flag):
    """Without -hkl the run reads F from an existing Fdump.bin (as nanoBragg.c
    does), so the cache is an input: an output of that name used to replace it."""
    from nbnumba.io.hkl import HKLGrid, write_fdump
    F = np.full((3, 3, 3), 7.0)      # (the grid is one larger than the index ranges, as in C)
    write_fdump(str(work / "Fdump.bin"), HKLGrid(0, 1, 0, 1, 0, 1, F, hkls=8))
    refused(BASE + [flag, "Fdump.bin"], capsys, "Fdump.bin", work)



def test_left_handed_mat_matrix_renders_as_its_lattice(tmp_path):
    """A left-handed -mat matrix (negative cell volume) was refused as an under- or
    overflow; nanoBragg.c renders it.  Its lattice is that of the right-handed
    matrix with a* (its first column) negated, h -> -h, and sin(N pi h)/sin(pi h)
    is even in h, so with default_F the image is the same; the default mode warns."""
    rows = [[-0.0097, 0.0012, 0.0003], [0.0011, 0.0088, -0.0040], [0.0004, 0.0036, 0.0091]]
    (tmp_path / "L.mat").write_text("".join("%r %r %r\n" % tuple(r) for r in rows))
    # (a MOSFLM matrix holds a*, b*, c* as its columns)
    (tmp_path / "R.mat").write_text("".join("%r %r %r\n" % (-r[0], r[1], r[2]) for r in rows))
    argv = "-N 5 -default_F 100 -distance 100 -detpixels 24 -nonoise -nopgm -lambda 1 -mat".split()
    left = nbnumba.simulate_argv(argv + ["L.mat"], cwd=str(tmp_path))
    right = nbnumba.simulate_argv(argv + ["R.mat"], cwd=str(tmp_path))
    assert left.float_image.sum() > 0
    np.testing.assert_allclose(left.float_image, right.float_image, rtol=1e-6)
    assert any("left-handed" in line for line in left.log)
    assert not any("left-handed" in line for line in right.log)


def test_stdout_redirected_to_the_target_is_refused(tmp_path):
    log = tmp_path / "log.txt"
    log.write_text("previous log\n")
    with open(log, "a") as fh:
        r = subprocess.run([sys.executable, "-m", "nbnumba.cli", *BASE, "-floatfile", str(log)],
                           cwd=tmp_path, env=env(), stdout=fh, stderr=subprocess.PIPE, text=True,
                           timeout=120)
    assert r.returncode == 2
    assert "standard output" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert log.read_text() == "previous log\n"
    assert temps(tmp_path) == []



def test_output_through_a_loop_of_links_is_refused(work, capsys):
    """fopen() fails on a loop of symbolic links (ELOOP); the non-strict realpath
    returned the loop's own name, and the run replaced the link with a file."""
    os.symlink("loop2", str(work / "loop1"))
    os.symlink("loop1", str(work / "loop2"))
    line = refused(BASE + ["-floatfile", "loop1"], capsys, "loop1", work)
    assert "symbolic links" in line
    assert os.readlink(str(work / "loop1")) == "loop2"


def test_char_device_symlink_written_in_place(tmp_path):
    link = tmp_path / "nul"
    link.symlink_to(os.devnull)
    A.atomic_write_bytes(link, b"x" * 1000)
    with A.output_set():
        A.atomic_write_bytes(link, b"y" * 10)
        A.atomic_write_bytes(tmp_path / "real.bin", b"z")
    assert link.is_symlink() and stat.S_ISCHR(os.stat(link).st_mode)
    assert (tmp_path / "real.bin").read_bytes() == b"z"
    assert temps(tmp_path) == []


def test_fifo_without_reader_refused_and_still_a_fifo(tmp_path):
    fifo = tmp_path / "ff"
    os.mkfifo(fifo)
    old = tmp_path / "a.bin"
    old.write_bytes(b"old")
    with pytest.raises(A.OutputFileError, match="ff.*FIFO with no reader"):
        with A.output_set():
            A.atomic_write_bytes(old, b"new")
            A.atomic_write_bytes(fifo, b"data")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert old.read_bytes() == b"old"           # the whole set rolled back
    assert temps(tmp_path) == []


def test_fifo_with_reader_receives_the_bytes(tmp_path):
    fifo = tmp_path / "ff"
    os.mkfifo(fifo)
    got = []
    opened = threading.Event()

    def reader():
        fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        opened.set()
        chunks, deadline = [], time.monotonic() + 20
        # until the writer has opened, read() returns b"" (no writer); after data, b"" is EOF
        while time.monotonic() < deadline:
            try:
                b = os.read(fd, 65536)
            except BlockingIOError:
                time.sleep(0.005)
                continue
            if b:
                chunks.append(b)
            elif chunks:
                break
            else:
                time.sleep(0.005)
        os.close(fd)
        got.append(b"".join(chunks))
    t = threading.Thread(target=reader)
    t.start()
    opened.wait(10)
    A.atomic_write_bytes(fifo, b"payload" * 100)
    t.join(10)
    assert got == [b"payload" * 100]
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full on this system")
def test_full_device_fails_cleanly_and_keeps_the_set(tmp_path):
    link = tmp_path / "full"
    link.symlink_to("/dev/full")
    old = tmp_path / "a.bin"
    old.write_bytes(b"old")
    with pytest.raises(A.OutputFileError, match="full.*No space left"):
        with A.output_set():
            A.atomic_write_bytes(old, b"new")
            A.atomic_write_bytes(link, b"x" * 100000)
    assert old.read_bytes() == b"old"
    assert link.is_symlink() and stat.S_ISCHR(os.stat(link).st_mode)
    assert temps(tmp_path) == []


def test_cli_floatfile_to_char_device_symlink(work, capsys):
    (work / "nul").symlink_to(os.devnull)
    # several outputs may share a character device
    rc = cli.main(BASE + ["-floatfile", "nul", "-pgmfile", "nul"])
    assert rc == 0, capsys.readouterr().err
    assert (work / "nul").is_symlink() and stat.S_ISCHR(os.stat(work / "nul").st_mode)
    assert (work / "intimage.img").read_bytes()[:1] == b"{"
    assert temps(work) == []


# ---------------------------------------------------------------------------
# all-or-nothing output sets
# ---------------------------------------------------------------------------

def test_failing_noise_write_keeps_every_old_file(work, capsys, monkeypatch):
    import nbnumba.outputs as O
    real = O.write_smv

    def failing(path, *a, **k):
        if "noise" in os.fspath(path):
            raise A.OutputFileError("cannot write '%s': No space left on device" % path)
        return real(path, *a, **k)
    monkeypatch.setattr(O, "write_smv", failing)
    refused(BASE, capsys, "noiseimage.img", work)


def _second_rename_fails(tmp_path, monkeypatch, errno_, text):
    """Write a.bin and b.bin as one output set whose rename of b.bin fails
    with ``errno_``; the OutputFileError must name b.bin and ``text``."""
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    real = os.replace
    calls = []

    def flaky(src, dst):
        calls.append(dst)
        if os.fspath(dst).endswith("b.bin") and len(calls) == 2:
            raise OSError(errno_, text)
        return real(src, dst)
    monkeypatch.setattr(A.os, "replace", flaky)
    with pytest.raises(A.OutputFileError, match="b.bin.*" + text):
        with A.output_set():
            A.atomic_write_bytes(a, b"new a")
            A.atomic_write_bytes(b, b"new b")
    monkeypatch.setattr(A.os, "replace", real)
    return a, b


def test_commit_failure_rolls_back_renames(tmp_path, monkeypatch):
    (tmp_path / "a.bin").write_bytes(b"old a")
    (tmp_path / "b.bin").write_bytes(b"old b")
    a, b = _second_rename_fails(tmp_path, monkeypatch, 28, "No space left on device")
    assert a.read_bytes() == b"old a" and b.read_bytes() == b"old b"
    assert temps(tmp_path) == []


def test_commit_failure_rolls_back_without_hard_links(tmp_path, monkeypatch):
    """On a file system without hard links (vfat, exFAT, some network shares)
    the old files are backed up by a copy: a failed rename in the set left
    the first file's old contents lost and its new one deleted (no file at
    all), and could delete the failing target's old file."""
    import errno
    (tmp_path / "a.bin").write_bytes(b"old a")
    (tmp_path / "b.bin").write_bytes(b"old b")
    os.chmod(tmp_path / "a.bin", 0o640)

    def no_links(src, dst):
        raise OSError(errno.EPERM, "Operation not permitted")
    monkeypatch.setattr(A.os, "link", no_links)
    a, b = _second_rename_fails(tmp_path, monkeypatch, errno.EIO, "Input/output error")
    assert a.read_bytes() == b"old a" and b.read_bytes() == b"old b"
    assert os.stat(a).st_mode & 0o777 == 0o640
    assert temps(tmp_path) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "b.bin"]
    # and without a failure the set is written as usual
    with A.output_set():
        A.atomic_write_bytes(a, b"new a")
        A.atomic_write_bytes(b, b"new b")
    assert a.read_bytes() == b"new a" and b.read_bytes() == b"new b"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "b.bin"]


def test_outputs_on_a_file_system_that_refuses_chmod(tmp_path, monkeypatch):
    """vfat (mounted without "quiet") refuses a chmod that changes the x bits
    its mount gave every file: the temporary's fchmod to the old file's mode
    (or 0666 & ~umask) failed the whole output set with "Operation not
    permitted", where fopen() writes.  The mode is now kept best-effort; other
    errors still fail the write."""
    import errno
    from nbnumba.outputs import write_outputs
    monkeypatch.chdir(tmp_path)

    def refused(fd, mode):
        raise OSError(errno.EPERM, "Operation not permitted")
    monkeypatch.setattr(A.os, "fchmod", refused)
    A.atomic_write_bytes(tmp_path / "a.bin", b"new")
    assert (tmp_path / "a.bin").read_bytes() == b"new"
    res = nbnumba.simulate_argv(BASE + ["-detpixels", "8"])
    written = write_outputs(res)
    assert len(written) == 4 and all(os.path.getsize(p) > 0 for p in written)
    assert temps(tmp_path) == []

    def broken(fd, mode):
        raise OSError(errno.EIO, "Input/output error")
    monkeypatch.setattr(A.os, "fchmod", broken)
    with pytest.raises(A.OutputFileError, match="b.bin.*Input/output error"):
        A.atomic_write_bytes(tmp_path / "b.bin", b"new")
    assert temps(tmp_path) == [] and not (tmp_path / "b.bin").exists()


def test_stale_temps_of_dead_processes_are_removed(tmp_path):
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    dead = tmp_path / (".out.bin.nbnumba-%d.tmp" % p.pid)
    dead.write_bytes(b"left by SIGKILL")
    live = tmp_path / (".out.bin.nbnumba-%d-3.tmp" % os.getppid())
    live.write_bytes(b"another run, still writing")
    other = tmp_path / ".unrelated.tmp"
    other.write_bytes(b"not ours")
    A.atomic_write_bytes(tmp_path / "out.bin", b"new")
    assert not dead.exists()
    assert live.exists() and other.exists()
    assert (tmp_path / "out.bin").read_bytes() == b"new"


def test_outputs_whose_names_fill_name_max_are_written(tmp_path, monkeypatch):
    """A -floatfile of 254 bytes (255 with the CLI's others), which nanoBragg.c
    writes, failed with "File name too long" after the render: its temporary
    name added 25 bytes.  A long name's temporaries now carry its first bytes
    and a hash; stale ones of it are still found and removed."""
    monkeypatch.chdir(tmp_path)
    names = {"-floatfile": "f" * 254, "-intfile": "i" * 255, "-noisefile": "n" * 240 + ".img",
             "-pgmfile": "\u00e9" * 127}         # 254 bytes of UTF-8
    argv = BASE + ["-detpixels", "8"] + [w for kv in names.items() for w in kv]
    assert cli.main(argv) == 0
    for flag, name in names.items():
        assert (tmp_path / name).stat().st_size > 0, flag
    assert sorted(os.listdir(tmp_path)) == sorted(names.values())
    base = "g" * 250
    t = A.temp_name(base)
    assert len(os.fsencode(t)) <= A.NAME_MAX and A.is_our_temp(t, base)
    assert not A.is_our_temp(t, "g" * 249) and A.is_our_temp(A.temp_name("short"), "short")
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    dead = t.replace("-%d-" % os.getpid(), "-%d-" % p.pid)
    (tmp_path / dead).write_bytes(b"left by SIGKILL")
    A.atomic_write_bytes(tmp_path / base, b"new")
    assert sorted(os.listdir(tmp_path)) == sorted(list(names.values()) + [base])


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_during_writes_cleans_temps(tmp_path, sig, code):
    """The PGM writer is made slow; the signal arrives while float and int are staged."""
    for n in OUTS:
        (tmp_path / n).write_bytes(b"OLD " + n.encode())
    # Ctrl-C as a terminal delivers it: a shell's background job inherits
    # SIGINT ignored, and the CLI (like any Unix program) keeps it so
    script = (
        "import signal, sys, time, nbnumba.outputs as O\n"
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "real = O.write_pgm\n"
        "def slow(*a, **k):\n"
        "    print('STAGED', flush=True); time.sleep(60); return real(*a, **k)\n"
        "O.write_pgm = slow\n"
        "from nbnumba import cli\n"
        "sys.exit(cli.main())\n")
    p = subprocess.Popen([sys.executable, "-c", script, *BASE], cwd=tmp_path, env=env(),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in p.stdout:
            if line.startswith("STAGED"):
                break
        assert any(".floatimage.bin.nbnumba-" in n for n in os.listdir(tmp_path))
        p.send_signal(sig)
        _, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == code, err
    assert "interrupted" in err and "Traceback" not in err
    assert temps(tmp_path) == []
    for n in OUTS:
        assert (tmp_path / n).read_bytes() == b"OLD " + n.encode()


# ---------------------------------------------------------------------------
# non-finite images
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("extra, needle", [
    (["-default_F", "1e21"], "structure factor"),
    (["-default_F", "1e200"], "overflows double precision"),
    (["-fluence", "1e300"], "fluence"),
    (["-water", "1e30"], "water"),
    # a Kahn factor far outside [-1, 1] scales the polarization factor (the
    # default mode refuses any outside it: test_a_kahn_factor_outside_one)
    (["-polar", "1e300", "-c_parity"], "the largest term is the polarization (-polar 1e+300)"),
    # no term overflows: the geometry did (mu = inf here); the message used to
    # blame the product of the terms, about 1e8, for exceeding 3.4e38
    (["-detector_abs", "1e-320", "-detector_thick", "100"],
     "no intensity term overflows (their product is about 1e8), so a value of the geometry"),
])
def test_non_finite_image_names_the_term(work, capsys, extra, needle):
    # a term that alone overflows double precision is refused before the render
    line = refused(BASE + extra, capsys, "finite", work)
    assert needle in line


def test_hkl_with_huge_F_names_the_term(work, capsys):
    (work / "big.hkl").write_text("0 0 0 1e300\n1 1 1 5\n")
    line = refused(BASE + ["-hkl", "big.hkl"], capsys, "cannot be finite", work)
    assert "-hkl" in line and "structure factor" in line and "double precision" in line


# ---------------------------------------------------------------------------
# memory bombs: refused within 2 s and 300 MB
# ---------------------------------------------------------------------------

BOMBS = [
    ["-dispsteps", "2000000000", "-dispersion", "10"],
    ["-hdivrange", "1", "-hdivstep", "1e-9"],
    ["-hdivsteps", "30000", "-vdivsteps", "30000", "-divergence", "1"],
    ["-detector_thicksteps", "2000000000", "-detector_thick", "100"],
    # ~24 GB: refused on any machine with less available; -max_memory makes it deterministic
    ["-hkl", "bomb.hkl", "-max_memory", "8000"],
]


def test_memory_bombs_refused_fast_and_small(tmp_path):
    (tmp_path / "bomb.hkl").write_text("0 0 0 5\n1000 1000 1000 5\n")
    assert len((tmp_path / "bomb.hkl").read_bytes()) < 30
    script = (
        "import io, json, sys, time, contextlib\n"
        "from nbnumba import cli\n"
        "base, bombs = json.loads(sys.argv[1])\n"
        "out = []\n"
        "for b in bombs:\n"
        "    err = io.StringIO(); t = time.perf_counter()\n"
        "    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):\n"
        "        rc = cli.main(base + b)\n"
        "    out.append([rc, time.perf_counter() - t, err.getvalue()])\n"
        # VmHWM: peak RSS of this process image (ru_maxrss would carry the parent's
        # peak across exec on Linux)
        "rss = [int(l.split()[1]) * 1024 for l in open('/proc/self/status') if l.startswith('VmHWM')][0]\n"
        "print(json.dumps([out, rss]))\n")
    import json
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", script, json.dumps([BASE, BOMBS])], cwd=tmp_path,
                       env=env(), capture_output=True, text=True, timeout=120)
    wall = time.perf_counter() - t0
    assert r.returncode == 0, r.stderr
    results, rss = json.loads(r.stdout.strip().splitlines()[-1])
    for bomb, (rc, secs, err) in zip(BOMBS, results):
        assert rc == 2, (bomb, err)
        assert len(err.strip().splitlines()) == 1 and "memory" in err, err
        assert secs < 2.0, (bomb, secs)
    assert "bomb.hkl" in results[-1][2] and "24.3 GB" in results[-1][2]
    assert rss < 300e6, rss
    assert wall < 2.0 * len(BOMBS) + 10      # interpreter start-up included
    assert os.listdir(tmp_path) == ["bomb.hkl"]


def test_max_memory_flag_refuses_with_the_estimate(work, capsys):
    line = refused(BASE + ["-max_memory", "50"], capsys, "-max_memory", work)
    assert "needs about" in line and "50 MB" in line


def test_memory_estimate_counts_sources_times_steps():
    from nbnumba.flags import parse_argv
    from nbnumba.sampling import resolve_steps
    from nbnumba.validate import estimate
    cfg = parse_argv(BASE + ["-hdivsteps", "300", "-vdivsteps", "300", "-divergence", "1",
                             "-dispsteps", "10", "-dispersion", "1"])
    items = estimate(cfg, 64, resolve_steps(cfg))
    src = [b for b, what in items if "sources" in what][0]
    assert src >= 300 * 300 * 10 * 400


def test_available_memory_is_read_again_after_its_ttl(monkeypatch):
    """available_memory reads /proc and /sys at most every AVAILABLE_TTL
    seconds; a later call reads again (a machine whose memory fills up is
    noticed within that time)."""
    from nbnumba import validate as V
    reads = []
    clock = [1000.0]
    monkeypatch.setattr(V, "_AVAILABLE", [float("-inf"), 0])
    monkeypatch.setattr(V, "_read_available_memory", lambda: reads.append(1) or 10 ** 9 * len(reads))
    monkeypatch.setattr(V, "_clock", lambda: clock[0])
    assert V.available_memory() == 10 ** 9 and len(reads) == 1
    clock[0] += 0.9 * V.AVAILABLE_TTL
    assert V.available_memory() == 10 ** 9 and len(reads) == 1
    clock[0] += 0.2 * V.AVAILABLE_TTL
    assert V.available_memory() == 2 * 10 ** 9 and len(reads) == 2
    # the real reading is a positive number of bytes
    assert V._read_available_memory() > 0


# ---------------------------------------------------------------------------
# API
# ---------------------------------------------------------------------------

def test_api_errors_are_nberrors():
    import nbnumba
    from nbnumba.flags import HelpRequested
    assert issubclass(HelpRequested, NBError)
    with pytest.raises(HelpRequested):
        nbnumba.parse_argv(["-h"])
    cfg = nbnumba.parse_argv(BASE)
    with pytest.raises(ConfigError, match="backend"):
        nbnumba.simulate(cfg, backend="tpu")
    with pytest.raises(ConfigError, match="-distance: expected a number"):
        nbnumba.simulate_argv(BASE, overrides={"distance": "abc"})
    # (an array was compared elementwise, a ValueError; False, 0 and "" ran on the CPU)
    for bad in (np.ones(3), False, 0, ""):
        with pytest.raises(ConfigError, match="^backend must be one of cpu|cuda, got "):
            nbnumba.simulate(cfg, backend=bad)
    with pytest.raises(ConfigError, match="not a Config field"):
        nbnumba.simulate_argv(BASE, overrides={"no_such_field": 1})
    with pytest.raises(ConfigError, match="-beamsize"):
        nbnumba.simulate_argv(BASE + ["-beamsize", "0", "-flux", "1e12", "-exposure", "1"])
    # an integer field given a NaN or an infinity (int() of it raised inside
    # the type check)
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="-phisteps: expected an integer"):
            nbnumba.simulate_argv(BASE, overrides={"phisteps": bad})
    # beyond a C int (the flags' range), and a pixel whose detector size overflows
    with pytest.raises(ConfigError, match=r"-mosaic_seed: 1e\+308 is out of a C int's range"):
        nbnumba.simulate_argv(BASE, overrides={"mosaic_seed": 1e308})
    with pytest.raises(ConfigError, match="-mosaic_dom: 4294967296 is out of a C int's range"):
        nbnumba.simulate_argv(BASE, overrides={"mosaic_domains": 2 ** 32})
    with pytest.raises(ConfigError, match="-pixel 1e\\+308 m: the detector's size in pixels"):
        nbnumba.simulate_argv(BASE, overrides={"pixel_size": 1e308})


#: nonsense for a Config field, by the type of its default
_NONSENSE = {float: [float("nan"), float("inf"), -float("inf"), -1.0, 0.0, 1e300, -1e300, "abc",
                     None, True, 1e-300, np.float32(2.0), np.float32(1e-3), 10 ** 400],
             int: [-5, 0, 10 ** 12, 2.5, float("nan"), "x", None, -1, 2.0, np.float32(3.0), np.int64(2),
                   10 ** 400],
             bool: [2, "yes", None, 0, 10 ** 30, np.int64(1)],
             tuple: [(), (float("nan"), 0.0, 0.0), (0.0, 0.0, 0.0), (1.0, 2.0), "abc", None,
                     (float("inf"), 0.0, 0.0), (1, 2, 3, 4), ("a", "b", "c"), (0.0, 1.0, 10 ** 400)],
             str: ["", "bogus", None, 5],
             type(None): ["/nonexistent/x", 5, "", 3.5, np.ones(3)]}


def test_every_config_field_set_to_nonsense_through_the_api(tmp_path, monkeypatch):
    """Each Config field, set by dataclasses.replace to values of the wrong
    kind, sign or size, gives NBError or a finite image: never another
    exception (the path fields, xtal_shape, threads, mask_image and hkl_grid
    raised TypeError, KeyError, ValueError, IndexError or AttributeError),
    nor a warning (a numpy float32 length: "overflow encountered in cast")."""
    import dataclasses
    import nbnumba
    monkeypatch.chdir(tmp_path)
    base = nbnumba.parse_argv(BASE + ["-detpixels", "8", "-nonoise", "-nopgm"])
    tried = 0
    for f in dataclasses.fields(base):
        for v in _NONSENSE[type(getattr(base, f.name))]:
            cfg = dataclasses.replace(base, **{f.name: v})
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("error")
                    img = nbnumba.simulate(cfg).float_image
            except NBError as e:
                assert "\n" not in str(e).strip(), (f.name, v, str(e))
            else:
                assert np.isfinite(img).all(), (f.name, v)
            tried += 1
    assert tried > 1000
    for field, value, msg in [
            ("hklfilename", 5, "^-hkl: expected a file name, got 5$"),
            ("workdir", 3.5, "^workdir: expected a file name, got 3.5$"),
            ("xtal_shape", "bogus", "^xtal_shape: expected one of SQUARE, ROUND, GAUSS, TOPHAT"),
            ("threads", 2.5, r"^-threads: expected a whole number >= 1 \(or None"),
            ("threads", 0, "^-threads: expected a whole number >= 1"),
            # (an array seed reached the jitted generator: a numba TypingError)
            ("seed", np.ones(3), r"^-seed: expected an integer, got array\(\[1\., 1\., 1\.\]\)$"),
            ("misset_seed", 2.5, "^-misset_seed: expected an integer, got 2.5$"),
            ("seed", 2 ** 40, "^-seed: 1099511627776 is out of a C int's range"),
            ("mask_image", "m.img", "^mask_image: expected a 2-D array .* got str$"),
            ("mask_image", np.ones(64), "^mask_image: expected a 2-D array .* got ndarray$"),
            ("hkl_grid", "p.hkl", "^hkl_grid: expected an nbnumba.io.hkl.HKLGrid")]:
        with pytest.raises(ConfigError, match=msg):
            nbnumba.simulate(dataclasses.replace(base, **{field: value}))


def test_control_characters_in_a_file_stay_escaped_in_the_one_error_line(work, capsys):
    """A byte flipped to 0x1c in an HKL line (whitespace to str.split, a line
    break to str.splitlines and to some terminals) is escaped in the message
    (found by an ad hoc fuzz of mutated input files)."""
    from nbnumba.errors import InputFileError, one_line
    (work / "x.hkl").write_text("0 0 0 5\n1 0 0 1\x1c.0\n2 0 0 5\n")
    refused(BASE + ["-hkl", "x.hkl"], capsys, r"x.hkl line 2: expected 'h k l F', got '1 0 0 1\x1c.0'",
            work)
    assert str(InputFileError("a\nb\tc\x85d é")) == one_line("a\nb\tc\x85d é") == "a\\nb\\tc\\x85d é"


def test_smv_header_overflow_warning_is_one_cli_line(work, capsys):
    """The SMV reader's warning (a header text past HEADER_BYTES, read as
    nanoBragg reads it) is printed by the CLI as 'nbnumba: warning: ...', one
    line, not Python's file:line format with a source line."""
    n = 8
    head = ("{\nHEADER_BYTES=512;\nDIM=2;\nBYTE_ORDER=little_endian;\nTYPE=unsigned_short;\n"
            "SIZE1=%d;\nSIZE2=%d;\nPIXEL_SIZE=0.1;\n" % (n, n)) + "X" * 600 + ";\n}\f"
    pix = b"".join((1).to_bytes(2, "little") for _ in range(n * n))
    raw = head.encode()
    (work / "m.img").write_bytes(raw[:512] + raw[512:] + pix)
    rc = cli.main(BASE + ["-mask", "m.img", "-nonoise", "-nopgm"])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines and lines[0].startswith("nbnumba: warning: m.img: SMV header text runs past "
                                         "HEADER_BYTES=512"), err
    assert "RuntimeWarning" not in err and ".py:" not in err, err
    assert rc == 0 and len(lines) == 1, err


def test_warnings_as_lines_formats_nbwarnings_only(capsys):
    """The CLI, nbnumba-series and the tools (guarded_main) print nbnumba's
    warnings as one 'prog: warning:' line; another warning (numpy's, say)
    keeps Python's format, which names where it came from."""
    import warnings
    from nbnumba.errors import NBWarning, warnings_as_lines
    from nbnumba.tools._common import ToolError, guarded_main
    with warnings.catch_warnings(record=True) as others:
        warnings.simplefilter("always")
        with warnings_as_lines("prog"):
            warnings.warn("mask.img: header\nruns past", NBWarning)
            warnings.warn("overflow encountered", RuntimeWarning)
    assert capsys.readouterr().err == "prog: warning: mask.img: header\\nruns past\n"
    # the other warning went on to the handler in place (here the recorder)
    assert [(w.category, str(w.message)) for w in others] == [(RuntimeWarning, "overflow encountered")]
    assert guarded_main("tool", lambda: warnings.warn("w", NBWarning) or 0) == 0
    assert capsys.readouterr().err == "tool: warning: w\n"
    # a tool's own error quoting a file's text is escaped like NBError's

    def fails():
        raise ToolError("trace.log line 3: bad key 'a\x1cb'", 3)
    assert guarded_main("tool", fails) == 3
    assert capsys.readouterr().err == "tool: error: trace.log line 3: bad key 'a\\x1cb'\n"


def test_two_threads_with_workqueue_layer(tmp_path):
    script = (
        "import threading, nbnumba\n"
        "cfg = nbnumba.parse_argv(%r)\n"
        "sums = []\n"
        "def go():\n"
        "    for _ in range(3):\n"
        "        sums.append(float(nbnumba.simulate(cfg).float_image.sum()))\n"
        "ts = [threading.Thread(target=go) for _ in range(2)]\n"
        "[t.start() for t in ts]; [t.join() for t in ts]\n"
        "print(len(sums), len(set(sums)))\n"
        % (BASE + ["-detpixels", "48", "-nonoise", "-nopgm"]))
    r = subprocess.run([sys.executable, "-c", script], cwd=tmp_path,
                       env=dict(env(), NUMBA_THREADING_LAYER="workqueue"),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["6", "1"]


# ---------------------------------------------------------------------------
# tools
# ---------------------------------------------------------------------------

def test_trace_diff_huge_number(tmp_path, capsys):
    from nbnumba.tools import trace_diff
    (tmp_path / "c.log").write_text("TRACE_C: pix0_vector 1 2 3\nTRACE_C: I_before_scaling "
                                    + "9" * 5_000_000 + "\n")
    (tmp_path / "py.log").write_text("TRACE_PY: pix0_vector 1 2 3\nTRACE_PY: I_before_scaling 5\n")
    t = time.perf_counter()
    rc = trace_diff.main([str(tmp_path / "c.log"), str(tmp_path / "py.log"), "--quiet"])
    assert time.perf_counter() - t < 5
    assert rc == 1                      # diverged, reported, no exception
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize("tool", ["compare", "probe"])
def test_tools_usage_errors_exit_2(tool, capsys):
    import importlib
    mod = importlib.import_module("nbnumba.tools." + tool)
    assert mod.main(["--bogus", "--"] + BASE) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize("tool", ["compare", "probe"])
def test_tools_timeout_outside_the_timers_range_exit_2(tool, capsys):
    # one type for both (_common.timeout_seconds): NaN and 1e308 used to fail
    # inside subprocess's wait with a traceback
    import importlib
    mod = importlib.import_module("nbnumba.tools." + tool)
    pre = ["--pixel", "1", "1"] if tool == "probe" else []
    for bad in ("nan", "1e308", "0"):
        assert mod.main(pre + ["--timeout", bad, "--"] + BASE) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "argument --timeout: must be > 0" in err[0], err


def test_probe_sincg_steps_beyond_the_sweeps_limit_exit_2(tmp_path, monkeypatch, capsys):
    # 99999999999 steps asked numpy for 745 GiB (a MemoryError traceback)
    from nbnumba.tools import probe
    monkeypatch.chdir(tmp_path)
    assert probe.main(["--pixel", "2", "2", "--sincg-steps", "99999999999", "--no-c",
                       "--"] + BASE) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["nbnumba-probe: error: --sincg-steps must be <= 10000000"]


def test_probe_refused_flags_exit_2(tmp_path, monkeypatch, capsys):
    from nbnumba.tools import probe
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("NB_C_BIN", raising=False)
    rc = probe.main(["--pixel", "1", "1", "--no-c", "--"] + BASE + ["-beamsize", "0", "-flux", "1e12"])
    err = capsys.readouterr().err
    assert rc == 2 and "-beamsize" in err and "Traceback" not in err


# ---------------------------------------------------------------------------
# series
# ---------------------------------------------------------------------------

SERIES_ENGINE = BASE + ["-osc", "1", "-nopgm"]


def series(argv, capsys):
    from nbnumba import series as S
    rc = S.main([str(a) for a in argv])
    return rc, capsys.readouterr()


def test_series_overwrite_removes_the_previous_set(tmp_path, capsys):
    d = tmp_path / "d"
    rc, _ = series(["--frames", 4, "--out", d, "--workers", 0, "--format", "smv", "--format", "cbf"]
                   + SERIES_ENGINE, capsys)
    assert rc == 0
    (d / "notes.txt").write_text("mine")
    rc, _ = series(["--frames", 2, "--out", d, "--workers", 0, "--overwrite"] + SERIES_ENGINE, capsys)
    assert rc == 0
    assert sorted(os.listdir(d)) == ["frame_00001.img", "frame_00002.img", "manifest.jsonl",
                                     "notes.txt"]


@pytest.mark.parametrize("opts, needle", [
    (["--workers", "100000"], "--workers"),
    (["--scheduler", "notaurl"], "--scheduler"),
])
def test_series_bad_options_write_nothing(tmp_path, capsys, opts, needle):
    d = tmp_path / "d"
    rc, o = series(["--frames", 2, "--out", d] + opts + SERIES_ENGINE, capsys)
    assert rc == 2 and needle in o.err and len(o.err.strip().splitlines()) == 1
    assert not d.exists()


def test_series_cuda_without_gpu_is_one_upfront_error(tmp_path, capsys, monkeypatch):
    from nbnumba.kernels import gpu
    monkeypatch.setattr(gpu, "_import_cupy", lambda: None)
    d = tmp_path / "d"
    rc, o = series(["--frames", 3, "--out", d, "--device", "cuda"] + SERIES_ENGINE, capsys)
    assert rc == 2 and "cuda" in o.err and len(o.err.strip().splitlines()) == 1
    assert not d.exists()


def test_series_second_run_on_a_locked_dir_refused(tmp_path, capsys):
    from nbnumba import series as S
    d = tmp_path / "d"
    d.mkdir()
    held = S._lock_out_dir(str(d))
    rc, o = series(["--frames", 2, "--out", d, "--workers", 0, "--resume"] + SERIES_ENGINE, capsys)
    assert rc == 2 and "another" in o.err
    assert os.listdir(d) == []
    del held
    rc, o = series(["--frames", 2, "--out", d, "--workers", 0, "--resume"] + SERIES_ENGINE, capsys)
    assert rc == 0, o.err


def test_series_frame_name_equal_to_an_input_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x_00001.img").write_text("0 0 0 5\n")
    rc, o = series(["--frames", 2, "--out", ".", "--prefix", "x", "--workers", 0,
                    "-hkl", "x_00001.img"] + SERIES_ENGINE, capsys)
    assert rc == 2 and "x_00001.img" in o.err
    assert (tmp_path / "x_00001.img").read_text() == "0 0 0 5\n"
    assert not (tmp_path / "manifest.jsonl").exists()


def test_series_refuses_beamsize_zero(tmp_path, capsys):
    rc, o = series(["--frames", 2, "--out", tmp_path / "d", "--workers", 0] + SERIES_ENGINE
                   + ["-beamsize", "0", "-flux", "1e12"], capsys)
    assert rc == 2 and "-beamsize" in o.err and "Traceback" not in o.err


def test_roi_emptied_by_the_mask_refused():
    # check_detector counts the active pixels inside the -roi box only (every
    # active pixel lies in it): a mask that clears the box is still refused,
    # and one that keeps a single pixel of it is not
    from dataclasses import replace
    import numpy as np
    from nbnumba.errors import ConfigError
    from nbnumba.flags import parse_argv
    from nbnumba.model import build_model
    cfg = parse_argv("-cell 70 80 90 90 90 90 -default_F 100 -detpixels 32 -roi 3 6 4 9".split())
    mask = np.ones((32, 32), dtype=np.uint8)
    mask[4:10, 3:7] = 0
    with pytest.raises(ConfigError, match="selects no pixel"):
        build_model(replace(cfg, mask_image=mask))
    mask[9, 6] = 1
    m = build_model(replace(cfg, mask_image=mask))
    assert int(m.active.sum()) == 1 and m.active[9, 6] == 1


@pytest.mark.parametrize("roi,mask,mapped", [("-roi 100 120 200 230", False, True),
                                            ("", False, False),
                                            ("-roi 100 120 200 230", True, False)])
def test_active_frame_of_a_small_roi_is_zeros_on_first_touch(roi, mask, mapped):
    """The active-pixel frame of a small -roi box on a large detector comes
    from an anonymous mapping (zeros the OS fills on first touch; np.zeros
    cleared the whole frame each call); a whole frame, or one a -mask writes
    all over, keeps np.zeros.  Either way, 1 exactly in the box (and the mask)."""
    import mmap
    from dataclasses import replace
    import numpy as np
    from nbnumba.flags import parse_argv
    from nbnumba.model import build_model
    cfg = parse_argv(("-cell 70 80 90 90 90 90 -default_F 100 -detpixels 1200 " + roi).split())
    want = np.zeros((1200, 1200), dtype=np.uint8)
    if roi:
        want[200:231, 100:121] = 1
    else:
        want[:] = 1
    if mask:
        m = np.ones((1200, 1200), dtype=np.uint8)
        m[::7] = 0
        cfg = replace(cfg, mask_image=m)
        want[::7] = 0
    a = build_model(cfg).active
    assert a.dtype == np.uint8 and a.flags.c_contiguous and a.flags.writeable
    assert np.array_equal(a, want)
    base = a
    while isinstance(base, np.ndarray) and base.base is not None:
        base = base.base
    if isinstance(base, memoryview):
        base = base.obj
    assert isinstance(base, mmap.mmap) == mapped


# ---------------------------------------------------------------------------
# API arguments: grids, arrays, argv and cwd
# ---------------------------------------------------------------------------

def _grid_cfg():
    import nbnumba
    from nbnumba.io.hkl import HKLGrid
    cfg = nbnumba.parse_argv("-cell 30 30 30 90 90 90 -lambda 1 -N 5 -distance 50 -detpixels 16 "
                             "-pixel 2 -default_F 0 -nonoise -nopgm".split())
    F = np.random.default_rng(0).uniform(1, 100, (22, 22, 22))
    return cfg, F, HKLGrid(-10, 10, -10, 10, -10, 10, F, 9261)


def _bad_grids():
    import dataclasses as dc
    _, F, g = _grid_cfg()
    return [
        # a short F: the kernel read past it (a different, wrong image), or
        # garbage blamed on the geometry
        (dc.replace(g, F=F[:, :, :1].copy()), r"hkl_grid.F has shape \(22, 22, 1\), but its "
                                              r"bounds h -10..10.* need \(22, 22, 22\)"),
        (dc.replace(g, F=np.ones((2, 2, 2))), r"shape \(2, 2, 2\)"),
        (dc.replace(g, F=F.ravel()), r"shape \(10648,\)"),               # numba TypingError
        (dc.replace(g, h_min=3, h_max=0), "h_min 3 > h_max 0"),
        (dc.replace(g, h_min=0.5), "hkl_grid.h_min: expected an integer, got 0.5"),
        (dc.replace(g, hkls="x"), "hkl_grid.hkls: expected an integer"),  # ValueError
        (dc.replace(g, hkls=0), "hkls is 0"),            # the kernel ignored the grid
        (dc.replace(g, F=F + 1j), "complex128"),         # ComplexWarning, imaginary dropped
        (dc.replace(g, F=F > 50), "dtype bool"),
        (dc.replace(g, F=np.where(F > 99, np.nan, F)), r"hkl_grid.F has \d+ non-finite values"),
        (dc.replace(g, F=np.full_like(F, np.inf)),
         r"10648 non-finite values \(F\(-10 -10 -10\) = inf\)"),
    ]


@pytest.mark.parametrize("case", range(11))
def test_hkl_grid_that_does_not_match_its_bounds_is_refused(case):
    import dataclasses as dc
    import nbnumba
    cfg, F, good = _grid_cfg()
    grid, msg = _bad_grids()[case]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ConfigError, match=msg):
            nbnumba.simulate(dc.replace(cfg, hkl_grid=grid))


def test_hkl_grid_in_other_layouts_gives_the_same_image():
    # float32, Fortran order and a list are converted, not refused: the same
    # numbers make the same image (float32 F rounds, hence the tolerance)
    import dataclasses as dc
    import nbnumba
    cfg, F, g = _grid_cfg()
    ref = nbnumba.simulate(dc.replace(cfg, hkl_grid=g)).float_image
    assert np.isfinite(ref).all() and ref.sum() > 1e4
    for F2, rtol in ((np.asfortranarray(F), 0), (F.tolist(), 0), (F.astype(np.float32), 1e-6)):
        img = nbnumba.simulate(dc.replace(cfg, hkl_grid=dc.replace(g, F=F2))).float_image
        np.testing.assert_allclose(img, ref, rtol=rtol)


def test_non_finite_structure_factors_are_named_without_a_numpy_warning():
    """A grid of NaN F (as an all-NaN Fdump.bin gave) printed numpy's "All-NaN
    slice encountered" and blamed "about 1enan"; F = inf said "F^2 = 1einf".
    Both now name the structure factors, before the render and after it."""
    import dataclasses as dc
    from nbnumba import api
    from nbnumba.model import build_model
    from nbnumba.validate import check_image_finite
    cfg, F, g = _grid_cfg()
    for val in (np.nan, np.inf):
        model = build_model(dc.replace(cfg, hkl_grid=g))
        model.Fhkl = np.full_like(model.Fhkl, val)      # (past the grid's own check)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with pytest.raises(ConfigError, match=r"^10648 of the 10648 structure factors of "
                               r"hkl_grid are not finite \(F\(-10 -10 -10\) = %s\)" % val):
                api.run_model(model)
            with pytest.raises(ConfigError, match=r"^the image has 256 non-finite pixels: 10648 "
                               r"of the 10648 structure factors of hkl_grid are not finite"):
                check_image_finite(model, np.full((16, 16), np.nan, np.float32))


def _wrong_kinds():
    import dataclasses as dc
    import nbnumba
    torch = pytest.importorskip("torch")
    cfg, F, g = _grid_cfg()
    S = 16
    cases = [
        (lambda: nbnumba.simulate(None), "^simulate: expected an nbnumba.Config"),
        (lambda: nbnumba.simulate({"a": 1}), "got dict$"),
        (lambda: nbnumba.simulate(cfg, out="abc"), "^out=: expected an array"),
        (lambda: nbnumba.simulate(cfg, out=torch.zeros(S, S, device="meta")), "^out=: .*'meta'"),
        (lambda: nbnumba.simulate(cfg, out=torch.zeros(S, S, requires_grad=True)),
         "^out=: a torch tensor that requires grad"),
    ]
    for name, t in [("bfloat16", torch.ones(S, S, dtype=torch.bfloat16)),
                    ("sparse", torch.ones(S, S).to_sparse()),
                    ("meta", torch.ones(S, S, device="meta")),
                    ("requires grad", torch.ones(S, S, requires_grad=True))]:
        cases.append((lambda t=t: nbnumba.simulate(dc.replace(cfg, hkl_grid=g, mask_image=t)),
                      "^mask_image: .*%s" % name))
    cases += [
        (lambda: nbnumba.simulate(dc.replace(cfg, hkl_grid=dc.replace(
            g, F=torch.from_numpy(F).requires_grad_()))),
         "^hkl_grid.F: a torch tensor that requires grad"),
        # (the message named cfg.maskfilename: "None: mask is 16x8 pixels ...")
        (lambda: nbnumba.simulate(dc.replace(cfg, hkl_grid=g, mask_image=np.ones((16, 8)))),
         r"^mask_image is 8x16 pixels \(shape \(16, 8\)\) but the detector is 16x16"),
        (lambda: nbnumba.simulate_argv(None), "^argv: expected a list of arguments"),
        (lambda: nbnumba.parse_argv(None), "^argv: expected a list of arguments"),
        # a string was split into characters: "unknown flag '-'"
        (lambda: nbnumba.simulate_argv(" ".join(BASE)),
         r"^argv: expected a list of arguments \(words\), got str: split .*shlex.split"),
        (lambda: nbnumba.simulate_argv([" ".join(BASE)]),
         "^argv: one word holds the whole command line '-cell 100"),
        (lambda: nbnumba.simulate_argv(BASE, overrides="abc"), "^overrides must be a dict"),
        (lambda: nbnumba.simulate_argv(BASE, cwd="/nonexistent/dir"),
         "^cwd: /nonexistent/dir: no such directory$"),
        (lambda: nbnumba.simulate_argv(BASE, cwd=__file__), "not a directory$"),
        # (an AttributeError: 'NoneType' object has no attribute 'model')
        (lambda: nbnumba.write_outputs(None), "^write_outputs: expected an nbnumba Result .*got NoneType$"),
        (lambda: nbnumba.write_outputs(nbnumba.simulate(dc.replace(cfg, hkl_grid=g)), cfg={}),
         "^write_outputs: cfg must be an nbnumba.Config or None, got dict$"),
    ]
    return cases


@pytest.mark.parametrize("case", range(20))
def test_api_arguments_of_the_wrong_kind_are_config_errors(case):
    """Each was a TypeError, ValueError or NotImplementedError from inside
    (numpy, torch, DLPack) or the model, or named no argument; now a
    ConfigError naming it, and no warning."""
    call, msg = _wrong_kinds()[case]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ConfigError, match=msg):
            call()


def test_torch_mask_and_out_still_work():
    # the kinds the checks above let through: a torch mask and a torch out=,
    # filled in place (zero where the mask is)
    import dataclasses as dc
    import nbnumba
    torch = pytest.importorskip("torch")
    cfg, F, g = _grid_cfg()
    m = torch.ones(16, 16, dtype=torch.uint8)
    m[:, :8] = 0
    out = torch.zeros(16, 16)
    res = nbnumba.simulate(dc.replace(cfg, hkl_grid=g, mask_image=m), out=out)
    assert float(out[:, 8:].sum()) > 1e3 and float(out[:, :8].abs().sum()) == 0
    assert np.shares_memory(res.float_image, out.numpy())


def _half_mask(path, full):
    """An 8 x 8 SMV mask: all ones, or (not full) zeros in the left half."""
    data = np.ones((8, 8), dtype=np.uint16)
    data[:, :4] = 1 if full else 0
    synth.write_smv(str(path), data, {})


def test_cwd_resolves_without_chdir_so_threads_keep_their_own_files(tmp_path, monkeypatch):
    """simulate_argv(cwd=) changed the process's directory around the parse:
    two threads with different cwd read each other's -mask (silently wrong
    images) and the process could be left in either directory.  Relative
    paths now resolve against cwd alone (os.chdir is never called)."""
    import nbnumba
    chdirs = []
    real_chdir = os.chdir
    monkeypatch.setattr(os, "chdir", lambda p: (chdirs.append(p), real_chdir(p)))
    dirs = {}
    for name, full in (("full", True), ("half", False)):
        d = tmp_path / name
        d.mkdir()
        _half_mask(d / "mask.img", full)
        dirs[name] = d
    start = os.getcwd()
    argv = BASE + ["-mask", "mask.img", "-nonoise", "-nopgm"]
    got, errors = [], []

    def go(name):
        try:
            for _ in range(4):
                img = nbnumba.simulate_argv(argv, cwd=dirs[name]).float_image
                got.append((name, int(np.count_nonzero(img[:, :4])),
                            int(np.count_nonzero(img[:, 4:]))))
        except Exception as exc:          # noqa: B902 - reported below
            errors.append(exc)
    ts = [threading.Thread(target=go, args=(n,)) for n in ("full", "half", "full", "half")]
    [t.start() for t in ts]
    [t.join() for t in ts]
    assert not errors and len(got) == 16
    for name, left, right in got:
        assert right == 32 and left == (32 if name == "full" else 0), (name, left, right)
    assert os.getcwd() == start and chdirs == []


# ---- the tools with stdout or stderr closed (>&-, 2>&-) or full (> /dev/full) ----
_ONE_PDB = ("CRYST1   20.000   20.000   20.000  90.00  90.00  90.00 P 1\n"
            "ATOM      1  C   GLY A   1       1.000   2.000   3.000  1.00 20.00           C\n"
            "END\n")
_TRACE_LOG = Path(__file__).resolve().parent / "data" / "traces" / "mosflm_phi10_N2.c.log"


def _tool_run(tool, tmp_path):
    """(main, argv, the files a run writes) of a small valid run of each tool."""
    if tool == "sf":
        from nbnumba import sf
        (tmp_path / "one.pdb").write_text(_ONE_PDB)
        return sf.main, [str(tmp_path / "one.pdb"), "-dmin", "3"], []
    if tool == "trace-diff":
        from nbnumba.tools import trace_diff
        return trace_diff.main, [str(_TRACE_LOG), str(_TRACE_LOG)], []
    if tool == "sincg-sweep":
        from nbnumba.tools import sincg_sweep
        return (sincg_sweep.main, "--N 5 --k 0 1 --steps 50 --no-png --outdir".split()
                + [str(tmp_path / "sw")], [tmp_path / "sw" / "sincg_sweep.csv"])
    from nbnumba import series
    return (series.main, ["--shots", "1", "--workers", "0", "--out", str(tmp_path / "s")]
            + "-cell 50 50 50 90 90 90 -default_F 100 -N 3 -lambda 1 -distance 100 -detpixels 8 "
              "-pixel 0.5".split(), [tmp_path / "s" / "manifest.jsonl"])


@pytest.mark.parametrize("tool", ["sf", "trace-diff", "sincg-sweep", "series"])
@pytest.mark.parametrize("mode", ["stdout closed", "stderr closed", "stdout full"])
def test_tools_with_stdout_or_stderr_closed_or_full(tool, mode, tmp_path, capsys, monkeypatch):
    """Closed: the text goes nowhere and the run completes (stdout closed was an
    AttributeError traceback; stderr closed put nbnumba-sf's summary line into
    the HKL text on stdout, and made nbnumba-series exit 120).  Full: one line,
    exit 2 (it was an OSError traceback, exit 1)."""
    main, argv, files = _tool_run(tool, tmp_path)
    if mode == "stdout full":
        full = open("/dev/full", "w")
        monkeypatch.setattr(sys, "stdout", full)
    else:
        monkeypatch.setattr(sys, "stdout" if mode == "stdout closed" else "stderr", None)
    code = main(argv)
    monkeypatch.undo()
    out, err = capsys.readouterr()
    if mode == "stdout closed":
        assert out == ""
    elif tool == "sf" and mode == "stderr closed":   # the summary never goes into the HKL text
        assert out.count("\n") > 1000 and "nbnumba-sf" not in out
    if mode == "stdout full":
        full.close()
        assert code == 2, err
        assert err.splitlines()[-1].endswith("error: cannot write to standard output: "
                                             "No space left on device"), err
        assert len(err.splitlines()) == 1, err
    else:
        assert code == 0, err
        assert "Traceback" not in err
    for f in files:
        assert f.stat().st_size > 0


def test_polarization_axis_along_a_source_is_refused(tmp_path, capsys, monkeypatch):
    """A -sourcefile beam along the convention's polarization axis (ADXV's
    1 0 0, sources from -x): the Kahn factor's E-vector, axis x incident
    unitized, was rounding, and the same experiment stated rotated rendered
    pixels up to 2.6x apart (tools/fuzz.py metamorphic, seed 80).  Refused in
    one line where the polarization uses that source (the first, or any with
    -oversample_polar); -nopolar, -polar 0 and -c_parity run."""
    from nbnumba import cli
    monkeypatch.chdir(tmp_path)     # (-c_parity writes intimage.img as the C does)
    (tmp_path / "first.txt").write_text("-10 0 0 1 1.5e-10\n-10 0.05 0 1 1.51e-10\n")
    (tmp_path / "second.txt").write_text("-10 0.05 0 1 1.51e-10\n-10 0 0 1 1.5e-10\n")
    base = ("-cell 70 80 90 90 95 90 -lambda 1.5 -distance 100 -detpixels 8 -pixel 1.25 -N 5 "
            "-default_F 100 -nonoise -nopgm -adxv -floatfile f.bin").split()

    def run(*extra):
        (tmp_path / "f.bin").unlink(missing_ok=True)
        rc = cli.main(base + list(extra))
        return rc, capsys.readouterr().err.strip().splitlines()
    for extra in (["-polar", "0.5", "-sourcefile", "first.txt"],
                  ["-polar", "0.5", "-sourcefile", "second.txt", "-oversample_polar"]):
        rc, err = run(*extra)
        assert rc == 2 and len(err) == 1, err
        assert "polarization axis 1 0 0 lies along the direction of source" in err[0], err
        assert not (tmp_path / "f.bin").exists()
    for extra in (["-polar", "0.5", "-sourcefile", "second.txt"],     # (the first source sets it)
                  ["-nopolar", "-sourcefile", "first.txt"], ["-polar", "0", "-sourcefile", "first.txt"],
                  ["-polar", "0.5", "-sourcefile", "first.txt", "-c_parity"]):
        rc, err = run(*extra)
        assert rc == 0 and (tmp_path / "f.bin").exists(), (extra, err)


def test_fuzz_modes_bounds_a_spread_by_the_spread_of_the_difference(tmp_path, monkeypatch):
    """tools/fuzz.py modes compares the two modes' printed statistics.  rmsd is
    a spread: with the beam centre 1 km off (seed 94) the image is flat to
    7e-6 of its mean, and the float32 ulp by which the modes differ at 8 of 400
    pixels moved rmsd by 2.9e-5 of itself, a 'fail' at MODES_REL (1e-5).  A
    spread moves by at most the spread of the difference, which the check now
    allows; a statistic moved by more is still reported."""
    fz = _fuzz_tool()
    monkeypatch.chdir(tmp_path)
    base = fz._parity_base(20)
    i = base.index("-cell") + 1
    base[i:i + 6] = fz.MODES_CELL
    argv = base + ["-nonoise", "-nopgm", "-Ybeam", "1e6", "-default_F", "100"]
    assert fz.modes_check(argv)[0] == "agree"
    rd = nbnumba.simulate_argv(argv)
    rc = nbnumba.simulate_argv(argv + ["-c_parity"])
    assert 1e-5 < abs(rd.stats["rmsd"] / rc.stats["rmsd"] - 1) < 1e-4
    assert fz.modes_stats_check(rd, rc) == []
    rd.stats["rmsd"] *= 1.01        # (the spread of the difference: 1.4e-3 of rmsd)
    assert [t.split()[0] for t in fz.modes_stats_check(rd, rc)] == ["rmsd"]


def test_a_divergence_width_that_underflows_its_step_is_the_beam_alone():
    """-divergence 1e-320 with -vdivstep 1e6 (mrad): width/step underflows to
    0 cells, and the step shrunk to tile the width divided by it (a
    ZeroDivisionError traceback; tools/fuzz.py cli, seed 171).  A width and a
    step make at least one cell: here the beam itself, so the image is the
    one without divergence, bit for bit."""
    base = list(BASE)
    plain = nbnumba.simulate(nbnumba.parse_argv(base)).float_image
    tiny = nbnumba.simulate(nbnumba.parse_argv(base + ["-vdivrange", "1e308", "-vdivstep", "1e6",
                                                       "-divergence", "1e-320"]))
    assert tiny.float_image.max() > 0
    np.testing.assert_array_equal(tiny.float_image, plain)


def test_config_fields_of_other_numeric_types_run_as_pythons_own():
    """A Config built in Python may hold numpy scalars, a whole float for a
    count, 0/1 for a switch: each was a warning or a traceback from inside
    ("overflow encountered in cast" of a float32 distance compared with a
    float64 limit; range() of -phisteps 2.0; a C long of -point_pixel 10**30).
    Now they run as the Python numbers they equal, and a switch other than
    true/false/0/1 is refused naming its flag."""
    import dataclasses as dc
    import nbnumba
    cfg = nbnumba.parse_argv(BASE + ["-nonoise", "-nopgm"])
    want = nbnumba.simulate(dc.replace(cfg, distance=float(np.float32(0.1)), phisteps=2, osc=0.01,
                                       point_pixel=True, detector_twotheta=0.1,
                                       twotheta_axis=(0.0, 1.0, 0.0))).float_image
    odd = dc.replace(cfg, distance=np.float32(0.1), phisteps=2.0, osc=np.float64(0.01),
                     point_pixel=np.int64(1), detector_twotheta=np.float32(0.1),
                     twotheta_axis=[0, np.float32(1), 0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = nbnumba.simulate(odd)
    assert np.array_equal(res.float_image, want)
    used = res.model.cfg
    assert type(used.distance) is float and used.distance == float(np.float32(0.1))
    assert type(used.phisteps) is int and used.phisteps == 2
    assert used.point_pixel is True and used.twotheta_axis == (0.0, 1.0, 0.0)
    assert odd.phisteps == 2.0 and type(odd.distance) is np.float32       # the caller's own is untouched
    for bad in (5, 10 ** 30, -1):
        with pytest.raises(ConfigError, match="^-point_pixel: expected true/false, got %d$" % bad):
            nbnumba.simulate(dc.replace(cfg, point_pixel=bad))
    with pytest.raises(ConfigError, match=r"^-phisteps: expected an integer, got 2.5$"):
        nbnumba.simulate(dc.replace(cfg, phisteps=2.5))
    # (float() of these was an OverflowError traceback)
    for field, v in (("distance", 10 ** 400), ("phisteps", 10 ** 400), ("twotheta_axis", (0, 1, 10 ** 400))):
        with pytest.raises(ConfigError, match=r"^-%s: a number of about 10\^400 is beyond double "
                           r"precision's range$" % field):
            nbnumba.simulate(dc.replace(cfg, **{field: v}))
    # a parsed Config is run as it is, not copied
    assert nbnumba.simulate(cfg).model.cfg is cfg


def test_numba_disable_jit_is_one_line_before_any_output(tmp_path):
    """NUMBA_DISABLE_JIT=1 (numba's debugging switch) was an AttributeError
    traceback after the set-up text: njit then returns plain functions, and
    the kernels' intrinsics do not run as Python.  Now one line, exit 2,
    nothing printed or written; the plain-Python reference still runs."""
    r = subprocess.run([sys.executable, "-m", "nbnumba.cli", *BASE, "-nonoise"], cwd=tmp_path,
                       env=dict(env(), NUMBA_DISABLE_JIT="1", NBNUMBA_SERVER="0"),
                       capture_output=True, text=True, timeout=300)
    assert (r.returncode, r.stdout) == (2, ""), (r.returncode, r.stdout, r.stderr)
    assert r.stderr == ("nbnumba: error: NUMBA_DISABLE_JIT is set: nbnumba's kernels use numba "
                        "intrinsics that do not run as plain Python; unset it (nbnumba.reference "
                        "follows one pixel in plain Python, -trace_pixel S F prints the kernel's own "
                        "steps)\n")
    assert not list(tmp_path.iterdir())
    code = ("import nbnumba, nbnumba.reference as r; "
            "print(r.image(nbnumba.parse_argv(%r)).shape)" % (BASE[:-4] + ["-detpixels", "3"]))
    r = subprocess.run([sys.executable, "-c", code], env=dict(env(), NUMBA_DISABLE_JIT="1"),
                       capture_output=True, text=True, timeout=300)
    assert (r.returncode, r.stdout, r.stderr) == (0, "(3, 3)\n", "")


def test_a_kahn_factor_outside_one_is_refused_in_the_default_mode(work, capsys):
    """-polar 90 rendered negative photons in 14 of 256 pixels without a word:
    the polarization factor (1 + cos² 2θ - K cos 2ψ sin² 2θ)/2 leaves [0, 1]
    when |K| > 1.  The default mode refuses it, naming the flag; -c_parity
    renders nanoBragg.c's image, and -nopolar (which drops the factor) runs."""
    line = ["-cell", "70", "80", "90", "90", "90", "90", "-lambda", "1.5", "-N", "5", "-default_F", "100",
            "-distance", "100", "-detpixels", "16", "-pixel", "2", "-nopgm", "-nonoise"]
    for k in ("90", "-1.0001", "1e300"):
        refused(line + ["-polar", k], capsys,
                "-polar %g: the Kahn factor is between -1 and 1 (the beam's degree of polarization "
                "along -polar_vector); beyond it some pixels get negative photons" % float(k), work)
    assert cli.main(line + ["-polar", "90", "-c_parity"]) == 0
    img = np.fromfile(work / "floatimage.bin", np.float32)
    assert (img < 0).sum() == 14 and img.min() < -40
    for ok in (["-polar", "-1"], ["-polar", "1"], ["-polar", "90", "-nopolar"]):
        assert cli.main(line + ok) == 0
        assert np.fromfile(work / "floatimage.bin", np.float32).min() > 0


def test_a_spot_shape_scale_of_zero_or_less_is_refused_in_the_default_mode(work, capsys):
    """-fudge -1 rendered gauss spots as exp(+r²) (up to 9e27 photons), tophat
    spots in every pixel, and round ones as the root of a negative number (a
    non-finite image blamed on the geometry); -fudge 0 a flat lattice factor.
    The default mode refuses them naming the flag; a square crystal, which
    reads no -fudge, still only warns; -c_parity renders nanoBragg.c's image."""
    line = ["-cell", "70", "80", "90", "90", "90", "90", "-lambda", "1.5", "-N", "5", "-default_F", "100",
            "-distance", "100", "-detpixels", "8", "-pixel", "4", "-nopgm", "-nonoise"]
    for shape in ("-gauss_xtal", "-tophat_spots", "-round_xtal"):
        for f in ("-1", "0"):
            refused(line + [shape, "-fudge", f], capsys,
                    "-fudge %g: the spot-shape scale must be > 0 (%s spots shrink as it grows"
                    % (float(f), shape[1:].split("_")[0]), work)
    assert cli.main(line + ["-fudge", "-1"]) == 0
    assert "WARNING: -fudge -1 is ignored" in capsys.readouterr().out
    peaks = []
    for f in ("-1", "1"):
        assert cli.main(line + ["-gauss_xtal", "-fudge", f, "-c_parity"]) == 0
        peaks.append(float(np.fromfile(work / "floatimage.bin", np.float32).max()))
    assert peaks[0] > 50 * peaks[1]         # (7.98e6 against 1.05e5: the C's exp(+r²))


def test_a_divergence_wider_than_pi_is_refused_in_the_default_mode(work, capsys):
    """-divergence 4000 (mrad) rendered an image from sources turned up to 115 deg
    off the beam, behind the sample; -divergence 1e6 -hdivstep 0.1 built 1e7 of
    them for minutes (tools/fuzz.py parity, seed 254).  The default mode refuses
    a full width above pi rad, however it is given; -c_parity renders
    nanoBragg.c's image."""
    line = ["-cell", "70", "80", "90", "90", "90", "90", "-lambda", "1.5", "-N", "5", "-default_F", "100",
            "-distance", "100", "-detpixels", "8", "-pixel", "4", "-nopgm", "-nonoise"]
    for extra, which, width in ((["-divergence", "4000", "-divsteps", "3"], "horizontal", "4000"),
                                (["-vdivrange", "3200", "-vdivsteps", "3"], "vertical", "3200"),
                                (["-hdivstep", "100", "-hdivsteps", "40"], "horizontal", "4000"),
                                (["-divergence", "1e6", "-hdivstep", "0.1"], "horizontal", "1e+06")):
        flag = "-hdivrange" if which == "horizontal" else "-vdivrange"
        refused(line + extra, capsys,
                "%s/-divergence (or %s x %ss): the %s divergence spans %s mrad, more than pi rad "
                "(3141.59 mrad)" % (flag, flag.replace("range", "step"),
                                    flag.replace("range", "step"), which, width), work)
    res = nbnumba.simulate_argv(line + ["-divergence", "4000", "-divsteps", "3", "-c_parity"])
    cosines = -res.model.sources.direction @ np.array(res.model.det.beam)
    assert cosines.min() < -0.4                 # (cos 2 rad: a source behind the sample)
    assert cli.main(line + ["-divergence", "3141", "-divsteps", "5"]) == 0


def test_a_detector_refused_before_the_sources_are_built(work, capsys, monkeypatch):
    """A detector that faces away, or an ROI of no pixel, is refused before the
    crystal, the structure factors and the sources: a line that also asked for
    1e7 divergence sources (-hdivrange 10 -hdivstep 1e-6) built them first, 2
    minutes and 6.6 GB, then gave the detector's error (tools/fuzz.py cli, seed 271)."""
    from nbnumba import model

    def no_sources(*a, **k):
        raise AssertionError("the sources were built")
    monkeypatch.setattr(model, "_sources", no_sources)
    line = ["-cell", "70", "80", "90", "85", "95", "105", "-lambda", "1.5", "-default_F", "100",
            "-distance", "100", "-detpixels", "8", "-hdivrange", "10", "-hdivstep", "1e-6"]
    refused(line + ["-detsize", "5", "-pix0_vector_mm", "-1", "0.001", "2", "-mosflm"], capsys,
            "the detector faces away from the sample", work)
    # an ROI whose pixels the mask leaves out
    from nbnumba.io.smv import write_smv
    write_smv(work / "m.img", np.zeros((8, 8), np.uint16),
              {"HEADER_BYTES": "512", "SIZE1": "8", "SIZE2": "8", "BYTE_ORDER": "little_endian",
               "TYPE": "unsigned_short"})
    refused(line + ["-roi", "2", "3", "2", "3", "-mask", "m.img"], capsys,
            "-roi 2 3 2 3 selects no pixel of the 8 x 8 detector", work)


def test_miller_indices_past_a_doubles_fraction_are_refused(work, capsys):
    """-lambda 1e-20 with -oversample 1 (and a -sourcefile wavelength of
    1e-100 m) rendered every pixel within 12 % (15 %) of the peak: the
    indices, near 1e22, hold no fraction in a double, so the lattice factor
    saw every pixel on a node (the C's sin(N pi h)/sin(pi h) of such h is
    noise instead).  The default mode refuses a run whose indices can pass
    2**40, naming the edge and wavelength; -c_parity renders nanoBragg.c's
    image."""
    line = ["-cell", "70", "80", "90", "90", "90", "90", "-N", "5", "-default_F", "100", "-distance",
            "100", "-detpixels", "8", "-pixel", "4", "-nopgm", "-nonoise", "-oversample", "1"]
    refused(line + ["-lambda", "1e-20"], capsys,
            "the Miller indices would reach 1.8e+22 (twice the longest cell edge, 90 A, over the "
            "shortest wavelength, 1e-20 A): past 1.1e+12 a double holds too little", work)
    (work / "s.txt").write_text("-10 0 0 1 1e-100\n")
    refused(line + ["-lambda", "1.5", "-sourcefile", "s.txt"], capsys,
            "the Miller indices would reach 1.8e+92", work)
    assert cli.main(line + ["-lambda", "1e-20", "-c_parity"]) == 0   # (the C's sines of 1e22: noise)
    assert np.isfinite(np.fromfile(work / "floatimage.bin", np.float32)).all()
    assert cli.main(line + ["-lambda", "1e-9"]) == 0      # indices near 1.8e11: still drawn
