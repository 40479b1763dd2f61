"""docs/quirks.md #43 and #46, and the refusals and warnings of the third C
audit (stop 49): the automatic -interpolate choice, φ steps that do not divide
the oscillation, negative -osc/-phistep, -sourcefile wavelengths in metres,
-printout's scattering angle, -fudge on a square crystal and repeated HKL
records.  Each default-mode test holds the physics (or the image of an
equivalent command line), and -c_parity the C's behaviour (measured with
$NB_C_BIN where quoted)."""
import math

import numpy as np
import pytest

import nbnumba
from nbnumba import cli
from nbnumba.errors import ConfigError, InputFileError
from nbnumba.quirks import c_differences

BASE = ["-cell", "100", "100", "100", "90", "90", "90", "-lambda", "1", "-distance", "100",
        "-detpixels", "16", "-pixel", "0.4", "-misset", "10", "20", "30", "-oversample", "1",
        "-nonoise", "-nopgm"]


def run(extra, c_parity=False, cwd=None):
    return nbnumba.simulate_argv(BASE + list(extra) + (["-c_parity"] if c_parity else []), cwd=cwd)


@pytest.fixture(scope="module")
def hkl(tmp_path_factory):
    """A P1 table of random F over -12..12 (the detector reaches |h| < 6)."""
    d = tmp_path_factory.mktemp("hkl")
    rng = np.random.default_rng(5)
    with open(d / "rnd.hkl", "w") as f:
        for h in range(-12, 13):
            for k in range(-12, 13):
                for l in range(-12, 13):
                    f.write("%d %d %d %.3f\n" % (h, k, l, rng.uniform(10, 100)))
    return d


@pytest.mark.parametrize("size, counts, auto", [("0.0005", "50", "no"), ("0.00002", "2", "tricubic")])
def test_automatic_interpolation_reads_the_crystals_cell_counts(hkl, size, counts, auto):
    """#43: nanoBragg.c picks tricubic interpolation when an -N count is <= 2,
    but reads the counts before -xtal_size sets them: a 50-cell cube
    (-xtal_size 0.5 um of 100 A cells) was interpolated (as -N 1 says), and a
    2-cell one (-N 10 -xtal_size 0.02 um) not.  The default mode decides from
    the counts rendered: each image is that of -N <counts>, and the note names #43."""
    line = ["-hkl", "rnd.hkl", "-N", "10" if counts == "2" else "1", "-xtal_size", size]
    r = run(line, cwd=hkl)
    assert "auto-selected %s interpolation" % auto in "\n".join(r.model.log)
    same = run(["-hkl", "rnd.hkl", "-N", counts], cwd=hkl)
    assert np.array_equal(r.float_image, same.float_image)
    assert 43 in [n for n, _ in c_differences(r.model)]
    c = run(line, c_parity=True, cwd=hkl)
    other = "-nointerpolate" if counts == "2" else "-interpolate"
    assert np.array_equal(c.float_image, run(["-hkl", "rnd.hkl", "-N", counts, other],
                                             c_parity=True, cwd=hkl).float_image)
    assert not np.array_equal(c.float_image, run(["-hkl", "rnd.hkl", "-N", counts],
                                                 c_parity=True, cwd=hkl).float_image)


def test_phi_steps_share_an_oscillation_they_do_not_divide():
    """#46: -osc 1 -phistep 0.3 gives nanoBragg.c ceil(1/0.3) = 4 steps of 0.3
    deg, 1.2 deg rendered under a header saying OSC_RANGE=1.  The default mode
    renders 4 steps of 0.25 deg: the image of -osc 1 -phisteps 4, with a warning
    and the note #46."""
    line = ["-default_F", "100", "-N", "5", "-osc", "1"]
    r = run(line + ["-phistep", "0.3"])
    assert np.array_equal(r.float_image, run(line + ["-phisteps", "4"]).float_image)
    assert r.model.steps.phisteps == 4
    assert math.degrees(r.model.steps.phistep) == pytest.approx(0.25, rel=1e-14)
    assert any("-osc 1 is not a multiple of -phistep 0.3: 4 steps of 0.25 deg" in l for l in r.model.log)
    assert 46 in [n for n, _ in c_differences(r.model)]
    c = run(line + ["-phistep", "0.3"], c_parity=True)
    assert (c.model.steps.phisteps, round(math.degrees(c.model.steps.phistep), 12)) == (4, 0.3)
    # a step that divides the oscillation (1.1/0.1, #25) keeps its bits and draws no warning
    r = run(["-default_F", "100", "-N", "5", "-osc", "1.1", "-phistep", "0.1"])
    assert r.model.steps.phisteps == 11 and r.model.steps.phistep == math.radians(0.1)
    assert not any("not a multiple" in l for l in r.model.log)


