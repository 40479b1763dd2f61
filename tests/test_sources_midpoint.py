"""docs/quirks.md #44: divergence and dispersion sweeps sampled at the midpoints
of their cells (the default mode), nanoBragg.c's points on the band's edges
under -c_parity.

A uniform band of full width d sampled at N points of weight 1/N: the
midpoints d((i + 1/2)/N - 1/2) have the variance d^2/12 (1 - 1/N^2), the C's
-d/2 + i d/(N - 1) have d^2 (N + 1)/(12 (N - 1)) (N = 2: three times the
band's d^2/12, both points on its edges).
"""
import os

import numpy as np
import pytest

import nbnumba
from nbnumba import cli
from nbnumba.model import source_set
from nbnumba.sampling import resolve_steps
from nbnumba.sources import divergence_offset, divergence_points

BASE = ["-cell", "70", "80", "90", "90", "90", "90", "-misset", "10", "20", "30",
        "-default_F", "100", "-N", "10", "-lambda", "1", "-distance", "100",
        "-nonoise", "-nopgm"]
GOLDEN = os.path.join(os.path.dirname(__file__), "..", "golden", "data")


def _cfg(flags, c_parity=False):
    return nbnumba.parse_argv(BASE + flags.split() + (["-c_parity"] if c_parity else []))


def _hdiv(flags, c_parity=False):
    """The kept horizontal divergence offsets (mrad) of a -square_div run."""
    cfg = _cfg(flags + " -square_div", c_parity)
    st = resolve_steps(cfg)
    return sorted({divergence_offset(st, i, j)[0] * 1e3 for i, j in divergence_points(st, False)})


def _band(c_parity, d, n):
    """Closed forms of the points across a band of width d at n points."""
    if c_parity:
        return [-d / 2 + i * d / (n - 1) for i in range(n)]
    return [d * ((i + 0.5) / n - 0.5) for i in range(n)]


@pytest.mark.parametrize("c_parity", [False, True])
@pytest.mark.parametrize("n", [2, 3, 5, 8])
def test_dispersion_wavelengths_and_weights(c_parity, n):
    """-dispersion 4 -dispsteps n: the wavelengths at the cells' midpoints
    (the C's on the band's edges), each source weighing 1/n."""
    src = source_set(_cfg("-dispersion 4 -dispsteps %d" % n, c_parity))
    lam0 = 1e-10
    want = [lam0 * (1 + x) for x in _band(c_parity, 0.04, n)]
    assert np.allclose(src.wavelength, want, rtol=1e-15, atol=0)
    assert np.allclose(src.weight, 1.0 / n, rtol=1e-15, atol=0)
    # the spread about the central wavelength: the band's d^2/12 (1 - 1/n^2),
    # the C's (n + 1)/(n - 1) times d^2/12
    var = float(np.sum(src.weight * (src.wavelength / lam0 - 1.0) ** 2))
    band = 0.04 ** 2 / 12
    assert var == pytest.approx(band * (n + 1) / (n - 1) if c_parity else band * (1 - 1 / n ** 2),
                                rel=1e-12)


@pytest.mark.parametrize("c_parity", [False, True])
@pytest.mark.parametrize("n", [2, 3, 4, 7])
def test_divergence_points_and_weights(c_parity, n):
    """-hdivrange 0.6 -vdivrange 0.4 -hdivsteps n -vdivsteps 3, full grid: the
    points at the cells' midpoints in both directions, weight 1/(3n)."""
    cfg = _cfg("-hdivrange 0.6 -vdivrange 0.4 -hdivsteps %d -vdivsteps 3 -square_div" % n,
               c_parity)
    st = resolve_steps(cfg)
    pts = divergence_points(st, False)
    assert len(pts) == 3 * n
    got = np.array([divergence_offset(st, i, j) for i, j in pts])
    want = np.array([(h, v) for h in _band(c_parity, 0.6e-3, n) for v in _band(c_parity, 0.4e-3, 3)])
    assert np.allclose(got, want, rtol=0, atol=1e-18)
    src = source_set(cfg)
    assert np.allclose(src.weight, 1.0 / (3 * n), rtol=1e-15, atol=0)


@pytest.mark.parametrize("flags, c_points, points", [
    # a width alone: the C's 2 points, at the middles of the two halves
    ("-hdivrange 1", [-0.5, 0.5], [-0.25, 0.25]),
    # one point is the beam itself (the C makes a count of 1 with a width 2)
    ("-hdivrange 1 -hdivsteps 1", [-0.5, 0.5], [0.0]),
    # a width and a step: ceil(width/step) cells tiling the width
    ("-hdivrange 1 -hdivstep 0.5", [-0.5, 0.0], [-0.25, 0.25]),
    ("-hdivrange 1 -hdivstep 0.3", [-0.5, -0.2, 0.1, 0.4], [-0.375, -0.125, 0.125, 0.375]),
    # a step alone: 2 points a step apart (the C's too)
    ("-hdivstep 0.2", [-0.1, 0.1], [-0.1, 0.1]),
    # a step and a count: count points a step apart (the C drops the count)
    ("-hdivstep 0.1 -hdivsteps 4", [-0.05, 0.05], [-0.15, -0.05, 0.05, 0.15]),
    # three that agree: count cells of step make the width
    ("-hdivrange 1 -hdivstep 0.2 -hdivsteps 5", [-0.5, -0.3, -0.1, 0.1, 0.3],
     [-0.4, -0.2, 0.0, 0.2, 0.4]),
])
def test_divergence_counts_from_the_flags(flags, c_points, points):
    assert _hdiv(flags, True) == pytest.approx(c_points, abs=1e-12)
    assert _hdiv(flags) == pytest.approx(points, abs=1e-12)