@pytest.mark.parametrize("flag, value", [("-osc", "-1"), ("-phistep", "-0.1"), ("-phistep", "0")])
def test_a_negative_oscillation_or_step_is_refused(tmp_path, monkeypatch, capsys, flag, value):
    """#46: nanoBragg.c keeps -1 for "not given" and takes any -osc < 0 (or
    -phistep <= 0) as not given: `-osc -1` rendered a still at -phi.  The
    default mode refuses it in one line, exit 2; -c_parity renders the C's image."""
    monkeypatch.chdir(tmp_path)
    line = BASE + ["-default_F", "100", "-N", "5", flag, value, "-floatfile", "f.bin"]
    assert cli.main(line) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("nbnumba: error: %s %s:" % (flag, value))
    assert not (tmp_path / "f.bin").exists()
    still = run(["-default_F", "100", "-N", "5"], c_parity=True).float_image
    assert np.array_equal(run(["-default_F", "100", "-N", "5", flag, value], c_parity=True).float_image,
                          still)


@pytest.mark.parametrize("osc, step", [("0", "0.1"), ("1e-320", "1e6")])
def test_an_oscillation_below_one_step_is_the_still(osc, step):
    """#46: -osc 0 with a -phistep (or an oscillation that underflows its step)
    made 0 phi steps; nanoBragg.c divides the image by them (every pixel NaN,
    $NB_C_BIN), and both modes refused that image as a geometry that overflows
    (tools/fuzz.py cli, seed 171).  The default mode renders the still at -phi,
    bit for bit, naming #46; -c_parity refuses the C's 0 steps in one line."""
    extra = ["-default_F", "100", "-N", "5", "-phi", "10"]
    res = run(extra + ["-osc", osc, "-phistep", step])
    still = run(extra).float_image
    assert res.model.steps.phisteps == 1 and still.max() > 0
    assert np.array_equal(res.float_image, still)
    assert 46 in [n for n, _ in c_differences(res.model)]
    with pytest.raises(ConfigError, match=r"^-osc \S+ with -phistep \S+ makes 0 phi steps, by "
                                          r"which nanoBragg.c divides the image"):
        run(extra + ["-osc", osc, "-phistep", step], c_parity=True)


@pytest.mark.parametrize("c_parity", [False, True])
def test_a_source_wavelength_in_angstrom_is_refused(tmp_path, c_parity):
    """A -sourcefile wavelength is in metres (nanoBragg.c's comment says
    Angstrom): `1.0` meant as 1 A is a 1 m wave, and both programs rendered a
    flat image (624.77 photons in every pixel, $NB_C_BIN).  Refused in both
    modes, naming the file and the source."""
    (tmp_path / "src.txt").write_text("-10 0 0 1 1e-10\n-10 0.001 0 1 1.0\n")
    with pytest.raises(InputFileError, match=r"src.txt: source 2 has a wavelength of 1 m: the "
                                             r"fifth column is in metres"):
        run(["-default_F", "100", "-N", "5", "-sourcefile", "src.txt"], c_parity, cwd=tmp_path)


def test_a_source_file_says_it_overrides_the_sweeps(tmp_path):
    """-sourcefile lists the sources: nanoBragg.c drops -dispersion and the
    divergence flags without a word.  Both modes say so, and render the file's
    sources alone."""
    (tmp_path / "src.txt").write_text("-10 0 0 1 1e-10\n-10 0.001 0 1 1e-10\n")
    line = ["-default_F", "100", "-N", "5", "-sourcefile", "src.txt"]
    for c_parity in (False, True):
        r = run(line + ["-dispersion", "1", "-hdivrange", "0.5"], c_parity, cwd=tmp_path)
        assert any("src.txt lists the sources: -dispersion, -hdivrange ignored" in l
                   for l in r.model.log)
        assert np.array_equal(r.float_image, run(line, c_parity, cwd=tmp_path).float_image)