def test_three_that_are_not_count_cells_of_step_are_refused(tmp_path, capsys, monkeypatch):
    """-hdivrange 1 -hdivstep 0.25 -hdivsteps 5 (points spanning the width, the
    C's reading): 5 cells of 0.25 cover 1.25, not 1; one line, exit 2."""
    monkeypatch.chdir(tmp_path)
    argv = BASE + ["-detpixels", "8", "-floatfile", str(tmp_path / "f.bin"),
                   "-hdivrange", "1", "-hdivstep", "0.25", "-hdivsteps", "5"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "5 cells of 0.25 mrad cover 1.25 mrad" in err[0], err
    assert cli.main(argv + ["-c_parity"]) == 0


@pytest.mark.parametrize("n", [2, 3, 5, 9])
def test_round_div_keeps_the_cell_centres_inside_the_ellipse(n):
    """-round_div keeps exactly the midpoints inside the ellipse whose axes
    are the full widths (no slack); never none: at least the central cells."""
    cfg = _cfg("-hdivrange 0.6 -vdivrange 0.4 -hdivsteps %d -vdivsteps %d -round_div" % (n, n))
    st = resolve_steps(cfg)
    kept = set(divergence_points(st, True))
    for i in range(n):
        for j in range(n):
            h, v = divergence_offset(st, i, j)
            inside = (h / 0.3e-3) ** 2 + (v / 0.2e-3) ** 2 <= 1.0
            assert ((i, j) in kept) == inside
    assert len(kept) == {2: 4, 3: 9, 5: 21, 9: 69}[n]
    assert len(source_set(cfg).weight) == len(kept)
    # the C's cut of the same grid (its points on the edges, 1.1 of slack)
    c_kept = divergence_points(resolve_steps(_cfg(
        "-hdivrange 0.6 -vdivrange 0.4 -hdivsteps %d -vdivsteps %d -round_div" % (n, n), True)), True)
    assert len(c_kept) == {2: 4, 3: 5, 5: 13, 9: 57}[n]


def _image(flags, c_parity=False):
    argv = (BASE + ["-detpixels", "40", "-pixel", "0.3", "-oversample", "1"] + flags.split()
            + (["-c_parity"] if c_parity else []))
    return nbnumba.simulate_argv(argv).float_image.astype(float)


def test_images_converge_faster_at_the_midpoints():
    """-dispersion 5 and -divergence 1 on a few points against a 64-point
    (8 x 8) reference: the midpoints' image is far closer than the C's."""
    def l1(a, b):
        return np.abs(a - b).sum() / np.abs(b).sum()

    ref = _image("-dispersion 5 -dispsteps 64")
    mid = [l1(_image("-dispersion 5 -dispsteps %d" % n), ref) for n in (2, 4)]
    edge = [l1(_image("-dispersion 5 -dispsteps %d" % n, True), ref) for n in (2, 4)]
    assert mid[0] < edge[0] / 2 and mid[1] < edge[1] / 4
    assert mid[1] < mid[0] / 3          # O(1/N^2): 4 points, about 4x closer
    ref = _image("-divergence 1 -divsteps 8 -square_div")
    mid = l1(_image("-divergence 1 -divsteps 2 -square_div"), ref)
    edge = l1(_image("-divergence 1 -divsteps 2 -square_div", True), ref)
    assert mid < edge / 2


def test_c_parity_is_the_golden_c_image(tmp_path, monkeypatch):
    """-c_parity keeps nanoBragg.c's points bit for bit: the golden
    divergence_hv_round case (the C's own image)."""
    import yaml
    with open(os.path.join(GOLDEN, "..", "cases.yaml")) as f:
        case = next(c for c in yaml.safe_load(f)["cases"] if c["name"] == "divergence_hv_round")
    assert case["mode"] == "c_parity"
    monkeypatch.chdir(tmp_path)
    argv = case["args"].split()
    argv[argv.index("-floatfile") + 1] = str(tmp_path / "f.bin")
    assert cli.main(argv + ["-c_parity"]) == 0
    got = np.fromfile(tmp_path / "f.bin", np.float32)
    want = np.fromfile(os.path.join(GOLDEN, "divergence_hv_round", "float.bin"), np.float32)
    assert np.array_equal(got, want)
    # and the default mode's image differs (its points are the midpoints)
    assert cli.main(argv) == 0
    assert not np.array_equal(np.fromfile(tmp_path / "f.bin", np.float32), want)


@pytest.mark.parametrize("flags, moved", [
    ("-hdivrange 1", ["hdiv"]),
    ("-divergence 0.4 -divsteps 3 -round_div", ["hdiv", "vdiv"]),
    ("-dispersion 2 -dispsteps 3", ["disp"]),
    # the C's ceil(0.2/0.1) = 2 points from -width/2 (the count and the step agree)
    ("-hdivrange 0.2 -hdivstep 0.1", ["hdiv"]),
    # two points a step apart about the beam: the same in both modes
    ("-hdivstep 0.2 -vdivstep 0.1 -round_div", []),
    ("-hdivrange 0 -hdivsteps 3", []),
])
def test_sweeps_that_differ_from_the_c(flags, moved):
    """What the default mode's note reads (sampling.sweeps_differ_from_c): the
    sweeps whose points are not the C's; a step alone keeps its image bit for
    bit."""
    from nbnumba.sampling import sweeps_differ_from_c
    cfg = _cfg(flags)
    assert sweeps_differ_from_c(cfg, resolve_steps(cfg)) == moved
    c = _cfg(flags, True)
    assert sweeps_differ_from_c(c, resolve_steps(c)) == []
    if not moved and "-hdivstep" in flags:
        assert np.array_equal(_image(flags), _image(flags, True))


@pytest.mark.parametrize("extra, want", [("-hdivrange 1 -hdivsteps 3", [44]),
                                         ("-dispersion 2 -dispsteps 3", [44]),
                                         ("-hdivrange 1 -hdivstep 0.5", [22, 44]),
                                         ("-hdivstep 0.1 -hdivsteps 5", [22, 44]),
                                         ("-hdivstep 0.2", [])])
def test_the_note_names_44_and_22_where_the_c_was_also_off_the_beam(extra, want):
    """The note names #44 wherever the sweep's points are not the C's, and #22
    as well where the C's own points were off the beam or not as many; a step
    alone gives the C's two points (no note)."""
    import nbnumba
    from nbnumba.quirks import c_differences
    r = nbnumba.simulate_argv(("-cell 70 80 90 90 90 90 -default_F 100 -N 5 -detpixels 8 "
                               "-oversample 1 -nonoise -nopgm " + extra).split())
    assert [n for n, _ in c_differences(r.model) if n in (22, 44)] == want


def test_a_source_file_draws_no_sweep_note(tmp_path):
    """-sourcefile lists the sources, so a -dispersion beside it moves nothing
    and the note does not name #44."""
    import nbnumba
    from nbnumba.quirks import c_differences
    (tmp_path / "s.txt").write_text("-10 0 0 1 1e-10\n")
    r = nbnumba.simulate_argv(("-cell 70 80 90 90 90 90 -default_F 100 -N 5 -detpixels 8 "
                               "-oversample 1 -nonoise -nopgm -sourcefile s.txt -dispersion 2 "
                               "-dispsteps 3").split(), cwd=tmp_path)
    assert 44 not in [n for n, _ in c_differences(r.model)]