def test_printout_takes_the_scattering_angle_from_the_beam():
    """-printout's "stol = X or Y" gives sin(theta)/lambda twice, from the
    scattering vector (1/m) and from the angle 2theta.  nanoBragg.c measures
    2theta from +x, MOSFLM's beam, in every convention: under -xds pixel (3, 2)
    printed 1.42084e+08 or 0.71344 ($NB_C_BIN).  The default mode measures it from the
    beam: the two agree in every convention."""
    def stol(extra, c_parity=False):
        from nbnumba.trace import printout_lines
        r = run(["-default_F", "100", "-N", "5", "-printout", "-printout_pixel", "3", "2"] + extra,
                c_parity)
        line = [l for l in printout_lines(r) if "stol =" in l][0]
        return float(line.split()[5]), float(line.split()[7])
    for conv in ("-mosflm", "-xds", "-dials", "-adxv", "-denzo"):
        first, second = stol([conv])
        assert first * 1e-10 == pytest.approx(second, rel=1e-5), conv
    first, second = stol(["-xds"], c_parity=True)
    assert (first, second) == (pytest.approx(1.42084e8, rel=1e-5), pytest.approx(0.71344, rel=1e-5))


def test_fudge_on_a_square_crystal_and_repeated_hkl_records_are_reported(tmp_path):
    """-fudge scales the round, gauss and tophat spots' argument; nanoBragg.c
    ignores it for the square crystal without a word.  A reflection given twice
    in an -hkl file takes the last record's F, also without a word (and the C
    counts both records).  Both now draw a warning; the images are unchanged."""
    r = run(["-default_F", "100", "-N", "5", "-fudge", "4"])
    assert any("-fudge 4 is ignored" in l for l in r.model.log)
    assert np.array_equal(r.float_image, run(["-default_F", "100", "-N", "5"]).float_image)
    assert not any("-fudge" in l for l in run(["-default_F", "100", "-N", "5", "-fudge", "4",
                                              "-round_xtal"]).model.log)
    (tmp_path / "d.hkl").write_text("1 2 3 10\n0 0 1 5\n1 2 3 20\n")
    r = run(["-hkl", "d.hkl", "-N", "5"], cwd=tmp_path)
    assert any("d.hkl: 1 record repeats a reflection given before, and the last one's F is "
               "kept (h k l = 1 2 3 on lines 1, 3)" in l for l in r.model.log)
    assert r.model.Fhkl[1 - 0, 2 - 0, 3 - 1] == 20.0


def test_sample_pivot_flags_under_a_beam_pivot_convention_draw_a_warning(tmp_path):
    """MOSFLM, ADXV and DENZO pivot about the beam whatever the flags, so
    -ORGX/-ORGY/-Xclose/-Yclose do nothing there (docs/quirks.md, "C behaviours
    kept"); the default mode says so, as it does for -Xbeam under -xds (#32).
    An -img header's ORGX, which every SMV file nanoBragg writes carries, is
    not a flag and draws nothing; the image is the run's without the flags."""
    line = ["-default_F", "100", "-N", "5"]
    r = run(line + ["-ORGX", "10", "-Xclose", "3"])
    warn = [l for l in r.model.log if "not used under -mosflm" in l]
    assert warn == ["WARNING: -ORGX/-Xclose are not used under -mosflm: its detector pivots about "
                    "the beam, placed by -Xbeam/-Ybeam; its point nearest the sample is at "
                    "%g, %g mm (fast, slow)" % (r.model.det.Fclose * 1e3, r.model.det.Sclose * 1e3)]
    assert np.array_equal(r.float_image, run(line).float_image)
    assert not [l for l in run(line + ["-xds", "-ORGX", "10"]).model.log if "not used" in l]
    assert not [l for l in run(line + ["-ORGX", "10"], c_parity=True).model.log if "not used" in l]
    from nbnumba.outputs import write_outputs
    write_outputs(run(line + ["-xds", "-ORGX", "9", "-intfile", "a.img"], cwd=tmp_path), quiet=True)
    assert b"XDS_ORGX=9" in (tmp_path / "a.img").read_bytes()[:512]
    r = run(line + ["-img", "a.img"], cwd=tmp_path)
    assert not [l for l in r.model.log if "not used" in l]
